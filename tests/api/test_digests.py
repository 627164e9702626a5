"""Digests end to end: preferences and app defaults through the API, items
held in the store, one webhook / e-mail / push per window through the real
loopback peers of the channel tests (a verifying webhook receiver, aiosmtpd,
a push-service stub that decrypts), items seen in the app left out, a
window that outlives a restart.

Windows close an hour or a day after they open; the tests do not wait: the
outbound machinery's clock (the digest poller's and the worker's) is moved
ahead (``advance``).  The windows' closing times are real, only the sender
looks ahead.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import time
from datetime import UTC, datetime

import pytest

from tests.api.test_fallback import mark, set_email, with_channels
from tests.api.test_outbound_api import _counted, hooked, until
from tests.channels.peers import Subscriber, WebhookReceiver, serve
from tests.conftest import run_server
from tidings.config import OutboundConfig, WebhookConfig
from tidings.core import digest
from tidings.core.models import DigestRule

HOUR = 3600.0
FAST = OutboundConfig(poll_interval=0.05, retry_base=0.01, retry_cap=0.05, fallback_delay=0)


def advance(server, seconds: float) -> None:
    """Let the digest poller and the worker see ``seconds`` into the future."""
    outbound = server.service.outbound
    outbound.clock = outbound.worker.clock = lambda: time.time() + seconds
    outbound.worker.wake()


async def publish(server, users, **fields) -> dict:
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": users}, **fields})
        assert r.status_code == 202, r.text
        return r.json()


async def put_prefs(server, user: str, doc: dict) -> None:
    async with server.http() as http:
        r = await http.put(f"/v1/users/{user}/preferences", json=doc)
        assert r.status_code == 200, r.text


async def test_an_hourly_webhook_digest_lists_what_was_not_seen(tmp_path):
    async with hooked(tmp_path, outbound=FAST) as (server, receiver):
        await put_prefs(server, "alice", {"digests": {"social": {"webhook": {"every": 3600}}}})
        async with server.http(await server.token("alice")) as http:
            mine = (await http.get("/v1/me/preferences")).json()
        assert mine["digests"] == {"social": {"webhook": {"every": 3600}}}
        first = await publish(server, ["alice"], category="social", title="ann liked it")
        assert first["outbound"] == {"webhook": {"digest": 1}}
        seen = await publish(server, ["alice"], category="social", title="bob liked it")
        third = await publish(server, ["alice"], category="social", title="cid liked it")
        bill = await publish(server, ["alice"], category="billing", title="invoice")
        assert bill["outbound"] == {"webhook": {"queued": 1}}  # no digest for billing
        await until(lambda: _accepted(receiver, 1))
        assert receiver.accepted[0]["notification"]["id"] == bill["id"]
        await mark(server, "alice", "seen", {"ids": [seen["id"]]})

        advance(server, HOUR + 1)
        await until(lambda: _accepted(receiver, 2))
        headers, raw = receiver.requests[-1]
        assert headers["tidings-event"] == "notification.digest"
        sent = json.loads(raw)
        assert sent["type"] == "notification.digest" and sent["user"] == "alice"
        note = sent["notification"]
        assert note["title"] == "2 new notifications"
        assert note["body"] == "- ann liked it\n- cid liked it"
        assert [i["id"] for i in note["data"]["digest"]["items"]] == [first["id"], third["id"]]
        # each notification the digest carried counts as sent on the channel
        stats = await until(lambda: _counted(server, third["id"], "webhook", "sent"))
        assert stats["webhook"] == {"digest": 1, "sent": 1}
        advance(server, 3 * HOUR)
        await publish(server, ["alice"], category="billing", title="second invoice")
        await until(lambda: _accepted(receiver, 3))
        assert len(receiver.accepted) == 3 and receiver.rejected == []  # sent once


async def test_a_webhook_digests_items_are_the_notifications_as_published(tmp_path):
    """A webhook digest's items carry ``locales`` as a single webhook
    delivery does (the receiving backend picks the language), for a user
    with a locale too; only the digest's own words are tidings' (English)."""
    locales = {"fr": {"title": "facture"}, "de": {"title": "Rechnung", "body": "bereit"}}
    async with hooked(tmp_path, outbound=FAST) as (server, receiver):
        await put_prefs(server, "alice", {"locale": "fr-CA", "digests": {
            "social": {"webhook": {"every": 3600}}}})
        bill = await publish(server, ["alice"], category="billing", title="invoice",
                             locales=locales)
        await until(lambda: _accepted(receiver, 1))
        single = receiver.accepted[0]["notification"]
        assert (single["id"], single["title"], single["locales"]) == (
            bill["id"], "invoice", locales)
        assert "locale" not in single
        likes = [await publish(server, ["alice"], category="social", title=f"like {i}",
                               locales=locales) for i in range(2)]
        advance(server, HOUR + 1)
        await until(lambda: _accepted(receiver, 2))
        note = receiver.accepted[1]["notification"]
        assert note["title"] == "2 new notifications"
        assert note["body"] == "- like 0\n- like 1"
        items = note["data"]["digest"]["items"]
        assert [i["id"] for i in items] == [n["id"] for n in likes]
        assert [(i["title"], i["locales"], "locale" in i) for i in items] == [
            ("like 0", locales, False), ("like 1", locales, False)]
        assert {k for k in single if k not in ("id", "title", "created_at", "category")} == \
            {k for k in items[0] if k not in ("id", "title", "created_at", "category")}


async def test_seeing_a_group_entry_leaves_its_members_out(tmp_path):
    async with hooked(tmp_path, outbound=FAST) as (server, receiver):
        await put_prefs(server, "alice", {"digests": {"social": {"webhook": {"every": 3600}}}})
        likes = [await publish(server, ["alice"], category="social", title=f"like {i}",
                               group_key="post:1", actor=f"user_{i}") for i in range(3)]
        other = await publish(server, ["alice"], category="social", title="a comment")
        await mark(server, "alice", "seen", {"ids": [likes[0]["id"]]})  # the group entry's id
        advance(server, HOUR + 1)
        await until(lambda: _accepted(receiver, 1))
        items = receiver.accepted[0]["notification"]["data"]["digest"]["items"]
        assert [i["id"] for i in items] == [other["id"]]


async def _accepted(receiver, n):
    return len(receiver.accepted) >= n


async def test_daily_email_is_the_apps_default_and_a_user_can_opt_out(tmp_path):
    async with with_channels(tmp_path) as (server, mailbox, _):  # fallback delay: an hour
        async with server.http() as http:
            r = await http.put("/v1/caps", json={"digests": {"social": {
                "email": {"daily": "09:00", "tz": "Asia/Tokyo"}}}})
            assert r.status_code == 200, r.text
            assert (await http.get("/v1/caps")).json()["digests"]["social"]["email"] == {
                "daily": "09:00", "tz": "Asia/Tokyo"}
        for user in ("alice", "bob"):
            await set_email(server, user, f"{user}@example.test")
        await put_prefs(server, "bob", {"digests": {"social": {"email": {}}}})  # each on its own
        opened = datetime.now(UTC)
        a = await publish(server, ["alice", "bob"], category="social", title="ann followed you")
        assert a["outbound"] == {"email": {"queued": 1, "digest": 1}}
        b = await publish(server, ["alice"], category="social", title="bob followed you",
                          url="https://acme.test/u/bob")
        closes = digest.due(DigestRule(daily="09:00", tz="Asia/Tokyo"), opened).timestamp()
        outbound = server.service.outbound
        assert await outbound.flush_digests(closes - 1) == []  # not yet
        advance(server, max(closes, opened.timestamp() + HOUR) - time.time() + 1)
        await until(lambda: _mails(mailbox, 2))
        by_rcpt = {m.rcpt_tos[0]: m for m in mailbox.messages}
        bobs = email.message_from_bytes(by_rcpt["bob@example.test"].content,
                                        policy=email.policy.default)
        assert bobs["Subject"] == "ann followed you"
        msg = email.message_from_bytes(by_rcpt["alice@example.test"].content,
                                       policy=email.policy.default)
        assert msg["Subject"] == "2 new notifications"
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert "- ann followed you\n- bob followed you\n  https://acme.test/u/bob" in text
        assert '<li><a href="https://acme.test/u/bob">bob followed you</a></li>' in \
            msg.get_body(("html",)).get_content()
        assert msg["X-Tidings-Id"].startswith(digest.DIGEST_PREFIX)
        stats = await until(lambda: _counted(server, b["id"], "email", "sent"))
        assert stats["email"] == {"digest": 1, "sent": 1}
        assert len(mailbox.messages) == 2


async def _mails(mailbox, n):
    return len(mailbox.messages) >= n


async def test_a_digests_own_words_are_in_the_recipients_language(tmp_path):
    """The e-mail's subject and the push's title say how many in the
    user's language (fr-CA takes fr), with its plural; a language tidings
    has no words for gets English."""
    async with with_channels(tmp_path) as (server, mailbox, stub):
        users = {"marie": ("fr-CA", 3), "hans": ("de", 1), "jonas": ("de-AT", 2),
                 "kenji": ("ja", 2), "chloe": ("fr", 1)}
        for user, (locale, _) in users.items():
            await set_email(server, user, f"{user}@example.test")
            await put_prefs(server, user, {"locale": locale, "digests": {"social": {
                "email": {"every": 3600}, "push": {"every": 3600}}}})
        phone = stub.subscribers.setdefault("marie-phone", Subscriber())
        async with server.http(await server.token("marie")) as http:
            r = await http.post("/v1/me/push-subscriptions",
                                json=phone.subscription(f"{stub.origin}/push/marie-phone"))
            assert r.status_code == 201
        for user, (_, n) in users.items():
            for i in range(n):
                await publish(server, [user], category="social", title=f"like {i}",
                              locales={"fr": {"title": f"j'aime {i}"}})
        advance(server, HOUR + 1)
        await until(lambda: _mails(mailbox, len(users)))
        await until(lambda: _pushes(stub, 1))
        subjects = {m.rcpt_tos[0].split("@")[0]: email.message_from_bytes(
            m.content, policy=email.policy.default)["Subject"] for m in mailbox.messages}
        assert subjects == {"marie": "3 nouvelles notifications",
                            "chloe": "1 nouvelle notification",
                            "hans": "1 neue Benachrichtigung",
                            "jonas": "2 neue Benachrichtigungen",
                            "kenji": "2 new notifications"}
        (pushed,) = [p["payload"] for p in stub.received]
        assert pushed["title"] == "3 nouvelles notifications"
        assert pushed["body"] == "- j'aime 0\n- j'aime 1\n- j'aime 2"  # the items' too


async def test_a_digest_email_names_its_language_when_it_has_one(tmp_path):
    """A digest e-mail for a language tidings has words for says it
    (Content-Language, ``<html lang>``), and each item whose language is
    not the message's says its own (``lang=""``: a notification's own text,
    language not told); for any other recipient neither is said, and only an
    item that took an override says its language."""
    async with with_channels(tmp_path) as (server, mailbox, _):
        users = {"marie": "fr-CA", "hans": "de", "kenji": "ja", "emma": None}
        for user, locale in users.items():
            await set_email(server, user, f"{user}@example.test")
            await put_prefs(server, user, {**({"locale": locale} if locale else {}),
                                           "digests": {"social": {"email": {"every": 3600}}}})
        await publish(server, list(users), category="social", title="liked",
                      locales={"fr-CA": {"title": "aimé"}, "de": {"title": "gefällt"},
                               "ja": {"title": "いいね"}})
        await publish(server, list(users), category="social", title="followed")
        advance(server, HOUR + 1)
        await until(lambda: _mails(mailbox, len(users)))
        mails = {m.rcpt_tos[0].split("@")[0]: email.message_from_bytes(
            m.content, policy=email.policy.default) for m in mailbox.messages}

        def said(user):
            page = mails[user].get_body(("html",)).get_content().replace("\r\n", "\n")
            return (mails[user]["Content-Language"], page.split("<head>")[0].split("\n")[-1],
                    [li.split("</li>")[0] for li in page.split("<li")[1:]])

        assert said("marie") == ("fr", '<html lang="fr">',
                                 [' lang="fr-CA">aimé', ' lang="">followed'])
        assert said("hans") == ("de", '<html lang="de">', [">gefällt", ' lang="">followed'])
        # English words for want of Japanese: no language, but the item that has one says it
        assert said("kenji") == (None, "<html>", [' lang="ja">いいね', ">followed"])
        assert said("emma") == (None, "<html>", [">liked", ">followed"])


async def test_a_push_digest_says_how_many(tmp_path):
    async with with_channels(tmp_path) as (server, _, stub):
        phone = stub.subscribers.setdefault("erin-phone", Subscriber())
        async with server.http(await server.token("erin")) as http:
            r = await http.post("/v1/me/push-subscriptions",
                                json=phone.subscription(f"{stub.origin}/push/erin-phone"))
            assert r.status_code == 201
            r = await http.put("/v1/me/preferences", json={
                "digests": {"social": {"push": {"every": 600}}}})
            assert r.status_code == 200, r.text
        for i in range(7):
            await publish(server, ["erin"], category="social", title=f"like {i}")
        urgent = await publish(server, ["erin"], category="social", title="now", priority="urgent")
        assert urgent["outbound"] == {"push": {"queued": 1}}  # urgent is never held
        advance(server, HOUR + 1)  # past the window and the urgent one's fallback delay
        await until(lambda: _pushes(stub, 2))
        titles = sorted(p["payload"]["title"] for p in stub.received)
        assert titles == ["7 new notifications", "now"]
        (payload,) = [p["payload"] for p in stub.received if p["payload"]["title"] != "now"]
        assert payload["data"]["digest"]["count"] == 7
        assert stub.errors == [] and len(stub.received) == 2


async def _pushes(stub, n):
    return len(stub.received) >= n


async def test_a_window_survives_a_restart_and_quiet_hours_hold_it(tmp_path):
    if os.environ.get("TIDINGS_TEST_STORE") == "postgres":
        # run_server gives every server a fresh schema there; the store
        # contract tests cover PostgreSQL's windows
        pytest.skip("a restart keeps the store only with the SQLite file")
    receiver = WebhookReceiver(secret="")
    async with serve(receiver) as url:
        settings = {"webhook": WebhookConfig(allow_insecure=True), "outbound": FAST}
        async with run_server(tmp_path, **settings) as server:
            async with server.http() as http:
                r = await http.post("/v1/webhooks", json={"url": f"{url}/hooks"})
                receiver.secret = r.json()["secret"]
            # quiet all the next hours: the window closes at their end, not in an hour
            now = datetime.now(UTC)
            start = f"{(now.hour + 1) % 24:02}:00"
            end = f"{(now.hour + 4) % 24:02}:00"
            await put_prefs(server, "alice", {
                "digests": {"social": {"webhook": {"every": 3600}}},
                "quiet_hours": {"start": start, "end": end, "tz": "UTC"}})
            first = await publish(server, ["alice"], category="social", title="one")
            key = server.api_key
        async with run_server(tmp_path, api_key=key, **settings) as server:
            second = await publish(server, ["alice"], category="social", title="two")
            closes = now.replace(minute=0, second=0, microsecond=0).timestamp() + 4 * HOUR
            # an hour on (and until they end) it is quiet: the window stays open
            assert await server.service.outbound.flush_digests(closes - 5) == []
            advance(server, closes - time.time() + 1)
            await until(lambda: _digest_arrived(receiver))
            doc = next(json.loads(b) for h, b in receiver.requests
                       if h["tidings-event"] == "notification.digest")
            ids = [i["id"] for i in doc["notification"]["data"]["digest"]["items"]]
            assert ids == [first["id"], second["id"]]


async def _queue_empty(server):
    return await server.service.store.list_jobs(server.app, status="queued") == []


async def _digest_arrived(receiver):
    return any(h.get("tidings-event") == "notification.digest" for h, _ in receiver.requests)


async def test_bad_digest_rules_are_refused_with_the_field(tmp_path):
    async with run_server(tmp_path) as server, server.http() as http:
        for doc, field in (
            ({"digests": {"social": {"email": {"every": 60, "daily": "09:00"}}}},
             "digests.social.email"),
            ({"digests": {"social": {"email": {"daily": "09:00", "tz": "Mars/Olympus"}}}},
             "digests.social.email.tz"),
        ):
            for path in ("/v1/users/alice/preferences", "/v1/caps"):
                r = await http.put(path, json=doc)
                assert r.status_code == 422, r.text
                assert r.json()["error"]["field"] == field
        r = await http.put("/v1/users/alice/preferences",
                           json={"digests": {"social": {"sms": {"every": 3600}}}})
        assert r.status_code == 422 and "error" in r.json()
        r = await http.put("/v1/caps", json={"digests": {"social": {"email": {"every": 1}}}})
        assert r.status_code == 422 and "error" in r.json()


async def test_two_nodes_send_each_digest_once(tmp_path):
    """Two nodes over one PostgreSQL: both poll and both look ahead at once;
    every window reaches the receiver in one digest, from one node."""
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    receiver = WebhookReceiver(secret="")
    settings = {"webhook": WebhookConfig(allow_insecure=True), "outbound": FAST}
    async with serve(receiver) as url, fresh_schema(require_postgres()) as schema:
        store = f"{require_postgres()}?search_path={schema['search_path']}"
        async with run_server(tmp_path / "a", store=store, **settings) as a, \
                run_server(tmp_path / "b", store=store, **settings) as b:
            async with a.http() as http:
                r = await http.post("/v1/webhooks", json={"url": f"{url}/hooks"})
                receiver.secret = r.json()["secret"]
            users = [f"u{i}" for i in range(8)]
            for user in users:
                await put_prefs(a, user, {"digests": {"social": {"webhook": {"every": 3600}}}})
            for i in range(3):
                await publish(a if i % 2 else b, users, category="social", title=f"n{i}")
            for node in (a, b):
                advance(node, HOUR + 1)
            await until(lambda: _accepted(receiver, len(users)))
            for node in (a, b):  # more polls on both: no window is left to close
                assert await node.service.outbound.flush_digests() == []
            await until(lambda: _queue_empty(a))
            digests = [json.loads(body) for _, body in receiver.requests]
            assert sorted(d["user"] for d in digests) == users
            assert all(d["notification"]["data"]["digest"]["count"] == 3 for d in digests)
            assert len(receiver.accepted) == len(users)
