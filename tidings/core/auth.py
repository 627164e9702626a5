"""API keys and user tokens (pure functions; no I/O).

API keys: ``tk_<prefix>_<secret>``.  Only the visible prefix and a keyed hash
(HMAC-SHA256 under a per-install pepper) are stored, so a leaked database does
not leak usable keys.

User tokens: JWT signed HS256 with the app's signing secret.  The algorithm is
pinned (RFC 8725 §3.1): ``alg: none`` and every other algorithm are refused,
``exp`` is required, and ``sub`` (user) and ``app`` claims must be present.
A token tidings mints carries a random ``jti`` (RFC 7519 §4.1.7), by which
that one token can be revoked (tidings/service/revocations.py).

PyJWT decides every token, but the cost of its checks (about 55 µs to read
the app and verify, on this project's machines) is more than the rest of a
request that reads an inbox page.  A token in the one shape tidings mints
(and most libraries' HS256 default: this exact header, the claims ``sub``,
``app``, ``exp`` and optionally ``iat`` and ``jti``, integers where PyJWT
wants them, a string where it wants one,
canonical base64url) is therefore checked here first with ``hmac`` and
msgspec, in about 5 µs; anything else, including every token this check
does not accept, goes to PyJWT as before.  The fast path accepts a token
only where PyJWT would, with the same claims (tests/core/test_auth.py
compares the two on generated tokens).

An app whose secret was rotated has two for a while (``verify_token_rotated``):
the current one and, until the rotation's overlap ends, the one it replaced.
A token is tried with the current secret first, then with the previous one;
each try is the one-secret decision above, fast path and PyJWT alike.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import re
import secrets
import time

import jwt
import msgspec
from jwt.algorithms import HMACAlgorithm

from tidings.core.models import valid_app_id, valid_user
from tidings.errors import Unauthorized

SCOPES = frozenset({"publish", "read", "admin"})
ALGORITHM = "HS256"


def new_api_key() -> tuple[str, str]:
    """Return ``(key, prefix)``; the key is shown once and never stored."""
    prefix = secrets.token_hex(4)
    return f"tk_{prefix}_{secrets.token_urlsafe(24)}", prefix


PREFIX_RE = r"^[0-9a-f]{8}\Z"  # a key's prefix, as new_api_key makes it
_PREFIX = re.compile(PREFIX_RE)


def valid_prefix(prefix: str) -> bool:
    """Whether ``prefix`` is one ``new_api_key`` could have made (8 lowercase
    hex characters): anything else names no key and never reaches a store."""
    return isinstance(prefix, str) and _PREFIX.match(prefix) is not None


def split_api_key(key: str) -> str | None:
    """The prefix of a well-formed key, or None."""
    if not isinstance(key, str) or len(key) > 128 or not key.startswith("tk_"):
        return None
    parts = key.split("_", 2)
    # 8 lowercase hex characters, as new_api_key makes them: nothing else (a
    # NUL, which PostgreSQL cannot compare) is looked up
    if len(parts) != 3 or not _PREFIX.match(parts[1]) or not parts[2]:
        return None
    return parts[1]


def hash_api_key(key: str, pepper: bytes) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def new_signing_secret() -> str:
    return secrets.token_urlsafe(32)


def new_token_id() -> str:
    """A token's ``jti``: 96 random bits, 16 URL-safe characters."""
    return secrets.token_urlsafe(12)


def valid_jti(jti: object) -> bool:
    """Whether ``jti`` can name a revoked token: 1-128 characters without
    control characters (the rule of user ids; PostgreSQL cannot hold a NUL)."""
    return isinstance(jti, str) and valid_user(jti)


def mint_token(app: str, user: str, secret: str, ttl: int, now: float | None = None,
               issued: int | None = None, jti: str | None = None) -> str:
    """A token of ``user`` for ``ttl`` seconds from ``now``; its ``iat`` is
    ``now`` unless ``issued`` says otherwise (a revocation's cutoff, at most
    a second ahead: tidings/service/revocations.py), its ``jti`` a new one
    unless given."""
    now = time.time() if now is None else now
    iat = int(now) if issued is None else int(issued)
    claims = {"sub": user, "app": app, "iat": iat, "exp": int(now) + int(ttl),
              "jti": new_token_id() if jti is None else jti}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


LEEWAY = 5  # seconds a token is still taken after its exp
# base64url of {"alg":"HS256","typ":"JWT"}: the header PyJWT writes for HS256
_HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
_FAST_CLAIMS = frozenset({"sub", "app", "exp", "iat", "jti"})
_claims_of = msgspec.json.Decoder(dict).decode


class _AppClaim(msgspec.Struct):
    app: str | None = None


_app_of = msgspec.json.Decoder(_AppClaim).decode


