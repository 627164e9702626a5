"""The loop that fires scheduled notifications (``deliver_at``) and brings
snoozed inbox entries back when their time comes (docs/inbox.md#snooze).

Every node runs one (the app's lifespan starts it).  Scheduled
notifications are rows in the store; the store's ``fire_due`` claims each
due one and publishes it in one transaction, so however many nodes poll at
the same instant, each notification fires once (docs/delivery.md).  What
this loop adds is timing:

* it sleeps until the earliest pending notification is due, but never
  longer than ``poll_interval``, so one scheduled through another node (or
  another process on the same SQLite file) is noticed within that time;
* a publish on this node that is due sooner wakes it at once (:meth:`wake`);
* after a restart the first pass fires whatever fell due while the node
  was down (and drops what expired meanwhile);
* a store error is logged and retried at the next interval.

Snoozes ride on the same loop: ``next_due`` is the earliest of both, and
each pass wakes what is due after firing (``Due.wake_snoozed``, which the
store makes once-only on every node as ``fire_due`` is).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import msgspec

from tidings.core.models import Notification, PatchRequest
from tidings.errors import PayloadTooLarge
from tidings.store.base import PublishOutcome, ScheduledEdit, ScheduledNotification

log = logging.getLogger("tidings.service.scheduler")

POLL_INTERVAL = 1.0  # seconds: the latest a notification scheduled elsewhere fires
BATCH = 100  # fired per store call; a full batch loops at once

_decode_notification = msgspec.json.Decoder(Notification).decode


class Due(Protocol):
    """What the loop fires through (the service satisfies it)."""

    async def fire_due(self, now: float, limit: int) -> list[PublishOutcome]:
        """Publish up to ``limit`` notifications due by ``now``."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest pending notification is due (None: none is)."""
        ...

    async def wake_snoozed(self, now: float, limit: int) -> int:
        """Bring back up to ``limit`` snoozed entries due by ``now``; how many."""
        ...


class Scheduler:
    def __init__(self, due: Due, *, poll_interval: float = POLL_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.due = due
        self.poll_interval = poll_interval
        self.clock = clock
        self.fired = 0  # notifications published by this node's scheduler
        self.expired = 0  # dropped: their ttl ran out before they could fire
        self.woken = 0  # snoozed entries this node's scheduler brought back
        self._wake = asyncio.Event()
        self._next = 0.0  # when the loop means to look next (clock time)

    def wake(self, due_at: float) -> None:
        """A notification due at ``due_at`` was scheduled on this node."""
        if due_at < self._next:
            self._wake.set()

    async def run_once(self) -> int:
        """Fire everything due now; returns how many were handled."""
        done = 0
        while True:
            outcomes = await self.due.fire_due(self.clock(), BATCH)
            done += len(outcomes)
            for out in outcomes:
                if out.status == "accepted":
                    self.fired += 1
                elif out.status == "expired":
                    self.expired += 1
            if len(outcomes) < BATCH:
                break
        wake = getattr(self.due, "wake_snoozed", None)  # a Due without snoozes: tests
        while wake is not None:
            n = await wake(self.clock(), BATCH)
            self.woken += n
            done += n
            if n < BATCH:
                break
        return done

    async def run(self) -> None:
        while True:
            # Cleared before looking, not after: a wake that arrives while
            # the store is being read stays set, and the sleep below ends at once.
            self._wake.clear()
            self._next = float("inf")
            delay = self.poll_interval
            try:
                await self.run_once()
                due = await self.due.next_due()
                if due is not None:
                    delay = min(delay, max(0.0, due - self.clock()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("firing scheduled notifications failed; retrying")
            self._next = self.clock() + delay
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass


def _iso(ts: float) -> str:
    # not the service's cached _iso: this runs on the SQLite store's writer thread
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def scheduled_edit(sched: ScheduledNotification, patch: PatchRequest, due_at: float | None,
         max_bytes: int) -> ScheduledEdit:
    """A PATCH of a scheduled notification that has not fired: its body with
    the fields ``patch`` names, and, when ``due_at`` is given, moved to that
    time.  Moved, it is created then and its ``ttl`` runs from then, as at
    publish; its id stays the one it was booked with.  A pure function
    (``Store.edit_scheduled`` may call it again); raises 413 when the body
    grows past ``max_bytes``."""
    note = _decode_notification(sched.body)
    for field in PatchRequest.__struct_fields__:
        value = getattr(patch, field)
        if value is not None and field != "deliver_at":
            setattr(note, field, value)
    note.locales = note.locales or None  # {}: none any more
    expires_at = sched.expires_at
    if due_at is None:
        due_at = sched.due_at
    else:
        if expires_at is not None:
            expires_at += due_at - sched.due_at
        note.created_at = note.deliver_at = _iso(due_at)
        note.expires_at = None if expires_at is None else _iso(expires_at)
    body = msgspec.json.encode(note)
    if len(body) > max_bytes:
        raise PayloadTooLarge("the corrected notification is too large")
    return ScheduledEdit(body, due_at, expires_at)
