"""Markdown bodies (``"format": "markdown"``) on both stores: refused when
unknown, stored as published and given back as-is wherever a notification
is read (the app's GET, inbox pages on both APIs, live events, a replay,
PATCH, a batch, a scheduled one); a text notification carries no format.
Webhooks and Web Push carry both fields unchanged; e-mail renders the body
(tests/channels/test_email.py has the hostile bodies)."""

from __future__ import annotations

import email
import email.policy
import time
from datetime import UTC, datetime

from tests.api.test_fallback import HOUR, KEYS, advance, publish, set_email
from tests.api.test_hostile import assert_error
from tests.api.test_outbound_api import until
from tests.channels.peers import (
    Mailbox,
    PushService,
    Subscriber,
    WebhookReceiver,
    serve,
    smtp_server,
)
from tests.conftest import run_server
from tests.gateway.live import recv_events, ws_connect
from tidings.config import EmailConfig, OutboundConfig, WebhookConfig, WebPushConfig

PUBLISH = "/v1/notifications"
BODY = "**Build 812** failed on `main`:\n\n- [log](https://ci.example/812)\n- *retry* soon"


async def test_an_unknown_format_is_refused_naming_the_field_and_the_choices(each_store):
    async with each_store.http() as http:
        for value in ("html", "Markdown", "", 1, None):
            r = await http.post(PUBLISH, json={"to": {"users": ["ana"]}, "body": "x",
                                               "format": value})
            err = assert_error(r, 422, "invalid", "format", case=value)
            if isinstance(value, str):
                assert err["message"].endswith('format is one of "markdown", "text"'), err
        r = await http.post(f"{PUBLISH}/batch", json={"notifications": [
            {"to": {"users": ["ana"]}, "body": BODY, "format": "markdown"},
            {"to": {"users": ["ana"]}, "body": "x", "format": "rst"}]})
        assert r.status_code == 202, r.text
        ok, bad = r.json()["results"]
        assert ok["status"] == "accepted", ok
        assert bad["status"] == "error" and bad["error"]["field"] == "format", bad
        patch = await http.patch(f"{PUBLISH}/{ok['id']}", json={"format": "html"})
        assert_error(patch, 422, "invalid", "format")
        r = await http.get("/v1/users/ana/notifications")
        assert [it["notification"]["body"] for it in r.json()["items"]] == [BODY]


async def test_the_format_round_trips_through_the_store_and_the_stream(each_store):
    server = each_store
    token = await server.token("ana")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    async with server.http() as http:
        r = await http.post(PUBLISH, json={"to": {"users": ["ana"]}, "title": "CI",
                                           "body": BODY, "format": "markdown"})
        assert r.status_code == 202, r.text
        md = r.json()["id"]
        (live,) = await recv_events(ws, 1)
        assert live["notification"]["format"] == "markdown"
        assert live["notification"]["body"] == BODY
        await ws.close()

        plain = (await http.post(PUBLISH, json={"to": {"users": ["ana"]},
                                                "body": "**not bold**"})).json()["id"]
        explicit = (await http.post(PUBLISH, json={"to": {"users": ["ana"]}, "body": "t",
                                                   "format": "text"})).json()["id"]
        r = await http.post(f"{PUBLISH}/batch", json={"notifications": [
            {"to": {"users": ["ana"]}, "body": "batched *one*", "format": "markdown"}]})
        (batched,) = r.json()["results"]
        soon = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        r = await http.post(PUBLISH, json={"to": {"users": ["ana"]}, "body": "*later*",
                                           "format": "markdown", "deliver_at": soon})
        scheduled = r.json()["id"]

        got = (await http.get(f"{PUBLISH}/{md}")).json()["notification"]
        assert (got["format"], got["body"]) == ("markdown", BODY)
        got = (await http.get(f"{PUBLISH}/{scheduled}")).json()
        assert got["status"] == "scheduled" and got["notification"]["format"] == "markdown"
        page = (await http.get("/v1/users/ana/notifications")).json()["items"]
        formats = {it["id"]: it["notification"].get("format") for it in page}
        # the default is left out, as every field's default is (docs/protocol.md)
        assert formats == {md: "markdown", plain: None, explicit: None,
                           batched["id"]: "markdown"}

        # a correction can change the format, and the stream tells of it
        ws = await ws_connect(server, token)
        await recv_events(ws, 1)
        r = await http.patch(f"{PUBLISH}/{plain}", json={"format": "markdown"})
        assert r.status_code == 200 and r.json()["format"] == "markdown", r.text
        (updated,) = await recv_events(ws, 1)
        assert updated["type"] == "updated"
        assert updated["notification"]["format"] == "markdown"
        assert updated["notification"]["body"] == "**not bold**"
        await ws.close()

    async with server.http(token) as me:
        page = (await me.get("/v1/me/notifications")).json()["items"]
        assert {it["id"]: it["notification"].get("format") for it in page} == {
            md: "markdown", plain: "markdown", explicit: None, batched["id"]: "markdown"}

    # a replay from before the first carries it too
    ws = await ws_connect(server, token, cursor=hello["cursor"])
    _, *replayed, _ = await recv_events(ws, 6)
    assert [e["notification"].get("format") for e in replayed] == [
        "markdown", "markdown", None, "markdown"]
    assert replayed[0]["notification"]["body"] == BODY
    await ws.close()


