"""Events held back while a stream starts or fills a gap: every kind of them.

``state``, ``counts``, ``updated`` and ``deleted`` wait with the live
notifications until the replay is done, so none reaches a device before
``hello`` or ahead of the replayed notification it is about.  Each test
pauses the stream's store read with a hook of its own (``Pause``) and makes
its change while the stream waits, then waits for the change to reach the
hub (``Arrivals``) before letting the stream go on: no sleeping.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

from tests.conftest import run_server
from tests.gateway.live import Pause, SSEReader, publish, recv_events, ws_connect
from tidings.broker.base import Frames
from tidings.config import Limits
from tidings.core.events import counts_frame
from tidings.gateway.stream import _release_order
from tidings.store.base import NewNotification


class Arrivals:
    """Counts the ``Frames`` messages (state, counts, updated, deleted) that
    reach the hub on users' channels, whatever the broker.  Set up before
    the stream connects: the hub subscribes its handler as the stream attaches."""

    def __init__(self, monkeypatch, hub):
        self.n = 0
        self._more = asyncio.Event()
        real = hub._on_user

        def on_user(channel, msg):
            real(channel, msg)
            if type(msg) is Frames:
                self.n += 1
                self._more.set()

        monkeypatch.setattr(hub, "_on_user", on_user)

    async def wait(self, n: int) -> None:
        while self.n < n:
            self._more.clear()
            await asyncio.wait_for(self._more.wait(), 5)


async def _cursor(server, token: str) -> str:
    ws = await ws_connect(server, token)
    (hello,) = await recv_events(ws, 1)
    await ws.close()
    return hello["cursor"]


async def test_a_deletion_during_a_replay_follows_the_replayed_copy(any_ws_server, monkeypatch):
    server = any_ws_server
    token = await server.token("ann")
    cursor = await _cursor(server, token)
    ids = await publish(server, {"users": ["ann"]}, 3)
    replay = Pause(monkeypatch, server.service.store, "replay", "ann")
    arrivals = Arrivals(monkeypatch, server.service.hub)
    ws = await ws_connect(server, token, cursor=cursor)
    try:
        await replay.reached()  # the replay has read all three, and sent none
        async with server.http() as http:
            r = await http.delete(f"/v1/notifications/{ids[0]}")
            assert r.status_code == 200, r.text
        await arrivals.wait(1)
    finally:
        replay.release()
    got = await recv_events(ws, 7)
    assert [e["type"] for e in got] == ["hello", "notification", "notification",
                                        "notification", "recovered", "deleted", "counts"]
    assert [e["notification"]["id"] for e in got[1:4]] == ids
    assert got[5] == {"type": "deleted", "id": ids[0]}
    assert got[6] == {"type": "counts", "unread": 2, "unseen": 2,  # it was unread
                      "at": {"seq": 3, "feed": 0, "rev": 1}}
    await ws.close()


async def test_state_and_counts_on_a_first_connection_wait_for_hello(server, monkeypatch):
    # a user who has never had a stream (nor a personal notification): the
    # stream's row is created as it starts, and a broadcast gives them
    # something to mark read meanwhile
    (bid,) = await publish(server, {"all": True}, 1)
    token = await server.token("newcomer")
    head = Pause(monkeypatch, server.service.store, "stream_head", "newcomer", before=True)
    arrivals = Arrivals(monkeypatch, server.service.hub)
    ws = await ws_connect(server, token)
    try:
        await head.reached()
        async with server.http(key=token) as http:
            r = await http.post("/v1/me/notifications/read", json={"ids": [bid]})
            assert r.json() == {"changed": 1, "counts": {
                "unread": 0, "unseen": 0, "at": {"seq": 0, "feed": 1, "rev": 1}}}, r.text
        await arrivals.wait(1)  # the state and counts events are at the stream
    finally:
        head.release()
    got = await recv_events(ws, 2)
    await publish(server, {"users": ["newcomer"]}, 1, title="after")
    got += await recv_events(ws, 1)
    assert got[0]["type"] == "hello"
    # hello's counts were read after the change: the held counts event,
    # older than them, is not sent (the next event is the notification)
    assert got[0]["counts"] == {"unread": 0, "unseen": 0, "at": {"seq": 0, "feed": 1, "rev": 1}}
    assert got[1] == {"type": "state", "ids": [bid], "all": False, "state": "read"}
    assert got[2]["notification"]["title"] == "after"
    await ws.close()


async def test_a_gap_fill_holds_state_and_deletions_until_it_is_done(server, monkeypatch):
    token = await server.token("gap")
    fill = Pause(monkeypatch, server.service.store, "replay", "gap")
    arrivals = Arrivals(monkeypatch, server.service.hub)
    async with SSEReader(server, token) as sse:
        ((_, hello),) = await sse.events(1)  # no cursor: no replay, live at once
        # one entry committed without a broker message (as if the broker lost it)
        lost = "01" + "0" * 23 + "1"
        await server.service.store.publish(server.app, NewNotification(
            id=lost, category="default", body=b'{"id":"%s","title":"lost"}' % lost.encode(),
            created_at=time.time(), expires_at=None, users=["gap"]),
            fanout_threshold=10_000, window=86400)
        try:
            (second,) = await publish(server, {"users": ["gap"]}, 1)  # seq 2: a jump
            await fill.reached()  # the gap fill has read seq 1 and 2, and sent neither
            async with server.http() as http:
                r = await http.delete(f"/v1/notifications/{lost}")
                assert r.status_code == 200, r.text
            async with server.http(key=token) as http:
                r = await http.post("/v1/me/notifications/read", json={"ids": [second]})
                assert r.json()["counts"] == {
                    "unread": 0, "unseen": 0, "at": {"seq": 2, "feed": 0, "rev": 2}}, r.text
            await arrivals.wait(2)
        finally:
            fill.release()
        got = await sse.events(5)
    assert [(i is not None, e["type"]) for i, e in got] == [
        (True, "notification"), (True, "notification"), (False, "deleted"),
        (False, "state"), (False, "counts")]
    assert [e["notification"]["id"] for _, e in got[:2]] == [lost, second]
    assert got[1][0] == f"{hello['epoch']}:2:0"
    assert got[2][1] == {"type": "deleted", "id": lost}
    assert got[3][1]["ids"] == [second]
    assert got[4][1] == {"type": "counts", "unread": 0, "unseen": 0,
                         "at": {"seq": 2, "feed": 0, "rev": 2}}


@pytest.mark.parametrize("limits, body", [
    (Limits(queue_max_events=8), "short"),  # by count
    (Limits(queue_max_bytes=16 * 1024), "x" * 3000),  # by bytes: six of 3 KB
])
async def test_a_stream_flooded_while_it_replays_is_cut_with_4000(tmp_path, monkeypatch,
                                                                  limits, body):
    async with run_server(tmp_path, limits=limits) as server:
        token = await server.token("flood")
        cursor = await _cursor(server, token)
        (nid,) = await publish(server, {"users": ["flood"]}, 1)
        replay = Pause(monkeypatch, server.service.store, "replay", "flood")
        arrivals = Arrivals(monkeypatch, server.service.hub)
        ws = await ws_connect(server, token, cursor=cursor)
        try:
            await replay.reached()
            hub = server.service.hub
            async with server.http() as http:
                for i in range(9):  # nine edits, while the stream is there to get them
                    if not hub.users.get((server.app, "flood")):
                        break
                    r = await http.patch(f"/v1/notifications/{nid}",
                                         json={"title": f"edit {i}", "body": body})
                    assert r.status_code == 200, r.text
                    await arrivals.wait(i + 1)
            assert hub.metrics.slow_consumers == 1
            assert not hub.users.get((server.app, "flood"))
        finally:
            replay.release()
        got = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                got.extend(await recv_events(ws, 1))
        assert closed.value.rcvd.code == 4000
        assert [e["type"] for e in got] == ["hello"]  # nothing held was sent


def test_held_events_go_out_in_arrival_order_with_notifications_sorted_between_others():
    def p(seq):
        return ("p", seq, b"")

    def f(offset):
        return ("f", offset, b"")

    def c(n, seq=0, rev=0):
        return ("c", 0, counts_frame(n, n, seq, 0, None, rev))

    x = ("x", 0, b"deleted")
    # notifications alone: feed items by offset, then personal entries by seq
    assert _release_order([p(3), p(2), f(5), p(4), f(1)]) == [f(1), f(5), p(2), p(3), p(4)]
    # another event keeps its place: what arrived after it stays after it
    assert _release_order([p(11), x, p(10)]) == [p(11), x, p(10)]
    # of several counts, the last one goes out, where it arrived
    assert _release_order([c(1), p(5), c(1), x, c(1), p(6)]) == [p(5), x, c(1), p(6)]
    # ... unless an older one (read before the others) arrived last: the newest goes
    assert _release_order([c(1, 7), p(8), c(2, 8), x, c(3, 6)]) == [p(8), c(2, 8), x]
    # ... read at the same position after another change (a higher revision)
    assert _release_order([c(1, 5, 2), x, c(2, 5, 1)]) == [c(1, 5, 2), x]
    # ... or after an expiry, which writes nothing: the lower counts
    assert _release_order([c(1, 5, 2), x, c(2, 5, 2)]) == [c(1, 5, 2), x]
    assert _release_order([]) == []
