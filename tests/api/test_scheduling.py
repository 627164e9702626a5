"""deliver_at and ttl over HTTP and live streams (docs/design.md §3, §4).

A future ``deliver_at`` answers ``202 {"status": "scheduled"}``, is durable,
fires once (also after a restart, also with two nodes polling the same
PostgreSQL), can be cancelled with ``DELETE`` until it fires, and is
dropped if its ``ttl`` ran out before it could fire.  Firing is driven
either by the app's scheduler task (real time, a second or two) or, where
the test is about the outcome rather than the timing, by calling
``Service.fire_due`` with a later clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime, timedelta, timezone

from tests.conftest import run_server, two_nodes
from tests.gateway.live import recv_events, ws_connect

PUBLISH = "/v1/notifications"


def at(seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from now, with a zone (not UTC: any zone works)."""
    zone = timezone(timedelta(hours=2))
    return (datetime.now(UTC) + timedelta(seconds=seconds)).astimezone(zone).isoformat()


async def schedule(server, seconds: float, **fields) -> dict:
    body = {"to": {"users": ["alice"]}, "title": "later", "deliver_at": at(seconds), **fields}
    async with server.http() as http:
        r = await http.post(PUBLISH, json=body)
    assert r.status_code == 202, r.text
    return r.json()


async def inbox(server, user: str = "alice") -> list[str]:
    async with server.http() as http:
        r = await http.get(f"/v1/users/{user}/notifications", params={"state": "all"})
    return [i["id"] for i in r.json()["items"]]


async def test_a_scheduled_notification_is_held_then_delivered_live(server):
    out = await schedule(server, 1.5, ttl=600)
    assert (out["status"], out["recipients"]) == ("scheduled", 0)
    async with server.http() as http:
        doc = (await http.get(f"/v1/notifications/{out['id']}")).json()
    assert doc["status"] == "scheduled" and doc["notification"]["title"] == "later"
    assert doc["notification"]["deliver_at"] == doc["notification"]["created_at"]
    assert await inbox(server) == []
    ws = await ws_connect(server, await server.token("alice"))
    (hello,) = await recv_events(ws, 1)
    assert hello["counts"]["unread"] == 0
    (ev,) = await recv_events(ws, 1, timeout=10)  # the scheduler fires it
    assert ev["notification"]["id"] == out["id"] and ev["cursor"].endswith(":1")
    await ws.close()
    assert await inbox(server) == [out["id"]]
    async with server.http() as http:
        doc = (await http.get(f"/v1/notifications/{out['id']}")).json()
    assert (doc["status"], doc["recipients"]) == ("published", 1)
    assert doc["delivery"]["in_app"]["recipients"] == 1


async def test_delete_before_it_fires_cancels_it(server):
    out = await schedule(server, 60)
    async with server.http() as http:
        r = await http.delete(f"/v1/notifications/{out['id']}")
        assert r.json() == {"deleted": True, "status": "cancelled"}
        assert (await http.get(f"/v1/notifications/{out['id']}")).status_code == 404
        assert (await http.delete(f"/v1/notifications/{out['id']}")).status_code == 404
    assert await server.service.fire_due(time.time() + 120, 100) == []
    assert await inbox(server) == []


async def test_delete_after_it_fired_retracts_it(server):
    out = await schedule(server, 60)
    (fired,) = await server.service.fire_due(time.time() + 61, 100)
    assert fired.id == out["id"]
    assert await inbox(server) == [out["id"]]
    async with server.http() as http:
        r = await http.delete(f"/v1/notifications/{out['id']}")
    assert r.json() == {"deleted": True, "status": "retracted"}
    assert await inbox(server) == []


async def test_one_past_its_ttl_when_it_could_fire_is_dropped(server):
    out = await schedule(server, 60, ttl=30)
    # the node was down from before it was due until after its expiry
    (dropped,) = await server.service.fire_due(time.time() + 100, 100)
    assert (dropped.id, dropped.status) == (out["id"], "expired")
    assert await inbox(server) == []
    async with server.http() as http:
        doc = (await http.get(f"/v1/notifications/{out['id']}")).json()
    assert doc["status"] == "expired"


async def test_a_stream_never_replays_an_expired_item(server):
    token = await server.token("alice")
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    async with server.http() as http:
        await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "ttl": 1, "title": "brief"})
        r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "title": "keep"})
        keep = r.json()["id"]
    await asyncio.sleep(1.2)  # wall time has to pass for a ttl to run out
    ws = await ws_connect(server, token, cursor=hello["cursor"])
    hello2, replayed, recovered = await recv_events(ws, 3)
    assert hello2["counts"] == {"unread": 1, "unseen": 1, "at": {"seq": 2, "feed": 0, "rev": 0}}
    assert replayed["notification"]["id"] == keep
    assert recovered == {"type": "recovered", "ok": True, "missed": 1}
    await ws.close()
    assert await inbox(server) == [keep]


async def test_a_deliver_at_already_due_publishes_now(server):
    async with server.http() as http:
        r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "deliver_at": at(-30)})
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    assert await inbox(server) == [r.json()["id"]]


