"""The Redis broker: live fan-out between the nodes of a cluster.

One Redis (7.0 or later) carries every node's messages with sharded pub/sub
(``SPUBLISH``/``SSUBSCRIBE``), so that the same code can run on Redis
Cluster, where sharded channels stay on the shard that owns their slot
instead of being broadcast to every shard.

Channels and keys carry the app and a hash tag per user, topic or app:
the logical channel ``<app>:u:<user>`` becomes ``<prefix>:{<app>:u:<user>}``,
with ``%``, ``{`` and ``}`` percent-encoded inside the braces.  Redis hashes
only what lies between the first ``{`` and the next ``}``; since the encoded
name holds neither, the hash tag is exactly the logical channel, and the
mapping is injective (percent-encoding is).

Publishing is synchronous and never blocks the event loop: ``publish``
encodes the message (msgpack), appends it to a bounded queue and returns.
A writer task sends everything queued as one pipeline of ``SPUBLISH``
commands, waits for the replies, and goes again: one round trip per batch,
in queue order on one connection, so order per channel is kept.  When Redis
is unreachable the queue fills up and further messages are dropped and
counted -- at most once is the contract, and the store is the source of
truth.

Subscriptions go over one dedicated pub/sub connection per process (per
shard on Redis Cluster: redis_cluster.py; a ``Link`` holds a role's
connections and knows which of them owns a channel).
``subscribe`` and ``unsubscribe`` only record the wish; a control task sends
the difference once per loop tick, each batch followed by ``PING <n>`` on
every connection, so that the ``pong`` tells exactly which batches Redis has
applied (``settle``).  A reader task per connection blocks on the socket (no
``get_message(timeout=0)`` polling) and calls the handlers on the event loop
thread.  When a connection is lost, or Redis unsubscribes a channel itself
(its slot moved to another shard), the broker drops them all, reconnects with
jittered backoff, subscribes to every channel again, and then calls the
``on_reconnect`` callbacks.

The node registry and the token bucket are Lua scripts kept beside this
module (``lua/*.lua``), so each is one atomic step on the Redis clock.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry  # the asyncio one: redis-py warns on the other
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError, ResponseError

from tidings.broker.base import BrokerUnavailable, Handler, Message, QueuedBroker
from tidings.core import ratelimit
from tidings.core.backoff import Backoff

_PREFIX = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}\Z")
_SUBSCRIBE_CHUNK = 5000  # commands per write when (re)subscribing many channels


def _escape(name: str) -> str:
    """Percent-encode what may not appear inside a hash tag ("%" first, so
    the encoding stays reversible).  Checked first: this runs per publish,
    and ``str.translate`` to multi-character strings costs microseconds."""
    if "%" in name or "{" in name or "}" in name:
        return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return name


def hash_tag(key: bytes) -> bytes:
    """What Redis Cluster hashes for ``key``: the part between the first
    ``{`` and the next ``}`` if non-empty, else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def _load(name: str) -> str:
    return (resources.files("tidings.broker") / "lua" / name).read_text("utf-8")


def _spublish(channel: bytes, data: bytes) -> bytes:
    """``SPUBLISH channel data`` in RESP, packed by hand: this is per message."""
    return b"*3\r\n$8\r\nSPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel), channel, len(data), data,
    )


class Link:
    """The connections of one role (publishing, or pub/sub), one per shard,
    and which of them owns a channel: ``owner(channel)`` is an index into
    ``conns``.  On a single Redis one connection owns every channel."""

    def __init__(self, conns: list[AbstractConnection],
                 owner: Callable[[bytes], int] | None = None):
        self.conns = conns
        self.owner = owner or (lambda channel: 0)
        self.rx = [False] * len(conns)  # heard from since the last health check
        self.confirmed = [0] * len(conns)  # the last subscription batch each answered
        # SUNSUBSCRIBEs sent and not yet answered, by channel: a ``sunsubscribe``
        # beyond them is Redis's own (the channel's slot moved away).
        self.unsubscribing: dict[bytes, int] = {}

    def split(self, items: list[tuple[bytes, Any]]) -> list[list[Any]]:
        """``(channel, x)`` pairs -> each connection's ``x``, in order."""
        if len(self.conns) == 1:
            return [[x for _, x in items]]
        out: list[list[Any]] = [[] for _ in self.conns]
        owner = self.owner
        for channel, x in items:
            out[owner(channel)].append(x)
        return out

    async def disconnect(self) -> None:
        for conn in self.conns:
            await conn.disconnect(nowait=True)


