"""Batches and Idempotency-Key, on both stores (docs/security.md#idempotency-keys).

A batch answers one result per item, always: a store failure inside it fails
the items it touched, never the request with a 500 after part of it was
kept.  Keys of batch items and of single publishes live apart, and a key
reused with a different notification is refused rather than answered as the
other's duplicate.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime

import asyncpg

from tests.api.test_hostile import assert_error

PUBLISH = "/v1/notifications"
BATCH = "/v1/notifications/batch"


def _in(seconds: float) -> str:
    return datetime.fromtimestamp(time.time() + seconds, UTC).isoformat()


async def _inbox(server, user="u1") -> list[str]:
    async with server.http() as http:
        r = await http.get(f"/v1/users/{user}/notifications", params={"state": "all"})
        return [i["notification"]["title"] for i in r.json()["items"]]


async def _fail_category(server, category: str) -> None:
    """Make the store itself refuse notifications of ``category``: a trigger
    in the real database, so the failure happens inside the statement."""
    store = server.service.store
    if hasattr(store, "path"):
        conn = sqlite3.connect(store.path)
        conn.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON notifications WHEN NEW.category = "
            f"'{category}' BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
        conn.close()
        return
    conn = await asyncpg.connect(store.url, server_settings=store._server_settings)
    try:
        await conn.execute(f"""
            CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused by a test trigger'; END $$;
            CREATE TRIGGER boom BEFORE INSERT ON notifications FOR EACH ROW
            WHEN (NEW.category = '{category}') EXECUTE FUNCTION boom();""")
    finally:
        await conn.close()


async def test_a_store_failure_in_a_batch_fails_only_its_item(each_store):
    server = each_store
    await _fail_category(server, "boom")
    items = [{"to": {"users": ["u1"]}, "title": "one"},
             {"to": {"users": ["u1"]}, "title": "bad", "category": "boom"},
             {"to": {"users": ["u1"]}, "title": "two"}]
    async with server.http() as http:
        for attempt in range(2):  # the client's retry with the same key
            r = await http.post(BATCH, json={"notifications": items},
                                headers={"Idempotency-Key": "b1"})
            assert r.status_code == 202, r.text
            results = r.json()["results"]
            assert len(results) == 3
            assert [x["status"] for x in results] == (
                ["accepted", "error", "accepted"] if attempt == 0
                else ["duplicate", "error", "duplicate"]), results
            assert results[1]["error"]["code"] in ("internal", "unavailable"), results
            assert "trigger" not in json.dumps(results[1])  # no internals
        # a single publish of that category is a clean 5xx JSON error too
        r = await http.post(PUBLISH, json=items[1])
        assert r.status_code in (500, 503), r.text
        assert_error(r, r.status_code)
    assert sorted(await _inbox(server)) == ["one", "two"]


async def test_batch_item_keys_and_single_keys_never_collide(each_store):
    server = each_store
    async with server.http() as http:
        single = await http.post(PUBLISH, json={"to": {"users": ["u1"]}, "title": "single"},
                                 headers={"Idempotency-Key": "K#0"})
        assert single.json()["status"] == "accepted"
        r = await http.post(BATCH, json={"notifications": [
            {"to": {"users": ["u1"]}, "title": "batch"}]}, headers={"Idempotency-Key": "K"})
        (item,) = r.json()["results"]
        assert item["status"] == "accepted" and item["id"] != single.json()["id"], item
        # and the other way round: a batch first, then a single publish
        r = await http.post(BATCH, json={"notifications": [
            {"to": {"users": ["u1"]}, "title": "batch2"}]}, headers={"Idempotency-Key": "L"})
        assert r.json()["results"][0]["status"] == "accepted"
        r = await http.post(PUBLISH, json={"to": {"users": ["u1"]}, "title": "single2"},
                            headers={"Idempotency-Key": "L#0"})
        assert r.json()["status"] == "accepted", r.text
    assert sorted(await _inbox(server)) == ["batch", "batch2", "single", "single2"]


async def test_a_key_reused_with_another_notification_is_422(each_store):
    server = each_store
    first = {"to": {"users": ["u1"]}, "title": "first", "data": {"a": 1, "b": 2}}
    async with server.http() as http:
        r = await http.post(PUBLISH, json=first, headers={"Idempotency-Key": "k1"})
        nid = r.json()["id"]
        # the same notification written differently is the same request
        same = b'{"data": {"b": 2, "a": 1},  "title": "first", "to": {"users": ["u1"]}}'
        r = await http.post(PUBLISH, content=same, headers={"Idempotency-Key": "k1"})
        assert (r.status_code, r.json()["status"], r.json()["id"]) == (202, "duplicate", nid)
        r = await http.post(PUBLISH, json={**first, "title": "second"},
                            headers={"Idempotency-Key": "k1"})
        assert_error(r, 422, "idempotency_key_reused", "Idempotency-Key")
        # in a batch: item by item
        r = await http.post(BATCH, json={"notifications": [first, first]},
                            headers={"Idempotency-Key": "k2"})
        assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]
        r = await http.post(BATCH, json={"notifications": [first, {**first, "title": "x"}]},
                            headers={"Idempotency-Key": "k2"})
        one, two = r.json()["results"]
        assert one["status"] == "duplicate", one
        assert two["status"] == "error", two
        assert two["error"]["code"] == "idempotency_key_reused", two
        # scheduled ones too
        later = {**first, "deliver_at": _in(3600)}
        r = await http.post(PUBLISH, json=later, headers={"Idempotency-Key": "k3"})
        assert r.json()["status"] == "scheduled", r.text
        r = await http.post(PUBLISH, json={**later, "deliver_at": _in(7200)},
                            headers={"Idempotency-Key": "k3"})
        assert_error(r, 422, "idempotency_key_reused", "Idempotency-Key")
    assert sorted(await _inbox(server)) == ["first", "first", "first"]


async def test_a_batch_of_valid_items_is_decoded_in_one_pass(each_store, monkeypatch):
    """Every item valid: the body is decoded once, items and all (no second
    parse and no Python call per item); the metrics count each item, those
    to a topic by their topic too.  One invalid item: item by item, as
    before, each answered on its own."""
    from tidings.api import server as server_api

    def one_by_one(raw):
        raise AssertionError("decoded item by item")

    monkeypatch.setattr(server_api, "_decode_publish", one_by_one)
    items = [{"to": {"users": [f"u{i}"]}, "title": f"n{i}"} for i in range(3)]
    items.append({"to": {"topic": "news"}, "title": "t"})
    async with each_store.http() as http:
        r = await http.post(BATCH, json={"notifications": items})
    assert r.status_code == 202, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 4
    assert await _inbox(each_store, "u1") == ["n1"]
    stats = each_store.service.hub.metrics.app(each_store.app)
    assert (stats.published, stats.recipients, stats.topics) == (4, 3, {"news": 1})

    monkeypatch.undo()
    async with each_store.http() as http:
        r = await http.post(BATCH, json={"notifications": [
            items[0], {"to": {"users": ["u1"]}, "priority": "extreme"}]})
    assert r.status_code == 202, r.text
    first, bad = r.json()["results"]
    assert first["status"] == "accepted"
    assert bad["status"] == "error" and bad["error"]["field"] == "priority"
