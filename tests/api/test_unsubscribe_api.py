"""One-click unsubscribe end to end, on both stores: a notification is
published, its e-mail arrives at a real SMTP server (aiosmtpd) with a
``List-Unsubscribe`` link to this very server, and that link -- POSTed as a
mailbox provider does, without any credential -- turns e-mail off in the
user's preferences, so that the next notification of the category sends no
e-mail while another category still does.  A GET changes nothing; forged,
truncated and other apps' links are refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import socket

import httpx
import msgspec
import pytest

from tests.api.conftest import store_overrides
from tests.api.test_digests import HOUR, advance
from tests.api.test_outbound_api import _counted, delivery, until
from tests.channels.peers import Mailbox, smtp_server
from tests.conftest import run_server
from tidings.config import EmailConfig, OutboundConfig
from tidings.core.unsubscribe import Link, issue, link_secret
from tidings.service.ratelimits import LINK_BURST

ONE_CLICK = {"List-Unsubscribe": "One-Click"}  # sent form-encoded, as RFC 8058 §3.1 says


def _listening() -> socket.socket:
    """A listening socket, so that the server's own URL is known before it starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def mailing(tmp_path, kind: str = "sqlite", public: bool = True, delay: float = 0):
    """A server on ``kind`` sending e-mail to a local SMTP server (at once, or
    ``delay`` seconds after a publish), with its own URL as the e-mail's
    public_url."""
    mailbox = Mailbox()
    sock = _listening()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with smtp_server(mailbox) as port, store_overrides(kind) as store:
        async with run_server(
            tmp_path, sock=sock, **store,
            email=EmailConfig(host="127.0.0.1", port=port, starttls=False,
                              sender="Acme <notify@acme.test>",
                              public_url=url if public else None),
            outbound=OutboundConfig(poll_interval=0.05, fallback_delay=delay),
        ) as server:
            assert server.url == url
            yield server, mailbox


async def _publish(server, user: str, category: str, title: str) -> dict:
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={
            "to": {"users": [user]}, "category": category, "title": title})
        assert r.status_code == 202, r.text
        return r.json()


async def _set_email(server, user: str) -> None:
    async with server.http() as http:
        r = await http.put(f"/v1/users/{user}/email", json={"email": f"{user}@example.test"})
        assert r.status_code == 200, r.text


async def _prefs(server, user: str, app_key: str | None = None) -> dict:
    async with server.http(app_key) as http:
        r = await http.get(f"/v1/users/{user}/preferences")
        assert r.status_code == 200, r.text
        return r.json()


async def _mail(mailbox: Mailbox, n: int) -> list[email.message.EmailMessage]:
    async def arrived():
        return len(mailbox.messages) >= n

    await until(arrived)
    return [email.message_from_bytes(e.content, policy=email.policy.default)
            for e in mailbox.messages]


def _stranger() -> httpx.AsyncClient:
    """No API key, no token, no cookie: what a mailbox provider's request has."""
    return httpx.AsyncClient(timeout=10)


