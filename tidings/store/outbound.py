"""The outbound half of the store contract: destinations and the job queue.

Outbound channels (webhooks, Web Push, e-mail; docs/channels.md) need three
kinds of durable state, kept by the same store as the inboxes:

* **destinations** -- an app's webhook endpoints with their signing
  secrets, each user's Web Push subscriptions and e-mail address, and the
  app's frequency caps per category;
* **the job queue** -- one row per (notification, user, channel,
  destination), the :class:`~tidings.channels.base.JobQueue` of the
  delivery worker;
* **the dead-letter list** -- jobs that failed for good, kept with their
  last error until an operator re-drives them or retention drops them.

Guarantees every implementation gives (tests/store/test_contract.py):

* **A claim is a lease.**  ``claim_jobs`` hands each due job to one caller
  and pushes its ``lease_until`` forward; until then no other caller, on any
  node, claims it (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the one
  writer).  A lease that runs out makes the job claimable again: a worker
  that died mid-send loses nothing (delivery is at least once).
* **Settling never resurrects.**  ``retry_job`` and ``kill_job`` update a
  job that is still queued; a job cancelled or completed meanwhile stays
  gone, so a fallback cancelled while it was being sent is not retried.
* **Isolation.**  Every method that an API reaches takes the app id.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.core.audit import AuditEntry
from tidings.core.models import Preferences

if TYPE_CHECKING:  # the channels (and their HTTP client) load with the service, not the store
    from tidings.channels.base import Job

__all__ = ["DigestBuilder", "DigestItem", "EmailAddress", "JobRecord", "NewJob", "OutboundStore",
           "PushSubscription", "QueueStats", "WebhookEndpoint"]


@dataclass(slots=True)
class WebhookEndpoint:
    id: str
    url: str
    secret: str
    created_at: float
    # While a secret is being rotated the previous one still signs, until then.
    previous_secret: str | None = None
    previous_until: float | None = None


@dataclass(slots=True)
class PushSubscription:
    id: str  # derived from the endpoint: registering the same one again replaces it
    endpoint: str
    p256dh: str
    auth: str
    created_at: float

    def destination(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth},
                "subscription": self.id}


@dataclass(slots=True)
class EmailAddress:
    address: str
    name: str = ""

    def destination(self) -> dict[str, Any]:
        return {"to": self.address, "name": self.name} if self.name else {"to": self.address}


@dataclass(slots=True)
class Destinations:
    """One user's personal destinations."""

    push: list[PushSubscription] = field(default_factory=list)
    email: EmailAddress | None = None


@dataclass(slots=True)
class NewJob:
    job: Job
    nid: str  # the notification: cancelling and listing go by it
    not_before: float  # the first attempt's time (fallback delay, quiet hours)
    # Cancelled when the user sees the notification on a device (offline fallback).
    fallback: bool = False
    # A group_key: a newer job of the group replaces this one while it is pending.
    collapse: str | None = None
    # A digest rule's key (tidings.core.digest.key): not a job but an item
    # held for the user's digest window of this channel and rule;
    # ``not_before`` is when the window closes if this item opens it.
    digest: str | None = None


@dataclass(slots=True)
class DigestItem:
    """One notification held for a digest, as :meth:`OutboundStore.flush_digests`
    hands it to the builder."""

    nid: str
    destination: dict[str, Any]
    notification: bytes
    created_at: float
    expires_at: float | None


# (app, user, channel, rule key, items oldest first, the user's preferences as
# stored when the window closes or None) -> the digest jobs to queue
DigestBuilder = Callable[[str, str, str, str, list[DigestItem], Preferences | None],
                         list[NewJob]]


@dataclass(slots=True)
class JobRecord:
    """A queued or dead job as the admin API shows it."""

    id: str
    app: str
    user: str
    nid: str
    channel: str
    destination: dict[str, Any]
    status: str  # "queued" | "dead"
    not_before: float
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    expires_at: float | None
    fallback: bool


