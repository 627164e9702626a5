"""The dashboard's cluster view: two real nodes sharing a broker (Redis, and
PostgreSQL alone), a device and publishes on each; the serving node's
figures are the sums of both, its node view its own, and an app's admin sees
its app's only.  And the other nodes' figures as the Cluster keeps them."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from tests.conftest import two_nodes
from tests.gateway.live import publish, recv_events, ws_connect
from tidings.broker.base import STATS_CHANNEL, NodeStats
from tidings.core.stats import LATENCY_BUCKETS
from tidings.dashboard.cluster import COUNTERS, Cluster


async def _doc(server, key: str, what: str = "snapshot", view: str | None = None) -> dict:
    async with server.http(key) as http:
        r = await http.get(f"/dashboard/api/{what}", params={"view": view} if view else None)
    assert r.status_code == 200, r.text
    return r.json()


async def _until(server, key: str, ok, what: str = "snapshot", view: str | None = None,
                 timeout: float = 15.0) -> dict:
    """The first document for which ``ok(doc)`` holds (the other node's
    counters come every fifth second)."""
    async with asyncio.timeout(timeout):
        while True:
            doc = await _doc(server, key, what, view)
            if ok(doc):
                return doc
            await asyncio.sleep(0.2)


def _by_second(history: dict, column: str = "published") -> dict[int, float]:
    series = history["series"]
    return {int(t): v for t, v in zip(series["t"], series[column], strict=True)}


async def _histories(a, b, key: str) -> tuple[dict, dict, dict]:
    """a's cluster series of publishes per second and each node's own, once
    the cluster's covers every second in which either node published."""
    async with asyncio.timeout(15):
        while True:
            cluster = _by_second(await _doc(a, key, "history"))
            mine = _by_second(await _doc(a, key, "history", "node"))
            theirs = _by_second(await _doc(b, key, "history", "node"))
            busy = {s for s, v in mine.items() if v} | {s for s, v in theirs.items() if v}
            if busy and busy <= cluster.keys():
                return cluster, mine, theirs
            await asyncio.sleep(0.2)


def _sums(cluster: dict, mine: dict, theirs: dict) -> bool:
    return all(abs(v - mine[s] - theirs.get(s, 0)) < 0.011 for s, v in cluster.items())


@pytest.mark.parametrize("via", ["redis", "postgres"])
async def test_the_serving_node_sums_both_nodes(tmp_path, via):
    async with two_nodes(tmp_path, via=via, operator_app="testapp") as (a, b):
        other, other_key = await a.new_app("other")
        ann = await ws_connect(a, await a.token("ann"))  # a device on each node
        bob = await ws_connect(b, await b.token("bob"))
        await recv_events(ann, 1)
        await recv_events(bob, 1)
        await publish(a, {"users": ["ann"]}, 3)
        await publish(b, {"users": ["bob"]}, 2)
        await recv_events(ann, 3)
        await recv_events(bob, 2)
        async with b.http(other_key) as http:  # another app, on b only
            r = await http.post("/v1/notifications", json={"to": {"topic": "t1"}, "title": "x"})
            assert r.status_code == 202

        # the operator's view on a: both nodes, every app
        snap = await _until(a, a.api_key, lambda s: s["totals"]["published"] == 6)
        assert snap["view"] == "cluster" and snap["summed"] == 2
        assert snap["totals"]["delivered"] == 5
        assert snap["connections"] == {"total": 2, "ws": 2, "sse": 0}
        apps = {row["app"]: row for row in snap["apps"]}
        assert apps["testapp"]["connections"] == 2  # a device on each node
        cluster, mine, theirs = await _histories(a, b, a.api_key)
        assert _sums(cluster, mine, theirs) and sum(mine.values()) and sum(theirs.values())
        history = await _doc(a, a.api_key, "history")
        assert history["summed"] == 2 and max(history["series"]["connections"]) == 2
        assert any(p99 is not None for p99 in history["series"]["p99"])  # merged histograms

        # ...and a alone, with the switch
        mine = await _doc(a, a.api_key, view="node")
        assert mine["view"] == "node" and mine["summed"] == 1
        assert mine["totals"]["published"] == 3 and mine["totals"]["delivered"] == 3
        assert mine["connections"]["total"] == 1

        # another app's admin on a: its own app, summed over the nodes, and nothing else
        theirs = await _until(a, other_key, lambda s: s["totals"]["published"] == 1)
        assert theirs["scope"] == other and theirs["summed"] == 2
        assert theirs["totals"]["delivered"] == 0 and theirs["connections"]["total"] == 0
        assert [row["app"] for row in theirs["apps"]] == [other]
        cluster, mine, on_b = await _histories(a, b, other_key)
        assert _sums(cluster, mine, on_b) and sum(on_b.values()) and not sum(mine.values())
        their_history = await _doc(a, other_key, "history")
        text = json.dumps(theirs) + json.dumps(their_history)
        assert "testapp" not in text and "ann" not in text and "bob" not in text
        assert max(their_history["series"]["connections"]) == 0
        # ...with the nodes by labels, not names, the same whichever node answers
        seen_on_a = {row["self"]: row["node"] for row in theirs["nodes"]}
        seen_on_b = {row["self"]: row["node"] for row in (await _doc(b, other_key))["nodes"]}
        assert seen_on_a == {True: seen_on_b[False], False: seen_on_b[True]}
        assert theirs["node"] == seen_on_a[True] and not {"a", "b"} & {*seen_on_a.values()}
        await ann.close()
        await bob.close()


