"""The broker contract: live fan-out between the nodes of a cluster.

Guarantee: **at most once, in publish order per channel from one publisher.**
A broker may drop messages (a restart, a network blip); it never invents or
duplicates them.  Nothing depends on the broker for durability: every message
describes something already committed to the store, each personal event
carries its ``seq``, and the gateway fills any gap it sees from the store.

Channels (app-scoped, so no message can cross apps, but for one that every
node shares):

* ``<app>:u:<user>`` -- everything for one user (notifications, state, counts,
  topic memberships, in-app mutes changed)
* ``<app>:t:<topic>`` -- feed items of a topic fanned out on read
* ``<app>:*``       -- broadcasts (feed items for every user of the app); on
  the in-process broker also the personal entries of one publish for many
  users (``Personals``, see ``publish_personals``)
* ``~keys``         -- credentials changed: API keys revoked or rotated (``KeyRevoked``),
  signing secrets rotated (``SecretRotated``), dashboard sessions logged
  out (``SessionEnded``), users' tokens revoked (``TokensRevoked``) and one
  token revoked (``TokenRevoked``), for
  every node's cache of verified keys, app records, tokens and sessions, and
  its open streams.  The one channel that is not an
  app's: every node listens to it from the start (``~`` is in no app id,
  so it meets no app's channel).
* ``~stats``        -- every node's figures of its last second (``NodeStats``),
  for the other nodes' dashboards; a node listens to it from the start too.

A networked broker can lose its connection.  When it has one again and has
re-established every subscription, it calls the ``on_reconnect`` callbacks:
whatever was published in between may be lost, so the gateway catches every
open stream up from the store.

``QueuedBroker`` is what the networked brokers (redis.py, postgres.py) share:
the bounded publish queue and its writer task, the receiving connection's
reconnect loop, the ``on_reconnect`` callbacks and a graceful ``close``.
Each backend adds only its wire protocol, its connections and its packing.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from tidings.core.backoff import Backoff
from tidings.core.events import with_group

log = logging.getLogger("tidings.broker")


class Message(msgspec.Struct, array_like=True, tag=True):
    """Base of everything that crosses the broker."""


class Personal(Message, tag="p"):
    """A committed inbox entry for one user."""

    epoch: str
    seq: int
    # the notification's JSON; for a group entry followed by ``,"group":{...}``
    # (tidings.core.events.with_group): the rest of the event, spliced as is
    body: bytes
    # wall-clock time the publish's store commit returned; publish -> device
    # latency is measured from it (0.0: unknown, not measured).  Trailing and
    # defaulted, so array-encoded messages without it still decode.
    sent_at: float = 0.0
    # the publish's W3C traceparent when tracing is on (tidings/tracing.py), else ""
    trace: str = ""


class Personals(Message, tag="ps"):
    """The personal entries one publish wrote, for every recipient at once:
    the body once and each recipient's ``user``, ``epoch``, ``seq`` and
    ``group`` (``tidings.store.base.Delivery``).  ``Broker.publish_personals``
    takes it; it never crosses the network (a networked broker sends one
    ``Personal`` per user's channel instead), so ``deliveries`` is not typed
    for decoding."""

    body: bytes
    deliveries: list
    sent_at: float = 0.0  # as in Personal
    trace: str = ""  # as in Personal


class Feed(Message, tag="f"):
    """A feed item (broadcast or large topic), one frame for every connection."""

    offset: int
    frame: bytes
    sent_at: float = 0.0  # as in Personal
    trace: str = ""  # as in Personal
    # the item's category: a stream whose user muted it in-app skips the
    # frame without decoding it (tidings/gateway/stream.py).  Trailing and
    # defaulted, as sent_at: a node without it ignores it, and one with it
    # reads a message without it as "" (no user mutes "").
    category: str = ""


class Frames(Message, tag="x"):
    """Ready frames for the user's (or audience's) open connections: updated,
    deleted, state and counts events, which are not part of the replayable
    stream (a reconnecting client reloads them from hello and the inbox)."""

    frames: list[bytes]
    # and then the counts of each receiving user with a stream on the node,
    # read again there (a retracted feed item, or the retention sweep's
    # deletes with no frame: tidings/gateway/recount.py).
    # Trailing and defaulted: a node without it ignores it, and one with it
    # reads a message without it as False.
    recount: bool = False


class Membership(Message, tag="m"):
    """A topic subscription changed: connections start or stop receiving the
    topic's feed items."""

    topic: str
    added: bool


