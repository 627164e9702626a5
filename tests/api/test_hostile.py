"""Hostile input (docs/design.md §2.7, §2.8): every bad request is a 4xx with a JSON
``{"error": {"code", "message"}}`` body -- never a 500, never a leak, never
damage to stored data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.core import auth

GOOD = {"to": {"users": ["alice"]}, "title": "keep me"}
PUBLISH = "/v1/notifications"


def assert_error(r: httpx.Response, status: int, code: str | None = None,
                 field: str | None = None, case: object = None) -> dict:
    """``r`` is a ``status`` answer with a well-formed JSON error body."""
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), (case, r.headers)
    doc = r.json()
    assert set(doc) == {"error"}, (case, doc)
    err = doc["error"]
    assert isinstance(err["code"], str) and err["code"], (case, err)
    assert isinstance(err["message"], str) and err["message"], (case, err)
    if code is not None:
        assert err["code"] == code, (case, err)
    if field is not None:
        assert err.get("field") == field, (case, err)
    return err


async def _publish_good(server) -> str:
    async with server.http() as http:
        r = await http.post(PUBLISH, json=GOOD)
        assert r.status_code == 202, r.text
        return r.json()["id"]


async def _assert_intact(server, nid: str) -> None:
    """The earlier good notification is still there, unchanged, and alone."""
    async with server.http() as http:
        r = await http.get(f"/v1/notifications/{nid}")
        assert r.status_code == 200, r.text
        assert r.json()["notification"]["title"] == "keep me"
        r = await http.get("/v1/users/alice/notifications", params={"state": "all"})
        assert [i["id"] for i in r.json()["items"]] == [nid]
    async with server.http(await server.token("alice")) as me:
        assert (await me.get("/v1/me/counts")).json() == {
            "unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}


# -- bodies --------------------------------------------------------------------------


BAD_BODIES = [
    # (raw body, status, code, field)
    (b'{"to": {"users": ["alice"]}, "title": ', 400, "malformed_json", None),
    (b"{'to': 1}", 400, "malformed_json", None),
    (b"\xff\xfe\x00garbage", 400, "malformed_json", None),
    (b'{"to": {"all": true}, "title": "\\ud800"}', 400, "malformed_json", None),
    (b'{"to": {"all": true}} trailing', 400, "malformed_json", None),
    (b"", 400, "empty_body", None),
    (b"   \n ", 400, "empty_body", None),
    (b"[]", 422, "invalid", None),
    (b'[{"to": {"all": true}}]', 422, "invalid", None),
    (b'"hello"', 422, "invalid", None),
    (b"null", 422, "invalid", None),
    (b"42", 422, "invalid", None),
    (b"[" * 50_000, 422, "invalid", None),  # refused at the first "["
    # Nesting deeper than the decoder's recursion limit: not a RecursionError -> 500.
    (b'{"to": {"all": true}, "data": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
     400, None, None),
]


# The tables below run in one test each (one server), not parametrized: a
# server per case would cost more than all the requests together.


async def test_bad_json_bodies(server):
    async with server.http() as http:
        for raw, status, code, field in BAD_BODIES:
            r = await http.post(PUBLISH, content=raw,
                                headers={"content-type": "application/json"})
            assert_error(r, status, code, field, case=raw[:60])


WRONG = [
    # (body, field)
    ({}, None),  # "to" missing
    ({"to": "alice"}, "to"),
    ({"to": {"users": "alice"}}, "to.users"),
    ({"to": {"users": [1, 2]}}, "to.users[0]"),
    ({"to": {"users": []}}, "to.users"),
    ({"to": {"topic": 7}}, "to.topic"),
    ({"to": {"all": "yes"}}, "to.all"),
    ({"to": {"all": True}, "title": 5}, "title"),
    ({"to": {"all": True}, "title": None}, "title"),
    ({"to": {"all": True}, "title": "x" * 1025}, "title"),
    ({"to": {"all": True}, "body": ["x"]}, "body"),
    ({"to": {"all": True}, "data": []}, "data"),
    ({"to": {"all": True}, "data": "x"}, "data"),
    ({"to": {"all": True}, "tags": "a,b"}, "tags"),
    ({"to": {"all": True}, "tags": [1]}, "tags[0]"),
    ({"to": {"all": True}, "tags": ["t"] * 33}, "tags"),
    ({"to": {"all": True}, "ttl": "60"}, "ttl"),
    ({"to": {"all": True}, "ttl": 0}, "ttl"),
    ({"to": {"all": True}, "ttl": -5}, "ttl"),
    ({"to": {"all": True}, "ttl": 1.5}, "ttl"),
    ({"to": {"all": True}, "ttl": 10 ** 30}, "ttl"),
    ({"to": {"all": True}, "deliver_at": "tomorrow"}, "deliver_at"),
    ({"to": {"all": True}, "deliver_at": "2020-01-01T00:00:00"}, "deliver_at"),
    ({"to": {"all": True}, "category": "has space"}, "category"),
    ({"to": {"all": True}, "category": ""}, "category"),
    ({"to": {"all": True}, "priority": "extreme"}, "priority"),
    ({"to": {"all": True}, "priority": "HIGH"}, "priority"),
    ({"to": {"all": True}, "priority": 1}, "priority"),
    ({"to": {"all": True}, "actor": {"id": 1}}, "actor"),
    # unknown fields: a typo is an error, not silently dropped
    ({"to": {"all": True}, "tittle": "x"}, "tittle"),
    ({"to": {"all": True, "everyone": True}}, "to.everyone"),
    ({"to": {"all": True}, "id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"}, "id"),
    # targets
    ({"to": {}}, "to"),
    ({"to": {"all": False}}, "to"),
    ({"to": {"users": ["a"], "topic": "t"}}, "to"),
    ({"to": {"users": ["a"], "all": True}}, "to"),
    ({"to": {"topic": "t", "all": True}}, "to"),
    ({"to": {"users": [f"u{i}" for i in range(1001)]}}, "to.users"),
    # user ids
    ({"to": {"users": ["a" * 129]}}, "to.users[0]"),
    ({"to": {"users": [""]}}, "to.users[0]"),
    ({"to": {"users": ["ok", "bad\x00id"]}}, "to.users[1]"),
    ({"to": {"users": ["alice\n"]}}, "to.users[0]"),
    ({"to": {"users": ["tab\tbed"]}}, "to.users[0]"),
    ({"to": {"users": ["del\x7f"]}}, "to.users[0]"),
    # topic names
    ({"to": {"topic": ""}}, "to.topic"),
    ({"to": {"topic": "has space"}}, "to.topic"),
    ({"to": {"topic": "a/b"}}, "to.topic"),
    ({"to": {"topic": "caf\u00e9"}}, "to.topic"),
    ({"to": {"topic": "t" * 129}}, "to.topic"),
    ({"to": {"topic": "guild:7\n"}}, "to.topic"),
]


async def test_invalid_publish_is_422_with_field(server):
    async with server.http() as http:
        for body, field in WRONG:
            r = await http.post(PUBLISH, json=body)
            assert_error(r, 422, field=field, case=json.dumps(body)[:80])
        r = await http.get("/v1/users/alice/notifications", params={"state": "all"})
        assert r.json()["items"] == []


async def test_deliver_at_beyond_the_scheduling_horizon_is_refused_not_lost(server):
    async with server.http() as http:
        r = await http.post(PUBLISH, json={"to": {"all": True},
                                           "deliver_at": "2999-01-01T00:00:00Z"})
        assert_error(r, 422, field="deliver_at")
        r = await http.get("/v1/users/alice/notifications", params={"state": "all"})
        assert r.json()["items"] == []


async def test_oversized_body_is_413(server):
    async with server.http() as http:
        big = {"to": {"all": True}, "data": {"x": "a" * (256 * 1024)}}
        assert_error(await http.post(PUBLISH, json=big), 413, "payload_too_large")

        # Without a Content-Length (chunked): the limit holds while streaming.
        async def chunks():
            yield b'{"to": {"all": true}, "data": {"x": "'
            for _ in range(40):
                yield b"a" * 8192
            yield b'"}}'

        r = await http.post(PUBLISH, content=chunks(),
                            headers={"content-type": "application/json"})
        assert_error(r, 413, "payload_too_large")
        # The same goes for the other body-taking routes.
        for method, path in [("PUT", "/v1/users/alice/preferences"),
                             ("POST", "/v1/topics/t/subscribers"),
                             ("POST", "/v1/users/alice/tokens")]:
            r = await http.request(method, path, content=b" " * (300 * 1024))
            assert_error(r, 413, case=path)
    async with server.http(await server.token("alice")) as me:
        r = await me.post("/v1/me/notifications/read", content=b" " * (300 * 1024))
        assert_error(r, 413)


async def test_oversized_notification_is_413(server):
    async with server.http() as http:
        body = {"to": {"users": ["alice"]}, "data": {"blob": "x" * (17 * 1024)}}
        assert_error(await http.post(PUBLISH, json=body), 413, "payload_too_large")
        nid = (await http.post(PUBLISH, json={"to": {"users": ["alice"]}})).json()["id"]
        r = await http.patch(f"/v1/notifications/{nid}", json={"data": body["data"]})
        assert_error(r, 413, "payload_too_large")
        r = await http.get("/v1/users/alice/notifications")
        assert [i["id"] for i in r.json()["items"]] == [nid]
        assert r.json()["items"][0]["notification"].get("data", {}) == {}


async def _raw_request(server, raw: bytes) -> httpx.Response:
    """The answer to the request ``raw``, sent as it is (httpx sends no
    transfer coding but chunked)."""
    import asyncio

    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


async def test_a_body_in_a_coding_tidings_does_not_undo_is_refused_not_misread(server):
    """``Content-Encoding: gzip`` is 415 and a transfer coding other than
    chunked 501, naming the header, on every route that reads a body (the
    direct ones included): read as they came, the bytes were a confusing
    ``malformed_json``, or, on a body the route may ignore, taken in silence."""
    import gzip

    body = json.dumps(GOOD).encode()
    packed = gzip.compress(body)

    async def chunks(raw: bytes):
        yield raw

    async with server.http() as http:
        for path, method in ((PUBLISH, "POST"), (PUBLISH + "/batch", "POST"),
                             ("/v1/users/alice/preferences", "PUT"),
                             ("/v1/users/alice/tokens", "POST")):
            for coding in ("gzip", "br", "identity, gzip"):
                r = await http.request(method, path, content=packed,
                                       headers={"Content-Encoding": coding})
                assert_error(r, 415, "unsupported_encoding", "Content-Encoding",
                             case=(path, coding))
            for coding in (b"gzip, chunked", b"deflate, chunked"):
                r = await _raw_request(server, b"%s %s HTTP/1.1\r\nHost: t\r\n"
                                       b"Authorization: Bearer %s\r\nTransfer-Encoding: %s"
                                       b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                                           method.encode(), path.encode(),
                                           server.api_key.encode(), coding, len(packed),
                                           packed))
                assert_error(r, 501, "not_implemented", "Transfer-Encoding",
                             case=(path, coding))
        # the coding of no coding, and chunked alone, are read as ever
        r = await http.post(PUBLISH, content=body, headers={"Content-Encoding": "identity",
                                                            "Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        r = await http.post(PUBLISH, content=chunks(body),
                            headers={"Content-Type": "application/json"})
        assert r.status_code == 202, r.text
        r = await http.get("/v1/users/alice/notifications")
        assert len(r.json()["items"]) == 2
    async with server.http(await server.token("alice")) as me:
        r = await me.post("/v1/me/notifications/read", content=gzip.compress(b'{"all": true}'),
                          headers={"Content-Encoding": "gzip"})
        assert_error(r, 415, "unsupported_encoding", "Content-Encoding")


async def test_batch_hostility(server):
    async with server.http() as http:
        for raw, status in [(b'{"notifications": {}}', 422), (b'{"notifications": []}', 422),
                            (b"[]", 422), (b'{"notifications": [1], "x": 1}', 422),
                            (b'{"notifications": [', 400), (b"", 400)]:
            r = await http.post(PUBLISH + "/batch", content=raw)
            assert_error(r, status, case=raw)
        r = await http.post(PUBLISH + "/batch", content=b'{"notifications": [1, "x", null, [],'
                                                        b' {"to": {"all": true}, "q": 1}]}')
        assert r.status_code == 202, r.text
        for res in r.json()["results"]:
            assert res["status"] == "error"
            assert res["error"]["code"] == "invalid"
        r = await http.post(PUBLISH + "/batch", json={"notifications": [
            {"to": {"users": ["alice"]}, "data": {"x": "y" * (17 * 1024)}},
            {"to": {"users": ["alice"]}, "title": "ok"}]})
        results = r.json()["results"]
        assert results[0]["error"]["code"] == "payload_too_large"
        assert results[1]["status"] == "accepted"


async def test_bad_idempotency_key(server):
    async with server.http() as http:
        r = await http.post(PUBLISH, json=GOOD, headers={"Idempotency-Key": "k" * 256})
        assert_error(r, 422, field="Idempotency-Key")
        r = await http.post(PUBLISH, json=GOOD, headers={"Idempotency-Key": ""})
        assert_error(r, 422, field="Idempotency-Key")
        r = await http.get("/v1/users/alice/notifications")
        assert r.json()["items"] == []


# -- paths and query strings ------------------------------------------------------------


async def test_bad_path_params(server):
    nid = await _publish_good(server)
    long_user = "u" * 129
    async with server.http() as http:
        for method, path, body in [
            ("GET", f"/v1/users/{long_user}/notifications", None),
            ("GET", "/v1/users/bad%00id/notifications", None),
            ("GET", "/v1/users/bad%0Aid/preferences", None),
            ("PUT", f"/v1/users/{long_user}/preferences", {}),
            ("POST", "/v1/users/bad%1Fid/tokens", {}),
            ("PUT", f"/v1/topics/t/subscribers/{long_user}", None),
            ("PUT", "/v1/topics/t/subscribers/bad%07", None),
            ("DELETE", "/v1/topics/t/subscribers/x%7F", None),
            ("PUT", "/v1/topics/has%20space/subscribers/alice", None),
            ("GET", "/v1/topics/caf%C3%A9", None),
            ("GET", f"/v1/topics/{'t' * 129}", None),
            ("POST", "/v1/topics/a%0A/subscribers", {"users": ["alice"]}),
            # bytes that are not UTF-8 (a Latin-1 "jos\u00e9", a lone surrogate):
            # not read as U+FFFD, which would make "jos%E9" and "jos%E8" one user
            ("PUT", "/v1/topics/t/subscribers/jos%E9", None),
            ("PUT", "/v1/users/jos%E8/preferences", {}),
            ("POST", "/v1/users/%ED%A0%80/tokens", {}),
            ("GET", "/v1/users/%FF/notifications", None),
        ]:
            r = await http.request(method, path, json=body)
            err = assert_error(r, 422, case=(method, path))
            assert err.get("field") in ("user", "topic", "path"), (path, err)
        # U+FFFD itself, sent as UTF-8, is a user id like any other
        assert (await http.put("/v1/topics/t/subscribers/jos%EF%BF%BD")).status_code == 200
        assert (await http.get("/v1/topics/t")).json()["users"] == ["jos\ufffd"]
        assert (await http.delete("/v1/topics/t/subscribers/jos%EF%BF%BD")).json() == {
            "removed": 1}
        for bad_id in ("nope", "01hzzzzzzzzzzzzzzzzzzzzzzz", "0" * 27, "%00", "I" * 26):
            for method in ("GET", "PATCH", "DELETE"):
                body = {"title": "x"} if method == "PATCH" else None
                r = await http.request(method, f"/v1/notifications/{bad_id}", json=body)
                assert_error(r, 404, "not_found")
        r = await http.post("/v1/topics/t/subscribers",
                            json={"users": [f"u{i}" for i in range(10_001)]})
        assert_error(r, 422, field="users")
        r = await http.post("/v1/topics/t/subscribers", json={"users": ["a\x00"]})
        assert_error(r, 422, field="users[0]")
        r = await http.post("/v1/topics/t/subscribers", json={"users": ["a"], "action": "nuke"})
        assert_error(r, 422, field="action")
        assert (await http.get("/v1/topics/t")).json()["subscribers"] == 0
    await _assert_intact(server, nid)


async def test_query_strings_whose_bytes_are_not_utf8_are_refused_not_read_as_u_fffd(server):
    """A query string's percent-encoded bytes that are not UTF-8 would be read
    as U+FFFD: ``?tag=caf%E9`` and ``?tag=caf%E8`` (Latin-1) one tag, and
    ``?user=jos%E9`` another user's timeline.  Refused wherever a query
    string is read -- the routes served directly (a device's inbox) and the
    others -- naming the parameter."""
    async with server.http() as http:
        r = await http.post(PUBLISH, json={"to": {"users": ["jos\ufffd", "alice"]},
                                           "title": "t", "tags": ["caf\ufffd"]})
        nid = r.json()["id"]
        for path in (f"/v1/notifications/{nid}/timeline?user=jos%E9",
                     "/v1/users/alice/notifications?limit=5&tag=caf%E9",
                     "/v1/users/alice/notifications?tag=ok&tag=%FF",
                     "/v1/users/alice/notifications?t%E9g=x",
                     "/dashboard/api/notification?id=" + nid + "&user=jos%E9"):
            err = assert_error(await http.get(path), 422, "invalid", case=path)
            assert err["field"] in ("user", "tag", "t\ufffdg"), (path, err)
        # U+FFFD itself, sent as UTF-8, is a value like any other
        r = await http.get("/v1/users/alice/notifications?tag=caf%EF%BF%BD")
        assert [i["id"] for i in r.json()["items"]] == [nid]
    async with server.http(await server.token("alice")) as me:
        for path in ("/v1/me/notifications?tag=caf%E9", "/v1/me/counts?x=%C3",
                     "/v1/me/events?token=%E9"):
            assert_error(await me.get(path), 422, "invalid", case=path)
        r = await me.get("/v1/me/notifications?tag=caf%EF%BF%BD")
        assert [i["id"] for i in r.json()["items"]] == [nid]


BAD_QUERIES = [
    ({"limit": "abc"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"limit": "1e3"}, "limit"),
    ({"limit": "1_0"}, "limit"),
    ({"limit": " 5"}, "limit"),
    ({"limit": "+5"}, "limit"),
    ({"limit": "\u0665\u0660"}, "limit"),  # 50 in Arabic-Indic digits
    ({"limit": "\uff15"}, "limit"),  # a fullwidth 5
    ({"limit": ""}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "101"}, "limit"),
    ({"limit": "99999999999999999999999999"}, "limit"),
    ({"before": "yesterday"}, "before"),
    ({"before": "01hzzzzzzzzzzzzzzzzzzzzzzz"}, "before"),
    ({"before": "0" * 27}, "before"),
    ({"before": ""}, "before"),
    ({"state": "deleted"}, "state"),
    ({"state": "READ"}, "state"),
    ({"state": ""}, "state"),
]


async def test_bad_inbox_queries(server):
    async with server.http() as http, server.http(await server.token("alice")) as me:
        for params, field in BAD_QUERIES:
            r = await http.get("/v1/users/alice/notifications", params=params)
            assert_error(r, 422, field=field, case=params)
            r = await me.get("/v1/me/notifications", params=params)
            assert_error(r, 422, field=field, case=params)


async def test_bad_topic_limit(server):
    async with server.http() as http:
        for limit in ("x", "0", "1001"):
            r = await http.get("/v1/topics/t", params={"limit": limit})
            assert_error(r, 422, field="limit")


async def test_bad_client_bodies(server):
    async with server.http(await server.token("alice")) as me:
        for body, status in [
            (b"", 400), (b"{", 400), (b"[]", 422), (b'{"ids": "x"}', 422),
            (b'{"ids": [1]}', 422), (b'{"ids": ["' + b"A" * 33 + b'"]}', 422),
            (b'{"ids": ' + json.dumps(["A"] * 1001).encode() + b"}", 422),
            (b'{"all": "yes"}', 422), (b'{"all": true, "really": true}', 422),
        ]:
            for action in ("read", "seen", "archive"):
                r = await me.post(f"/v1/me/notifications/{action}", content=body)
                assert_error(r, status, case=(action, body[:60]))
        for body in [{"categories": {"bad name": {}}}, {"categories": {"x": {"sms": False}}},
                     {"categories": {"x": {"in_app": "no"}}}, {"categories": []},
                     {"quiet_hours": {"start": "25:00", "end": "07:00"}},
                     {"quiet_hours": {"start": "22:00"}},
                     {"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Nowhere/Land"}},
                     {"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "../../etc/passwd"}},
                     {"categories": {f"c{i}": {} for i in range(257)}}, {"colour": "blue"}]:
            r = await me.put("/v1/me/preferences", json=body)
            assert_error(r, 422, case=body)
        assert (await me.get("/v1/me/preferences")).json().get("categories", {}) == {}


async def test_unknown_route_and_method_are_json(server):
    async with server.http() as http:
        assert_error(await http.get("/v1/nothing-here"), 404)
        assert_error(await http.get(PUBLISH), 405)
        assert_error(await http.put("/v1/me/counts"), 405)


# -- authentication ----------------------------------------------------------------------------


async def test_server_api_credentials(server):
    nid = await _publish_good(server)
    token = await server.token("alice")
    other_app, other_key = await server.new_app()
    cases = [
        ({}, 401),
        ({"Authorization": ""}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Basic {base64.b64encode(b'user:pass').decode()}"}, 401),
        ({"Authorization": f"Basic {server.api_key}"}, 401),
        ({"Authorization": server.api_key}, 401),
        ({"Authorization": "Bearer tk_abc"}, 401),
        ({"Authorization": "Bearer not-a-key-at-all"}, 401),
        ({"Authorization": "Bearer tk_" + "x" * 200}, 401),
        ({"Authorization": "Bearer " + server.api_key[:-2] + "zz"}, 401),
        ({"Authorization": "Bearer tk_00000000_" + "A" * 32}, 401),
        ({"Authorization": f"Bearer {token}"}, 401),  # a user token is not an API key
    ]
    async with httpx.AsyncClient(base_url=server.url) as raw:
        for headers, status in cases:
            for method, path, body in [("POST", PUBLISH, GOOD),
                                       ("GET", f"/v1/notifications/{nid}", None),
                                       ("GET", "/v1/users/alice/notifications", None),
                                       ("DELETE", f"/v1/notifications/{nid}", None)]:
                r = await raw.request(method, path, json=body, headers=headers)
                err = assert_error(r, status, case=(headers, method, path))
                assert "keep me" not in r.text, err
                assert server.api_key not in r.text
    # Another app's valid key: this app's notification does not exist for it.
    async with server.http(other_key) as other:
        for method, body in [("GET", None), ("PATCH", {"title": "pwned"}), ("DELETE", None)]:
            r = await other.request(method, f"/v1/notifications/{nid}", json=body)
            assert_error(r, 404, "not_found")
            assert "keep me" not in r.text
        r = await other.get("/v1/users/alice/notifications")
        assert r.status_code == 200 and r.json()["items"] == []
    await _assert_intact(server, nid)


def _forge(claims: dict, secret: str = "another-secret-" + "x" * 64, alg: str = "HS256",
           header: dict | None = None) -> str:
    return jwt.encode(claims, secret, algorithm=alg, headers=header)


def _alg_none(claims: dict) -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def _swap_payload(signed: str, other: str) -> str:
    """``signed``'s header and signature around ``other``'s payload."""
    head, _, sig = signed.split(".")
    return f"{head}.{other.split('.')[1]}.{sig}"


def _hs256_by_hand(header: dict, claims: dict, secret: str) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_user_token_hostility(unlimited):
    server = unlimited
    nid = await _publish_good(server)
    secret = server.signing_secret
    app = server.app
    now = int(time.time())
    claims = {"sub": "alice", "app": app, "iat": now, "exp": now + 600}
    bad_tokens = {
        "expired": auth.mint_token(app, "alice", secret, ttl=1, now=time.time() - 100),
        "forged": _forge(claims),
        "alg none": _alg_none(claims),
        "alg none, no dot": _alg_none(claims)[:-1],
        "HS512": _forge(claims, secret, "HS512"),
        "HS384": _forge(claims, secret, "HS384"),
        "no exp": _forge({"sub": "alice", "app": app}, secret),
        "no sub": _forge({"app": app, "exp": now + 600}, secret),
        "no app": _forge({"sub": "alice", "exp": now + 600}, secret),
        "unknown app": _forge({**claims, "app": "nope"}, secret),
        "app not a string": _forge({**claims, "app": ["testapp"]}, secret),
        "sub not a string": _forge({**claims, "sub": 7}, secret),
        "bad sub": _forge({**claims, "sub": "alice\n"}, secret),
        "long sub": _forge({**claims, "sub": "a" * 129}, secret),
        "exp not a number": _forge({**claims, "exp": "never"}, secret),
        "nbf in future": _forge({**claims, "nbf": now + 3600}, secret),
        "tampered payload": _swap_payload(_forge(claims, secret),
                                          _forge({**claims, "sub": "bob"}, "x")),
        "bad header json": "eyJub3QganNvbg." + _forge(claims, secret).split(".", 1)[1],
        "kid trick": _hs256_by_hand({"alg": "HS256", "kid": "../../dev/null"},
                                    {**claims, "sub": "bob"}, ""),
        "garbage": "a.b.c",
        "empty parts": "..",
        "huge": "x" * 10_000,
        "api key": server.api_key,  # an API key is not a user token
    }
    async with httpx.AsyncClient(base_url=server.url) as raw:
        for name, token in bad_tokens.items():
            for path in ("/v1/me/counts", "/v1/me/notifications", "/v1/me/preferences"):
                r = await raw.get(path, headers={"Authorization": f"Bearer {token}"})
                err = assert_error(r, 401)
                assert "keep me" not in r.text, name
                if name == "expired":
                    assert err["code"] == "token_expired"
            r = await raw.post("/v1/me/notifications/read", json={"all": True},
                               headers={"Authorization": f"Bearer {token}"})
            assert_error(r, 401)
        for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="},
                        {"Authorization": await server.token("alice")}):
            assert_error(await raw.get("/v1/me/counts", headers=headers), 401)
    await _assert_intact(server, nid)


def _payload_token(payload: bytes, secret: str = "x") -> str:
    """An HS256 token around the raw JSON ``payload``, signed with ``secret``."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(payload)}"
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(sig)}"


