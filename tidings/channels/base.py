"""The outbound channel contract: jobs, results, channels and the job queue.

Outbound channels (webhook, Web Push, e-mail) reach the world outside the
live streams, through providers that can be slow, down or rate limited.  So
none of them runs on the publish path: publishing enqueues one durable
:class:`Job` per (notification, user, channel, destination), and a
:class:`~tidings.channels.worker.Worker` drains the queue with bounded
concurrency per channel.  A provider that hangs holds at most its own lane's
slots; live delivery and the other channels never wait for it.

Guarantee: **at least once.**  A job leaves the queue only when a channel
reported it delivered or failed for good, or when its attempts ran out (then
it is kept on the dead-letter list).  A worker that dies mid-send loses
nothing: the job's lease runs out and another worker sends it again.  So a
receiver can see the same job twice; :attr:`Job.id` is stable across
attempts for exactly that reason (webhooks send it as ``Tidings-Id``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import msgspec

from tidings.core.retry import parse_retry_after

# Where the HTTP channels may connect, and their client: tidings/channels/egress.py.
__all__ = ["Channel", "Job", "JobQueue", "Result", "http_result", "one_line", "url_host"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery of one notification to one destination of one user."""

    id: str  # stable across attempts: the receiver's de-duplication key
    channel: str  # "webhook" | "push" | "email": the lane that sends it
    app: str
    user: str
    notification: bytes  # the notification's JSON, exactly as stored
    # Where to: webhook {"url"}; push {"endpoint", "keys": {"p256dh", "auth"}};
    # e-mail {"to", "name"?}.  Each channel validates its own.
    destination: dict[str, Any]
    created_at: float  # unix time the job was enqueued
    expires_at: float | None = None  # the notification's expiry: never deliver late
    attempts: int = 0  # failed attempts so far
    last_error: str | None = None  # why the last attempt failed (delivery tracking)


Outcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt came to.

    ``retry``: a transient failure (timeout, connection refused, 429, 5xx);
    the worker schedules the next attempt, no earlier than ``retry_after``
    seconds if the provider said so.  ``failed``: it will never work (a 4xx
    the provider means, a refused address); the job goes to the dead-letter
    list at once.  ``gone`` marks a destination that no longer exists (Web
    Push 404/410): the caller should delete it so no new job targets it.
    """

    outcome: Outcome
    detail: str = ""
    status: int | None = None  # the provider's HTTP status or SMTP reply code
    retry_after: float | None = None
    gone: bool = False

    @classmethod
    def delivered(cls, status: int | None = None, detail: str = "") -> Result:
        return cls("delivered", detail, status)

    @classmethod
    def retry(cls, detail: str, status: int | None = None,
              retry_after: float | None = None) -> Result:
        return cls("retry", detail, status, retry_after)

    @classmethod
    def failed(cls, detail: str, status: int | None = None, gone: bool = False) -> Result:
        return cls("failed", detail, status, None, gone)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def one_line(text: str) -> str:
    """A provider's words as one line a log, the dead-letter list and every
    store can hold: control characters (a NUL, which PostgreSQL cannot store;
    a terminal's escapes) become spaces, runs of spaces one, and what UTF-8
    cannot encode (the lone surrogates of an undecodable SMTP reply) U+FFFD."""
    return " ".join(_CONTROL.sub(" ", _SURROGATE.sub("\ufffd", text)).split())


@runtime_checkable
class Channel(Protocol):
    """One outbound channel.  ``send`` classifies every provider failure into
    a :class:`Result` instead of raising; an exception that escapes anyway
    is a bug, which the worker counts as a retry (so it cannot lose the job)."""

    name: str

    async def send(self, job: Job) -> Result: ...

    async def aclose(self) -> None: ...


def url_host(url: object) -> str | None:
    """The host of a destination URL, lower case, for the worker's limit per
    destination host (``Worker``); None for anything that is not a URL."""
    try:
        return urlsplit(url).hostname if isinstance(url, str) else None
    except ValueError:
        return None


@runtime_checkable
class JobQueue(Protocol):
    """Where jobs wait; the durable implementation is a store table.

    * ``claim(channel, n, now)`` -- up to ``n`` jobs of ``channel`` that are
      due (their next attempt time <= ``now``), oldest first, leased to the
      caller: nobody else claims them until the lease runs out.
    * ``complete(job)`` -- delivered: remove it.
    * ``retry(job, at)`` -- store ``job`` (its ``attempts`` and
      ``last_error`` already updated by the worker) and make it due at
      unix time ``at``; the lease ends.
    * ``dead(job, reason)`` -- move it to the dead-letter list with ``reason``.
    * ``release(job, at)`` -- hand it back unattempted, due at ``at``; the
      lease ends, and no attempt is counted.

    A job that is claimed and then neither completed, retried nor killed
    (the worker crashed) becomes claimable again when its lease runs out.
    """

    async def claim(self, channel: str, n: int, now: float) -> list[Job]: ...

    async def complete(self, job: Job) -> None: ...

    async def retry(self, job: Job, at: float) -> None: ...

    async def dead(self, job: Job, reason: str) -> None: ...

    async def release(self, job: Job, at: float) -> None: ...


def http_result(
    status: int,
    retry_after: str | None,
    now: float,
    *,
    gone: frozenset[int] = frozenset(),
    detail: str = "",
) -> Result:
    """Classify an HTTP answer the way both webhooks and Web Push need.

    2xx delivered; ``gone`` statuses are permanent and mark the destination
    gone; 408 (timeout), 425 (too early), 429 (rate limited) and 5xx are
    transient, honouring ``Retry-After``; every other status -- 3xx
    included, since a signed request is never re-sent to a redirected URL --
    is a permanent failure of this job.
    """
    text = f"HTTP {status}" + (f": {detail}" if detail else "")
    if 200 <= status < 300:
        return Result.delivered(status)
    if status in gone:
        return Result.failed(text, status, gone=True)
    if status in (408, 425, 429) or 500 <= status < 600:
        return Result.retry(text, status, parse_retry_after(retry_after, now))
    return Result.failed(text, status)
