"""How long the sweep after a broker outage takes: measured.

    python -m bench.sweep [--store sqlite|postgresql://...] [--users 5000] [--runs 3]

One node (the real service, store and hub, the in-process broker) with
``--users`` users online, one stream each.  The streams are real
``Stream`` objects whose transport writes nowhere (no sockets: what is
measured is the store's part and the hub's).  Then, for each scenario, the
hub is told the broker reconnected, as it is after a Redis restart, and the
time until its sweep (tidings/gateway/sweep.py) has caught up every stream
is taken:

* ``none``: no stream missed anything;
* ``some``: 1% of the users each missed a personal notification (committed,
  its broker message never sent);
* ``broadcast``: every user missed a broadcast.

Prints the seconds each took (the median of ``--runs``) and the store calls
the hub made (one ``counts_many`` on SQLite reads one ``counts`` per user,
both are counted).  Each scenario checks that every stream got its counts and
what it missed.  The figures are in docs/delivery.md ("After a broker outage").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import secrets
import statistics
import tempfile
import time

import asyncpg
import msgspec

from tidings.api.app import build_service
from tidings.config import Settings
from tidings.core.models import PublishRequest
from tidings.gateway.stream import Stream
from tidings.store.postgres import migrate

CALLS = ("user_topics", "topics_many", "muted", "muted_many", "counts", "counts_many",
         "replay_exceeds", "replay")


class Quiet(Stream):
    """A real stream whose transport keeps only what it was sent."""

    __slots__ = ("sent",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[bytes] = []

    async def _write(self, frames: list[bytes]) -> None:
        self.sent += frames

    async def _close(self, code: int, reason: str = "") -> None:
        pass


@contextlib.asynccontextmanager
async def _store_url(store: str):
    """A store URL: a fresh SQLite file, or a fresh schema of ``store``."""
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    schema = "bench_sweep_" + secrets.token_hex(4)
    admin = await asyncpg.connect(store)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await migrate(store, server_settings={"search_path": schema})
        yield f"{store}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def _count_calls(store) -> collections.Counter:
    """Count the store calls by name (each calls through to the real one)."""
    calls: collections.Counter = collections.Counter()
    for name in CALLS:
        real = getattr(store, name, None)
        if real is None:  # a store from before the batched sweep
            continue

        async def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return await _real(*args, **kwargs)

        setattr(store, name, counted)
    return calls


async def _sweep(service, calls: collections.Counter) -> tuple[float, dict]:
    hub = service.hub
    calls.clear()
    start = time.perf_counter()
    hub._on_broker_reconnect()
    assert hub._resync is not None
    await hub._resync
    took = time.perf_counter() - start
    await asyncio.sleep(0.05)  # the writers' last writes
    return took, dict(calls)


async def _lost(service, app: str, to: dict) -> None:
    """Publish ``to`` with its broker message never sent: lost."""
    real, service._announce = service._announce, lambda *args, **kwargs: None
    try:
        await service.publish(app, msgspec.convert({"to": to, "title": "lost"}, PublishRequest))
    finally:
        service._announce = real


async def _run(store: str, users: int) -> dict[str, tuple[float, dict]]:
    async with _store_url(store) as url, contextlib.AsyncExitStack() as stack:
        data = stack.enter_context(tempfile.TemporaryDirectory())
        service = build_service(Settings(data=data, store=url, broker="local"))
        await service.open()
        stack.push_async_callback(service.close)
        app = (await service.create_app("bench"))[0].id
        names = [f"u{i:06}" for i in range(users)]
        streams = [Quiet(service.hub, app, u, max_events=1000, max_bytes=1 << 20)
                   for u in names]
        for s in streams:
            await s.start(None)
        calls = _count_calls(service.store)
        out = {}
        out["none"] = await _sweep(service, calls)
        for s in streams:
            s.sent.clear()
        await _lost(service, app, {"users": names[::100]})
        out["some"] = await _sweep(service, calls)
        missed = {s.user for s in streams if any(b'"lost"' in f for f in s.sent)}
        assert missed == set(names[::100]), len(missed)
        await _lost(service, app, {"all": True})
        for s in streams:
            s.sent.clear()
        out["broadcast"] = await _sweep(service, calls)
        assert all(any(b'"lost"' in f for f in s.sent) for s in streams)
        assert all(any(b'"counts"' in f for f in s.sent) for s in streams)
        for s in streams:
            s.close(1000)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    ap.add_argument("--store", default="sqlite", help="sqlite, or a PostgreSQL URL")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()
    runs = [asyncio.run(_run(opts.store, opts.users)) for _ in range(opts.runs)]
    for scenario in runs[0]:
        took = statistics.median(r[scenario][0] for r in runs)
        print(f"{scenario:10} {took:7.3f} s  store calls {runs[0][scenario][1]}")


if __name__ == "__main__":
    main()
