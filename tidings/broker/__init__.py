"""Live fan-out between nodes behind one contract (base.py); in-process by default,
Redis for a cluster."""

from __future__ import annotations

from tidings.broker.base import Broker


def open_broker(url: str | None) -> Broker:
    """The broker for ``--broker URL`` (None: in-process, one node)."""
    if url is None or url in ("local", "memory"):
        from tidings.broker.local import LocalBroker

        return LocalBroker()
    if url.startswith(("redis://", "rediss://")):
        from tidings.broker.redis import RedisBroker

        return RedisBroker(url)
    raise ValueError(
        f"unsupported broker URL {url!r}: use redis://HOST:PORT/DB, rediss://... (TLS), "
        "or leave it out for the in-process broker"
    )
