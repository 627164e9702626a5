"""Users' tokens revoked: a user's tokens issued before a cutoff are refused
on every node, and the streams they opened end.

A revocation (``revoke``: ``POST /v1/users/{user}/tokens/revoke``, ``tidings
revoke-tokens``) gives the user a **cutoff**, the next whole second: every
token of that user (in that app) whose ``iat`` is before it is refused with
``401 token_revoked``, and so is one without an ``iat``, which cannot show
it is newer.  ``iat`` is whole seconds, so the cutoff is too, and the answer
waits for it (under a second): a token minted after the answer is taken,
one minted in the same second before it is not.  A later revocation moves
the cutoff later; an earlier one never moves it back (the store keeps the
later one).

The check is on the hot path of every client call, so it is answered from
memory: every node holds every cutoff (``before``: ``(app, user) ->
cutoff``), and ``Service.authenticate_token`` asks it for each token, a
cached one included (a dict lookup; nothing when no user is revoked).  The
cutoffs reach every node the way revoked API keys do (tidings/service/keys.py,
docs/security.md#revoking-a-users-tokens):

* **at once on the node that revoked** (``revoke`` applies the cutoff before
  it answers);
* **on every other node as soon as the broker's ``TokensRevoked`` arrives**
  (on ``KEYS_CHANNEL``, which every node listens to; the message carries the
  cutoff, so nothing is read);
* **within ``REFRESH_INTERVAL`` whatever happens**: every node reads the
  cutoffs written since its last read (``REFRESH_SLACK`` earlier, for clocks
  and slow commits), the net for a lost message and for a revocation no
  broker carried (``tidings revoke-tokens`` on the SQLite file a server uses).

Applying a cutoff (``apply``) ends each open stream of the user on this node
whose token predates it, when the cutoff comes (at once on a node that hears
of it later): a WebSocket closes with 4401 (``token revoked``: do not
reconnect with that token; ``tidings.js`` and the ``Subscriber`` get a new
one from their token source, which from then on is taken), an SSE response
ends (the browser's reconnect with the old token is refused ``401
token_revoked``).  A token tidings mints for the user before the cutoff has
come carries the cutoff as its ``iat`` (``Service.mint_token``), so a client
refused in that second gets one that is taken.

A cutoff older than ``token_max_ttl`` (plus the clock leeway) refuses nothing
that has not expired: no token tidings mints lives longer.  A node forgets
it at its next refresh, the store at the app's next revocation, which keeps
the table to the revocations of the last 30 days; at most
``max_token_revocations`` users of an app are in it at a time.

**One token** (``revoke_one``: the same route with ``{"jti": …}`` or
``{"token": …}`` as its body, ``tidings revoke-tokens --jti``): a stolen
phone's token, the user's other devices untouched.  Every token tidings
mints carries a random ``jti`` (tidings/core/auth.py); a revocation of one
refuses the user's token carrying it (``ids``: ``(app, user, jti) ->
until``) until it expires: ``until`` is the token's ``exp`` (plus the
leeway) when the revocation names the token, ``horizon`` from now when it
names only the jti (no token tidings mints lives longer).  It travels as a
cutoff does (``TokenRevoked`` on the broker, the same refresh), and ends the
open streams opened with that token at once (no second to wait for: the
token is refused whatever its ``iat``).  A token without a ``jti`` is never
looked up: the check is a set lookup for a token with one, nothing while no
token is revoked.  At most ``max_revoked_tokens`` tokens of an app are
revoked at a time; a node forgets one once it has expired, the store at the
app's next revocation of a token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from tidings.broker.base import KEYS_CHANNEL, Broker, Message, TokenRevoked, TokensRevoked
from tidings.config import Settings
from tidings.core import auth
from tidings.core.audit import Actor, AuditEntry, new_entry
from tidings.errors import CLOSE_UNAUTHORIZED, Conflict, Invalid, Unauthorized
from tidings.gateway.hub import Hub
from tidings.store.base import AppRecord, Store

__all__ = ["REFRESH_INTERVAL", "REFRESH_SLACK", "REVOKED_REASON", "Revocations", "revoked",
           "revoked_one"]

log = logging.getLogger("tidings")

# Seconds between two reads of the cutoffs written meanwhile: the longest a
# revoked token still works on a node the broker's message did not reach.
REFRESH_INTERVAL = 5.0
# How much earlier than its last read a node reads again: cutoffs written
# by a node whose clock is behind, or committed late, are not missed.
REFRESH_SLACK = 60.0
# The close reason of a stream whose token was revoked (and the 401's message).
REVOKED_REASON = "token revoked"


def revoked(user: str, before: float) -> dict:
    """What a revocation answers (the API's and the CLI's JSON): every token
    of ``user`` whose ``iat`` is before ``revoked_before`` (Unix seconds) is
    refused, one issued at or after it is taken."""
    return {"user": user, "revoked_before": math.ceil(before)}


def revoked_one(user: str, jti: str, until: float) -> dict:
    """What a revocation of one token answers: the token of ``user`` whose
    ``jti`` is this is refused until ``revoked_until`` (Unix seconds, when it
    expires; in the past: it had, and nothing was stored)."""
    return {"user": user, "jti": jti, "revoked_until": math.ceil(until)}


# The latest end a revocation of one token is kept until: a token signed
# with an exp beyond any float (PyJWT takes any integer) is kept "forever".
_FOREVER = 2**53


class Revocations:
    def __init__(self, settings: Settings, store: Store, broker: Broker, hub: Hub):
        self.settings = settings
        self.store = store
        self.broker = broker
        self.hub = hub
        # (app, user) -> cutoff: the one table every token check reads.  The
        # dict is never replaced (Service holds it too).
        self.before: dict[tuple[str, str], float] = {}
        # (app, user, jti) -> until: the tokens revoked one by one, read by
        # every check of a token with a jti (never replaced either)
        self.ids: dict[tuple[str, str, str], float] = {}
        self._read_at: float | None = None  # when the last read began (refresh)

    @property
    def horizon(self) -> float:
        """Seconds after which a cutoff refuses nothing that has not expired."""
        return self.settings.limits.token_max_ttl + auth.LEEWAY

    async def open(self) -> None:
        """Every cutoff that may still refuse a token (after the broker
        channel is listened to: nothing falls between the two)."""
        await self.refresh()

    # -- the check ------------------------------------------------------------------------
    def refuses(self, app: str, user: str, issued: int | None, jti: str | None = None) -> bool:
        """Whether a token of ``user`` issued at ``issued`` (its ``iat``;
        None: it has none) with the ``jti`` (None: it has none) is revoked."""
        before = self.before.get((app, user))
        if before is not None and (issued is None or issued < before):
            return True
        ids = self.ids  # a set lookup for a token with a jti, while any is revoked
        return bool(ids) and jti is not None and (app, user, jti) in ids

    def check(self, app: str, user: str, issued: int | None, jti: str | None) -> None:
        """``refuses``, as the 401 it means."""
        if (self.before or self.ids) and self.refuses(app, user, issued, jti):
            raise Unauthorized(REVOKED_REASON, code="token_revoked")

    # -- revoking -------------------------------------------------------------------------
    async def revoke(self, app_id: str, user: str, *, actor: Actor | None = None) -> float:
        """Revoke every token of the app's ``user`` issued until now: the
        cutoff, once it has come (the caller checked the app and the user).
        ``actor``, here and in ``revoke_one``: who asks, recorded in the
        app's audit log in the change's transaction (None: not recorded)."""
        now = time.time()
        cutoff = float(math.floor(now) + 1)
        limit = self.settings.limits.max_token_revocations

        def record(before: float) -> AuditEntry:
            assert actor is not None
            return new_entry(app_id, actor, "tokens.revoke", user, now, before=before)

        stored = await self.store.revoke_tokens(app_id, user, cutoff, now - self.horizon,
                                                limit=limit,
                                                audit=None if actor is None else record)
        if stored is None:
            raise Conflict(f"an app has at most {limit} users whose tokens were revoked "
                           "within token_max_ttl: to end every token of the app, rotate its "
                           "signing secret with an overlap of 0", code="limit_reached")
        self.apply(app_id, user, stored)  # here, before the answer
        self.broker.publish(KEYS_CHANNEL, TokensRevoked(app_id, user, stored))  # every other node
        # iat is whole seconds: from the cutoff on, a new token is taken (the
        # loop's clock may wake a hair before the wall clock's second)
        while (wait := cutoff - time.time()) > 0:
            await asyncio.sleep(wait)
        return stored

    def apply(self, app_id: str, user: str, before: float) -> None:
        """The user's cutoff is ``before`` (or later): refuse the tokens it
        predates, and end the streams this node holds of them."""
        key = (app_id, user)
        known = self.before.get(key)
        if known is not None and known >= before:
            return
        self.before[key] = before
        if key in self.hub.users:
            self._end(app_id, user, before)

    def _end(self, app_id: str, user: str, before: float) -> None:
        """End the user's streams whose token predates ``before`` once it has
        come (under a second): their clients reconnect with a new token, and
        one minted before the cutoff, in the same second as the revocation,
        would be refused and stop them."""
        wait = before - time.time()
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self._end, app_id, user, before)
            return
        ended = 0
        for stream in list(self.hub.users.get((app_id, user), ())):
            if stream.issued is None or stream.issued < before:
                stream.close(CLOSE_UNAUTHORIZED, REVOKED_REASON)
                ended += 1
        if ended:
            log.info("app %s: the tokens of a user were revoked, %d open streams end",
                     app_id, ended)

    # -- one token -----------------------------------------------------------------------
    async def revoke_one(self, record: AppRecord, user: str, *, jti: str | None = None,
                         token: str | None = None,
                         actor: Actor | None = None) -> tuple[str, float]:
        """Revoke the token of the app's ``user`` named by ``jti``, or the
        ``token`` itself (exactly one): ``(jti, until)``, refused on this
        node from the answer on.  ``record`` is the app's (the caller
        checked the user); 422 for a token that is not the user's, or has no
        jti to be refused by."""
        now = time.time()
        if token is not None:
            previous = record.previous(now)
            secrets = (record.signing_secret,) if previous is None \
                else (record.signing_secret, previous)
            try:
                app, owner, exp, jti = auth.revocable(token, secrets)
            except Unauthorized:
                raise Invalid("token is not a token of this app (malformed, or not signed "
                              "with its signing secret)", field="token") from None
            if (app, owner) != (record.id, user):
                raise Invalid("token is not a token of this user", field="token")
            if jti is None:
                raise Invalid("token has no jti to revoke it by: revoke every token of the "
                              "user (no body)", field="token")
            if not auth.valid_jti(jti):
                raise Invalid("token's jti is not 1-128 characters without control "
                              "characters: revoke every token of the user (no body)",
                              field="token")
            end = exp + auth.LEEWAY
            if end <= now:  # expired: already refused everywhere, nothing to store
                if actor is not None:
                    await self.store.add_audit(new_entry(record.id, actor, "token.revoke", user,
                                                         now, jti=jti, until=max(end, 0)))
                return jti, max(end, 0)
            until = float(min(end, _FOREVER))
        elif jti is not None and auth.valid_jti(jti):
            until = now + self.horizon  # no token tidings mints lives longer
        else:
            raise Invalid("jti is 1-128 characters without control characters", field="jti")
        limit = self.settings.limits.max_revoked_tokens
        revoked_jti = jti

        def entry(until: float) -> AuditEntry:
            assert actor is not None
            return new_entry(record.id, actor, "token.revoke", user, now, jti=revoked_jti,
                             until=until)

        stored = await self.store.revoke_token_id(record.id, user, jti, until, now, limit=limit,
                                                  audit=None if actor is None else entry)
        if stored is None:
            raise Conflict(f"an app has at most {limit} tokens revoked one by one that have "
                           "not expired: revoke every token of the user (no body), or rotate "
                           "the app's signing secret", code="limit_reached")
        self.apply_one(record.id, user, jti, stored)  # here, before the answer
        self.broker.publish(KEYS_CHANNEL, TokenRevoked(record.id, user, jti, stored))
        return jti, stored

    def apply_one(self, app_id: str, user: str, jti: str, until: float) -> None:
        """The user's token ``jti`` is refused until ``until`` (or later):
        refuse it, and end the streams this node holds of it, at once."""
        if until <= time.time():
            return  # expired: refused anyway
        key = (app_id, user, jti)
        known = self.ids.get(key)
        if known is not None and known >= until:
            return
        self.ids[key] = until
        ended = 0
        for stream in list(self.hub.users.get((app_id, user), ())):
            if stream.jti == jti:
                stream.close(CLOSE_UNAUTHORIZED, REVOKED_REASON)
                ended += 1
        if ended:
            log.info("app %s: a token was revoked, %d open streams end", app_id, ended)

    # -- what other nodes say -------------------------------------------------------------
    def on_message(self, message: Message) -> None:
        if isinstance(message, TokensRevoked):
            self.apply(message.app, message.user, message.before)
        elif isinstance(message, TokenRevoked):
            self.apply_one(message.app, message.user, message.jti, message.until)

    async def refresh(self) -> None:
        """Read the cutoffs and the tokens revoked one by one written since
        the last read (all of them the first time), apply them, and forget
        the cutoffs past the horizon and the tokens that have expired."""
        started = time.time()
        since = started - self.horizon if self._read_at is None \
            else self._read_at - REFRESH_SLACK
        for app_id, user, before in await self.store.token_revocations(since):
            self.apply(app_id, user, before)
        # a token's row is as old as its revocation, which may be older than
        # the horizon for a token a backend signed for longer
        since = 0.0 if self._read_at is None else self._read_at - REFRESH_SLACK
        for app_id, user, jti, until in await self.store.token_id_revocations(since, started):
            self.apply_one(app_id, user, jti, until)
        self._read_at = started
        oldest = started - self.horizon
        for key in [k for k, before in self.before.items() if before <= oldest]:
            del self.before[key]
        for one in [k for k, until in self.ids.items() if until <= started]:
            del self.ids[one]

    async def run(self) -> None:
        """Forever: ``refresh`` every REFRESH_INTERVAL (a read that fails
        is made again at the next, from the last one that worked)."""
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                await self.refresh()
            except Exception as exc:  # the store is down: next time
                log.warning("reading revoked tokens failed: %s", exc)