def _link_of(msg) -> str:
    value = msg["List-Unsubscribe"]
    assert value is not None and value.startswith("<") and value.endswith(">"), value
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    return value[1:-1]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_link_in_the_mail_turns_that_categorys_email_off(tmp_path, kind):
    async with mailing(tmp_path, kind) as (server, mailbox):
        await _set_email(server, "alice")
        await _publish(server, "alice", "social", "user_17 replied")
        (msg,) = await _mail(mailbox, 1)
        url = _link_of(msg)
        assert url.startswith(f"{server.url}/v1/unsubscribe/")

        async with _stranger() as http:
            # A GET (a scanner, a link preview, a person) changes nothing.
            r = await http.get(url, headers={"Accept": "text/html"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "social" in r.text and "e-mail" in r.text and 'method="post"' in r.text
            assert r.headers["content-security-policy"].startswith("default-src 'none'")
            assert (await http.head(url)).status_code == 200
            assert await _prefs(server, "alice") == {}

            # The one-click POST, as a mailbox provider sends it.
            r = await http.post(url, data=ONE_CLICK)
            assert r.status_code == 200, r.text
            assert r.json() == {"unsubscribed": True, "channel": "email",
                                "category": "social", "changed": True}
            after = {"categories": {"social": {"email": False}}}
            assert await _prefs(server, "alice") == after
            # Again: the same answer, nothing written.
            r = await http.post(url, data=ONE_CLICK)
            assert r.status_code == 200 and r.json()["changed"] is False
            assert await _prefs(server, "alice") == after

        # The next "social" notification reaches the inbox and sends no e-mail...
        muted = await _publish(server, "alice", "social", "user_9 replied")
        assert muted["recipients"] == 1 and muted["outbound"] == {"email": {"muted": 1}}
        assert await server.service.store.list_jobs(server.app, status="queued") == []
        # ...while another category still does.
        other = await _publish(server, "alice", "billing", "Invoice ready")
        assert other["outbound"] == {"email": {"queued": 1}}
        msgs = await _mail(mailbox, 2)
        assert [m["Subject"] for m in msgs] == ["user_17 replied", "Invoice ready"]
        assert verify_category(_link_of(msgs[1])) == "billing"


def verify_category(url: str) -> str | None:
    payload = url.rsplit("/", 1)[1].split(".")[0]
    return msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[2]


async def test_a_link_for_every_category_and_the_users_own_switches(tmp_path):
    """A digest of several categories carries a link for all of them: e-mail
    goes off in every category the preferences name and in "*", the rest;
    what else the user chose stays as it was."""
    async with mailing(tmp_path) as (server, mailbox):
        await _set_email(server, "bob")
        async with server.http() as http:
            r = await http.put("/v1/users/bob/preferences", json={
                "categories": {"billing": {"push": False}},
                "quiet_hours": {"start": "22:00", "end": "22:00", "tz": "UTC"}})
            assert r.status_code == 200, r.text
        token = issue(server.service.outbound.link_secret, Link(server.app, "bob", None, "email"))
        async with _stranger() as http:
            r = await http.get(f"{server.url}/v1/unsubscribe/{token}",
                               headers={"Accept": "text/html"})
            assert "all e-mail notifications" in r.text
            r = await http.post(f"{server.url}/v1/unsubscribe/{token}")  # no body: fine too
            assert r.status_code == 200 and r.json()["category"] is None
        assert await _prefs(server, "bob") == {
            "categories": {"billing": {"push": False, "email": False}, "*": {"email": False}},
            "quiet_hours": {"start": "22:00", "end": "22:00", "tz": "UTC"}}
        for category in ("social", "billing", "anything"):
            res = await _publish(server, "bob", category, category)
            assert res["recipients"] == 1 and res["outbound"] == {"email": {"muted": 1}}
        # The user turns one category back on: it names its own switches.
        async with server.http(await server.token("bob")) as http:
            prefs = (await http.get("/v1/me/preferences")).json()
            prefs["categories"]["social"] = {"email": True}
            assert (await http.put("/v1/me/preferences", json=prefs)).status_code == 200
        assert (await _publish(server, "bob", "social", "back"))["outbound"] == {
            "email": {"queued": 1}}
        (msg,) = await _mail(mailbox, 1)
        assert msg["Subject"] == "back"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_forged_truncated_and_other_apps_links_are_refused(tmp_path, kind):
    async with mailing(tmp_path, kind) as (server, _):
        secret = server.service.outbound.link_secret
        other_app, other_key = await server.new_app("other")
        mine = issue(secret, Link(server.app, "alice", "social", "email"))
        theirs = issue(secret, Link(other_app, "alice", "social", "email"))
        payload, mac = theirs.split(".")
        swapped = base64.urlsafe_b64encode(msgspec.json.encode(
            [server.app, "alice", "social", "email"])).rstrip(b"=").decode()
        elsewhere = issue(link_secret(b"another install's pepper"),
                          Link(server.app, "alice", "social", "email"))
        bad = {
            "forged": f"{swapped}.{mac}",  # another app's MAC on this app's name
            "another install": elsewhere,
            "truncated": mine[:-3],
            "tampered": mine[:5] + ("A" if mine[5] != "A" else "B") + mine[6:],
            "malformed": "not-a-token",
            "overlong": "A" * 2000 + "." + "A" * 22,
        }
        async with _stranger() as http:
            for what, token in bad.items():
                for method in ("GET", "POST"):
                    r = await http.request(method, f"{server.url}/v1/unsubscribe/{token}",
                                           data=ONE_CLICK if method == "POST" else None)
                    assert r.status_code == 404, (what, method, r.text)
                    assert r.json()["error"]["code"] == "bad_link", (what, r.text)
                    assert r.json()["error"]["field"] == "token"
            # a browser gets the same refusal as a page
            r = await http.get(f"{server.url}/v1/unsubscribe/{mine[:-3]}",
                               headers={"Accept": "text/html,*/*"})
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
            assert "not an unsubscribe link" in r.text and "truncated" in r.text
            # a link signed by this server for an app that is not there
            ghost = issue(secret, Link("ghost", "alice", None, "email"))
            r = await http.post(f"{server.url}/v1/unsubscribe/{ghost}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            # a body larger than a form needs
            r = await http.post(f"{server.url}/v1/unsubscribe/{mine}", content=b"x" * 5000)
            assert r.status_code == 413
            assert await _prefs(server, "alice") == {}
            # the other app's own link changes the other app's alice, not this one's
            r = await http.post(f"{server.url}/v1/unsubscribe/{theirs}", data=ONE_CLICK)
            assert r.status_code == 200, r.text
        assert await _prefs(server, "alice") == {}
        assert await _prefs(server, "alice", other_key) == {
            "categories": {"social": {"email": False}}}
        # refusals are counted without the token in the path (the dashboard shows it)
        recent = server.service.hub.metrics.recent_errors
        assert any(where == "POST /v1/unsubscribe/…" and code == "bad_link"
                   for *_, code, _status, where in recent)
        assert not any(mine[:20] in where for *_, where in recent)


async def test_a_link_is_rate_limited_on_its_own(tmp_path):
    async with mailing(tmp_path) as (server, _):
        secret = server.service.outbound.link_secret
        link = issue(secret, Link(server.app, "carol", "social", "email"))
        other = issue(secret, Link(server.app, "carol", "billing", "email"))
        async with _stranger() as http:
            for i in range(LINK_BURST):
                method = "GET" if i % 2 else "POST"
                r = await http.request(method, f"{server.url}/v1/unsubscribe/{link}")
                assert r.status_code == 200, (i, r.text)
            r = await http.post(f"{server.url}/v1/unsubscribe/{link}")
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
            r = await http.get(f"{server.url}/v1/unsubscribe/{link}",
                               headers={"Accept": "text/html"})
            assert r.status_code == 429 and "retry-after" in r.headers
            # another link (another category of the same user) is its own
            r = await http.post(f"{server.url}/v1/unsubscribe/{other}")
            assert r.status_code == 200, r.text


async def test_without_a_public_url_mail_has_no_link(tmp_path):
    async with mailing(tmp_path, public=False) as (server, mailbox):
        await _set_email(server, "dave")
        await _publish(server, "dave", "social", "hello")
        (msg,) = await _mail(mailbox, 1)
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None


async def _follow(server, user: str, category: str | None) -> dict:
    token = issue(server.service.outbound.link_secret, Link(server.app, user, category, "email"))
    async with _stranger() as http:
        r = await http.post(f"{server.url}/v1/unsubscribe/{token}", data=ONE_CLICK)
        assert r.status_code == 200, r.text
        return r.json()


async def _timeline(server, nid: str, user: str) -> list[dict]:
    async with server.http() as http:
        r = await http.get(f"/v1/notifications/{nid}/timeline", params={"user": user})
        assert r.status_code == 200, r.text
        return r.json()["events"]


async def _nothing_queued(server) -> bool:
    return await server.service.store.list_jobs(server.app, status="queued") == []


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_mail_queued_before_the_link_is_not_sent_after_it(tmp_path, kind):
    """The e-mail waits for the offline fallback's delay; the user follows the
    link meanwhile: when the job comes due it is not sent, and the timeline
    and the delivery counts say why.  Another category's mail still goes."""
    async with mailing(tmp_path, kind, delay=HOUR) as (server, mailbox):
        await _set_email(server, "alice")
        social = await _publish(server, "alice", "social", "user_17 replied")
        bill = await _publish(server, "alice", "billing", "Invoice ready")
        assert social["outbound"] == bill["outbound"] == {"email": {"queued": 1}}
        assert (await _follow(server, "alice", "social"))["changed"] is True

        advance(server, HOUR + 1)
        (msg,) = await _mail(mailbox, 1)
        assert msg["Subject"] == "Invoice ready"
        await until(lambda: _nothing_queued(server))
        stats = await until(lambda: _counted(server, social["id"], "email", "muted"))
        assert stats["email"] == {"queued": 1, "muted": 1}
        assert (await delivery(server, bill["id"]))["email"] == {"queued": 1, "sent": 1}
        (muted,) = [e for e in await _timeline(server, social["id"], "alice")
                    if e["event"] == "attempt"]
        assert (muted["channel"], muted["result"]) == ("email", "muted")
        assert muted["error"] == 'the user switched email off for "social" since it was queued'
        assert server.service.outbound.worker.counts["email", "muted"] == 1
        assert len(mailbox.messages) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_items_held_in_a_digest_window_are_left_out_after_the_link(tmp_path, kind):
    """Hourly e-mail digests: alice unsubscribes from one of two categories
    sharing her window, bob from all of them; when the windows close alice's
    digest lists the other category only and bob gets none."""
    async with mailing(tmp_path, kind) as (server, mailbox):
        hourly = {"email": {"every": 3600}}
        for user in ("alice", "bob"):
            await _set_email(server, user)
            async with server.http() as http:
                r = await http.put(f"/v1/users/{user}/preferences", json={
                    "digests": {"social": hourly, "billing": hourly}})
                assert r.status_code == 200, r.text
        social = await _publish(server, "alice", "social", "user_17 replied")
        bill = await _publish(server, "alice", "billing", "Invoice ready")
        bobs = await _publish(server, "bob", "social", "user_9 replied")
        assert social["outbound"] == bill["outbound"] == bobs["outbound"] == {
            "email": {"digest": 1}}
        await _follow(server, "alice", "social")
        await _follow(server, "bob", None)
        # the link changed its one switch: the digests stay as they were
        assert await _prefs(server, "alice") == {
            "categories": {"social": {"email": False}},
            "digests": {"social": hourly, "billing": hourly}}

        advance(server, HOUR + 1)
        (msg,) = await _mail(mailbox, 1)
        assert msg["To"] == "alice@example.test" and msg["Subject"] == "1 new notification"
        text = msg.get_body(("plain",)).get_content()
        assert "Invoice ready" in text and "user_17" not in text
        stats = await until(lambda: _counted(server, social["id"], "email", "muted"))
        assert stats["email"] == {"digest": 1, "muted": 1}
        assert (await until(lambda: _counted(server, bobs["id"], "email", "muted")))[
            "email"] == {"digest": 1, "muted": 1}
        await until(lambda: _counted(server, bill["id"], "email", "sent"))
        await until(lambda: _nothing_queued(server))
        assert await server.service.outbound.flush_digests() == []  # nothing left held
        assert len(mailbox.messages) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_links_followed_at_the_same_instant_all_count(tmp_path, kind):
    """Each link switches its own category off, all at once: none is lost
    to another's read-modify-write."""
    async with mailing(tmp_path, kind) as (server, _):
        categories = [f"c{i}" for i in range(12)]
        answers = await asyncio.gather(*(_follow(server, "erin", c) for c in categories))
        assert all(a["changed"] for a in answers)
        assert await _prefs(server, "erin") == {
            "categories": {c: {"email": False} for c in categories}}
