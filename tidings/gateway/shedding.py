"""Ending a node's streams spread over time: a drain that keeps the node up, a shed.

WebSocket and SSE streams live for hours, so a node added behind a load
balancer gets only new devices while the old nodes keep every stream they
had; and taking a node out of service used to mean stopping it (SIGTERM).
Both are done by ending streams with the "shutdown: reconnect" close code
(4001): the device reconnects through the balancer at once and resumes from
its cursor, on whichever node the balancer picks.

Ending thousands of streams in the same instant would send all of them back
in the same second, each reconnect costing the store a head and a counts
read: the ends are spread evenly over ``over`` seconds instead (``spread``),
so reconnects arrive at ``n / over`` a second.

- a **drain** refuses new streams as the SIGTERM drain does (``Hub.draining``:
  readiness turns red, a stream that starts is refused with 503 / 4001) and
  ends every open one; the node keeps serving HTTP, and ``undrain`` makes it
  take streams again.
- a **shed** ends a fraction of the open streams, picked at random, and
  leaves readiness alone: the devices reconnect through the balancer and
  spread over every node, this one included.

One plan runs at a time: a new one (or an undrain) stops the one running,
whose streams not yet ended stay open.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tidings.core.models import SPREAD_DEFAULT
from tidings.errors import CLOSE_SHUTDOWN, Conflict

if TYPE_CHECKING:
    from tidings.gateway.stream import Stream

log = logging.getLogger("tidings.gateway")

# The shortest sleep between two batches of ends: a node with 100k streams
# ended over 30 s wakes 100 times a second, not 3,300.
TICK = 0.01


def spread(n: int, over: float) -> list[float]:
    """When each of ``n`` ends falls, in seconds from the start: evenly, the
    first at once and the last at ``over * (n - 1) / n``, inside the spread."""
    return [over * i / n for i in range(n)]


def shed_count(open_streams: int, fraction: float) -> int:
    """How many of ``open_streams`` a shed of ``fraction`` ends: the nearest
    whole number (Python's ``round``: halves go to the even one)."""
    return round(open_streams * fraction)


class Streams(Protocol):
    """What shedding needs of the node (hub.py's ``Hub``, which owns it): its
    open streams by user, and the flag that refuses new ones."""

    draining: bool
    users: dict[tuple[str, str], set[Stream]]


@dataclass
class Plan:
    """The ends running: a drain or a shed, what it planned and has done."""

    kind: str  # "drain" or "shed"
    planned: int  # streams it is to end
    over: float
    started_at: float  # wall clock, for the node's state
    ended: int = 0  # streams it has ended so far (one that ended itself is not counted)
    done: bool = False

    def describe(self) -> dict:
        return {"kind": self.kind, "planned": self.planned, "ended": self.ended,
                "over": self.over, "started_at": self.started_at,
                "ends_by": self.started_at + self.over, "done": self.done}


class Shedding:
    """The drain and shed of one hub's streams (the module docstring)."""

    def __init__(self, hub: Streams, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        self._hub = hub
        self._clock = clock
        self._rng = rng or random.Random()
        self._task: asyncio.Task | None = None
        self.plan: Plan | None = None  # the last one, running or done

    def _open(self) -> list[Stream]:
        streams = [s for group in self._hub.users.values() for s in group if not s.closed]
        self._rng.shuffle(streams)  # a user's devices are not all ended together
        return streams

    def drain(self, over: float = SPREAD_DEFAULT) -> Plan:
        """Refuse new streams and end every open one within ``over`` seconds."""
        self._hub.draining = True
        return self._start("drain", self._open(), over)

    def undrain(self) -> None:
        """Take streams again; a drain still running stops, and its streams
        not yet ended stay open."""
        self.stop()
        self._hub.draining = False

    def shed(self, fraction: float, over: float = SPREAD_DEFAULT) -> Plan:
        """End ``shed_count(open streams, fraction)`` of the open streams,
        picked at random, within ``over`` seconds; readiness is left alone."""
        if self._hub.draining:
            raise Conflict("this node is draining: every stream is ending already",
                           code="draining")
        streams = self._open()
        return self._start("shed", streams[:shed_count(len(streams), fraction)], over)

    def stop(self) -> None:
        """Stop the plan running, if any (its streams not yet ended stay open)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.plan is not None:
            self.plan.done = True

    def state(self) -> dict | None:
        return None if self.plan is None else self.plan.describe()

    def _start(self, kind: str, streams: list[Stream], over: float) -> Plan:
        self.stop()
        plan = self.plan = Plan(kind, len(streams), over, time.time())
        self._task = asyncio.get_running_loop().create_task(self._run(plan, streams))
        log.warning("%s: ending %d open streams over %g s", kind, len(streams), over)
        return plan

    async def _run(self, plan: Plan, streams: list[Stream]) -> None:
        start = self._clock()
        at = spread(len(streams), plan.over)
        i = 0
        while i < len(streams):
            now = self._clock() - start
            while i < len(streams) and at[i] <= now:
                self._end(plan, streams[i])
                i += 1
            if i < len(streams):
                await asyncio.sleep(max(at[i] - now, TICK))
        plan.done = True
        self._task = None

    @staticmethod
    def _end(plan: Plan, stream: Stream) -> None:
        if not stream.closed:
            stream.close(CLOSE_SHUTDOWN)
            plan.ended += 1
