"""Settings and named limits.

Every limit has a name, a documented default (docs/security.md lists them) and
a test.  Settings come from a ``tidings.toml`` file (tidings/config_file.py),
``TIDINGS_*`` environment variables and CLI flags, each over the one before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from tidings import __version__


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
    # deliver_at: how far ahead a notification may be scheduled, and how far
    # in the past a deliver_at is still taken as "now" (the sender's clock
    # may be a little behind); further back is refused
    max_schedule_ahead: int = 365 * 24 * 3600
    deliver_at_grace: int = 300
    max_webhooks: int = 10  # webhook endpoints per app
    max_api_keys: int = 100  # unexpired API keys per app (POST /v1/keys, tidings key create)
    # how far ahead a key's expires_at may be (POST /v1/keys, tidings key create)
    max_key_lifetime: int = 5 * 365 * 24 * 3600
    # users of an app whose tokens were revoked in the last token_max_ttl
    # (every node holds their cutoffs in memory: tidings/service/revocations.py)
    max_token_revocations: int = 100_000
    # tokens of an app revoked one by one (by their jti) that have not expired
    # (every node holds them in memory too)
    max_revoked_tokens: int = 100_000
    max_push_subscriptions: int = 10  # per user; registering one more drops the oldest
    # Failed dashboard logins a minute, in bursts of as many, from one client
    # address and on one node from all of them (tidings/core/logins.py); 0: no limit
    login_failures_per_address: Annotated[int, msgspec.Meta(ge=0)] = 10
    login_failures_per_node: Annotated[int, msgspec.Meta(ge=0)] = 6000
    # Failed API key checks (unknown or malformed keys) a minute, in bursts of
    # as many, from one client address and on one node from all of them: every
    # route that takes a key (tidings/service/keys.py); 0: no limit.  A backend
    # with a wrong key retrying fast is held to one check a second.
    key_failures_per_address: Annotated[int, msgspec.Meta(ge=0)] = 60
    key_failures_per_node: Annotated[int, msgspec.Meta(ge=0)] = 6000
    # User tokens refused as not valid (malformed, forged, of no app; not an
    # expired or revoked one) a minute, in bursts of as many, from one client
    # address and on one node from all of them: the client API, SSE and
    # WebSocket connects (Service.token_claims); 0: no limit.
    token_failures_per_address: Annotated[int, msgspec.Meta(ge=0)] = 60
    token_failures_per_node: Annotated[int, msgspec.Meta(ge=0)] = 6000
    # What a connection may cost before its request is known (tidings serve's
    # HTTP protocol, tidings/api/uvicorn_http.py and http_limits.py): the
    # request line and headers, their count, the time they may take to arrive
    # (from the first byte, or from the connect), the time the body may take
    # once the head is in, and how long an idle keep-alive stays open.
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0


# -- outbound channels (docs/channels.md#configuration-names) ------------------------
# The channels' settings live here rather than in their modules so that reading
# settings never imports the channels (pywebpush alone pulls in aiohttp).

class WebhookConfig(msgspec.Struct, frozen=True):
    timeout: float = 10.0  # seconds for the whole attempt, connect to last byte
    connect_timeout: float = 5.0
    max_connections: int = 100  # per worker process, across endpoints
    user_agent: str = f"tidings-webhooks/{__version__}"
    max_error_body: int = 512  # bytes of an error answer kept for delivery tracking
    # Allow http://, localhost and non-public addresses, written in the URL
    # or resolved from its host name (local development, tests).
    allow_insecure: bool = False


class WebPushConfig(msgspec.Struct, frozen=True):
    vapid_private_key: str  # base64url raw P-256 key (generate_vapid_keys), or PEM/DER
    vapid_subject: str  # contact for push services: "mailto:ops@acme.test" or an https URL
    ttl: int = 24 * 3600  # seconds a push service keeps a message for an offline device
    vapid_lifetime: int = 12 * 3600  # JWT lifetime; RFC 8292 §2 caps it at 24 hours
    timeout: float = 10.0  # seconds for the whole attempt
    connect_timeout: float = 5.0
    max_connections: int = 100
    user_agent: str = f"tidings-webpush/{__version__}"
    # Subscription endpoints come from end users: only https to public hosts,
    # unless this is set (local development, tests).  See channels.egress.check_url.
    allow_insecure: bool = False


class EmailConfig(msgspec.Struct, frozen=True):
    host: str = "localhost"
    port: int = 587
    sender: str = "tidings@localhost"  # the From: address, e.g. "Acme <notify@acme.test>"
    username: str | None = None  # credentials are optional (a local relay needs none)
    password: str | None = None
    tls: bool = False  # implicit TLS from the first byte (SMTPS, usually port 465)
    # STARTTLS: True requires it, False never tries, None upgrades when the
    # server offers it.  Set True whenever credentials are sent over the network.
    starttls: bool | None = None
    ca_file: str | None = None  # CA bundle to verify the server with (private CAs)
    validate_certs: bool = True
    timeout: float = 30.0  # seconds per SMTP command
    base_url: str | None = None  # resolves relative notification urls ("/p/42")
    subject_prefix: str = ""  # e.g. "[Acme] "
    # The URL at which browsers reach this tidings server, e.g.
    # "https://notify.acme.test" (a path prefix is kept): every e-mail then
    # carries List-Unsubscribe: <public_url/v1/unsubscribe/TOKEN> and
    # List-Unsubscribe-Post (RFC 8058).  None: no unsubscribe header.
    public_url: str | None = None

    def __post_init__(self) -> None:
        url = self.public_url
        if url is not None and not _public_url(url):
            raise ValueError(f"email public_url must be an http(s) URL without query or "
                             f"fragment, such as https://notify.acme.test, not {url!r}")


def _public_url(url: str) -> bool:
    """Whether ``url`` can start a link in a mail header: http(s), a host,
    no query or fragment, ASCII without spaces or angle brackets (RFC 2369)."""
    if not url.isascii() or any(c.isspace() or c in "<>" for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises for a port that is not one
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and not parts.query and not parts.fragment)


def check_proxy_url(url: str) -> str:
    """``url`` if it names an HTTP proxy (``http://[user:password@]host[:port]``,
    port 80 by default), else ValueError.  The message never repeats the URL:
    it may hold the proxy's password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises for a port that is not one
    except ValueError:
        parts = None
    if (parts is None or parts.scheme != "http" or not parts.hostname
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError("egress_proxy must be an http:// URL of a proxy's host and port, such "
                         "as http://proxy.internal:3128 (credentials: http://user:password@...)")
    return url


class OutboundConfig(msgspec.Struct, frozen=True):
    """How this node drives the outbound channels (docs/channels.md)."""

    worker: bool = True  # run the delivery worker on this node
    # Push and e-mail wait this long for one of the user's devices to see the
    # notification, and are cancelled if one does (0: send at once).
    fallback_delay: float = 60.0
    concurrency: int = 16  # sends in flight per channel on this node
    poll_interval: float = 1.0  # seconds between claims when nobody wakes the worker
    # A claimed job is nobody else's for this long; it must outlast a send
    # (the lane's timeout), or two nodes could send one job at once.
    lease: float = 120.0
    send_timeout: float = 60.0  # bounds one send, on top of the channel's own timeouts
    retry_base: float = 5.0  # ceiling of the first retry's wait (full jitter)
    retry_cap: float = 6 * 3600.0  # no single wait is longer
    max_attempts: int = 16  # then the dead-letter list
    rotation_overlap: float = 24 * 3600.0  # a rotated webhook secret still signs this long
    # /metrics reads the queue's depth and dead letters from the store at most
    # once this often per node; scrapes in between are answered from memory.
    stats_ttl: float = 5.0


class Settings(msgspec.Struct):
    host: str = "127.0.0.1"
    port: int = 8080
    data: str = "./tidings-data"
    store: str | None = None  # URL; None = sqlite file under ``data``
    broker: str | None = None  # URL; None = in-process (SQLite) or the store's PostgreSQL
    # the transactional outbox to consume (docs/outbox.md): a postgresql:// URL,
    # "store" for the store's own database, None for none
    outbox: str | None = None
    outbox_batch: int = 100  # rows claimed (and locked) per transaction
    outbox_poll: float = 1.0  # seconds between polls when no NOTIFY wakes the consumer
    allowed_origins: tuple[str, ...] = ()  # exact WebSocket Origin matches; empty = no check
    fanout_threshold: int = 10_000  # topic size above which fan-out happens on read
    retention_days: int = 30
    # days the audit log keeps a record (docs/security.md#audit-log)
    audit_retention_days: int = 365
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    prune_interval: float = 3600.0  # seconds between retention sweeps
    cache: bool = True  # the hot-path cache (keys, tokens, memberships, counts); off to measure
    node: str | None = None  # this node's name in the cluster; None = host:port:pid
    # seconds a serving node's lease on the store lasts (renewed every third):
    # while one has not expired, `tidings secrets seal|unseal|rekey` refuse
    node_lease: float = 15.0
    # admin keys of this app see the whole service on /dashboard; every other
    # app's admin keys see their own app only (docs/operations.md#dashboard)
    operator_app: str | None = "default"
    # /metrics without a key (TIDINGS_METRICS_PUBLIC=1): every app's counters
    # to whoever reaches the port; only where the port is the monitoring
    # network's.  Otherwise it takes an admin key, scoped like /dashboard.
    metrics_public: bool = False
    # The operator's key the store's secrets are sealed under
    # (docs/security.md#sealed-secrets): the key itself (base64url, 32 bytes;
    # `tidings secrets keygen`), or a file holding it.  None of both: the
    # store's secrets are plain, and a sealed store refuses to open.
    secret_key: str | None = None
    secret_key_file: str | None = None
    limits: Limits = Limits()
    # Requests per second per API key, shared by every node through the broker
    # (a token bucket: ``key_burst`` at once).  0 turns the limit off.
    key_rate: float = 1000.0
    key_burst: int = 2000
    # Requests per second per user on the client API (a user token: /v1/me/*,
    # each stream connect and each message on an open WebSocket), counted on
    # each node on its own, in memory (docs/security.md#rate-limits).  0 turns
    # the limit off.
    user_rate: float = 50.0
    user_burst: int = 200
    outbound: OutboundConfig = OutboundConfig()
    webhook: WebhookConfig | None = WebhookConfig()  # None: no webhook jobs
    push: WebPushConfig | None = None  # None (no VAPID key): no push jobs
    email: EmailConfig | None = None  # None (no SMTP server): no e-mail jobs
    # The HTTP proxy webhooks and Web Push go out through, for a node with no
    # other way out: "http://proxy.internal:3128", credentials as
    # "http://user:password@...".  Destinations are still resolved and checked
    # here, and the proxy asked to CONNECT to the checked address
    # (docs/channels.md#egress-proxy).  None (or empty): straight out.
    egress_proxy: str | None = None

    def __post_init__(self) -> None:
        self.egress_proxy = self.egress_proxy or None
        if self.egress_proxy is not None:
            check_proxy_url(self.egress_proxy)

    @property
    def data_dir(self) -> Path:
        return Path(self.data)

    @property
    def outbox_url(self) -> str:
        """The outbox database's URL (``outbox="store"``: the store's)."""
        url = self.store if self.outbox == "store" else self.outbox
        if not url or not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("the outbox is a PostgreSQL table: give --outbox postgresql://... "
                             "or use a PostgreSQL store")
        return url

    def operator_key(self) -> bytes | None:
        """The 32 bytes of ``secret_key`` or of the file ``secret_key_file``, else None."""
        from tidings.core.seal import parse_key

        if self.secret_key and self.secret_key_file:
            raise ValueError("give TIDINGS_SECRET_KEY or TIDINGS_SECRET_KEY_FILE, not both")
        if self.secret_key:
            return parse_key(self.secret_key)
        if self.secret_key_file:
            text = Path(self.secret_key_file).read_text()
            return parse_key(text, f"the secret key file {self.secret_key_file}")
        return None

    @property
    def sqlite_path(self) -> Path:
        if self.store and self.store.startswith("sqlite:///"):
            return Path(self.store[len("sqlite:///"):])
        return self.data_dir / "tidings.db"


def from_env(base: dict | None = None, **overrides) -> Settings:
    """Settings: the defaults, then ``base`` (a configuration file's contents,
    tidings/config_file.py), then ``TIDINGS_*`` environment variables, then
    ``overrides`` (command-line flags; None means "not given")."""
    raw: dict = dict(base or {})
    for field in Settings.__struct_fields__:
        if field == "limits":
            found = _limits_from_env()
            if found:  # variables on top of the file's [limits]
                raw["limits"] = {**(raw.get("limits") or {}), **found}
            continue
        if field in _SECTIONS:
            section = _section_from_env(field)
            if section is None:  # TIDINGS_PUSH=off wins over the file
                raw[field] = None
            elif section is not _UNSET:  # variables on top of the file's fields
                raw[field] = {**(raw.get(field) or {}), **section}
            continue
        env = os.environ.get(f"TIDINGS_{field.upper()}")
        if env is not None:
            raw[field] = env.split(",") if field == "allowed_origins" else env
    limits = overrides.pop("limits", None)
    if limits:  # `tidings serve --limit NAME=VALUE` on top of the file and the variables
        raw["limits"] = {**(raw.get("limits") or {}), **limits}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(raw, Settings, strict=False)


LIMITS_PREFIX = "TIDINGS_LIMITS_"


def _limits_from_env() -> dict:
    """``TIDINGS_LIMITS_<NAME>`` variables as a dict for ``Limits``.  A name
    that is not a limit is an error, as it is in the file: a typo in a limit
    must not leave the default in force unnoticed."""
    found = {}
    for key, value in os.environ.items():
        if key.startswith(LIMITS_PREFIX):
            name = key[len(LIMITS_PREFIX):].lower()
            if name not in Limits.__struct_fields__:
                raise ValueError(f"unknown limit {key} (`tidings config` lists the limits)")
            found[name] = value
    return found


_SECTIONS = {"outbound": OutboundConfig, "webhook": WebhookConfig, "push": WebPushConfig,
             "email": EmailConfig}
_UNSET = object()


def _section_from_env(name: str):
    """``TIDINGS_<SECTION>_<FIELD>`` variables as a dict for that Struct.

    ``TIDINGS_EMAIL_HOST=smtp.acme.test`` turns e-mail on (any e-mail
    variable does); ``TIDINGS_PUSH_VAPID_PRIVATE_KEY`` and
    ``TIDINGS_PUSH_VAPID_SUBJECT`` turn Web Push on; ``TIDINGS_WEBHOOK=off``
    turns webhooks off (``TIDINGS_EMAIL=off`` and ``TIDINGS_PUSH=off`` win
    over their variables).  Returns ``_UNSET`` when nothing is set.
    """
    switch = os.environ.get(f"TIDINGS_{name.upper()}")
    if switch is not None and switch.lower() in ("off", "false", "0", "no") \
            and name != "outbound":
        return None
    found = {}
    for field in _SECTIONS[name].__struct_fields__:
        env = os.environ.get(f"TIDINGS_{name.upper()}_{field.upper()}")
        if env is not None:
            found[field] = env
    return found or _UNSET
