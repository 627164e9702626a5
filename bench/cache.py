"""``cache``: what the hot-path cache buys, measured both ways on the cluster
configuration (PostgreSQL store, Redis broker).

docs/design.md §5: with the cache, delivery time must be >= 40% lower and inbox /
counts latency >= 50% lower than without it.  One run starts a fresh server
(``TIDINGS_CACHE=true`` or ``false``) on a fresh PostgreSQL schema, connects
``--users`` devices (one WebSocket each, so each user's channel is live on
the node, as it is for anyone who has the app open), fills each inbox with
``--fill`` notifications, then measures, closed loop, one request at a time:

* ``page``: ``GET /v1/me/notifications?limit=20`` for a random user (a device
  opening its inbox);
* ``counts``: ``GET /v1/me/counts`` for a random user;
* ``hello``: a second device of a random user connects; time to its hello
  (token check, memberships, head, counts);
* ``delivery``: ``POST /v1/notifications`` to a random user, time until that
  user's device has the notification (publish -> device);
* ``page_changed`` / ``counts_changed``: a notification to a random user,
  then, once the device has it (not timed), that user's page and then counts:
  the first reads after a change, which the cache cannot answer (it answers
  only what has not changed since it was read) and must read from the store.

Before ``page`` and before ``counts`` each device reads its page (counts)
once, not timed: the fill's notifications have just changed every inbox, and
without this 37% of the 500 requests (the first for each of the 200 users)
were first reads after those changes, so p99 measured the store read, not
the cache.  Those first reads are what ``*_changed`` measures, on its own,
in both modes; both modes run the same warm-up.

``--key-rate``: the API key's rate limit (the server's ``TIDINGS_KEY_RATE``),
on by default as in a deployment: without the cache a publish then takes a
token from the shared bucket in Redis each time, with it from a lease held
on the node (the rate-limit buckets are among what the cache answers from
memory).  A deployment's default, 1,000/s, would refuse the fill's batches,
and a closed loop on a fast machine goes over it: the bench's default is
100,000/s, the same path without refusals.  ``--key-rate 0`` turns the
limit off (every other bench runs so).  The per-user limit of the client
API stays on at its default (50 a second per user, bursts of 200) in both
modes: it is kept in the node's memory with or without the cache, and the
closed loop over ``--users`` 200 asks each user for about 16 requests in a
whole run.  With only a few users a closed loop would go over it (a request
not answered 200 stops the run): set ``TIDINGS_USER_RATE=0`` then.

The devices are picows clients on uvloop, as ``bench latency``'s: with the
``websockets`` library on the default loop, the client's own handling of
each frame added the same time to both modes and hid part of the ratio.

Latencies are wall-clock on a shared machine: the figure to trust is the
ratio between the two modes within one invocation, and the server CPU per
operation beside it.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import uvloop

from bench import hist
from bench.httpclient import HttpClient
from bench.measure import ProcSampler
from bench.pgschema import fresh_schema
from bench.server import TidingsServer

KINDS = ("page", "counts", "hello", "delivery", "page_changed", "counts_changed")
PAGE = "/v1/me/notifications?limit=20"
HELLO = b'"type":"hello"'
TITLE = re.compile(rb'"title":"([^"]*)"')
COUNTS = "/v1/me/counts"


class _Device:
    """One device: a picows client, as ``bench latency``'s (wsload.py), so that
    the client's own frame handling stays small next to what is measured
    (the ``websockets`` library took ~0.3 ms a frame on a slow machine, in
    both modes).  Sets the waiter of each notification title it receives,
    and of ``("hello", user)``."""

    def __init__(self, waiters: dict, user: str):
        self.waiters = waiters
        self.user = user
        self.transport = None

    def listener(self):
        from picows import WSListener, WSMsgType

        waiters, user = self.waiters, self.user

        class Listener(WSListener):
            def on_ws_frame(self, transport, frame) -> None:
                if frame.msg_type != WSMsgType.TEXT:
                    return
                assert frame.fin, "the server sends each event whole"
                payload = frame.get_payload_as_bytes()
                if HELLO in payload:
                    waiters.setdefault(("hello", user), asyncio.Event()).set()
                for title in TITLE.findall(payload):
                    waiter = waiters.pop(title.decode(), None)
                    if waiter is not None:
                        waiter.set()

        return Listener()

    async def open(self, ws_url: str, token: str) -> _Device:
        from picows import ws_connect

        self.transport, _ = await ws_connect(
            self.listener, ws_url, extra_headers={"Authorization": f"Bearer {token}"},
            websocket_handshake_timeout=10,
        )
        return self

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()


async def _device(ws_url: str, token: str, inbox: dict, user: str) -> _Device:
    return await _Device(inbox, user).open(ws_url, token)


async def _one_run(opts, cache: bool, store: str) -> dict:
    env = {"TIDINGS_CACHE": "true" if cache else "false", "TIDINGS_BROKER": opts.broker,
           "TIDINGS_KEY_RATE": str(opts.key_rate)}
    srv = TidingsServer(cpu=opts.server_cpu or None, env=env, store=store)
    # `tidings app create` runs before the server: the schema is migrated already
    with srv:
        sampler = ProcSampler(srv.pid)
        users = [f"u{i}" for i in range(opts.users)]
        tokens = {u: srv.token(u) for u in users}
        waiters: dict = {}
        devices = [await _device(srv.ws_url, tokens[u], waiters, u) for u in users]
        for u in users:
            await asyncio.wait_for(waiters.setdefault(("hello", u), asyncio.Event()).wait(), 30)
        api = HttpClient(srv.host, srv.port, {"Authorization": f"Bearer {srv.api_key}"})
        for start in range(0, opts.fill * len(users), 500):
            batch = [{"to": {"users": [users[(start + i) % len(users)]]}, "title": f"fill{i}"}
                     for i in range(min(500, opts.fill * len(users) - start))]
            status, body = await api.post_json("/v1/notifications/batch",
                                               {"notifications": batch})
            assert status == 202, body[:200]
        await asyncio.sleep(1.0)  # let the fill's live deliveries drain

        rng = random.Random(7)
        user_http = HttpClient(srv.host, srv.port)
        out: dict = {"cache": cache}

        async def measure(kind: str, op) -> None:
            h = hist.new()
            cpu0 = sampler.cpu()
            for i in range(opts.requests):
                t0 = time.perf_counter_ns()
                await op(i)
                hist.record_ns(h, time.perf_counter_ns() - t0)
            cpu = sampler.cpu() - cpu0
            out.update(hist.summary(h, kind))
            out[f"{kind}_server_cpu_us"] = round(cpu / opts.requests * 1e6, 1)

        async def get(u: str, path: str) -> None:
            status, _ = await user_http.send(user_http.build(
                "GET", path, headers={"Authorization": f"Bearer {tokens[u]}"}))
            assert status == 200

        async def page(i: int) -> None:
            await get(rng.choice(users), PAGE)

        async def counts(i: int) -> None:
            await get(rng.choice(users), COUNTS)

        async def hello(i: int) -> None:
            u = rng.choice(users)
            key = ("hello", f"{u}#{i}")
            ws = await _device(srv.ws_url, tokens[u], waiters, f"{u}#{i}")
            await waiters.setdefault(key, asyncio.Event()).wait()
            waiters.pop(key, None)
            ws.close()

        async def notify(u: str, title: str) -> None:
            """Publish ``title`` to ``u``; return once the device has it."""
            done = waiters[title] = asyncio.Event()
            status, body = await api.post_json("/v1/notifications",
                                               {"to": {"users": [u]}, "title": title})
            assert status == 202, body[:200]
            await asyncio.wait_for(done.wait(), 10)

        async def delivery(i: int) -> None:
            await notify(rng.choice(users), f"m{i}")

        async def changed() -> None:
            """The first page and counts reads after a notification, per request."""
            hp, hc = hist.new(), hist.new()
            for i in range(opts.requests):
                u = rng.choice(users)
                await notify(u, f"c{i}")
                for h, path in ((hp, PAGE), (hc, COUNTS)):
                    t0 = time.perf_counter_ns()
                    await get(u, path)
                    hist.record_ns(h, time.perf_counter_ns() - t0)
            out.update(hist.summary(hp, "page_changed"))
            out.update(hist.summary(hc, "counts_changed"))

        for kind, op in (("page", page), ("counts", counts), ("hello", hello),
                         ("delivery", delivery)):
            if kind in ("page", "counts"):
                # each device has opened its inbox since the fill (see the docstring)
                for u in users:
                    await get(u, PAGE if kind == "page" else COUNTS)
            await measure(kind, op)
        await changed()
        for ws in devices:
            ws.close()
        api.close()
        user_http.close()
    return out


def run_once(opts, cpus, cache: bool) -> dict:
    """One run in one mode, on a fresh schema (dropped after)."""
    with fresh_schema(opts.store, "bench_cache") as store:
        # uvloop, as bench latency's clients: the client's share stays small
        rec = uvloop.run(_one_run(opts, cache, store))
    rec.update(users=opts.users, fill=opts.fill, requests=opts.requests, key_rate=opts.key_rate)
    return rec
