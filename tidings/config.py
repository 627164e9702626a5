"""Settings and named limits.

Every limit has a name, a documented default (docs/security.md lists them) and
a test.  Settings come from CLI flags or ``TIDINGS_*`` environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class Limits(msgspec.Struct, frozen=True):
    max_body_bytes: int = 256 * 1024  # one HTTP request body
    max_notification_bytes: int = 16 * 1024  # one encoded notification (title+body+data...)
    max_batch: int = 1000  # notifications in one batch publish
    max_recipients: int = 1000  # explicit users in one publish
    max_bulk_subscribers: int = 10_000  # users in one bulk topic subscribe
    max_connections_per_user: int = 20  # open streams per user per node
    max_ws_message_bytes: int = 4 * 1024  # client -> server WebSocket message
    queue_max_events: int = 1000  # pending events per connection before it is cut
    queue_max_bytes: int = 1024 * 1024  # pending bytes per connection before it is cut
    replay_max: int = 1000  # events replayed on resume; beyond it: recovered false
    page_max: int = 100  # inbox page size cap
    ids_max: int = 1000  # ids in one read/seen/archive call
    token_max_ttl: int = 30 * 24 * 3600  # longest user token a key may mint
    idempotency_window: int = 24 * 3600


class Settings(msgspec.Struct):
    host: str = "127.0.0.1"
    port: int = 8080
    data: str = "./tidings-data"
    store: str | None = None  # URL; None = sqlite file under ``data``
    broker: str | None = None  # URL; None = in-process
    allowed_origins: tuple[str, ...] = ()  # exact WebSocket Origin matches; empty = no check
    fanout_threshold: int = 10_000  # topic size above which fan-out happens on read
    retention_days: int = 30
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    prune_interval: float = 3600.0  # seconds between retention sweeps
    cache: bool = True  # the hot-path cache (keys, tokens, memberships, counts); off to measure
    node: str | None = None  # this node's name in the cluster; None = host:port:pid
    # admin keys of this app see the whole service on /dashboard; every other
    # app's admin keys see their own app only (docs/operations.md#dashboard)
    operator_app: str | None = "default"
    limits: Limits = Limits()

    @property
    def data_dir(self) -> Path:
        return Path(self.data)

    @property
    def sqlite_path(self) -> Path:
        if self.store and self.store.startswith("sqlite:///"):
            return Path(self.store[len("sqlite:///"):])
        return self.data_dir / "tidings.db"


def from_env(**overrides) -> Settings:
    """Settings from ``TIDINGS_*`` environment variables, then ``overrides``."""
    raw: dict = {}
    for field in Settings.__struct_fields__:
        if field == "limits":
            continue
        env = os.environ.get(f"TIDINGS_{field.upper()}")
        if env is not None:
            raw[field] = env.split(",") if field == "allowed_origins" else env
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(raw, Settings, strict=False)