async def test_token_claims_that_break_the_app_lookup_are_401(each_store):
    """The ``app`` claim is read before any signature is checked: whatever it
    holds (a NUL, which PostgreSQL cannot compare; JSON nested past the
    decoder's depth) is a 401, on every transport and store, never a 500."""
    import websockets

    server = each_store
    exp = int(time.time()) + 600
    tokens = {
        "NUL in app": _payload_token(json.dumps({"sub": "alice", "app": "test\u0000app",
                                                 "exp": exp}).encode()),
        "control in app": _payload_token(
            json.dumps({"sub": "alice", "app": "a\n", "exp": exp}).encode()),
        "long app": _payload_token(json.dumps({"sub": "alice", "app": "a" * 2000,
                                               "exp": exp}).encode()),
        "nested too deep": _payload_token(
            b'{"sub": "alice", "app": "testapp", "x": ' + b"[" * 1200 + b"]" * 1200 + b"}"),
    }
    async with httpx.AsyncClient(base_url=server.url) as raw:
        for name, token in tokens.items():
            assert len(token) <= 4096, name  # longer ones are refused before decoding
            for path in ("/v1/me/counts", "/v1/me/notifications", "/v1/me/preferences"):
                r = await raw.get(path, headers={"Authorization": f"Bearer {token}"})
                assert_error(r, 401, "bad_token", case=(name, path))
            r = await raw.get("/v1/me/events", params={"token": token})
            assert_error(r, 401, "bad_token", case=(name, "sse"))
            async with websockets.connect(server.ws_url + "/v1/me/stream") as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd is not None and info.value.rcvd.code == 4401, name