class RedisBroker(QueuedBroker[tuple[bytes, bytes], Link]):
    """``RedisBroker("redis://host:6379/0")``; ``rediss://`` for TLS.

    ``prefix`` namespaces every channel and key (several deployments, or
    test runs, can share one Redis); ``?prefix=`` in the URL sets it too.
    """

    name = "Redis broker"
    lost = (RedisError, OSError)

    def __init__(self, url: str, *, prefix: str = "tidings", **limits: Any):
        # limits: max_pending, max_pending_bytes, max_batch, timeout, health_interval
        super().__init__(**limits)
        url, prefix = _split_prefix(url, prefix)
        if not _PREFIX.match(prefix):
            raise ValueError("the Redis prefix must be 1-64 of A-Z a-z 0-9 _ . : -")
        self.url = url
        self.prefix = prefix
        # Names that show up in CLIENT LIST: an operator (or a test) can tell
        # this process's connections apart.
        self.client_name = f"{prefix}:{id(self):x}"
        self._redis: aioredis.Redis | None = None
        # subscriptions: Redis channel -> (logical channel, handler)
        self._handlers: dict[bytes, tuple[str, Handler]] = {}
        self._server: set[bytes] = set()  # sent to the current pub/sub connection
        self._changed: set[bytes] = set()  # wished for, not yet sent
        self._sub: Link | None = None
        self._control_wake: asyncio.Future | None = None
        self._ping_due = False
        self._sent = 0  # subscription batches sent (each ends with PING <n>)
        self._confirmed = 0  # the last batch Redis has answered
        self._settle_waiters: list[tuple[int, asyncio.Future]] = []

    # -- names ----------------------------------------------------------------
    def channel_name(self, channel: str) -> bytes:
        """The Redis channel for a logical one, hash-tagged by the whole name."""
        return f"{self.prefix}:{{{_escape(channel)}}}".encode("utf-8", "surrogatepass")

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{{{_escape(name)}}}"

    # -- life cycle -----------------------------------------------------------
    async def open(self) -> None:
        self._redis = self._client()
        nodes = f"{self.prefix}:{{nodes}}"
        self._node_keys = [f"{nodes}:expiry", f"{nodes}:info"]
        self._heartbeat = self._redis.register_script(_load("heartbeat.lua"))
        self._nodes = self._redis.register_script(_load("nodes.lua"))
        self._take = self._redis.register_script(_load("take.lua"))
        try:
            await self._probe()
            link = await self._receiver_connect()
        except BrokerUnavailable:
            await self._redis.aclose()
            raise
        except (RedisError, OSError) as e:
            await self._redis.aclose()
            raise BrokerUnavailable(f"Redis broker at {self._where()}: {e}") from e
        self._sub = link  # up from now on: settle() waits for the first batch
        self._start(link)

    def _client(self) -> Any:
        """The client that runs commands and scripts."""
        return aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            # one retry on a fresh connection covers a pooled socket that a
            # Redis restart left dead; longer outages are the caller's call
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 1),
            client_name=f"{self.client_name}:cmd",
        )

    async def _probe(self) -> None:
        """Fail fast on a wrong URL, a Redis without sharded pub/sub (< 7.0),
        or one shard of a Redis Cluster, which would answer MOVED for the
        channels of the other shards."""
        assert self._redis is not None
        try:
            info = await self._redis.execute_command("CLUSTER", "INFO")
        except ResponseError:  # not a cluster (or not allowed to ask)
            info = b""
        shards = re.search(rb"cluster_size:(\d+)", info)
        if shards and int(shards[1]) > 1:
            raise BrokerUnavailable(
                f"Redis broker at {self._where()}: this Redis is one of {int(shards[1])} "
                f"shards of a Redis Cluster; use redis+cluster://{self._where()}")
        await self._redis.execute_command("SPUBLISH", self.channel_name("probe"), b"")

    async def _shutdown(self) -> None:
        self._handlers.clear()
        if self._redis is not None:
            await self._redis.aclose()

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def _connection_settings(self) -> tuple[type[AbstractConnection], dict[str, Any]]:
        """The class and arguments of the command client's connections."""
        assert self._redis is not None
        pool = self._redis.connection_pool
        return pool.connection_class, pool.connection_kwargs

    async def _connect(self, role: str, **overrides) -> AbstractConnection:
        """A dedicated connection, outside the pool: this module owns its
        reconnection, so redis-py must not retry or resubscribe behind it."""
        if self._redis is None:
            raise BrokerUnavailable("the Redis broker is not open")
        cls, kwargs = self._connection_settings()
        conn = cls(**{
            **kwargs, "retry": Retry(NoBackoff(), 0),
            "client_name": f"{self.client_name}:{role}", **overrides,
        })
        await conn.connect()
        return conn

    async def _link(self, role: str, **overrides) -> Link:
        """The connections of ``role``: one, to the one Redis."""
        return Link([await self._connect(role, **overrides)])

    # -- publishing: each item is (Redis channel, message in msgpack) ----------
    def _item(self, channel: str, message: Message) -> tuple[bytes, bytes]:
        return self.channel_name(channel), self._encode(message)

    @staticmethod
    def _size(item: tuple[bytes, bytes]) -> int:
        return len(item[1])

    async def _writer_connect(self) -> Link:
        return await self._link("pub", socket_timeout=None)

    async def _send(self, link: Link, batch: list[tuple[bytes, bytes]]) -> None:
        """Every shard's part of the batch written first, then the replies read:
        one round trip however many shards.  A ``MOVED`` reply (the slot map
        changed) fails the batch, and the writer connects again afresh."""
        parts = link.split([(c, _spublish(c, d)) for c, d in batch])
        async with asyncio.timeout(self.timeout):
            for conn, packed in zip(link.conns, parts, strict=True):
                if packed:
                    await conn.send_packed_command(packed, check_health=False)
            for conn, packed in zip(link.conns, parts, strict=True):
                for _ in packed:
                    await conn.read_response()

    async def _discard(self, link: Link) -> None:
        await link.disconnect()

    # -- subscriptions --------------------------------------------------------
    def subscribe(self, channel: str, handler: Handler) -> None:
        name = self.channel_name(channel)
        self._handlers[name] = (channel, handler)
        self._changed.add(name)
        self._wake_control()

    def unsubscribe(self, channel: str) -> None:
        name = self.channel_name(channel)
        # Forgetting the handler now stops delivery at once, whatever is in flight.
        if self._handlers.pop(name, None) is not None or name in self._server:
            self._changed.add(name)
            self._wake_control()

    async def settle(self) -> None:
        if self._sub is None:
            return
        if self._changed:
            target = self._sent + 1  # the batch the control task sends next
        elif self._confirmed >= self._sent:
            return
        else:
            target = self._sent
        fut = asyncio.get_running_loop().create_future()
        self._settle_waiters.append((target, fut))
        await fut

    def _wake_control(self) -> None:
        wake = self._control_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _confirm(self, n: int) -> None:
        self._confirmed = max(self._confirmed, n)
        waiters = self._settle_waiters
        if waiters:
            self._settle_waiters = [(t, f) for t, f in waiters if t > n]
            for t, f in waiters:
                if t <= n and not f.done():
                    f.set_result(None)

    async def _receiver_connect(self) -> Link:
        # RESP2: pub/sub replies are plain arrays read in order with the
        # PING confirmations; no read timeout, the health check covers it.
        return await self._link("sub", socket_timeout=None, protocol=2)

    async def _receiver_down(self, link: Link) -> None:
        self._sub = None
        self._server.clear()
        self._changed.update(self._handlers)
        # Batches sent on the old connection are moot (the next one
        # subscribes everything again); settle() returns while down.
        self._confirmed = self._sent
        waiters, self._settle_waiters = self._settle_waiters, []
        for _, fut in waiters:
            if not fut.done():
                fut.set_result(None)
        await link.disconnect()

    async def _receive(self, link: Link, lost: bool, backoff: Backoff) -> None:
        """Subscribe everything on ``link``, then read, send changes and
        health-check it until one of its connections breaks."""
        loop = asyncio.get_running_loop()
        self._sub = link
        self._changed.update(self._handlers)
        workers = {loop.create_task(self._read(link, i)) for i in range(len(link.conns))}
        workers |= {loop.create_task(self._control(link)), loop.create_task(self._health(link))}
        settled = loop.create_task(self.settle())
        pending = workers | {settled}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is settled:
                        backoff.reset()
                        if lost:
                            self._reconnected(
                                f"reconnected and resubscribed {len(self._handlers)} channels")
                    else:
                        task.result()  # raises what broke the connection
                        raise ConnectionError("pub/sub task ended")
        finally:
            for task in workers | {settled}:
                task.cancel()
            await asyncio.gather(*workers, settled, return_exceptions=True)

    async def _control(self, link: Link) -> None:
        """Send subscription changes, one batch per wake-up, each ending with
        ``PING <n>`` on every connection; and health-check pings."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._changed and not self._ping_due:
                self._control_wake = loop.create_future()
                await self._control_wake
                self._control_wake = None
                continue
            changes: list[tuple[bytes, tuple]] = []
            batch = bool(self._changed)
            if batch:
                changed, self._changed = self._changed, set()
                for name in changed:
                    wanted, there = name in self._handlers, name in self._server
                    # One channel per command: on Redis Cluster all channels
                    # of one SSUBSCRIBE must hash to the same slot.
                    if wanted and not there:
                        changes.append((name, ("SSUBSCRIBE", name)))
                        self._server.add(name)
                    elif there and not wanted:
                        changes.append((name, ("SUNSUBSCRIBE", name)))
                        self._server.discard(name)
                        link.unsubscribing[name] = link.unsubscribing.get(name, 0) + 1
                self._sent += 1
            parts = link.split(changes)
            for conn, commands in zip(link.conns, parts, strict=True):
                if batch:
                    commands.append(("PING", str(self._sent)))
                if self._ping_due:
                    commands.append(("PING",))
                for i in range(0, len(commands), _SUBSCRIBE_CHUNK):
                    packed = conn.pack_commands(commands[i:i + _SUBSCRIBE_CHUNK])
                    async with asyncio.timeout(self.timeout):
                        await conn.send_packed_command(packed, check_health=False)
            self._ping_due = False

    async def _health(self, link: Link) -> None:
        """A silent connection is pinged; one that stays silent is dead
        (a vanished peer sends no reset)."""
        while True:
            link.rx = [False] * len(link.conns)
            await asyncio.sleep(self.health_interval)
            if all(link.rx):
                continue
            self._ping_due = True
            self._wake_control()
            await asyncio.sleep(self.health_interval)
            if not all(link.rx):
                raise TimeoutError("Redis did not answer a health check")

    async def _read(self, link: Link, i: int) -> None:
        handlers, conn = self._handlers, link.conns[i]
        while True:
            # Block until Redis sends something: no polling, no busy loop.
            reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
            link.rx[i] = True
            if isinstance(reply, bytes):  # PING outside subscribed mode: no array
                if reply.isdigit():
                    self._pong(link, i, int(reply))
                continue
            kind = reply[0]
            if kind == b"smessage":
                entry = handlers.get(reply[1])
                if entry is not None:  # else unsubscribed while it was in flight
                    self._deliver(entry[1], entry[0], reply[2])
            elif kind == b"pong" and reply[1].isdigit():
                self._pong(link, i, int(reply[1]))
            elif kind == b"sunsubscribe":
                name, pending = reply[1], link.unsubscribing
                if name in pending:
                    pending[name] -= 1
                    if not pending[name]:
                        del pending[name]
                elif name in self._server:
                    # Redis Cluster unsubscribes the channels of a slot that
                    # moved to another shard (a failover, a resharding).
                    raise ConnectionError(f"Redis unsubscribed {name!r}: its slot moved")

    def _pong(self, link: Link, i: int, n: int) -> None:
        link.confirmed[i] = max(link.confirmed[i], n)
        self._confirm(min(link.confirmed))

    # -- node registry and rate limits (Lua, one atomic step each) -------------
    async def heartbeat(self, node: str, info: dict, ttl: float) -> None:
        await self._call(self._heartbeat, self._node_keys,
                         [node, msgspec.json.encode(info), max(1, int(ttl * 1000))])

    async def nodes(self) -> dict[str, dict]:
        flat = await self._call(self._nodes, self._node_keys, [])
        return {
            flat[i].decode(): msgspec.json.decode(flat[i + 1]) for i in range(0, len(flat), 2)
        }

    async def take(self, key: str, rate: float, burst: int, cost: int = 1) -> float:
        ratelimit.check(rate, burst, cost)
        wait = await self._call(self._take, [self.key("rl", key)], [float(rate), burst, cost])
        return float(wait)

    async def _call(self, script, keys: list, args: list):
        try:
            # Redis Cluster's client retries on other shards and after
            # refreshing its slot map: bounded all the same.
            async with asyncio.timeout(self.timeout):
                return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as e:
            raise BrokerUnavailable(f"Redis broker at {self._where()}: {e}") from e

    async def ping(self) -> bool:
        if self._redis is None or self._sub is None:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), self.timeout))
        except (TimeoutError, RedisError, OSError):
            return False


def _split_prefix(url: str, prefix: str) -> tuple[str, str]:
    """Take ``?prefix=`` out of the URL (redis-py would reject it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    rest = [(k, v) for k, v in query if k != "prefix"]
    for k, v in query:
        if k == "prefix":
            prefix = v
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix
