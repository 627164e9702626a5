"""The service: publishing, state changes and auth, over a store and a broker.

The HTTP layer parses and authorises; this module decides.  Every write
commits to the store first and only then tells the broker, so nothing is
ever announced that is not durable (docs/design.md §2.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from tidings import tracing
from tidings.broker.base import (
    KEYS_CHANNEL,
    Broker,
    Feed,
    Frames,
    Membership,
    Message,
    MutesChanged,
    Personals,
    all_channel,
    topic_channel,
    user_channel,
)
from tidings.config import Settings
from tidings.core import auth, events, locales, preferences, unsubscribe
from tidings.core.audit import Actor
from tidings.core.etag import IfMatch
from tidings.core.ids import id_at, new_id
from tidings.core.lru import LRU
from tidings.core.models import (
    DATA_MAX_DEPTH,
    Notification,
    PatchRequest,
    Preferences,
    PublishRequest,
    data_depth_ok,
    valid_app_id,
)
from tidings.core.receipts import HTTP_DEVICE, ReceiptBuffer, Receipts, decode_receipts
from tidings.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TidingsError,
    Unauthorized,
    Unavailable,
)
from tidings.gateway.hub import Hub
from tidings.service.apps import Apps
from tidings.service.audit import Audit
from tidings.service.failures import ClusterLimits
from tidings.service.keys import Keys
from tidings.service.outbound import Outbound, OutboundCounts
from tidings.service.ratelimits import NOT_CAPPED, Capped, RateLimits
from tidings.service.revocations import Revocations
from tidings.service.scheduler import Scheduler, scheduled_edit
from tidings.service.sessions import Sessions
from tidings.store.base import (
    AppRecord,
    Delivery,
    KeyRecord,
    NewNotification,
    Pruned,
    PublishOutcome,
    Resurfaced,
    Retraction,
    Store,
)

log = logging.getLogger("tidings")
_encode = msgspec.json.encode
_decode_notification = msgspec.json.Decoder(Notification).decode


def _feed_channel(app_id: str, audience: str) -> str:
    """Where feed items of ``audience`` ("*" or a topic) travel."""
    return all_channel(app_id) if audience == "*" else topic_channel(app_id, audience)


def _token_digest(token: str) -> bytes:
    """The token cache's key: 16 bytes instead of a ~200-byte JWT held per
    connected user (the cache's memory is part of every idle connection's)."""
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


_FLOAT_MAX = sys.float_info.max
_DATA_TOO_DEEP = (f"data nests more than {DATA_MAX_DEPTH} levels (objects and arrays, "
                  "data itself the first)")
# Marks a cached inbox page holding a notification with locales (never
# encoded: ``Service.inbox`` answers such a page resolved, without it).
_LOCALIZABLE = "\x00locales"


class _Retired(Unauthorized):
    """A token refused as not valid that its app's previous signing secret
    signed (its overlap over): answered as any other, not counted as one
    (Service.token_claims)."""


class Claims(NamedTuple):
    """A verified user token, as ``Service.token_claims`` answers it (and
    caches it)."""

    app: str
    user: str
    # the last moment it is taken: its exp plus the clock leeway, or the end
    # of the overlap of the previous signing secret it was signed with
    until: float
    secret: str  # the signing secret it was verified with (apps.py)
    issued: int | None  # its iat, None without one (revocations.py)
    jti: str | None  # its jti, None without one (revocations.py)


# A retraction tells its holders this many at a time: one read of the counts
# of those whose unread entry went (inline on the event loop on SQLite), then
# a turn of the loop for everything else.
_RETRACT_CHUNK = 100

# A fired notification still without its outbound jobs this long after it
# fired is taken over by the next scheduler pass (of any node).
REQUEUE_AFTER = 60.0


def _fingerprint(req: PublishRequest) -> str:
    """What a publish asked for, for telling a retry from a reused key: the
    request re-encoded with sorted keys and defaults left out, so the same
    notification written differently (spacing, key order) is the same."""
    canonical = msgspec.json.encode(req, order="deterministic")
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


_last_second: tuple[int, str, str] = (-1, "", "")  # second, date and time, UTC offset
# the last answer, with the _last_second it came from: a batch's items share their time
_last_iso: tuple[float, str, object] = (-1.0, "", None)


def _made_already(change: Callable[[Preferences], Preferences], prefs: Preferences) -> bool:
    """Whether ``change`` leaves ``prefs`` as they are (the document a PUT
    sends, or a patch applied to them): a write that has nothing left to do.
    A patch that breaks a rule on them has not been made."""
    try:
        return preferences.encoded(change(prefs)) == preferences.encoded(prefs)
    except Invalid:
        return False


def _iso(ts: float) -> str:
    """``datetime.fromtimestamp(ts).astimezone().isoformat(timespec=
    "milliseconds")``, the server's local time, in a quarter of the time:
    the date, time and offset of the last whole second are kept (an offset
    changes only on a whole second), and the microseconds are rounded as
    ``fromtimestamp`` rounds them (half to even)."""
    global _last_second, _last_iso
    if ts == _last_iso[0] and _last_iso[2] is _last_second:
        return _last_iso[1]
    second = math.floor(ts)
    us = round((ts - second) * 1e6)
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    cached, date_time, offset = _last_second
    if second != cached:
        text = datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
        date_time, offset = text[:19], text[19:]
        _last_second = (second, date_time, offset)
    text = f"{date_time}.{us // 1000:03d}{offset}"
    _last_iso = (ts, text, _last_second)
    return text


class Service:
    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        """The service of ``settings``' store and broker (not opened): what
        ``tidings serve`` runs under its HTTP app, and the operator commands
        run alone."""
        from tidings.broker import open_broker
        from tidings.store import open_store

        return cls(settings, open_store(settings.store, settings.sqlite_path),
                   open_broker(settings.broker, settings.store))

    def __init__(self, settings: Settings, store: Store, broker: Broker):
        self.settings = settings
        self.store = store
        self.broker = broker
        self.hub = Hub(store, broker, settings)
        self.receipts = ReceiptBuffer()  # devices' delivered / displayed, written with tracking
        self.scheduler = Scheduler(self)  # fires deliver_at notifications (run by the app)
        self.limits = RateLimits(settings, store, broker)  # per key, caps per user and category
        # webhooks, push, e-mail (outbound.py), counted like every delivery;
        # the app's default digests come with its caps (cached by limits)
        self.outbound = Outbound(settings, store, track=self.track,
                                 defaults=self.limits.digests)
        # API keys: created, listed, rotated, revoked, verified ones cached
        # until revoked or expired, their last use noted (keys.py says how a
        # revocation reaches every node)
        self.keys = Keys(settings, store, broker, self.limits)
        # dashboard sessions ended by a logout, on every node (sessions.py)
        self.sessions = Sessions(settings, store, broker)
        # each app's log of changes made by its admins and the operator (audit.py)
        self.audit = Audit(settings, store)
        # The hot-path cache (Settings.cache; off only to measure it).  A
        # verified token is cached no longer than its exp, nor than the app
        # record it was verified with: a rotation of the app's signing secret
        # (apps.py) drops both, on every node.
        self._tokens: LRU[bytes, Claims] = LRU(100_000)
        self.apps = Apps(settings, store, broker, self.hub, self._tokens)
        # users' tokens revoked before a cutoff: every cutoff in memory, read
        # by every token check, cached tokens included (revocations.py)
        self.revocations = Revocations(settings, store, broker, self.hub)
        self._revoked = self.revocations.before
        self._revoked_ids = self.revocations.ids
        # user tokens refused as not valid, per client address (in the
        # cluster too) and per node: counted after the check fails, never on
        # the way of one that works
        self.token_failures = ClusterLimits("token", settings.limits.token_failures_per_address,
                                            settings.limits.token_failures_per_node, broker)
        self._apps: LRU[str, AppRecord] = self.apps.cache
        self._keys: LRU[str, KeyRecord] = self.keys.cache
        self.caching = settings.cache
        # one flush of the delivery counters at a time: GET /v1/notifications/{id}
        # flushes before it reads, and must wait for the counters a flush
        # already under way took (else it reads the store without them)
        self._flushing = asyncio.Lock()
        self.started_at = time.time()
        self.published = 0
        self.publish_errors = 0

    async def _take_lease(self, node: str, address: str) -> None:
        """Take the node's lease; a store that cannot be written now (read
        only, a full disk, a standby) does not stop the node, which serves
        what it can and answers writes 503 as it always did: the renewals
        (tidings/api/app.py) take the lease once the store can be written."""
        try:
            await self.store.lease(node, address, os.getpid(), self.settings.node_lease)
        except Unavailable as exc:
            log.warning("node lease not taken, the store cannot be written now (%s): "
                        "`tidings secrets` does not see this node until a renewal takes it",
                        exc)

    async def open(self, lease: tuple[str, str] | None = None) -> None:
        """Open the store and the broker.  ``lease`` (``(node, address)``, for
        a serving node) is taken on the store before the key is checked: a
        reseal either sees it and refuses, or is over before this node reads
        a secret (``Store.reseal``)."""
        await self.store.open()
        # the operator's key, checked once; secrets are opened as they are
        # read into the caches, never on a request (tidings/core/seal.py)
        try:
            if lease is not None:
                await self._take_lease(*lease)
            await self.store.unlock(self.settings.operator_key())
        except BaseException:
            if lease is not None:  # a node that does not start holds no lease
                with contextlib.suppress(Exception):
                    await self.store.release(lease[0])
            await self.store.close()
            raise
        await self.broker.open()
        self.apps.open()
        self.sessions.open()
        # one channel for every node: revoked keys and tokens, rotated secrets,
        # ended sessions
        self.broker.subscribe(KEYS_CHANNEL, self._on_credentials)
        await self.keys.open()
        await self.revocations.open()
        # unsubscribe links are signed under a key of the same pepper
        self.outbound.link_secret = unsubscribe.link_secret(self.keys.pepper)

    def _on_credentials(self, channel: str, message: Message) -> None:
        self.keys.on_message(message)
        self.apps.on_message(message)
        self.sessions.on_message(message)
        self.revocations.on_message(message)

    async def close(self) -> None:
        await self.broker.close()
        await self.store.close()

    # -- apps, keys and tokens --------------------------------------------------
    async def create_app(self, name: str, app_id: str | None = None, *,
                         actor: Actor | None = None) -> tuple[AppRecord, str]:
        """Create an app with an all-scopes API key; returns ``(app, key)``.
        ``actor``: who asked, recorded in the app's audit log in the app's
        transaction (None: not recorded).  The record names the key's prefix,
        so the key is minted first; it is stored right after the app."""
        app_id = app_id or "app_" + new_id().lower()[-12:]
        if not valid_app_id(app_id):
            raise Invalid("app id must be 1-64 of a-z 0-9 _ -", field="app")
        made = auth.new_api_key()
        audit = None if actor is None else self.audit.entry(
            app_id, actor, "app.create", app_id, name=name, prefix=made[1])
        record = await self.store.create_app(app_id, name, auth.new_signing_secret(),
                                             audit=audit)
        self.apps.created(record)
        key, _ = await self.keys.create(app_id, auth.SCOPES, made=made)
        return record, key

    async def create_api_key(self, app_id: str, scopes: Iterable[str],
                             name: str | None = None) -> str:
        key, _ = await self.keys.create(app_id, scopes, name)
        return key

    async def app(self, app_id: str) -> AppRecord | None:
        return await self.apps.get(app_id)

    def key_now(self, key: str | None, scope: str) -> KeyRecord | None:
        """``authenticate_key`` for a key in the cache that has ``scope``;
        None for anything else (``authenticate_key`` says what)."""
        record = self._keys.get(key) if key and self.caching else None
        if record is None or (scope not in record.scopes and "admin" not in record.scopes):
            return None
        return record

    async def authenticate_key(self, key: str | None, scope: str, client: str | None, *,
                               limited: bool = True) -> KeyRecord:
        """The record of ``key`` if it has ``scope``, else 401 or 403.  A key
        not in the cache is checked within the limit of failed key checks
        from ``client``, the caller's address (429, Keys.verify_limited);
        ``limited=False`` for a caller that limits failures itself (the
        dashboard's login form)."""
        if not key:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        record = self._keys.get(key) if self.caching else None
        if record is None:  # cached there
            record = await (self.keys.verify_limited(key, client) if limited
                            else self.keys.verify(key))
        if scope not in record.scopes and "admin" not in record.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope", code="missing_scope")
        return record

    async def authenticate_token(self, token: str | None,
                                 client: Callable[[], str | None] | None = None
                                 ) -> tuple[str, str]:
        """The ``(app, user)`` a user token names; raises Unauthorized, or
        RateLimited for a token that is not valid past the limits of invalid
        tokens (``token_claims``)."""
        if self.caching and token:  # the usual case, without a second coroutine
            hit = self._tokens.get(_token_digest(token))
            # (app, user, ..., issued, jti) by index: a field's name costs a
            # lookup more.  A revoked user's token, and a token of a user with
            # a token revoked, is checked again; no revocation at all costs
            # nothing.
            if hit is not None and not ((self._revoked or self._revoked_ids) and
                                        self.revocations.refuses(hit[0], hit[1], hit[4],
                                                                 hit[5])):
                return hit[0], hit[1]
        claims = await self.token_claims(token, client)
        return claims.app, claims.user

    async def token_claims(self, token: str | None,
                           client: Callable[[], str | None] | None = None, *,
                           limited: bool = True) -> Claims:
        """The claims of a user token, whose ``until`` is when a live stream
        opened with it ends (tidings/gateway/stream.py), its ``secret`` what a
        rotation may retire (apps.py) and its ``issued`` and ``jti`` what a
        revocation may refuse (revocations.py).

        A token refused as not valid (``bad_token``: malformed, forged, of
        no app) counts against the limits of invalid tokens from the
        caller's address (``client()``, asked only then) and on this node,
        unless ``limited`` is False; past either the answer is 429 instead
        of the 401 (docs/security.md#invalid-user-tokens).  Only after the
        check failed: a token that works never touches the limits."""
        if not token:
            raise Unauthorized("a user token is required")
        digest = b""
        if self.caching:
            # a token verified once is good until it expires (HS256 + PyJWT
            # costs ~20 us per check; streams and every client call carry one),
            # unless it, or its user's tokens, are revoked
            digest = _token_digest(token)
            hit = self._tokens.get(digest)
            if hit is not None:
                self.revocations.check(hit.app, hit.user, hit.issued, hit.jti)
                return hit
        try:
            return await self._verify_token(token, digest)
        except Unauthorized as exc:
            if limited and exc.code == "bad_token" and not isinstance(exc, _Retired):
                await self._token_failed(client() if client is not None else None)
            raise

    async def _token_failed(self, address: str | None) -> None:
        """Count a token refused as not valid; RateLimited past the limits,
        this node's or the cluster's."""
        attempt = self.token_failures.admit(address)
        wait = attempt.wait or await self.token_failures.failed(attempt)
        if wait:
            seconds = max(1, math.ceil(wait))
            where = "on this server" if attempt.limit == "node" else "from your address"
            raise RateLimited(f"too many invalid user tokens {where}: try again in {seconds} "
                              f"second{'s' if seconds > 1 else ''}", retry_after=seconds)

    async def _verify_token(self, token: str, digest: bytes) -> Claims:
        """``token_claims`` for a token that is not in the cache."""
        app_id = auth.unverified_app(token)
        if app_id is None:
            raise Unauthorized("token is not valid", code="bad_token")
        record = await self.app(app_id)
        if record is None:
            raise Unauthorized("token is not valid", code="bad_token")
        now = time.time()
        try:
            app, user, exp, issued, jti, by_previous = auth.verify_token_rotated(
                token, record.signing_secret, record.previous(now))
        except Unauthorized as exc:
            # Signed with the secret the last rotation replaced, its overlap
            # over: routine (a device that got it before the rotation, and
            # now asks for a new one), like an expired token, not a guess.
            if exc.code == "bad_token" and record.previous_secret is not None \
                    and auth.signed_by(token, record.previous_secret):
                raise _Retired(exc.message, code=exc.code) from None
            raise
        self.revocations.check(app, user, issued, jti)
        # PyJWT takes any integer exp, even one too large for a float (10**400):
        # such a token never ends a stream, and is cached for as long as any entry
        until = float(exp + auth.LEEWAY) if exp < _FLOAT_MAX else math.inf
        secret = record.signing_secret
        if by_previous:  # taken until the rotation's overlap ends
            secret = record.previous_secret or ""
            until = min(until, record.previous_until or now)
        claims = Claims(app, user, until, secret, issued, jti)
        if self.caching:
            # no longer than the record it was verified with (apps.py)
            life = exp - now if exp < _FLOAT_MAX else math.inf
            ttl = min(life, until - now, self.apps.trust_left(app_id))
            self._tokens.put(digest, claims, ttl=ttl)
        return claims

    async def mint_token(self, app_id: str, user: str, ttl: int) -> tuple[str, int, str]:
        """A new token of ``user``: ``(token, exp, jti)``."""
        record = await self.app(app_id)
        if record is None:
            raise NotFound("no such app")
        if ttl > self.settings.limits.token_max_ttl:
            raise Invalid(
                f"ttl is at most {self.settings.limits.token_max_ttl} seconds", field="ttl"
            )
        now = int(time.time())
        # revoked in this second: the token says it was issued at the cutoff
        # (under a second ahead, within the clock leeway), or it would be refused
        cutoff = self._revoked.get((app_id, user)) if self._revoked else None
        issued = math.ceil(cutoff) if cutoff is not None and now < cutoff <= now + 1 else None
        jti = auth.new_token_id()
        token = auth.mint_token(app_id, user, record.signing_secret, ttl, now=now, issued=issued,
                                jti=jti)
        return token, now + ttl, jti

    def origin_allowed(self, origin: str) -> bool:
        allowed = self.settings.allowed_origins
        return not allowed or origin in allowed

    # -- publishing ---------------------------------------------------------------
    def _prepare(self, req: PublishRequest, idem_key: str | None, now: float) -> NewNotification:
        to = req.to
        targets = (to.users is not None) + (to.topic is not None) + bool(to.all)
        if targets != 1:
            raise Invalid('"to" needs exactly one of users, topic or all', field="to")
        if to.users is not None and len(to.users) > self.settings.limits.max_recipients:
            raise Invalid(
                f"at most {self.settings.limits.max_recipients} users per publish",
                field="to.users",
            )
        if req.data and not data_depth_ok(req.data):
            raise Invalid(_DATA_TOO_DEEP, field="data")
        deliver_at = None if req.deliver_at is None else self._deliver_at(req, now)
        if deliver_at is None:
            at, nid = now, new_id(int(now * 1000))
        else:
            # A scheduled notification is created when it fires, and its id
            # sorts by that time: it lists among what arrived with it.
            at, nid = deliver_at, id_at(int(deliver_at * 1000))
        expires_at = at + req.ttl if req.ttl else None  # ttl runs from delivery
        # positional, in Notification's field order, as NewNotification below
        # (sixteen keywords took three times as long): id, category,
        # created_at, title, body, format, url, data, priority, tags,
        # group_key, actor, locales, locale, deliver_at, expires_at
        note = Notification(
            nid, req.category, _iso(at), req.title, req.body, req.format, req.url, req.data,
            req.priority, req.tags, req.group_key, req.actor,
            None if req.locales is None else locales.check(req.locales), None,
            None if deliver_at is None else _iso(deliver_at),
            _iso(expires_at) if expires_at else None,
        )
        body = _encode(note)
        if len(body) > self.settings.limits.max_notification_bytes:
            raise PayloadTooLarge(
                f"notification is {len(body)} bytes encoded; the limit is "
                f"{self.settings.limits.max_notification_bytes}"
            )
        # positional, in NewNotification's field order: keywords cost a
        # publish 0.5 us more (id, category, body, created_at, expires_at,
        # users, topic, all, idempotency_key, fingerprint, group_key,
        # deliver_at, jobs)
        return NewNotification(
            nid, req.category, body, now, expires_at, to.users, to.topic, bool(to.all),
            idem_key, "" if idem_key is None else _fingerprint(req), req.group_key,
            deliver_at, [])

    def _deliver_at(self, req: PublishRequest | PatchRequest, now: float) -> float | None:
        """The time to deliver at, or None for now."""
        if req.deliver_at is None:
            return None
        if req.deliver_at.tzinfo is None:
            raise Invalid("deliver_at needs a time zone", field="deliver_at")
        limits = self.settings.limits
        try:
            at = req.deliver_at.timestamp()
        except (OverflowError, ValueError, OSError):
            raise Invalid("deliver_at is out of range", field="deliver_at") from None
        if at < now - limits.deliver_at_grace:
            raise Invalid(
                f"deliver_at is in the past (more than {limits.deliver_at_grace} s ago)",
                field="deliver_at",
            )
        if at > now + limits.max_schedule_ahead:
            raise Invalid(
                f"deliver_at is at most {limits.max_schedule_ahead // 86400} days ahead",
                field="deliver_at",
            )
        return at if at > now else None

    async def publish(self, app_id: str, req: PublishRequest, idem_key: str | None = None) -> dict:
        if tracing.TRACER is None:
            return await self._publish(app_id, req, idem_key)
        with tracing.span("publish", {"tidings.app": app_id}) as span:
            result = await self._publish(app_id, req, idem_key)
            span.set_attributes({"tidings.notification_id": result["id"],
                                 "tidings.status": result["status"],
                                 "tidings.recipients": result["recipients"]})
            return result

    async def _publish(self, app_id: str, req: PublishRequest, idem_key: str | None) -> dict:
        # no coroutine per step: the usual publish (no caps for its category,
        # no outbound destinations in the app) decides both from memory and
        # awaits only the store
        item = self._prepare(req, idem_key, time.time())
        capped = self._uncapped(app_id, item)
        if capped is None:
            capped = await self._caps(app_id, item, req.group_key)
        outbound = None
        if (item.deliver_at is None and not item.all
                and self.outbound.wanted_now(app_id) is not False):
            outbound = await self._plan_outbound(app_id, item, req.priority, capped)
        fanout, window = self.settings.fanout_threshold, self.settings.limits.idempotency_window
        if tracing.TRACER is None:
            out = await self.store.publish(app_id, item, fanout_threshold=fanout, window=window)
        else:
            with tracing.span("store.commit"):
                out = await self.store.publish(app_id, item, fanout_threshold=fanout,
                                               window=window)
        if outbound is None and out.status == "accepted":
            return self._accepted(app_id, req, capped, out)
        return await self._published(app_id, req, item, capped, outbound, out)

    async def _caps(self, app_id: str, item: NewNotification, group_key: str | None) -> Capped:
        """``limits.apply_caps``, except for a retry (its idempotency key was
        used within the window): the store answers it ``duplicate``, and its
        recipients' cap tokens were spent by the first attempt."""
        key = item.idempotency_key
        if key is not None and await self.store.key_used_since(
                app_id, key, item.created_at - self.settings.limits.idempotency_window):
            return NOT_CAPPED
        return await self.limits.apply_caps(app_id, item, group_key)

    def _uncapped(self, app_id: str, item: NewNotification) -> Capped | None:
        """``NOT_CAPPED`` when the app's caps are in memory and none applies
        to ``item`` (what ``apply_caps`` would find without a token to
        take), else None: ask ``apply_caps``."""
        if item.deliver_at is not None or item.all:
            return NOT_CAPPED
        caps = self.limits.caps_now(app_id)
        if caps is not None and item.category not in caps.categories:
            return NOT_CAPPED
        return None

    def _accepted(self, app_id: str, req: PublishRequest, capped: Capped,
                  out: PublishOutcome) -> dict:
        """``_published`` for a publish accepted with no outbound jobs planned."""
        self._announce(app_id, out)
        self.published += 1
        self.hub.metrics.published(app_id, "accepted", out.recipients, req.to.topic)
        result = self._result(out)
        capped.annotate(result)
        return result

    async def publish_many(self, app_id: str, reqs: list[PublishRequest | Exception],
                           keys: list[str | None]) -> list[dict | Exception]:
        """The notifications of a batch request, with their idempotency keys:
        one result per item, in order, or the exception that failed that item
        alone (an item given as an exception, e.g. a body that did not
        decode, fails with it).  The valid ones go to the store together
        (``Store.publish_many``: on SQLite one job of the writer)."""
        if tracing.TRACER is not None:  # a span per publish, as single publishes have
            async def one(req: PublishRequest | Exception, key: str | None,
                          ) -> dict | Exception:
                if isinstance(req, Exception):
                    return req
                try:
                    return await self.publish(app_id, req, key)
                except Exception as exc:
                    return exc
            return list(await asyncio.gather(*(one(r, k) for r, k in zip(reqs, keys,
                                                                          strict=True))))
        now = time.time()
        results: list[dict | Exception] = list(reqs)  # type: ignore[arg-type]  # replaced below
        ready: list[tuple[int, PublishRequest, tuple]] = []
        # once per batch, not per item: the categories the app caps, and
        # whether it has any outbound destination (both cached)
        capped_categories = (await self.limits.caps(app_id)).categories
        outbound_wanted = await self.outbound.wanted(app_id)
        for i, req in enumerate(reqs):
            if isinstance(req, Exception):
                continue
            try:
                item = self._prepare(req, keys[i], now)
                capped = (await self._caps(app_id, item, req.group_key)
                          if item.category in capped_categories else NOT_CAPPED)
                outbound = (await self._plan_outbound(app_id, item, req.priority, capped)
                            if outbound_wanted else None)
            except Exception as exc:
                results[i] = exc
            else:
                ready.append((i, req, (item, capped, outbound)))
        if ready:
            outs = await self.store.publish_many(
                app_id, [r[2][0] for r in ready], fanout_threshold=self.settings.fanout_threshold,
                window=self.settings.limits.idempotency_window,
            )
            # _accepted's steps without its calls (no tracing here): a
            # batch's items are most of its loop's Python
            announce, count, result_of = (self._announce_traced, self.hub.metrics.published,
                                          self._result)
            # the accepted items, those without a topic counted together
            accepted = plain = reached = 0
            for (i, req, (item, capped, outbound)), out in zip(ready, outs, strict=True):
                if isinstance(out, Exception):
                    results[i] = out
                    continue
                try:
                    if outbound is None and out.status == "accepted":
                        announce(app_id, out, "")
                        accepted += 1
                        if req.to.topic is None:
                            plain += 1
                            reached += out.recipients
                        else:
                            count(app_id, "accepted", out.recipients, req.to.topic)
                        results[i] = result = result_of(out)
                        if capped is not NOT_CAPPED:
                            capped.annotate(result)
                    else:
                        results[i] = await self._published(app_id, req, item, capped,
                                                           outbound, out)
                except Exception as exc:
                    results[i] = exc
            self.published += accepted
            if plain:
                count(app_id, "accepted", reached, None, plain)
        return results

    async def _published(self, app_id: str, req: PublishRequest, item: NewNotification,
                         capped: Capped, outbound: OutboundCounts | None,
                         out: PublishOutcome) -> dict:
        """A publish after its commit: announced, counted, answered."""
        if out.status == "duplicate" and out.fingerprint not in ("", item.fingerprint):
            # Answering "duplicate" here would lose this notification for good.
            raise Invalid("this Idempotency-Key was used for another notification in the "
                          "last 24 hours", field="Idempotency-Key", code="idempotency_key_reused")
        if out.status == "accepted":
            self._announce(app_id, out)
        elif out.status == "scheduled" and item.deliver_at is not None:
            self.scheduler.wake(item.deliver_at)
        self.published += 1
        self.hub.metrics.published(app_id, out.status, out.recipients, req.to.topic)
        result = self._result(out)
        if outbound is not None and out.status == "accepted" and out.feed_offset is None:
            if item.jobs:  # committed with the inbox rows
                await self.outbound.queued(app_id, out.id, outbound, out.replaced)
            if outbound.deferred:
                result["deferred"] = sum(outbound.deferred.values())
            if outbound.queued or outbound.muted or outbound.digest:
                result["outbound"] = outbound.as_dict()
        capped.annotate(result)
        return result

    async def _plan_outbound(self, app_id: str, item: NewNotification, priority: str,
                             capped: Capped, since: float | None = None,
                             ) -> OutboundCounts | None:
        """Plan the webhooks, pushes and e-mails of a notification fanned out
        on write (outbound.py) into ``item.jobs``, which the store commits in
        the publish's own transaction (docs/design.md §2.1: a crash never keeps the
        inbox rows without them).  Recipients over a frequency cap get none.
        None when there is nothing to plan: a scheduled notification (its
        jobs are planned when it fires, :meth:`fire_due`, the delay and quiet
        hours counting from ``since``), a broadcast or a topic fanned out on
        read, or an app without outbound destinations."""
        if item.deliver_at is not None or item.all or not await self.outbound.wanted(app_id):
            return None
        if item.users is not None:
            users = list(dict.fromkeys(item.users))
        else:  # a topic: its members now (muted ones included, for their other channels)
            assert item.topic is not None
            size, users = await self.store.topic_info(app_id, item.topic,
                                                      self.settings.fanout_threshold)
            if size > self.settings.fanout_threshold:
                return None  # fanned out on read: no outbound jobs
        item.jobs, counts = await self.outbound.plan(
            app_id, item.id, item.body, category=item.category, priority=priority,
            created_at=item.created_at if since is None else since, expires_at=item.expires_at,
            users=[u for u in users if u not in capped.over], group_key=item.group_key,
        )
        return counts

    @staticmethod
    def _result(out: PublishOutcome) -> dict:
        result = {"id": out.id, "recipients": out.recipients, "status": out.status}
        if out.muted:
            result["muted"] = out.muted
        if out.feed_offset is not None:
            result["fanout"] = "read"
        return result

    def _announce(self, app_id: str, out: PublishOutcome) -> None:
        if tracing.TRACER is None:
            self._announce_traced(app_id, out, "")
            return
        with tracing.span("broker.publish", {"tidings.app": app_id}):
            # the devices' side continues this span (tidings/tracing.py)
            self._announce_traced(app_id, out, tracing.traceparent())

    def _announce_traced(self, app_id: str, out: PublishOutcome, trace: str) -> None:
        publish = self.broker.publish
        committed = time.time()  # publish -> device latency starts here (docs/design.md §5)
        # This node's cache learns at once (read-your-writes here); others
        # learn from the broker message itself.
        cache = self.hub.cache
        if out.feed_offset is not None:
            assert out.audience is not None  # a feed item has both
            cache.app_changed(app_id)
            frame = events.feed_frame(out.feed_offset, out.body)
            publish(_feed_channel(app_id, out.audience),
                    Feed(out.feed_offset, frame, committed, trace, out.category))
            return
        deliveries = out.deliveries
        message = Personals(out.body, deliveries, committed, trace)
        if not self.broker.inline:  # else the hub's handler has run when publish returns
            cache.users_changed(app_id, [d.user for d in deliveries])
            # this node's live devices now, not after the broker's round trip
            self.hub.deliver_here(app_id, message)
        # one message for every recipient: the in-process broker hands it to
        # the hub whole, a networked one sends one per user (broker/base.py)
        self.broker.publish_personals(app_id, message)

    # -- notifications ------------------------------------------------------------
    async def get_notification(self, app_id: str, nid: str) -> dict:
        stored = await self.store.get_notification(app_id, nid)
        if stored is None:
            return await self._scheduled(app_id, nid)
        try:
            await self.flush_tracking()  # this node's counts so far
        except Exception:
            log.warning("delivery counters could not be written; showing the stored ones")
        delivery = await self.store.delivery_counts(app_id, nid)
        stats, feed = stored.stats, stored.feed_offset is not None
        # in_app: seen counts entries seen or further along (read and
        # archived are both past seen), read those read or archived
        counted = delivery.get("in_app", {})
        in_app = {"delivered": counted.get("delivered", 0),
                  "seen": stats["seen"] + stats["read"] + stats["archived"],
                  "read": stats["read"] + stats["archived"]}
        if counted.get("muted"):  # a feed item's users whose streams skipped it
            in_app["muted"] = counted["muted"]
        # what devices acknowledged (tidings.core.receipts): unique users
        receipts = await self.store.receipt_counts(app_id, nid)
        in_app["acknowledged"] = receipts.get("delivered", 0)
        in_app["displayed"] = receipts.get("displayed", 0)
        if not feed:  # a feed item has no recipient list: its audience is counted when read
            in_app = {"recipients": stored.recipients, **in_app}
        delivery["in_app"] = in_app
        return {
            "notification": json.loads(stored.body),
            "status": "published",
            "fanout": "read" if feed else "write",
            "audience": stored.audience,
            "recipients": stored.recipients,
            "stats": stats,
            "delivery": delivery,
            # unique users per outbound channel (the counters above count jobs)
            "outbound_users": await self.store.outbound_users(app_id, nid),
        }

    async def _scheduled(self, app_id: str, nid: str) -> dict:
        """A notification that has not been published (yet): scheduled, or
        dropped because it expired before it could fire."""
        sched = await self.store.get_scheduled(app_id, nid)
        if sched is None or sched.status not in ("pending", "expired", "failed"):
            raise NotFound("no such notification", field="id")  # cancelled, or retracted
        return {
            "notification": json.loads(sched.body),
            "status": "scheduled" if sched.status == "pending" else sched.status,
            "deliver_at": _iso(sched.due_at),
            "recipients": 0,
            "delivery": {},
        }

    async def patch_notification(self, app_id: str, nid: str, patch: PatchRequest) -> dict:
        """Correct a notification: one still scheduled before it fires (and
        move it, with ``deliver_at``), else the published one, whose holders
        are told."""
        due_at = None
        if patch.data and not data_depth_ok(patch.data):
            raise Invalid(_DATA_TOO_DEEP, field="data")
        if patch.locales is not None:
            locales.check(patch.locales)
        if patch.deliver_at is not None:  # the bounds of a publish, from now
            now = time.time()
            due_at = self._deliver_at(patch, now) or now
        max_bytes = self.settings.limits.max_notification_bytes
        # One transaction holding the row against the scheduler (the store's
        # guarantee): edited before it fires, or found fired and edited below.
        sched = await self.store.edit_scheduled(
            app_id, nid, lambda s: scheduled_edit(s, patch, due_at, max_bytes))
        if sched is not None:
            self.scheduler.wake(sched.due_at)
            return json.loads(sched.body)
        stored = await self.store.get_notification(app_id, nid)
        if stored is None:
            raise NotFound("no such notification", field="id")
        if due_at is not None:
            raise Conflict("this notification was published already; its deliver_at cannot "
                           "change", field="deliver_at", code="already_published")
        note = _decode_notification(stored.body)
        for field in PatchRequest.__struct_fields__:
            value = getattr(patch, field)
            if value is not None and field != "deliver_at":
                setattr(note, field, value)
        note.locales = note.locales or None  # {}: none any more
        body = _encode(note)
        if len(body) > self.settings.limits.max_notification_bytes:
            raise PayloadTooLarge("the corrected notification is too large")
        updated = await self.store.update_notification(app_id, nid, body)
        if updated is None:
            raise NotFound("no such notification", field="id")
        await self.outbound.corrected(app_id, nid, body)  # jobs not sent yet send the fix
        users = [] if updated.audience else await self.store.recipients_of(app_id, nid)
        self._tell(app_id, updated.audience, users, events.updated_frame(body))
        return json.loads(body)

    async def delete_notification(self, app_id: str, nid: str) -> str:
        """Cancel a scheduled notification, or retract a published one;
        returns which ("cancelled" or "retracted")."""
        if await self.store.cancel_scheduled(app_id, nid):
            return "cancelled"  # it never fired: nobody has it
        gone = await self.store.delete_notification(app_id, nid, time.time())
        if gone is None:
            raise NotFound("no such notification", field="id")
        await self.outbound.retracted(app_id, nid)  # a retracted notification is never mailed
        deleted = events.deleted_frame(nid)
        audience = gone.notification.audience
        if audience is not None:
            # A feed item has no recipient list: each node reads the counts
            # of its own followers again (tidings/gateway/recount.py), unless
            # it had expired, and so was counted by nobody.
            expires = gone.notification.expires_at
            self.hub.cache.app_changed(app_id)
            self.broker.publish(_feed_channel(app_id, audience), Frames(
                [deleted], recount=expires is None or expires > time.time()))
        else:
            await self._tell_retracted(app_id, gone, deleted)
        return "retracted"

    async def _tell_retracted(self, app_id: str, gone: Retraction, deleted: bytes) -> None:
        """Each holder of a retracted personal notification gets, in one
        frame, what leaves its devices showing what its inbox page shows
        now: ``deleted`` for the id, before it the entry that still holds
        other members (``updated`` with its ``group`` and ``state``), after
        it fresh ``counts`` when an unread entry went."""
        regrouped = dict(gone.regrouped)
        unread = set(gone.unread)
        now = time.time()
        for i in range(0, len(gone.users), _RETRACT_CHUNK):
            users = gone.users[i:i + _RETRACT_CHUNK]
            for user in users:
                self.hub.cache.user_changed((app_id, user))
            recount = [u for u in users if u in unread]
            counts = await self.store.counts_many(app_id, recount, now) if recount else {}
            for user in users:
                frames = [deleted]
                entry = regrouped.get(user)
                if entry is not None and entry.group is not None:
                    frames.insert(0, events.group_updated_frame(entry.body, entry.group,
                                                                entry.state))
                if user in counts:
                    frames.append(events.counts_frame(*counts[user]))
                self.broker.publish(user_channel(app_id, user), Frames(frames))
            await asyncio.sleep(0)  # SQLite reads the counts inline: let the loop breathe

    async def prune(self, older_than: float) -> int:
        """Retention (the app's sweeper, every ``prune_interval``): drop what
        was created before ``older_than``, and send each group entry that
        lost members to them its holder's devices, as a retraction does:
        ``updated`` with the entry as the inbox page now shows it (the same
        notification, a smaller ``group``).  Then fresh ``counts`` to the
        open streams of each user whose unread entry or feed item went
        (``_recount_pruned``), and delete the API keys that expired before
        ``older_than``, and the audit records older than
        ``audit_retention_days``.  Returns how many entries and notifications
        went."""
        pruned = await self.store.prune(None, older_than)
        for i in range(0, len(pruned.regrouped), _RETRACT_CHUNK):
            for app_id, user, entry in pruned.regrouped[i:i + _RETRACT_CHUNK]:
                assert entry.group is not None  # a group entry
                self.hub.cache.user_changed((app_id, user))
                self.broker.publish(user_channel(app_id, user), Frames(
                    [events.group_updated_frame(entry.body, entry.group, entry.state)]))
            await asyncio.sleep(0)
        await self._recount_pruned(pruned)
        await self.keys.prune(older_than)
        await self.audit.prune()
        return pruned.removed

    async def _recount_pruned(self, pruned: Pruned) -> None:
        """Counts the sweep lowered, read again on every node by its own
        users with a stream (tidings/gateway/recount.py), as for a retracted
        feed item: an empty ``Frames`` with ``recount`` on each user's
        channel, on each feed's channel (its followers: those who had not
        read the item are counted lower), and, for an app the store did not
        name user by user (``RECOUNT_MAX``), on the app's channel, which
        every stream of the app follows."""
        whole = set(pruned.apps)
        sends: list[tuple[str, str | None, str]] = [
            (app, user, user_channel(app, user))
            for app, user in pruned.unread if app not in whole]
        sends += [(app, None, _feed_channel(app, audience))
                  for app, audience in pruned.feeds if app not in whole]
        sends += [(app, None, _feed_channel(app, "*")) for app in pruned.apps]
        recount = Frames([], recount=True)
        for i, (app, user, channel) in enumerate(sends, 1):
            if user is None:
                self.hub.cache.app_changed(app)
            else:
                self.hub.cache.user_changed((app, user))
            self.broker.publish(channel, recount)
            if i % _RETRACT_CHUNK == 0:
                await asyncio.sleep(0)

    def _tell(self, app_id: str, audience: str | None, users: list[str], frame: bytes) -> None:
        """Send ``frame`` to a notification's audience: the feed's channel for
        items fanned out on read, else each recipient's own channel."""
        if audience is not None:
            self.hub.cache.app_changed(app_id)
            self.broker.publish(_feed_channel(app_id, audience), Frames([frame]))
            return
        for user in users:
            self.hub.cache.user_changed((app_id, user))
            self.broker.publish(user_channel(app_id, user), Frames([frame]))

    # -- inbox state ----------------------------------------------------------------
    async def set_state(self, app_id: str, user: str, ids: list[str] | None, state: str) -> dict:
        now = time.time()
        changed = await self.store.set_state(app_id, user, ids, state, now)
        if changed and state != "archived":
            self.hub.metrics.track(app_id, "in_app", state, len(changed))
        if changed or ids is None:
            # A device saw them: their push and e-mail fallbacks are not needed.
            await self.outbound.seen(app_id, user, None if ids is None else changed)
        self.hub.cache.user_changed((app_id, user))
        counts = await self.hub.counts(app_id, user, now)
        if changed:
            frames = [events.state_frame(changed, state, all_=ids is None),
                      events.counts_frame(*counts)]
            self.broker.publish(user_channel(app_id, user), Frames(frames))
        return {"changed": len(changed), "counts": events.counts_object(*counts)}

    # -- snooze (docs/inbox.md#snooze) --------------------------------------------
    async def snooze(self, app_id: str, user: str, ids: list[str], until: float) -> dict:
        """Out of the inbox and the counts until ``until``: every device of
        the user hears it (a ``state`` event with ``until``) with the new
        counts, and the scheduler brings them back then."""
        now = time.time()
        changed = await self.store.snooze(app_id, user, ids, until, now)
        self.hub.cache.user_changed((app_id, user))
        counts = await self.hub.counts(app_id, user, now)
        if changed:
            self.broker.publish(user_channel(app_id, user), Frames([
                events.snoozed_frame(changed, _iso(until)), events.counts_frame(*counts)]))
            self.scheduler.wake(until)
        return {"changed": len(changed), "until": _iso(until),
                "counts": events.counts_object(*counts)}

    async def unsnooze(self, app_id: str, user: str, ids: list[str]) -> dict:
        """Bring snoozed entries back now, as their time coming would."""
        now = time.time()
        back = await self.store.resurface(app_id, user, ids, now)
        self._resurfaced(back)
        counts = await self.hub.counts(app_id, user, now)
        return {"changed": len(back), "counts": events.counts_object(*counts)}

    async def wake_snoozed(self, now: float, limit: int) -> int:
        """Entries whose snooze ended by ``now`` back (the scheduler's pass);
        returns how many."""
        back = await self.store.wake_snoozed(now, limit)
        self._resurfaced(back)
        return len(back)

    def _resurfaced(self, back: list[Resurfaced]) -> None:
        """Entries back from a snooze, each at a new seq of its user's stream:
        a ``notification`` event marked ``resurfaced`` to every open device
        (on the personal path, so a stream that misses it replays it), which
        counts it as a publish is counted."""
        committed = time.time()
        for r in back:
            e = r.entry
            assert e.seq is not None  # a personal entry
            message = Personals(events.resurfaced(e.body),
                                [Delivery(r.user, r.epoch, e.seq, e.group)], committed)
            self.hub.cache.user_changed((r.app_id, r.user))
            if not self.broker.inline:
                self.hub.deliver_here(r.app_id, message)
            self.broker.publish_personals(r.app_id, message)

    async def counts(self, app_id: str, user: str) -> dict:
        return events.counts_object(*await self.hub.counts(app_id, user, time.time()))

    async def inbox(self, app_id: str, user: str, *, limit: int, before: str | None,
                    state: str | None, categories: tuple[str, ...] = (),
                    tags: tuple[str, ...] = (), locale: str | None = None) -> dict:
        """A page of the user's inbox, its notifications in ``locale`` (None:
        the one of the user's preferences; tidings/core/locales.py)."""
        page = await self._cached_page(app_id, user, limit=limit, before=before, state=state,
                                       categories=categories, tags=tags)
        if _LOCALIZABLE not in page:  # no notification of it has locales: as it is
            return page
        locale = await self._locale(app_id, user, locale)
        items = []
        for item in page["items"]:
            note = bytes(item["notification"])
            if locales.has_locales(note):
                item = {**item, "notification": msgspec.Raw(locales.resolve(note, locale))}
            items.append(item)
        return {"items": items, "next_before": page["next_before"]}

    async def reader_locale(self, app_id: str, user: str, given: str | None) -> str:
        """The language to show the user's text in (their categories'
        labels: tidings/api/categories.py), as for their notifications."""
        return await self._locale(app_id, user, given)

    async def _locale(self, app_id: str, user: str, given: str | None) -> str:
        """The language to show the user's notifications in: ``given`` (a
        device's own), else their preferences' as their streams here hold
        it, else read ("" for none).  Asked only for notifications with
        locales."""
        if given is not None:
            return given
        held = self.hub.locale_of((app_id, user))
        if held is not None:
            return held
        return (await self.store.get_preferences(app_id, user)).locale or ""

    async def _cached_page(self, app_id: str, user: str, *, limit: int, before: str | None,
                           state: str | None, categories: tuple[str, ...] = (),
                           tags: tuple[str, ...] = ()) -> dict:
        # The first page is what every device opens with: cached while the
        # user has a stream on this node (tidings/gateway/cache.py); a tab's
        # filtered first page too, under its filter, invalidated alike.
        key, cache = (app_id, user), self.hub.cache
        extra = (limit, state) if not (categories or tags) else (limit, state, categories, tags)
        if before is None:
            hit = cache.get("page", key, *extra)
            if hit is not None:
                return hit
        version = cache.version(key) if before is None else None
        page = await self._inbox_page(app_id, user, limit=limit, before=before, state=state,
                                      categories=categories, tags=tags)
        cache.put("page", key, version, page, *extra)
        return page

    async def _inbox_page(self, app_id: str, user: str, *, limit: int, before: str | None,
                          state: str | None, categories: tuple[str, ...] = (),
                          tags: tuple[str, ...] = ()) -> dict:
        entries = await self.store.inbox(app_id, user, limit=limit, before=before, state=state,
                                         now=time.time(), categories=categories, tags=tags,
                                         muted=self.hub.muted_of((app_id, user)))
        items = []
        for e in entries:
            item: dict[str, Any] = {"id": e.id, "state": e.state,
                                    "notification": msgspec.Raw(e.body)}
            if e.seq is not None:
                item["seq"] = e.seq
            else:
                item["feed"] = e.feed
            if e.group is not None:
                item["group"] = msgspec.Raw(e.group)
            if e.snoozed_until is not None and e.state == "snoozed":
                item["snoozed_until"] = _iso(e.snoozed_until)
            items.append(item)
        # an entry back from a snooze sits where it came back: its place
        nxt = entries[-1].place if len(entries) == limit else None
        if any(locales.has_locales(e.body) for e in entries):
            return {"items": items, "next_before": nxt, _LOCALIZABLE: True}
        return {"items": items, "next_before": nxt}

    # -- topics and preferences -------------------------------------------------------
    async def subscribe(self, app_id: str, topic: str, users: list[str], add: bool) -> int:
        if add:
            n = await self.store.subscribe(app_id, topic, users)
        else:
            n = await self.store.unsubscribe(app_id, topic, users)
        for user in users:
            self.hub.cache.user_changed((app_id, user))
            self.broker.publish(user_channel(app_id, user), Membership(topic, add))
        return n

    async def put_preferences(self, app_id: str, user: str, prefs: Preferences,
                              if_match: IfMatch | None = None) -> Preferences:
        """Replace the user's preferences; what waits for them follows the new
        quiet hours and digest rules (Outbound.change_preferences).  Returns
        them as stored."""
        checked = preferences.check(prefs)
        return await self._change_preferences(app_id, user, lambda _: checked, if_match)

    async def update_preferences(self, app_id: str, user: str,
                                 patch: preferences.PreferencesPatch,
                                 if_match: IfMatch | None = None) -> Preferences:
        """Apply ``patch`` to the user's preferences in the store's
        transaction (tidings/core/preferences.py): what it does not name is
        left as it is then, whoever changed it last; what waits for the user
        follows the new quiet hours and digest rules.  Returns the result."""
        return await self._change_preferences(
            app_id, user, lambda prefs: preferences.check(preferences.merged(prefs, patch)),
            if_match)

    async def _change_preferences(self, app_id: str, user: str,
                                  change: Callable[[Preferences], Preferences],
                                  if_match: IfMatch | None) -> Preferences:
        """``change`` the user's preferences (Outbound.change_preferences);
        when it changed their in-app mutes, tell their streams.  ``if_match``
        is checked against the preferences the store read under the user's
        lock, so a writer that commits in between makes this one a 412
        (PreconditionFailed) that writes nothing, on any node -- unless the
        change would leave them as they are: then it has been made already
        (most often by this very request, sent again because its answer was
        lost), and it succeeds without writing (RFC 9110 §13.1.1)."""
        read: list[Preferences] = []  # what the store read (its last call's)

        def changing(prefs: Preferences) -> Preferences | None:
            read[:] = [prefs]
            if if_match is None or if_match.matches(preferences.etag(prefs)):
                return change(prefs)
            if _made_already(change, prefs):
                return None
            raise if_match.refused(preferences.etag(prefs))

        stored = await self.outbound.change_preferences(app_id, user, changing)
        if stored is None:  # made already: nothing was written
            return read[0]
        if stored.locale != read[0].locale:
            # this node's streams at once: an event sent after this answer is
            # in the new language (other nodes' follow the broker, below)
            locale = stored.locale
            self.hub.set_locale((app_id, user), locale if isinstance(locale, str) else "")
        if (preferences.muted(stored) != preferences.muted(read[0])
                or stored.locale != read[0].locale):
            self._mutes_changed(app_id, user)  # their streams read both again
        return stored

    def _mutes_changed(self, app_id: str, user: str) -> None:
        """The user's in-app mutes or locale may have changed (committed):
        their streams, on every node, read them again, and then their counts
        (docs/delivery.md#in-app-mutes-and-feed-items)."""
        self.hub.cache.user_changed((app_id, user))
        self.broker.publish(user_channel(app_id, user), MutesChanged())

    async def group_members(self, app_id: str, user: str, nid: str, *, limit: int,
                            before: str | None, locale: str | None = None) -> dict:
        """The user's group entry holding ``nid`` and its members, newest first."""
        found = await self.store.group_members(app_id, user, nid, limit=limit, before=before,
                                               now=time.time())
        if found is None:
            raise NotFound("no group entry of this inbox holds that notification", field="id")
        entry, members = found
        assert entry.group is not None  # a group entry
        lang = ""
        if any(locales.has_locales(e.body) for e in (entry, *members)):
            lang = await self._locale(app_id, user, locale)
        return {
            "id": entry.id, "state": entry.state, "seq": entry.seq,
            "notification": msgspec.Raw(locales.resolve(entry.body, lang)),
            "group": msgspec.Raw(entry.group),
            "items": [{"id": m.id, "notification": msgspec.Raw(locales.resolve(m.body, lang))}
                      for m in members],
            "next_before": members[-1].id if len(members) == limit else None,
        }

    # -- scheduled delivery and delivery tracking -----------------------------------
    async def fire_due(self, now: float, limit: int) -> list[PublishOutcome]:
        """Publish the scheduled notifications due by ``now`` (scheduler.py),
        under the app's frequency caps as they stand now: each recipient's
        token is taken when it fires, not when it was booked (a cap limits
        interruptions, and this is when it interrupts), and only by the node
        that fires it.  Its outbound jobs commit with it."""
        await self._requeue_fired(now)
        # What each one fired was prepared with, by (app, id): the store may
        # run a fire's transaction again (a retry), and the tokens were taken.
        prepared: dict[tuple[str, str], tuple[NewNotification, OutboundCounts | None]] = {}

        async def prepare(app_id: str, item: NewNotification) -> None:
            # after the store's claim, in the fire's transaction (Store.fire_due)
            key = (app_id, item.id)
            if key in prepared:
                done, _ = prepared[key]
                item.users, item.topic, item.jobs = done.users, done.topic, done.jobs
                return
            # as at publish: the others when some are over their cap and it
            # has no group key (a topic becomes its members of now), and no
            # jobs for those over it; the delay and quiet hours count from now
            capped = await self.limits.apply_caps(app_id, item, item.group_key)
            priority = _decode_notification(item.body).priority
            counts = await self._plan_outbound(app_id, item, priority, capped, since=now)
            prepared[key] = (item, counts)

        fired = await self.store.fire_due(
            now, limit, fanout_threshold=self.settings.fanout_threshold, prepare=prepare)
        outcomes = []
        for app_id, out in fired:
            if out.status == "accepted":
                self._announce(app_id, out)
                self.published += 1
                topic = out.audience if out.audience not in (None, "*") else None
                self.hub.metrics.published(app_id, "accepted", out.recipients, topic)
                item, counts = prepared.get((app_id, out.id), (None, None))
                if item is not None and item.jobs and counts is not None and not out.unqueued:
                    await self.outbound.queued(app_id, out.id, counts, out.replaced)
            outcomes.append(out)
        return outcomes

    async def _requeue_fired(self, now: float) -> None:
        """Queue the outbound jobs of notifications that fired more than
        REQUEUE_AFTER ago and still have none: their jobs could not be
        written with the fire (it published them without), or a node of an
        older version fired them and stopped before queueing them
        (store.fired_unqueued)."""
        for app_id, nid, fired_at in await self.store.fired_unqueued(now - REQUEUE_AFTER, 100):
            stored = await self.store.get_notification(app_id, nid)
            users = await self.store.recipients_of(app_id, nid) if stored else []
            if stored is None or stored.feed_offset is not None or not await self._fired_outbound(
                    app_id, nid, stored.body, users, fired_at):
                await self.store.mark_queued([(app_id, nid)])

    async def next_due(self) -> float | None:
        """When the earliest scheduled notification or snooze is due (the
        scheduler's sleep)."""
        due = [t for t in (await self.store.next_due(), await self.store.next_snooze())
               if t is not None]
        return min(due, default=None)

    async def _fired_outbound(self, app_id: str, nid: str, body: bytes, users: list[str],
                              now: float) -> bool:
        """A scheduled notification fired without its jobs: queue its
        webhooks, pushes and e-mails for ``users`` (the holders of its inbox
        entries: :meth:`_requeue_fired`), the fallback delay and quiet hours
        counting from ``now``.
        The jobs commit with the notification's "fired" -> "sent"; False
        when there is nothing to queue.  A store error is logged and leaves
        it "fired", for a later pass."""
        try:
            if not users or not await self.outbound.wanted(app_id):
                return False
            note = _decode_notification(body)
            expires = (datetime.fromisoformat(note.expires_at).timestamp()
                       if note.expires_at else None)
            jobs, counts = await self.outbound.plan(
                app_id, nid, body, category=note.category, priority=note.priority,
                created_at=now, expires_at=expires, group_key=note.group_key, users=users)
            if not jobs:
                return False
            replaced = await self.store.enqueue_jobs(jobs, fired=(app_id, nid))
            await self.outbound.queued(app_id, nid, counts, replaced)
        except Exception:  # it is published; a store error must not stop the scheduler
            log.exception("queueing outbound jobs of scheduled %s failed", nid)
        return True

    def track(self, app_id: str, nid: str, channel: str, field: str, n: int = 1) -> None:
        """Count a delivery event of ``channel`` for notification ``nid``
        ("webhook", "sent"): batched in memory, written by
        :meth:`flush_tracking`, shown by ``GET /v1/notifications/{id}`` and
        /metrics.  Costs a dict update; never waits for the store."""
        self.hub.tracking.add(app_id, nid, channel, field, n)
        self.hub.metrics.track(app_id, channel, field, n)

    async def flush_tracking(self) -> None:
        """Write the delivery counters gathered since the last flush (the
        app runs this every second and at shutdown).  On a store error they
        are kept for the next try, and the error propagates.  A flush waits
        for one under way, so that once it returns every counter gathered
        before it was called is in the store (or kept after an error)."""
        async with self._flushing:
            await self._flush_tracking()

    async def _flush_tracking(self) -> None:
        tracking = self.hub.tracking
        for (app, field), n in tracking.fold().items():
            self.hub.metrics.track(app, "in_app", field, n)
        counts = tracking.take()
        if counts:
            try:
                await self.store.record_deliveries(counts)
            except BaseException:
                tracking.restore(counts)
                raise
        receipts = self.receipts.take()
        if receipts:
            try:
                await self.store.record_receipts(receipts)
            except BaseException:
                self.receipts.restore(receipts)
                raise

    def receive_receipts(self, app_id: str, user: str, receipts: Receipts) -> int:
        """A device's batch of receipts posted over HTTP (tidings.core.receipts):
        held in memory, written by :meth:`flush_tracking`. Costs a dict
        update per id."""
        return self.receipts.add(app_id, user, receipts, HTTP_DEVICE, time.time())

    def device_message(self, app_id: str, user: str, device: str, raw: bytes | str) -> bool:
        """A message a device sent on its WebSocket after ``hello``: receipts
        are held (as ``device``'s, the connection's own id, unless the batch
        names its device) and True returned; False for anything else (the
        transport's own messages, tidings/gateway/transports.py)."""
        receipts = decode_receipts(raw)
        if receipts is None:
            return False
        self.receipts.add(app_id, user, receipts, device, time.time())
        return True

    @staticmethod
    async def send_error(send: Callable[[dict], Awaitable[None]], exc: TidingsError, *,
                         prefix: str = "http") -> None:
        """Answer a raw ASGI HTTP request with the JSON error for ``exc``;
        ``prefix="websocket.http"``: a WebSocket's upgrade, refused before
        it is accepted (the ASGI WebSocket Denial Response extension)."""
        body = _encode(exc.to_dict())
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        retry = getattr(exc, "retry_after", None)
        if retry is not None:
            headers.append((b"retry-after", str(max(1, int(retry + 0.999))).encode()))
        await send({"type": f"{prefix}.response.start", "status": exc.status,
                    "headers": headers})
        await send({"type": f"{prefix}.response.body", "body": body})