async def test_token_exp_past_the_range_of_a_float_is_not_a_500(server):
    """PyJWT takes any integer ``exp``, and tidings does not cap the lifetime
    of tokens it did not mint: one signed with the app's secret and an ``exp``
    too large for a float (10**400) is as good as any far-off one."""
    import websockets

    for exp in (2**70, 10**400):
        token = _payload_token(b'{"sub": "alice", "app": "%s", "exp": %d}' % (
            server.app.encode(), exp), server.signing_secret)
        async with httpx.AsyncClient(base_url=server.url,
                                     headers={"Authorization": f"Bearer {token}"}) as me:
            for path in ("/v1/me/counts", "/v1/me/notifications", "/v1/me/preferences"):
                r = await me.get(path)
                assert r.status_code == 200, (exp, path, r.status_code, r.text)
        async with websockets.connect(server.ws_url + "/v1/me/stream") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            hello = json.loads(await ws.recv())
            assert (hello[0] if isinstance(hello, list) else hello)["type"] == "hello"


async def test_a_text_message_that_is_not_utf8_closes_1007_and_logs_no_traceback(server):
    """RFC 6455 §8.1: invalid UTF-8 in a text message fails the WebSocket with
    1007, as the auth message (where uvicorn's own check logged an ERROR
    with a traceback for each one, from a client nobody had authenticated)
    and on a stream that has started (where it was passed on unchecked)."""
    import asyncio
    import logging

    import websockets

    logged: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append  # type: ignore[method-assign]
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(handler)
    try:
        for after_hello in (False, True):
            async with websockets.connect(server.ws_url + "/v1/me/stream") as ws:
                if after_hello:
                    await ws.send(json.dumps({"type": "auth",
                                              "token": await server.token("alice")}))
                    hello = json.loads(await ws.recv())
                    assert (hello[0] if isinstance(hello, list) else hello)["type"] == "hello"
                await ws.send(b'{"type": "auth", "token": "\xff"}', text=True)
                with pytest.raises(websockets.ConnectionClosed) as info:
                    async with asyncio.timeout(10):
                        while True:
                            await ws.recv()
                assert info.value.rcvd is not None, after_hello
                assert info.value.rcvd.code == 1007, (after_hello, info.value.rcvd)
    finally:
        uvicorn_log.removeHandler(handler)
    assert [r.getMessage() for r in logged] == []
    assert server.service.hub.connections == 0


