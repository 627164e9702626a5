"""Client / AsyncClient request building, errors and retries (httpx MockTransport)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from tidings.client import AsyncClient, Client, TidingsAPIError, notification
from tidings.client.errors import parse_retry_after


class Recorder:
    """A transport that records requests and answers from a list of responses."""

    def __init__(self, *responses: httpx.Response | Exception):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def body(self, i: int = -1):
        return json.loads(self.requests[i].content)


def client(rec: Recorder, **kw) -> Client:
    return Client("http://t.test/", api_key="tk_1", token="ut_1",
                  http_client=httpx.Client(transport=httpx.MockTransport(rec)), **kw)


def test_publish_builds_body_headers_and_omits_none():
    rec = Recorder(httpx.Response(202, json={"id": "n1", "recipients": 1, "status": "accepted"}))
    c = client(rec)
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    out = c.publish(["alice"], title="Hi", data={"k": 1}, deliver_at=when, idempotency_key="k1")
    assert out["id"] == "n1"
    req = rec.requests[0]
    assert (req.method, str(req.url)) == ("POST", "http://t.test/v1/notifications")
    assert req.headers["Authorization"] == "Bearer tk_1"
    assert req.headers["Idempotency-Key"] == "k1"
    assert rec.body() == {"to": {"users": ["alice"]}, "title": "Hi", "data": {"k": 1},
                          "deliver_at": "2030-01-02T03:04:05+00:00"}
    c.publish({"topic": "news"}, body="b")
    assert "Idempotency-Key" not in rec.requests[1].headers
    assert rec.body() == {"to": {"topic": "news"}, "body": "b"}
    with pytest.raises(TypeError):
        c.publish("alice", title="x")


def test_batch_topics_tokens_and_quoting():
    rec = Recorder(httpx.Response(200, json={"results": [{"id": "a"}, {"id": "b"}]}))
    c = client(rec)
    assert c.publish_batch([notification(["u"], title="1"), {"to": {"all": True}}]) == [
        {"id": "a"}, {"id": "b"}]
    assert rec.body() == {"notifications": [{"to": {"users": ["u"]}, "title": "1"},
                                            {"to": {"all": True}}]}
    c.subscribe("news", "a/b c")
    assert rec.requests[-1].method == "PUT"
    assert rec.requests[-1].url.raw_path == b"/v1/topics/news/subscribers/a%2Fb%20c"
    c.unsubscribe("news", ["u1", "u2"])
    assert rec.body() == {"users": ["u1", "u2"], "action": "remove"}
    c.unsubscribe("news", "u1")
    assert rec.requests[-1].method == "DELETE"

    rec.responses = [httpx.Response(200, json={"token": "ut_x", "expires_at": 1})]
    assert c.mint_token("alice", ttl=60) == "ut_x"
    assert rec.body() == {"ttl": 60}


def test_me_calls_use_the_user_token():
    rec = Recorder(httpx.Response(200, json={"items": []}))
    c = client(rec)
    c.inbox(limit=20, state="unread")
    req = rec.requests[-1]
    assert req.headers["Authorization"] == "Bearer ut_1"
    assert req.url.params == httpx.QueryParams({"limit": "20", "state": "unread"})
    c.mark_read(["n1", "n2"], token="ut_other")
    assert rec.requests[-1].headers["Authorization"] == "Bearer ut_other"
    assert rec.body() == {"ids": ["n1", "n2"]}
    c.archive(all=True)
    assert rec.requests[-1].url.path == "/v1/me/notifications/archive"
    assert rec.body() == {"all": True}
    with pytest.raises(ValueError):
        c.mark_seen()
    with pytest.raises(ValueError):
        Client("http://t.test", api_key="k").counts()


def test_preferences_are_replaced_with_put_and_changed_with_patch():
    rec = Recorder(httpx.Response(200, json={"categories": {"promo": {"email": False}}}))
    c = client(rec)
    patch = {"categories": {"promo": {"email": False}}, "quiet_hours": None}
    assert c.update_preferences(patch) == {"categories": {"promo": {"email": False}}}
    req = rec.requests[-1]
    assert (req.method, req.url.path) == ("PATCH", "/v1/me/preferences")
    assert req.headers["Authorization"] == "Bearer ut_1" and rec.body() == patch
    c.update_user_preferences("a/b", {"digests": {"social": None}})
    req = rec.requests[-1]
    assert (req.method, req.url.raw_path) == ("PATCH", b"/v1/users/a%2Fb/preferences")
    assert req.headers["Authorization"] == "Bearer tk_1"
    assert rec.body() == {"digests": {"social": None}}
    c.set_user_preferences("ann", {"categories": {}})
    assert rec.requests[-1].method == "PUT"


def test_preferences_come_with_their_etag_and_writes_send_it_as_if_match():
    tag = '"0123456789abcdef0123456789abcdef"'
    rec = Recorder(httpx.Response(200, json={"categories": {}}, headers={"ETag": tag}))
    c = client(rec)
    prefs = c.get_preferences()
    assert prefs == {"categories": {}} and prefs.etag == tag
    assert c.get_user_preferences("ann").etag == tag
    c.set_preferences(prefs, if_match=prefs.etag)
    assert rec.requests[-1].headers["If-Match"] == tag and rec.body() == {"categories": {}}
    c.update_preferences({"quiet_hours": None}, if_match=tag)
    c.set_user_preferences("ann", prefs, if_match=tag)
    c.update_user_preferences("ann", {}, if_match=tag)
    assert [r.headers["If-Match"] for r in rec.requests[-4:]] == [tag] * 4
    c.update_preferences({})  # no if_match: no condition
    assert "If-Match" not in rec.requests[-1].headers
    rec.responses = [httpx.Response(200, json={"items": []})]  # no ETag: a plain dict
    assert not hasattr(c.inbox(), "etag")
    rec.responses = [httpx.Response(412, json={"error": {
        "code": "precondition_failed", "message": "changed", "field": "If-Match"}})]
    with pytest.raises(TidingsAPIError) as stale:
        c.set_preferences({}, if_match=tag)
    assert (stale.value.status, stale.value.code) == (412, "precondition_failed")
    assert len(rec.requests) == 9  # a 412 is not retried


def test_errors_are_parsed():
    rec = Recorder(httpx.Response(
        422, json={"error": {"code": "invalid", "message": "bad title", "field": "title"}}))
    with pytest.raises(TidingsAPIError) as e:
        client(rec).publish(["a"], title="x")
    err = e.value
    assert (err.status, err.code, err.message, err.field) == (422, "invalid", "bad title", "title")

    rec = Recorder(httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(TidingsAPIError) as e:
        client(rec).get_topic("x")
    assert (e.value.status, e.value.code, e.value.message) == (502, "http_502", "Bad Gateway")


def test_429_is_retried_with_retry_after_then_raises():
    limited = httpx.Response(429, headers={"Retry-After": "0"},
                             json={"error": {"code": "rate_limited", "message": "slow down"}})
    rec = Recorder(limited, httpx.Response(202, json={"id": "n1"}))
    assert client(rec).publish(["a"])["id"] == "n1"
    assert len(rec.requests) == 2

    rec = Recorder(limited)
    with pytest.raises(TidingsAPIError) as e:
        client(rec, max_retries=1).publish(["a"])
    assert e.value.retry_after == 0 and len(rec.requests) == 2


def test_ambiguous_failures_retry_only_idempotent_requests():
    timeout = httpx.ReadTimeout("slow")
    rec = Recorder(timeout, httpx.Response(202, json={"id": "n1"}))
    with pytest.raises(httpx.ReadTimeout):
        client(rec).publish(["a"])  # no key: it may have been published
    rec = Recorder(timeout, httpx.Response(202, json={"id": "n1"}))
    assert client(rec).publish(["a"], idempotency_key="k")["id"] == "n1"
    rec = Recorder(httpx.ConnectError("refused"), httpx.Response(204))
    assert client(rec).delete_notification("n1") is None


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 2099 00:00:10 GMT", now=4070908800.0) == 10.0


async def test_async_client_has_the_same_api():
    rec = Recorder(httpx.Response(200, json={"token": "ut_9", "expires_at": 1}))
    async with AsyncClient("http://t.test", api_key="tk_1",
                           http_client=httpx.AsyncClient(transport=httpx.MockTransport(rec))) as ac:
        assert await ac.mint_token("bob") == "ut_9"
        rec.responses = [httpx.Response(404, json={"error": {"code": "not_found",
                                                             "message": "no such"}})]
        with pytest.raises(TidingsAPIError) as e:
            await ac.get_notification("nope")
        assert e.value.code == "not_found"
        sub = ac.subscriber(token="ut_9", cursor="ab:1")
        assert sub.cursor == "ab:1"
