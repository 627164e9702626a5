"""Outbound channels end to end through the API: webhooks to a receiver on
loopback that verifies every signature, retries, the dead-letter list and
re-drive, quiet hours, mutes, and the registration endpoints' refusals.

The receiver and the other peers are the channel tests' (tests/channels/
peers.py).  Waiting is for a condition (a request arriving, a list
changing), bounded by the per-test timeout; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.channels.peers import WebhookReceiver, serve
from tests.channels.proxy_peer import connect_proxy
from tests.conftest import run_server
from tidings.config import OutboundConfig, WebhookConfig
from tidings.core.quiet import QuietWindow

FAST = OutboundConfig(poll_interval=0.05, retry_base=0.01, retry_cap=0.05, max_attempts=3)


@contextlib.asynccontextmanager
async def hooked(tmp_path, *, fail_first: int = 0, **settings):
    """A server whose app has one webhook endpoint, pointing at a receiver."""
    receiver = WebhookReceiver(secret="", fail_first=fail_first)
    async with serve(receiver) as url, run_server(
            tmp_path, webhook=WebhookConfig(allow_insecure=True),
            outbound=settings.pop("outbound", FAST), **settings) as server:
        async with server.http() as http:
            r = await http.post("/v1/webhooks", json={"url": f"{url}/hooks/tidings"})
            assert r.status_code == 201, r.text
            receiver.secret = r.json()["secret"]
        yield server, receiver


async def until(check, every: float = 0.02):
    """Await ``check()`` (a coroutine function) until it returns something truthy."""
    while not (value := await check()):
        await asyncio.sleep(every)
    return value


async def publish(server, **fields) -> dict:
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["alice"]}, **fields})
        assert r.status_code == 202, r.text
        return r.json()


async def jobs_of(server, nid: str) -> list[dict]:
    async with server.http() as http:
        r = await http.get(f"/v1/notifications/{nid}/outbound")
        assert r.status_code == 200, r.text
        return r.json()["jobs"]


# -- webhooks ---------------------------------------------------------------------------


async def test_a_webhook_is_retried_then_delivered_once_and_signed(tmp_path):
    async with hooked(tmp_path, fail_first=2) as (server, receiver):
        res = await publish(server, category="social", title="user_17 replied")
        assert res["outbound"] == {"webhook": {"queued": 1}}
        await until(lambda: _accepted(receiver))
        (delivery,) = receiver.accepted
        assert delivery["user"] == "alice" and delivery["app"] == server.app
        assert delivery["notification"]["id"] == res["id"]
        assert delivery["notification"]["title"] == "user_17 replied"
        job_id = delivery["id"]
        assert receiver.attempts[job_id] == 3 and receiver.rejected == []
        attempts = [h["tidings-attempt"] for h, _ in receiver.requests]
        assert attempts == ["1", "2", "3"]
        # Completed: the job left the queue, so nothing sends it again.
        assert await until(lambda: _no_jobs(server, res["id"]))
        stats = await until(lambda: _counted(server, res["id"], "webhook", "sent"))
        assert stats["webhook"] == {"queued": 1, "sent": 1}


async def _accepted(receiver):
    return receiver.accepted


async def _no_jobs(server, nid):
    return await jobs_of(server, nid) == []


async def delivery(server, nid: str) -> dict:
    """The notification's delivery statistics, as GET /v1/notifications/{id} shows them."""
    async with server.http() as http:
        r = await http.get(f"/v1/notifications/{nid}")
        assert r.status_code == 200, r.text
        return r.json()["delivery"]


async def _counted(server, nid, channel, field):
    """The delivery counters once ``field`` is there (the worker counts after it settles)."""
    stats = await delivery(server, nid)
    return stats if stats.get(channel, {}).get(field) else None


async def test_webhooks_go_out_through_the_egress_proxy_of_the_settings(tmp_path):
    async with connect_proxy() as proxy, \
            hooked(tmp_path, egress_proxy=proxy.url()) as (server, receiver):
        await publish(server, title="through the proxy")
        await until(lambda: _accepted(receiver))
    assert receiver.accepted[0]["notification"]["title"] == "through the proxy"
    assert len(proxy.targets) == 1 and proxy.targets[0].startswith("127.0.0.1:")


