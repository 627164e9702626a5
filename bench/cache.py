"""``cache``: what the hot-path cache buys, measured both ways on the cluster
configuration (PostgreSQL store, Redis broker).

docs/design.md §5: with the cache, delivery time must be >= 40% lower and inbox /
counts latency >= 50% lower than without it.  One run starts two fresh
servers side by side, one with the cache (``TIDINGS_CACHE=true``) and one
without, each on a fresh PostgreSQL schema; each connects ``--users``
devices (one WebSocket each, so each user's channel is live on the node, as
it is for anyone who has the app open) and fills each inbox with ``--fill``
notifications.  Then it measures, closed loop, one request at a time, the
two servers taking turns request by request (on, off, then off, on, ...):
whatever else a shared machine does then falls on both modes alike, where
runs of one mode after the other let a burst of other work land on one of
them (the cut of delivery at p50 moved from 33% to 44% between two such
sets).  Each run's records carry its cuts, ``<kind>_cut_<p50|p99>_pct``
(how much lower the figure is with the cache, in that run); the figure to
report is their median across runs.  ``--cache on`` or ``off`` alone runs
one server.  The kinds:

* ``page``: ``GET /v1/me/notifications?limit=20`` for a random user (a device
  opening its inbox);
* ``counts``: ``GET /v1/me/counts`` for a random user;
* ``hello``: a second device of a random user connects; time to its hello
  (token check, memberships, head, counts);
* ``delivery``: ``POST /v1/notifications`` to a random user, time until that
  user's device has the notification (publish -> device: when the device's
  listener got the frame, whether the publisher's answer came first or
  not); ``answer``: the same requests' time to the publisher's 202;
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
cut between the two modes within one run, and the server CPU per operation
beside it (each server's own CPU over the phase, divided by its own
requests).
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


class _Arrival(asyncio.Event):
    """A notification's waiter: set by the device's listener when the frame
    arrives, and when (``at``, perf_counter ns)."""

    at = 0

    def set(self) -> None:
        self.at = time.perf_counter_ns()
        super().set()


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


class _Side:
    """One server (cache on or off) with its devices and clients."""

    def __init__(self, opts, cache: bool, store: str):
        self.cache = cache
        env = {"TIDINGS_CACHE": "true" if cache else "false", "TIDINGS_BROKER": opts.broker,
               "TIDINGS_KEY_RATE": str(opts.key_rate)}
        # `tidings app create` runs before the server: the schema is migrated already
        self.srv = TidingsServer(cpu=opts.server_cpu or None, env=env, store=store)
        self.users = [f"u{i}" for i in range(opts.users)]
        self.waiters: dict = {}
        self.devices: list[_Device] = []
        self.out: dict = {"cache": cache}
        self.hists: dict = {}
        self.cpu: dict = {}

    async def open(self, opts) -> None:
        srv = self.srv
        srv.start()
        self.sampler = ProcSampler(srv.pid)
        self.tokens = {u: srv.token(u) for u in self.users}
        for u in self.users:
            self.devices.append(await _device(srv.ws_url, self.tokens[u], self.waiters, u))
        for u in self.users:
            await asyncio.wait_for(
                self.waiters.setdefault(("hello", u), asyncio.Event()).wait(), 30)
        self.api = HttpClient(srv.host, srv.port, {"Authorization": f"Bearer {srv.api_key}"})
        users = self.users
        for start in range(0, opts.fill * len(users), 500):
            batch = [{"to": {"users": [users[(start + i) % len(users)]]}, "title": f"fill{i}"}
                     for i in range(min(500, opts.fill * len(users) - start))]
            status, body = await self.api.post_json("/v1/notifications/batch",
                                                    {"notifications": batch})
            assert status == 202, body[:200]
        self.user_http = HttpClient(srv.host, srv.port)

    def close(self) -> None:
        for ws in self.devices:
            ws.close()
        for client in ("api", "user_http"):
            if hasattr(self, client):
                getattr(self, client).close()
        self.srv.stop()

    async def get(self, u: str, path: str) -> None:
        status, _ = await self.user_http.send(self.user_http.build(
            "GET", path, headers={"Authorization": f"Bearer {self.tokens[u]}"}))
        assert status == 200

    async def notify(self, u: str, title: str) -> tuple[int, int]:
        """Publish ``title`` to ``u``; return once the device has it and the
        publisher has its answer, with when each happened (perf_counter ns)."""
        done = self.waiters[title] = _Arrival()
        status, body = await self.api.post_json("/v1/notifications",
                                                {"to": {"users": [u]}, "title": title})
        answered = time.perf_counter_ns()
        assert status == 202, body[:200]
        await asyncio.wait_for(done.wait(), 10)
        return done.at, answered

    async def delivery(self, u: str, title: str) -> None:
        """``delivery``: from the request to the frame's arrival at the device,
        whether the publisher's answer came before it or after (the answer's
        own time is ``answer``)."""
        t0 = time.perf_counter_ns()
        arrived, answered = await self.notify(u, title)
        self.record("delivery", arrived - t0)
        self.record("answer", answered - t0)

    async def hello(self, u: str, i: int) -> None:
        key = ("hello", f"{u}#{i}")
        ws = await _device(self.srv.ws_url, self.tokens[u], self.waiters, f"{u}#{i}")
        await self.waiters.setdefault(key, asyncio.Event()).wait()
        self.waiters.pop(key, None)
        ws.close()

    def record(self, kind: str, ns: int) -> None:
        hist.record_ns(self.hists.setdefault(kind, hist.new()), ns)


async def _timed(side: _Side, kind: str, op) -> int:
    t0 = time.perf_counter_ns()
    await op
    ns = time.perf_counter_ns() - t0
    side.record(kind, ns)
    return ns


async def _measure(opts, sides: list[_Side]) -> None:
    """Every kind, the sides taking turns request by request (in the order
    A B, then B A, ...), so that whatever else the machine does falls on
    both alike; each side's request goes to a user drawn for it."""
    rng = random.Random(7)
    users = sides[0].users
    n = opts.requests

    def order(i: int) -> list[_Side]:
        return sides if i % 2 == 0 else sides[::-1]

    async def phase(kind: str, op) -> None:
        cpu0 = {id(s): s.sampler.cpu() for s in sides}
        for i in range(n):
            for side in order(i):
                if kind == "delivery":
                    await op(side, i)  # times itself (_Side.delivery)
                else:
                    await _timed(side, kind, op(side, i))
        for s in sides:
            s.out[f"{kind}_server_cpu_us"] = round(
                (s.sampler.cpu() - cpu0[id(s)]) / n * 1e6, 1)

    await asyncio.sleep(1.0)  # let the fill's live deliveries drain
    for kind in ("page", "counts", "hello", "delivery"):
        if kind in ("page", "counts"):
            # each device has opened its inbox since the fill (see the docstring)
            for s in sides:
                for u in users:
                    await s.get(u, PAGE if kind == "page" else COUNTS)
        if kind == "page":
            await phase(kind, lambda s, i: s.get(rng.choice(users), PAGE))
        elif kind == "counts":
            await phase(kind, lambda s, i: s.get(rng.choice(users), COUNTS))
        elif kind == "hello":
            await phase(kind, lambda s, i: s.hello(rng.choice(users), i))
        else:
            await phase(kind, lambda s, i: s.delivery(rng.choice(users), f"m{i}"))
    # the first page and counts reads after a notification (not timed)
    for i in range(n):
        for side in order(i):
            u = rng.choice(users)
            await side.notify(u, f"c{i}")
            await _timed(side, "page_changed", side.get(u, PAGE))
            await _timed(side, "counts_changed", side.get(u, COUNTS))
    for s in sides:
        for kind in (*KINDS, "answer"):
            s.out.update(hist.summary(s.hists[kind], kind))


