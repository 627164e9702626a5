"""An in-memory JobQueue for tests (the durable one will be a store table).

It keeps the whole history (every retry with its time, every dead letter
with its reason) so tests can assert on what the worker decided, and lets a
test await a condition instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from tidings.channels.base import Job


class MemoryQueue:
    def __init__(self, lease: float = 30.0):
        self.lease = lease
        self.jobs: dict[str, Job] = {}
        self.due: dict[str, float] = {}
        self.leased_until: dict[str, float] = {}
        self.completed: list[Job] = []
        self.retries: list[tuple[Job, float]] = []
        self.dead_letters: list[tuple[Job, str]] = []
        self.released: list[tuple[Job, float]] = []  # handed back unattempted
        self.claims: list[tuple[str, int, float]] = []  # (channel, n asked, now)
        self._changed = asyncio.Condition()

    def put(self, job: Job, at: float = 0.0) -> Job:
        self.jobs[job.id] = job
        self.due[job.id] = at
        return job

    async def claim(self, channel: str, n: int, now: float) -> list[Job]:
        self.claims.append((channel, n, now))
        ready = [
            job for job in self.jobs.values()
            if job.channel == channel and self.due[job.id] <= now
            and self.leased_until.get(job.id, 0.0) <= now
        ]
        ready.sort(key=lambda job: (self.due[job.id], job.created_at))
        for job in ready[:n]:
            self.leased_until[job.id] = now + self.lease
        await self._notify()
        return ready[:n]

    async def complete(self, job: Job) -> None:
        self._remove(job)
        self.completed.append(job)
        await self._notify()

    async def retry(self, job: Job, at: float) -> None:
        self.jobs[job.id] = job
        self.due[job.id] = at
        self.leased_until.pop(job.id, None)
        self.retries.append((job, at))
        await self._notify()

    async def release(self, job: Job, at: float) -> None:
        self.due[job.id] = at
        self.leased_until.pop(job.id, None)
        self.released.append((job, at))
        await self._notify()

    async def dead(self, job: Job, reason: str) -> None:
        self._remove(job)
        self.dead_letters.append((job, reason))
        await self._notify()

    def _remove(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        self.due.pop(job.id, None)
        self.leased_until.pop(job.id, None)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, condition: Callable[[MemoryQueue], bool], timeout: float = 10.0) -> None:
        """Until ``condition(self)`` holds (the per-test timeout is the backstop)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: condition(self))


def make_job(channel: str, destination: dict, *, id: str = "job-1", app: str = "acme",
             user: str = "alice", notification: dict | None = None, **kw) -> Job:
    note = notification or {
        "id": "01HZX3Y2K8M0000000000000AB", "category": "social",
        "created_at": "2024-06-01T12:00:00.000+00:00", "title": "user_17 replied",
        "body": "Nice post!", "url": "https://acme.test/p/42", "priority": "normal",
    }
    return Job(id=id, channel=channel, app=app, user=user,
               notification=msgspec.json.encode(note), destination=destination,
               created_at=kw.pop("created_at", 0.0), **kw)
