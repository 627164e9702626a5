"""Real local peers for the channel tests: HTTP servers and an SMTP server on
127.0.0.1, each checking the protocol the way a real receiver would."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import http_ece
import jwt
import uvicorn
from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import Envelope
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import Response

from tidings.channels.webhook import WebhookVerificationError, verify


@contextlib.asynccontextmanager
async def serve(app):
    """Run an ASGI app under uvicorn on an ephemeral loopback port.

    The socket is bound and listening before uvicorn starts, so the kernel
    queues the first connections: no need to poll for "started".
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", loop="none", log_level="warning",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


# -- webhooks -------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """Verifies every request with ``verify()``; answers ``fail_status`` to
    the first ``fail_first`` attempts of each delivery, then 200."""

    secret: str
    fail_first: int = 0
    fail_status: int = 500
    retry_after: str | None = None
    hold: asyncio.Event | None = None  # when given: wait for it before answering
    arrivals: asyncio.Queue = field(default_factory=asyncio.Queue)  # one item per request
    requests: list[tuple[dict, bytes]] = field(default_factory=list)
    accepted: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)
    concurrent: int = 0
    max_concurrent: int = 0

    async def __call__(self, scope, receive, send):
        request = Request(scope, receive)
        body = await request.body()
        headers = dict(request.headers)
        self.requests.append((headers, body))
        self.arrivals.put_nowait(headers.get("tidings-id"))
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.hold is not None:
                await self.hold.wait()
        finally:
            self.concurrent -= 1
        try:
            verify(self.secret, request.headers, body)
        except WebhookVerificationError as exc:
            self.rejected.append(str(exc))
            await Response(str(exc), status_code=400)(scope, receive, send)
            return
        delivery = request.headers["tidings-id"]
        self.attempts[delivery] += 1
        if self.attempts[delivery] <= self.fail_first:
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            await Response("try again later", status_code=self.fail_status,
                           headers=extra)(scope, receive, send)
            return
        self.accepted.append(json.loads(body))
        await Response(status_code=204)(scope, receive, send)


# -- Web Push ----------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscriber:
    """A browser's side of a push subscription: its ECDH key pair and auth secret."""

    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self, endpoint: str) -> dict:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": endpoint, "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}}

    def decrypt(self, body: bytes) -> bytes:
        # aes128gcm carries the sender's ephemeral public key in the record
        # header (RFC 8188 §2.1 keyid), so only our private key and secret are needed.
        return http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth,
                                version="aes128gcm")


@dataclass
class PushService:
    """A push service stub: ``POST /push/<name>`` for a registered subscriber.

    Checks the VAPID header (RFC 8292: ``vapid t=<JWT>, k=<key>``; ES256
    signature by ``k``; ``aud`` is this origin; ``exp`` within 24 hours) and
    decrypts the aes128gcm body.  ``/push/gone`` answers 410;
    ``/push/busy`` answers 429 with ``Retry-After: 120``.
    """

    app_server_key: str  # the VAPID public key the subscription was made with
    origin: str = ""
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    received: list[dict] = field(default_factory=list)  # decrypted payloads + headers
    errors: list[str] = field(default_factory=list)

    async def __call__(self, scope, receive, send):
        request = Request(scope, receive)
        body = await request.body()
        name = request.url.path.rsplit("/", 1)[-1]
        status, text = self.check(name, request.headers, body)
        await Response(text, status_code=status,
                       headers={"Retry-After": "120"} if status == 429 else None)(
            scope, receive, send)

    def check(self, name: str, headers, body: bytes) -> tuple[int, str]:
        if name == "gone":
            return 410, "subscription expired"
        if name == "busy":
            return 429, "slow down"
        try:
            claims = self.check_vapid(headers.get("authorization", ""))
            if headers.get("content-encoding") != "aes128gcm":
                raise ValueError(f"content-encoding {headers.get('content-encoding')!r}")
            ttl = int(headers["ttl"])
            plain = self.subscribers[name].decrypt(body)
        except Exception as exc:  # noqa: BLE001 - report any failure to the test
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return 400, str(exc)
        self.received.append({"payload": json.loads(plain), "ttl": ttl, "claims": claims,
                              "size": len(body), "headers": dict(headers)})
        return 201, ""

    def check_vapid(self, header: str) -> dict:
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError(f"authorization scheme {scheme!r} is not vapid")
        values = dict(p.strip().split("=", 1) for p in params.split(","))
        token, key = values["t"], values["k"]
        if key != self.app_server_key:
            raise ValueError("k is not the application server key")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        claims = jwt.decode(token, public, algorithms=["ES256"], audience=self.origin,
                            options={"require": ["aud", "exp", "sub"]})
        if not time.time() < claims["exp"] <= time.time() + 24 * 3600:
            raise ValueError("exp is not within the next 24 hours")
        return claims


# -- SMTP ------------------------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message; ``refuse`` maps a
    recipient to the SMTP reply its RCPT gets."""

    messages: list[Envelope] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        self.arrived.set()
        return "250 Message accepted"


@contextlib.asynccontextmanager
async def smtp_server(handler, **smtp_kw):
    """An aiosmtpd SMTP server in this test's event loop, on 127.0.0.1."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTPProtocol(handler, hostname="mx.test", **smtp_kw), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