def _segment(text: str) -> bytes | None:
    """The bytes of a base64url segment in its canonical form (no padding,
    zero trailing bits, as PyJWT requires), or None."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text else None


def unverified_app(token: str) -> str | None:
    """The ``app`` claim before verification, to find which secret to verify
    with: only a hint, the verification decides."""
    if not isinstance(token, str) or len(token) > 4096:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = _segment(parts[1])
    if payload is None:
        return None
    try:
        app = _app_of(payload).app
    except (msgspec.DecodeError, RecursionError):  # not a JSON object, "app" not a
        return None  # string, or nested past the decoder's depth
    # Only an app id can name an app: anything else (a NUL, which PostgreSQL
    # cannot compare) never reaches the store.
    return app if app is not None and valid_app_id(app) else None


@functools.lru_cache(maxsize=1024)
def _hmac_key(secret: str) -> bytes | None:
    """The secret as HMAC key bytes, or None where PyJWT refuses it as an
    HMAC key (it looks like a PEM, SSH or DER public key, or a JWK)."""
    try:
        return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.PyJWTError:
        return None


def _fast_claims(token: str, secret: str, now: float) -> dict | None:
    """The claims of a token in the shape tidings mints, signed with
    ``secret`` and valid at ``now``, exactly as PyJWT would decide it; None
    for any other token (PyJWT decides).  Raises only for an expired token."""
    if not isinstance(token, str) or not token.startswith(_HEADER + "."):
        return None
    parts = token.split(".")
    key = _hmac_key(secret) if isinstance(secret, str) else None
    if len(parts) != 3 or key is None:
        return None
    signed = token[: len(_HEADER) + 1 + len(parts[1])].encode()
    signature = base64.urlsafe_b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    if not hmac.compare_digest(signature.rstrip(b"="), parts[2].encode()):
        return None
    payload = _segment(parts[1])
    if payload is None:
        return None
    try:
        claims = _claims_of(payload)
    except msgspec.DecodeError:
        return None
    if not claims.keys() <= _FAST_CLAIMS or type(claims.get("exp")) is not int \
            or not isinstance(claims.get("sub"), str):
        return None
    iat = claims.get("iat", 0)
    if type(iat) is not int or iat > now + LEEWAY:
        return None
    if not isinstance(claims.get("jti", ""), str):  # PyJWT: "JWT ID must be a string"
        return None
    if claims["exp"] <= now - LEEWAY:
        raise Unauthorized("token expired", code="token_expired")
    return claims


def _pyjwt_claims(token: str, secret: str) -> dict:
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: never trust the header's alg
            options={"require": ["exp", "sub"]},
            leeway=LEEWAY,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code="token_expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("token is not valid", code="bad_token") from None


def verify_token(token: str, secret: str) -> tuple[str, str, int, int | None, str | None]:
    """Verify and return ``(app, user, exp, iat, jti)``, ``iat`` and ``jti``
    None for a token without them; raise :class:`Unauthorized`.  ``iat`` is
    read as PyJWT checked it (``int()`` of the claim), and only says which of
    a user's revocations the token predates; ``jti`` names the token for a
    revocation of it alone (tidings/service/revocations.py)."""
    claims = _fast_claims(token, secret, time.time())
    if claims is None:
        claims = _pyjwt_claims(token, secret)
    app, user = claims.get("app"), claims.get("sub")
    if not isinstance(app, str) or not isinstance(user, str) or not valid_user(user):
        raise Unauthorized("token is missing its app or user", code="bad_token")
    iat = claims.get("iat")
    return app, user, int(claims["exp"]), None if iat is None else int(iat), claims.get("jti")


def verify_token_rotated(token: str, secret: str, previous: str | None
                         ) -> tuple[str, str, int, int | None, str | None, bool]:
    """``verify_token`` with the app's current ``secret`` or, when that
    refuses the token as not signed with it, its ``previous`` secret (None
    once the overlap is over): ``(app, user, exp, iat, jti, by_previous)``.  A
    token the current secret finds expired is expired: the previous one is
    not asked.  Refused by both, the answer is the current secret's."""
    try:
        return (*verify_token(token, secret), False)
    except Unauthorized as first:
        if previous is None or first.code != "bad_token":
            raise
        try:
            return (*verify_token(token, previous), True)
        except Unauthorized as second:
            if second.code == "bad_token":
                raise first from None
            raise


def signed_by(token: str, secret: str) -> bool:
    """Whether ``token``'s signature is the HS256 MAC of its header and
    claims under ``secret``, whatever else it holds: only says that a token
    refused as not valid was signed with a secret its app no longer takes
    (a retired previous one), which is routine, not a guess."""
    if not isinstance(token, str) or len(token) > 4096 or token.count(".") != 2:
        return False
    key = _hmac_key(secret) if isinstance(secret, str) else None
    if key is None:
        return False
    signed, _, signature = token.rpartition(".")
    mac = base64.urlsafe_b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest())
    return hmac.compare_digest(mac.rstrip(b"="), signature.encode())


def revocable(token: str, secrets_: tuple[str, ...]) -> tuple[str, str, int, str | None]:
    """``(app, user, exp, jti)`` of a token signed with one of ``secrets_``
    (an app's current and previous signing secret), expired or not: what a
    revocation of that one token needs (tidings/service/revocations.py).
    Raises :class:`Unauthorized` (``bad_token``) for any other."""
    if isinstance(token, str) and len(token) <= 4096:
        for secret in secrets_:
            try:
                claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=LEEWAY,
                                    options={"require": ["exp", "sub"], "verify_exp": False})
            except jwt.PyJWTError:
                continue
            app, user, exp = claims.get("app"), claims.get("sub"), claims["exp"]
            if isinstance(exp, float) and math.isfinite(exp):
                exp = int(exp)
            if isinstance(app, str) and isinstance(user, str) and valid_user(user) \
                    and type(exp) is int:
                return app, user, exp, claims.get("jti")
    raise Unauthorized("token is not valid", code="bad_token")
