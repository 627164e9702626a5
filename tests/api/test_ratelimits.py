"""Rate limits through the API: per API key (429 + Retry-After), shared by
every node through the broker, and frequency caps per user and category.

The buckets refill at 0.01 tokens a second, so nothing refills during a test
and every outcome follows from counting requests, not from timing.
"""

from __future__ import annotations

import contextlib

import pytest

from tests.conftest import run_server

SLOW = 0.01  # tokens a second: one every 100 s


async def test_a_key_over_its_rate_gets_429_with_retry_after(tmp_path):
    async with run_server(tmp_path, key_rate=SLOW, key_burst=3) as server:
        async with server.http() as http:
            for _ in range(3):
                assert (await http.get("/v1/topics/t")).status_code == 200
            r = await http.post("/v1/notifications", json={"to": {"users": ["a"]}})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 100
        # The limit is per key: another key of the same app has its own bucket.
        other = await server.service.create_api_key(server.app, {"publish", "read"})
        async with server.http(other) as http:
            assert (await http.get("/v1/topics/t")).status_code == 200
        # Refused requests did nothing.
        async with server.http(other) as http:
            inbox = (await http.get("/v1/users/a/notifications")).json()["items"]
        assert inbox == []


async def test_a_batch_costs_one_token_per_notification(tmp_path):
    async with run_server(tmp_path, key_rate=SLOW, key_burst=5) as server:
        batch = {"notifications": [{"to": {"users": ["a"]}, "title": str(i)} for i in range(4)]}
        async with server.http() as http:
            assert (await http.post("/v1/notifications/batch", json=batch)).status_code == 202
            assert (await http.get("/v1/topics/t")).status_code == 200  # the fifth token
        async with run_server(tmp_path / "again", key_rate=SLOW, key_burst=5) as server:
            async with server.http() as http:
                assert (await http.get("/v1/topics/t")).status_code == 200
                assert (await http.get("/v1/topics/t")).status_code == 200
                r = await http.post("/v1/notifications/batch", json=batch)
                assert r.status_code == 429  # 2 + 4 > 5: nothing is published
                assert r.json()["error"]["code"] == "rate_limited"
                # The refused batch cost its first token only: two are left.
                inbox = await http.get("/v1/users/a/notifications")
                assert inbox.status_code == 200 and inbox.json()["items"] == []
                assert (await http.get("/v1/topics/t")).status_code == 200
                assert (await http.get("/v1/topics/t")).status_code == 429


async def test_key_rate_zero_turns_the_limit_off(tmp_path):
    async with run_server(tmp_path, key_rate=0, key_burst=1) as server:
        async with server.http() as http:
            for _ in range(10):
                assert (await http.get("/v1/topics/t")).status_code == 200


async def test_the_default_limit_is_generous(server):
    settings = server.service.settings
    assert (settings.key_rate, settings.key_burst) == (1000.0, 2000)
    async with server.http() as http:
        for _ in range(50):
            assert (await http.get("/v1/topics/t")).status_code == 200


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, **settings):
    """Two nodes over one PostgreSQL schema and one Redis prefix: a cluster."""
    from tests.broker.conftest import delete_prefixed, unique_prefix
    from tests.services import require_postgres, require_redis
    from tests.store.pg import fresh_schema

    pg, redis = require_postgres(), require_redis()
    prefix = unique_prefix()
    try:
        async with fresh_schema(pg) as schema:
            common = {"store": f"{pg}?search_path={schema['search_path']}",
                      "broker": f"{redis}?prefix={prefix}", **settings}
            async with run_server(tmp_path / "a", **common) as a:
                async with run_server(tmp_path / "b", **common) as b:
                    yield a, b
    finally:
        await delete_prefixed(redis, prefix)


@pytest.mark.timeout(60)
async def test_the_key_bucket_is_shared_by_two_nodes_on_redis(tmp_path):
    async with two_nodes(tmp_path, key_rate=SLOW, key_burst=4) as (a, b):
        async with a.http() as on_a, b.http(a.api_key) as on_b:
            for node in (on_a, on_b, on_a, on_b):
                assert (await node.get("/v1/topics/t")).status_code == 200
            # Four tokens taken on two nodes: the key is out on both.
            assert (await on_a.get("/v1/topics/t")).status_code == 429
            assert (await on_b.get("/v1/topics/t")).status_code == 429
        async with b.http() as b_key:  # b's own key is untouched
            assert (await b_key.get("/v1/topics/t")).status_code == 200


