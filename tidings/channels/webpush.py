"""Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payloads (RFC 8291).

The payload is the notification's JSON, encrypted for the subscription with
pywebpush's ``WebPusher.encode`` (the ``http_ece`` aes128gcm scheme), and
the request carries ``Authorization: vapid t=<ES256 JWT>, k=<public key>``
signed by py_vapid, both pywebpush's own building blocks.  The POST itself
goes through ``httpx`` rather than pywebpush's ``webpush_async`` (aiohttp),
so that webhooks and Web Push share one client model, one timeout model and
one status classification, and because ``webpush_async`` writes ``aud`` and
``exp`` into the caller's claims dict (an ``aud`` left over from one push
service would be sent to the next) and signs a new JWT on every call, which
its maintainer warns is costly (pywebpush #85).  Here one JWT per push
service origin is reused until half its lifetime has passed.

Encryption costs about 0.4 ms of CPU per message (an ephemeral ECDH key
pair, HKDF, AES-GCM), so it runs in a thread, off the event loop that also
serves live streams.

Headers: ``TTL`` (how long the push service keeps the message for an
offline device: the configured TTL, shortened to the notification's own
expiry), ``Urgency`` from the priority, and ``Topic`` from the
``group_key`` (a pending message of the same group is replaced by the
newer one at the push service, like the inbox row it mirrors).

Status: 201/202 (any 2xx) delivered; 404/410 the subscription is gone
(permanent, ``Result.gone``: delete it); 408, 429 and 5xx retried with
``Retry-After``; other 4xx permanent.  An endpoint whose host resolves to a
non-public address is never connected to (channels/base.py,
``VettedBackend``): permanent, but not gone, since what a name resolves to
can change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from http_ece import ECEException
from py_vapid import Vapid, VapidException
from pywebpush import WebPusher, WebPushException

from tidings.channels.base import Job, Result, url_host
from tidings.channels.egress import check_url, http_client, http_post
from tidings.config import WebPushConfig  # defined with the other settings
from tidings.core import locales

__all__ = [
    "MAX_PLAINTEXT",
    "VapidKeys",
    "WebPushChannel",
    "WebPushConfig",
    "fit_payload",
    "generate_vapid_keys",
    "parse_subscription",
    "vapid_public_key",
]

# RFC 8291 §4: one 4096-octet record, minus the 86-octet header, the 16-octet
# tag and the padding delimiter, leaves 3993 octets of plaintext.
MAX_PLAINTEXT = 3993
_URGENCY = {"low": "low", "normal": "normal", "high": "high", "urgent": "high"}
_GONE = frozenset({404, 410})
_MAX_SIGNED_ORIGINS = 256  # push services are a handful; the rest are strays


class VapidKeys(msgspec.Struct, frozen=True):
    private_key: str  # base64url, raw 32 bytes: WebPushConfig.vapid_private_key
    public_key: str  # base64url, uncompressed point: the browser's applicationServerKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_vapid_keys() -> VapidKeys:
    """A new VAPID key pair (the app server's identity towards push services)."""
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return VapidKeys(private_key=_b64url(raw), public_key=_b64url(public))


def parse_subscription(info: Any, allow_insecure: bool = False) -> dict[str, Any]:
    """Validate a browser ``PushSubscription.toJSON()``; ValueError if unusable.

    Meant also for the API that registers subscriptions, so that a broken
    one is refused at once instead of failing at every push.
    """
    if not isinstance(info, dict):
        raise ValueError("a subscription is an object")
    endpoint, keys = info.get("endpoint"), info.get("keys")
    check_url(endpoint, allow_insecure)
    if not isinstance(keys, dict):
        raise ValueError("subscription needs keys.p256dh and keys.auth")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    try:
        point = _unb64url(p256dh) if isinstance(p256dh, str) else b""
        secret = _unb64url(auth) if isinstance(auth, str) else b""
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, binascii.Error):
        raise ValueError("keys.p256dh is not a P-256 public key") from None
    if len(point) != 65 or len(secret) != 16:
        raise ValueError("keys.p256dh must be 65 bytes and keys.auth 16 bytes")
    return {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}


def fit_payload(notification: bytes, limit: int = MAX_PLAINTEXT) -> bytes:
    """The notification JSON, shrunk to ``limit`` bytes if needed: ``data``
    goes first, then ``body`` and ``title`` are cut.  A shrunk payload says
    ``"truncated": true`` so the service worker can fetch the whole
    notification by its id."""
    if len(notification) <= limit:
        return notification
    note = msgspec.json.decode(notification)
    if not isinstance(note, dict):
        raise ValueError("a notification is a JSON object")
    note.pop("data", None)
    note["truncated"] = True
    out = msgspec.json.encode(note)
    for field in ("body", "title", "url"):
        if len(out) <= limit:
            break
        text = note.get(field) or ""
        excess = len(out) - limit
        raw = text.encode()
        # Cut bytes, then drop a split UTF-8 sequence; the JSON escaping of
        # the cut part can only make the saving larger, so one pass is enough.
        note[field] = raw[: max(0, len(raw) - excess)].decode("utf-8", "ignore")
        out = msgspec.json.encode(note)
    if len(out) > limit:  # only ids and short fields left: send the bare minimum
        out = msgspec.json.encode({"id": note.get("id"), "truncated": True})
    return out


