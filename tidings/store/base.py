"""The store contract.

A store keeps apps, keys, notifications, every user's inbox and stream
position, topic memberships, preferences and idempotency records.

Guarantees every implementation gives (tests/store/test_contract.py checks them):

* **Atomic append-and-assign-seq.**  ``publish`` commits the notification and
  one inbox entry per recipient, each with that user's next ``seq``, and the
  item's outbound ``jobs`` (as ``enqueue_jobs`` would), in one transaction,
  before it returns.  Seqs per user are strictly increasing with
  no gaps; concurrent publishes never hand out the same seq.
* **Durable on return.**  When a write method returns, the data survives a
  crash of the process.
* **Epochs.**  A user's ``epoch`` is created with their stream and never
  changes while their history is kept; a lost or reset history gets a new one,
  so stale cursors are detected (docs/design.md §2.4).
* **Idempotency.**  A publish with an idempotency key seen within the window
  returns the first result, marked ``duplicate`` and carrying the first
  publish's ``fingerprint``, and writes nothing.
* **Isolation.**  Every method takes the app id and never reads or writes
  another app's rows.
* **Aggregation.**  A notification with a ``group_key``, fanned out on
  write, merges into the recipient's *unread*, unexpired entry of that key
  when there is one: that entry moves to the recipient's next ``seq`` and
  now points at the new notification (so the stream replays the update and
  clients, which drop duplicates by id, show it), with the merged summary;
  otherwise it opens a new group entry.  Feed items never aggregate.
  An entry's summary counts the members it holds now: retracting one
  (``delete_notification``) or pruning one older than retention (``prune``)
  rebuilds it from the members left, and the entry shows the newest of
  them (its id, body, time and expiry); an entry left with none is gone.
* **Scheduled notifications fire once.**  A publish with ``deliver_at`` only
  stores it; ``fire_due`` claims each due one and publishes it, with its
  outbound jobs, in the same transaction, so it fires exactly once however
  many nodes call ``fire_due`` at the same time, and one cancelled first
  never fires.
  ``edit_scheduled`` changes a pending one holding its row (or SQLite's
  write lock) from the read to the write, so an edit and a fire of the same
  notification apply one after the other: the fire publishes the edit, or
  the edit finds it no longer pending (and the caller edits what was
  published).  Never both, never neither.
* **An app keeps an admin key that does not expire.**  ``revoke_api_key``
  never removes an app's last key with the ``admin`` scope and no
  ``expires_at``, ``rotate_api_key`` gives the key it replaces a
  successor with the same scopes and no expiry, and ``add_api_key`` and
  ``rotate_api_key`` never go past their ``limit`` of keys that have not
  expired, however many callers on however many nodes (or processes on one
  SQLite file) do so at once.
* **Secrets are sealed when the store is.**  Once ``unlock`` has taken the
  operator's key, every secret of ``tidings/store/sealed.py``'s ``PLACES`` is
  written sealed under it and opened as it is read (``seal``); ``reseal``
  changes all of them and the key check in one transaction, or none.
* **A key's last use only moves later.**  ``note_api_keys_used`` keeps the
  later of the time it is given and the one the key has, so nodes writing
  their notes in any order never set it back.
* **Counts say where they were read.**  ``counts`` reads the unread and
  unseen counts, the user's head seq and the app's feed head in one snapshot
  (one statement): they count every entry up to that seq and every feed item
  up to that offset, and nothing after (docs/protocol.md, "Counts and the
  badge"), and when the first unread entry they count expires.
* **In-app mutes hold for feed items too.**  A feed item (a broadcast, a
  large topic's item) of a category the user switched off in-app is left
  out of that user's ``inbox``, ``counts``, ``counts_many`` and ``replay``,
  read at read time: switched on again, the category's items are back,
  past ones included.  These methods take the user's mutes as ``muted``
  when the caller holds them (the gateway, for users with a stream on the
  node); a user with none given runs the same statements as if mutes did
  not exist.  Not given, ``inbox`` and ``counts`` read them inside their own
  statement (so in its snapshot, with no round trip of their own), and
  ``replay`` and ``counts_many`` read them first (``muted``, ``muted_many``).
* **A user's token cutoff only moves later.**  ``revoke_tokens`` keeps
  the later of the cutoff it is given and the one the user has, however
  many callers on however many nodes revoke at once, so a revocation is
  never undone by an earlier one that committed after it.  So does one
  token's: ``revoke_token_id`` keeps the later of the two ends.
* **A change of preferences is never lost.**  ``update_preferences`` reads,
  changes and writes one user's preferences holding that user's row (or
  SQLite's write lock) from the read to the write, so concurrent updates and
  ``put_preferences`` calls, on any number of nodes, apply one after the
  other: an unsubscribe link switching e-mail off never undoes the user's
  own change made at the same instant, nor the other way round.  A
  ``change`` that raises writes nothing, which makes ``If-Match`` atomic:
  of writers sending the same ETag at once, the first to hold the lock
  writes, and a change it made refuses every other that would change them
  again (one that returns None, a write made already, writes nothing).
* **Delivery counters add up.**  ``record_deliveries`` adds to per
  (notification, channel, field) counters atomically; concurrent callers on
  any number of nodes never lose an increment.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from tidings.core.audit import AuditEntry
from tidings.core.models import Preferences
from tidings.core.preferences import muted as muted_in
from tidings.core.receipts import Row
from tidings.core.retime import Retime
from tidings.core.seal import PLAIN, Seal
from tidings.store.audit import AuditStore
from tidings.store.outbound import NewJob, OutboundStore
from tidings.store.sealed import (
    KEY_CHECK,
    PLACES,
    Lease,
    Place,
    app_place,
    check_of,
    resealed,
)


@dataclass(slots=True)
class AppRecord:
    id: str
    name: str
    signing_secret: str
    created_at: float
    # the secret the last rotation replaced, still taken for tokens until
    # previous_until (unix seconds); None for an app never rotated
    previous_secret: str | None = None
    previous_until: float | None = None

    def previous(self, now: float) -> str | None:
        """The previous secret while its overlap lasts, else None."""
        until = self.previous_until
        return self.previous_secret if until is not None and now < until else None


def open_app(seal: Seal, row) -> AppRecord:
    """An app's record from its row (``id, name, signing_secret, created_at,
    previous_secret, previous_until``), its secrets opened."""
    where = app_place(row[0])
    return AppRecord(row[0], row[1], seal.unwrap(row[2], where, "signing_secret"), row[3],
                     seal.unwrap(row[4], where, "previous_secret"), row[5])


@dataclass(slots=True)
class KeyRecord:
    app_id: str
    prefix: str
    scopes: frozenset[str]
    # Unix seconds from which the key is refused (401 key_expired); None: never
    expires_at: float | None = None
    name: str | None = None  # what the audit log names the key by, with its prefix


@dataclass(slots=True)
class KeyInfo:
    """What an app may know of one of its API keys (never the key or its hash)."""

    prefix: str
    scopes: frozenset[str]
    name: str | None
    created_at: float
    expires_at: float | None = None
    # when a node last noted the key used (tidings/service/keys.py says how
    # closely); None: not since it was made (or since schema v17)
    last_used_at: float | None = None


@dataclass(slots=True)
class Rotated:
    """What ``rotate_api_key`` did: the key it replaced, with its expiry
    now, and the new one."""

    old: KeyInfo
    new: KeyInfo


# What revoke_api_key (and rotate_api_key, when it did not rotate) did.
REVOKED, NO_SUCH_KEY, LAST_ADMIN_KEY = "revoked", "no_such_key", "last_admin_key"
LIMIT_REACHED = "limit_reached"


# NewNotification, Delivery and PublishOutcome are made for every publish
# (Delivery for every recipient), on the event loop and on the SQLite
# writer's thread: msgspec Structs, whose __init__ is C, where a dataclass's
# is Python (a publish's outcome and delivery: 0.62 against 0.24 µs).
class NewNotification(msgspec.Struct):
    """What the service hands the store to publish (already validated)."""

    id: str
    category: str
    body: bytes  # the encoded client-facing notification object
    created_at: float
    expires_at: float | None
    # exactly one of these targets is set
    users: list[str] | None = None
    topic: str | None = None
    all: bool = False
    idempotency_key: str | None = None
    # what the request said, hashed: a key reused with another notification
    # is told apart from a retry (docs/security.md#idempotency-keys)
    fingerprint: str = ""
    group_key: str | None = None  # merge into the recipient's unread entry of this key
    # set: store it, and publish it (created at this time) when fire_due reaches it
    deliver_at: float | None = None
    # Its webhook, push and e-mail jobs, committed with the inbox rows when
    # it is fanned out on write (docs/design.md §2.1); none for a duplicate.
    jobs: list[NewJob] = []  # a new list for each (msgspec copies an empty default)


class Delivery(msgspec.Struct, gc=False):
    """One recipient's entry of a publish.  ``gc=False``: its fields are
    strings, an int and bytes, so it can hold no reference cycle, and the
    collector need not track it: under write fan-out a publish makes one per
    recipient, which would otherwise bring young collections on."""

    user: str
    epoch: str
    seq: int
    group: bytes | None = None  # the user's group entry after the merge (JSON), if grouped


class PublishOutcome(msgspec.Struct, gc=False):
    """What the store made of one publish.  ``gc=False``: it holds strings,
    numbers, bytes and lists of them, never a cycle, so the collector need
    not track it (a batch makes one per item, on the writer thread, and
    frees them on the loop)."""

    id: str
    status: str  # "accepted" | "duplicate" | "scheduled"; from fire_due also "expired"
    recipients: int
    muted: int = 0
    deliveries: list[Delivery] = []
    feed_offset: int | None = None  # set when fanned out on read
    audience: str | None = None  # "*" or the topic, for feed items
    body: bytes = b""
    fingerprint: str = ""  # a "duplicate"'s: the fingerprint its key was first used with
    # (nid, channel) of the pending jobs that ``jobs`` replaced (enqueue_jobs' collapse)
    replaced: list[tuple[str, str]] = []
    category: str = ""  # a feed item's: a stream skips it when its user muted it
    # fire_due's: published with its outbound jobs not written (Store.fired_unqueued)
    unqueued: bool = False


class Counts(NamedTuple):
    """A user's ``unread`` and ``unseen`` counts and the position they were
    read at, in the same snapshot: the user's head ``seq`` (0 before their
    stream exists) and the app's ``feed`` head.  A notification committed
    after the read has a higher seq or feed offset, one before it does not
    (seqs and offsets commit in order), so a client adds only those past it.

    ``expires``: when the first unread entry (personal or feed) they count
    runs out of its ``ttl``, None when none has one.  Not sent to clients:
    the gateway reads the counts again then (tidings/gateway/recount.py).

    ``rev``: the revision of the user's counts, in the same snapshot.  Every
    change that moves them without a seq or an offset (a state change, a
    retraction, a topic joined or left, an in-app mute, a retention sweep)
    raises it in its own transaction, so of two counts read at the same
    position the one with the higher ``rev`` holds every change the other
    does.  Only an expiry writes nothing: at an equal ``rev`` the lower
    counts are the later ones (docs/protocol.md, "Counts and the badge")."""

    unread: int
    unseen: int
    seq: int
    feed: int
    expires: float | None = None
    rev: int = 0


@dataclass(slots=True)
class StreamHead:
    epoch: str
    head_seq: int
    oldest_seq: int  # oldest retained seq (head_seq + 1 when none)
    head_feed: int
    oldest_feed: int
    # the categories the user muted in-app (``Store.muted``), read with the
    # head: a stream skips live feed items of them (tidings/gateway/stream.py)
    muted: frozenset[str] = frozenset()
    # the locale of their preferences ("" for none), read in the same read:
    # the language a stream shows notifications in (tidings/core/locales.py)
    locale: str = ""


@dataclass(slots=True)
class Entry:
    """One inbox item: a personal entry (seq) or a feed item (feed)."""

    id: str
    body: bytes
    state: str
    created_at: float
    seq: int | None = None
    feed: int | None = None
    group: bytes | None = None  # a group entry's ``group`` object (JSON)
    # where a page puts it: an entry that came back from a snooze sorts by the
    # moment it did (a time-ordered id); None: by its own id
    key: str | None = None
    snoozed_until: float | None = None  # a snoozed entry's wake-up (pages that show them)

    @property
    def place(self) -> str:
        """What a page sorts by, newest first, and what ``before=`` names."""
        return self.key or self.id


def by_place(e: Entry) -> str:
    """``e.place``, as the key pages sort by (a plain function: a page sorts
    every entry it read)."""
    return e.key or e.id


@dataclass(slots=True)
class Resurfaced:
    """A snoozed entry that came back (``Store.resurface``, ``Store.wake_snoozed``):
    unseen, at a new seq of its user's stream, placed at ``entry.key`` in pages."""

    app_id: str
    user: str
    epoch: str
    entry: Entry


