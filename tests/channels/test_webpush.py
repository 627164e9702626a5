"""Web Push against a push-service stub that verifies VAPID and decrypts the payload."""

from __future__ import annotations

import contextlib
import json

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.channels.memqueue import MemoryQueue, make_job
from tests.channels.peers import PushService, Subscriber, serve, unb64url
from tests.channels.proxy_peer import connect_proxy
from tests.channels.tls_peer import local_name, tls_receiver
from tidings.channels.webpush import (
    MAX_PLAINTEXT,
    WebPushChannel,
    WebPushConfig,
    fit_payload,
    generate_vapid_keys,
    parse_subscription,
)
from tidings.channels.worker import Lane, Worker
from tidings.core.retry import RetryPolicy

KEYS = generate_vapid_keys()
NOTE = {"id": "01HZX3Y2K8M0000000000000AB", "category": "social",
        "created_at": "2024-06-01T12:00:00.000+00:00", "title": "user_17 and 41 others",
        "body": "liked your post", "url": "/p/42", "data": {"post": 42}, "priority": "high",
        "group_key": "post:42:likes"}


def config(**kw) -> WebPushConfig:
    return WebPushConfig(vapid_private_key=kw.pop("key", KEYS.private_key),
                         vapid_subject="mailto:ops@acme.test", allow_insecure=True, **kw)


@contextlib.asynccontextmanager
async def push_service():
    stub = PushService(app_server_key=KEYS.public_key)
    async with serve(stub) as origin:
        stub.origin = origin
        yield stub


def subscribe(stub: PushService, name: str) -> dict:
    subscriber = stub.subscribers.setdefault(name, Subscriber())
    return subscriber.subscription(f"{stub.origin}/push/{name}")


def push_job(subscription: dict, note: dict = NOTE, **kw):
    return make_job("push", subscription, notification=note, **kw)


# -- keys ------------------------------------------------------------------------------


def test_generated_vapid_keys():
    keys = generate_vapid_keys()
    private, public = unb64url(keys.private_key), unb64url(keys.public_key)
    assert len(private) == 32 and len(public) == 65 and public[0] == 4
    derived = ec.derive_private_key(int.from_bytes(private, "big"), ec.SECP256R1())
    assert derived.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint) == public
    assert "=" not in keys.private_key + keys.public_key  # base64url without padding
    assert generate_vapid_keys() != keys


def test_the_channel_exposes_the_application_server_key():
    assert WebPushChannel(config()).public_key == KEYS.public_key


def test_a_pem_private_key_is_accepted():
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    ch = WebPushChannel(config(key=pem))
    assert unb64url(ch.public_key) == key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@pytest.mark.parametrize("kw", [{"vapid_subject": "ops@acme.test"},
                                {"vapid_lifetime": 25 * 3600}, {"vapid_lifetime": 0}])
def test_bad_vapid_settings_are_refused(kw):
    base = {"vapid_private_key": KEYS.private_key, "vapid_subject": "mailto:ops@acme.test"}
    with pytest.raises(ValueError):
        WebPushChannel(WebPushConfig(**{**base, **kw}))


# -- delivery -----------------------------------------------------------------------------


async def test_delivers_an_encrypted_payload_with_vapid():
    ch = WebPushChannel(config(ttl=3600))
    async with push_service() as stub:
        result = await ch.send(push_job(subscribe(stub, "alice-laptop")))
    await ch.aclose()
    assert stub.errors == []
    assert result.outcome == "delivered" and result.status == 201
    (got,) = stub.received
    assert got["payload"] == NOTE  # decrypted with the subscriber's private key, intact
    assert got["claims"]["aud"] == stub.origin
    assert got["claims"]["sub"] == "mailto:ops@acme.test"
    assert got["ttl"] == 3600
    assert got["headers"]["urgency"] == "high"
    topic = got["headers"]["topic"]
    assert len(topic) <= 32 and set(topic) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert got["headers"]["content-type"] == "application/octet-stream"


async def test_a_push_goes_through_the_egress_proxy():
    async with push_service() as stub, connect_proxy() as proxy:
        ch = WebPushChannel(config(), proxy=proxy.url())
        result = await ch.send(push_job(subscribe(stub, "alice-laptop")))
        await ch.aclose()
    assert result.outcome == "delivered" and stub.errors == []
    assert [got["payload"] for got in stub.received] == [NOTE]
    assert proxy.targets == [stub.origin.removeprefix("http://")]


