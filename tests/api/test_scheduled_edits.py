"""A scheduled notification before it fires: corrected and moved with
``PATCH``, atomically against the scheduler firing it, and held to the app's
frequency caps when it fires (docs/delivery.md, "Scheduled delivery";
docs/channels.md, "Frequency caps").  On both stores."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from tests.api.conftest import store_overrides
from tests.api.test_outbound_api import hooked, jobs_of
from tests.api.test_scheduling import at, inbox, schedule
from tests.conftest import two_nodes
from tests.gateway.live import recv_events, ws_connect

PUBLISH = "/v1/notifications"


async def test_a_patch_before_it_fires_is_what_the_device_gets(each_store):
    server = each_store
    out = await schedule(server, 1.5, title="draft", body="typo")
    async with server.http() as http:
        r = await http.patch(f"{PUBLISH}/{out['id']}", json={"title": "final", "tags": ["x"]})
        assert r.status_code == 200, r.text
        assert (r.json()["title"], r.json()["body"], r.json()["tags"]) == ("final", "typo", ["x"])
        doc = (await http.get(f"{PUBLISH}/{out['id']}")).json()
    assert doc["status"] == "scheduled" and doc["notification"]["title"] == "final"
    ws = await ws_connect(server, await server.token("alice"))
    await recv_events(ws, 1)  # hello
    (ev,) = await recv_events(ws, 1, timeout=10)  # the scheduler fires it, edited
    await ws.close()
    assert (ev["notification"]["id"], ev["notification"]["title"]) == (out["id"], "final")
    async with server.http() as http:
        doc = (await http.get(f"{PUBLISH}/{out['id']}")).json()
    assert (doc["status"], doc["notification"]["title"]) == ("published", "final")


async def test_a_patch_racing_the_fire_is_never_lost(each_store):
    """Each round a PATCH and a fire of the same notification start together
    (the store's fire, on another connection on PostgreSQL): whichever
    commits first, the PATCH answers 200 and the published notification
    carries the edit."""
    server = each_store
    for i in range(15):
        out = await schedule(server, 60, title="draft")
        async with server.http() as http:
            patch = http.patch(f"{PUBLISH}/{out['id']}", json={"title": f"final {i}"})
            fire = server.service.fire_due(time.time() + 61, 100)
            if i % 2:  # either one first onto the event loop
                r, _ = await asyncio.gather(patch, fire)
            else:
                _, r = await asyncio.gather(fire, patch)
            assert r.status_code == 200, r.text
            assert r.json()["title"] == f"final {i}"
            await server.service.fire_due(time.time() + 61, 100)  # if the PATCH went first
            doc = (await http.get(f"{PUBLISH}/{out['id']}")).json()
            assert (doc["status"], doc["notification"]["title"]) == ("published", f"final {i}")
            items = (await http.get("/v1/users/alice/notifications")).json()["items"]
            assert items[0]["notification"]["title"] == f"final {i}"


async def test_deliver_at_moves_it_with_its_ttl(each_store):
    server = each_store
    out = await schedule(server, 3600, ttl=600)
    async with server.http() as http:
        r = await http.patch(f"{PUBLISH}/{out['id']}", json={"deliver_at": at(1.5)})
        assert r.status_code == 200, r.text
        note = r.json()
        due = datetime.fromisoformat(note["deliver_at"]).timestamp()
        assert abs(due - (time.time() + 1.5)) < 5
        assert note["created_at"] == note["deliver_at"]
        assert datetime.fromisoformat(note["expires_at"]).timestamp() == due + 600
        doc = (await http.get(f"{PUBLISH}/{out['id']}")).json()
        assert (doc["status"], doc["deliver_at"]) == ("scheduled", note["deliver_at"])
    ws = await ws_connect(server, await server.token("alice"))
    await recv_events(ws, 1)
    (ev,) = await recv_events(ws, 1, timeout=10)  # fires at the new time, not in an hour
    await ws.close()
    assert ev["notification"]["id"] == out["id"]
    assert await inbox(server) == [out["id"]]

    later = await schedule(server, 30)
    async with server.http() as http:
        r = await http.patch(f"{PUBLISH}/{later['id']}", json={"deliver_at": at(3600)})
        assert r.status_code == 200, r.text
    assert await server.service.fire_due(time.time() + 60, 100) == []  # not at its old time
    (fired,) = await server.service.fire_due(time.time() + 3601, 100)
    assert fired.id == later["id"]


async def test_hostile_patches_of_a_scheduled_notification_change_nothing(each_store):
    server = each_store
    out = await schedule(server, 600, title="kept")
    url = f"{PUBLISH}/{out['id']}"
    cases = [
        ({"deliver_at": at(-3600)}, 422, "deliver_at"),  # in the past, beyond the grace
        ({"deliver_at": at(2 * 365 * 86400)}, 422, "deliver_at"),  # beyond the horizon
        ({"deliver_at": "2030-01-01T00:00:00"}, 422, "deliver_at"),  # no zone
        ({"deliver_at": "yesterday"}, 422, "deliver_at"),
        ({"deliver_at": 1893456000}, 422, "deliver_at"),
        ({"deliver_at": "9999-12-31T23:59:59+14:00"}, 422, "deliver_at"),
        ({"deliver_at": None, "title": 5}, 422, "title"),
        ({"to": {"users": ["mallory"]}}, 422, None),  # not a field of a correction
        ({"body": "x" * 8000, "data": {"pad": "y" * 60_000}}, 413, None),
    ]
    async with server.http() as http:
        for body, status, field in cases:
            r = await http.patch(url, json=body)
            assert r.status_code == status, (body, r.text)
            if field is not None:
                assert r.json()["error"]["field"] == field, body
    _, other_key = await server.new_app()
    async with server.http(other_key) as http:
        r = await http.patch(url, json={"title": "hijacked", "deliver_at": at(5)})
        assert r.status_code == 404, r.text
        assert (await http.get(url)).status_code == 404
    async with server.http() as http:
        doc = (await http.get(url)).json()
    assert (doc["status"], doc["notification"]["title"]) == ("scheduled", "kept")
    assert doc["notification"]["deliver_at"] == doc["deliver_at"]
    assert abs(datetime.fromisoformat(doc["deliver_at"]).timestamp() - (time.time() + 600)) < 30
    # fired: deliver_at can no longer change (409), a correction still applies
    await server.service.fire_due(time.time() + 601, 100)
    async with server.http() as http:
        r = await http.patch(url, json={"title": "late", "deliver_at": at(60)})
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_published"
        assert (await http.get(url)).json()["notification"]["title"] == "kept"
        r = await http.patch(url, json={"title": "fixed"})
        assert r.status_code == 200 and r.json()["title"] == "fixed"


async def test_caps_are_charged_when_it_fires(each_store):
    server = each_store
    async with server.http() as http:
        await http.put("/v1/caps", json={"categories": {"social": {"per": 3600, "max": 1}}})
    # booked before the cap is spent: booking takes no token ...
    dropped = await schedule(server, 60, category="social", title="later",
                             to={"users": ["alice", "bob"]})
    async with server.http() as http:
        r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "category": "social",
                                           "title": "now"})
        assert r.status_code == 202 and "rate_limited" not in r.json(), r.text
    # ... firing does: alice's is spent, bob's is not
    (fired,) = await server.service.fire_due(time.time() + 61, 100)
    assert (fired.id, fired.recipients) == (dropped["id"], 1)
    assert dropped["id"] not in await inbox(server, "alice")
    assert await inbox(server, "bob") == [dropped["id"]]


async def test_a_grouped_one_over_the_cap_when_it_fires_lands_but_sends_nothing(tmp_path):
    for kind in ("sqlite", "postgres"):
        async with store_overrides(kind) as store, hooked(tmp_path / kind, **store) as (
                server, _):
            async with server.http() as http:
                await http.put("/v1/caps", json={
                    "categories": {"social": {"per": 3600, "max": 1}}})
                r = await http.post(PUBLISH, json={"to": {"users": ["alice"]},
                                                   "category": "social"})
                assert r.status_code == 202, r.text
            out = await schedule(server, 60, category="social", group_key="post:1",
                                 to={"users": ["alice", "bob"]})
            (fired,) = await server.service.fire_due(time.time() + 61, 100)
            assert fired.recipients == 2  # aggregated: in both inboxes
            assert out["id"] in await inbox(server, "alice")
            jobs = await jobs_of(server, out["id"])
            assert [j["user"] for j in jobs] == ["bob"], jobs  # no webhook for alice's


async def test_two_nodes_charge_a_scheduled_notifications_caps_once(tmp_path):
    """Only the node that claims a due notification takes its recipients'
    tokens, however many look at it at the same instant."""
    async with two_nodes(tmp_path) as (a, b):
        async with a.http() as http:
            await http.put("/v1/caps", json={"categories": {"social": {"per": 3600, "max": 2}}})
        out = await schedule(a, 60, category="social")
        now = time.time() + 61
        fired = await asyncio.gather(*(n.service.fire_due(now, 100) for n in (a, b, a, b)))
        assert [o.id for run in fired for o in run] == [out["id"]]
        assert await inbox(a, "alice") == [out["id"]]
        # one of alice's two tokens is left
        async with b.http() as http:
            r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "category": "social",
                                               "title": "now"})
        assert r.status_code == 202 and "rate_limited" not in r.json(), r.text