async def test_a_failing_webhook_goes_dead_and_is_redriven_by_the_admin(tmp_path):
    async with hooked(tmp_path, fail_first=1000) as (server, receiver):
        res = await publish(server)

        async def dead():
            async with server.http() as http:
                return (await http.get("/v1/outbound/dead")).json()["jobs"]

        (job,) = await until(dead)
        assert (job["notification"], job["user"], job["channel"], job["status"]) == (
            res["id"], "alice", "webhook", "dead")
        assert job["attempts"] == 3 and "HTTP 500" in job["last_error"]
        assert job["last_error"].startswith("gave up after 3 attempts")
        assert job["destination"]["url"].endswith("/hooks/tidings")
        assert len(receiver.requests) == 3
        stats = await until(lambda: _counted(server, res["id"], "webhook", "failed"))
        assert stats["webhook"] == {"queued": 1, "failed": 1}

        # Only an admin key sees or re-drives the dead-letter list.
        narrow = await server.service.create_api_key(server.app, {"publish", "read"})
        async with server.http(narrow) as http:
            assert (await http.get("/v1/outbound/dead")).status_code == 403
            r = await http.post(f"/v1/outbound/dead/{job['id']}/retry")
            assert r.status_code == 403
        receiver.fail_first = 0  # the receiver is fixed
        async with server.http() as http:
            r = await http.post(f"/v1/outbound/dead/{job['id']}/retry")
            assert r.status_code == 202 and r.json() == {"id": job["id"], "status": "queued"}
            again = await http.post(f"/v1/outbound/dead/{job['id']}/retry")
            assert again.status_code == 404  # not dead any more
            assert (await http.post("/v1/outbound/dead/nope.webhook.0/retry")).status_code == 404
        await until(lambda: _accepted(receiver))
        assert receiver.accepted[0]["id"] == job["id"]  # the same delivery id: dedupable
        assert await dead() == []


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_receivers_error_body_with_control_characters_is_kept_without_them(
        tmp_path, kind):
    """The receiver's error body goes into the job's last error, the attempt
    log and the dead-letter list: a NUL in it (PostgreSQL cannot store one)
    or any other control character must not stop the job from being
    retried and going dead like any failing one."""
    from tests.api.conftest import store_overrides

    async def hostile(scope, receive, send):
        while (await receive())["type"] != "http.request":
            pass
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"bad\x00gate\x01way\x7f\x1b[31m"})

    async with store_overrides(kind) as store, serve(hostile) as url, run_server(
            tmp_path, webhook=WebhookConfig(allow_insecure=True), outbound=FAST,
            **store) as server:
        async with server.http() as http:
            r = await http.post("/v1/webhooks", json={"url": f"{url}/hooks/tidings"})
            assert r.status_code == 201, r.text
        res = await publish(server)

        async def dead():
            async with server.http() as http:
                return (await http.get("/v1/outbound/dead")).json()["jobs"]

        (job,) = await until(dead)
        assert job["notification"] == res["id"] and job["attempts"] == 3
        assert "HTTP 500: bad gate way [31m" in job["last_error"], job["last_error"]
        async with server.http() as http:
            r = await http.get(f"/v1/notifications/{res['id']}/timeline",
                               params={"user": "alice"})
        assert r.status_code == 200, r.text
        errors = [e["error"] for e in r.json()["events"] if e["event"] == "attempt"]
        assert len(errors) == 3 and all(e and "\x00" not in e for e in errors), errors