async def test_a_bad_view_is_a_clear_422(server):
    async with server.http() as http:
        for path in ("api/snapshot", "api/history", "events"):
            r = await http.get(f"/dashboard/{path}", params={"view": "everything"})
            assert r.status_code == 422
            assert r.json()["error"] == {"code": "invalid", "field": "view",
                                         "message": "view must be cluster or node"}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _stats(node: str, t: float, published: int, latency: list[int] | None = None,
           counters: dict | None = None) -> NodeStats:
    raw = msgspec.msgpack.encode(NodeStats(node, t, 1.0, {"app1": (published, 0, 0, 1, latency)},
                                           counters or {}))
    return msgspec.msgpack.decode(raw, type=NodeStats)  # as a networked broker hands it on


def test_a_silent_node_leaves_the_sums_after_the_heartbeat_expiry():
    clock = _Clock()
    cluster = Cluster(None, "a", expiry=15.0, history=300, monotonic=clock)
    cluster.on_message(STATS_CHANNEL, _stats("a", 1000.0, 9))  # its own: from its recorder
    assert cluster.remotes == {}
    counters = {"app1": tuple(range(len(COUNTERS)))}
    cluster.on_message(STATS_CHANNEL, _stats("b", 1000.0, 4, counters=counters))
    cluster.on_message(STATS_CHANNEL, _stats("b", 1001.0, 2))  # no counters: the last stay
    (remote,) = cluster.alive()
    assert [p.apps["app1"].published for p in remote.points] == [4, 2]
    assert remote.counters == counters
    clock.now += 15.0
    assert cluster.alive() == [remote]
    clock.now += 0.5
    assert cluster.alive() == []  # dead: out of every sum
    clock.now += 300.0
    cluster.on_message(STATS_CHANNEL, _stats("c", 1400.0, 1))
    assert set(cluster.remotes) == {"c"}  # b forgotten once older than the history


def test_latency_of_other_buckets_is_left_out():
    cluster = Cluster(None, "a", expiry=15.0)
    right = [0] * (len(LATENCY_BUCKETS) + 1)
    right[3] = 2
    cluster.on_message(STATS_CHANNEL, _stats("b", 1000.0, 1, latency=right))
    cluster.on_message(STATS_CHANNEL, _stats("b", 1001.0, 1, latency=[1, 2, 3]))
    assert [p.apps["app1"].latency for p in cluster.remotes["b"].points] == [right, None]