def _topic(app: str, group_key: str) -> str:
    # RFC 8030 §5.4: at most 32 characters of the base64url alphabet.
    return _b64url(hashlib.sha256(f"{app}\x00{group_key}".encode()).digest())[:32]


def _load_vapid(key: str) -> Vapid:
    if key.lstrip().startswith("-----BEGIN"):
        return Vapid.from_pem(key.encode())
    return Vapid.from_string(key)


def _public_key(vapid: Vapid) -> str:
    return _b64url(vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    ))


def vapid_public_key(private_key: str) -> str:
    """The public key (base64url, uncompressed point) of a VAPID private key:
    what browsers pass to ``pushManager.subscribe({applicationServerKey})``."""
    return _public_key(_load_vapid(private_key))


class WebPushChannel:
    """Sends :class:`Job`s whose destination is a browser push subscription."""

    name = "push"

    def __init__(
        self,
        config: WebPushConfig,
        *,
        client: httpx.AsyncClient | None = None,
        proxy: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not config.vapid_subject.startswith(("mailto:", "https://")):
            raise ValueError("vapid_subject must be a mailto: or https: URL (RFC 8292 §2.1)")
        if not 0 < config.vapid_lifetime <= 24 * 3600:
            raise ValueError("vapid_lifetime must be within 24 hours (RFC 8292 §2)")
        self.config = config
        self.clock = clock
        self.vapid = _load_vapid(config.vapid_private_key)
        self.public_key = _public_key(self.vapid)
        self._signed: dict[str, tuple[str, float]] = {}  # origin -> (Authorization, exp)
        self._own_client = client is None
        self.client = client or http_client(config, proxy)

    def authorization(self, endpoint: str) -> str:
        """The VAPID ``Authorization`` header for ``endpoint``'s push service."""
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        now = self.clock()
        cached = self._signed.get(origin)
        if cached is not None and cached[1] - now > self.config.vapid_lifetime / 2:
            return cached[0]
        exp = int(now) + self.config.vapid_lifetime
        claims = {"aud": origin, "exp": exp, "sub": self.config.vapid_subject}
        header = self.vapid.sign(claims)["Authorization"]
        # Endpoints come from users, so origins are unbounded: keep the newest few.
        self._signed.pop(origin, None)
        if len(self._signed) >= _MAX_SIGNED_ORIGINS:
            del self._signed[next(iter(self._signed))]
        self._signed[origin] = (header, exp)
        return header

    def _ttl(self, job: Job) -> int:
        ttl = self.config.ttl
        if job.expires_at is not None:
            ttl = min(ttl, int(job.expires_at - self.clock()))
        return max(0, ttl)

    @staticmethod
    def host(job: Job) -> str | None:
        """The push service's host: the worker limits the sends in flight per host."""
        return url_host(job.destination.get("endpoint"))

    async def send(self, job: Job) -> Result:
        try:
            subscription = parse_subscription(job.destination, self.config.allow_insecure)
        except ValueError as exc:
            return Result.failed(f"invalid subscription: {exc}", gone=True)
        # in the user's language, kept with the job (tidings/core/locales.py)
        notification = locales.resolve(job.notification, job.destination.get("locale", ""))
        try:
            note = msgspec.json.decode(notification)
        except msgspec.DecodeError as exc:
            return Result.failed(f"bad notification JSON: {exc}")
        if not isinstance(note, dict):
            return Result.failed("bad notification JSON: not an object")
        payload = fit_payload(notification)
        try:
            encrypted = await asyncio.to_thread(_encrypt, subscription, payload)
        except (WebPushException, ECEException, ValueError) as exc:
            return Result.failed(f"invalid subscription: {exc}", gone=True)
        try:
            authorization = self.authorization(subscription["endpoint"])
        except VapidException as exc:
            return Result.failed(f"VAPID signing failed: {exc}")
        headers = {
            "Authorization": authorization,
            "TTL": str(self._ttl(job)),
            "Urgency": _URGENCY.get(note.get("priority", "normal"), "normal"),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
        }
        if note.get("group_key"):
            headers["Topic"] = _topic(job.app, str(note["group_key"]))
        return await http_post(self.client, subscription["endpoint"], encrypted, headers,
                               timeout=self.config.timeout, clock=self.clock, gone=_GONE)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()


def _encrypt(subscription: dict[str, Any], payload: bytes) -> bytes:
    return WebPusher(subscription).encode(payload, "aes128gcm")["body"]