@dataclass(slots=True)
class StoredNotification:
    id: str
    body: bytes
    category: str
    created_at: float
    expires_at: float | None
    audience: str | None
    feed_offset: int | None
    recipients: int
    stats: dict[str, int]


@dataclass(slots=True)
class Retraction:
    """What ``Store.delete_notification`` did, for the live events that
    follow it (docs/delivery.md#group-entries-retract-correct-prune)."""

    notification: StoredNotification  # the row as it was
    # users who held it: an entry of it, or a group entry holding it
    users: list[str] = field(default_factory=list)
    # users whose unread entry went with it (their counts dropped)
    unread: list[str] = field(default_factory=list)
    # group entries that held it and hold others, as they are now: (user, entry),
    # the entry showing its newest member left, its summary rebuilt; live ones only
    regrouped: list[tuple[str, Entry]] = field(default_factory=list)


# Users (or feed channels) whose counts a sweep names one by one, at most:
# past that, ``Pruned`` names their apps instead (every stream of the app is
# counted again), so that a sweep deleting millions of unread entries
# builds no list of millions (docs/delivery.md, "Retention").
RECOUNT_MAX = 10_000


@dataclass(slots=True)
class Pruned:
    """What ``Store.prune`` did."""

    removed: int  # entries and notifications (feed items included) deleted
    # group entries that lost members and keep others, as they are now:
    # (app, user, entry), live ones only (for the ``updated`` events, service.py)
    regrouped: list[tuple[str, str, Entry]] = field(default_factory=list)
    # whose counts dropped, for the ``counts`` events (tidings/gateway/recount.py):
    # users who lost an unread entry, live until then, (app, user) ...
    unread: list[tuple[str, str]] = field(default_factory=list)
    # ... the feeds ((app, "*" or topic)) that lost a live feed item: its
    # followers who had not read it ...
    feeds: list[tuple[str, str]] = field(default_factory=list)
    # ... and, when either list would have passed RECOUNT_MAX, it is empty
    # and its apps are here: every follower of the app is counted again
    apps: list[str] = field(default_factory=list)

    def moved(self) -> list[str]:
        """The apps whose counts revision the sweep raises (``Counts.rev``,
        the app's own: one row however many users lost an entry)."""
        return sorted({a for a, _ in self.unread} | {a for a, _ in self.feeds} | set(self.apps))


