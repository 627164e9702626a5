"""API keys: made, listed, rotated and revoked by their app, verified keys
cached, and their last use noted.

A key is verified against the store once, then kept in memory keyed by the
whole key string (``cache``, read by ``Service.key_now`` on the hot path).
A revoked key must stop working on every node, so the cache is invalidated
three ways (docs/security.md#revoking-a-key):

* **at once on the node that revoked it** (``revoke`` forgets it before it
  answers);
* **on every other node as soon as the broker's ``KeyRevoked`` arrives**
  (``KEYS_CHANNEL``, which every node listens to from ``open``; a broker
  reconnect, after which messages may have been lost, forgets every key);
* **within ``KEY_CACHE_TTL`` whatever happens**: entries expire, the net
  for a message the broker lost (it is at most once) and for a revocation
  that never went through a broker (``tidings key revoke`` on a SQLite file
  a server uses, with the in-process broker).

A revocation that arrives while a key is being read from the store may be of
that key: the answer is then used for that request but not cached
(``_revocations``).  The per-key rate-limit lease of a revoked key is dropped
with it (tidings/service/ratelimits.py).

**Expiry** (docs/security.md#key-expiry-and-rotation).  A key may have an
``expires_at``, given when it is made or set by ``rotate`` (the key it
replaces expires after a grace period).  From then on it is refused with
401 ``key_expired``, not ``bad_api_key``: it is the right key, too old.  A
cached key never outlives its expiry: its entry is put with a TTL that ends
there (``_trust``), so the hot path (``Service.key_now``) needs no clock and
costs what it did.  A rotation on another node shortens an expiry: the
rotating node sends the key's prefix on ``KEYS_CHANNEL`` as for a revocation,
and every node forgets the key and reads it again.  An expired key is the
right key, not a guess: it is not counted as a failed check, and a node
remembers it for ``KEY_CACHE_TTL`` (``_expired``), so that sending it again
and again costs the store no more than a valid key does.  An expired key
stays listed but takes no place under ``max_api_keys`` (the store counts
the keys live at the caller's clock), and the retention sweep deletes it
``retention_days`` after its expiry (``prune``).

**Last use** (``used``, ``write_used``).  A node notes, in memory, when it
read a valid key from the store (``verify``): with the cache on that is at
its first use and then at most every ``KEY_CACHE_TTL`` while it is used, so
a note is never more than 5 s older than the key's last use on this node,
and a request answered from the cache notes nothing.  ``run`` writes the
notes every ``USED_INTERVAL`` in one batched write (``note_api_keys_used``),
off every request: at most one write per key per node a minute, and a
listing's ``last_used_at`` lags the truth by at most about 65 s.

Failed checks are limited (``verify_limited``, docs/security.md#failed-key-checks):
a key that is not in the cache costs a read of the store, and anyone who can
reach a node can send well-formed wrong keys.  Failures (unknown keys and
malformed ones) count per client address and per node (``failures``, a
ClusterLimits of its own: the login form's has a human's numbers), and per
address in the cluster when the broker is shared (tidings/service/failures.py,
which the success path never reaches); over either
a key is refused with 429 before the store is read, a right one included,
unless this node found that very key valid within ``GOOD_FOR``
(``_proven``): a backend whose key works is not held back by a neighbour
behind the same address retrying with a wrong one.  Only a key that is valid
can be in ``_proven``, so no guess reaches the store that way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from tidings.broker.base import KEYS_CHANNEL, Broker, KeyRevoked, Message
from tidings.config import Settings
from tidings.core import auth
from tidings.core.audit import OPERATOR, Actor, AuditEntry, new_entry
from tidings.core.logins import GOOD_FOR, Attempt
from tidings.core.lru import LRU
from tidings.errors import Conflict, Invalid, NotFound, RateLimited, Unauthorized
from tidings.service.failures import ClusterLimits
from tidings.service.ratelimits import RateLimits
from tidings.store.base import (
    LAST_ADMIN_KEY,
    LIMIT_REACHED,
    NO_SUCH_KEY,
    KeyInfo,
    KeyRecord,
    Rotated,
    Store,
)

__all__ = ["KEY_CACHE_TTL", "ROTATION_GRACE", "ROTATION_GRACE_MAX", "USED_INTERVAL", "Keys",
           "describe", "rotated"]

log = logging.getLogger("tidings")

# Seconds a node trusts a key it verified: the longest a revoked key still
# works on a node that the broker's message did not reach.
KEY_CACHE_TTL = 5.0
# Seconds between a node's writes of the last uses it noted
USED_INTERVAL = 60.0
# A rotated key's grace period, by default and at most: the old key works
# that long after the new one is made, for the new one to be deployed
ROTATION_GRACE = 24 * 3600
ROTATION_GRACE_MAX = 30 * 24 * 3600
# Keys this node found valid (for GOOD_FOR), checked again without the limit
# of failed checks: about 2 MB
PROVEN_KEYS = 10_000
NAME_MAX = 64
_NAME = re.compile(r"[^\x00-\x1f\x7f]+\Z")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def describe(info: KeyInfo) -> dict:
    """What an app may see of one of its keys (the API's and the CLI's JSON):
    never the key nor its hash."""
    return {"prefix": info.prefix, "scopes": sorted(info.scopes), "name": info.name,
            "created_at": _iso(info.created_at), "expires_at": _iso(info.expires_at),
            "last_used_at": _iso(info.last_used_at)}


def rotated(key: str, rotation: Rotated) -> dict:
    """A rotation's answer: the new key (shown this once) and what it
    replaced, with the expiry the rotation gave it."""
    return {"api_key": key, **describe(rotation.new), "replaces": describe(rotation.old)}


def _expired(expires_at: float | None, now: float) -> bool:
    return expires_at is not None and expires_at <= now


def _refused(record: KeyRecord) -> Unauthorized:
    return Unauthorized(f"API key expired at {_iso(record.expires_at)}: use the key that "
                        "replaced it, or ask an admin key for a new one", code="key_expired")


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """``scopes`` as a set, or Invalid (field ``scopes``)."""
    found = frozenset(scopes)
    if not found:
        raise Invalid("a key needs at least one scope: " + ", ".join(sorted(auth.SCOPES)),
                      field="scopes")
    unknown = sorted(found - auth.SCOPES)
    if unknown:
        raise Invalid(f"unknown scope {unknown[0]!r}: the scopes are "
                      + ", ".join(sorted(auth.SCOPES)), field="scopes")
    return found


def check_name(name: str | None) -> str | None:
    if name is not None and not (len(name) <= NAME_MAX and _NAME.match(name)):
        raise Invalid(f"a key's name is 1-{NAME_MAX} characters, no control characters",
                      field="name")
    return name


def check_expiry(at: datetime | None, now: float, longest: int) -> float | None:
    """``at`` in Unix seconds, or Invalid (field ``expires_at``): it needs a
    time zone, and is in the future, at most ``longest`` seconds ahead."""
    if at is None:
        return None
    if at.tzinfo is None:
        raise Invalid("expires_at needs a time zone (2030-01-01T00:00:00Z)", field="expires_at")
    try:
        ts = at.timestamp()
    except (OverflowError, ValueError, OSError):
        raise Invalid("expires_at is out of range", field="expires_at") from None
    if ts <= now:
        raise Invalid("expires_at is in the past: a key must expire in the future",
                      field="expires_at")
    if ts > now + longest:
        raise Invalid(f"expires_at is at most {longest // 86400} days ahead "
                      "(the limit max_key_lifetime)", field="expires_at")
    return ts


def check_grace(grace: int | None) -> int:
    """A rotation's grace period in seconds, or Invalid (field ``grace``)."""
    if grace is None:
        return ROTATION_GRACE
    if isinstance(grace, bool) or not isinstance(grace, int) \
            or not 0 <= grace <= ROTATION_GRACE_MAX:
        raise Invalid(f"grace is a whole number of seconds from 0 to {ROTATION_GRACE_MAX} "
                      f"({ROTATION_GRACE_MAX // 86400} days)", field="grace")
    return grace


