"""Webhooks against a real receiver on loopback that verifies every signature."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import socket
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.channels.memqueue import MemoryQueue, make_job
from tests.channels.peers import WebhookReceiver, serve
from tests.channels.proxy_peer import connect_proxy
from tests.channels.tls_peer import local_name, tls_receiver
from tidings.channels.base import JobQueue
from tidings.channels.egress import check_url
from tidings.channels.webhook import (
    WebhookChannel,
    WebhookConfig,
    WebhookVerificationError,
    sign,
    signature_header,
    verify,
)
from tidings.channels.worker import Lane, Worker
from tidings.core.retry import RetryPolicy

SECRET = "whsec_test_0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
FAST = RetryPolicy(base=0.01, cap=0.02, max_attempts=3)


async def secret_for(job):
    return SECRET


def channel(proxy: str | None = None, **kw) -> WebhookChannel:
    return WebhookChannel(secret_for, WebhookConfig(allow_insecure=True, **kw), proxy=proxy)


def hook(url: str, **kw):
    return make_job("webhook", {"url": url}, **kw)


def signed(body: bytes, t: int | None = None, secret: str = SECRET) -> dict:
    t = int(time.time()) if t is None else t
    return {"Tidings-Signature": signature_header(secret, t, body)}


# -- verify() -------------------------------------------------------------------------

BODY = b'{"id":"job-1","type":"notification.created"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), b"1718000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1718000000, BODY) == expected
    assert signature_header(SECRET, 1718000000, BODY) == f"t=1718000000,v1={expected}"


def test_verify_accepts_a_genuine_request():
    assert verify(SECRET, signed(BODY, 1718000000), BODY, now=1718000100) == 1718000000


def test_verify_rejects_a_tampered_body():
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(SECRET, signed(BODY), BODY.replace(b"job-1", b"job-2"))


def test_verify_rejects_the_wrong_secret():
    with pytest.raises(WebhookVerificationError):
        verify("whsec_other", signed(BODY), BODY)


def test_verify_rejects_old_and_future_timestamps():
    headers = signed(BODY, 1718000000)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(SECRET, headers, BODY, now=1718000000 + 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(SECRET, headers, BODY, now=1718000000 - 301)
    assert verify(SECRET, headers, BODY, tolerance=600, now=1718000000 + 301)


def test_verify_rejects_a_replayed_signature_with_a_new_timestamp():
    t = 1718000000
    sig = sign(SECRET, t, BODY)
    forged = {"Tidings-Signature": f"t={t + 1000},v1={sig}"}
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, forged, BODY, now=t + 1000)


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=,v1=abc", "t=-5,v1=abc",
                                    "t=12.5,v1=abc", "t=\u0661\u0662,v1=abc", "garbage"])
def test_verify_rejects_malformed_headers(header):
    headers = {} if header is None else {"Tidings-Signature": header}
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, BODY)


def test_verify_matches_header_names_case_insensitively_in_a_plain_dict():
    headers = {"tidings-signature": signed(BODY)["Tidings-Signature"]}
    assert verify(SECRET, headers, BODY)


def test_rotation_sends_one_v1_per_secret_and_either_verifies():
    header = {"Tidings-Signature": signature_header(["old", "new"], int(time.time()), BODY)}
    assert header["Tidings-Signature"].count("v1=") == 2
    assert verify("old", header, BODY) and verify("new", header, BODY)
    with pytest.raises(WebhookVerificationError):
        verify("neither", header, BODY)


@given(body=st.binary(max_size=200), flip=st.integers(0, 199))
def test_any_changed_byte_is_rejected(body, flip):
    now = 1718000000
    headers = signed(body, now)
    assert verify(SECRET, headers, body, now=now) == now
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]
        with pytest.raises(WebhookVerificationError):
            verify(SECRET, headers, tampered, now=now)


def docs_snippet():
    text = DOCS.read_text()
    code = re.search(r"### Verification snippet.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["verify_tidings_webhook"], namespace["WebhookVerificationError"]


def test_the_documented_snippet_agrees_with_verify():
    check, error = docs_snippet()
    headers = signed(BODY)
    assert check(SECRET, headers, BODY) == verify(SECRET, headers, BODY)
    with pytest.raises(error):
        check(SECRET, headers, BODY + b" ")
    with pytest.raises(error):
        check(SECRET, signed(BODY, int(time.time()) - 301), BODY)
    with pytest.raises(error):
        check(SECRET, {}, BODY)


# -- the channel against a real receiver ---------------------------------------------------


async def test_delivers_a_signed_notification():
    receiver = WebhookReceiver(SECRET)
    wh = channel()
    async with serve(receiver) as url:
        job = hook(url + "/hooks/tidings", id="01J0.webhook.0")
        result = await wh.send(job)
    await wh.aclose()
    assert result.outcome == "delivered" and result.status == 204
    assert receiver.rejected == []
    headers, body = receiver.requests[0]
    assert headers["tidings-id"] == "01J0.webhook.0"
    assert headers["tidings-event"] == "notification.created"
    assert headers["tidings-attempt"] == "1"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("tidings-webhooks/")
    event = receiver.accepted[0]
    assert event == {"id": "01J0.webhook.0", "type": "notification.created", "app": "acme",
                     "user": "alice", "notification": json.loads(job.notification)}
    # the documented snippet accepts the very bytes that crossed the wire
    check, _ = docs_snippet()
    assert check(SECRET, headers, body)


@pytest.mark.parametrize(
    "status,retry_after,outcome,wait",
    [(500, None, "retry", None), (503, "7", "retry", 7.0), (429, "120", "retry", 120.0),
     (408, None, "retry", None), (400, None, "failed", None), (404, None, "failed", None),
     (410, None, "failed", None), (301, None, "failed", None)],
)
async def test_status_classification(status, retry_after, outcome, wait):
    receiver = WebhookReceiver(SECRET, fail_first=1, fail_status=status, retry_after=retry_after)
    wh = channel()
    async with serve(receiver) as url:
        result = await wh.send(hook(url))
    await wh.aclose()
    assert (result.outcome, result.status, result.retry_after) == (outcome, status, wait)
    assert not result.gone  # a webhook endpoint is the app's, tidings never deletes it
    assert f"HTTP {status}" in result.detail


async def test_error_answers_are_kept_short_and_on_one_line():
    async def chatty(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"line one\nline two " + b"x" * 10_000})

    wh = channel(max_error_body=64)
    async with serve(chatty) as url:
        result = await wh.send(hook(url))
    await wh.aclose()
    assert result.outcome == "retry"
    assert result.detail.startswith("HTTP 500: line one line two xxx")
    assert "\n" not in result.detail and len(result.detail) < 100


async def test_a_refused_connection_is_retried():
    async with serve(WebhookReceiver(SECRET)) as url:
        pass  # the port is closed again
    wh = channel()
    result = await wh.send(hook(url))
    await wh.aclose()
    assert result.outcome == "retry" and "ConnectError" in result.detail


async def test_a_receiver_that_does_not_answer_times_out():
    hold = asyncio.Event()
    receiver = WebhookReceiver(SECRET, hold=hold)
    wh = channel(timeout=0.2)
    async with serve(receiver) as url:
        result = await wh.send(hook(url))
        hold.set()
    await wh.aclose()
    assert result.outcome == "retry" and "timed out" in result.detail


async def test_an_endpoint_without_a_secret_is_a_permanent_failure():
    async def none(job):
        return None

    wh = WebhookChannel(none, WebhookConfig(allow_insecure=True))
    result = await wh.send(hook("http://127.0.0.1:9/"))
    await wh.aclose()
    assert result.outcome == "failed" and result.gone


@pytest.mark.parametrize("url", ["http://hooks.acme.test/x", "https://127.0.0.1/x",
                                 "https://localhost/x", "https://169.254.169.254/latest",
                                 "https://[::1]/x", "https://10.1.2.3/x", "ftp://acme.test/x",
                                 "https://acme.test:99999/x", None, "not a url",
                                 "https://2130706433/x", "https://127.1/x",
                                 "https://0x7f.0.0.1/x", "https://localhost./x",
                                 "https://[::ffff:127.0.0.1]/x", "https://0.0.0.0/x",
                                 "https://xn--zz.acme.test/x"])
async def test_unsafe_urls_are_refused_unless_insecure_is_allowed(url):
    wh = WebhookChannel(secret_for)
    result = await wh.send(hook(url))
    await wh.aclose()
    assert result.outcome == "failed" and "bad webhook url" in result.detail


def test_check_url():
    assert check_url("https://hooks.acme.test/x") == "https://hooks.acme.test/x"
    assert check_url("https://93.184.216.34/x")
    assert check_url("http://127.0.0.1:8080/x", allow_insecure=True)
    with pytest.raises(ValueError):
        check_url("https://" + "a" * 3000)


# -- a name that resolves to this machine (docs/channels.md#destination-urls-and-ssrf) -------


async def test_a_name_that_resolves_to_a_non_public_address_is_dead_at_once(tmp_path,
                                                                            monkeypatch):
    name, addresses = local_name()
    queue = MemoryQueue()
    async with tls_receiver(tmp_path, name, addresses) as receiver:
        # its certificate is trusted: only the address rule can stop the request
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        queue.put(hook(f"https://{name}:{receiver.port}/hooks/tidings", id="d-ssrf"))
        worker = await run_worker(queue, WebhookChannel(secret_for),
                                  until=lambda q: q.dead_letters or q.completed or q.retries)
    assert receiver.connections == []  # not even a TCP connection
    (job, reason), = queue.dead_letters
    assert reason == f"the destination {name} resolves to a non-public address"
    assert not any(address in reason for address in addresses)  # the log has it
    assert job.attempts == 0 and queue.retries == []
    assert worker.counts["webhook", "failed"] == 1


async def test_allow_insecure_lets_the_same_name_through_with_tls_checked(tmp_path, monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        wh = channel()
        result = await wh.send(hook(f"https://{name}:{receiver.port}/hooks/tidings", id="d-ok"))
        await wh.aclose()
    assert result.outcome == "delivered" and result.status == 204
    assert receiver.server_names == [name]
    (head, _), = receiver.requests
    assert head.startswith(b"POST /hooks/tidings HTTP/1.1\r\n")
    assert b"\r\ntidings-id: d-ok\r\n" in head.lower()


# -- through an egress proxy (docs/channels.md#egress-proxy) ---------------------------------

PROXY_USER, PROXY_PASSWORD = "tidings-egress", "pr0xy@pass"  # "@" is %40 in the URL


async def test_a_webhook_goes_through_the_egress_proxy_with_its_credentials(tmp_path,
                                                                           monkeypatch):
    name, addresses = local_name()
    async with tls_receiver(tmp_path, name, addresses) as receiver, \
            connect_proxy(credentials=f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        wh = WebhookChannel(secret_for, WebhookConfig(allow_insecure=True),
                            proxy=proxy.url(f"{PROXY_USER}:pr0xy%40pass"))
        result = await wh.send(hook(f"https://{name}:{receiver.port}/hooks/tidings", id="d-px"))
        await wh.aclose()
    assert result.outcome == "delivered" and result.status == 204
    token = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    assert proxy.authorizations == [f"Basic {token}"]
    assert proxy.targets == [f"{receiver.connections[0]}:{receiver.port}"]  # not the name
    assert receiver.server_names == [name]
    (head, _), = receiver.requests
    assert b"\r\ntidings-id: d-px\r\n" in head.lower()
    assert b"proxy-authorization" not in head.lower()  # for the proxy only


async def test_a_non_public_destination_is_dead_before_the_proxy_sees_it(tmp_path, monkeypatch):
    name, addresses = local_name()
    queue = MemoryQueue()
    async with tls_receiver(tmp_path, name, addresses) as receiver, connect_proxy() as proxy:
        monkeypatch.setenv("SSL_CERT_FILE", str(receiver.ca_file))
        queue.put(hook(f"https://{name}:{receiver.port}/hooks/tidings", id="d-ssrf"))
        await run_worker(queue, WebhookChannel(secret_for, proxy=proxy.url()),
                         until=lambda q: q.dead_letters or q.completed or q.retries)
    (job, reason), = queue.dead_letters
    assert reason == f"the destination {name} resolves to a non-public address"
    assert proxy.connections == 0 and receiver.connections == []


async def test_a_proxy_that_refuses_the_connect_is_retried_without_its_credentials(caplog):
    queue = MemoryQueue()
    async with serve(WebhookReceiver(SECRET)) as url, \
            connect_proxy(credentials=f"{PROXY_USER}:another") as proxy:
        queue.put(hook(url, id="d-407"))
        with caplog.at_level(logging.DEBUG):
            await run_worker(queue, channel(proxy=proxy.url(f"{PROXY_USER}:pr0xy%40pass")),
                             until=lambda q: q.retries)
    job, _ = queue.retries[0]
    port = url.rsplit(":", 1)[1]
    assert job.last_error == (f"ConnectError: the egress proxy refused CONNECT 127.0.0.1:{port}: "
                              "407 Proxy Authentication Required")
    for secret in (PROXY_USER, "pr0xy", PROXY_PASSWORD):
        assert secret not in job.last_error and secret not in caplog.text


async def test_an_unreachable_egress_proxy_is_a_retried_connection_error(caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once it is closed
    queue = MemoryQueue()
    async with serve(WebhookReceiver(SECRET)) as url:
        queue.put(hook(url, id="d-down"))
        with caplog.at_level(logging.WARNING, logger="tidings.channels"):
            await run_worker(queue, channel(proxy=f"http://{PROXY_USER}:pr0xy%40pass@127.0.0.1:"
                                            f"{port}"), until=lambda q: q.retries)
    job, _ = queue.retries[0]
    # the reason is the app admins' to read: neither the proxy's address nor its credentials
    assert job.last_error == "ConnectError: the egress proxy cannot be reached"
    assert f"the egress proxy 127.0.0.1:{port} cannot be reached" in caplog.text  # the log's
    assert PROXY_USER not in caplog.text and "pr0xy" not in caplog.text


async def test_an_egress_proxy_that_does_not_answer_times_out():
    hold = asyncio.Event()
    async with serve(WebhookReceiver(SECRET)) as url, connect_proxy(hold=hold) as proxy:
        wh = channel(proxy=proxy.url(), connect_timeout=0.2)
        result = await wh.send(hook(url))
        hold.set()
        await wh.aclose()
    assert result.outcome == "retry" and result.detail == "timed out: ConnectTimeout"
    assert len(proxy.targets) == 1


async def test_http_destinations_are_tunnelled_through_the_proxy_too():
    receiver = WebhookReceiver(SECRET)
    async with serve(receiver) as url, connect_proxy() as proxy:
        wh = channel(proxy=proxy.url())
        result = await wh.send(hook(url + "/hooks/tidings"))
        await wh.aclose()
    assert result.outcome == "delivered" and receiver.rejected == []
    assert proxy.targets == [url.removeprefix("http://")]


# -- through the worker: retries, backoff, dead letters -------------------------------------


async def run_worker(queue, wh, policy=FAST, until=None):
    worker = Worker(queue, [Lane(wh, concurrency=4, policy=policy)], poll_interval=0.02)
    async with worker:
        await queue.wait(until)
    await wh.aclose()
    return worker


async def test_retries_with_backoff_then_delivers_once():
    receiver = WebhookReceiver(SECRET, fail_first=2)
    queue = MemoryQueue()
    assert isinstance(queue, JobQueue)
    async with serve(receiver) as url:
        queue.put(hook(url, id="d-1"))
        worker = await run_worker(queue, channel(), until=lambda q: q.completed)
    assert receiver.attempts == {"d-1": 3}
    assert [h["tidings-attempt"] for h, _ in receiver.requests] == ["1", "2", "3"]
    assert {h["tidings-id"] for h, _ in receiver.requests} == {"d-1"}
    assert receiver.rejected == [] and len(receiver.accepted) == 1
    # each retry was recorded with its count and its reason
    assert [(job.attempts, job.last_error) for job, _ in queue.retries] == [
        (1, "HTTP 500: try again later"), (2, "HTTP 500: try again later")]
    assert queue.dead_letters == [] and [j.id for j in queue.completed] == ["d-1"]
    assert worker.counts["webhook", "retry"] == 2 and worker.counts["webhook", "delivered"] == 1


async def test_gives_up_after_max_attempts_into_the_dead_letter_list():
    receiver = WebhookReceiver(SECRET, fail_first=10**6, fail_status=503)
    queue = MemoryQueue()
    async with serve(receiver) as url:
        queue.put(hook(url, id="d-2"))
        worker = await run_worker(queue, channel(), until=lambda q: q.dead_letters)
    assert receiver.attempts == {"d-2": 3}  # FAST allows 3 attempts in all
    (job, reason), = queue.dead_letters
    assert job.attempts == 3 and reason == "gave up after 3 attempts: HTTP 503: try again later"
    assert queue.completed == [] and queue.jobs == {}
    assert worker.counts["webhook", "dead"] == 1


async def test_a_permanent_failure_is_dead_at_once():
    receiver = WebhookReceiver(SECRET, fail_first=10**6, fail_status=422)
    queue = MemoryQueue()
    async with serve(receiver) as url:
        queue.put(hook(url))
        await run_worker(queue, channel(), until=lambda q: q.dead_letters)
    assert sum(receiver.attempts.values()) == 1
    assert queue.dead_letters[0][1] == "HTTP 422: try again later"
    assert queue.retries == []


async def test_retry_after_sets_the_earliest_next_attempt():
    receiver = WebhookReceiver(SECRET, fail_first=1, fail_status=429, retry_after="120")
    queue = MemoryQueue()
    policy = RetryPolicy(base=0.01, cap=0.02, max_attempts=5)
    async with serve(receiver) as url:
        queue.put(hook(url))
        before = time.time()
        await run_worker(queue, channel(), policy=policy, until=lambda q: q.retries)
    (job, at), = queue.retries
    assert at >= before + 120  # honoured, although the policy alone says 20 ms at most
    assert job.attempts == 1 and "HTTP 429" in job.last_error
    assert queue.completed == []  # not due yet


def test_job_round_trips_through_json():
    job = hook("https://hooks.acme.test/x", expires_at=5.0, attempts=2, last_error="HTTP 500")
    assert msgspec.json.decode(msgspec.json.encode(job), type=type(job)) == job


async def test_a_2xx_whose_body_trickles_is_still_delivered():
    release = asyncio.Event()

    async def trickle(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"k"})

    wh = channel(timeout=0.2)
    async with serve(trickle) as url:
        result = await wh.send(hook(url))
        release.set()
    await wh.aclose()
    assert result.outcome == "delivered" and result.status == 200