def _cuts(on: dict, off: dict) -> dict:
    """How much lower each figure is with the cache, in %, within one run."""
    out = {}
    for kind in ("page", "counts", "delivery"):
        for q in ("p50", "p99"):
            a, b = on.get(f"{kind}_{q}_ms"), off.get(f"{kind}_{q}_ms")
            if a is not None and b:
                out[f"{kind}_cut_{q}_pct"] = round(100 * (1 - a / b), 1)
    return out


async def _run(opts, modes: list[bool], stores: list[str]) -> list[dict]:
    sides = [_Side(opts, cache, store) for cache, store in zip(modes, stores, strict=True)]
    try:
        for s in sides:
            await s.open(opts)
        await _measure(opts, sides)
    finally:
        for s in sides:
            s.close()
    outs = [s.out for s in sides]
    if len(sides) == 2:
        on, off = (outs if modes[0] else outs[::-1])
        cuts = _cuts(on, off)
        for o in outs:
            o.update(cuts)
    return outs


def run_once(opts, cpus, cache: bool) -> dict:
    """One run in one mode, on a fresh schema (dropped after)."""
    with fresh_schema(opts.store, "bench_cache") as store:
        # uvloop, as bench latency's clients: the client's share stays small
        rec = uvloop.run(_run(opts, [cache], [store]))[0]
    rec.update(users=opts.users, fill=opts.fill, requests=opts.requests, key_rate=opts.key_rate)
    return rec


def run_pair(opts, cpus) -> list[dict]:
    """One run of both modes side by side: a server with the cache and one
    without, each on a fresh schema, measured in turns request by request.
    Returns the two records, cache on first; each carries the run's cuts."""
    with fresh_schema(opts.store, "bench_cache") as on, \
            fresh_schema(opts.store, "bench_cache") as off:
        recs = uvloop.run(_run(opts, [True, False], [on, off]))
    for rec in recs:
        rec.update(users=opts.users, fill=opts.fill, requests=opts.requests,
                   key_rate=opts.key_rate)
    return recs
