"""Dashboard sessions: a signed, expiring cookie (pure functions; no I/O).

An operator pastes an admin-scoped API key into the login form once; the
dashboard answers with a cookie that names the key's app and prefix and an
expiry, signed with HMAC-SHA256 under a secret derived from the install's
pepper (the secret that keys API-key hashes).  Every node of a cluster shares
the store and so the pepper, so a session opened on one node is valid on all
of them, and it survives restarts.  The key itself is never stored in the
cookie.

Format: ``v1.<app>.<key prefix>.<expires, unix seconds>.<signature>``; app
ids are ``[a-z0-9_-]`` and prefixes hex, so ``.`` cannot occur inside a part.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

COOKIE = "tidings_dashboard"
SESSION_TTL = 12 * 3600
_VERSION = "v1"
_PART = re.compile(r"^[a-z0-9_\-]{1,64}\Z")
_PREFIX = re.compile(r"^[0-9a-f]{1,16}\Z")
_MAX_COOKIE = 256


@dataclass(frozen=True, slots=True)
class Session:
    app: str
    prefix: str
    expires: int


class BadSession(Exception):
    """The cookie is malformed, forged or expired; ``reason`` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def session_secret(pepper: bytes) -> bytes:
    """The signing key, derived so it can never be mistaken for a key hash."""
    return hmac.new(pepper, b"tidings dashboard session v1", hashlib.sha256).digest()


def _sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issue(secret: bytes, app: str, prefix: str, now: float, ttl: int = SESSION_TTL) -> str:
    payload = f"{_VERSION}.{app}.{prefix}.{int(now) + int(ttl)}"
    return f"{payload}.{_sign(secret, payload)}"


def verify(secret: bytes, value: str | None, now: float) -> Session:
    """The session in ``value``; :class:`BadSession` when it is not valid."""
    if not value:
        raise BadSession("missing")
    if len(value) > _MAX_COOKIE or not value.isascii():
        raise BadSession("malformed")
    parts = value.split(".")
    if len(parts) != 5 or parts[0] != _VERSION:
        raise BadSession("malformed")
    _, app, prefix, expires, sig = parts
    if not (_PART.match(app) and _PREFIX.match(prefix) and expires.isdigit()
            and len(expires) <= 12):
        raise BadSession("malformed")
    expected = _sign(secret, ".".join(parts[:4]))
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        raise BadSession("forged")
    if int(expires) <= now:
        raise BadSession("expired")
    return Session(app, prefix, int(expires))
