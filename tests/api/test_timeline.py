"""GET /v1/notifications/{id}/timeline?user=U, end to end on both stores.

Receipts come over a real WebSocket, states through the client API, webhook
attempts from a real receiver that refuses the first one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.conftest import store_overrides
from tests.api.test_outbound_api import hooked, until
from tests.gateway.live import publish, recv_events, ws_connect


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
