"""Apps: their records cached, and their signing secrets rotated.

A rotation (``rotate``: ``POST /v1/signing-secret/rotate``, ``tidings app
rotate-secret``) gives the app a new signing secret and keeps the one it
replaces for an overlap: tokens signed with it are still taken until
``previous_until`` (``Service.token_claims``), then refused.  With an overlap
of 0 (a leaked secret) they are refused at once.

Every node caches app records (``cache``) and the tokens it verified
(``Service._tokens``), and holds live streams opened with tokens; a secret
that is no longer taken must stop working in all three, on every node.  The
way mirrors API keys' revocation (tidings/service/keys.py,
docs/security.md#rotating-the-signing-secret):

* **at once on the node that rotated** (``rotate`` applies the new record
  before it answers);
* **on every other node as soon as the broker's ``SecretRotated`` arrives**
  (on ``KEYS_CHANNEL``, which every node listens to): the app's cached record
  and tokens are dropped at once, the record read again, and what it no
  longer takes ended;
* **within ``APP_CACHE_TTL`` whatever happens**: an app record is trusted for
  at most that long, and a token verified with it no longer than the record
  (the net for a lost message, and for ``tidings app rotate-secret`` on a
  SQLite file a server uses); every ``SWEEP_INTERVAL`` a node reads again the
  records of apps it has streams of whose entry expired, so a stream ends
  too when nothing else asks for its app.

An app id the store does not know is remembered too (``missing``, as long
and as many as ``cache``): a token naming it is refused without a read, so
forged tokens naming random apps cost the store at most one read per id per
``APP_CACHE_TTL``.  An app created on this node is known at once
(``created``); one created elsewhere (another node, ``tidings app create``)
within ``APP_CACHE_TTL``, as nothing announces a creation.

"Applying" a record the node had not seen (``_seen``) drops the app's cached
tokens and ends each open stream of the app whose token was verified with a
secret the record no longer takes: at the overlap's end for the previous
secret, at once for any other (``Stream.end_by``: close 4004, "token
expired", after which clients reconnect with a fresh token).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from tidings.broker.base import KEYS_CHANNEL, Broker, Message, SecretRotated
from tidings.config import Settings
from tidings.core import auth
from tidings.core.audit import Actor, new_entry
from tidings.core.lru import LRU
from tidings.errors import Invalid, NotFound
from tidings.gateway.hub import Hub
from tidings.store.base import AppRecord, Store

__all__ = ["APP_CACHE_TTL", "SWEEP_INTERVAL", "Apps", "rotated"]

log = logging.getLogger("tidings")

# Seconds a node trusts an app record it read (and a token verified with
# it): the longest a retired secret still works on a node the broker's
# message did not reach.
APP_CACHE_TTL = 5.0
# Seconds between two looks at the apps this node has streams of.
SWEEP_INTERVAL = 1.0


def rotated(record: AppRecord, now: float) -> dict:
    """What a rotation answers (the API's and the CLI's JSON): the new
    secret, shown this once, and until when the previous one is still taken
    (null: it is refused already)."""
    previous = record.previous(now)
    until = record.previous_until if previous is not None else None
    return {"app": record.id, "signing_secret": record.signing_secret,
            "previous_secret_valid_until": None if until is None else
            datetime.fromtimestamp(until, UTC).isoformat(timespec="milliseconds")}


def _secrets(record: AppRecord) -> tuple[str, str | None, float | None]:
    return record.signing_secret, record.previous_secret, record.previous_until


class Apps:
    def __init__(self, settings: Settings, store: Store, broker: Broker, hub: Hub,
                 tokens: LRU):
        self.settings = settings
        self.store = store
        self.broker = broker
        self.hub = hub
        self.tokens = tokens  # Service._tokens: digest -> (app, user, until, secret)
        self.caching = settings.cache
        self.cache: LRU[str, AppRecord] = LRU(10_000, ttl=APP_CACHE_TTL)
        # app ids the store did not know: bounded, so random ids cannot grow it
        self.missing: LRU[str, bool] = LRU(10_000, ttl=APP_CACHE_TTL)
        # the secrets of each app as this node last applied them (_seen)
        self._known: dict[str, tuple[str, str | None, float | None]] = {}
        self._rotations = 0  # rotations heard (and broker reconnects, apps created)
        self._rereads: set[asyncio.Task] = set()

    def open(self) -> None:
        self.broker.on_reconnect(self._forget_all)

    # -- records ------------------------------------------------------------------------
    async def get(self, app_id: str) -> AppRecord | None:
        """The app's record: cached for at most APP_CACHE_TTL, else read; None
        for an app the store did not know within APP_CACHE_TTL."""
        if self.caching:
            record = self.cache.get(app_id)
            if record is not None:
                return record
            if app_id in self.missing:
                return None
        return await self.read(app_id)

    async def read(self, app_id: str) -> AppRecord | None:
        """The app's record from the store, applied (``_seen``) and cached.
        A read during which a rotation was heard may predate it: it is read
        again, and an answer still in doubt is used but neither applied nor
        cached."""
        heard = self._rotations
        record = await self.store.get_app(app_id)
        if heard != self._rotations:
            heard = self._rotations
            record = await self.store.get_app(app_id)
        if record is not None and heard == self._rotations:
            self._seen(record)
            if self.caching:
                self.cache.put(app_id, record)
        elif record is None and heard == self._rotations and self.caching:
            self.missing.put(app_id, True)
        return record

    def created(self, record: AppRecord) -> None:
        """This node created the app: it is usable at once, even if a token
        naming it was refused a moment ago, or a read of it is under way."""
        self._rotations += 1  # a read under way may predate the creation
        self.missing.pop(record.id)

    def trust_left(self, app_id: str) -> float:
        """Seconds this node still trusts its record of the app: how long a
        token verified with it may be cached."""
        return self.cache.remaining(app_id)

    # -- rotation -------------------------------------------------------------------------
    async def rotate(self, app_id: str, overlap: float | None = None, *,
                     actor: Actor | None = None) -> AppRecord:
        """A new signing secret for the app; the one it replaces is still
        taken for ``overlap`` seconds (default and maximum: the limit
        ``token_max_ttl``, so that a token minted just before lives its whole
        life; 0: refused at once).  ``actor``: who asks, recorded in the
        app's audit log in the rotation's transaction (None: not recorded)."""
        longest = self.settings.limits.token_max_ttl
        if overlap is None:
            overlap = longest
        if not 0 <= overlap <= longest:
            raise Invalid(f"overlap is 0 to {longest} seconds (token_max_ttl)",
                          field="overlap")
        now = time.time()
        audit = None if actor is None else new_entry(
            app_id, actor, "signing_secret.rotate", app_id, now, overlap=overlap)
        record = await self.store.rotate_signing_secret(
            app_id, auth.new_signing_secret(), now + overlap, audit=audit)
        if record is None:
            raise NotFound(f"no such app {app_id!r}", field="app")
        self._rotations += 1
        self._seen(record, force=True)  # here, before the answer
        if self.caching:
            self.cache.put(app_id, record)
        self.broker.publish(KEYS_CHANNEL, SecretRotated(app_id))  # every other node
        return record

    def _seen(self, record: AppRecord, force: bool = False) -> None:
        """``record`` is the app's latest: when its secrets are not those
        this node last applied, stop taking what it no longer takes."""
        secrets = _secrets(record)
        known = self._known.get(record.id)
        self._known[record.id] = secrets
        if known is None and not force or known == secrets:
            return
        self.tokens.pop_where(lambda hit: hit[0] == record.id)
        streams = self.hub.apps.get(record.id)
        if not streams:
            return
        now = time.time()
        previous = record.previous(now)
        ended = 0
        for stream in list(streams):
            if stream.secret is None or stream.secret == record.signing_secret:
                continue
            until = record.previous_until if stream.secret == previous else now
            stream.end_by(until or now)
            ended += 1
        if ended:
            log.info("app %s: signing secret rotated, %d open streams end by %s",
                     record.id, ended, "now" if previous is None else record.previous_until)

    # -- what other nodes say -------------------------------------------------------------
    def on_message(self, message: Message) -> None:
        if isinstance(message, SecretRotated):
            self._heard(message.app)

    def _heard(self, app_id: str) -> None:
        """Another node (or a command) rotated the app's secret: stop trusting
        what this node holds of it now, and read the app again."""
        self._rotations += 1
        self.cache.pop(app_id)
        self.missing.pop(app_id)  # it exists
        self.tokens.pop_where(lambda hit: hit[0] == app_id)
        if app_id in self._known:  # streams need the new record to know what ends
            self._reread(app_id)

    def _reread(self, app_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._read_quietly(app_id))
        self._rereads.add(task)
        task.add_done_callback(self._rereads.discard)

    async def _read_quietly(self, app_id: str) -> None:
        try:
            await self.read(app_id)
        except Exception as exc:  # the store is down: the sweep reads it again
            log.warning("app %s: reading its record after a rotation failed: %s", app_id, exc)

    def _forget_all(self) -> None:
        """The broker reconnected: rotations sent meanwhile may be lost."""
        self._rotations += 1
        self.cache.clear()
        self.missing.clear()
        self.tokens.clear()

    async def sweep(self) -> None:
        """Forever: read again the records of apps with streams here whose
        cached record expired, so that their streams end within
        APP_CACHE_TTL + SWEEP_INTERVAL of a rotation no message announced."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for app_id in list(self.hub.apps):
                if app_id in self.cache:
                    continue
                try:
                    await self.read(app_id)
                except Exception as exc:  # the store is down: next time
                    log.debug("app %s: sweep read failed: %s", app_id, exc)
                    break
