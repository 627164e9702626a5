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


async def _idle_streams(server, prefix: str, n: int = 5) -> list:
    """``n`` WebSockets past their hello, with every handshake task done."""
    sockets = []
    for i in range(n):
        ws = await ws_connect(server, await server.token(f"{prefix}{i}"))
        await recv_events(ws, 1)  # hello
        sockets.append(ws)
    tasks = server.uvicorn.server_state.tasks
    assert await _until(lambda: len(tasks) == 0), tasks
    return sockets


async def test_an_upgraded_connection_leaves_nothing_for_the_collector(server):
    # What a WebSocket upgrade leaves in a reference cycle waits for a
    # collection, and a burst of reconnects makes those collections long:
    # the HTTP protocol object must go by reference counting alone.
    import gc

    from tidings.api.uvicorn_http import TidingsHttpProtocol

    def alive() -> int:
        return sum(isinstance(o, TidingsHttpProtocol) for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = alive()
        sockets = await _idle_streams(server, "acyclic")
        assert alive() <= before
    finally:
        gc.enable()
    for ws in sockets:
        await ws.close()


async def test_idle_streams_keep_nothing_of_the_handshake(server):
    # What an idle connection holds is what the design's memory target is
    # about (docs/design.md §5): neither the HTTP protocol object it was
    # upgraded from (its parser, headers and scope) nor the parsed handshake
    # request may outlive the handshake.
    import gc
    import inspect

    from websockets.http11 import Request
    from websockets.protocol import Protocol

    from tidings.api.uvicorn_http import TidingsHttpProtocol

    def alive(kind) -> int:
        gc.collect()
        return sum(isinstance(o, kind) for o in gc.get_objects())

    http_before = alive(TidingsHttpProtocol)
    sockets = await _idle_streams(server, "lean")
    assert alive(TidingsHttpProtocol) <= http_before
    # (the test's clients keep their own requests: only a parser may not)
    gc.collect()
    held = [r for r in gc.get_objects() if isinstance(r, Request)
            and any(inspect.isgenerator(x) or inspect.isframe(x) for x in gc.get_referrers(r))]
    assert held == []
    for proto in server.uvicorn.server_state.connections:
        conn = getattr(proto, "conn", None)
        if conn is not None:
            assert conn.parser.gi_code is Protocol.parse.__code__

    # and the swapped parser still reads frames: a close is answered
    await sockets[0].close()
    assert await _until(lambda: server.service.hub.connections == 4)
    for ws in sockets[1:]:
        await ws.close()
