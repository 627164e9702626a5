"""Webhooks: signed HTTP POSTs of a user's notifications to an app's endpoint.

Every request carries (docs/webhooks.md is the receiver's guide):

* ``Tidings-Id`` -- the job id, the same on every attempt: de-duplicate on it
  (delivery is at least once);
* ``Tidings-Event`` -- ``notification.created``, or ``notification.digest``
  for a user's digest (tidings/core/digest.py: the notification's
  ``data.digest.items`` lists the notifications it stands for);
* ``Tidings-Attempt`` -- 1 on the first try, 2 on the first retry, ...;
* ``Tidings-Signature: t=<unix seconds>,v1=<hex>`` -- ``v1`` is
  HMAC-SHA256 over ``"<t>.<raw body>"`` with the endpoint's secret, the
  scheme Stripe and Svix use.  The timestamp is signed, so a receiver that
  rejects old timestamps also rejects replays; it is fresh on every attempt,
  so a late retry still passes that check.  While a secret is being rotated
  the lookup may return both secrets and the header carries one ``v1`` per
  secret; a receiver accepts the request if any of them matches.

The body is ``{"id", "type", "app", "user", "notification"}`` with the
notification exactly as stored.  2xx is delivered; 408, 425, 429 and 5xx,
timeouts and connection errors are retried (``Retry-After`` honoured);
any other status is a permanent failure of the job.  Redirects are not
followed.  URLs must be https, and neither the URL nor what its host name
resolves to when connecting may be a loopback, private, link-local or
otherwise non-public address (``check_url`` and ``VettedBackend`` in
channels/base.py; a refused address is a permanent failure);
``allow_insecure`` lifts that for development.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import httpx
import msgspec

from tidings.channels.base import Job, Result, url_host
from tidings.channels.egress import check_url, http_client, http_post
from tidings.config import WebhookConfig  # defined with the other settings
from tidings.core.digest import is_digest

__all__ = [
    "EVENT_CREATED",
    "SIGNATURE_HEADER",
    "WebhookChannel",
    "WebhookConfig",
    "WebhookVerificationError",
    "sign",
    "signature_header",
    "verify",
]

SIGNATURE_HEADER = "Tidings-Signature"
EVENT_CREATED = "notification.created"
EVENT_DIGEST = "notification.digest"

# The endpoint's signing secret(s) for a job; None when the endpoint is gone.
SecretLookup = Callable[[Job], Awaitable["str | Sequence[str] | None"]]


class _Envelope(msgspec.Struct):
    id: str
    type: str
    app: str
    user: str
    notification: msgspec.Raw


_encode = msgspec.json.Encoder().encode


def _event(job: Job) -> str:
    return EVENT_DIGEST if is_digest(job.id) else EVENT_CREATED


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The hex ``v1`` signature of ``body`` at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: str | bytes | Sequence[str | bytes], timestamp: int,
                     body: bytes) -> str:
    """``t=<timestamp>,v1=<sig>[,v1=<sig>...]``, one ``v1`` per secret."""
    if isinstance(secrets, str | bytes):
        secrets = [secrets]
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in secrets)])


class WebhookVerificationError(ValueError):
    """The request is not a genuine, fresh tidings webhook."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: look the name up case-insensitively
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes,
           tolerance: int = 300, now: float | None = None) -> int:
    """Check a received webhook; return its timestamp or raise
    :class:`WebhookVerificationError`.

    Pass the raw request body, before any JSON parsing: re-encoding changes
    the bytes and the signature with them.  ``tolerance`` (seconds) bounds
    the clock difference in both directions; it is the replay window.
    """
    header = _header(headers, SIGNATURE_HEADER)
    if not header:
        raise WebhookVerificationError(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()):
        raise WebhookVerificationError("no valid timestamp in the signature header")
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookVerificationError("timestamp outside the tolerance (replayed or clock skew)")
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise WebhookVerificationError("no signature matches")
    return int(timestamp)


class WebhookChannel:
    """Sends :class:`Job`s whose destination is ``{"url": "https://..."}``."""

    name = "webhook"

    def __init__(
        self,
        secrets: SecretLookup,
        config: WebhookConfig | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        proxy: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.secrets = secrets
        self.config = config = config or WebhookConfig()
        self.clock = clock
        self._own_client = client is None
        self.client = client or http_client(config, proxy)

    def body(self, job: Job) -> bytes:
        """The exact bytes POSTed (and signed) for ``job``."""
        return _encode(_Envelope(id=job.id, type=_event(job), app=job.app, user=job.user,
                                 notification=msgspec.Raw(job.notification)))

    @staticmethod
    def host(job: Job) -> str | None:
        """The endpoint's host: the worker limits the sends in flight per host."""
        return url_host(job.destination.get("url"))

    async def send(self, job: Job) -> Result:
        try:
            url = check_url(job.destination.get("url"), self.config.allow_insecure)
        except ValueError as exc:
            return Result.failed(f"bad webhook url: {exc}")
        secrets = await self.secrets(job)
        if not secrets:
            return Result.failed("no signing secret for this endpoint", gone=True)
        body = self.body(job)
        headers = {
            "Content-Type": "application/json",
            "Tidings-Id": job.id,
            "Tidings-Event": _event(job),
            "Tidings-Attempt": str(job.attempts + 1),
            SIGNATURE_HEADER: signature_header(secrets, int(self.clock()), body),
        }
        return await http_post(self.client, url, body, headers, timeout=self.config.timeout,
                               clock=self.clock, max_body=self.config.max_error_body)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()