async def test_user_sees_only_own_inbox(server):
    async with server.http() as http:
        r = await http.post(PUBLISH, json={"to": {"users": ["bob"]}, "title": "bob's secret"})
        bob_id = r.json()["id"]
        r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "title": "alice's"})
        alice_id = r.json()["id"]
    async with server.http(await server.token("alice")) as alice:
        r = await alice.get("/v1/me/notifications", params={"state": "all"})
        assert [i["id"] for i in r.json()["items"]] == [alice_id]
        assert "bob's secret" not in r.text
        r = await alice.get("/v1/me/notifications", params={"before": "7" * 26})
        assert [i["id"] for i in r.json()["items"]] == [alice_id]
        for action in ("read", "seen", "archive"):
            r = await alice.post(f"/v1/me/notifications/{action}", json={"ids": [bob_id]})
            assert r.status_code == 200 and r.json()["changed"] == 0
        # the token's user wins; a query parameter does not switch users
        r = await alice.get("/v1/me/notifications", params={"user": "bob"})
        assert "bob's secret" not in r.text
    async with server.http(await server.token("bob")) as bob:
        assert (await bob.get("/v1/me/counts")).json() == {
            "unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}
        r = await bob.get("/v1/me/notifications")
        assert r.json()["items"][0]["state"] == "unseen"
    async with server.http(await server.token("alice")) as alice:
        await alice.post("/v1/me/notifications/read", json={"all": True})
    async with server.http(await server.token("bob")) as bob:
        assert (await bob.get("/v1/me/counts")).json() == {
            "unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}


async def test_app_isolation(server):
    other_app, other_key = await server.new_app()
    async with server.http() as a, server.http(other_key) as b:
        assert (await a.put("/v1/topics/guild/subscribers/alice")).status_code == 200
        assert (await b.put("/v1/topics/guild/subscribers/mallory")).status_code == 200
        ta = (await a.get("/v1/topics/guild")).json()
        tb = (await b.get("/v1/topics/guild")).json()
        assert ta["users"] == ["alice"] and ta["subscribers"] == 1
        assert tb["users"] == ["mallory"] and tb["subscribers"] == 1

        r = await a.post(PUBLISH, json={"to": {"topic": "guild"}, "title": "app A topic"})
        assert r.json()["recipients"] == 1
        r = await a.post(PUBLISH, json={"to": {"all": True}, "title": "app A broadcast"})
        r = await a.post(PUBLISH, json={"to": {"users": ["alice"]}, "title": "app A direct"})
        assert (await a.put("/v1/users/alice/preferences",
                            json={"categories": {"x": {"in_app": False}}})).status_code == 200

        for user in ("alice", "mallory"):
            r = await b.get(f"/v1/users/{user}/notifications", params={"state": "all"})
            assert r.json()["items"] == [], r.text
            assert (await b.get(f"/v1/users/{user}/preferences")).json().get(
                "categories", {}) == {}
        r = await b.post(PUBLISH, json={"to": {"users": ["alice"]}, "category": "x"})
        assert "muted" not in r.json()  # app A's preferences do not apply in app B
        r = await b.delete("/v1/topics/guild/subscribers/alice")
        assert r.json() == {"removed": 0}
        assert (await a.get("/v1/topics/guild")).json()["users"] == ["alice"]

    alice_b = await server.token("alice", app=other_app)
    async with server.http(alice_b) as me:
        assert (await me.get("/v1/me/counts")).json() == {
            "unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 1}}
        r = await me.get("/v1/me/notifications", params={"state": "all"})
        assert "app A" not in r.text
        await me.post("/v1/me/notifications/read", json={"all": True})
    async with server.http(await server.token("alice")) as me:
        assert (await me.get("/v1/me/counts")).json() == {
            "unread": 3, "unseen": 3, "at": {"seq": 2, "feed": 1, "rev": 2}}

    # A token claiming app B but signed with app A's secret is refused.
    now = int(time.time())
    cross = jwt.encode({"sub": "alice", "app": other_app, "iat": now, "exp": now + 60},
                       server.signing_secret, algorithm="HS256")
    async with server.http(cross) as me:
        assert_error(await me.get("/v1/me/counts"), 401)


# -- random bodies -------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=30,
)
# Plausible publish bodies (valid keys, random values) find more than pure noise.
_KEYS = ["to", "category", "title", "body", "url", "data", "priority", "tags", "group_key",
         "actor", "deliver_at", "ttl", "users", "topic", "all"]
_near_miss = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), _json_values,
                             max_size=6)
