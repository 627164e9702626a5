"""tidings.service.scheduler: the loop's timing (the store makes firing exactly once)."""

from __future__ import annotations

import asyncio

from tidings.service.scheduler import BATCH, Scheduler
from tidings.store.base import PublishOutcome


class FakeService:
    """A service whose store holds due times; fire_due pops the due ones."""

    def __init__(self):
        self.due: list[float] = []
        self.calls = asyncio.Queue()
        self.store = self

    async def fire_due(self, now, limit):
        ready = sorted(d for d in self.due if d <= now)[:limit]
        for d in ready:
            self.due.remove(d)
        await self.calls.put(now)
        return [PublishOutcome(str(d), "expired" if d < 0 else "accepted", 0) for d in ready]

    async def next_due(self):
        return min(self.due, default=None)


async def test_run_once_drains_full_batches_and_counts_outcomes():
    svc = FakeService()
    svc.due = [float(i) for i in range(BATCH + 5)] + [-1.0, 10_000.0]
    sched = Scheduler(svc, clock=lambda: 1000.0)
    assert await sched.run_once() == BATCH + 6
    assert (sched.fired, sched.expired) == (BATCH + 5, 1)
    assert svc.due == [10_000.0]  # not due yet


async def test_a_wake_for_something_sooner_ends_the_sleep():
    svc = FakeService()
    now = [100.0]
    sched = Scheduler(svc, poll_interval=3600, clock=lambda: now[0])
    task = asyncio.ensure_future(sched.run())
    try:
        assert await asyncio.wait_for(svc.calls.get(), 5) == 100.0  # the first pass
        for _ in range(5):  # let it go to sleep (an hour: nothing is pending)
            await asyncio.sleep(0)
        sched.wake(4000.0)  # later than its next look anyway: it sleeps on
        for _ in range(5):
            await asyncio.sleep(0)
        assert svc.calls.empty()
        svc.due.append(150.0)
        now[0] = 150.0
        sched.wake(150.0)
        assert await asyncio.wait_for(svc.calls.get(), 5) == 150.0
        assert sched.fired == 1
    finally:
        task.cancel()


async def test_a_store_error_is_retried_at_the_next_interval():
    svc = FakeService()
    failures = [RuntimeError("store down")]

    async def flaky(now, limit):
        if failures:
            raise failures.pop()
        return await FakeService.fire_due(svc, now, limit)

    svc.fire_due = flaky
    svc.due = [1.0]
    sched = Scheduler(svc, poll_interval=0.01, clock=lambda: 5.0)
    task = asyncio.ensure_future(sched.run())
    try:
        assert await asyncio.wait_for(svc.calls.get(), 5) == 5.0
        assert sched.fired == 1
    finally:
        task.cancel()
