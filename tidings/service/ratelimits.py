"""Rate limits: requests per API key and per user, and frequency caps per
user and category.

The key limit and the caps are token buckets kept by the broker
(``Broker.take``), so they hold across every node of a cluster: the
in-process broker keeps them in memory, Redis in one Lua script per take
(tidings/broker/lua/take.lua).  The user limit is a bucket per user on each
node, in memory (below).

* **Per API key** -- ``Settings.key_rate`` requests a second with bursts of
  ``key_burst`` (1,000/s and 2,000 by default; ``key_rate=0`` turns the
  limit off).  A publish costs one token per notification (a batch of 500
  costs 500), anything else one.  Over the limit: ``429 rate_limited`` with
  ``Retry-After``, and nothing was done.
* **Per user** -- every request with a user token (``/v1/me/*``, the direct
  inbox page and counts included), every stream connect and every message a
  device sends on an open WebSocket (receipts, fresh tokens, anything) takes
  one token from the user's bucket: ``Settings.user_rate`` a second with
  bursts of ``user_burst`` (50/s and 200 by default; ``user_rate=0`` turns
  it off).  Over it: ``429 rate_limited`` with ``Retry-After`` and nothing
  done; a WebSocket, at its connect or at a message, closes with 4005, a
  "reconnect" code, so that a page refused once backs off instead of
  stopping for good (tidings/gateway/transports.py).  The buckets are this
  node's own, like ``max_connections_per_user``: with N nodes behind a load
  balancer a user can make up to N times the rate.  A shared bucket would
  cost a broker round trip on most page loads -- a user makes a handful of
  requests at a time, too few for a lease to pay, unlike an API key -- and
  what the limit protects is each node, whose share from one user stays
  bounded whatever N.  At most ``USER_BUCKETS`` buckets are kept, only the
  ones still refilling (tidings/core/ratelimit.py): memory is bounded with
  any number of users.
* **Per unsubscribe link** -- ``/v1/unsubscribe/{token}`` needs no
  credential (the link is one), so each link that verifies takes one token
  from its own bucket on this node: ``LINK_BURST`` (10) at once, then one
  per ``1 / LINK_RATE`` seconds (10 s).  A person's click is a GET and a
  POST, a mailbox provider's one-click a POST or two; what the limit stops is
  a script writing one user's preferences over and over.  A link that does
  not verify is refused before any bucket or store (one HMAC).
* **Frequency caps** -- an app caps a category per user with
  ``PUT /v1/caps`` ``{"categories": {"social": {"per": 3600, "max": 10}}}``:
  a bucket of ``max`` tokens refilled at ``max`` per ``per`` seconds for
  each (user, category).  A recipient over the cap does not get the
  notification as a new interruption: with a ``group_key`` it still lands in
  the inbox -- where aggregation folds it into the group's entry -- but
  sends no push, e-mail or webhook (``aggregated``); without one it is
  dropped for that user (``dropped``).  The publish answer counts them in
  ``rate_limited`` and says which in ``rate_limit``.  Caps apply to
  notifications fanned out on write (users, and topics up to
  ``fanout_threshold``); broadcasts and larger topics are not capped.  A
  scheduled notification takes its tokens when it fires, not when it is
  booked (``Service.fire_due``).

A broker that cannot be reached lets requests through (logged once per
outage): the limits protect the service, and refusing every publish because
Redis blinked would be the bigger outage.  A broker that does not answer
(a frozen Redis, a silent network path) would hold each request for its
whole command timeout instead: a take waits ``TAKE_TIMEOUT`` at most, and
once the broker is found down no request asks it again; one take in the
background every ``BROKER_RETRY`` seconds does, and the limits hold again
from its first answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import msgspec

from tidings.broker.base import Broker, BrokerUnavailable
from tidings.config import Settings
from tidings.core import digest, ratelimit
from tidings.core.audit import AuditEntry
from tidings.core.lru import LRU
from tidings.core.outbound import Caps
from tidings.errors import Invalid, RateLimited
from tidings.store.base import KeyRecord, NewNotification, Store

__all__ = ["NOT_CAPPED", "Capped", "RateLimits"]

log = logging.getLogger("tidings.service.ratelimits")

CAPS_CACHE_TTL = 10.0  # seconds a node reuses an app's caps; other nodes follow within it
_decode_caps = msgspec.json.Decoder(Caps).decode


@dataclass
class Capped:
    """Recipients of one publish who were over their cap, and what happened."""

    over: AbstractSet[str] = field(default_factory=set)
    action: str | None = None  # "aggregated" | "dropped"

    def annotate(self, result: dict) -> None:
        if self.over:
            result["rate_limited"] = len(self.over)
            result["rate_limit"] = self.action


# A take the broker has not answered in this long lets its request through,
# and marks the broker down (a Redis answers in well under a millisecond).
TAKE_TIMEOUT = 1.0
# While the broker is down, one take in the background at most this often.
BROKER_RETRY = 1.0

# What a publish no cap applies to gets (shared: nobody changes it).
NOT_CAPPED = Capped(frozenset())


# An API key's lease: what the key may spend in 50 ms at its rate, at most a
# twentieth of its burst (the defaults: 50 tokens of 1000/s, bursts of 2000).
KEY_LEASE_S = 0.05
KEY_LEASE_BURST_PART = 20

# The most user buckets a node holds (about 330 bytes each with the user id:
# 6.6 MB).  Only a bucket that is not full needs keeping, and one is full
# again user_burst / user_rate seconds at most after its user's last request
# (4 s at the defaults, 120 ms after a page load's 6 requests).  A pass over
# a full table keeps at most half: 10,000 users mid-refill after a page load
# each would be some 500,000 requests a second on one node.
USER_BUCKETS = 20_000
# Unsubscribe links (tidings/api/unsubscribe.py): per link, on each node.
LINK_RATE = 0.1
LINK_BURST = 10
LINK_BUCKETS = 20_000


class RateLimits:
    def __init__(self, settings: Settings, store: Store, broker: Broker):
        self.settings = settings
        self.store = store
        self.broker = broker
        self._caps: LRU[str, Caps] = LRU(10_000, ttl=CAPS_CACHE_TTL)
        self._broker_down = False
        self._retry_at = 0.0  # time.monotonic() of the next background take while down
        self._probe: asyncio.Task | None = None
        # With the hot-path cache on, API-key tokens are taken from the shared
        # bucket a lease at a time and spent here from memory (charge_key).
        self._leases: dict[str, int] = {}
        # Per user, on this node (charge_user); the limit is checked once here
        # (a NaN rate too, which no comparison would turn off).
        if not settings.user_rate <= 0:
            try:
                ratelimit.check(settings.user_rate, settings.user_burst, 1)
            except ValueError as exc:
                raise ValueError(f"user_rate and user_burst: {exc}") from None
        self.users = ratelimit.TokenBuckets(max_keys=USER_BUCKETS)
        self.links = ratelimit.TokenBuckets(max_keys=LINK_BUCKETS)

    async def _take(self, key: str, rate: float, burst: int, cost: int = 1) -> float:
        if self._broker_down:
            # Through at once; the broker is asked in the background (a frozen
            # one would hold every request for TAKE_TIMEOUT).
            now = time.monotonic()
            if self._probe is None and now >= self._retry_at:
                self._retry_at = now + BROKER_RETRY
                self._probe = asyncio.get_running_loop().create_task(
                    self._ask(key, rate, burst, cost))
                self._probe.add_done_callback(self._probed)
            return 0.0
        return await self._ask(key, rate, burst, cost)

    async def _ask(self, key: str, rate: float, burst: int, cost: int) -> float:
        try:
            async with asyncio.timeout(TAKE_TIMEOUT):
                wait = await self.broker.take(key, rate, burst, cost)
        except (BrokerUnavailable, TimeoutError) as exc:
            if not self._broker_down:
                self._broker_down = True
                self._retry_at = time.monotonic() + BROKER_RETRY
                log.warning("rate limits are not enforced while the broker is down: %s",
                            str(exc) or f"no answer within {TAKE_TIMEOUT} s")
            return 0.0
        if self._broker_down:
            self._broker_down = False
            log.warning("the broker answers again: rate limits are enforced")
        return wait

    def _probed(self, task: asyncio.Task) -> None:
        self._probe = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("rate limits: the broker's take failed: %r", task.exception())

    # -- per API key ---------------------------------------------------------------------
    def charge_now(self, record: KeyRecord, cost: int = 1) -> bool:
        """``charge_key`` when it needs nothing but memory: no limit, or
        tokens of this node's lease left.  False: nothing was taken, await
        ``charge_key``."""
        rate, burst = self.settings.key_rate, self.settings.key_burst
        if rate <= 0 or cost <= 0:
            return True
        if not self.settings.cache:
            return False
        cost = min(cost, burst)
        key = f"key:{record.prefix}"
        held = self._leases.get(key, 0)
        if held >= cost:
            self._leases[key] = held - cost
            return True
        return False

    def forget_key(self, prefix: str) -> None:
        """A revoked key's lease goes with it (tidings/service/keys.py).  The
        lease is only ever spent after the key was found in the cache, which
        forgets it first; this keeps its tokens from outliving it here."""
        self._leases.pop(f"key:{prefix}", None)

    async def charge_key(self, record: KeyRecord, cost: int = 1) -> None:
        """Take ``cost`` tokens from the key's bucket, or raise 429."""
        rate, burst = self.settings.key_rate, self.settings.key_burst
        if rate <= 0 or cost <= 0:
            return
        # A cost above the burst could never be paid: it waits for a full bucket.
        cost = min(cost, burst)
        key = f"key:{record.prefix}"
        if self.settings.cache:
            # Spend tokens this node took already: no broker round trip on
            # most publishes.  A lease is taken from the shared bucket like
            # any charge, so the cluster never goes over the limit; at most
            # a lease per node sits unspent (a key near its limit is refused
            # that much earlier).  When the lease cannot be had, the charge
            # alone is asked for, as without the cache.
            held = self._leases.get(key, 0)
            if held >= cost:
                self._leases[key] = held - cost
                return
            lease = max(cost, min(burst // KEY_LEASE_BURST_PART, int(rate * KEY_LEASE_S)))
            if lease > cost and await self._take(key, rate, burst, lease) == 0:
                self._leases[key] = self._leases.get(key, 0) + lease - cost
                return
        wait = await self._take(key, rate, burst, cost)
        if wait > 0:
            raise RateLimited(
                f"this API key is over its rate limit ({rate:g} per second, bursts of {burst})",
                retry_after=wait,
            )

    # -- per user (the client API) --------------------------------------------------------
    def charge_user(self, app: str, user: str) -> None:
        """Take one token from the user's bucket on this node, or raise 429.
        Memory only: no broker, no await."""
        rate = self.settings.user_rate
        if rate <= 0:
            return
        burst = self.settings.user_burst
        wait = self.users.take_checked((app, user), rate, burst)
        if wait > 0:
            raise RateLimited(
                f"this user is over the client API's rate limit ({rate:g} requests a second, "
                f"bursts of {burst})", retry_after=wait)

    # -- per unsubscribe link -------------------------------------------------------------
    def charge_link(self, link: Hashable) -> None:
        """Take one token from the bucket of an unsubscribe link that
        verified, on this node, or raise 429.  Memory only."""
        wait = self.links.take_checked(link, LINK_RATE, LINK_BURST)
        if wait > 0:
            raise RateLimited(
                f"this unsubscribe link was followed more than {LINK_BURST} times in a row; "
                f"it works again in {max(1, round(wait))} s", retry_after=wait)

    # -- frequency caps ------------------------------------------------------------------
    def caps_now(self, app_id: str) -> Caps | None:
        """The app's caps if this node has them in memory, else None."""
        return self._caps.get(app_id)

    async def caps(self, app_id: str) -> Caps:
        found = self._caps.get(app_id)
        if found is None:
            doc = await self.store.get_caps(app_id)
            found = _decode_caps(doc) if doc else Caps()
            self._caps.put(app_id, found)
        return found

    async def digests(self, app_id: str) -> digest.Rules:
        """The app's default digests per category and channel (tidings/core/digest.py)."""
        return (await self.caps(app_id)).digests

    async def put_caps(self, app_id: str, caps: Caps, audit: AuditEntry | None = None) -> None:
        """Replace the app's caps; ``audit``, the change's record, is written
        in its transaction."""
        try:
            digest.check(caps.digests, "digests")
        except digest.InvalidDigest as exc:
            raise Invalid(str(exc), field=exc.field) from None
        await self.store.put_caps(app_id, msgspec.json.encode(caps), audit=audit)
        self._caps.pop(app_id)

    async def apply_caps(self, app_id: str, item: NewNotification, group_key: str | None,
                         ) -> Capped:
        """Take one token per recipient from their (user, category) bucket;
        recipients without one are taken out of ``item`` unless the
        notification has a ``group_key``."""
        capped = Capped()
        if getattr(item, "deliver_at", None) is not None:
            return capped  # scheduled: capped when it fires (Service.fire_due), not now
        cap = (await self.caps(app_id)).categories.get(item.category)
        if cap is None or item.all:
            return capped
        users = item.users
        if users is None:  # a topic: capped only when fanned out on write
            assert item.topic is not None
            threshold = self.settings.fanout_threshold
            size, users = await self.store.topic_info(app_id, item.topic, threshold + 1)
            if size > threshold:
                return capped
        users = list(dict.fromkeys(users))
        rate = cap.max / cap.per
        waits = await asyncio.gather(*(
            self._take(f"cap:{app_id}:{item.category}:{user}", rate, cap.max) for user in users))
        capped.over = {user for user, wait in zip(users, waits, strict=True) if wait > 0}
        if not capped.over:
            return capped
        if group_key is not None:
            capped.action = "aggregated"
        else:
            capped.action = "dropped"
            # Published to the others only; a topic becomes its members of now.
            item.users, item.topic = [u for u in users if u not in capped.over], None
        return capped
