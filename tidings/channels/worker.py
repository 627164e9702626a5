"""The delivery worker: drains a :class:`JobQueue` through the channels.

Each channel gets its own *lane*: a loop that claims that channel's due jobs
and runs at most ``concurrency`` sends at once.  Lanes share nothing but the
event loop, so a provider that hangs fills its own lane's slots and nothing
else: e-mail keeps flowing while every webhook endpoint times out, and the
live WebSocket/SSE path never awaits a lane at all.

Within a lane, one destination host cannot take every slot either (a
channel with a ``host(job)`` method: webhooks, Web Push).  A host has at
most ``per_host`` sends in flight (three quarters of the lane), and a *slow*
host at most ``slow_per_host`` (an eighth), all slow hosts together half the
lane: a slow host is one with a send in flight for longer than
``SLOW_AFTER``, or whose send took that long within the last
``SLOW_MEMORY``.  Any app admin can register a webhook endpoint and any end
user a push subscription, so a receiver that accepts and then trickles (a
tarpit) would otherwise hold the whole lane for every other app and user.
A job whose host is at its limit is handed back unattempted
(``queue.release``), due again after ``host_defer`` (jittered).

After each attempt the worker settles the job:

* delivered -> ``queue.complete``;
* failed (permanent) -> ``queue.dead`` at once;
* retry -> ``queue.retry`` at the time :class:`~tidings.core.retry.RetryPolicy`
  gives (full jitter, ``Retry-After`` as a floor), or ``queue.dead`` when the
  attempts are used up or the next attempt would come after the
  notification expired.

Before a claim's jobs are sent, ``screen`` (when given) may take some out:
the service's asks whether their users still want them (a channel switched
off since the job was queued: tidings.service.outbound.Outbound.screen) and
settles those itself.  Screened-out jobs are counted as ``muted``; a screen
that fails hands the claim back unattempted, like a host at its limit.

A job whose notification has expired is never sent: it goes to the
dead-letter list as ``expired``.  ``stop(grace)`` stops claiming, lets the
sends in flight finish for up to ``grace`` seconds, then cancels the rest
and hands them back to the queue without counting an attempt (the receiver
may have seen them: delivery is at least once).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

import msgspec

from tidings import tracing
from tidings.channels.base import Channel, Job, JobQueue, Result, one_line
from tidings.core.retry import RetryPolicy

__all__ = ["Lane", "Worker"]

log = logging.getLogger("tidings.channels")

SLOW_AFTER = 2.0  # seconds: a send in flight this long makes its host slow
SLOW_MEMORY = 60.0  # seconds a host that was slow stays slow

# Called after every settled attempt: metrics, delivery statistics, and
# deleting a destination reported gone (a Web Push subscription).  A retry
# that ran out of attempts or of time is reported as the failure it became.
ResultHook = Callable[[Job, Result], Awaitable[None]]
# Called with each claim's jobs before any is sent: returns those still to
# send, having settled the others itself (module docstring).
Screen = Callable[[list[Job]], Awaitable[list[Job]]]


@dataclass
class Lane:
    """One channel and how hard to drive it."""

    channel: Channel
    concurrency: int = 16  # sends in flight at once for this channel
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Bounds a whole send, on top of the channel's own timeouts, so that even
    # a channel bug cannot hold a slot forever.
    timeout: float = 60.0
    # Sends in flight per destination host, and per slow one (module
    # docstring); None: three quarters and an eighth of the lane, at least 1.
    per_host: int | None = None
    slow_per_host: int | None = None
    host_defer: float = 5.0  # seconds before a job handed back for its host is due again

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("a lane needs concurrency >= 1")
        if self.per_host is None:
            self.per_host = max(1, self.concurrency * 3 // 4)
        if self.slow_per_host is None:
            self.slow_per_host = max(1, self.concurrency // 8)
        if self.per_host < 1 or self.slow_per_host < 1:
            raise ValueError("a lane needs per_host and slow_per_host >= 1")


class _Hosts:
    """One lane's sends in flight per destination host, and its slow hosts."""

    def __init__(self, per_host: int, slow_per_host: int, slow_total: int):
        self.per_host, self.slow_per_host, self.slow_total = per_host, slow_per_host, slow_total
        self.started: dict[str, list[float]] = {}  # host -> its sends' start, oldest first
        self.slow_until: dict[str, float] = {}  # host -> when it is no longer slow

    def _slow(self, host: str, starts: list[float] | tuple, now: float) -> bool:
        return self.slow_until.get(host, 0.0) > now or bool(starts and now - starts[0] > SLOW_AFTER)

    def admit(self, host: str, now: float) -> bool:
        starts = self.started.get(host, ())
        if not self._slow(host, starts, now):
            return len(starts) < self.per_host
        if len(starts) >= self.slow_per_host:
            return False
        # every slow host together: many slow names must not add up to the lane
        slow = sum(len(s) for h, s in self.started.items() if self._slow(h, s, now))
        return slow < self.slow_total

    def begin(self, host: str, now: float) -> None:
        self.started.setdefault(host, []).append(now)

    def end(self, host: str, started: float, now: float) -> None:
        starts = self.started[host]
        starts.remove(started)
        if not starts:
            del self.started[host]
        if now - started > SLOW_AFTER:
            if len(self.slow_until) >= 10_000:  # bounded: forget what is no longer slow
                self.slow_until = {h: t for h, t in self.slow_until.items() if t > now}
            self.slow_until[host] = now + SLOW_MEMORY


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        lanes: Iterable[Lane],
        *,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        on_result: ResultHook | None = None,
        screen: Screen | None = None,
    ):
        self.queue = queue
        self.lanes = {lane.channel.name: lane for lane in lanes}
        self.poll_interval = poll_interval
        self.clock = clock
        self.rand = rand
        self.on_result = on_result
        self.screen = screen
        # (channel, outcome) -> attempts settled; outcomes: delivered, retry,
        # failed, dead (retries used up), expired, error (a queue call failed),
        # deferred (handed back unattempted: its host had its sends), and
        # muted (screened out: its user switched the channel off).
        self.counts: Counter[tuple[str, str]] = Counter()
        self._wake = {name: asyncio.Event() for name in self.lanes}
        self._inflight: dict[str, set[asyncio.Task]] = {name: set() for name in self.lanes}
        self._hosts = {name: _Hosts(lane.per_host or 1, lane.slow_per_host or 1,
                                    max(1, lane.concurrency // 2))
                       for name, lane in self.lanes.items()}
        self._loops: list[asyncio.Task] = []
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        if self._loops:
            raise RuntimeError("worker already started")
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._lane(lane), name=f"tidings-lane-{name}")
                       for name, lane in self.lanes.items()]

    def wake(self, channel: str | None = None) -> None:
        """New jobs were enqueued: claim now instead of at the next poll."""
        for name, event in self._wake.items():
            if channel is None or channel == name:
                event.set()

    def inflight(self, channel: str) -> int:
        return len(self._inflight[channel])

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        self.wake()
        await asyncio.gather(*self._loops, return_exceptions=True)
        pending = set().union(*self._inflight.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one lane ----------------------------------------------------------------------
    async def _lane(self, lane: Lane) -> None:
        name = lane.channel.name
        wake, inflight, hosts = self._wake[name], self._inflight[name], self._hosts[name]
        host_of = getattr(lane.channel, "host", None)
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # Clear before claiming: a wake() that lands during the claim is
            # not lost, the wait below returns at once.
            wake.clear()
            free = lane.concurrency - len(inflight)
            claimed = 0
            if free > 0:
                try:
                    jobs = await self.queue.claim(name, free, self.clock())
                except Exception:
                    log.exception("claiming %s jobs failed", name)
                    self.counts[name, "error"] += 1
                    jobs = []
                claimed = len(jobs)
                if jobs and self.screen is not None:
                    jobs = await self._screened(lane, jobs)
                for job in jobs:
                    host, started = host_of(job) if host_of is not None else None, loop.time()
                    if host is not None:
                        if not hosts.admit(host, started):
                            await self._release(lane, job)
                            continue
                        hosts.begin(host, started)
                    task = loop.create_task(self._attempt(lane, job))
                    inflight.add(task)
                    task.add_done_callback(self._finished(inflight, wake, hosts, host, started))
                if claimed == free:
                    # The claim took every free slot: there may be more due.
                    # The next turn waits for a slot (screened-out jobs took none).
                    continue
            try:
                async with asyncio.timeout(self.poll_interval):
                    await wake.wait()
            except TimeoutError:
                pass

    @staticmethod
    def _finished(inflight: set[asyncio.Task], wake: asyncio.Event, hosts: _Hosts,
                  host: str | None, started: float) -> Callable[[asyncio.Task], None]:
        def done(task: asyncio.Task) -> None:
            inflight.discard(task)
            if host is not None:
                hosts.end(host, started, asyncio.get_running_loop().time())
            wake.set()  # a slot is free

        return done

    async def _screened(self, lane: Lane, jobs: list[Job]) -> list[Job]:
        """The claimed ``jobs`` the screen keeps; all handed back if it fails."""
        name = lane.channel.name
        assert self.screen is not None
        try:
            kept = await self.screen(jobs)
        except Exception:
            log.exception("screening %d %s jobs failed; handing them back", len(jobs), name)
            self.counts[name, "error"] += 1
            for job in jobs:
                await self._release(lane, job)
            return []
        self.counts[name, "muted"] += len(jobs) - len(kept)
        return kept

    async def _release(self, lane: Lane, job: Job) -> None:
        """Hand ``job`` back for later: its host has all the sends it may have."""
        name = lane.channel.name
        try:
            await self.queue.release(job, self.clock() + lane.host_defer * (0.5 + self.rand()))
            self.counts[name, "deferred"] += 1
        except Exception:
            log.exception("handing back %s job %s failed; its lease will expire", name, job.id)
            self.counts[name, "error"] += 1

    async def _attempt(self, lane: Lane, job: Job) -> None:
        name = lane.channel.name
        if job.expires_at is not None and self.clock() >= job.expires_at:
            await self._settle_dead(job, "expired", "expired", Result.failed("expired"))
            return
        with tracing.span("outbound.attempt", {
                "tidings.channel": name, "tidings.job": job.id, "tidings.app": job.app,
                "tidings.attempt": job.attempts + 1}) as span:
            try:
                async with asyncio.timeout(lane.timeout):
                    result = await lane.channel.send(job)
            except TimeoutError:
                result = Result.retry(f"send took longer than {lane.timeout:g}s")
            except asyncio.CancelledError:
                # stop() ran out of grace: give the job back as it was, due now.
                try:
                    await self.queue.retry(job, self.clock())
                except Exception:
                    log.exception("handing back %s job %s failed; its lease will expire",
                                  name, job.id)
                raise
            except Exception as exc:  # a channel bug must not lose the job
                log.exception("%s channel raised on job %s", name, job.id)
                result = Result.retry(f"{type(exc).__name__}: {exc}")
            if span is not None:
                span.set_attribute("tidings.outcome", result.outcome)
        await self._settle(lane, job, result)

    async def _settle(self, lane: Lane, job: Job, result: Result) -> None:
        name = lane.channel.name
        if result.detail:  # the provider's words, stored: one line a store can hold
            result = replace(result, detail=one_line(result.detail))
        try:
            if result.outcome == "delivered":
                await self.queue.complete(job)
                self.counts[name, "delivered"] += 1
            elif result.outcome == "failed":
                await self.queue.dead(job, result.detail)
                self.counts[name, "failed"] += 1
            else:
                result = await self._retry(lane, job, result)
        except Exception:
            log.exception("settling %s job %s failed; its lease will expire", name, job.id)
            self.counts[name, "error"] += 1
            return
        await self._report(job, result)

    async def _retry(self, lane: Lane, job: Job, result: Result) -> Result:
        """Schedule the next attempt, or kill the job; returns the outcome to report."""
        name = lane.channel.name
        failures = job.attempts + 1
        job = msgspec.structs.replace(job, attempts=failures, last_error=result.detail)
        now = self.clock()
        at = lane.policy.next_at(failures, now, self.rand, result.retry_after)
        if at is None:
            reason = f"gave up after {failures} attempts: {result.detail}"
            await self.queue.dead(job, reason)
            self.counts[name, "dead"] += 1
            return Result.failed(reason, result.status)
        if job.expires_at is not None and at >= job.expires_at:
            reason = f"expired before the next attempt: {result.detail}"
            await self.queue.dead(job, reason)
            self.counts[name, "expired"] += 1
            return Result.failed(reason, result.status)
        await self.queue.retry(job, at)
        self.counts[name, "retry"] += 1
        if at - now < self.poll_interval:
            # Due before the next poll: claim it right on time.
            asyncio.get_running_loop().call_later(max(0.0, at - now), self.wake, name)
        return result

    async def _settle_dead(self, job: Job, reason: str, outcome: str, result: Result) -> None:
        name = job.channel
        try:
            await self.queue.dead(job, reason)
            self.counts[name, outcome] += 1
        except Exception:
            log.exception("settling %s job %s failed; its lease will expire", name, job.id)
            self.counts[name, "error"] += 1
            return
        await self._report(job, result)

    async def _report(self, job: Job, result: Result) -> None:
        if self.on_result is None:
            return
        try:
            await self.on_result(job, result)
        except Exception:
            log.exception("result hook failed for %s job %s", job.channel, job.id)