# -- frequency caps ---------------------------------------------------------------------


async def publish(http, **fields) -> dict:
    r = await http.post("/v1/notifications", json={"to": {"users": ["alice"]}, **fields})
    assert r.status_code == 202, r.text
    return r.json()


async def test_caps_drop_the_excess_or_aggregate_it_when_grouped(server):
    async with server.http() as http:
        r = await http.put("/v1/caps", json={"categories": {"social": {"per": 3600, "max": 2}}})
        assert r.status_code == 200
        assert (await http.get("/v1/caps")).json() == {
            "categories": {"social": {"per": 3600, "max": 2}}}
        ok = [await publish(http, category="social", title=str(i)) for i in range(2)]
        assert all("rate_limited" not in res and res["recipients"] == 1 for res in ok)

        over = await publish(http, category="social", title="third")
        assert (over["recipients"], over["rate_limited"], over["rate_limit"]) == (
            0, 1, "dropped")
        grouped = await publish(http, category="social", title="fourth", group_key="post:1")
        assert (grouped["recipients"], grouped["rate_limited"], grouped["rate_limit"]) == (
            1, 1, "aggregated")
        # Other categories and other users have their own buckets.
        assert "rate_limited" not in await publish(http, category="orders")
        both = await http.post("/v1/notifications", json={
            "to": {"users": ["alice", "bob"]}, "category": "social", "title": "fifth"})
        assert (both.json()["recipients"], both.json()["rate_limited"]) == (1, 1)
        titles = [i["notification"].get("title") for i in
                  (await http.get("/v1/users/alice/notifications")).json()["items"]]
        assert "third" not in titles and "fifth" not in titles
        bob = (await http.get("/v1/users/bob/notifications")).json()["items"]
        assert [i["notification"]["title"] for i in bob] == ["fifth"]


async def test_a_retried_publish_spends_no_cap_and_says_what_the_first_said(server):
    """A publisher's retry (the same Idempotency-Key) is answered duplicate;
    it must not take the recipient's cap tokens again, or the next real
    notification would be dropped for a notification the user got once."""
    async with server.http() as http:
        await http.put("/v1/caps", json={"categories": {"social": {"per": 3600, "max": 2}}})
        key = {"Idempotency-Key": "like-42"}
        body = {"to": {"users": ["alice"]}, "category": "social", "title": "liked"}
        first = (await http.post("/v1/notifications", json=body, headers=key)).json()
        for _ in range(3):  # a flaky network: the same publish three more times
            again = (await http.post("/v1/notifications", json=body, headers=key)).json()
            assert again == {**first, "status": "duplicate"}
        second = await publish(http, category="social", title="commented")
        assert "rate_limited" not in second and second["recipients"] == 1
        third = await publish(http, category="social", title="followed")
        assert third["rate_limited"] == 1  # the cap is 2: "liked" and "commented"
        titles = [i["notification"].get("title") for i in
                  (await http.get("/v1/users/alice/notifications")).json()["items"]]
        assert titles == ["commented", "liked"]


async def test_caps_apply_to_topics_fanned_out_on_write(server):
    async with server.http() as http:
        await http.post("/v1/topics/guild/subscribers", json={"users": ["alice", "bob"]})
        await http.put("/v1/caps", json={"categories": {"raid": {"per": 60, "max": 1}}})
        await http.post("/v1/notifications", json={"to": {"users": ["alice"]},
                                                   "category": "raid"})
        r = await http.post("/v1/notifications", json={"to": {"topic": "guild"},
                                                       "category": "raid", "title": "go"})
        res = r.json()
        assert (res["recipients"], res["rate_limited"], res["rate_limit"]) == (1, 1, "dropped")
        alice = (await http.get("/v1/users/alice/notifications")).json()["items"]
        assert "go" not in [i["notification"].get("title") for i in alice]


async def test_caps_are_per_app(server):
    _, other_key = await server.new_app()
    async with server.http() as http:
        await http.put("/v1/caps", json={"categories": {"social": {"per": 60, "max": 1}}})
    async with server.http(other_key) as http:
        assert (await http.get("/v1/caps")).json() == {}
        for _ in range(3):
            assert "rate_limited" not in await publish(http, category="social")
