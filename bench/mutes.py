"""Inbox page and counts at store level, with and without the caller's in-app mutes.

    python -m bench.mutes [--store sqlite|postgresql://...] [--users 2000] [--entries 20]
                          [--broadcasts 50] [--calls 1000]

No server and no HTTP: ``Store.inbox`` (``limit=20``, newest first) and
``Store.counts`` called one at a time from this process, ``--calls`` times
each, each for a user drawn at random, on a fresh store (a temporary SQLite
file, or a fresh PostgreSQL schema dropped afterwards) holding ``--users``
users with ``--entries`` personal entries each and ``--broadcasts``
broadcasts, half of them of the category ``promo``, which one user in four
muted in-app.  Four cases per call:

* ``given``: a user with no mutes, their mutes given (``muted=frozenset()``),
  as a stream on the node gives them;
* ``read``: the same users, mutes not given (``muted=None``): the client API
  for a user with no stream on the node;
* ``muted_given`` / ``muted_read``: users who muted ``promo``, likewise.

Prints p50 and p99 per case in ms.  Imports only ``tidings``, so a copy of it
measures another revision's store (docs/delivery.md has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from tidings.core.ids import new_id
from tidings.core.models import ChannelPrefs, Preferences
from tidings.store.base import NewNotification

APP = "bench"
MUTED = Preferences(categories={"promo": ChannelPrefs(in_app=False)})
MUTED_SET = frozenset({"promo"})  # what MUTED mutes


def _note(category: str, users: list[str] | None) -> NewNotification:
    nid = new_id()
    return NewNotification(id=nid, category=category, body=msgspec.json.encode({"id": nid}),
                           created_at=time.time(), expires_at=None, users=users,
                           all=users is None)


async def load(store, users: list[str], entries: int, broadcasts: int) -> None:
    """Personal entries for every user, broadcasts, and every fourth user's mute."""
    for _ in range(entries):
        await store.publish(APP, _note("default", users), fanout_threshold=len(users) + 1,
                            window=3600)
    for i in range(broadcasts):
        await store.publish(APP, _note("promo" if i % 2 else "default", None),
                            fanout_threshold=1, window=3600)
    for user in users[::4]:
        await store.put_preferences(APP, user, MUTED)


async def timed(call, users: list[str], calls: int) -> tuple[float, float]:
    """p50 and p99 of ``call(user)`` in ms, one call at a time."""
    rng = random.Random(7)
    took = []
    for _ in range(calls):
        user = rng.choice(users)
        start = time.perf_counter()
        await call(user)
        took.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(took, n=100)
    return cuts[49], cuts[98]


async def measure(store, users: list[str], calls: int) -> dict[str, tuple[float, float]]:
    muting, plain = users[::4], [u for i, u in enumerate(users) if i % 4]
    muting_set = set(muting)

    def page(given: bool):
        async def call(user: str):
            muted = (MUTED_SET if user in muting_set else frozenset()) if given else None
            return await store.inbox(APP, user, limit=20, before=None, state=None,
                                     now=time.time(), muted=muted)
        return call

    def counts(given: bool):
        async def call(user: str):
            muted = (MUTED_SET if user in muting_set else frozenset()) if given else None
            return await store.counts(APP, user, time.time(), muted)
        return call

    out = {}
    for name, what in (("page", page), ("counts", counts)):
        await timed(what(False), users, calls // 4)  # warm the caches and the plans
        for case, group, given in (("given", plain, True), ("read", plain, False),
                                   ("muted_given", muting, True), ("muted_read", muting, False)):
            out[f"{name}_{case}"] = await timed(what(given), group, calls)
    return out


async def run(args) -> dict[str, tuple[float, float]]:
    users = [f"u{i:06d}" for i in range(args.users)]
    if args.store == "sqlite":
        from tidings.store.sqlite import SQLiteStore
        with tempfile.TemporaryDirectory() as folder:
            store = SQLiteStore(Path(folder) / "tidings.db")
            await store.open()
            try:
                await load(store, users, args.entries, args.broadcasts)
                return await measure(store, users, args.calls)
            finally:
                await store.close()
    import asyncpg

    from tidings.store.postgres import PostgresStore, migrate
    schema = "bench_mutes_" + secrets.token_hex(4)
    settings = {"search_path": schema}
    admin = await asyncpg.connect(args.store)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await migrate(args.store, server_settings=settings)
        store = PostgresStore(args.store, server_settings=settings)
        await store.open()
        try:
            await load(store, users, args.entries, args.broadcasts)
            await admin.execute(f"ANALYZE {schema}.inbox, {schema}.notifications, "
                                f"{schema}.mutes, {schema}.prefs")
            return await measure(store, users, args.calls)
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.mutes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="'sqlite' or a PostgreSQL URL")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--entries", type=int, default=20)
    ap.add_argument("--broadcasts", type=int, default=50)
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    for case, (p50, p99) in asyncio.run(run(args)).items():
        print(f"{case:20s} p50 {p50:6.3f} ms   p99 {p99:6.3f} ms")


if __name__ == "__main__":
    main()