async def test_topic_is_per_group_and_absent_without_one():
    ch = WebPushChannel(config())
    other_group = dict(NOTE, group_key="post:43:likes")
    no_group = {k: v for k, v in NOTE.items() if k != "group_key"}
    async with push_service() as stub:
        sub = subscribe(stub, "s")
        for note in (NOTE, NOTE, other_group, no_group):
            assert (await ch.send(push_job(sub, note))).outcome == "delivered"
    await ch.aclose()
    topics = [r["headers"].get("topic") for r in stub.received]
    assert topics[0] == topics[1] != topics[2] and topics[3] is None


@pytest.mark.parametrize("priority,urgency", [("low", "low"), ("normal", "normal"),
                                              ("high", "high"), ("urgent", "high")])
async def test_urgency_follows_priority(priority, urgency):
    ch = WebPushChannel(config())
    async with push_service() as stub:
        await ch.send(push_job(subscribe(stub, "s"), dict(NOTE, priority=priority)))
    await ch.aclose()
    assert stub.received[0]["headers"]["urgency"] == urgency


async def test_ttl_never_outlives_the_notification():
    now = 1_000_000.0
    ch = WebPushChannel(config(ttl=86400), clock=lambda: now)
    job = push_job({"endpoint": "x"}, expires_at=now + 90.5)
    assert ch._ttl(job) == 90
    assert ch._ttl(push_job({"endpoint": "x"}, expires_at=now - 5)) == 0
    assert ch._ttl(push_job({"endpoint": "x"})) == 86400


async def test_vapid_header_is_reused_per_origin_then_renewed():
    now = [1_000_000.0]
    ch = WebPushChannel(config(vapid_lifetime=3600), clock=lambda: now[0])
    first = ch.authorization("https://push.example.net/a")
    assert ch.authorization("https://push.example.net/b") == first
    assert ch.authorization("https://other.example.net/a") != first
    now[0] += 1801  # past half the lifetime
    renewed = ch.authorization("https://push.example.net/a")
    assert renewed != first
    # user-supplied endpoints cannot grow the cache without bound
    for i in range(1000):
        ch.authorization(f"https://stray{i}.example.net/x")
    assert len(ch._signed) <= 256


async def test_a_gone_subscription_is_reported_for_deletion():
    ch = WebPushChannel(config())
    async with push_service() as stub:
        result = await ch.send(push_job({**subscribe(stub, "x"),
                                         "endpoint": f"{stub.origin}/push/gone"}))
    await ch.aclose()
    assert result.outcome == "failed" and result.gone and result.status == 410


async def test_a_busy_push_service_means_retry_after():
    ch = WebPushChannel(config())
    async with push_service() as stub:
        result = await ch.send(push_job({**subscribe(stub, "x"),
                                         "endpoint": f"{stub.origin}/push/busy"}))
    await ch.aclose()
    assert (result.outcome, result.status, result.retry_after) == ("retry", 429, 120.0)


async def test_a_wrong_vapid_key_is_refused_by_the_push_service():
    other = generate_vapid_keys()
    ch = WebPushChannel(config(key=other.private_key))
    async with push_service() as stub:
        result = await ch.send(push_job(subscribe(stub, "s")))
    await ch.aclose()
    assert result.outcome == "failed" and result.status == 400
    assert stub.errors == ["ValueError: k is not the application server key"]


async def test_a_payload_for_another_subscriber_does_not_decrypt():
    ch = WebPushChannel(config())
    async with push_service() as stub:
        mine = subscribe(stub, "mine")
        theirs = subscribe(stub, "theirs")
        # keys of one subscription, endpoint of the other
        result = await ch.send(push_job({**theirs, "endpoint": mine["endpoint"]}))
    await ch.aclose()
    assert result.outcome == "failed" and stub.received == [] and len(stub.errors) == 1


async def test_a_large_notification_is_shrunk_to_fit_one_record():
    big = dict(NOTE, body="é" * 5000, data={"blob": "x" * 10_000})
    ch = WebPushChannel(config())
    async with push_service() as stub:
        result = await ch.send(push_job(subscribe(stub, "s"), big))
    await ch.aclose()
    assert result.outcome == "delivered", stub.errors
    (got,) = stub.received
    assert got["size"] <= 4096  # RFC 8291 §4: one 4096-byte record
    payload = got["payload"]
    assert payload["truncated"] is True and "data" not in payload
    assert payload["id"] == NOTE["id"] and payload["title"] == NOTE["title"]
    assert set(payload["body"]) == {"é"} and 0 < len(payload["body"]) < 5000