_targets = st.fixed_dictionaries({"to": st.one_of(
    st.fixed_dictionaries({"users": st.lists(st.text(max_size=130), max_size=3)}),
    st.fixed_dictionaries({"topic": st.text(max_size=130)}),
    st.just({"all": True}),
)}).flatmap(lambda to: _near_miss.map(lambda extra: {**extra, **to}))
_bodies = st.one_of(
    _json_values.map(lambda v: json.dumps(v).encode()),
    _near_miss.map(lambda v: json.dumps(v).encode()),
    _targets.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(raw=_bodies)
async def test_random_bodies_never_500(server, raw):
    """Random JSON-ish and binary bodies never cause a 500.

    How this runs: pytest-asyncio (>= 0.x, here 1.x) recognises an ``async``
    test decorated with ``@given`` and wraps Hypothesis' *inner* test so that
    each example runs on the test's own event loop.  Fixtures are resolved
    once per test function, not per example, so the function-scoped
    ``server`` fixture is one live server shared by all 150 examples (hence
    the suppressed ``function_scoped_fixture`` health check -- sharing is the
    point).  A good notification published before the first example must
    still be intact after each one.
    """
    if not hasattr(server, "_hostile_nid"):
        server._hostile_nid = await _publish_good(server)
    async with server.http() as http:
        r = await http.post(PUBLISH, content=raw, headers={"content-type": "application/json"})
        assert r.status_code in {202, 400, 413, 422}, (raw, r.status_code, r.text)
        if r.status_code != 202:
            assert_error(r, r.status_code)
        else:
            assert r.json()["status"] == "accepted"
        r = await http.get(f"/v1/notifications/{server._hostile_nid}")
        assert r.status_code == 200 and r.json()["notification"]["title"] == "keep me"


async def test_data_intact_after_hostile_requests(server):
    """One good notification, then a volley of everything above: it survives."""
    nid = await _publish_good(server)
    async with server.http() as http:
        for raw, *_ in BAD_BODIES:
            await http.post(PUBLISH, content=raw)
            await http.patch(f"/v1/notifications/{nid}", content=raw)
            await http.put("/v1/users/alice/preferences", content=raw)
            await http.post("/v1/topics/t/subscribers", content=raw)
        for body, _ in WRONG:
            r = await http.post(PUBLISH, json=body)
            assert r.status_code == 422
            if body:  # an empty patch is a valid no-op
                r = await http.patch(f"/v1/notifications/{nid}", json=body)
                assert r.status_code == 422
            r = await http.post(PUBLISH + "/batch", json={"notifications": [body]})
            assert r.status_code == 202 and r.json()["results"][0]["status"] == "error"
    async with server.http(await server.token("alice")) as me:
        for raw, *_ in BAD_BODIES:
            r = await me.post("/v1/me/notifications/read", content=raw)
            assert 400 <= r.status_code < 500
    await _assert_intact(server, nid)
