"""A raw WebSocket stream detaches from its ASGI task once it has started:
no task per idle connection, client messages dropped, the end still noticed."""

from __future__ import annotations

import asyncio

from tests.gateway.live import publish, recv_events, ws_connect


async def _until(check, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_idle_streams_hold_no_asgi_task_and_still_work(server):
    tasks = server.uvicorn.server_state.tasks
    sockets = []
    for i in range(5):
        ws = await ws_connect(server, await server.token(f"idle{i}"))
        await recv_events(ws, 1)  # hello
        sockets.append(ws)
    assert await _until(lambda: len(tasks) == 0), tasks
    hub = server.service.hub
    assert hub.connections == 5

    # whatever a client sends now is dropped; the stream keeps delivering
    for _ in range(50):
        await sockets[0].send('{"type": "nonsense"}')
    await sockets[0].send(b"\x00binary")
    await publish(server, {"users": ["idle0"]}, title="still here")
    (event,) = await recv_events(sockets[0], 1)
    assert event["type"] == "notification" and event["notification"]["title"] == "still here"

    # a client that goes away is noticed without a task reading for it
    await sockets[1].close()
    sockets[2].transport.abort()
    assert await _until(lambda: hub.connections == 3)
    for ws in (sockets[0], sockets[3], sockets[4]):
        await ws.close()
    assert await _until(lambda: hub.connections == 0), [
        (k, [s.closed for s in v]) for k, v in hub.users.items()
    ]
