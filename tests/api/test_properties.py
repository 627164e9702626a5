"""Every string field that reaches a store, with arbitrary Unicode (control
characters, NUL, lone surrogates, astral planes), on SQLite and on
PostgreSQL: the answer is a 2xx, or a 4xx JSON error naming what is wrong;
never a 5xx.  What is accepted reads back unchanged (docs/security.md:
"One rule for control characters").

A real ``tidings serve`` process takes the requests (tests/api/conftest.py),
so any 500 also leaves a traceback in its log, which the fixture refuses.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.core.receipts import MAX_DEVICES

# Any code point, surrogates included, leaning on the ones that broke
# things before: NUL and the other C0 controls, DEL, a lone surrogate.
NASTY = st.sampled_from(["\x00", "\x01", "\n", "\r", "\x1f", "\x7f", "\x85", "\u2028",
                         "\ud800", "\udfff", "\ufeff", "\U0010ffff", "%00", "/", "\\", "'"])
TEXT = st.lists(st.one_of(st.characters(exclude_categories=()), NASTY), max_size=40).map(
    "".join)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _body(obj) -> bytes:
    # json.dumps writes a lone surrogate as "\\ud800": well-formed JSON syntax
    # that is not Unicode text, which the server must refuse cleanly.
    return json.dumps(obj).encode()


def _path(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _answered(r: httpx.Response, case) -> dict | None:
    """The JSON body of a 2xx; None for a well-formed 4xx error."""
    assert r.status_code < 500, (case, r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["code"] and err["message"], (case, r.text)
        return None
    return r.json() if r.content else {}


def _fields(http: httpx.Client, me: httpx.Client):
    """(name, check) for every string field that reaches a store."""

    def publish(field: str, make):
        def check(value: str) -> None:
            note = {"to": {"users": ["alice"]}, "title": "t", **make(value)}
            got = _answered(http.post("/v1/notifications", content=_body(note)), (field, value))
            if got is not None:
                stored = http.get(f"/v1/notifications/{got['id']}").json()["notification"]
                sent = json.loads(_body(note))  # what the server was given, decoded
                for key in make(value):
                    if key == "to":
                        continue
                    # defaults ("", [], {}) are left out of the stored notification
                    assert stored.get(key, type(sent[key])()) == sent[key], (field, value, stored)
        return check

    def path(field: str, method: str, template: str, body=None, client=None):
        def check(value: str) -> None:
            r = (client or http).request(method, template.format(_path(value)),
                                         content=None if body is None else _body(body))
            _answered(r, (field, value))
        return check

    def body(field: str, method: str, url: str, make, client=None):
        def check(value: str) -> None:
            _answered((client or http).request(method, url, content=_body(make(value))),
                      (field, value))
        return check

    def idempotency(value: str) -> None:
        try:
            r = http.post("/v1/notifications", json={"to": {"users": ["alice"]}},
                          headers={"Idempotency-Key": value.encode("utf-8", "surrogatepass")})
        except (httpx.LocalProtocolError, ValueError):
            return  # not sendable as a header at all
        if r.status_code == 400:  # bytes HTTP forbids in a header: the parser's 400
            assert r.json()["error"]["code"] == "bad_request", (value, r.text)
            return
        _answered(r, ("Idempotency-Key", value))

    yield "title", publish("title", lambda v: {"title": v})
    yield "body", publish("body", lambda v: {"body": v})
    yield "url", publish("url", lambda v: {"url": v})
    yield "category", publish("category", lambda v: {"category": v})
    yield "group_key", publish("group_key", lambda v: {"group_key": v})
    yield "actor", publish("actor", lambda v: {"actor": v})
    yield "tags", publish("tags", lambda v: {"tags": [v]})
    yield "data", publish("data", lambda v: {"data": {v: v, "k": [v]}})
    yield "to.users", publish("to.users", lambda v: {"to": {"users": [v]}})
    yield "to.topic", publish("to.topic", lambda v: {"to": {"topic": v}})
    yield "deliver_at", body("deliver_at", "POST", "/v1/notifications",
                             lambda v: {"to": {"users": ["a"]}, "deliver_at": v})
    yield "Idempotency-Key", idempotency
    yield "batch", body("batch", "POST", "/v1/notifications/batch", lambda v: {
        "notifications": [{"to": {"users": [v]}, "group_key": v, "title": v}]})
    yield "user (path)", path("user", "PUT", "/v1/topics/t/subscribers/{}")
    yield "user (inbox)", path("user", "GET", "/v1/users/{}/notifications")
    yield "user (preferences)", path("user", "PUT", "/v1/users/{}/preferences", body={})
    yield "user (email)", path("user", "PUT", "/v1/users/{}/email",
                               body={"email": "a@b.example"})
    yield "user (token)", path("user", "POST", "/v1/users/{}/tokens", body={})
    yield "topic (path)", path("topic", "GET", "/v1/topics/{}")
    yield "id (path)", path("id", "GET", "/v1/notifications/{}")
    yield "id (outbound)", path("id", "GET", "/v1/notifications/{}/outbound")
    yield "wid", path("wid", "POST", "/v1/webhooks/{}/rotate")
    yield "jid", path("jid", "POST", "/v1/outbound/dead/{}/retry")
    yield "sid", path("sid", "DELETE", "/v1/me/push-subscriptions/{}", client=me)
    yield "subscribers", body("users", "POST", "/v1/topics/t/subscribers",
                              lambda v: {"users": [v]})
    yield "ids", body("ids", "POST", "/v1/me/notifications/read", lambda v: {"ids": [v]},
                      client=me)
    yield "preferences", body("preferences", "PUT", "/v1/me/preferences", lambda v: {
        "categories": {v: {"email": False}}, "quiet_hours": {"start": "22:00",
                                                             "end": "07:00", "tz": v}},
                              client=me)
    yield "caps", body("caps", "PUT", "/v1/caps",
                       lambda v: {"categories": {v: {"per": 60, "max": 1}}})
    yield "webhook url", body("url", "POST", "/v1/webhooks", lambda v: {"url": v})
    yield "email", body("email", "PUT", "/v1/users/alice/email",
                        lambda v: {"email": v, "name": v})
    yield "push", body("endpoint", "POST", "/v1/me/push-subscriptions", lambda v: {
        "endpoint": v, "keys": {"p256dh": v, "auth": v}}, client=me)


async def test_no_string_makes_a_5xx_and_what_is_kept_reads_back(tidings_process):
    url, key, token = tidings_process
    with (httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}",
                                               "Content-Type": "application/json"}) as http,
          httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}",
                                               "Content-Type": "application/json"}) as me):
        for _name, check in _fields(http, me):
            given(TEXT)(SETTINGS(check))()
        # the inbox pages that hold all of it still read
        assert http.get("/v1/users/alice/notifications",
                        params={"state": "all", "limit": 100}).status_code == 200
        assert me.get("/v1/me/notifications").status_code == 200


async def test_any_device_and_label_in_receipts_is_kept_intact_or_refused(tidings_process):
    """Receipts are written a second after the answer, all users' in one
    transaction: a device or label the store could not hold would fail every
    later write, so what the server accepts must come back from the timeline
    unchanged."""
    url, key, token = tidings_process
    with (httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http,
          httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}",
                                               "Content-Type": "application/json"}) as me):
        r = http.post("/v1/notifications", json={"to": {"users": ["alice"]}, "title": "t"})
        nid = r.json()["id"]
        accepted: dict[tuple[str, str], str | None] = {}  # (kind, device) -> label

        def check(value: str) -> None:
            for kind, body in (("delivered", {"device": value, "delivered": [nid]}),
                               ("displayed", {"device": "d" + value[:60], "label": value,
                                              "displayed": [nid]})):
                if _answered(me.post("/v1/me/receipts", content=_body(body)), body):
                    accepted.setdefault((kind, body["device"]), body.get("label"))

        given(TEXT)(SETTINGS(check))()
        expected = sum(min(MAX_DEVICES, sum(k == kind for k, _ in accepted))
                       for kind in ("delivered", "displayed"))
        assert expected

        def kept() -> dict[tuple[str, str], str | None]:
            r = http.get(f"/v1/notifications/{nid}/timeline", params={"user": "alice"})
            assert r.status_code == 200, r.text
            return {(e["event"], e["device"]): e["label"] for e in r.json()["events"]
                    if e["event"] in ("delivered", "displayed")}

        deadline = time.monotonic() + 10  # written within a second or two
        while len(kept()) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(kept()) == expected
        assert all(accepted[k] == label for k, label in kept().items())  # read back unchanged