@dataclass(slots=True)
class ScheduledNotification:
    id: str
    body: bytes
    due_at: float
    expires_at: float | None
    # "pending" | "fired" (published, outbound jobs not queued yet) | "sent" |
    # "cancelled" | "expired" | "failed"
    status: str
    created_at: float  # when it was published
    fired_at: float | None


class ScheduledEdit(NamedTuple):
    """What ``Store.edit_scheduled``'s ``change`` answers: a pending
    notification's new client-facing body, due time and expiry."""

    body: bytes
    due_at: float
    expires_at: float | None


@dataclass(slots=True)
class Attempt:
    """One attempt of an outbound job, from the attempt log."""

    job_id: str
    channel: str
    attempt: int  # 1, 2, ...
    at: float
    result: str  # "sent" | "failed" (retried at next_at) | "dead" (given up)
    error: str | None
    next_at: float | None


@dataclass(slots=True)
class DeviceReceipt:
    """One device's receipt of one kind (``Store.timeline``)."""

    kind: str  # "delivered" | "displayed"
    device: str
    label: str | None
    at: float  # when the server received the device's batch


@dataclass(slots=True)
class UserTimeline:
    """One user's journey with one notification (``Store.timeline``)."""

    accepted: float  # when the server took the publish (or the schedule)
    committed: float | None  # when the publish transaction wrote it (None before v7/v8)
    recipient: bool  # the user holds an entry (or can see the feed item)
    seen_at: float | None = None
    read_at: float | None = None
    archived_at: float | None = None
    receipts: dict[str, float] = field(default_factory=dict)  # kind -> first ack
    devices: list[DeviceReceipt] = field(default_factory=list)  # oldest first
    attempts: list[Attempt] = field(default_factory=list)


STATES = ("unseen", "seen", "read", "archived")

