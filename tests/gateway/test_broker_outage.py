"""A Redis outage under live streams: what the broker lost, the store brings.

The server runs on the shared test Redis with a prefix of its own.  The
outage is the broker's pub/sub connection killed with ``CLIENT KILL`` (the
shared Redis keeps running for everyone else).  To know for sure that
something was lost, the publishes made just before it are committed but
never announced -- exactly what a dropped broker message looks like to the
gateway.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.broker.conftest import delete_prefixed, unique_prefix
from tests.broker.test_redis import kill, reconnected
from tests.conftest import run_server
from tests.gateway.live import SSEReader, publish, recv_events, ws_connect
from tests.services import require_redis


async def test_streams_catch_up_from_the_store_after_a_broker_outage(tmp_path, monkeypatch):
    url, prefix = require_redis(), unique_prefix()
    client = aioredis.Redis.from_url(url)
    try:
        async with run_server(tmp_path, broker=f"{url}?prefix={prefix}") as server:
            service = server.service
            async with server.http() as http:
                r = await http.put("/v1/topics/news/subscribers/alice")
                assert r.status_code in (200, 201, 204), r.text
            ws = await ws_connect(server, await server.token("alice"))
            hello = (await recv_events(ws, 1))[0]
            async with SSEReader(server, await server.token("alice")) as sse:
                await sse.events(1)  # hello
                await publish(server, {"users": ["alice"]}, title="live")
                # the topic joined just before may send its counts up to here
                live = await _next_notification(ws)
                assert live["notification"]["title"] == "live"
                while (await sse.events(1))[0][1]["type"] != "notification":
                    pass

                with monkeypatch.context() as m:
                    m.setattr(service, "_announce", lambda *args, **kwargs: None)
                    await publish(server, {"users": ["alice"]}, title="lost personal")
                    await publish(server, {"all": True}, title="lost broadcast")
                event = reconnected(service.broker)
                await kill(client, service.broker, "sub")

                got = await recv_events(ws, 3)
                assert event.is_set()
                assert [(e["type"], e["notification"]["title"]) for e in got[:2]] == [
                    ("notification", "lost personal"), ("notification", "lost broadcast"),
                ]
                assert got[0]["cursor"] == f"{hello['epoch']}:2"
                # the fresh counts come last: a client adds each notification
                # that arrives to its badge, and then takes the server's numbers
                assert got[2] == {"type": "counts", "unread": 3, "unseen": 3,
                                  "at": {"seq": 2, "feed": 1, "rev": 1}}
                # SSE gets the same, each with its resume position as the event id
                sse_got = await sse.events(3)
                assert [e["type"] for _, e in sse_got] == ["notification", "notification",
                                                          "counts"]
                assert sse_got[1][0] is not None

                # and live delivery goes on through the new connection
                await publish(server, {"users": ["alice"]}, title="after")
                (after,) = await recv_events(ws, 1)
                assert (after["notification"]["title"], after["cursor"]) == (
                    "after", f"{hello['epoch']}:3")
            await ws.close()
    finally:
        await client.aclose()
        await delete_prefixed(url, prefix)


async def _next_notification(ws) -> dict:
    """The next notification on ``ws``, past any ``counts`` event before it."""
    while True:
        for event in await recv_events(ws, 1):
            if event["type"] == "notification":
                return event
            assert event["type"] == "counts", event
