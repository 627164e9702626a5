"""Snooze (docs/inbox.md#snooze): out of the inbox and the counts until a
time, then back first and unread, live to open devices and by replay to
those that reconnect; on both stores, across a restart, once with two nodes.

Where a test is about what coming back does rather than when, it calls
``Service.wake_snoozed`` with a later clock (the scheduler's own pass);
the scheduler itself is exercised with snoozes of a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.api.conftest import store_overrides
from tests.conftest import run_server, two_nodes
from tests.gateway.live import publish, recv_events, until_counts, ws_connect

ME = "/v1/me/notifications"


def at(seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from now, with a zone other than UTC."""
    zone = timezone(timedelta(hours=-5))
    return (datetime.now(UTC) + timedelta(seconds=seconds)).astimezone(zone).isoformat()


def me(server, token: str):
    import httpx

    return httpx.AsyncClient(base_url=server.url, timeout=10,
                             headers={"Authorization": f"Bearer {token}"})


async def snooze(server, token: str, ids: list[str], seconds: float) -> dict:
    async with me(server, token) as http:
        r = await http.post(ME + "/snooze", json={"ids": ids, "until": at(seconds)})
    assert r.status_code == 200, r.text
    return r.json()


async def page(server, token: str, **params) -> dict:
    async with me(server, token) as http:
        r = await http.get(ME, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def counts(server, token: str) -> dict:
    async with me(server, token) as http:
        return (await http.get("/v1/me/counts")).json()


async def test_a_snoozed_entry_leaves_the_page_and_the_counts_on_every_device(each_store):
    server = each_store
    token = await server.token("alice")
    ids = await publish(server, {"users": ["alice"]}, 3)
    other = await ws_connect(server, token)  # a second device, open
    (hello,) = await recv_events(other, 1)
    assert hello["counts"]["unread"] == 3
    before = await counts(server, token)

    out = await snooze(server, token, [ids[1]], 3600)
    assert out["changed"] == 1 and out["counts"]["unread"] == 2
    got: list[dict] = []
    live = await until_counts(other, got)
    state = [e for e in got if e["type"] == "state"]
    assert state == [{"type": "state", "ids": [ids[1]], "all": False, "state": "snoozed",
                      "until": out["until"]}]
    assert (live["unread"], live["unseen"]) == (2, 2)
    # the counts moved without a position: the revision says they are newer
    assert live["at"]["seq"] == before["at"]["seq"] and live["at"]["rev"] > before["at"]["rev"]
    await other.close()

    assert [i["id"] for i in (await page(server, token))["items"]] == [ids[2], ids[0]]
    assert [i["id"] for i in (await page(server, token, state="unread"))["items"]] == [
        ids[2], ids[0]]
    (item,) = (await page(server, token, state="snoozed"))["items"]
    assert item["id"] == ids[1] and item["state"] == "snoozed"
    assert datetime.fromisoformat(item["snoozed_until"]) == datetime.fromisoformat(out["until"])
    assert (await counts(server, token))["unread"] == 2
    # read, seen and archive leave a snoozed entry as it is
    async with me(server, token) as http:
        r = await http.post(ME + "/read", json={"all": True})
    assert r.json()["changed"] == 2
    assert [i["id"] for i in (await page(server, token, state="snoozed"))["items"]] == [ids[1]]


async def test_when_its_time_comes_it_is_back_first_unread_live_and_by_replay(each_store):
    server = each_store
    token = await server.token("alice")
    ids = await publish(server, {"users": ["alice"]}, 3)
    async with me(server, token) as http:
        await http.post(ME + "/read", json={"ids": [ids[0]]})
    away = await ws_connect(server, token)  # a device that will be away meanwhile
    hello = (await recv_events(away, 1))[0]  # (the read's events may share its frame)
    cursor = hello["cursor"]
    await away.close()
    await snooze(server, token, [ids[0]], 600)
    live = await ws_connect(server, token)
    await recv_events(live, 1)

    assert await server.service.wake_snoozed(time.time() + 601, 100) == 1
    (ev,) = await recv_events(live, 1)
    assert ev["type"] == "notification" and ev["resurfaced"] is True
    assert ev["notification"]["id"] == ids[0] and ev["cursor"].endswith(":4")
    await live.close()
    assert await server.service.wake_snoozed(time.time() + 601, 100) == 0  # once

    first = await page(server, token)
    assert [i["id"] for i in first["items"]] == [ids[0], ids[2], ids[1]]
    assert first["items"][0]["state"] == "unseen"
    assert (await counts(server, token))["unread"] == 3
    # pages follow the new place: one item a page, each once, in order
    seen, before = [], None
    while True:
        one = await page(server, token, limit=1, **({"before": before} if before else {}))
        seen += [i["id"] for i in one["items"]]
        if not one["next_before"]:
            break
        before = one["next_before"]
    assert seen == [ids[0], ids[2], ids[1]]

    back = await ws_connect(server, token, cursor=cursor)  # reconnects: the replay has it
    events = await recv_events(back, 3)
    replayed = [e for e in events if e["type"] == "notification"]
    assert [(e["notification"]["id"], e.get("resurfaced")) for e in replayed] == [(ids[0], True)]
    assert events[-1] == {"type": "recovered", "ok": True, "missed": 1}
    await back.close()


async def test_the_scheduler_brings_it_back_at_its_time(each_store):
    server = each_store
    token = await server.token("alice")
    (nid,) = await publish(server, {"users": ["alice"]})
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    await snooze(server, token, [nid], 1.5)
    got: list[dict] = []
    await until_counts(ws, got)
    while not any(e["type"] == "notification" for e in got):
        got += await recv_events(ws, 1, timeout=15)
    ev = next(e for e in got if e["type"] == "notification")
    assert ev["notification"]["id"] == nid and ev["resurfaced"] is True
    await ws.close()
    assert server.service.scheduler.woken == 1
    assert (await page(server, token))["items"][0]["id"] == nid


async def test_unsnooze_brings_it_back_now(each_store):
    server = each_store
    token = await server.token("alice")
    ids = await publish(server, {"users": ["alice"]}, 2)
    await snooze(server, token, ids, 3600)
    assert (await counts(server, token))["unread"] == 0
    ws = await ws_connect(server, token)
    await recv_events(ws, 1)
    async with me(server, token) as http:
        r = await http.post(ME + "/unsnooze", json={"ids": [ids[0]]})
    assert r.status_code == 200 and r.json()["changed"] == 1
    (ev,) = await recv_events(ws, 1)
    assert ev["notification"]["id"] == ids[0] and ev["resurfaced"] is True
    await ws.close()
    assert [i["id"] for i in (await page(server, token, state="all"))["items"]] == [
        ids[0], ids[1]]
    assert (await counts(server, token))["unread"] == 1
    async with me(server, token) as http:  # not snoozed any more: nothing to do
        assert (await http.post(ME + "/unsnooze", json={"ids": [ids[0]]})).json()[
            "changed"] == 0


async def test_a_resurfaced_entry_comes_back_in_the_users_language(each_store):
    """Live (one publish's path, resolved per language) and in the replay of
    a device that was away, as any personal entry of a notification with
    ``locales`` (docs/channels.md#languages)."""
    server = each_store
    async with server.http() as http:
        r = await http.patch("/v1/users/hans/preferences", json={"locale": "de-AT"})
        assert r.status_code == 200, r.text
    token = await server.token("hans")
    (nid,) = await publish(server, {"users": ["hans"]}, title="Your order",
                           locales={"de": {"title": "Deine Bestellung"}})
    away = await ws_connect(server, token)
    cursor = (await recv_events(away, 1))[0]["cursor"]
    await away.close()
    await snooze(server, token, [nid], 600)
    live = await ws_connect(server, token)
    await recv_events(live, 1)

    assert await server.service.wake_snoozed(time.time() + 601, 100) == 1
    (ev,) = await recv_events(live, 1)
    await live.close()
    back = await ws_connect(server, token, cursor=cursor)
    replayed = [e for e in await recv_events(back, 3) if e["type"] == "notification"]
    await back.close()
    for e in (ev, *replayed):
        note = e["notification"]
        assert (note["id"], note["title"], note.get("locale"), e["resurfaced"]) == (
            nid, "Deine Bestellung", "de", True)
        assert "locales" not in note
    assert len(replayed) == 1


async def test_a_resurfaced_entry_with_a_ttl_sends_counts_when_it_runs_out(each_store):
    """Back unseen and counted by the device; when its ttl runs out the
    device gets counts without it, as for a new notification with a ttl
    (the gateway reads ``expires_at`` from the notification, not from the
    mark that follows it)."""
    server = each_store
    token = await server.token("alice")
    (nid,) = await publish(server, {"users": ["alice"]}, ttl=3)
    await snooze(server, token, [nid], 1)
    # connected while it is snoozed: its hello counts (and the expiry they
    # note) leave it out, so only its coming back can tell of its ttl
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    assert hello["counts"]["unread"] == 0
    got: list[dict] = []
    assert await server.service.wake_snoozed(time.time() + 2, 100) == 1
    (ev,) = await recv_events(ws, 1)
    assert ev["resurfaced"] is True and "expires_at" in ev["notification"]
    ran_out = await until_counts(ws, got, timeout=10)
    assert (ran_out["unread"], ran_out["unseen"]) == (0, 0)
    await ws.close()


@contextlib.asynccontextmanager
async def _same_store(kind: str, tmp_path):
    async with store_overrides(kind) as store:
        yield store


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_snooze_survives_a_restart(kind, tmp_path):
    async with _same_store(kind, tmp_path) as store:
        async with run_server(tmp_path, **store) as server:
            token = await server.token("alice")
            (nid,) = await publish(server, {"users": ["alice"]})
            await snooze(server, token, [nid], 2.5)
        async with run_server(tmp_path, **store) as server:
            token = await server.token("alice")
            assert (await page(server, token))["items"] == []
            ws = await ws_connect(server, token)
            await recv_events(ws, 1)
            (ev,) = await recv_events(ws, 1, timeout=15)
            assert ev["notification"]["id"] == nid and ev["resurfaced"] is True
            await ws.close()


async def test_two_nodes_bring_each_entry_back_once(tmp_path):
    async with two_nodes(tmp_path) as (a, b):
        token = await a.token("alice")
        ids = await publish(a, {"users": ["alice"]}, 10)
        ws = await ws_connect(b, token)
        await recv_events(ws, 1)
        await snooze(a, token, ids, 2)
        got: list[dict] = []
        while sum(e["type"] == "notification" for e in got) < 10:
            got += await recv_events(ws, 1, timeout=20)
        back = [e for e in got if e["type"] == "notification"]
        assert sorted(e["notification"]["id"] for e in back) == sorted(ids)
        assert [int(e["cursor"].split(":")[1]) for e in back] == list(range(11, 21))
        await ws.close()
        # a node's count follows its commit: the other node's device may have
        # replayed those entries from the store before that node resumed
        def woken() -> int:
            return a.service.scheduler.woken + b.service.scheduler.woken

        deadline = time.monotonic() + 10
        while woken() < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert woken() == 10


async def test_bad_snoozes_get_a_clear_4xx(each_store):
    server = each_store
    token = await server.token("alice")
    (nid,) = await publish(server, {"users": ["alice"]})
    (bobs,) = await publish(server, {"users": ["bob"]})
    cap = server.service.settings.limits.ids_max
    cases = [
        ({"ids": [nid], "until": at(-60)}, 422, "until"),
        ({"ids": [nid], "until": "2030-01-01T09:00:00"}, 422, "until"),  # no zone
        ({"ids": [nid], "until": "tomorrow"}, 422, "until"),
        ({"ids": [nid], "until": at(91 * 86400)}, 422, "until"),
        ({"ids": [nid], "until": "99999-01-01T00:00:00+00:00"}, 422, "until"),
        ({"ids": [nid] * (cap + 1), "until": at(60)}, 422, "ids"),
        ({"ids": [], "until": at(60)}, 422, "ids"),
        ({"ids": [nid]}, 422, None),
        ({"ids": "x", "until": at(60)}, 422, None),
        ({"ids": [nid], "until": at(60), "all": True}, 422, None),
    ]
    async with me(server, token) as http:
        for body, status, field in cases:
            r = await http.post(ME + "/snooze", json=body)
            assert r.status_code == status, (body, r.text)
            if field:
                assert r.json()["error"]["field"] == field, r.text
        r = await http.post(ME + "/snooze", content=b"{not json",
                            headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500
        r = await http.post(ME + "/unsnooze", json={"ids": [nid] * (cap + 1)})
        assert r.status_code == 422 and r.json()["error"]["field"] == "ids"
        # another user's id, and one that names nothing: nothing changes
        r = await http.post(ME + "/snooze", json={"ids": [bobs, "0" * 26], "until": at(60)})
        assert r.status_code == 200 and r.json()["changed"] == 0
    bob = await server.token("bob")
    assert [i["id"] for i in (await page(server, bob))["items"]] == [bobs]
    assert [i["id"] for i in (await page(server, token))["items"]] == [nid]


async def test_the_python_client_snoozes_and_unsnoozes(server):
    import asyncio

    from tidings.client.publisher import Client

    token = await server.token("alice")
    (nid,) = await publish(server, {"users": ["alice"]})
    c = Client(server.url, token=token)
    until = datetime.now(UTC) + timedelta(hours=1)
    out = await asyncio.to_thread(c.snooze, nid, until)
    assert out["changed"] == 1
    assert datetime.fromisoformat(out["until"]) == until.replace(microsecond=until.microsecond
                                                                 // 1000 * 1000)
    assert (await asyncio.to_thread(c.inbox, state="snoozed"))["items"][0]["id"] == nid
    assert (await asyncio.to_thread(c.unsnooze, [nid]))["changed"] == 1
    assert (await asyncio.to_thread(c.counts))["unread"] == 1
