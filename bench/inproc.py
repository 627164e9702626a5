"""The event loop's own cost per publish, without sockets: ``python -m bench.inproc``.

A real app (SQLite store, in-process broker) is started in this process
under uvicorn, and ``tidings serve``'s HTTP protocol is driven with fake
transports: ``--concurrency`` connections each send a request as soon as
the answer to their previous one is written (a closed loop, like ``bench
publish``), fed with ``data_received`` from a ``call_soon`` instead of an
epoll read.  What it prints per request: the loop thread's CPU
(``thread_time``), the writer thread's, and the wall time.  No syscalls of
the socket, no epoll and no client share the core, so what changes here is
the Python the loop runs per request: a smaller figure to compare pairs of
code with, not a replacement for ``bench publish``.

``--topic N`` measures write fan-out instead: N users follow topic
``bench``, each with one WebSocket stream of the gateway's own (written
through a fake raw protocol: the frame is built, not sent), and every
request publishes to the topic; the figures are then also given per
recipient, with the frames written and the events per frame.  Two runs
under ``valgrind --tool=callgrind --separate-threads=yes`` with different
``--count`` give the loop thread's instructions per recipient.

``--profile`` runs one more pass under cProfile (the loop thread only) and
prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time

import uvicorn

from tidings.gateway.uvicorn_ws import TidingsWebSocketProtocol


class _Transport:
    """What uvicorn's protocol and tidings' answer use of a transport."""

    def __init__(self, conn: _Conn):
        self.conn = conn
        self.closing = False

    def write(self, data: bytes) -> None:
        self.conn.answered(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol) -> None:
        pass


class _RawWS:
    """What a RawWebSocketStream uses of uvicorn_ws.TidingsWebSocketProtocol."""

    on_writable = on_lost = on_message = None
    can_write = True

    def __init__(self) -> None:
        self.frames = 0

    def write_text(self, payload: bytes) -> None:
        TidingsWebSocketProtocol.write_text(self, payload)  # type: ignore[arg-type]

    @property
    def transport(self):
        return self

    def write(self, data: bytes) -> None:
        self.frames += 1


async def _streams(service, users: list[str]) -> list[_RawWS]:
    """One started stream per user, as the WebSocket endpoint makes it."""
    from tidings.gateway.transports import RawWebSocketStream

    limits = service.settings.limits
    protos = []
    for user in users:
        proto = _RawWS()
        stream = RawWebSocketStream(proto, None, service.hub, "bench", user,
                                    max_events=limits.queue_max_events,
                                    max_bytes=limits.queue_max_bytes)
        await stream.start(None)
        protos.append(proto)
    return protos


class _Conn:
    def __init__(self, bench: _Bench, protocol):
        self.bench, self.protocol = bench, protocol
        self.transport = _Transport(self)
        protocol.connection_made(self.transport)

    def send(self) -> None:
        req = self.bench.next_request()
        if req is not None:
            self.protocol.data_received(req)

    def answered(self, data: bytes) -> None:
        if not data.startswith(b"HTTP/1.1 202"):
            self.bench.errors += 1
            if self.bench.errors < 3:
                print("unexpected answer:", data[:300])
        self.bench.answered += 1
        if self.bench.answered >= self.bench.total:
            self.bench.done.set()
        self.bench.loop.call_soon(self.send)


class _Bench:
    def __init__(self, loop, requests: list[bytes], total: int):
        self.loop, self.requests, self.total = loop, requests, total
        self.sent = self.answered = self.errors = 0
        self.done = asyncio.Event()

    def next_request(self) -> bytes | None:
        if self.sent >= self.total:
            return None
        req = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return req


def _thread_cpu(ident: int) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def _requests(key: str, batch: int, users: int, n: int, topic: bool = False) -> list[bytes]:
    def one(i: int) -> dict:
        to = {"topic": "bench"} if topic else {"users": [f"u{i % users:06d}"]}
        return {"to": to, "title": "bench", "body": f"{i:08d}-".ljust(100, "x")}

    out = []
    for j in range(n):
        if batch:
            doc, path = {"notifications": [one(j * batch + k) for k in range(batch)]}, \
                "/v1/notifications/batch"
        else:
            doc, path = one(j), "/v1/notifications"
        body = json.dumps(doc).encode()
        out.append(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer %s\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (path.encode(), key.encode(), len(body), body))
    return out


async def _main(opts) -> None:
    from tidings.api.app import build_service, create_app
    from tidings.cli import HTTP_PROTOCOL
    from tidings.config import Settings
    from tidings.serving import quiet_gc

    data = tempfile.mkdtemp(prefix="tidings-inproc-")
    settings = Settings(data=data, port=0, key_rate=0)  # as bench.server runs it
    service = build_service(settings)
    config = uvicorn.Config(create_app(settings, service), host="127.0.0.1", port=0,
                            loop="none", http=HTTP_PROTOCOL, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    _, key = await service.create_app("bench", app_id="bench")
    quiet_gc()
    loop = asyncio.get_running_loop()
    writer = next(t for t in threading.enumerate() if "writer" in t.name)
    per = opts.batch or 1

    def protocol():
        return config.http_protocol_class(config=config, server_state=server.server_state,
                                          app_state=server.lifespan.state, _loop=loop)

    requests = _requests(key, opts.batch, 1000, 512, topic=bool(opts.topic))
    if opts.topic:
        # The loop keeps the GIL until it waits (as bench.writer does): the
        # writer then takes every publish sent meanwhile as one group, also
        # under callgrind, and two runs compare frames of the same size.
        sys.setswitchinterval(10.0)
    protos: list[_RawWS] = []
    if opts.topic:
        members = [f"m{i:06d}" for i in range(opts.topic)]
        await service.subscribe("bench", "bench", members, True)
        protos = await _streams(service, members)
    rows = []
    for run in range(opts.runs + (1 if opts.profile else 0)):
        total = opts.count // per
        bench = _Bench(loop, requests, total)
        conns = [_Conn(bench, protocol()) for _ in range(opts.concurrency)]
        profiler = None
        if run == opts.runs:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        frames0 = sum(p.frames for p in protos)
        t0, c0, w0 = time.perf_counter(), time.thread_time(), _thread_cpu(writer.ident)
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        for c in conns:
            loop.call_soon(c.send)
        await bench.done.wait()
        await asyncio.sleep(0)  # the hub's flush of the last tick
        t1, c1, w1 = time.perf_counter(), time.thread_time(), _thread_cpu(writer.ident)
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        for c in conns:
            c.protocol.connection_lost(None)
        if profiler is not None:
            profiler.disable()
            import pstats
            pstats.Stats(profiler).sort_stats(opts.sort).print_stats(opts.top)
            break
        n = total * per
        row = {"loop_us": (c1 - c0) / n * 1e6, "writer_us": (w1 - w0) / n * 1e6,
               "wall_us": (t1 - t0) / n * 1e6,
               # the loop thread's context switches per request: waits (for the
               # GIL, for epoll) and preemptions
               "loop_vcsw": (r1.ru_nvcsw - r0.ru_nvcsw) / total,
               "loop_ivcsw": (r1.ru_nivcsw - r0.ru_nivcsw) / total, "errors": bench.errors}
        if opts.topic:
            frames = sum(p.frames for p in protos) - frames0
            recipients = n * opts.topic
            row.update(loop_us_per_recipient=(c1 - c0) / recipients * 1e6,
                       writer_us_per_recipient=(w1 - w0) / recipients * 1e6,
                       frames=frames, events_per_frame=recipients / max(frames, 1))
        rows.append(row)
        print({k: round(v, 2) for k, v in row.items()})
        await asyncio.sleep(0.2)  # the writer's tail
    if rows:
        print("median:", {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]})
    server.should_exit = True
    await task


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    ap.add_argument("--count", type=int, default=20000, help="notifications per run")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--topic", type=int, default=0, metavar="N",
                    help="publish to a topic that N streams' users follow (write fan-out)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--top", type=int, default=40)
    opts = ap.parse_args()
    if os.environ.get("TIDINGS_INPROC_CPU"):
        os.sched_setaffinity(0, {int(os.environ["TIDINGS_INPROC_CPU"])})
    import uvloop
    uvloop.run(_main(opts))


if __name__ == "__main__":
    main()
