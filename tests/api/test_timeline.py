"""GET /v1/notifications/{id}/timeline?user=U, end to end on both stores.

Receipts come over a real WebSocket, states through the client API, webhook
attempts from a real receiver that refuses the first one.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import store_overrides
from tests.api.test_outbound_api import hooked, until
from tests.gateway.live import publish, recv_events, ws_connect
from tidings.client import Subscriber


async def timeline(server, nid: str, user: str, key: str | None = None) -> dict:
    async with server.http(key) as http:
        r = await http.get(f"/v1/notifications/{nid}/timeline", params={"user": user})
    assert r.status_code == 200, r.text
    return r.json()


def names(doc: dict) -> list[str]:
    return [e["event"] for e in doc["events"]]


def times_ordered(doc: dict) -> bool:
    at = [datetime.fromisoformat(e["at"]) for e in doc["events"][1:]]  # after "accepted"
    return at == sorted(at)


async def test_a_users_journey_accepted_committed_delivered_displayed_seen_read(each_store):
    server = each_store
    alice = await server.token("alice")
    phone = await ws_connect(server, alice)
    await recv_events(phone, 1)
    (nid,) = await publish(server, {"users": ["alice", "bob"]})
    await recv_events(phone, 1)
    doc = await timeline(server, nid, "alice")
    assert (doc["notification"], doc["user"], doc["status"], doc["recipient"]) == (
        nid, "alice", "published", True)
    assert names(doc) == ["accepted", "committed"]
    await phone.send(json.dumps({"type": "receipts", "delivered": [nid]}))
    await phone.send(json.dumps({"type": "receipts", "displayed": [nid]}))
    # receipts are written in batches (a second apart): their time is the write's
    await until(lambda: _with(server, nid, "alice", "displayed"))
    async with server.http(alice) as http:
        assert (await http.post("/v1/me/notifications/seen", json={"ids": [nid]})).status_code \
            == 200
        assert (await http.post("/v1/me/notifications/read", json={"ids": [nid]})).status_code \
            == 200
    doc = await timeline(server, nid, "alice")
    assert names(doc) == ["accepted", "committed", "delivered", "displayed", "seen", "read"]
    assert times_ordered(doc)
    # bob got it and did nothing; carol never was a recipient
    assert names(await timeline(server, nid, "bob")) == ["accepted", "committed"]
    carol = await timeline(server, nid, "carol")
    assert (carol["recipient"], names(carol)) == (False, ["accepted", "committed"])
    await phone.close()


async def _with(server, nid, user, event):
    doc = await timeline(server, nid, user)
    return doc if event in names(doc) else None


async def test_each_device_delivery_shows_with_its_device_and_time(each_store):
    """Two devices of alice on WebSockets (one naming itself, one not) and a
    third on SSE posting its receipts: three deliveries, each its own."""
    server = each_store
    alice = await server.token("alice")
    phone, laptop = await ws_connect(server, alice), await ws_connect(server, alice)
    for ws in (phone, laptop):
        await recv_events(ws, 1)
    async with server.http() as http, \
            http.stream("GET", "/v1/me/events", params={"token": alice}) as sse:
        lines = sse.aiter_lines()
        (nid,) = await publish(server, {"users": ["alice", "bob"]})
        (bobs,) = await publish(server, {"users": ["bob"]})
        for ws in (phone, laptop):
            assert (await recv_events(ws, 1))[0]["notification"]["id"] == nid
        async for line in lines:  # the tablet has it too
            if line.startswith("data:") and nid in line:
                break
        await phone.send(json.dumps({"type": "receipts", "device": "phone-7f3a",
                                     "label": "Chrome on Android", "delivered": [nid]}))
        await laptop.send(json.dumps({"type": "receipts", "delivered": [nid]}))
        async with server.http(alice) as me:
            r = await me.post("/v1/me/receipts", json={
                "device": "tablet-01", "label": "Safari on iPadOS", "delivered": [nid, bobs]})
            assert r.status_code == 202, r.text
        await server.service.flush_tracking()
        # repeats change nothing: the phone again (on a new connection too), the tablet again
        await phone.send(json.dumps({"type": "receipts", "device": "phone-7f3a",
                                     "label": "renamed", "delivered": [nid]}))
        async with server.http(alice) as me:
            r = await me.post("/v1/me/receipts", json={"device": "tablet-01", "delivered": [nid]})
            assert r.status_code == 202, r.text
        await phone.send(json.dumps({"type": "receipts", "device": "phone-7f3a",
                                     "displayed": [nid]}))
        doc = await until(lambda: _with(server, nid, "alice", "displayed"))
    delivered = [e for e in doc["events"] if e["event"] == "delivered"]
    assert len(delivered) == 3 and len({e["device"] for e in delivered}) == 3
    by_device = {e["device"]: e for e in delivered}
    assert by_device["phone-7f3a"]["label"] == "Chrome on Android"  # the first batch's
    assert by_device["tablet-01"]["label"] == "Safari on iPadOS"
    (anonymous,) = [e for e in delivered if e["device"] not in ("phone-7f3a", "tablet-01")]
    assert anonymous["device"].startswith("~") and anonymous["label"] is None
    (displayed,) = [e for e in doc["events"] if e["event"] == "displayed"]
    assert displayed["device"] == "phone-7f3a"
    assert times_ordered(doc)
    # unique users stay unique users; bob's notification was not alice's to acknowledge
    async with server.http() as http:
        in_app = (await http.get(f"/v1/notifications/{nid}")).json()["delivery"]["in_app"]
        assert (in_app["acknowledged"], in_app["displayed"]) == (1, 1)
        in_app = (await http.get(f"/v1/notifications/{bobs}")).json()["delivery"]["in_app"]
        assert in_app["acknowledged"] == 0
    assert [e["event"] for e in (await timeline(server, bobs, "bob"))["events"]] == [
        "accepted", "committed"]
    for ws in (phone, laptop):
        await ws.close()


async def test_the_python_subscriber_acknowledges_as_its_device(server):
    nid = None
    async with Subscriber(server.ws_url, await server.token("alice"), device="worker-7",
                          device_label="billing worker") as sub:
        async def read():
            nonlocal nid
            async for ev in sub:
                if ev["type"] == "hello":
                    (nid,) = await publish(server, {"users": ["alice"]})
                elif ev["type"] == "notification":
                    return
        await asyncio.wait_for(read(), 10)
        doc = await until(lambda: _with(server, nid, "alice", "delivered"))
    (delivered,) = [e for e in doc["events"] if e["event"] == "delivered"]
    assert (delivered["device"], delivered["label"]) == ("worker-7", "billing worker")


async def test_bad_device_ids_are_422_over_http_and_ignored_on_the_websocket(each_store):
    server = each_store
    alice = await server.token("alice")
    ws = await ws_connect(server, alice)
    await recv_events(ws, 1)
    (nid,) = await publish(server, {"users": ["alice"]})
    await recv_events(ws, 1)
    bad = ["", "x" * 65, "a\x00b", "new\nline", "del\x7f", "~http", 42, ["a"]]
    async with server.http(alice) as me:
        for device in bad:
            r = await me.post("/v1/me/receipts", json={"device": device, "delivered": [nid]})
            assert r.status_code == 422, (device, r.text)
            assert r.json()["error"]["field"] == "device", r.text
        for label in ("", "y" * 65, "tab\there", 3):
            r = await me.post("/v1/me/receipts", json={"device": "ok", "label": label,
                                                       "delivered": [nid]})
            assert r.status_code == 422 and r.json()["error"]["field"] == "label", r.text
    for device in bad:
        await ws.send(json.dumps({"type": "receipts", "device": device, "delivered": [nid]}))
    await server.service.flush_tracking()
    assert names(await timeline(server, nid, "alice")) == ["accepted", "committed"]
    # the connection lives on, and its next good batch counts
    await ws.send(json.dumps({"type": "receipts", "device": "ok", "delivered": [nid]}))
    doc = await until(lambda: _with(server, nid, "alice", "delivered"))
    assert [e.get("device") for e in doc["events"]] == [None, None, "ok"]
    await ws.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_webhook_attempts_show_their_result_and_next_retry(tmp_path, kind):
    async with store_overrides(kind) as store, \
            hooked(tmp_path, fail_first=1, **store) as (server, receiver):
        async with server.http() as http:
            r = await http.post("/v1/notifications",
                                json={"to": {"users": ["alice"]}, "title": "hi"})
            assert r.status_code == 202, r.text
            nid = r.json()["id"]
        doc = await until(lambda: _sent(server, nid))
        attempts = [e for e in doc["events"] if e["event"] == "attempt"]
        assert [(a["channel"], a["attempt"], a["result"]) for a in attempts] == [
            ("webhook", 1, "failed"), ("webhook", 2, "sent")]
        assert "500" in attempts[0]["error"] and attempts[0]["next_retry"] is not None
        assert attempts[1]["error"] is None and attempts[1]["next_retry"] is None
        assert attempts[0]["job"] == attempts[1]["job"] == receiver.accepted[0]["id"]
        assert times_ordered(doc)
        # the notification counts unique users per outbound channel
        async with server.http() as http:
            r = await http.get(f"/v1/notifications/{nid}")
        assert r.json()["outbound_users"] == {"webhook": {"queued": 1, "sent": 1, "failed": 0}}


async def _sent(server, nid):
    doc = await timeline(server, nid, "alice")
    return doc if any(e.get("result") == "sent" for e in doc["events"]) else None


async def test_a_queued_job_shows_its_next_attempt(tmp_path):
    # a receiver that never answers in time is not needed: quiet hours hold the job
    async with hooked(tmp_path) as (server, _receiver):
        async with server.http() as http:
            now = datetime.now(UTC)
            r = await http.put("/v1/users/alice/preferences", json={"quiet_hours": {
                "start": (now - timedelta(hours=1)).strftime("%H:%M"),
                "end": (now + timedelta(hours=1)).strftime("%H:%M"), "tz": "UTC"}})
            assert r.status_code == 200, r.text
            r = await http.post("/v1/notifications",
                                json={"to": {"users": ["alice"]}, "title": "hi"})
            nid = r.json()["id"]
        doc = await timeline(server, nid, "alice")
        (queued,) = [e for e in doc["events"] if e["event"] == "queued"]
        assert queued["channel"] == "webhook" and queued["attempts"] == 0
        assert datetime.fromisoformat(queued["next_attempt"]) > datetime.fromisoformat(
            queued["at"])


async def test_unknown_or_another_apps_notification_is_404_a_bad_user_422(server):
    (nid,) = await publish(server, {"users": ["alice"]})
    _other, other_key = await server.new_app()
    async with server.http() as http:
        for bad in ("", "x" * 129, "a\x00b"):
            r = await http.get(f"/v1/notifications/{nid}/timeline", params={"user": bad})
            assert r.status_code == 422 and r.json()["error"]["field"] == "user", bad
        r = await http.get(f"/v1/notifications/{nid}/timeline")
        assert r.status_code == 422 and r.json()["error"]["field"] == "user"
        for unknown in ("01HZZZZZZZZZZZZZZZZZZZZZZZ", "not-an-id"):
            r = await http.get(f"/v1/notifications/{unknown}/timeline", params={"user": "a"})
            assert r.status_code == 404 and r.json()["error"]["field"] == "id"
    async with server.http(other_key) as http:
        r = await http.get(f"/v1/notifications/{nid}/timeline", params={"user": "alice"})
        assert r.status_code == 404 and r.json()["error"]["field"] == "id"
