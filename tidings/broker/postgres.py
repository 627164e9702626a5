"""The PostgreSQL broker: a cluster with PostgreSQL as its one dependency.

With a PostgreSQL store and no ``--broker``, nodes fan out live events
through ``LISTEN``/``NOTIFY`` on the store's own database.

**One notification channel per deployment**, named after the store's schema
(``tidings:<schema>``), which every node listens on; each node keeps its own
handlers and drops what nobody on it subscribed to.  A PostgreSQL channel per
user or topic would not save work: every listening backend reads the whole
notification queue and (before PostgreSQL 19) scans its list of channels per
notification, so thousands of ``LISTEN``\\ s cost more than they filter.
``subscribe`` and ``unsubscribe`` are therefore local and in effect at once.

**Packed notifications.**  ``publish`` encodes ``(channel, message)``
(msgpack) onto a bounded queue and returns.  A writer task turns everything
queued into as few notifications as fit: items are packed into payloads of
at most ``CHUNK`` bytes (base64, as a payload must be text below 8,000
bytes), and an item larger than that is split over consecutive payloads of
the same transaction.  The notifications of one transaction reach every
listener contiguously and in order, so the parts need no more than a count of
what follows.  One ``SELECT pg_notify(...) FROM unnest(...)`` carries a
batch: one round trip, one transaction.  Measured (``python -m
bench.pgnotify``): packing delivers 2.5x the messages of one notification per
message at 200 B and beats notifying a reference and reading the body back
at every size (docs/deploy.md has the figures).  The writer's session runs
with ``synchronous_commit = off``: a notifying commit needs no fsync for a
message that is at most once anyway.

**A node's own messages** reach its handlers from ``publish`` (on the
next tick of the loop, in publish order), not back through PostgreSQL:
every payload starts with its broker's ``origin`` (eight random letters,
where the payloads of earlier versions start with a digit), and the
listener drops its own unread, before any base64 or msgpack decoding.  So
the node that publishes needs neither the round trip nor a working
``NOTIFY`` for its own streams.

**At most once.**  When PostgreSQL is unreachable the queue fills up and
further messages are dropped and counted; a batch that failed is dropped.
A notification is delivered only to sessions listening when it commits, so
the listener connection is watched (a termination callback, a health query
every ``health_interval``): after a reconnection the ``on_reconnect``
callbacks make the gateway catch every open stream up from the store.

The node registry and the token buckets are UNLOGGED tables of the store's
schema (``postgres_005.sql``); ``take`` is one call of ``broker_take`` on the
database clock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import secrets
import string
from typing import Any

import asyncpg
import msgspec

from tidings.broker.base import BrokerUnavailable, Handler, Message, QueuedBroker
from tidings.core import ratelimit
from tidings.core.backoff import Backoff
from tidings.store.postgres.errors import CANNOT_WRITE, DOWN, STALE

log = logging.getLogger("tidings.broker")

CHUNK = 7800  # payload bytes per notification (PostgreSQL refuses 8,000 and more)
_RAW_CHUNK = CHUNK // 4 * 3 - 30  # raw bytes that stay under CHUNK in base64 with the header
_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"
_ITEM = tuple[str, msgspec.Raw]
_LOST = (*DOWN, *STALE, asyncpg.PostgresError)


def channel_for(schema: str) -> str:
    """The notification channel of the deployment in ``schema`` (at most 63 bytes,
    PostgreSQL's identifier limit; long schema names are hashed)."""
    name = f"tidings:{schema}"
    if len(name.encode()) > 63:
        name = "tidings:" + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return name


def pack(items: list[bytes], first: int, origin: str = "") -> list[str]:
    """Payloads for encoded items: each ``"<origin><n>:<k>:<base64>"``,
    ``origin`` the sending broker's (letters), ``n`` counting payloads from
    ``first`` (PostgreSQL folds equal payloads of one transaction into one),
    ``k`` the number of parts of the same batch still to come.  A batch is a
    msgpack array of items.  A receiver reads nothing of the first field but
    the origin (earlier versions, none of it)."""
    out: list[str] = []
    batch: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal batch, size
        if not batch:
            return
        data = _array_header(len(batch)) + b"".join(batch)
        parts = [data[i:i + _RAW_CHUNK] for i in range(0, len(data), _RAW_CHUNK)]
        for k, part in enumerate(parts):
            out.append(f"{origin}{first + len(out)}:{len(parts) - 1 - k}:"
                       + base64.b64encode(part).decode())
        batch, size = [], 0

    for item in items:
        if batch and size + len(item) > _RAW_CHUNK - 5:
            flush()
        batch.append(item)
        size += len(item)
    flush()
    return out


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class PostgresBroker(QueuedBroker[bytes, asyncpg.Connection]):
    """``PostgresBroker("postgresql://user@host/db?search_path=...")``: the
    store's URL; the store's schema must be migrated (``tidings migrate``)."""

    name = "PostgreSQL broker"
    lost = _LOST

    def __init__(self, url: str, **limits: Any):
        # limits: max_pending, max_pending_bytes, max_batch, timeout, health_interval
        super().__init__(**limits)
        self.url = url
        self.channel = ""
        # application_name of this broker's sessions (pg_stat_activity): an
        # operator, or a test, can tell them apart
        self.client_name = f"tidings-broker-{id(self):x}"
        self._pool: asyncpg.Pool | None = None
        self._decode_batch = msgspec.msgpack.Decoder(list[_ITEM]).decode
        self._sent_payloads = 0
        self._handlers: dict[str, Handler] = {}
        self._parts: list[bytes] = []
        self._listening = False
        # what starts this broker's payloads: no other broker's (26^8), and
        # never an earlier version's (a digit)
        self.origin = "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))
        self._own: list[tuple[str, Message]] = []  # published, for this node's handlers
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle -----------------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=4, timeout=self.timeout,
                command_timeout=self.timeout, server_settings={
                    "synchronous_commit": "off", "application_name": f"{self.client_name}:cmd"})
            async with self._pool.acquire() as conn:
                schema, ready = await conn.fetchrow(
                    "SELECT current_schema(), to_regprocedure("
                    "'broker_take(text, double precision, integer, integer)') IS NOT NULL")
            if not ready:
                raise BrokerUnavailable(
                    "the PostgreSQL broker needs the store's schema v5 or later: run "
                    "`tidings migrate` (docs/operations.md)")
            self.channel = channel_for(schema)
            listener = await self._receiver_connect()
        except (*DOWN, asyncpg.PostgresError) as e:
            await self._close_pool()
            raise BrokerUnavailable(f"PostgreSQL broker: {e}") from e
        except BaseException:
            await self._close_pool()
            raise
        self._start(listener)

    async def _shutdown(self) -> None:
        self._handlers.clear()
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except (TimeoutError, *_LOST):
                pool.terminate()

    async def _connect(self, role: str, **settings) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=self.timeout, server_settings={
            "application_name": f"{self.client_name}:{role}", **settings})

    # -- publishing: each item is (channel, message) in msgpack ---------------
    def publish(self, channel: str, message: Message) -> None:
        super().publish(channel, message)
        if self._closed or self._loop is None:
            return
        # this node's handlers: on the next tick, as the other nodes' get it
        # from the listener (a handler never runs inside publish), in order
        if not self._own:
            self._loop.call_soon(self._deliver_own)
        self._own.append((channel, message))

    def _deliver_own(self) -> None:
        own, self._own = self._own, []
        handlers = self._handlers
        for channel, message in own:
            handler = handlers.get(channel)
            if handler is None:  # nobody on this node
                continue
            self.received += 1
            try:
                handler(channel, message)
            except Exception:
                log.exception("broker handler failed on %s", channel)

    def _item(self, channel: str, message: Message) -> bytes:
        return self._encode((channel, message))

    @staticmethod
    def _size(item: bytes) -> int:
        return len(item)

    async def _writer_connect(self) -> asyncpg.Connection:
        return await self._connect("notify", synchronous_commit="off")

    def _usable(self, conn: asyncpg.Connection) -> bool:
        return not conn.is_closed()

    async def _send(self, conn: asyncpg.Connection, batch: list[bytes]) -> None:
        payloads = pack(batch, self._sent_payloads, self.origin)
        self._sent_payloads = (self._sent_payloads + len(payloads)) % 1_000_000_000
        # Nothing of a failed transaction is delivered.
        await conn.execute(_NOTIFY, self.channel, payloads, timeout=self.timeout)

    async def _discard(self, conn: asyncpg.Connection) -> None:
        conn.terminate()

    # -- subscriptions --------------------------------------------------------
    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler

    def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)

    # settle(): the base class's.  The one LISTEN is in place from open() on
    # (and while it is being re-established, on_reconnect follows), and
    # handlers are local, so a subscription is in effect when it returns.

    async def _receiver_connect(self) -> asyncpg.Connection:
        conn = await self._connect("listen")
        await conn.add_listener(self.channel, self._on_notify)
        self._parts.clear()
        self._listening = True
        return conn

    async def _receive(self, conn: asyncpg.Connection, lost: bool, backoff: Backoff) -> None:
        """Watch the listening connection: listening is in effect at once."""
        if lost:
            backoff.reset()
            self._reconnected("listening again")
        done = asyncio.Event()
        conn.add_termination_listener(lambda _: done.set())
        while True:
            try:
                await asyncio.wait_for(done.wait(), self.health_interval)
            except TimeoutError:
                # a vanished peer sends no reset: ask
                await conn.fetchval("SELECT 1", timeout=self.timeout)
                continue
            raise ConnectionError("the listening connection was closed")

    async def _receiver_down(self, conn: asyncpg.Connection) -> None:
        self._listening = False
        conn.terminate()

    def _on_notify(self, conn, pid, channel, payload: str) -> None:
        if payload.startswith(self.origin):
            return  # this broker's own: its handlers had it at publish
        try:
            _, rest, data = payload.split(":", 2)
            self._parts.append(base64.b64decode(data))
            if rest != "0":
                return
            raw = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts.clear()
            items = self._decode_batch(raw)
        except (ValueError, binascii.Error, msgspec.DecodeError):
            self._parts.clear()
            self.undecodable += 1
            return
        handlers = self._handlers
        for name, body in items:
            handler = handlers.get(name)
            if handler is not None:  # else nobody on this node
                self._deliver(handler, name, body)

    # -- node registry and rate limits ------------------------------------------
    async def heartbeat(self, node: str, info: dict, ttl: float) -> None:
        await self._call(
            "WITH swept AS (DELETE FROM broker_buckets "
            "WHERE full_at < extract(epoch FROM clock_timestamp())) "
            "INSERT INTO broker_nodes (node, info, expires_at) "
            "VALUES ($1, $2::jsonb, extract(epoch FROM clock_timestamp()) + $3) "
            "ON CONFLICT (node) DO UPDATE SET info = EXCLUDED.info, "
            "expires_at = EXCLUDED.expires_at",
            node, msgspec.json.encode(info).decode(), float(ttl))

    async def nodes(self) -> dict[str, dict]:
        rows = await self._call(
            "SELECT node, info::text FROM broker_nodes "
            "WHERE expires_at > extract(epoch FROM clock_timestamp())", fetch=True)
        return {node: msgspec.json.decode(info) for node, info in rows}

    async def take(self, key: str, rate: float, burst: int, cost: int = 1) -> float:
        ratelimit.check(rate, burst, cost)
        return float(await self._call("SELECT broker_take($1, $2, $3, $4)", key, float(rate),
                                      burst, cost, value=True))

    async def _call(self, sql: str, *args, fetch: bool = False, value: bool = False):
        if self._pool is None:
            raise BrokerUnavailable("PostgreSQL broker is closed")
        try:
            if value:
                return await self._pool.fetchval(sql, *args)
            if fetch:
                return await self._pool.fetch(sql, *args)
            return await self._pool.execute(sql, *args)
        except (*DOWN, *STALE, *CANNOT_WRITE) as e:
            # a database that cannot write (read-only, disk full) cannot count
            # rate limits or heartbeats either: the broker is away, not broken
            raise BrokerUnavailable(f"PostgreSQL broker: {e}") from e

    async def ping(self) -> bool:
        if self._pool is None or not self._listening:
            return False
        try:
            return await self._pool.fetchval("SELECT true", timeout=self.timeout)
        except (TimeoutError, *_LOST):
            return False