async def test_webhook_endpoints_are_listed_without_secrets_rotated_and_removed(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        first_secret = receiver.secret
        async with server.http() as http:
            listed = await http.get("/v1/webhooks")
            assert first_secret not in listed.text
            (ep,) = listed.json()["endpoints"]
            assert listed.json()["enabled"] is True
            rotated = (await http.post(f"/v1/webhooks/{ep['id']}/rotate")).json()
            assert rotated["secret"] != first_secret
            assert "previous_secret_valid_until" in rotated
            relisted = await http.get("/v1/webhooks")
            assert first_secret not in relisted.text and rotated["secret"] not in relisted.text
        # During the overlap both secrets sign: a receiver still on the old one accepts.
        res = await publish(server)
        await until(lambda: _accepted(receiver))
        headers, _ = receiver.requests[-1]
        assert headers["tidings-signature"].count("v1=") == 2
        assert receiver.accepted[0]["notification"]["id"] == res["id"]
        async with server.http() as http:
            assert (await http.delete(f"/v1/webhooks/{ep['id']}")).json() == {"deleted": True}
            assert (await http.delete(f"/v1/webhooks/{ep['id']}")).status_code == 404
            assert (await http.get("/v1/webhooks")).json()["endpoints"] == []
        assert "outbound" not in await publish(server)  # no endpoint, no job


# -- preferences and quiet hours --------------------------------------------------------


async def test_quiet_hours_defer_webhooks_until_the_window_ends_urgent_goes_now(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        now = datetime.now(UTC)
        start = (now - timedelta(hours=1)).strftime("%H:%M")
        end = (now + timedelta(hours=1)).strftime("%H:%M")
        async with server.http() as http:
            r = await http.put("/v1/users/alice/preferences", json={
                "quiet_hours": {"start": start, "end": end, "tz": "UTC"}})
            assert r.status_code == 200, r.text
        res = await publish(server, title="at night")
        assert res["deferred"] == 1
        assert res["outbound"] == {"webhook": {"queued": 1, "deferred": 1}}
        (job,) = await jobs_of(server, res["id"])
        until_ = QuietWindow.parse(start, end, "UTC").ends_after(now)
        assert datetime.fromisoformat(job["not_before"]) == until_.replace(microsecond=0)
        assert job["status"] == "queued" and job["attempts"] == 0
        # urgent bypasses quiet hours
        urgent = await publish(server, title="server down", priority="urgent")
        assert "deferred" not in urgent
        await until(lambda: _accepted(receiver))
        assert [d["notification"]["id"] for d in receiver.accepted] == [urgent["id"]]


async def test_a_muted_channel_gets_no_job_even_when_urgent(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        async with server.http() as http:
            r = await http.put("/v1/users/alice/preferences", json={
                "categories": {"billing": {"webhook": False}}})
            assert r.status_code == 200
        res = await publish(server, category="billing", priority="urgent")
        assert res["outbound"] == {"webhook": {"muted": 1}}
        assert res["recipients"] == 1  # in-app stays on
        assert await jobs_of(server, res["id"]) == []
        other = await publish(server, category="social")
        assert other["outbound"] == {"webhook": {"queued": 1}}


async def test_in_app_off_means_no_inbox_entry_but_other_channels_go(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        async with server.http() as http:
            await http.put("/v1/users/alice/preferences", json={
                "categories": {"promo": {"in_app": False}}})
        res = await publish(server, category="promo")
        assert (res["recipients"], res["muted"]) == (0, 1)
        assert res["outbound"] == {"webhook": {"queued": 1}}
        async with server.http() as http:
            inbox = (await http.get("/v1/users/alice/notifications")).json()["items"]
        assert inbox == []
        await until(lambda: _accepted(receiver))


async def test_a_retracted_notification_loses_its_queued_jobs(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        now = datetime.now(UTC)
        async with server.http() as http:
            await http.put("/v1/users/alice/preferences", json={"quiet_hours": {
                "start": (now - timedelta(hours=1)).strftime("%H:%M"),
                "end": (now + timedelta(hours=1)).strftime("%H:%M"), "tz": "UTC"}})
        res = await publish(server)
        assert len(await jobs_of(server, res["id"])) == 1
        async with server.http() as http:
            assert (await http.delete(f"/v1/notifications/{res['id']}")).status_code == 200
        assert await server.service.store.list_jobs(server.app, nid=res["id"]) == []


# -- bad input is a clear 4xx -----------------------------------------------------------


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "https://localhost/hook", "https://127.0.0.1/x",
    "https://169.254.169.254/latest/meta-data", "http://example.com/hook", "not a url",
    "https://[::1]/x", "https://0x7f.0.0.1/x", "https://example.com:99999/x",
    # host names no request can be made to (IDNA): refused now, not failing every send
    "https://xn--zz.example.com/x", "https://\U0001f600.example.com/x",
])
async def test_unsafe_or_broken_webhook_urls_are_refused(server, url):
    async with server.http() as http:
        r = await http.post("/v1/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "url"


async def test_webhook_registration_limits_and_scope(tmp_path):
    async with run_server(tmp_path, webhook=WebhookConfig(allow_insecure=True)) as server:
        narrow = await server.service.create_api_key(server.app, {"publish", "read"})
        async with server.http(narrow) as http:
            r = await http.post("/v1/webhooks", json={"url": "https://example.com/h"})
            assert r.status_code == 403
            assert (await http.get("/v1/webhooks")).status_code == 403
        async with server.http() as http:
            for i in range(server.service.settings.limits.max_webhooks):
                r = await http.post("/v1/webhooks", json={"url": f"https://example.com/{i}"})
                assert r.status_code == 201
            r = await http.post("/v1/webhooks", json={"url": "https://example.com/more"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "limit_reached"
            for body in ({}, {"url": 5}, {"url": "https://e.com", "x": 1}):
                assert (await http.post("/v1/webhooks", json=body)).status_code == 422
            assert (await http.post("/v1/webhooks/wh_nope/rotate")).status_code == 404


@pytest.mark.parametrize("email", [
    "no-at-sign", "a@b", "two@@example.com", "a b@example.com", "a@exa mple.com",
    "a\r\nBcc: x@example.com", ".a@example.com", "a..b@example.com", "a@-bad-.com",
    "x" * 65 + "@example.com",
])
async def test_unusable_email_addresses_are_refused(server, email):
    async with server.http() as http:
        r = await http.put("/v1/users/alice/email", json={"email": email})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "email"


async def test_email_addresses_are_set_read_and_removed_per_app(server):
    other_app, other_key = await server.new_app()
    async with server.http() as http:
        r = await http.put("/v1/users/alice/email",
                           json={"email": "alice@example.com", "name": "Alice"})
        assert r.json() == {"user": "alice", "email": "alice@example.com", "name": "Alice",
                            "enabled": False}  # no SMTP server on this one
        r = await http.put("/v1/users/alice/email", json={"email": "a@b.example", "name": "A\nB"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "name"
        assert (await http.get("/v1/users/alice/email")).json()["email"] == "alice@example.com"
    async with server.http(other_key) as http:
        assert (await http.get("/v1/users/alice/email")).status_code == 404
        assert (await http.delete("/v1/users/alice/email")).status_code == 404
    async with server.http() as http:
        assert (await http.delete("/v1/users/alice/email")).json() == {"deleted": True}
        assert (await http.get("/v1/users/alice/email")).status_code == 404


@pytest.mark.parametrize("body", [
    {"categories": {"social": {"per": 0, "max": 3}}},
    {"categories": {"social": {"per": 60, "max": 0}}},
    {"categories": {"social": {"per": 60}}},
    {"categories": {"bad category!": {"per": 60, "max": 3}}},
    {"categories": {"social": {"per": 60, "max": 3, "burst": 9}}},
    {"categories": {"social": {"per": 10 ** 9, "max": 3}}},
    {"caps": {}},
])
async def test_bad_caps_are_refused(server, body):
    async with server.http() as http:
        r = await http.put("/v1/caps", json=body)
        assert r.status_code == 422, r.text
        assert (await http.get("/v1/caps")).json() == {}


@pytest.mark.parametrize("tz", ["localtime", "posixrules", "Mars/Olympus", "../etc/passwd", ""])
async def test_quiet_hours_zone_must_be_a_real_iana_zone(server, tz):
    async with server.http() as http:
        r = await http.put("/v1/users/alice/preferences", json={
            "quiet_hours": {"start": "22:00", "end": "07:00", "tz": tz}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "quiet_hours.tz"


async def test_job_listing_refuses_bad_ids(server):
    async with server.http() as http:
        assert (await http.get("/v1/outbound/dead", params={"before": "x" * 200})).status_code \
            == 422
        assert (await http.get("/v1/outbound/dead", params={"limit": "0"})).status_code == 422
        assert (await http.get("/v1/notifications/nope/outbound")).status_code == 404


async def test_a_correction_reaches_jobs_not_sent_yet(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        now = datetime.now(UTC)
        async with server.http() as http:
            await http.put("/v1/users/alice/preferences", json={"quiet_hours": {
                "start": (now - timedelta(hours=1)).strftime("%H:%M"),
                "end": (now + timedelta(hours=1)).strftime("%H:%M"), "tz": "UTC"}})
            res = await publish(server, title="tpyo")
            r = await http.patch(f"/v1/notifications/{res['id']}", json={"title": "typo"})
            assert r.status_code == 200
        (job,) = await server.service.store.claim_jobs("webhook", 5, 2e9, 60)
        assert b'"title":"typo"' in job.notification


async def test_the_jobs_of_an_unknown_or_other_apps_notification_are_404(server):
    other, other_key = await server.new_app("other")
    async with server.http(other_key) as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["u"]}, "title": "x"})
        theirs = r.json()["id"]
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["u"]}, "title": "x"})
        mine = r.json()["id"]
        assert (await http.get(f"/v1/notifications/{mine}/outbound")).json() == {"jobs": []}
        for nid in (theirs, "01HZZZZZZZZZZZZZZZZZZZZZZZ"):
            r = await http.get(f"/v1/notifications/{nid}/outbound")
            assert r.status_code == 404, r.text
            assert r.json()["error"] == {"code": "not_found", "message": "no such notification",
                                         "field": "id"}


async def test_one_apps_tarpit_endpoint_does_not_hold_another_apps_webhooks(tmp_path):
    """An app admin's endpoint that accepts and never answers takes at most
    three of the webhook lane's four slots; another app's webhook to another
    host goes out meanwhile (docs/channels.md, "One slow host")."""
    hold = asyncio.Event()
    tarpit = WebhookReceiver(secret="", hold=hold)
    fast = WebhookReceiver(secret="")
    outbound = OutboundConfig(poll_interval=0.05, concurrency=4)
    async with serve(tarpit) as tarpit_url, serve(fast) as fast_url, run_server(
            tmp_path, webhook=WebhookConfig(allow_insecure=True, timeout=60),
            outbound=outbound) as server:
        other, other_key = await server.new_app()
        for key, url, receiver in ((None, tarpit_url.replace("127.0.0.1", "localhost"), tarpit),
                                   (other_key, fast_url, fast)):
            async with server.http(key) as http:
                r = await http.post("/v1/webhooks", json={"url": f"{url}/hooks/tidings"})
                assert r.status_code == 201, r.text
                receiver.secret = r.json()["secret"]
        for i in range(8):
            await publish(server, title=f"to the tarpit {i}")
        for _ in range(3):
            await tarpit.arrivals.get()
        async with server.http(other_key) as http:
            r = await http.post("/v1/notifications",
                                json={"to": {"users": ["bob"]}, "title": "elsewhere"})
            assert r.status_code == 202, r.text
        async with asyncio.timeout(10):  # the tarpit's sends would hold the lane for 60 s
            await fast.arrivals.get()
        assert tarpit.concurrent == 3 and tarpit.arrivals.empty()
        assert [a["notification"]["title"] for a in fast.accepted] == ["elsewhere"]
        hold.set()

        async def all_sent() -> bool:
            return len(tarpit.accepted) == 8

        await until(all_sent)
