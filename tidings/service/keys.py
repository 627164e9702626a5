"""API keys: made, listed and revoked by their app, and verified keys cached.

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

Failed checks are limited (``verify_limited``, docs/security.md#failed-key-checks):
a key that is not in the cache costs a read of the store, and anyone who can
reach a node can send well-formed wrong keys.  Failures (unknown keys and
malformed ones) count per client address and per node (``failures``, a
LoginLimits of its own: the login form's has a human's numbers); over either
a key is refused with 429 before the store is read, a right one included,
unless this node found that very key valid within ``GOOD_FOR``
(``_proven``): a backend whose key works is not held back by a neighbour
behind the same address retrying with a wrong one.  Only a key that is valid
can be in ``_proven``, so no guess reaches the store that way.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from tidings.broker.base import KEYS_CHANNEL, Broker, KeyRevoked, Message
from tidings.config import Settings
from tidings.core import auth
from tidings.core.logins import GOOD_FOR, Attempt, LoginLimits
from tidings.core.lru import LRU
from tidings.errors import Conflict, Invalid, NotFound, RateLimited, Unauthorized
from tidings.service.ratelimits import RateLimits
from tidings.store.base import LAST_ADMIN_KEY, NO_SUCH_KEY, KeyInfo, KeyRecord, Store

__all__ = ["KEY_CACHE_TTL", "Keys", "describe"]

# Seconds a node trusts a key it verified: the longest a revoked key still
# works on a node that the broker's message did not reach.
KEY_CACHE_TTL = 5.0
# Keys this node found valid (for GOOD_FOR), checked again without the limit
# of failed checks: about 2 MB
PROVEN_KEYS = 10_000
NAME_MAX = 64
_NAME = re.compile(r"[^\x00-\x1f\x7f]+\Z")


def describe(info: KeyInfo) -> dict:
    """What an app may see of one of its keys (the API's and the CLI's JSON):
    never the key nor its hash."""
    return {"prefix": info.prefix, "scopes": sorted(info.scopes), "name": info.name,
            "created_at": datetime.fromtimestamp(info.created_at, UTC).isoformat(
                timespec="milliseconds")}


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


def _too_many(attempt: Attempt) -> RateLimited:
    seconds = max(1, math.ceil(attempt.wait))
    where = "from your address" if attempt.limit == "address" else "on this server"
    return RateLimited(f"too many failed API key checks {where}: try again in {seconds} "
                       f"second{'s' if seconds > 1 else ''}", retry_after=seconds)


class Keys:
    def __init__(self, settings: Settings, store: Store, broker: Broker, limits: RateLimits):
        self.settings = settings
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
        # failed checks per client address and per node (verify_limited)
        self.failures = LoginLimits(settings.limits.key_failures_per_address,
                                    settings.limits.key_failures_per_node)
        # whole key -> prefix of keys found valid here: spared ``failures``
        self._proven: LRU[str, str] = LRU(PROVEN_KEYS, ttl=GOOD_FOR)

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
        heard = self._revocations
        record = await self.store.find_api_key(prefix, auth.hash_api_key(key, self.pepper))
        if record is None:
            self._proven.pop(key)  # revoked: limited like any other wrong key from now on
            raise Unauthorized("API key is not valid", code="bad_api_key")
        self._proven.put(key, prefix)
        if self.caching and heard == self._revocations:
            self.cache.put(key, record)
        return record

    async def verify_limited(self, key: str, client: str | None) -> KeyRecord:
        """``verify`` within the limit of failed checks from ``client`` (the
        caller's address) and on this node: over either, 429 without reading
        the store, unless this node found ``key`` valid within ``GOOD_FOR``.
        The callers look in the cache first: a cached key never gets here."""
        if key in self._proven:
            return await self.verify(key)
        attempt = self.failures.admit(client)  # tokens taken before the read (in flight)
        if attempt.wait:
            raise _too_many(attempt)
        try:
            record = await self.verify(key)
        except Unauthorized:
            raise  # the key's fault: its tokens stay taken
        except BaseException:
            self.failures.refund(attempt)  # the store away, or cancelled
            raise
        self.failures.succeeded(attempt)
        return record

    async def alive(self, app_id: str, prefix: str) -> bool:
        """Whether the app still has the key ``prefix`` (a dashboard session
        opened with it ends when it is revoked)."""
        if self.caching and self._live.get(prefix) == app_id:
            return True
        heard = self._revocations
        found = any(k.prefix == prefix for k in await self.store.list_api_keys(app_id))
        if found and self.caching and heard == self._revocations:
            self._live.put(prefix, app_id)
        return found

    # -- management (POST, GET, DELETE /v1/keys; tidings key) ---------------------------
    async def create(self, app_id: str, scopes: Iterable[str],
                     name: str | None = None) -> tuple[str, KeyInfo]:
        """A new key of ``app_id``: ``(key, what is stored of it)``.  The key
        itself is shown once, by the caller, and never stored."""
        scopes = check_scopes(scopes)
        name = check_name(name)
        key, prefix = auth.new_api_key()
        limit, now = self.settings.limits.max_api_keys, time.time()
        if not await self.store.add_api_key(app_id, prefix, auth.hash_api_key(key, self.pepper),
                                            scopes, name, limit=limit, created_at=now):
            raise Conflict(f"an app has at most {limit} API keys: revoke one first",
                           code="limit_reached")
        return key, KeyInfo(prefix, scopes, name, now)

    async def list(self, app_id: str) -> list[KeyInfo]:
        return await self.store.list_api_keys(app_id)

    async def revoke(self, app_id: str, prefix: str) -> None:
        """Revoke the app's key ``prefix``: 404 when the app has none such
        (another app's is none of its business), 409 ``last_admin_key``
        when it is the app's last key with the admin scope."""
        if not auth.valid_prefix(prefix):
            raise NotFound("no such API key", field="prefix")  # cannot be one
        outcome = await self.store.revoke_api_key(app_id, prefix)
        if outcome == NO_SUCH_KEY:
            raise NotFound("no such API key", field="prefix")
        if outcome == LAST_ADMIN_KEY:
            raise Conflict("this is the app's last key with the admin scope: create another "
                           "admin key first, so that the app can still manage its keys",
                           code="last_admin_key", field="prefix")
        self.forget(prefix)  # here, before the answer
        self.broker.publish(KEYS_CHANNEL, KeyRevoked(app_id, prefix))  # every other node

    # -- invalidation ---------------------------------------------------------------------
    def forget(self, prefix: str) -> None:
        """Drop the key ``prefix`` from this node's memory: its verified
        entries, its session check and its rate-limit lease."""
        self._revocations += 1
        self.cache.pop_where(lambda record: record.prefix == prefix)
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
        self._live.clear()
