"""The service's outbound half: what a publish sends beyond the inbox.

After a publish commits, :meth:`Outbound.enqueue` routes the notification
for each recipient through their preferences and quiet hours
(:func:`tidings.core.quiet.plan`) and queues one durable job per channel
and destination in the store: a webhook per app endpoint, a Web Push per
subscription, an e-mail to the user's address.  The :class:`Worker` of
tidings/channels sends them, one lane per channel, on every node; the
store's leases make sure two nodes never send one job at once.

**Offline fallback.**  Push and e-mail interrupt a person, so they wait
``Settings.outbound.fallback_delay`` (60 s) for one of the user's devices to
*see* the notification -- ``POST /v1/me/notifications/seen`` (or ``read``
or ``archive``) -- and are cancelled if one does (:meth:`seen`).  Being
written to an open stream does not cancel: a tab left open in another
window receives everything and shows nothing to anyone.  A user who muted
the category in-app has no inbox entry to see, so their push and e-mail go
without the delay.  Webhooks go to the app's backend and never wait.

**Quiet hours** hold push, e-mail and webhooks until the window ends
(``not_before``); ``urgent`` bypasses them, never a mute.

**Groups collapse.**  A pending push or e-mail carries the notification's
``group_key``; a newer notification of the group replaces it (the store does
it in the enqueue's transaction), so a burst of likes is one e-mail showing
the newest -- the same one the inbox's group entry shows, whose id a device
marks seen.

Channels that are not configured (no VAPID key, no SMTP server) get no
jobs; webhooks are on by default and need an endpoint registered.

**Unsubscribe links.**  With ``EmailConfig.public_url`` set, every e-mail
carries a ``List-Unsubscribe`` link signed under :attr:`Outbound.link_secret`
(tidings/core/unsubscribe.py); :meth:`Outbound.unsubscribe` is what
following it does: the channel off in the user's preferences, changed in
place by the store (``Store.update_preferences``) so that a change the user
makes at the same instant is kept too.

**Preferences are asked again at send time.**  A job waits (the fallback's
delay, quiet hours, retries) and a digest window stays open for hours; the
user may switch the channel off meanwhile.  So the worker's :meth:`screen`
reads the preferences of each claim's users, once per claim, and a job whose
channel is now off for its category is not sent (``Store.mute_job``: the
timeline shows it as ``muted`` with the reason, the delivery counts as
``muted``); a digest window closing reads them in its own transaction and
leaves such items out (:meth:`flush_digests`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from tidings.channels.base import Channel, Job, Result
from tidings.channels.worker import Lane, Worker
from tidings.config import Settings
from tidings.core import digest, locales, quiet, retime
from tidings.core.lru import LRU
from tidings.core.models import Preferences
from tidings.core.retry import RetryPolicy
from tidings.core.unsubscribe import Link, switch_off
from tidings.store.base import Store
from tidings.store.outbound import DigestItem, NewJob, QueueStats, WebhookEndpoint

__all__ = ["Outbound", "OutboundCounts", "QueueSnapshot", "StoreQueue"]

log = logging.getLogger("tidings.service.outbound")

OUTBOUND = ("webhook", "push", "email")
FALLBACK = frozenset({"push", "email"})  # wait for a device to see it first
WEBHOOK_CACHE_TTL = 10.0  # seconds a node reuses an app's endpoints (and secrets)
PRUNE_INTERVAL = 3600.0
DIGEST_BATCH = 100  # windows closed per store call
# How long /metrics waits for the queue's figures.  A store that does not
# answer (down, or behind a silent partition) must not hold the scrape, whose
# other metrics are this node's memory: after this the figures are left out.
STATS_TIMEOUT = 2.0


class StoreQueue:
    """The store's job table as the worker's :class:`~tidings.channels.base.JobQueue`."""

    def __init__(self, store: Store, lease: float, clock: Callable[[], float] = time.time):
        self.store = store
        self.lease = lease
        self.clock = clock

    async def claim(self, channel: str, n: int, now: float) -> list[Job]:
        return await self.store.claim_jobs(channel, n, now, self.lease)

    async def complete(self, job: Job) -> None:
        await self.store.complete_job(job.id, self.clock())

    async def retry(self, job: Job, at: float) -> None:
        await self.store.retry_job(job, at, self.clock())

    async def dead(self, job: Job, reason: str) -> None:
        await self.store.kill_job(job, reason, self.clock())

    async def release(self, job: Job, at: float) -> None:
        await self.store.release_job(job, at, self.clock())


@dataclass
class OutboundCounts:
    """What one publish queued, per channel: the publish answer's ``outbound``."""

    queued: Counter = field(default_factory=Counter)
    deferred: Counter = field(default_factory=Counter)  # held by quiet hours
    muted: Counter = field(default_factory=Counter)  # the user switched the channel off
    digest: Counter = field(default_factory=Counter)  # held for the user's digest

    def as_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, counter in (("queued", self.queued), ("deferred", self.deferred),
                              ("muted", self.muted), ("digest", self.digest)):
            for channel, n in counter.items():
                if n:
                    out.setdefault(channel, {})[name] = n
        return out


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue's figures as one store read found them (``Outbound.queue_stats``)."""

    at: float  # when they were read (the clock's time)
    channels: dict[str, QueueStats]


