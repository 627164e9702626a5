"""Dashboard sessions: a signed, expiring cookie (pure functions; no I/O).

An operator pastes an admin-scoped API key into the login form once; the
dashboard answers with a cookie that names the key's app and prefix and an
expiry, signed with HMAC-SHA256 under a secret derived from the install's
pepper (the secret that keys API-key hashes).  Every node of a cluster shares
the store and so the pepper, so a session opened on one node is valid on all
of them, and it survives restarts.  The key itself is never stored in the
cookie.

Each session has a random id of its own, so that logging out can end that
session, and no other, on every node: the id is kept in the store until the
session expires (tidings/service/sessions.py), and a cookie whose id is
there is refused however it was kept or copied.

Format: ``v2.<app>.<key prefix>.<expires, unix seconds>.<id>.<signature>``;
app ids are ``[a-z0-9_-]``, prefixes hex and ids URL-safe base64, so ``.``
cannot occur inside a part.  A ``v1`` cookie (before sessions had an id,
so one that no logout could end) is refused as malformed: log in again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

COOKIE = "tidings_dashboard"
SESSION_TTL = 12 * 3600
_VERSION = "v2"
_PART = re.compile(r"^[a-z0-9_\-]{1,64}\Z")
_PREFIX = re.compile(r"^[0-9a-f]{1,16}\Z")
_ID = re.compile(r"^[A-Za-z0-9_\-]{16,43}\Z")
_MAX_COOKIE = 256


@dataclass(frozen=True, slots=True)
class Session:
    app: str
    prefix: str
    expires: int
    id: str  # this session's own: a logout ends it (and no other)


class BadSession(Exception):
    """The cookie is malformed, forged or expired; ``reason`` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def session_secret(pepper: bytes) -> bytes:
    """The signing key, derived so it can never be mistaken for a key hash."""
    return hmac.new(pepper, b"tidings dashboard session v1", hashlib.sha256).digest()


def node_label_key(secret: bytes) -> bytes:
    """The key of the node labels an app's admins see (views.Views.label),
    derived from the session key so that neither can stand for the other."""
    return hmac.new(secret, b"tidings dashboard node labels v1", hashlib.sha256).digest()


def _sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def new_id() -> str:
    """A session id: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)


def issue(secret: bytes, app: str, prefix: str, now: float, ttl: int = SESSION_TTL,
          session_id: str | None = None) -> str:
    payload = f"{_VERSION}.{app}.{prefix}.{int(now) + int(ttl)}.{session_id or new_id()}"
    return f"{payload}.{_sign(secret, payload)}"


def verify(secret: bytes, value: str | None, now: float) -> Session:
    """The session in ``value``; :class:`BadSession` when it is not valid."""
    if not value:
        raise BadSession("missing")
    if len(value) > _MAX_COOKIE or not value.isascii():
        raise BadSession("malformed")
    parts = value.split(".")
    if len(parts) != 6 or parts[0] != _VERSION:
        raise BadSession("malformed")
    _, app, prefix, expires, session_id, sig = parts
    if not (_PART.match(app) and _PREFIX.match(prefix) and expires.isdigit()
            and len(expires) <= 12 and _ID.match(session_id)):
        raise BadSession("malformed")
    expected = _sign(secret, ".".join(parts[:5]))
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        raise BadSession("forged")
    if int(expires) <= now:
        raise BadSession("expired")
    return Session(app, prefix, int(expires), session_id)