@dataclass(slots=True)
class QueueStats:
    """One channel's queue and dead letters, as /metrics shows them."""

    queued: int = 0  # jobs waiting, due or not, those being sent (leased) included
    due: int = 0  # of those, the ones whose not_before has passed
    oldest_due: float | None = None  # the not_before of the oldest due job
    dead: int = 0  # on the dead-letter list

    @staticmethod
    def of_rows(rows) -> dict[str, QueueStats]:
        """Each channel's stats from the stores' aggregate rows: ``(channel,
        dead, n, due, oldest due)``, one row for its queued jobs and one for
        its dead letters."""
        out: dict[str, QueueStats] = {}
        for channel, dead, n, due, oldest in rows:
            stats = out.setdefault(channel, QueueStats())
            if dead:
                stats.dead = n
            else:
                stats.queued, stats.due = n, due
                stats.oldest_due = oldest if due else None
        return out


class OutboundStore(abc.ABC):
    # -- webhook endpoints (per app) --------------------------------------------------
    @abc.abstractmethod
    async def add_webhook(self, app_id: str, endpoint: WebhookEndpoint, limit: int, *,
                          audit: AuditEntry | None = None) -> bool:
        """Add ``endpoint`` unless the app has ``limit`` already (False then).
        ``audit``, here and below: the change's record, written in its
        transaction when the change is made (tidings/store/audit.py)."""

    @abc.abstractmethod
    async def list_webhooks(self, app_id: str) -> list[WebhookEndpoint]:
        """Oldest first."""

    @abc.abstractmethod
    async def rotate_webhook(self, app_id: str, wid: str, secret: str, overlap_until: float,
                             *, audit: AuditEntry | None = None) -> WebhookEndpoint | None:
        """Give endpoint ``wid`` a new secret; the current one keeps signing
        until ``overlap_until``.  None when there is no such endpoint."""

    @abc.abstractmethod
    async def delete_webhook(self, app_id: str, wid: str, *,
                             audit: AuditEntry | None = None) -> bool: ...

    # -- a user's push subscriptions and e-mail address -------------------------------
    @abc.abstractmethod
    async def add_push_subscription(self, app_id: str, user: str, sub: PushSubscription,
                                    keep: int) -> None:
        """Insert or replace (same id) ``sub``, then keep only the user's
        ``keep`` newest subscriptions: browsers come and go without saying."""

    @abc.abstractmethod
    async def list_push_subscriptions(self, app_id: str, user: str) -> list[PushSubscription]:
        """Newest first."""

    @abc.abstractmethod
    async def delete_push_subscription(self, app_id: str, user: str, sid: str) -> bool: ...

    @abc.abstractmethod
    async def set_email(self, app_id: str, user: str, email: EmailAddress | None) -> bool:
        """Set the user's address, or remove it (None); whether one was there."""

    @abc.abstractmethod
    async def get_email(self, app_id: str, user: str) -> EmailAddress | None: ...

    @abc.abstractmethod
    async def preferences_of(self, app_id: str, users: list[str]) -> dict[str, Preferences]:
        """The stored preferences of ``users``; users with none are left out."""

    @abc.abstractmethod
    async def destinations(self, app_id: str, users: list[str]) -> dict[str, Destinations]:
        """The push subscriptions and e-mail addresses of ``users``; users
        with neither are left out."""

    # -- frequency caps (per app) ------------------------------------------------------
    @abc.abstractmethod
    async def get_caps(self, app_id: str) -> bytes | None:
        """The app's caps document (JSON, tidings.core.destinations.Caps)."""

    @abc.abstractmethod
    async def put_caps(self, app_id: str, doc: bytes, *,
                       audit: AuditEntry | None = None) -> None: ...

    # -- the job queue -----------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue_jobs(self, jobs: list[NewJob],
                           fired: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """Queue ``jobs`` (durable on return); an id already queued is left as is.

        ``fired`` is the (app, id) of a scheduled notification whose jobs
        these are: it leaves the "fired" status (Store.fired_unqueued) in the
        same transaction, and nothing is queued if it had left it already,
        so its jobs are queued exactly once however many nodes try.

        A fallback job with a ``collapse`` key first removes the same user's
        queued, unleased fallback jobs of that channel and key (an older
        notification of the group), in the same transaction.  Returns
        ``(nid, channel)`` of each job so replaced.

        A job with a ``digest`` key is held in the user's digest window
        instead (``digest_items``): it joins the window of its (app, user,
        channel, key) if one is open, taking its closing time, else opens
        one closing at its ``not_before``."""

    @abc.abstractmethod
    async def claim_jobs(self, channel: str, n: int, now: float, lease: float) -> list[Job]:
        """Up to ``n`` queued jobs of ``channel`` due at ``now`` and not
        leased, oldest due first, leased until ``now + lease``."""

    @abc.abstractmethod
    async def complete_job(self, job_id: str, now: float | None = None) -> None:
        """Delivered: the job leaves the queue.

        These three also log the attempt (``Store.timeline``) in the same
        transaction: ``sent`` at ``now`` (default: the clock), ``failed``
        with the retry time, ``dead`` with the reason."""

    @abc.abstractmethod
    async def retry_job(self, job: Job, at: float, now: float) -> None:
        """Store ``job``'s attempts and last error, due again at ``at``, lease ended."""

    @abc.abstractmethod
    async def release_job(self, job: Job, at: float, now: float) -> None:
        """Hand a claimed job back unattempted, due again at ``at``, lease
        ended: no attempt is counted or logged."""

    @abc.abstractmethod
    async def kill_job(self, job: Job, reason: str, now: float) -> None:
        """Move it to the dead-letter list with ``reason`` as its last error."""

    @abc.abstractmethod
    async def mute_job(self, job: Job, reason: str, now: float) -> bool:
        """Not sent, and never to be: its user switched the channel off since
        it was queued.  The job leaves the queue and the attempt log keeps
        it with the result ``muted`` and ``reason`` (``Store.timeline``), in
        one transaction.  False when it had left the queue already
        (cancelled meanwhile): nothing is logged then."""

    @abc.abstractmethod
    async def cancel_fallbacks(self, app_id: str, user: str, nids: list[str] | None,
                               ) -> list[tuple[str, str]]:
        """Drop the user's queued fallback jobs and held digest items for
        ``nids`` (all when None): a device saw them.  Returns ``(nid,
        channel)`` of each job or item dropped."""

    @abc.abstractmethod
    async def cancel_jobs(self, app_id: str, nid: str) -> int:
        """Drop every queued job and held digest item of a notification (it
        was retracted)."""

    @abc.abstractmethod
    async def update_jobs(self, app_id: str, nid: str, notification: bytes) -> int:
        """Queued jobs and held digest items of ``nid`` send ``notification``
        from now on (it was corrected)."""

    # -- digests -----------------------------------------------------------------------
    @abc.abstractmethod
    async def flush_digests(self, now: float, limit: int, build: DigestBuilder) -> list[str]:
        """Close up to ``limit`` digest windows due by ``now``: in one
        transaction per window, take its items (dropping expired ones), read
        the user's preferences, and queue the jobs ``build`` makes of both
        (it may leave items out: a channel switched off meanwhile).  A window is taken once, by
        one caller on one node.  Returns the channels of the jobs queued."""

    @abc.abstractmethod
    async def queue_stats(self, now: float) -> dict[str, QueueStats]:
        """Every channel's queued, due (at ``now``) and dead jobs, and its
        oldest due job: one aggregate read over the queue's indexes (a scan
        of their entries, none of the rows), no write.  Channels with no job
        are left out."""

    @abc.abstractmethod
    async def list_jobs(self, app_id: str, *, status: str | None = None, nid: str | None = None,
                        limit: int = 100, before: str | None = None) -> list[JobRecord]:
        """Jobs of the app, newest id first; ``before`` is a job id."""

    @abc.abstractmethod
    async def redrive_job(self, app_id: str, job_id: str, now: float, *,
                          audit: AuditEntry | None = None) -> bool:
        """A dead job is queued again, due now, with a fresh attempt budget."""

    @abc.abstractmethod
    async def prune_jobs(self, older_than: float) -> int:
        """Drop dead jobs that died before ``older_than``, and the attempts
        logged before it; returns the dead jobs dropped."""
