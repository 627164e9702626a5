"""A minimal HTTP/1.1 keep-alive client for the publishers.

A generic client (httpx, aiohttp) spends 50-200 µs of CPU per request, which
would make the load generator, not the server, the limit of a publish
benchmark on a 2-core machine.  This one writes a pre-built request and reads
back one ``Content-Length`` response per request: enough for tidings' JSON
API, nothing more (no chunked bodies, no redirects, no TLS).
"""

from __future__ import annotations

import asyncio
import json


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = exc or ConnectionError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            parsed = self._parse()
            if parsed is not None:
                self.waiter.set_result(parsed)

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).decode("latin-1")
        status = int(head[9:12])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        total = end + 4 + length
        if len(buf) < total:
            return None
        body = bytes(buf[end + 4:total])
        del buf[:total]
        return status, body

    async def request(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        if self.lost is not None:
            raise self.lost
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.transport.write(raw)
        parsed = self._parse()
        if parsed is not None:
            self.waiter = None
            return parsed
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None


class HttpClient:
    """One keep-alive connection; ``await post_json(path, doc)`` -> (status, body)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None,
                 timeout: float = 30.0, local_host: str | None = None):
        self.host, self.port, self.timeout = host, port, timeout
        self.local_host = local_host
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host}:{port}\r\n{extra}".encode()
        self._conn: _Conn | None = None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        local = (self.local_host, 0) if self.local_host else None
        _, conn = await loop.create_connection(_Conn, self.host, self.port, local_addr=local)
        return conn

    async def connect(self) -> None:
        """Open the connection now, so that the first timed request does not pay for it."""
        if self._conn is None or self._conn.lost is not None:
            self._conn = await self._connect()

    def build(self, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None) -> bytes:
        """A complete request, to be sent many times with :meth:`send`."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() if headers else b""
        return (f"{method} {path} HTTP/1.1\r\n".encode() + self._head + extra
                + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self._conn is None or self._conn.lost is not None:
            self._conn = await self._connect()
        return await self._conn.request(raw, self.timeout)

    async def post_json(self, path: str, doc) -> tuple[int, bytes]:
        return await self.send(self.build("POST", path, json.dumps(doc).encode()))

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.send(self.build("GET", path))

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
