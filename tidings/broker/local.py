"""The in-process broker: the zero-configuration default for one node.

Publishing calls the channel's handler directly, in the same loop tick, so
order per channel is exactly publish order and nothing is ever dropped.
The personal entries of one publish go to the app channel's handler as one
``Personals`` message (the hub delivers them in one pass), not as one
message per recipient: the same calls in the same tick, so the order per
user is the same too.
"""

from __future__ import annotations

import time

from tidings.broker.base import Broker, Handler, Message, Personals, all_channel
from tidings.core.ratelimit import TokenBuckets


class LocalBroker(Broker):
    inline = True
    shared = False

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.published = 0
        self._nodes: dict[str, tuple[float, dict]] = {}
        self._buckets = TokenBuckets(time.monotonic)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self._handlers.clear()

    def publish(self, channel: str, message: Message) -> None:
        self.published += 1
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(channel, message)

    def publish_personals(self, app: str, message: Personals) -> None:
        self.published += 1
        channel = all_channel(app)
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(channel, message)

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel] = handler

    def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)

    async def heartbeat(self, node: str, info: dict, ttl: float) -> None:
        self._nodes[node] = (time.monotonic() + ttl, dict(info))

    async def nodes(self) -> dict[str, dict]:
        now = time.monotonic()
        self._nodes = {n: v for n, v in self._nodes.items() if v[0] > now}
        return {n: info for n, (_, info) in self._nodes.items()}

    async def take(self, key: str, rate: float, burst: int, cost: int = 1) -> float:
        return self._buckets.take(key, rate, burst, cost)
