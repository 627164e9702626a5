"""The Subscriber against a real, scripted WebSocket server on 127.0.0.1.

Each test starts a tiny ``websockets`` server whose handler plays one script
per connection (hello, notifications, a close code...) and records the
request the SDK made, so the SDK's cursor tracking, deduplication, array
frames and reconnect-vs-fatal decisions are checked over a real socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from tidings.client import StreamClosed, Subscriber, TidingsAPIError
from tidings.core.backoff import Backoff

Script = Callable[[ServerConnection], Awaitable[None]]


class ScriptedServer:
    """Connection ``i`` runs ``scripts[i]`` (the last one repeats)."""

    def __init__(self, *scripts: Script, process_request=None):
        self.scripts = list(scripts)
        self.requests: list = []
        self.process_request = process_request

    async def _handler(self, ws: ServerConnection) -> None:
        i = len(self.requests)
        self.requests.append(ws.request)
        await self.scripts[min(i, len(self.scripts) - 1)](ws)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def __aenter__(self) -> ScriptedServer:
        self.server = await serve(self._handler, "127.0.0.1", 0,
                                  process_request=self.process_request)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def fast_backoff() -> Backoff:
    return Backoff(base=0.01, cap=0.05)


def hello(cursor: str, unread: int = 0, unseen: int = 0) -> str:
    epoch = cursor.split(":")[0]
    return json.dumps({"type": "hello", "epoch": epoch, "cursor": cursor,
                       "counts": {"unread": unread, "unseen": unseen}})


def note(nid: str, cursor: str | None = None, feed: int | None = None) -> dict:
    event: dict = {"type": "notification", "notification": {"id": nid, "title": nid}}
    if cursor is not None:
        event["cursor"] = cursor
    if feed is not None:
        event["feed"] = feed
    return event


async def collect(sub: Subscriber) -> tuple[list[dict], BaseException | None]:
    """Drain ``sub``; a hang fails the test after 5 s instead of stalling the suite."""
    events: list[dict] = []
    try:
        async with asyncio.timeout(5):
            async for event in sub:
                events.append(event)
    except TimeoutError:
        raise
    except Exception as e:  # the fatal close the test expects
        return events, e
    return events, None


def ids(events: list[dict]) -> list[str]:
    return [e["notification"]["id"] for e in events if e["type"] == "notification"]


async def test_resume_cursor_dedup_array_frames_and_fatal_close():
    async def first(ws):
        await ws.send(hello("a1:0", unread=2, unseen=2))
        # A burst: one JSON array frame with two personal notifications.
        await ws.send(json.dumps([note("n1", "a1:1"), note("n2", "a1:2")]))
        await ws.send(json.dumps(note("f1", feed=7)))  # broadcast feed item
        await ws.close(4000, "slow consumer")

    async def second(ws):
        await ws.send(hello("a1:3", unread=3, unseen=1))
        await ws.send(json.dumps({"type": "recovered", "ok": True, "missed": 1}))
        # Replay overlaps what was delivered before the drop: n2 and f1 again.
        await ws.send(json.dumps([note("n2", "a1:2"), note("f1", feed=7), note("n3", "a1:3")]))
        await ws.send(json.dumps({"type": "counts", "unread": 4, "unseen": 0}))
        await ws.close(4401, "token expired")

    async with ScriptedServer(first, second) as srv:
        sub = Subscriber(srv.url, token="tok-alice", backoff=fast_backoff())
        events, err = await collect(sub)

    assert isinstance(err, StreamClosed)
    assert err.close_code == 4401 and err.status == 401 and err.code == "unauthorized"
    assert err.reason == "token expired"
    assert ids(events) == ["n1", "n2", "f1", "n3"]  # duplicates dropped
    assert [e["type"] for e in events].count("hello") == 2
    assert srv.paths == ["/v1/me/stream", "/v1/me/stream?cursor=a1:2:7"]
    assert srv.requests[0].headers["Authorization"] == "Bearer tok-alice"
    assert sub.cursor == "a1:3:7"
    assert sub.counts == {"unread": 4, "unseen": 0}
    assert sub.reconnects == 1
    assert sub.last_close_code == 4401


@pytest.mark.parametrize("drop", [1000, 1001, 4000, 4001, 4002, 4099, None])
async def test_reconnectable_drops_resume(drop):
    async def first(ws):
        await ws.send(hello("e:10"))
        await ws.send(json.dumps(note("n11", "e:11")))
        if drop is None:  # no close frame at all (1006 on the client side)
            ws.transport.abort()
        else:
            await ws.close(drop)

    async def second(ws):
        await ws.send(hello("e:11"))
        await ws.send(json.dumps(note("n12", "e:12")))
        await ws.close(4403, "forbidden")

    async with ScriptedServer(first, second) as srv:
        sub = Subscriber(srv.url, token="t", backoff=fast_backoff())
        events, err = await collect(sub)

    assert isinstance(err, StreamClosed) and err.close_code == 4403
    assert ids(events) == ["n11", "n12"]
    assert srv.paths[1] == "/v1/me/stream?cursor=e:11"
    assert sub.cursor == "e:12"


@pytest.mark.parametrize("code", [4400, 4401, 4403, 4429, 4499])
async def test_fatal_close_codes_stop_without_reconnecting(code):
    async def script(ws):
        await ws.send(hello("e:0"))
        await ws.close(code, "nope")

    async with ScriptedServer(script) as srv:
        sub = Subscriber(srv.url, token="t", backoff=fast_backoff())
        events, err = await collect(sub)
        await asyncio.sleep(0.1)  # a wrong reconnect would show up here
        assert len(srv.requests) == 1

    assert isinstance(err, StreamClosed) and isinstance(err, TidingsAPIError)
    assert err.close_code == code and err.status == code - 4000
    assert [e["type"] for e in events] == ["hello"]


async def test_resume_from_given_cursor_and_recovery_failure_is_surfaced():
    resyncs: list[dict] = []

    async def first(ws):
        # Same epoch, but the server cannot replay: the app must reload.
        await ws.send(json.dumps([json.loads(hello("ab:90")),
                                  {"type": "recovered", "ok": False, "missed": 0}]))
        await ws.send(json.dumps(note("n91", "ab:91")))
        await ws.close(1001)

    async def second(ws):
        await ws.send(hello("ab:91"))
        await ws.close(4401)

    async with ScriptedServer(first, second) as srv:
        sub = Subscriber(srv.url, token="t", cursor="ab:5:3", on_resync=resyncs.append,
                         backoff=fast_backoff())
        assert sub.cursor == "ab:5:3"
        events, err = await collect(sub)

    assert isinstance(err, StreamClosed)
    assert srv.paths == ["/v1/me/stream?cursor=ab:5:3", "/v1/me/stream?cursor=ab:91"]
    assert resyncs == [{"type": "recovered", "ok": False, "missed": 0}]
    assert {"type": "recovered", "ok": False, "missed": 0} in events


async def test_two_part_cursor_takes_the_feed_position_from_hello():
    async def first(ws):
        await ws.send(hello("c3:7:40"))  # the server filled in the feed head
        await ws.send(json.dumps(note("n8", "c3:8")))
        await ws.send(json.dumps({"type": "recovered", "ok": True, "missed": 1}))
        await ws.close(4000)

    async def second(ws):
        await ws.close(4401)

    async with ScriptedServer(first, second) as srv:
        sub = Subscriber(srv.url, token="t", cursor="c3:7", backoff=fast_backoff())
        _, err = await collect(sub)
    assert isinstance(err, StreamClosed)
    assert srv.paths == ["/v1/me/stream?cursor=c3:7", "/v1/me/stream?cursor=c3:8:40"]


async def test_new_epoch_replaces_cursor_and_feed_only_advances():
    async def first(ws):
        await ws.send(hello("b2:4:100"))  # the user's history was reset
        await ws.send(json.dumps([note("x", feed=101), note("y", feed=99), note("z", "b2:5")]))
        await ws.close(4001)

    async def second(ws):
        await ws.close(4400)

    async with ScriptedServer(first, second) as srv:
        sub = Subscriber(srv.url, token="t", cursor="a1:77:50", backoff=fast_backoff())
        events, err = await collect(sub)

    assert isinstance(err, StreamClosed) and err.close_code == 4400
    assert srv.paths[1] == "/v1/me/stream?cursor=b2:5:101"
    assert ids(events) == ["x", "y", "z"]


async def test_dedup_is_a_bounded_lru():
    async def script(ws):
        await ws.send(hello("e:0"))
        frames = [note("a", "e:1"), note("b", "e:2"), note("a", "e:1"),  # a is recent: dropped
                  note("c", "e:3"),  # evicts b (a was refreshed)
                  note("b", "e:2"), note("a", "e:1")]
        await ws.send(json.dumps(frames))
        await ws.close(4401)

    async with ScriptedServer(script) as srv:
        sub = Subscriber(srv.url, token="t", dedup_size=2, backoff=fast_backoff())
        events, _ = await collect(sub)
    assert ids(events) == ["a", "b", "c", "b", "a"]
    assert sub.cursor == "e:3"  # replayed older positions never move it back


async def test_auth_message_and_bad_frames_are_skipped():
    got: list = []

    async def script(ws):
        got.append(json.loads(await ws.recv()))
        await ws.send("not json")
        await ws.send(json.dumps([1, "x", note("n1", "e:1")]))
        await ws.close(4401)

    async with ScriptedServer(script) as srv:
        sub = Subscriber(srv.url, token="secret", auth="message", backoff=fast_backoff())
        events, err = await collect(sub)

    assert got == [{"type": "auth", "token": "secret"}]
    assert "Authorization" not in srv.requests[0].headers
    assert ids(events) == ["n1"] and isinstance(err, StreamClosed)


async def test_token_provider_gets_one_fresh_retry_after_4401():
    tokens = iter(["t1", "t2", "t3"])

    async def provider() -> str:
        return next(tokens)

    async def accepted_then_expired(ws):
        await ws.send(hello("e:0"))
        await ws.close(4401, "expired")

    async def rejected(ws):
        await ws.close(4401, "still bad")

    async with ScriptedServer(accepted_then_expired, rejected) as srv:
        sub = Subscriber(srv.url, token=provider, backoff=fast_backoff())
        _, err = await collect(sub)

    assert [r.headers["Authorization"] for r in srv.requests] == ["Bearer t1", "Bearer t2"]
    assert isinstance(err, StreamClosed) and err.reason == "still bad"


async def test_close_ends_iteration_and_backoff_resets_after_hello():
    async def script(ws):
        await ws.send(hello("e:0"))
        await ws.wait_closed()  # until the client closes

    async with ScriptedServer(script) as srv:
        backoff = fast_backoff()
        backoff.attempt = 5
        sub = Subscriber(srv.url, token="t", backoff=backoff)
        async with sub:
            async for event in sub:
                assert event["type"] == "hello"
                assert sub.connected and backoff.attempt == 0
                await sub.close()
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()
    assert not sub.connected


async def test_close_interrupts_reconnect_wait():
    async def script(ws):
        await ws.send(hello("e:0"))
        await ws.close(4000)

    async with ScriptedServer(script) as srv:
        sub = Subscriber(srv.url, token="t", backoff=Backoff(base=60, cap=60, rand=lambda: 1.0))
        task = asyncio.create_task(collect(sub))
        while sub.last_close_code != 4000:
            await asyncio.sleep(0.01)
        await sub.close()
        events, err = await asyncio.wait_for(task, 2)
    assert err is None and [e["type"] for e in events] == ["hello"]


def _refuse(status: int, body: dict, retry_after: str | None = None):
    def process_request(connection, request):
        headers = Headers([("Content-Type", "application/json")])
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return Response(status, "refused", headers, json.dumps(body).encode())
    return process_request


async def test_handshake_refused_with_4xx_raises_api_error():
    body = {"error": {"code": "unauthorized", "message": "bad token"}}
    async with ScriptedServer(hello, process_request=_refuse(401, body)) as srv:
        sub = Subscriber(srv.url, token="t", backoff=fast_backoff())
        _, err = await collect(sub)
    assert isinstance(err, TidingsAPIError) and not isinstance(err, StreamClosed)
    assert (err.status, err.code, err.message) == (401, "unauthorized", "bad token")


async def test_handshake_503_is_retried():
    calls = []
    refuse = _refuse(503, {"error": {"code": "unavailable", "message": "busy"}}, "0")

    def process_request(connection, request):
        calls.append(request.path)
        return refuse(connection, request) if len(calls) == 1 else None

    async def script(ws):
        await ws.send(hello("e:0"))
        await ws.close(4401)

    async with ScriptedServer(script, process_request=process_request) as srv:
        sub = Subscriber(srv.url + "/", token="t", backoff=fast_backoff())
        events, err = await collect(sub)
    assert len(calls) == 2 and isinstance(err, StreamClosed)
    assert [e["type"] for e in events] == ["hello"]


def test_stream_url_and_bad_arguments():
    sub = Subscriber("https://example.com/base/?x=1", token="t", cursor="ff:1")
    assert sub._stream_url() == "wss://example.com/base/v1/me/stream?x=1&cursor=ff:1"
    sub = Subscriber("ws://h:1/v1/me/stream", token="t")
    assert sub._stream_url() == "ws://h:1/v1/me/stream"
    with pytest.raises(ValueError):
        Subscriber("http://h", token="")
    with pytest.raises(ValueError):
        Subscriber("http://h", token="t", auth="cookie")
    with pytest.raises(Exception):  # noqa: B017 - tidings BadRequest for a bad cursor
        Subscriber("http://h", token="t", cursor="nonsense")
    for device in ("", "x" * 65, "a\nb", "~mine", 5):
        with pytest.raises(ValueError, match="device must be"):
            Subscriber("http://h", token="t", device=device)
    with pytest.raises(ValueError, match="device_label must be"):
        Subscriber("http://h", token="t", device_label="tab\t")
    a, b = Subscriber("http://h", token="t"), Subscriber("http://h", token="t")
    assert a.device != b.device and a.device.startswith("py-")  # one each, by default
    assert a.device_label.startswith("Python on ")


async def test_yielded_notifications_are_acknowledged_once_a_second_in_one_message():
    got: list[dict] = []

    async def script(ws):
        await ws.send(hello("a1:0"))
        await ws.send(json.dumps([note(f"n{i}", f"a1:{i + 1}") for i in range(3)]))
        await ws.send(json.dumps(note("n1", "a1:2")))      # a duplicate: not yielded again
        async with asyncio.timeout(5):
            got.append(json.loads(await ws.recv()))
        await ws.close(4401, "done")

    async with ScriptedServer(script) as srv:
        events, err = await collect(Subscriber(srv.url, token="t", backoff=fast_backoff(),
                                               device="worker-7", device_label="billing job"))
    assert isinstance(err, StreamClosed)
    assert ids(events) == ["n0", "n1", "n2"]
    assert got == [{"type": "receipts", "device": "worker-7", "label": "billing job",
                    "delivered": ["n0", "n1", "n2"]}]



async def test_leaving_the_loop_early_then_closing_leaves_nothing_running():
    """``break`` out of the loop, then close (``async with`` does): the
    connection, its receipts task and the iterator finish at once, not when
    the collector finds them."""
    async def script(ws):
        await ws.send(hello("a1:0"))
        await ws.send(json.dumps(note("n0", "a1:1")))
        await ws.wait_closed()

    def receipts_tasks() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__name__", "") == "_acknowledge"]

    async with ScriptedServer(script) as srv:
        async with Subscriber(srv.url, token="t", backoff=fast_backoff()) as sub:
            async for event in sub:
                if event["type"] == "notification":
                    assert receipts_tasks()
                    break
        assert sub._gen is not None and sub._gen.ag_frame is None  # finished
        assert receipts_tasks() == [] and not sub.connected
        with pytest.raises(StopAsyncIteration):
            await sub.__anext__()
