"""The broker contract: live fan-out between the nodes of a cluster.

Guarantee: **at most once, in publish order per channel from one publisher.**
A broker may drop messages (a restart, a network blip); it never invents or
duplicates them.  Nothing depends on the broker for durability: every message
describes something already committed to the store, each personal event
carries its ``seq``, and the gateway fills any gap it sees from the store.

Channels (all app-scoped, so no message can cross apps):

* ``<app>:u:<user>`` -- everything for one user (notifications, state, counts)
* ``<app>:t:<topic>`` -- feed items of a topic fanned out on read
* ``<app>:*``       -- broadcasts (feed items for every user of the app)

A networked broker can lose its connection.  When it has one again and has
re-established every subscription, it calls the ``on_reconnect`` callbacks:
whatever was published in between may be lost, so the gateway catches every
open stream up from the store.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import msgspec


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


class Feed(Message, tag="f"):
    """A feed item (broadcast or large topic), one frame for every connection."""

    offset: int
    frame: bytes
    sent_at: float = 0.0  # as in Personal
    trace: str = ""  # as in Personal


class Frames(Message, tag="x"):
    """Ready frames for the user's (or audience's) open connections: updated,
    deleted, state and counts events, which are not part of the replayable
    stream (a reconnecting client reloads them from hello and the inbox)."""

    frames: list[bytes]


class Membership(Message, tag="m"):
    """A topic subscription changed: connections start or stop receiving the
    topic's feed items."""

    topic: str
    added: bool


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
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def publish(self, channel: str, message: Message) -> None:
        """Send without waiting (at most once).  Order is kept per channel."""

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