# The delivery-tracking fields every channel reports with (docs/delivery.md):
# in_app counts "delivered" (a live stream of the user wrote it); the
# outbound channels count queued, sent, delivered, failed and what else
# they need.  Names are free-form ``[a-z_]``; these are the documented ones.
DELIVERY_FIELDS = ("queued", "sent", "delivered", "seen", "read", "failed")


class Store(OutboundStore, AuditStore, abc.ABC):
    """Durable state.  All methods are coroutines; see the module docstring.

    The outbound channels' state (destinations, the job queue) is the
    contract of tidings/store/outbound.py, and each app's audit log that of
    tidings/store/audit.py, which every store implements too.
    """

    # Users per ``counts_many`` call when many are read again at once
    # (tidings/gateway/recount.py): the default reads one at a time, and a
    # store that reads on the event loop (SQLite) holds it that long.
    counts_batch = 100

    # -- lifecycle ------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the store answers (readiness)."""

    # -- sealed secrets (tidings/core/seal.py, tidings/store/sealed.py) --
    # The key this store's secrets are sealed and opened with: PLAIN until
    # ``unlock`` has checked the operator's key against the store's.
    seal: Seal = PLAIN

    async def unlock(self, key: bytes | None) -> None:
        """Check ``key`` (None: no key) against the store's key check, and
        open every secret once under it, so that a missing or wrong key, or
        a sealed value moved from another row, stops the start with one
        clear ``SealError``; from then on secrets are sealed and opened
        with it."""
        seal = Seal(key).expect(check_of(await self.secret_rows(KEY_CHECK)))
        for place in PLACES:
            resealed(place, await self.secret_rows(place), seal, PLAIN)
        self.seal = seal

    @abc.abstractmethod
    async def secret_rows(self, place: Place) -> list[tuple]:
        """The rows of ``place.select()``: a place's keys, then its secrets as stored."""

    @abc.abstractmethod
    async def reseal(self, before: Seal, after: Seal, *, force: bool = False,
                     audit: Callable[[int], AuditEntry] | None = None) -> int:
        """In one transaction: check that no node holds a lease (``Serving``,
        unless ``force``) and that the store is sealed as ``before``
        (``Seal.expect``), turn every secret of ``PLACES`` from ``before``'s
        seal to ``after``'s, and keep ``after``'s key check (none for a plain
        store).  Returns how many rows it rewrote.  A lease taken meanwhile
        waits for the transaction, so a node starting then checks its key
        against the new state.  ``audit(rows)``: the change's record, written
        in the same transaction (tidings/store/audit.py)."""

    # -- the nodes serving the store (tidings/api/app.py holds the lease) --
    @abc.abstractmethod
    async def lease(self, node: str, address: str, pid: int, ttl: float) -> None:
        """Take or renew ``node``'s lease for ``ttl`` seconds (on the
        database's clock for PostgreSQL), and drop the leases expired."""

    @abc.abstractmethod
    async def release(self, node: str) -> None:
        """End ``node``'s lease (a clean stop)."""

    @abc.abstractmethod
    async def leases(self) -> list[Lease]:
        """The leases that have not expired, by node."""

    # -- apps and keys --------------------------------------------------
    @abc.abstractmethod
    async def pepper(self) -> bytes:
        """The install-wide secret that keys API-key hashes (sealed with ``seal``)."""

    @abc.abstractmethod
    async def create_app(self, app_id: str, name: str, signing_secret: str, *,
                         audit: AuditEntry | None = None) -> AppRecord:
        """Store a new app (an id taken is the database's unique violation);
        ``audit``: the record of its creation, written in the same
        transaction."""

    @abc.abstractmethod
    async def get_app(self, app_id: str) -> AppRecord | None: ...

    @abc.abstractmethod
    async def list_apps(self) -> list[AppRecord]: ...

    @abc.abstractmethod
    async def rotate_signing_secret(self, app_id: str, secret: str, previous_until: float,
                                    *, audit: AuditEntry | None = None) -> AppRecord | None:
        """Make ``secret`` the app's signing secret, and the one it replaces
        its previous secret until ``previous_until`` (a secret older than
        that is forgotten): the app's record after it, or None when there is
        no such app.  One statement, so two rotations at once both apply,
        one after the other, and the app never ends up with a secret neither
        caller was answered.  ``audit``: the record of the change, written in
        its transaction (tidings/store/audit.py)."""

    @abc.abstractmethod
    async def add_api_key(
        self, app_id: str, prefix: str, key_hash: str, scopes: frozenset[str],
        name: str | None = None, *, limit: int | None = None, created_at: float | None = None,
        expires_at: float | None = None, audit: AuditEntry | None = None,
    ) -> bool:
        """Store a key of ``app_id`` (created now unless ``created_at``
        says when; refused from ``expires_at`` on, if given); False (nothing
        stored) when the app already has ``limit`` keys that have not
        expired at that time (an expired key is listed, not counted).
        ``audit`` as in ``rotate_signing_secret``, for this method and the
        two below: written only when the key is stored."""

    @abc.abstractmethod
    async def find_api_key(self, prefix: str, key_hash: str) -> KeyRecord | None:
        """The key whose prefix and hash these are, expired or not (the
        caller compares ``expires_at`` with its clock); None when there is
        none."""

    @abc.abstractmethod
    async def list_api_keys(self, app_id: str) -> list[KeyInfo]:
        """The app's keys, oldest first, expired ones included."""

    @abc.abstractmethod
    async def revoke_api_key(self, app_id: str, prefix: str, *,
                             audit: AuditEntry | None = None) -> str:
        """Delete the app's key ``prefix``: ``REVOKED``; ``NO_SUCH_KEY`` when
        the app has no such key (another app's included); ``LAST_ADMIN_KEY``,
        deleting nothing, when it is the app's last key with the ``admin``
        scope and no expiry (module guarantees)."""

    @abc.abstractmethod
    async def rotate_api_key(self, app_id: str, prefix: str, new_prefix: str, new_hash: str,
                             *, expires_at: float, limit: int | None = None,
                             created_at: float | None = None,
                             audit: AuditEntry | None = None) -> Rotated | str:
        """In one transaction: store a key ``new_prefix`` with the scopes and
        name of the app's key ``prefix`` and no expiry, and make ``prefix``
        expire at ``expires_at``, or keep the expiry it has when that is
        sooner (a rotation never lengthens a key's life).  ``NO_SUCH_KEY``
        when the app has no key ``prefix``, ``LIMIT_REACHED`` when it
        already has ``limit`` keys that have not expired at ``created_at``
        (``add_api_key``'s count); nothing changes then."""

    @abc.abstractmethod
    async def drop_expired_api_keys(
        self, before: float, *,
        audit: Callable[[str, str, float], AuditEntry] | None = None,
    ) -> int:
        """Delete every app's keys that expired before ``before`` (the
        retention sweep's cutoff); how many.  Keys without an expiry stay.
        ``audit(app, prefix, expires_at)``: the record of each key deleted,
        written in the same transaction."""

    @abc.abstractmethod
    async def note_api_keys_used(self, used: Iterable[tuple[str, str, float]]) -> None:
        """For each ``(app, prefix, at)``: the key's ``last_used_at``
        becomes the later of ``at`` and the one it has (module guarantees);
        a key that is gone is skipped.  One write for them all."""

    # -- dashboard sessions -------------------------------------------------
    @abc.abstractmethod
    async def end_dashboard_session(self, session_id: str, expires: float,
                                    now: float, *, audit: AuditEntry | None = None) -> None:
        """Record that the dashboard session ``session_id`` was logged out:
        ``dashboard_session_ended`` answers True for it on every node until
        ``expires`` (the session's own end, after which its cookie is refused
        anyway).  Ending it again changes nothing; sessions whose
        ``expires`` is past ``now`` are forgotten meanwhile.  ``audit``: the
        logout's record, written in the same transaction."""

    @abc.abstractmethod
    async def dashboard_session_ended(self, session_id: str) -> bool:
        """Whether the session ``session_id`` was logged out (one primary-key read)."""

    # -- users' tokens revoked ---------------------------------------------
    @abc.abstractmethod
    async def revoke_tokens(self, app_id: str, user: str, before: float,
                            forget_before: float, *, limit: int | None = None,
                            audit: Callable[[float], AuditEntry] | None = None,
                            ) -> float | None:
        """Refuse the user's tokens issued before ``before`` (Unix seconds,
        against a token's ``iat``; tidings/service/revocations.py): the
        user's cutoff becomes the later of ``before`` and the one it had,
        which is returned (module guarantees).  The app's revocations whose
        cutoff is before ``forget_before`` are deleted in the same write:
        every token they refused has expired.  None, and nothing stored,
        when the user has no cutoff and the app already has ``limit``
        (counted under the app's write lock, as ``add_api_key``'s).
        ``audit(cutoff)``, here and in ``revoke_token_id``: the record of
        the change given what it stored, written in the same transaction
        (none when nothing is stored)."""

    @abc.abstractmethod
    async def token_revocations(self, since: float) -> list[tuple[str, str, float]]:
        """``(app, user, cutoff)`` of every revocation whose cutoff is after
        ``since``, of every app: each node holds them all in memory."""

    @abc.abstractmethod
    async def revoke_token_id(self, app_id: str, user: str, jti: str, until: float,
                              now: float, *, limit: int | None = None,
                              audit: Callable[[float], AuditEntry] | None = None,
                              ) -> float | None:
        """Refuse the user's token whose ``jti`` is ``jti`` until ``until``
        (Unix seconds: when it expires; tidings/service/revocations.py).  The
        token's row keeps the later of ``until`` and the one it had, which is
        returned, and is marked written at ``now``.  The app's rows whose end
        is at or before ``now`` are deleted in the same write: their tokens
        have expired.  None, and nothing stored, when the token is not
        revoked yet and the app already has ``limit`` (counted under the
        app's write lock, as ``add_api_key``'s)."""

    @abc.abstractmethod
    async def token_id_revocations(self, since: float,
                                   now: float) -> list[tuple[str, str, str, float]]:
        """``(app, user, jti, until)`` of every token revoked by its jti whose
        row was written after ``since`` and whose ``until`` is after ``now``,
        of every app: each node holds them all in memory."""

    # -- publishing -----------------------------------------------------
    @abc.abstractmethod
    async def publish(
        self, app_id: str, item: NewNotification, *, fanout_threshold: int, window: float
    ) -> PublishOutcome:
        """Store ``item`` and fan it out (see the module guarantees).

        Users and topics up to ``fanout_threshold`` subscribers get one inbox
        entry each (muted recipients get none and are counted in ``muted``);
        ``all`` and larger topics are stored once in the app's feed.
        """

    async def publish_many(
        self, app_id: str, items: list[NewNotification], *, fanout_threshold: int,
        window: float,
    ) -> list[PublishOutcome | Exception]:
        """``publish`` each of ``items`` (a batch request), in order: one
        result per item, its outcome or the exception that failed it.  An
        item fails alone: the others are published as if it were not there.
        A user's seqs follow the items' order.  A store may commit them
        together; by default they are published one after the other, each
        as ``publish`` would."""
        out: list[PublishOutcome | Exception] = []
        for item in items:
            try:
                out.append(await self.publish(app_id, item, fanout_threshold=fanout_threshold,
                                              window=window))
            except Exception as exc:  # noqa: BLE001 - this item fails alone
                out.append(exc)
        return out

    @abc.abstractmethod
    async def get_notification(self, app_id: str, nid: str) -> StoredNotification | None: ...

    @abc.abstractmethod
    async def update_notification(
        self, app_id: str, nid: str, body: bytes
    ) -> StoredNotification | None: ...

    @abc.abstractmethod
    async def delete_notification(
        self, app_id: str, nid: str, now: float | None = None
    ) -> Retraction | None:
        """Retract: hidden from every view and from replay, in one
        transaction.  Its plain entries go; every group entry holding it is
        rebuilt from its other members (module guarantees) or goes with it.
        Returns what it did (``regrouped`` lists the entries still live at
        ``now``, the current time when None), or None when there is no such
        notification (or it was retracted already)."""

    @abc.abstractmethod
    async def recipients_of(self, app_id: str, nid: str) -> list[str]:
        """Users holding a personal inbox entry for ``nid`` (in a group
        entry too, whether or not the entry shows it now)."""

    # -- scheduled delivery ---------------------------------------------
    @abc.abstractmethod
    async def fire_due(
        self, now: float, limit: int, *, fanout_threshold: int,
        prepare: Callable[[str, NewNotification], Awaitable[None]] | None = None,
    ) -> list[tuple[str, PublishOutcome]]:
        """Publish up to ``limit`` scheduled notifications due by ``now``,
        oldest first: ``(app, outcome)`` each.  A claimed one whose expiry
        passed is dropped instead (status ``expired``, nothing stored).
        Exactly once across callers and nodes (module guarantees).

        ``prepare(app, notification)`` is awaited for each one claimed that
        has not expired, after the claim and before its publish, in the
        fire's transaction: no other caller fires, cancels or edits it
        meanwhile, so what it does is done once for each notification fired
        (but again if the transaction is run again: it is a caller's to make
        that idempotent).  It may narrow the notification's ``users`` (what
        its frequency caps leave) and set its outbound ``jobs``; these commit
        with the publish and the row goes to "sent".  An error of
        ``prepare`` leaves the row pending.  Without ``prepare``, or when
        the jobs could not be written (it is published without them,
        ``PublishOutcome.unqueued``), the row stays "fired" for
        ``fired_unqueued``."""

    @abc.abstractmethod
    async def fired_unqueued(self, before: float, limit: int) -> list[tuple[str, str, float]]:
        """``(app, id, fired_at)`` of scheduled notifications that fired
        before ``before`` and whose outbound jobs were not queued yet (their
        status is "fired" until ``enqueue_jobs(fired=...)`` or
        ``mark_queued``): the jobs are planned after the fire's commit."""

    @abc.abstractmethod
    async def mark_queued(self, fired: list[tuple[str, str]]) -> None:
        """Fired notifications (app, id) that need no outbound jobs: "fired" -> "sent"."""

    @abc.abstractmethod
    async def next_due(self) -> float | None:
        """When the earliest pending scheduled notification is due."""

    @abc.abstractmethod
    async def get_scheduled(self, app_id: str, nid: str) -> ScheduledNotification | None: ...

    @abc.abstractmethod
    async def edit_scheduled(
        self, app_id: str, nid: str,
        change: Callable[[ScheduledNotification], ScheduledEdit],
    ) -> ScheduledNotification | None:
        """Apply ``change`` to a pending scheduled notification and store its
        answer (the new body, due time and expiry), atomically against
        ``fire_due`` and other edits (module guarantees).  ``change`` is a
        pure function and may be called more than once (a transaction run
        again); what it raises propagates, with nothing written.  Returns
        the notification as stored now, or None when it is not pending
        (fired, cancelled, dropped, or never scheduled in this app)."""

    @abc.abstractmethod
    async def cancel_scheduled(self, app_id: str, nid: str) -> bool:
        """Cancel ``nid`` if it is still pending; False when it is not (it
        fired, was cancelled or dropped, or never was scheduled)."""

    # -- group entries --------------------------------------------------
    @abc.abstractmethod
    async def group_members(
        self, app_id: str, user: str, nid: str, *, limit: int, before: str | None, now: float
    ) -> tuple[Entry, list[Entry]] | None:
        """The user's live group entry holding notification ``nid`` (the
        entry's current id or any member's), and its members newest first
        (``before``: a member id), each with the entry's state.  None when
        ``nid`` is in no such entry of the user."""

    # -- delivery tracking ----------------------------------------------
    async def record_delivery(
        self, app_id: str, nid: str, channel: str, field: str, n: int = 1
    ) -> None:
        """Add ``n`` to the ``field`` counter of ``channel`` for notification
        ``nid`` (e.g. ``("webhook", "sent", 1)``).  One write per call: batch
        hot paths with :meth:`record_deliveries`."""
        await self.record_deliveries({(app_id, nid, channel, field): n})

    @abc.abstractmethod
    async def record_deliveries(self, counts: Mapping[tuple[str, str, str, str], int]) -> None:
        """Add every ``{(app, nid, channel, field): n}`` in one transaction."""

    @abc.abstractmethod
    async def delivery_counts(self, app_id: str, nid: str) -> dict[str, dict[str, int]]:
        """``{channel: {field: n}}`` recorded for ``nid`` (empty when none)."""

    @abc.abstractmethod
    async def record_receipts(self, receipts: Iterable[Row]) -> None:
        """Keep every ``(app, nid, kind, user, device, label, at)`` a device
        acknowledged (kind: ``delivered`` or ``displayed``; ``at``: when the
        server received it), in one transaction.  Per notification, kind and
        user: one row with the earliest time (the unique-user counts; a later
        batch changes nothing), and a row for each of the first
        ``MAX_DEVICES`` devices (tidings.core.receipts), a device's first
        time kept.  Only for a notification the user can see (in their
        inbox, or a feed item of the app or of a topic they follow); the rest
        is dropped silently."""

    @abc.abstractmethod
    async def receipt_counts(self, app_id: str, nid: str) -> dict[str, int]:
        """``{kind: users}`` acknowledged for ``nid`` (kinds with none left out)."""

    @abc.abstractmethod
    async def timeline(self, app_id: str, nid: str, user: str) -> UserTimeline | None:
        """What happened to ``nid`` for ``user``: when it was accepted and
        committed, when the user's entry became seen, read, archived, the
        first receipt of each kind and each device's (oldest first), and
        every outbound attempt kept (the
        attempt log, pruned with dead letters).  None when the app has no
        such notification (or retracted it)."""

    @abc.abstractmethod
    async def outbound_users(self, app_id: str, nid: str) -> dict[str, dict[str, int]]:
        """``{channel: {"queued": users, "sent": users, "failed": users}}``
        for ``nid``'s outbound jobs, unique users: queued counts every user
        who had a job of the channel (waiting, or attempted), sent those with
        an attempt that was sent, failed those with a job given up on (dead).
        From the queue and the attempt log, so within retention; channels with
        no job left out."""

    # -- streams and inboxes --------------------------------------------
    @abc.abstractmethod
    async def stream_head(self, app_id: str, user: str, now: float) -> StreamHead:
        """The user's position, creating their stream (and epoch) if new,
        and their in-app mutes (``muted``) and locale, read with them."""

    @abc.abstractmethod
    async def key_used_since(self, app_id: str, key: str, since: float) -> bool:
        """Whether a publish of the app used idempotency ``key`` after
        ``since``: a retry of it will be answered ``duplicate``.  Read
        before a publish spends anything on the retry (frequency caps)."""

    async def stream_heads(self, app_id: str, users: list[str]) -> dict[str, tuple[str, int]]:
        """``{user: (epoch, head_seq)}`` for those of ``users`` that have a
        stream (the hub's check for personal entries a broker lost,
        gateway/hub.py).  One ``stream_head`` each unless the store has
        better; PostgreSQL answers a list in one query."""
        out: dict[str, tuple[str, int]] = {}
        for user in users:
            head = await self.stream_head(app_id, user, time.time())
            out[user] = (head.epoch, head.head_seq)
        return out

    @abc.abstractmethod
    async def replay(
        self, app_id: str, user: str, after_seq: int | None, after_feed: int | None,
        limit: int, now: float, muted: frozenset[str] | None = None,
    ) -> tuple[list[Entry], list[Entry]]:
        """Up to ``limit`` personal entries with seq > after_seq and up to
        ``limit`` feed items with offset > after_feed visible to the user,
        oldest first, live ones only.  A position of None leaves its kind
        out: the gateway reads a replay one kind and one page at a time
        (gateway/replay.py).  ``muted``: the user's in-app mutes, None to
        read them (module guarantees); feed items of those categories are
        left out."""

    @abc.abstractmethod
    async def replay_exceeds(
        self, app_id: str, user: str, after_seq: int, after_feed: int, limit: int, now: float,
        muted: frozenset[str] | None = None,
    ) -> bool:
        """Whether ``replay`` from these positions would find more than
        ``limit`` personal entries or more than ``limit`` feed items: the
        ``replay_max`` rule, decided before a paged replay sends anything,
        without reading the entries' bodies."""

    @abc.abstractmethod
    async def inbox(
        self, app_id: str, user: str, *, limit: int, before: str | None,
        state: str | None, now: float, categories: tuple[str, ...] = (),
        tags: tuple[str, ...] = (), muted: frozenset[str] | None = None,
    ) -> list[Entry]:
        """Newest first; ``before`` is a notification id; ``state`` filters
        (``unread`` = unseen or seen).  Archived items show only when asked for.
        ``categories`` keeps the items of any of them, ``tags`` those carrying
        any of them (both: both hold), judged by the notification an entry
        shows (a group entry's newest member), personal entries and feed items
        alike; a page is full unless fewer match.  Unfiltered, the page is read
        as before; a filter may read every entry of the user (and every feed
        item of the app they can see) past ``before`` to fill it.  ``muted``
        as in ``replay``."""

    @abc.abstractmethod
    async def counts(self, app_id: str, user: str, now: float,
                     muted: frozenset[str] | None = None) -> Counts:
        """``(unread, unseen)`` and the position they count up to, read in one
        snapshot of the store.  ``muted`` as in ``replay``: the counts leave
        out the feed items a stream of the user skips; None: the statement
        reads the user's mutes itself, in the same snapshot.  Counts sent to
        devices are read that way: mutes read before may be older than the
        revision the counts carry (docs/protocol.md, "Counts and the badge")."""

    async def counts_many(
        self, app_id: str, users: list[str], now: float,
        muted: Mapping[str, frozenset[str]] | None = None,
    ) -> dict[str, Counts]:
        """``counts`` for each of ``users`` (the counts a retraction sends,
        service.py), each with its position; ``muted``: the in-app mutes of
        those of them the caller holds, the others' are read by the counts'
        statement.  One ``counts`` each unless the store has better;
        PostgreSQL answers a list in one query (two or three when mutes are
        given)."""
        known = muted or {}
        return {user: await self.counts(app_id, user, now, known.get(user)) for user in users}

    async def muted(self, app_id: str, user: str) -> frozenset[str]:
        """The categories the user switched off in-app (their preferences)."""
        return muted_in(await self.get_preferences(app_id, user))

    async def muted_many(self, app_id: str, users: list[str]) -> dict[str, frozenset[str]]:
        """``muted`` of those of ``users`` who muted a category (the others
        are left out).  One ``muted`` each unless the store has better."""
        out = {user: await self.muted(app_id, user) for user in users}
        return {user: m for user, m in out.items() if m}

    async def locales_many(self, app_id: str, users: list[str]) -> dict[str, str]:
        """The ``locale`` of the preferences of those of ``users`` who set
        one (the others are left out).  One read each unless the store has
        better."""
        out = {user: (await self.get_preferences(app_id, user)).locale for user in users}
        return {user: locale for user, locale in out.items() if locale}

    @abc.abstractmethod
    async def set_state(
        self, app_id: str, user: str, ids: list[str] | None, state: str, now: float
    ) -> list[str]:
        """Move the user's entries (``ids``, or all when None) forward to
        ``state`` (unseen → seen → read; archived aside).  Never moves an entry
        backwards.  Returns the ids that changed."""

    # -- snooze (docs/inbox.md#snooze) ----------------------------------
    @abc.abstractmethod
    async def snooze(self, app_id: str, user: str, ids: list[str], until: float,
                     now: float) -> list[str]:
        """Snooze the user's personal entries ``ids`` (a group entry by any of
        its members' ids) until ``until``: state ``snoozed``, out of pages and
        counts, which raises the user's counts revision.  An entry snoozed
        already gets the new time; archived, expired, feed items and ids not
        the user's are left.  Returns the ids that changed."""

    @abc.abstractmethod
    async def resurface(self, app_id: str, user: str, ids: list[str] | None,
                        now: float) -> list[Resurfaced]:
        """Bring the user's snoozed entries ``ids`` back now (None: every
        snoozed entry of theirs due by ``now``): each unseen, at the next seq
        of the user's stream and first in pages, in one transaction.  Only a
        row still snoozed comes back: never twice."""

    @abc.abstractmethod
    async def wake_snoozed(self, now: float, limit: int) -> list[Resurfaced]:
        """``resurface`` up to ``limit`` snoozed entries of any user that are
        due by ``now``.  Several nodes may call it at once: each entry comes
        back once (SQLite: the one writer; PostgreSQL: ``FOR UPDATE SKIP
        LOCKED`` and the state test under the row's lock)."""

    @abc.abstractmethod
    async def next_snooze(self) -> float | None:
        """When the earliest snoozed entry is due (None: none is snoozed)."""

    # -- topics ---------------------------------------------------------
    @abc.abstractmethod
    async def subscribe(self, app_id: str, topic: str, users: list[str]) -> int:
        """Returns how many were newly added."""

    @abc.abstractmethod
    async def unsubscribe(self, app_id: str, topic: str, users: list[str]) -> int: ...

    @abc.abstractmethod
    async def topic_info(self, app_id: str, topic: str, limit: int) -> tuple[int, list[str]]:
        """``(subscriber count, up to limit subscribers)``."""

    @abc.abstractmethod
    async def user_topics(self, app_id: str, user: str) -> list[str]: ...

    async def topics_many(self, app_id: str, users: list[str]) -> dict[str, list[str]]:
        """``user_topics`` of those of ``users`` who follow a topic (the
        others are left out), each sorted: the hub's sweep after a broker
        outage reads a batch of users at once.  One ``user_topics`` each
        unless the store has better; both stores answer a list in one query."""
        out = {user: await self.user_topics(app_id, user) for user in users}
        return {user: topics for user, topics in out.items() if topics}

    # -- preferences ----------------------------------------------------
    @abc.abstractmethod
    async def get_preferences(self, app_id: str, user: str) -> Preferences: ...

    @abc.abstractmethod
    async def put_preferences(self, app_id: str, user: str, prefs: Preferences) -> None:
        """Replace the user's preferences (and their in-app mutes) as a whole."""

    @abc.abstractmethod
    async def update_preferences(
        self, app_id: str, user: str, change: Callable[[Preferences], Preferences | None],
        retime: Retime | None = None,
    ) -> Preferences | None:
        """Apply ``change`` to the user's stored preferences (``Preferences()``
        when there are none) and store what it returns, atomically: nothing
        else writes them between the read and the write (module guarantees).
        ``change`` is a pure function and may be called more than once (a
        transaction run again); when it returns None nothing is written.
        When it raises (a patch that breaks a rule, an ``If-Match`` that is
        not the ETag of what it was given: tidings/core/etag.py), nothing is
        written either and the error reaches the caller: so a conditional
        write is checked against the document as it is under the lock.
        Returns what was stored, or None.

        ``retime`` (tidings/core/retime.py) is called with the preferences
        before and after, in the same transaction; when it returns a
        retimer, the store hands it the user's waiting jobs (queued, not
        attempted, due after ``retimer.now``, not leased; up to
        ``retime.MAX_JOBS``, soonest first) and held digest items (up to
        ``retime.MAX_ITEMS``, oldest first) and writes the times and windows
        it returns, still in that transaction."""

    # -- the app's categories -------------------------------------------
    @abc.abstractmethod
    async def get_categories(self, app_id: str) -> bytes | None:
        """The categories the app declared (JSON, tidings.core.models.Categories),
        None before it declared any."""

    @abc.abstractmethod
    async def put_categories(self, app_id: str, doc: bytes, *,
                             audit: AuditEntry | None = None) -> None:
        """Replace the app's categories document; ``audit``: the change's
        record, written in its transaction."""

    # -- maintenance ----------------------------------------------------
    @abc.abstractmethod
    async def prune(self, app_id: str | None, older_than: float) -> Pruned:
        """Drop entries and notifications created before ``older_than``
        (retention), raising the stream floors; says how many.  A group
        entry that keeps some members loses the older ones from its summary
        and its members list (module guarantees), and is in ``regrouped``.
        Says whose counts dropped (``unread``, ``feeds``, ``apps``): found
        before the deletes, so a name too many (an entry read meanwhile)
        costs one read of counts, and none is missing."""
