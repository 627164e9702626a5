"""Live fan-out between nodes behind one contract (base.py): in-process for one
node, PostgreSQL LISTEN/NOTIFY for a cluster on PostgreSQL alone, Redis (or a
Redis Cluster) for the largest fan-outs."""

from __future__ import annotations

from tidings.broker.base import Broker

_POSTGRES = ("postgresql://", "postgres://")


def open_broker(url: str | None, store: str | None = None) -> Broker:
    """The broker for ``--broker URL``.  Without one: the PostgreSQL store's
    own database when ``store`` is a PostgreSQL URL, else in-process (one node)."""
    if url is None and store is not None and store.startswith(_POSTGRES):
        url = store
    if url is None or url in ("local", "memory"):
        from tidings.broker.local import LocalBroker

        return LocalBroker()
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        from tidings.broker.redis_cluster import RedisClusterBroker

        return RedisClusterBroker(url)
    if url.startswith(("redis://", "rediss://")):
        from tidings.broker.redis import RedisBroker

        return RedisBroker(url)
    if url.startswith(_POSTGRES):
        from tidings.broker.postgres import PostgresBroker

        return PostgresBroker(url)
    raise ValueError(
        f"unsupported broker URL {url!r}: use redis://HOST:PORT/DB, rediss://... (TLS), "
        "redis+cluster://HOST:PORT[,HOST:PORT...] (Redis Cluster), postgresql://... "
        "(LISTEN/NOTIFY), local (in-process), or leave it out: the PostgreSQL store's "
        "database, else in-process"
    )