def test_fit_payload():
    raw = msgspec.json.encode(NOTE)
    assert fit_payload(raw) is raw
    for size in (100, 200, 1000, MAX_PLAINTEXT):
        big = msgspec.json.encode(dict(NOTE, body="日本" * 3000, title="t" * 3000))
        out = fit_payload(big, size)
        assert len(out) <= size
        assert json.loads(out)["truncated"] is True


@pytest.mark.parametrize("sub", [
    {"endpoint": "https://push.example.net/x"},
    {"endpoint": "https://push.example.net/x", "keys": {"p256dh": "AAAA", "auth": "AAAA"}},
    {"endpoint": "http://push.example.net/x", "keys": None},
    {"keys": {}},
    "not an object",
])
async def test_invalid_subscriptions_are_permanent_and_gone(sub):
    ch = WebPushChannel(config())
    result = await ch.send(push_job(sub))
    await ch.aclose()
    assert result.outcome == "failed" and result.gone


def test_parse_subscription_refuses_insecure_endpoints_by_default():
    good = Subscriber().subscription("https://push.example.net/abc")
    assert parse_subscription(good) == good
    for endpoint in ("http://push.example.net/abc", "https://127.0.0.1/abc",
                     "https://169.254.169.254/latest/meta-data"):
        with pytest.raises(ValueError):
            parse_subscription({**good, "endpoint": endpoint})
    assert parse_subscription({**good, "endpoint": "http://127.0.0.1:1/x"}, allow_insecure=True)
    with pytest.raises(ValueError):  # a point that is not on the curve
        parse_subscription({**good, "keys": {**good["keys"], "p256dh": "BA" + "A" * 85}})


async def test_an_endpoint_whose_name_resolves_to_a_non_public_address_is_refused(
        tmp_path, monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver:
        # its certificate is trusted: only the address rule can stop the request
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        ch = WebPushChannel(WebPushConfig(vapid_private_key=KEYS.private_key,
                                          vapid_subject="mailto:ops@acme.test"))
        endpoint = f"https://{name}:{receiver.port}/push/abc"
        result = await ch.send(push_job(Subscriber().subscription(endpoint)))
        await ch.aclose()
    assert receiver.connections == []
    assert result.outcome == "failed" and result.status is None
    assert result.detail == f"the destination {name} resolves to a non-public address"
    # the job fails, the subscription stays: what a name resolves to can change
    assert not result.gone


# -- through the worker -------------------------------------------------------------------


async def test_worker_reports_a_gone_subscription_to_the_result_hook():
    queue = MemoryQueue()
    reported = []

    async def on_result(job, result):
        reported.append((job.id, result.outcome, result.gone))

    ch = WebPushChannel(config())
    async with push_service() as stub:
        queue.put(push_job(subscribe(stub, "live"), id="p-1"))
        queue.put(push_job({**subscribe(stub, "x"), "endpoint": f"{stub.origin}/push/gone"},
                           id="p-2"))
        lane = Lane(ch, concurrency=2, policy=RetryPolicy(base=0.01, cap=0.02))
        async with Worker(queue, [lane], poll_interval=0.02, on_result=on_result):
            await queue.wait(lambda q: q.completed and q.dead_letters)
    await ch.aclose()
    assert sorted(reported) == [("p-1", "delivered", False), ("p-2", "failed", True)]
    assert queue.dead_letters[0][1] == "HTTP 410: subscription expired"
    assert [r["payload"] for r in stub.received] == [NOTE]


def test_the_stub_really_checks_the_vapid_signature_and_claims():
    """The stub must be able to fail: a JWT signed by another key under our
    ``k``, a wrong audience and a far expiry are all refused."""
    stub = PushService(app_server_key=KEYS.public_key, origin="https://push.example.net")
    good = WebPushChannel(config()).authorization("https://push.example.net/x")
    assert stub.check_vapid(good)["aud"] == "https://push.example.net"
    token = good.split("t=", 1)[1].split(",", 1)[0]
    forger = WebPushChannel(config(key=generate_vapid_keys().private_key))
    forged_token = forger.authorization("https://push.example.net/x").split("t=", 1)[1]
    forged_token = forged_token.split(",", 1)[0]
    with pytest.raises(pyjwt.InvalidSignatureError):
        stub.check_vapid(f"vapid t={forged_token}, k={KEYS.public_key}")
    with pytest.raises(pyjwt.InvalidAudienceError):
        PushService(app_server_key=KEYS.public_key, origin="https://elsewhere.net").check_vapid(
            f"vapid t={token}, k={KEYS.public_key}")
    far = WebPushChannel(config(), clock=lambda: 4e9).authorization("https://push.example.net/x")
    with pytest.raises(ValueError, match="24 hours"):
        stub.check_vapid(far)