class MutesChanged(Message, tag="mu"):
    """The user's preferences changed, and with them perhaps the categories
    they muted in-app: each node with a stream of the user reads them again,
    then the user's counts (tidings/gateway/recount.py).  Names nothing: the
    store is read after the message, so two changes crossing on their way
    leave every node with the last one."""


class KeyRevoked(Message, tag="k"):
    """An API key was revoked, or a rotation moved its expiry: every node
    forgets it, and reads it again at its next use (tidings/service/keys.py).
    Names the key by its prefix, never by the key or its hash."""

    app: str
    prefix: str


class SecretRotated(Message, tag="r"):
    """An app's signing secret was rotated: every node reads the app again
    and forgets the tokens it verified (tidings/service/apps.py).  Names the
    app only: a secret never crosses the broker."""

    app: str


class SessionEnded(Message, tag="s"):
    """A dashboard session was logged out: every node forgets that it found
    it open (tidings/service/sessions.py).  Names the session by its id,
    which without the cookie's signature opens nothing."""

    session: str


class TokensRevoked(Message, tag="t"):
    """A user's tokens issued before ``before`` (Unix seconds, against their
    ``iat``) were revoked: every node refuses them and ends the streams they
    opened (tidings/service/revocations.py).  The cutoff travels with it, so
    a node needs no store read to apply it."""

    app: str
    user: str
    before: float


class TokenRevoked(Message, tag="j"):
    """One token of a user, named by its ``jti``, was revoked until
    ``until`` (Unix seconds, when it expires): every node refuses it and ends
    the streams it opened (tidings/service/revocations.py).  The jti names
    the token without being it: it opens nothing."""

    app: str
    user: str
    jti: str
    until: float


class NodeStats(Message, tag="n"):
    """One node's last second, once a second, for the cluster view of every
    other node's dashboard (tidings/dashboard/cluster.py): per app that did
    something or held streams, ``(published, delivered, errors, connections,
    latency)`` of the second, ``latency`` the new observations per bucket of
    tidings.core.stats.LATENCY_BUCKETS (None: none).  Every fifth second also
    ``counters``: per app, its totals since the node started and its stream
    gauges, in the order of ``tidings.dashboard.cluster.COUNTERS``."""

    node: str
    t: float  # wall-clock end of the second
    dt: float  # its length
    apps: dict[str, tuple[int, int, int, int, list[int] | None]]
    counters: dict[str, tuple[int, ...]] = {}


# Where KeyRevoked, SecretRotated, SessionEnded, TokensRevoked and TokenRevoked
# travel (the module docstring's list of channels).
KEYS_CHANNEL = "~keys"
# Where NodeStats travel.
STATS_CHANNEL = "~stats"

Handler = Callable[[str, Message], None]


class BrokerUnavailable(Exception):
    """The broker could not be reached.  Callers of ``take``, ``heartbeat``
    and ``nodes`` decide whether to fail open or closed; ``publish`` never
    raises it (it drops instead, at most once)."""


def user_channel(app: str, user: str) -> str:
    return f"{app}:u:{user}"


def topic_channel(app: str, topic: str) -> str:
    return f"{app}:t:{topic}"


def all_channel(app: str) -> str:
    return f"{app}:*"