# Counts a delivery event: (app, nid, channel, field, n), e.g. Service.track,
# which batches the writes and feeds /metrics.
Track = Callable[[str, str, str, str, int], None]
# An app's default digest rules: {category: {channel: rule}}.
AppDigests = Callable[[str], Awaitable[digest.Rules]]


class Outbound:
    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float] = time.time,
                 track: Track | None = None, defaults: AppDigests | None = None):
        self.settings = settings
        # The app's default digests per category (``PUT /v1/caps``), from
        # memory: RateLimits.caps caches them for every publish already.
        self.defaults = defaults
        self.store = store
        self.clock = clock
        self.track = track
        self.config = settings.outbound
        configured = {"webhook": settings.webhook, "push": settings.push,
                      "email": settings.email}
        self.channels = tuple(c for c in OUTBOUND if configured[c] is not None)
        self.queue = StoreQueue(store, self.config.lease, clock)
        self.worker: Worker | None = None
        self._webhooks: LRU[str, list[WebhookEndpoint]] = LRU(10_000, ttl=WEBHOOK_CACHE_TTL)
        self._vapid_public: str | None = None
        # The unsubscribe links' key, from the store's pepper (Service.open).
        self.link_secret = b""
        self._maintenance: asyncio.Task | None = None
        self._digests: asyncio.Task | None = None
        # /metrics' queue figures: the last read (None: the store did not
        # answer), until when it is reused, and the read in progress.
        self._stats: QueueSnapshot | None = None
        self._stats_until = float("-inf")
        self._stats_read: asyncio.Task | None = None

    def enabled(self, channel: str) -> bool:
        return channel in self.channels

    @property
    def vapid_public_key(self) -> str | None:
        """The browser's ``applicationServerKey``; None when push is off."""
        if self.settings.push is None:
            return None
        if self._vapid_public is None:
            from tidings.channels.webpush import vapid_public_key

            self._vapid_public = vapid_public_key(self.settings.push.vapid_private_key)
        return self._vapid_public

    # -- the worker ---------------------------------------------------------------------
    async def start(self) -> None:
        if not self.config.worker or not self.channels:
            return
        cfg = self.config
        policy = RetryPolicy(base=cfg.retry_base, cap=cfg.retry_cap,
                             max_attempts=cfg.max_attempts)
        lanes = [Lane(channel, concurrency=cfg.concurrency, policy=policy,
                      timeout=cfg.send_timeout) for channel in self._make_channels()]
        self.worker = Worker(self.queue, lanes, poll_interval=cfg.poll_interval,
                             clock=self.clock, on_result=self._on_result, screen=self.screen)
        await self.worker.start()
        loop = asyncio.get_running_loop()
        self._maintenance = loop.create_task(self._prune())
        self._digests = loop.create_task(self._send_digests())

    def _make_channels(self) -> list[Channel]:
        # Imported here: the channels pull in httpx, aiosmtplib and pywebpush,
        # which a node with outbound delivery off never needs.
        s = self.settings
        out: list[Channel] = []
        if s.webhook is not None:
            from tidings.channels.webhook import WebhookChannel

            out.append(WebhookChannel(self._webhook_secrets, s.webhook, proxy=s.egress_proxy,
                                      clock=self.clock))
        if s.push is not None:
            from tidings.channels.webpush import WebPushChannel

            out.append(WebPushChannel(s.push, proxy=s.egress_proxy, clock=self.clock))
        if s.email is not None:
            from tidings.channels.email import EmailChannel

            out.append(EmailChannel(s.email, clock=self.clock, link_secret=self.link_secret))
        return out

    async def unsubscribe(self, link: Link) -> bool:
        """Switch ``link.channel`` off for its user, in its category or in
        all of them (an unsubscribe link was followed).  False when it was off
        already: nothing is written.  Only that switch changes, in the store's
        transaction: a change of the user's own made at the same instant (or
        another link's) is kept, whichever commits first."""
        changed = await self.change_preferences(
            link.app, link.user, lambda prefs: switch_off(prefs, link.category, link.channel))
        return changed is not None

    async def change_preferences(
        self, app_id: str, user: str, change: Callable[[Preferences], Preferences | None],
    ) -> Preferences | None:
        """Apply ``change`` to the user's preferences (``Store.update_preferences``)
        and, in the same transaction, re-time what waits for them when their
        quiet hours or digest rules changed (tidings/core/retime.py): jobs
        held by quiet hours, digest windows.  Lanes with a job due sooner
        are woken."""
        defaults = await self.defaults(app_id) if self.defaults is not None else {}
        made: list[retime.Retimer] = []

        def retiming(old: Preferences, new: Preferences) -> retime.Retimer | None:
            # called in the transaction (again, if it runs again): the time is then
            made.clear()
            found = retime.retimer(old, new, now=self.clock(),
                                   fallback_delay=self.config.fallback_delay, defaults=defaults)
            if found is not None:
                made.append(found)
            return found

        stored = await self.store.update_preferences(app_id, user, change, retiming)
        for retimer in made:
            if retimer.result is not None:
                self.wake(retimer.result.sooner)
        return stored

    # -- preferences as they are now --------------------------------------------------
    async def screen(self, jobs: list[Job]) -> list[Job]:
        """The jobs of one claim that their users still want (the worker's
        ``screen``).  A job whose channel its user switched off for its
        category since it was queued -- for a digest, for every category in
        it -- leaves the queue unsent (``Store.mute_job``) and counts as
        ``muted``.  One read of preferences per app in the claim."""
        users: dict[str, set[str]] = {}
        for job in jobs:
            users.setdefault(job.app, set()).add(job.user)
        prefs = {app: await self.store.preferences_of(app, sorted(them))
                 for app, them in users.items()}
        keep: list[Job] = []
        muted: Counter = Counter()
        now = self.clock()
        for job in jobs:
            mine = prefs[job.app].get(job.user)
            why = _unwanted(mine, job) if mine is not None and mine.categories else None
            if why is None:
                keep.append(job)
                continue
            reason, nids = why
            if await self.store.mute_job(job, reason, now):
                muted.update((job.app, nid, job.channel, "muted") for nid in nids)
        await self._count(muted)
        return keep

    async def stop(self, grace: float = 10.0) -> None:
        for task in (self._maintenance, self._digests):
            if task is not None:
                task.cancel()
        worker, self.worker = self.worker, None
        if worker is None:
            return
        await worker.stop(grace)
        for lane in worker.lanes.values():
            try:
                await lane.channel.aclose()
            except Exception:  # closing is best effort at shutdown
                log.exception("closing the %s channel failed", lane.channel.name)

    def wake(self, channels: Iterable[str]) -> None:
        if self.worker is not None:
            for channel in channels:
                self.worker.wake(channel)

    async def _prune(self) -> None:
        """Dead letters and the attempt log are kept as long as inbox entries
        (retention_days)."""
        while True:
            try:
                cutoff = self.clock() - self.settings.retention_days * 86400
                await self.store.prune_jobs(cutoff)
            except Exception:
                log.exception("pruning dead jobs failed; retrying at the next interval")
            await asyncio.sleep(PRUNE_INTERVAL)

    # -- /metrics ----------------------------------------------------------------------
    async def queue_stats(self) -> QueueSnapshot | None:
        """Every channel's queue and dead letters, read from the store at most
        once per ``stats_ttl`` (5 s) on this node: scrapers and dashboards
        that come in between, or at the same time, share the one read.  None
        when the store did not answer within ``STATS_TIMEOUT`` (2 s) or
        failed; that too is kept for ``stats_ttl``, so that a store that is
        down costs one wait per interval, not one per scrape."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._stats_until:
            return self._stats
        if self._stats_read is None:
            self._stats_read = loop.create_task(self._read_stats())
        read = self._stats_read
        # shielded: a scrape that goes away does not cancel the others' read
        return await asyncio.shield(read)

    async def _read_stats(self) -> QueueSnapshot | None:
        now = self.clock()
        try:
            async with asyncio.timeout(STATS_TIMEOUT):
                snapshot: QueueSnapshot | None = QueueSnapshot(
                    now, await self.store.queue_stats(now))
        except Exception as exc:  # TimeoutError, Unavailable, a database error
            log.warning("reading the outbound queue's figures failed (%s: %s); /metrics "
                        "leaves them out", type(exc).__name__, exc)
            snapshot = None
        finally:
            self._stats_read = None
        self._stats = snapshot
        self._stats_until = asyncio.get_running_loop().time() + self.config.stats_ttl
        return snapshot

    # -- digests ----------------------------------------------------------------------------
    async def _send_digests(self) -> None:
        """Every node polls for digest windows due; the store hands each to one."""
        while True:
            try:
                await self.flush_digests()
            except Exception:
                log.exception("sending digests failed; retrying at the next poll")
            await asyncio.sleep(self.config.poll_interval)

    async def flush_digests(self, now: float | None = None) -> list[str]:
        """Turn the digest windows due by ``now`` into jobs (one per window and
        destination) and wake their lanes; the channels of those jobs.  Items
        whose channel the user switched off for their category while the
        window was open are left out, and count as ``muted``."""
        # window -> the ids muted in it; a transaction run again builds again
        muted: dict[tuple[str, str, str, str], list[str]] = {}

        def build(app: str, user: str, channel: str, rule: str, items: list[DigestItem],
                  prefs: Preferences | None) -> list[NewJob]:
            off = [prefs is not None and bool(prefs.categories)
                   and _switched_off(prefs, i.notification, channel) for i in items]
            wanted = [i for i, o in zip(items, off, strict=True) if not o]
            muted[app, user, channel, rule] = [
                i.nid for i, o in zip(items, off, strict=True) if o]
            return self._digest_jobs(app, user, channel, rule, wanted) if wanted else []

        channels = await self.store.flush_digests(
            self.clock() if now is None else now, DIGEST_BATCH, build)
        counts: Counter = Counter()
        for (app, _, channel, _), nids in muted.items():
            counts.update((app, nid, channel, "muted") for nid in nids)
        await self._count(counts)
        self.wake(channels)
        return channels

    def _digest_jobs(self, app: str, user: str, channel: str, rule: str,
                     items: list[DigestItem]) -> list[NewJob]:
        """One window's digest jobs: one per destination, listing its items."""
        now = self.clock()
        by_dest: dict[bytes, list[DigestItem]] = {}
        for item in items:
            by_dest.setdefault(msgspec.json.encode(item.destination), []).append(item)
        jobs = []
        for n, (_, mine) in enumerate(sorted(by_dest.items())):
            jid = digest.job_id(app, user, channel, rule, mine[0].nid, n)
            # one destination, so one language: the items' and the digest's own words;
            # a webhook's items are the notifications as published, ``locales``
            # included, as its single deliveries carry them (the receiver picks)
            locale = mine[0].destination.get("locale", "")
            notes = ([i.notification for i in mine] if channel == "webhook" else
                     [locales.resolve(i.notification, locale) for i in mine])
            job = Job(id=jid, channel=channel, app=app, user=user,
                      notification=digest.body(jid, notes, now, locale),
                      destination=mine[0].destination, created_at=now)
            jobs.append(NewJob(job=job, nid=jid.split(".", 1)[0], not_before=now))
        return jobs

    async def _count(self, counts: Counter) -> None:
        """Delivery statistics: ``{(app, nid, channel, field): n}``."""
        if not counts:
            return
        if self.track is None:
            await self.store.record_deliveries(counts)
            return
        for (app, nid, channel, field_), n in counts.items():
            self.track(app, nid, channel, field_, n)

    async def _on_result(self, job: Job, result: Result) -> None:
        """Delivery statistics, and forgetting a push subscription that is gone."""
        if result.outcome in ("delivered", "failed"):
            field_ = "sent" if result.outcome == "delivered" else "failed"
            # A digest counts for each notification it carried.
            nids = (digest.item_ids(job.notification) if digest.is_digest(job.id)
                    else [job.id.split(".", 1)[0]])
            await self._count(Counter({(job.app, nid, job.channel, field_): 1 for nid in nids}))
        if result.gone and job.channel == "push" and job.destination.get("subscription"):
            await self.store.delete_push_subscription(job.app, job.user,
                                                      job.destination["subscription"])

    # -- destinations -------------------------------------------------------------------
    async def webhooks(self, app_id: str) -> list[WebhookEndpoint]:
        found = self._webhooks.get(app_id)
        if found is None:
            found = await self.store.list_webhooks(app_id)
            self._webhooks.put(app_id, found)
        return found

    def forget_webhooks(self, app_id: str) -> None:
        """This node changed the app's endpoints: stop using the cached ones
        (other nodes follow within WEBHOOK_CACHE_TTL)."""
        self._webhooks.pop(app_id)

    async def _webhook_secrets(self, job: Job) -> list[str] | None:
        wid = job.destination.get("endpoint")
        for ep in await self.webhooks(job.app):
            if ep.id == wid:
                secrets = [ep.secret]
                if ep.previous_secret and (ep.previous_until or 0) > self.clock():
                    secrets.append(ep.previous_secret)
                return secrets
        return None  # the endpoint was deleted: the job fails as gone

    # -- publishing -----------------------------------------------------------------------
    def wanted_now(self, app_id: str) -> bool | None:
        """``wanted`` from memory; None when that needs the app's webhooks
        and they are not cached."""
        if not self.channels:
            return False
        if self.enabled("push") or self.enabled("email"):
            return True
        if not self.enabled("webhook"):
            return False
        hooks = self._webhooks.get(app_id)
        return None if hooks is None else bool(hooks)

    async def wanted(self, app_id: str) -> bool:
        """Whether a publish of this app may queue anything (cheap: the
        answer is cached); when not, nobody needs to list its recipients."""
        if self.enabled("push") or self.enabled("email"):
            return True
        return self.enabled("webhook") and bool(await self.webhooks(app_id))

    async def enqueue(
        self, app_id: str, nid: str, body: bytes, *, category: str, priority: str,
        created_at: float, expires_at: float | None, users: list[str],
        group_key: str | None = None,
    ) -> OutboundCounts:
        """Queue the outbound jobs of one published notification for ``users``."""
        jobs, counts = await self.plan(
            app_id, nid, body, category=category, priority=priority, created_at=created_at,
            expires_at=expires_at, users=users, group_key=group_key)
        if jobs:
            await self.queued(app_id, nid, counts, await self.store.enqueue_jobs(jobs))
        return counts

    async def plan(
        self, app_id: str, nid: str, body: bytes, *, category: str, priority: str,
        created_at: float, expires_at: float | None, users: list[str],
        group_key: str | None = None,
    ) -> tuple[list[NewJob], OutboundCounts]:
        """The outbound jobs of one notification for ``users``, not queued
        yet: a publish commits them with its inbox rows (Service.publish),
        then calls :meth:`queued`."""
        counts = OutboundCounts()
        jobs: list[NewJob] = []
        if not self.channels or not users:
            return jobs, counts
        hooks = await self.webhooks(app_id) if self.enabled("webhook") else []
        personal = {}
        if self.enabled("push") or self.enabled("email"):
            personal = await self.store.destinations(app_id, users)
        reachable = users if hooks else [u for u in users if u in personal]
        if not reachable:
            return jobs, counts
        prefs = await self.store.preferences_of(app_id, reachable)
        at = datetime.fromtimestamp(created_at, UTC)
        delay = self.config.fallback_delay
        seq: Counter = Counter()

        def job(user: str, channel: str, destination: dict) -> Job:
            """The next job of ``channel`` for this notification (ids count per channel)."""
            n = seq[channel]
            seq[channel] += 1
            return Job(id=f"{nid}.{channel}.{n}", channel=channel, app=app_id, user=user,
                       notification=body, destination=destination, created_at=created_at,
                       expires_at=expires_at)

        # An urgent notification is never held for a digest.
        defaults = ({} if self.defaults is None or priority == "urgent"
                    else await self.defaults(app_id))
        for user in reachable:
            mine = prefs.get(user)
            plan = quiet.plan(mine, category, priority, at,
                              channels=("in_app", *self.channels))
            # Users without digests (nor app defaults) cost this one test.
            digests = priority != "urgent" and (bool(defaults) or bool(mine and mine.digests))
            # Without an inbox entry (muted in-app) no device can see it:
            # nothing to wait for.
            waits = delay > 0 and "in_app" not in plan.muted
            dest = personal.get(user)
            for channel in self.channels:
                if channel == "webhook":
                    targets = [{"url": ep.url, "endpoint": ep.id} for ep in hooks]
                elif channel == "push":
                    targets = [s.destination() for s in dest.push] if dest else []
                else:
                    targets = [dest.email.destination()] if dest and dest.email else []
                if not targets:
                    continue
                if mine is not None and mine.locale and channel != "webhook":
                    # the language the channel renders it in (tidings/core/locales.py),
                    # kept with the job: a PATCH's new locales are sent in it too
                    targets = [{**t, "locale": mine.locale} for t in targets]
                if channel in plan.muted:
                    counts.muted[channel] += len(targets)
                    continue
                rule = digest.rule_for(mine, defaults, category, channel) if digests else None
                if rule is not None:
                    # Held in the user's window (the store keeps it), quiet
                    # hours included; a device that sees it drops it.
                    closes = digest.due(rule, at, mine).timestamp()
                    for destination in targets:
                        jobs.append(NewJob(job=job(user, channel, destination), nid=nid,
                                           not_before=closes, digest=digest.key(rule)))
                    counts.digest[channel] += len(targets)
                    continue
                not_before, fallback = created_at, False
                if plan.until is not None and channel in plan.later:
                    not_before = plan.until.timestamp()
                    counts.deferred[channel] += len(targets)
                if channel in FALLBACK and waits:
                    # Quiet hours or not, a device that saw it cancels the job.
                    not_before, fallback = max(not_before, created_at + delay), True
                for destination in targets:
                    # A pending push or e-mail of the same group is replaced by
                    # this one: 42 likes in a minute are one e-mail, not 42.
                    jobs.append(NewJob(job=job(user, channel, destination), nid=nid,
                                       not_before=not_before, fallback=fallback,
                                       collapse=group_key))
                counts.queued[channel] += len(targets)
        return jobs, counts

    async def queued(self, app_id: str, nid: str, counts: OutboundCounts,
                     replaced: list[tuple[str, str]]) -> None:
        """Jobs of ``nid`` were committed: count them (and those they
        replaced) and wake the lanes that have work."""
        stats = Counter({(app_id, nid, channel, "queued"): n
                         for channel, n in counts.queued.items()})
        stats.update({(app_id, nid, channel, "digest"): n
                      for channel, n in counts.digest.items()})
        stats.update((app_id, old, channel, "collapsed") for old, channel in replaced)
        await self._count(stats)
        self.wake(counts.queued)

    async def seen(self, app_id: str, user: str, nids: list[str] | None) -> None:
        """A device saw ``nids`` (all of the user's, when None): the pending
        fallbacks for them are not needed any more."""
        dropped = await self.store.cancel_fallbacks(app_id, user, nids)
        await self._count(Counter((app_id, nid, channel, "cancelled") for nid, channel in dropped))

    async def retracted(self, app_id: str, nid: str) -> None:
        await self.store.cancel_jobs(app_id, nid)

    async def corrected(self, app_id: str, nid: str, body: bytes) -> None:
        """A PATCH: jobs not sent yet send the corrected notification."""
        await self.store.update_jobs(app_id, nid, body)


def _switched_off(prefs: Preferences, notification: bytes, channel: str) -> bool:
    try:
        category = digest.category_of(notification)
    except msgspec.DecodeError:  # not a notification: the channel will say so
        return False
    return quiet.switched_off(prefs, category, channel)


def _unwanted(prefs: Preferences, job: Job) -> tuple[str, list[str]] | None:
    """Why ``job`` is not to be sent any more, and the notifications it
    carries; None when its user still wants it."""
    channel = job.channel
    if digest.is_digest(job.id):
        try:
            items = digest.item_categories(job.notification)
        except msgspec.DecodeError:
            return None
        if items and all(quiet.switched_off(prefs, c, channel) for _, c in items):
            return (f"the user switched {channel} off for every category in this digest",
                    [nid for nid, _ in items])
        return None
    try:
        category = digest.category_of(job.notification)
    except msgspec.DecodeError:
        return None
    if quiet.switched_off(prefs, category, channel):
        return (f'the user switched {channel} off for "{category}" since it was queued',
                [job.id.split(".", 1)[0]])
    return None