def _full(limit: int) -> Conflict:
    return Conflict(f"an app has at most {limit} API keys: revoke one first",
                    code="limit_reached")


def _too_many(attempt: Attempt) -> RateLimited:
    seconds = max(1, math.ceil(attempt.wait))
    where = "from your address" if attempt.limit == "address" else "on this server"
    return RateLimited(f"too many failed API key checks {where}: try again in {seconds} "
                       f"second{'s' if seconds > 1 else ''}", retry_after=seconds)


class Keys:
    def __init__(self, settings: Settings, store: Store, broker: Broker, limits: RateLimits,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.clock = clock  # wall time: expiries and last uses are Unix seconds
        self.store = store
        self.broker = broker
        self.limits = limits
        self.caching = settings.cache
        self.pepper = b""
        # verified keys by the whole key (Service.key_now reads it directly)
        self.cache: LRU[str, KeyRecord] = LRU(10_000, ttl=KEY_CACHE_TTL)
        # prefix -> app of keys found live (dashboard sessions name a key by prefix)
        self._live: LRU[str, str] = LRU(10_000, ttl=KEY_CACHE_TTL)
        self._revocations = 0  # revocations heard (and broker reconnects)
        # failed checks per client address, in the cluster too, and per node
        # (verify_limited)
        self.failures = ClusterLimits("key", settings.limits.key_failures_per_address,
                                      settings.limits.key_failures_per_node, broker)
        # whole key -> prefix of keys found valid here: spared ``failures``
        self._proven: LRU[str, str] = LRU(PROVEN_KEYS, ttl=GOOD_FOR)
        # whole key -> record of keys found expired: refused without a read
        self._expired: LRU[str, KeyRecord] = LRU(10_000, ttl=KEY_CACHE_TTL)
        # prefix -> (app, when) of keys read valid since the last write_used
        self.used: dict[str, tuple[str, float]] = {}

    async def open(self) -> None:
        """After the store and broker are open: the pepper, and listening
        for revocations from every node."""
        self.pepper = await self.store.pepper()
        # (Service.open subscribes KEYS_CHANNEL, which it shares with apps.py,
        # and hands this node on_message)
        self.broker.on_reconnect(self._forget_all)
        await self.broker.settle()

    # -- verification -----------------------------------------------------------------
    async def verify(self, key: str) -> KeyRecord:
        """The store's record of ``key`` (cached when the cache is on), or 401.
        Unlimited: for a caller that limits failures itself (the dashboard's
        login form); the API's routes call ``verify_limited``."""
        prefix = auth.split_api_key(key)
        if prefix is None:
            raise Unauthorized("API key is malformed", code="bad_api_key")
        known = self._expired.get(key) if self.caching else None
        if known is not None:
            raise _refused(known)
        heard = self._revocations
        record = await self.store.find_api_key(prefix, auth.hash_api_key(key, self.pepper))
        if record is None:
            self._proven.pop(key)  # revoked: limited like any other wrong key from now on
            raise Unauthorized("API key is not valid", code="bad_api_key")
        now = self.clock()
        cache = self.caching and heard == self._revocations
        if _expired(record.expires_at, now):
            self._proven.pop(key)  # only valid keys are spared the limit
            if cache:
                self._expired.put(key, record)
            raise _refused(record)
        self._proven.put(key, prefix)
        self.used[prefix] = (record.app_id, now)
        if cache:
            self.cache.put(key, record, ttl=self._trust(record, now))
        return record

    @staticmethod
    def _trust(record: KeyRecord | KeyInfo, now: float) -> float | None:
        """How long a node may keep ``record``: never past its expiry (and
        never longer than its cache's TTL, KEY_CACHE_TTL, which LRU.put
        applies); None: the TTL alone."""
        return None if record.expires_at is None else record.expires_at - now

    async def verify_limited(self, key: str, client: str | None) -> KeyRecord:
        """``verify`` within the limit of failed checks from ``client`` (the
        caller's address) and on this node: over either, 429 without reading
        the store, unless this node found ``key`` valid within ``GOOD_FOR``.
        The callers look in the cache first: a cached key never gets here.
        An expired key is the right key: it is not counted as a failure."""
        if key in self._proven or (self.caching and key in self._expired):
            return await self.verify(key)
        attempt = self.failures.admit(client)  # tokens taken before the read (in flight)
        if attempt.wait:
            raise _too_many(attempt)
        try:
            record = await self.verify(key)
        except Unauthorized as exc:
            if exc.code == "key_expired":  # not a guess: its tokens go back
                self.failures.refund(attempt)
            else:  # the key's fault: its tokens stay taken, and the cluster counts it
                await self.failures.failed(attempt)
            raise
        except BaseException:
            self.failures.refund(attempt)  # the store away, or cancelled
            raise
        self.failures.succeeded(attempt)
        return record

    async def alive(self, app_id: str, prefix: str) -> bool:
        """Whether the app still has the key ``prefix``, unexpired (a
        dashboard session opened with it ends when it is revoked or expires)."""
        if self.caching and self._live.get(prefix) == app_id:
            return True
        heard = self._revocations
        now = self.clock()
        found = next((k for k in await self.store.list_api_keys(app_id)
                      if k.prefix == prefix and not _expired(k.expires_at, now)), None)
        if found is not None and self.caching and heard == self._revocations:
            self._live.put(prefix, app_id, ttl=self._trust(found, now))
        return found is not None

    # -- last use ------------------------------------------------------------------------
    async def write_used(self) -> int:
        """Write the last uses noted since the previous call, in one write;
        how many keys.  When the write fails they are kept for the next."""
        if not self.used:
            return 0
        notes, self.used = self.used, {}
        try:
            await self.store.note_api_keys_used(
                (app, prefix, at) for prefix, (app, at) in notes.items())
        except BaseException:
            for prefix, (app, at) in notes.items():  # noted meanwhile: later, kept
                self.used.setdefault(prefix, (app, at))
            raise
        return len(notes)

    async def run(self) -> None:
        """Forever: ``write_used`` every USED_INTERVAL (the app's lifespan
        runs it, and writes what is left at shutdown)."""
        while True:
            await asyncio.sleep(USED_INTERVAL)
            try:
                await self.write_used()
            except Exception as exc:  # the store is away: the next time
                log.warning("writing API keys' last use failed: %s", exc)

    # -- management (/v1/keys, /v1/keys/{prefix}/rotate; tidings key) ------------------
    async def create(self, app_id: str, scopes: Iterable[str], name: str | None = None,
                     expires_at: datetime | None = None, *, actor: Actor | None = None,
                     made: tuple[str, str] | None = None) -> tuple[str, KeyInfo]:
        """A new key of ``app_id``, refused from ``expires_at`` on if given:
        ``(key, what is stored of it)``.  The key itself is shown once, by
        the caller, and never stored.  ``actor``, here and in ``rotate`` and
        ``revoke``: who asks, recorded in the app's audit log in the change's
        transaction (None: not recorded, a key the service makes itself).
        ``made``: the ``(key, prefix)`` the caller minted
        (``auth.new_api_key``), to name it before it is stored."""
        scopes = check_scopes(scopes)
        name = check_name(name)
        now = self.clock()
        expires = check_expiry(expires_at, now, self.settings.limits.max_key_lifetime)
        key, prefix = made or auth.new_api_key()
        limit = self.settings.limits.max_api_keys
        audit = None if actor is None else new_entry(
            app_id, actor, "key.create", prefix, now, scopes=sorted(scopes), name=name,
            expires_at=expires)
        if not await self.store.add_api_key(app_id, prefix, auth.hash_api_key(key, self.pepper),
                                            scopes, name, limit=limit, created_at=now,
                                            expires_at=expires, audit=audit):
            raise _full(limit)
        return key, KeyInfo(prefix, scopes, name, now, expires)

    async def list(self, app_id: str) -> list[KeyInfo]:
        return await self.store.list_api_keys(app_id)

    async def prune(self, older_than: float) -> int:
        """Retention: delete the keys that expired before ``older_than``.
        An expired key takes no place under ``max_api_keys``, so without
        this an app could pile up keys made to expire; listed for
        ``retention_days`` after its expiry, it then goes (docs/security.md),
        recorded in its app's audit log (``key.drop``, by the operator)."""
        now = self.clock()

        def record(app_id: str, prefix: str, expires_at: float) -> AuditEntry:
            return new_entry(app_id, OPERATOR, "key.drop", prefix, now, expires_at=expires_at)

        return await self.store.drop_expired_api_keys(older_than, audit=record)

    async def rotate(self, app_id: str, prefix: str, grace: int | None = None, *,
                     actor: Actor | None = None) -> tuple[str, Rotated]:
        """A new key with the scopes and name of the app's key ``prefix``,
        which expires ``grace`` seconds from now (ROTATION_GRACE by default;
        sooner if it already did): ``(new key, what changed)``.  404 as
        ``revoke``; 409 ``limit_reached`` when the app has ``max_api_keys``
        that have not expired.
        The new key never expires, so the app keeps an admin key that does
        not (tidings/store/base.py)."""
        grace = check_grace(grace)
        if not auth.valid_prefix(prefix):
            raise NotFound("no such API key", field="prefix")
        key, new_prefix = auth.new_api_key()
        limit, now = self.settings.limits.max_api_keys, self.clock()
        audit = None if actor is None else new_entry(
            app_id, actor, "key.rotate", prefix, now, new_prefix=new_prefix, grace=grace)
        outcome = await self.store.rotate_api_key(
            app_id, prefix, new_prefix, auth.hash_api_key(key, self.pepper),
            expires_at=now + grace, limit=limit, created_at=now, audit=audit)
        if outcome == NO_SUCH_KEY:
            raise NotFound("no such API key", field="prefix")
        if outcome == LIMIT_REACHED or not isinstance(outcome, Rotated):
            raise _full(limit)
        # its expiry moved: every node reads it again (a grace of 0 ends it at once)
        self.forget(prefix)
        self.broker.publish(KEYS_CHANNEL, KeyRevoked(app_id, prefix))
        return key, outcome

    async def revoke(self, app_id: str, prefix: str, *, actor: Actor | None = None) -> None:
        """Revoke the app's key ``prefix``: 404 when the app has none such
        (another app's is none of its business), 409 ``last_admin_key``
        when it is the app's last key with the admin scope."""
        if not auth.valid_prefix(prefix):
            raise NotFound("no such API key", field="prefix")  # cannot be one
        audit = None if actor is None else new_entry(app_id, actor, "key.revoke", prefix,
                                                     self.clock())
        outcome = await self.store.revoke_api_key(app_id, prefix, audit=audit)
        if outcome == NO_SUCH_KEY:
            raise NotFound("no such API key", field="prefix")
        if outcome == LAST_ADMIN_KEY:
            raise Conflict("this is the app's last key with the admin scope and no expiry: "
                           "create another admin key first (or rotate this one), so that "
                           "the app can still manage its keys", code="last_admin_key",
                           field="prefix")
        self.forget(prefix)  # here, before the answer
        self.broker.publish(KEYS_CHANNEL, KeyRevoked(app_id, prefix))  # every other node

    # -- invalidation ---------------------------------------------------------------------
    def forget(self, prefix: str) -> None:
        """Drop the key ``prefix`` from this node's memory: its verified
        entries, its session check and its rate-limit lease (revoked, or its
        expiry moved by a rotation)."""
        self._revocations += 1
        self.cache.pop_where(lambda record: record.prefix == prefix)
        self._expired.pop_where(lambda record: record.prefix == prefix)
        self._proven.pop_where(lambda proven: proven == prefix)
        self._live.pop(prefix)
        self.limits.forget_key(prefix)

    def on_message(self, message: Message) -> None:
        if isinstance(message, KeyRevoked):
            self.forget(message.prefix)

    def _forget_all(self) -> None:
        """The broker reconnected: revocations sent meanwhile may be lost."""
        self._revocations += 1
        self.cache.clear()
        self._expired.clear()
        self._live.clear()