async def test_bad_deliver_at_and_ttl_are_4xx(server):
    cases = [
        ({"deliver_at": at(-3600)}, "deliver_at"),  # in the past, beyond the grace
        ({"deliver_at": at(2 * 365 * 86400)}, "deliver_at"),  # beyond the horizon
        ({"deliver_at": "2030-01-01T00:00:00"}, "deliver_at"),  # no zone
        ({"deliver_at": "2030-02-30T00:00:00Z"}, "deliver_at"),  # no such day
        ({"deliver_at": 1893456000}, "deliver_at"),  # not ISO 8601
        ({"deliver_at": "9999-12-31T23:59:59+14:00"}, "deliver_at"),
        ({"ttl": 10 ** 12}, "ttl"),
        ({"ttl": 0}, "ttl"),
    ]
    async with server.http() as http:
        for extra, field in cases:
            r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, **extra})
            assert r.status_code == 422, (extra, r.text)
            assert r.json()["error"]["field"] == field, extra
    assert await inbox(server) == []
    assert await server.service.store.next_due() is None


async def test_scheduled_publishes_are_idempotent_and_batchable(server):
    body = {"to": {"users": ["alice"]}, "deliver_at": at(60)}
    async with server.http() as http:
        r1 = await http.post(PUBLISH, json=body, headers={"Idempotency-Key": "k1"})
        r2 = await http.post(PUBLISH, json=body, headers={"Idempotency-Key": "k1"})
        assert (r1.json()["status"], r2.json()["status"]) == ("scheduled", "duplicate")
        assert r1.json()["id"] == r2.json()["id"]
        r = await http.post(f"{PUBLISH}/batch", json={"notifications": [
            {"to": {"users": ["alice"]}, "deliver_at": at(60)},
            {"to": {"users": ["alice"]}},
            {"to": {"users": ["alice"]}, "deliver_at": "yesterday"},
        ]})
    statuses = [x["status"] for x in r.json()["results"]]
    assert statuses == ["scheduled", "accepted", "error"]
    fired = await server.service.fire_due(time.time() + 61, 100)
    assert len(fired) == 2  # the key's one, once, and the batch's one
    assert len(await inbox(server)) == 3


@contextlib.asynccontextmanager
async def one_store(tmp_path):
    """Overrides that give every run_server the same storage: the same
    SQLite data directory, or one PostgreSQL schema under
    TIDINGS_TEST_STORE=postgres."""
    if os.environ.get("TIDINGS_TEST_STORE") != "postgres":
        yield {}
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    url = require_postgres()
    async with fresh_schema(url) as pg:
        yield {"store": f"{url}?search_path={pg['search_path']}"}


async def test_a_restart_before_it_is_due_still_fires_it_once(tmp_path):
    async with one_store(tmp_path) as store:
        async with run_server(tmp_path, **store) as server:
            out = await schedule(server, 3)
        # the node stops before the notification is due, and starts again
        async with run_server(tmp_path, **store) as server:
            assert (await server.service.store.get_scheduled(server.app, out["id"])).status \
                == "pending"
            ws = await ws_connect(server, await server.token("alice"))
            (hello,) = await recv_events(ws, 1)
            (ev,) = await recv_events(ws, 1, timeout=15)
            assert ev["notification"]["id"] == out["id"]
            await ws.close()
            assert await inbox(server) == [out["id"]]
            assert await server.service.fire_due(time.time() + 60, 100) == []
            assert server.service.scheduler.fired == 1


async def test_two_nodes_fire_each_scheduled_notification_once(tmp_path):
    async with two_nodes(tmp_path) as (a, b):
        # the device is on b; everything is scheduled through a, due at
        # about the same moment, so both nodes' schedulers race for it
        ws = await ws_connect(b, await b.token("alice"))
        await recv_events(ws, 1)
        ids = [(await schedule(a, 2, title=f"n{i}"))["id"] for i in range(20)]
        events = await recv_events(ws, 20, timeout=20)
        assert sorted(e["notification"]["id"] for e in events) == sorted(ids)
        assert [int(e["cursor"].split(":")[1]) for e in events] == list(range(1, 21))
        await ws.close()
        assert sorted(await inbox(b)) == sorted(ids)
        assert a.service.scheduler.fired + b.service.scheduler.fired == 20
        assert await a.service.fire_due(time.time() + 60, 100) == []


async def test_the_scheduling_limits_are_named_and_apply(tmp_path):
    from tidings.config import Limits

    limits = Limits(max_schedule_ahead=60, deliver_at_grace=10)
    async with run_server(tmp_path, limits=limits) as server:
        async with server.http() as http:
            for seconds, expect in [(120, 422), (-30, 422), (30, 202), (-5, 202)]:
                r = await http.post(PUBLISH, json={"to": {"users": ["alice"]},
                                                   "deliver_at": at(seconds)})
                assert r.status_code == expect, (seconds, r.text)
                if expect == 422:
                    assert r.json()["error"]["field"] == "deliver_at"
                else:
                    assert r.json()["status"] == ("scheduled" if seconds > 0 else "accepted")
