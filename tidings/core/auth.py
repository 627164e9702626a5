"""API keys and user tokens (pure functions; no I/O).

API keys: ``tk_<prefix>_<secret>``.  Only the visible prefix and a keyed hash
(HMAC-SHA256 under a per-install pepper) are stored, so a leaked database does
not leak usable keys.

User tokens: JWT signed HS256 with the app's signing secret.  The algorithm is
pinned (RFC 8725 §3.1): ``alg: none`` and every other algorithm are refused,
``exp`` is required, and ``sub`` (user) and ``app`` claims must be present.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import jwt

from tidings.core.models import valid_user
from tidings.errors import Unauthorized

SCOPES = frozenset({"publish", "read", "admin"})
ALGORITHM = "HS256"


def new_api_key() -> tuple[str, str]:
    """Return ``(key, prefix)``; the key is shown once and never stored."""
    prefix = secrets.token_hex(4)
    return f"tk_{prefix}_{secrets.token_urlsafe(24)}", prefix


def split_api_key(key: str) -> str | None:
    """The prefix of a well-formed key, or None."""
    if not isinstance(key, str) or len(key) > 128 or not key.startswith("tk_"):
        return None
    parts = key.split("_", 2)
    if len(parts) != 3 or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1]


def hash_api_key(key: str, pepper: bytes) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def new_signing_secret() -> str:
    return secrets.token_urlsafe(32)


def mint_token(app: str, user: str, secret: str, ttl: int, now: float | None = None) -> str:
    now = time.time() if now is None else now
    claims = {"sub": user, "app": app, "iat": int(now), "exp": int(now) + int(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def unverified_app(token: str) -> str | None:
    """The ``app`` claim before verification, to find which secret to verify with."""
    if not isinstance(token, str) or len(token) > 4096:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    app = claims.get("app")
    return app if isinstance(app, str) else None


def verify_token(token: str, secret: str) -> tuple[str, str, int]:
    """Verify and return ``(app, user, exp)``; raise :class:`Unauthorized`."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: never trust the header's alg
            options={"require": ["exp", "sub"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("token is not valid", code="bad_token") from None
    app, user = claims.get("app"), claims.get("sub")
    if not isinstance(app, str) or not isinstance(user, str) or not valid_user(user):
        raise Unauthorized("token is missing its app or user", code="bad_token")
    return app, user, int(claims["exp"])