async def test_webhooks_and_push_carry_it_as_published_and_the_mail_renders_it(tmp_path):
    mailbox, receiver = Mailbox(), WebhookReceiver(secret="")
    stub = PushService(app_server_key=KEYS.public_key)
    async with smtp_server(mailbox) as port, serve(stub) as origin, serve(receiver) as hooks:
        stub.origin = origin
        async with run_server(
                tmp_path, webhook=WebhookConfig(allow_insecure=True),
                email=EmailConfig(host="127.0.0.1", port=port, starttls=False,
                                  sender="Acme <notify@acme.test>"),
                push=WebPushConfig(vapid_private_key=KEYS.private_key,
                                   vapid_subject="mailto:ops@acme.test", allow_insecure=True),
                outbound=OutboundConfig(poll_interval=0.05, fallback_delay=HOUR,
                                        retry_base=0.01)) as server:
            async with server.http() as http:
                r = await http.post("/v1/webhooks", json={"url": f"{hooks}/hooks"})
                receiver.secret = r.json()["secret"]
            await set_email(server, "ana", "ana@example.test")
            phone = stub.subscribers.setdefault("ana", Subscriber())
            async with server.http(await server.token("ana")) as me:
                r = await me.post("/v1/me/push-subscriptions",
                                  json=phone.subscription(f"{origin}/push/ana"))
                assert r.status_code == 201, r.text
            res = await publish(server, ["ana"], title="CI", body=BODY, format="markdown")
            assert res["outbound"] == {"webhook": {"queued": 1}, "push": {"queued": 1},
                                       "email": {"queued": 1}}
            await until(lambda: _all(receiver.accepted))  # at once; push and mail wait
            advance(server, HOUR + 1)
            await until(lambda: _all(stub.received, mailbox.messages))
    # one delivery; at least once: the clock's jump of an hour can expire the
    # lease of an attempt whose answer the busy server had not yet recorded
    assert len(receiver.attempts) == 1, receiver.attempts
    hooked = receiver.accepted[0]
    assert hooked["notification"]["format"] == "markdown"
    assert hooked["notification"]["body"] == BODY
    (pushed,) = stub.received
    assert (pushed["payload"]["format"], pushed["payload"]["body"]) == ("markdown", BODY)
    msg = email.message_from_bytes(mailbox.messages[0].content, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()
    assert "<strong>Build 812</strong>" in html
    assert '<li><a href="https://ci.example/812">log</a></li>' in html
    assert BODY in msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


async def _all(*lists):
    return all(lists)
