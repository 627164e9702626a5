"""A real HTTP CONNECT proxy on loopback, for the egress proxy tests.

It records every CONNECT line's target and ``Proxy-Authorization`` header,
answers ``407`` when it requires credentials and they are not the right ones,
``502`` when it cannot reach the target, and otherwise pipes bytes both ways,
as an egress proxy (Squid, tinyproxy) does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.cluster.tcpproxy import pipe


@dataclass
class ConnectProxy:
    credentials: str | None = None  # "user:password" it requires, if any
    hold: asyncio.Event | None = None  # when given: wait for it before answering
    port: int = 0
    connections: int = 0  # TCP connections accepted
    targets: list[str] = field(default_factory=list)  # each CONNECT line's target
    authorizations: list[str | None] = field(default_factory=list)
    handlers: set[asyncio.Task] = field(default_factory=set)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ")
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if line)
            authorization = {k.lower(): v for k, v in headers.items()}.get("proxy-authorization")
            self.targets.append(target)
            self.authorizations.append(authorization)
            if self.hold is not None:
                await self.hold.wait()
            expected = self.credentials and "Basic " + base64.b64encode(
                self.credentials.encode()).decode()
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            elif expected and authorization != expected:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b'Proxy-Authenticate: Basic realm="egress"\r\n'
                             b"Content-Length: 0\r\n\r\n")
            else:
                host, port = target.rsplit(":", 1)
                try:
                    upstream = await asyncio.open_connection(host.strip("[]"), int(port))
                except OSError:
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))
                    return
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def connect_proxy(credentials: str | None = None,
                        hold: asyncio.Event | None = None) -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy(credentials, hold)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()
        for task in proxy.handlers:
            task.cancel()
        if proxy.handlers:
            await asyncio.wait(proxy.handlers)
