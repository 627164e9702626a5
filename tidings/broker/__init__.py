"""Live fan-out between nodes behind one contract (base.py); in-process by default."""

from __future__ import annotations

from tidings.broker.base import Broker


def open_broker(url: str | None) -> Broker:
    """The broker for ``--broker URL`` (None: in-process, one node)."""
    if url is None or url in ("local", "memory"):
        from tidings.broker.local import LocalBroker

        return LocalBroker()
    raise ValueError(f"unsupported broker URL {url!r}: this build has the in-process broker")