class Broker(abc.ABC):
    # True when ``publish`` runs this node's handlers before it returns (the
    # in-process broker): what this node learns from a message, it has then
    # learnt by the time ``publish`` returns.
    inline = False
    # False when no other node, nor this one once restarted, sees what
    # ``take`` keeps (the in-process broker): a limit a node also keeps in its
    # own memory gains nothing from asking it (tidings/service/failures.py).
    shared = True

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def publish(self, channel: str, message: Message) -> None:
        """Send without waiting (at most once).  Order is kept per channel."""

    def publish_personals(self, app: str, message: Personals) -> None:
        """The personal entries of one publish, at most once, each in order
        on its user's channel.  Sent as one ``Personal`` per recipient to
        ``<app>:u:<user>``: a networked broker routes them, so a node
        receives only its own users' entries.  The in-process broker hands
        the whole message to the app channel's handler instead, one call
        per publish however many recipients (broker/local.py)."""
        body, sent_at, trace = message.body, message.sent_at, message.trace
        publish = self.publish
        for d in message.deliveries:
            payload = body if d.group is None else with_group(body, d.group)
            publish(user_channel(app, d.user), Personal(d.epoch, d.seq, payload, sent_at, trace))

    @abc.abstractmethod
    def subscribe(self, channel: str, handler: Handler) -> None:
        """Deliver messages on ``channel`` to ``handler(channel, message)``,
        on the event loop thread.  One handler per channel per node."""

    @abc.abstractmethod
    def unsubscribe(self, channel: str) -> None: ...

    async def settle(self) -> None:
        """Return once every ``subscribe``/``unsubscribe`` made so far is in
        effect, so that a message another node publishes from now on reaches
        this node.  A stream calls it before it reads its position from the
        store; otherwise something committed in between could be missed.
        (Also returns when the broker is disconnected: ``on_reconnect``
        follows.)"""
        return None

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the event loop thread each time the broker
        has recovered from a lost connection and re-established every
        subscription: messages published during the outage may be lost.
        A broker that never loses messages (the in-process one) never calls it."""
        return None

    @abc.abstractmethod
    async def heartbeat(self, node: str, info: dict, ttl: float) -> None:
        """Record that ``node`` is alive, with ``info`` (a small JSON-able
        dict: address, connections, ...), for the next ``ttl`` seconds."""

    @abc.abstractmethod
    async def nodes(self) -> dict[str, dict]:
        """Every node whose last heartbeat has not expired, with its info
        (the dashboard's list of nodes in the cluster)."""

    @abc.abstractmethod
    async def take(self, key: str, rate: float, burst: int, cost: int = 1) -> float:
        """Rate limits shared by every node: take ``cost`` tokens from the
        token bucket ``key`` (``burst`` tokens at most, refilled at ``rate``
        a second; tidings/core/ratelimit.py has the arithmetic).  Returns 0.0
        when they were taken, else the seconds until there will be enough
        (nothing is taken then).  ``ValueError`` for impossible limits
        (``cost`` above ``burst``, ``rate`` not positive)."""

    async def ping(self) -> bool:
        return True


Item = TypeVar("Item")
Conn = TypeVar("Conn")


class QueuedBroker(Broker, Generic[Item, Conn]):
    """A networked broker: ``publish`` puts an encoded item on a bounded
    queue and returns; a writer task sends everything queued, in queue order
    on one connection, batch after batch.  At most once: when the backend is
    unreachable the queue fills up and further messages are dropped (and
    counted), and a batch that failed is dropped whole, never sent again.

    A receiver task owns the connection messages arrive on: when it is lost
    it reconnects with backoff, and once every subscription is in effect
    again the subscriber calls ``_reconnected``, which tells ``on_reconnect``.

    A subclass sets ``name`` (for the log) and ``lost`` (the exceptions of a
    lost connection) and implements the hooks below the line."""

    name = "broker"
    lost: tuple[type[Exception], ...] = (OSError,)

    def __init__(
        self,
        *,
        max_pending: int = 100_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_batch: int = 1000,
        timeout: float = 5.0,
        health_interval: float = 15.0,
    ):
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_batch = max_batch
        self.timeout = timeout
        self.health_interval = health_interval
        self._closed = False
        self._lost_or_timeout: tuple[type[Exception], ...] = (*self.lost, TimeoutError)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(
            Personal | Feed | Frames | Membership | MutesChanged | KeyRevoked | SecretRotated
            | SessionEnded | TokensRevoked | TokenRevoked | NodeStats).decode
        # publishing
        self._queue: deque[Item] = deque()
        self._queued_bytes = 0
        self._writer_wake: asyncio.Future | None = None
        self._writer_task: asyncio.Task | None = None
        self._writer_up = False
        self._writer_tried = False  # the writer has tried to connect at least once
        self._drained: asyncio.Future | None = None
        # receiving
        self._receiver_task: asyncio.Task | None = None
        self._reconnect_callbacks: list[Callable[[], None]] = []
        # counters (exported by the ops endpoints)
        self.published = 0  # messages the backend accepted
        self.dropped = 0  # messages given up: queue full, or a failed batch
        self.received = 0
        self.undecodable = 0
        self.reconnects = 0

    # -- life cycle -----------------------------------------------------------
    def _start(self, receiver: Conn) -> None:
        """Run the writer, and the receiver on its first connection (open())."""
        loop = asyncio.get_running_loop()
        self._receiver_task = loop.create_task(self._receiver(receiver))
        self._writer_task = loop.create_task(self._writer())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A graceful stop announces what was already committed, if the backend
        # is there, or not known to be away: a short-lived process (a CLI
        # command that revokes a key) closes before its writer ever ran.
        if self._queue and self._writer_task is not None and (
                self._writer_up or not self._writer_tried):
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), self.timeout)
            except TimeoutError:
                pass
        tasks = [t for t in (self._writer_task, self._receiver_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            # A library call on the way may swallow the cancellation, and the
            # task go on to its next wait (seen with the Redis Cluster broker
            # closed just after a publish): cancel again until it ends.
            while not task.done():
                await asyncio.wait({task}, timeout=0.1)
                task.cancel()
            if not task.cancelled():
                task.exception()  # what it ended with is moot at close: retrieved
        self.dropped += len(self._queue)
        self._queue.clear()
        await self._shutdown()

    # -- publishing -----------------------------------------------------------
    def publish(self, channel: str, message: Message) -> None:
        item = self._item(channel, message)
        size = self._size(item)
        if (
            self._closed
            or len(self._queue) >= self.max_pending
            or self._queued_bytes + size > self.max_pending_bytes
        ):
            self.dropped += 1
            return
        self._queue.append(item)
        self._queued_bytes += size
        wake = self._writer_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        backoff = Backoff(base=0.1, cap=5.0)
        conn: Conn | None = None
        try:
            while True:
                if not queue:
                    if self._drained is not None and not self._drained.done():
                        self._drained.set_result(None)
                    self._writer_wake = loop.create_future()
                    await self._writer_wake
                    self._writer_wake = None
                    continue
                if conn is not None and not self._usable(conn):
                    # Lost while idle (a reset during an outage): nothing of the
                    # queue was sent on it, so connect again instead of dropping.
                    conn = None
                if conn is None:
                    self._writer_tried = True
                    try:
                        conn = await self._writer_connect()
                    except self.lost as e:
                        if backoff.attempt == 0:
                            log.warning("%s: cannot publish (%s); retrying", self.name, e)
                        await asyncio.sleep(backoff.next_delay())
                        continue
                    self._writer_up = True
                # Subscriptions made before these messages were queued must be in
                # effect first, or this node would miss its own messages.
                await self.settle()
                n = min(len(queue), self.max_batch)
                batch = [queue.popleft() for _ in range(n)]
                self._queued_bytes -= sum(map(self._size, batch))
                try:
                    await self._send(conn, batch)
                except Exception as e:  # a lost connection, a timeout, a refusal
                    # Some of the batch may have gone out: at most once, never twice.
                    self.dropped += n
                    self._writer_up = False
                    await self._discard(conn)
                    conn = None
                    log.warning("%s: publishing failed (%r); %d messages dropped", self.name, e, n)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                self.published += n
                backoff.reset()
        finally:
            # close(): the connection goes with the task (a failed one was discarded)
            if conn is not None:
                await self._discard(conn)

    # -- receiving ------------------------------------------------------------
    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnect_callbacks.append(callback)

    async def _receiver(self, conn: Conn | None) -> None:
        """Own the receiving connection: run it, and when it breaks,
        reconnect with backoff and run it again."""
        backoff = Backoff(base=0.1, cap=5.0)
        lost = False
        while True:
            if conn is None:
                try:
                    conn = await self._receiver_connect()
                except self.lost as e:
                    log.debug("%s: reconnect failed: %s", self.name, e)
                    await asyncio.sleep(backoff.next_delay())
                    continue
            try:
                await self._receive(conn, lost, backoff)
            except self._lost_or_timeout as e:
                log.warning("%s: receiving connection lost (%r); reconnecting", self.name, e)
            except Exception:
                log.exception("%s: receiving failed; reconnecting", self.name)
            finally:
                await self._receiver_down(conn)
            conn, lost = None, True
            await asyncio.sleep(backoff.next_delay())

    def _deliver(self, handler: Handler, channel: str, data: bytes) -> None:
        """Decode one received message and hand it to its channel's handler
        (a message that does not decode is counted and skipped)."""
        try:
            message = self._decode(data)
        except msgspec.DecodeError:
            self.undecodable += 1
            return
        self.received += 1
        try:
            handler(channel, message)
        except Exception:
            log.exception("broker handler failed on %s", channel)

    def _reconnected(self, what: str) -> None:
        """Every subscription is in effect again after a lost connection:
        what was published meanwhile may be lost, tell ``on_reconnect``."""
        self.reconnects += 1
        log.warning("%s: %s", self.name, what)
        for callback in list(self._reconnect_callbacks):
            try:
                callback()
            except Exception:
                log.exception("on_reconnect callback failed")

    # -- what a backend implements ----------------------------------------------
    @abc.abstractmethod
    def _item(self, channel: str, message: Message) -> Item:
        """The queued form of one message (encoded once, on the caller's tick)."""

    @abc.abstractmethod
    def _size(self, item: Item) -> int:
        """The bytes ``item`` counts against ``max_pending_bytes``."""

    @abc.abstractmethod
    async def _writer_connect(self) -> Conn:
        """A connection to publish on; raises one of ``lost`` when there is none."""

    def _usable(self, conn: Conn) -> bool:
        """Whether an idle publishing connection is still worth a batch."""
        return True

    @abc.abstractmethod
    async def _send(self, conn: Conn, batch: list[Item]) -> None:
        """Send a batch (within ``timeout``); any exception drops it whole."""

    @abc.abstractmethod
    async def _discard(self, conn: Conn) -> None:
        """Close a connection that failed, without waiting on the peer."""

    @abc.abstractmethod
    async def _receiver_connect(self) -> Conn:
        """A new receiving connection, subscribed to nothing yet."""

    @abc.abstractmethod
    async def _receive(self, conn: Conn, lost: bool, backoff: Backoff) -> None:
        """Receive on ``conn`` until it breaks (raise).  ``lost``: a
        connection was lost before this one; once every subscription is in
        effect again, reset ``backoff`` and call ``_reconnected``."""

    @abc.abstractmethod
    async def _receiver_down(self, conn: Conn) -> None:
        """Clean up after ``_receive`` ended (the receiver reconnects next)."""

    @abc.abstractmethod
    async def _shutdown(self) -> None:
        """Forget every handler and close the connections (close(), last)."""
