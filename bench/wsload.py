"""WebSocket subscribers: picows clients in one or more pinned processes.

Each worker process opens its share of the connections (``Authorization:
Bearer`` on the upgrade request), waits for every ``hello``, and from then on
counts what arrives: frames, notification events (a frame holds one event or
a JSON array of them) and other events.  The counting is a substring count on
the raw frame, cheap enough that the client stays well below the server's
cost; ``verify=True`` parses every frame as JSON instead and checks that each
connection sees its notifications in order and exactly once.

The parent talks to the workers over a pipe: ``stats`` (a snapshot) and
``stop`` (close everything, final snapshot, exit).  Timestamps are
``time.monotonic()``, the same clock in every process, so the parent can
compare them with its own.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import resource
import time
from dataclasses import dataclass, field

NOTIFICATION = b'"type":"notification"'
# receipts mode: each frame's notification ids, acknowledged back in batches
NOTIFICATION_ID = re.compile(rb'"notification":\{"id":"([0-9A-Z]{26})"')
RECEIPTS_EVERY = 1.0  # seconds, as tidings.js and the Python Subscriber
TYPE = b'"type":'
# latency mode: the publisher puts its intended send time (CLOCK_MONOTONIC, ns,
# the same clock in every process of this machine) into the notification's data
STAMP = re.compile(rb'"t_ns":(\d+)')


@dataclass
class WorkerConfig:
    url: str
    tokens: list[str]
    source: str | None = None  # local address to connect from (127.0.0.x)
    cpus: set[int] | None = None
    connect_concurrency: int = 200
    connect_timeout: float = 30.0
    read_buffer: int = 16384
    verify: bool = False
    latency: bool = False  # record publish -> device latency from the t_ns stamps
    # acknowledge notifications as tidings.js does: the ids a device received,
    # one receipts message ("delivered") per device every RECEIPTS_EVERY seconds
    receipts: bool = False


@dataclass
class Counters:
    frames: int = 0
    notifications: int = 0
    other_events: int = 0
    t_first: float | None = None
    t_last: float | None = None
    closed: int = 0
    close_codes: dict = field(default_factory=dict)
    order_errors: int = 0  # verify mode: duplicates or out-of-order notifications
    receipts_sent: int = 0  # receipts mode: messages sent


class Latency:
    """Publish -> device latency in µs of the notifications stamped inside a window.

    The window is in the publisher's intended send times, so warm-up traffic
    and anything stamped after the measured phase are counted apart.
    """

    def __init__(self) -> None:
        from hdrh.histogram import HdrHistogram

        # 1 µs .. 60 s at 3 significant digits
        self.hist = HdrHistogram(1, 60_000_000, 3)
        self.start_ns = self.end_ns = 0
        self.in_window = 0
        self.outside = 0

    def record(self, payload: bytes) -> None:
        now = time.monotonic_ns()
        for m in STAMP.finditer(payload):
            t = int(m.group(1))
            if self.start_ns <= t < self.end_ns:
                self.in_window += 1
                self.hist.record_value(max((now - t) // 1000, 1))
            else:
                self.outside += 1


def _make_listener(counters: Counters, per_sub: list[int], verify: bool,
                   latency: Latency | None = None, receipts: bool = False):
    from picows import WSListener, WSMsgType

    class Subscriber(WSListener):
        __slots__ = ("idx", "ready", "parts", "last_seq", "last_feed", "acks", "transport")

        def __init__(self, idx: int, ready: asyncio.Future):
            self.idx = idx
            self.ready = ready
            self.parts: list[bytes] | None = None
            self.last_seq = 0
            self.last_feed = 0
            self.acks: list[bytes] = []  # receipts mode: ids not yet acknowledged
            self.transport = None

        def send_receipts(self) -> None:
            if self.acks and self.transport is not None:
                ids, self.acks = self.acks, []
                counters.receipts_sent += 1
                # named as tidings.js names a browser: a 32-hex id and a label
                self.transport.send(WSMsgType.TEXT, b'{"type":"receipts","device":"%032x",'
                                    b'"label":"Chrome on Linux","delivered":["' % self.idx
                                    + b'","'.join(ids) + b'"]}')

        def on_ws_frame(self, transport, frame) -> None:
            kind = frame.msg_type
            if kind == WSMsgType.TEXT or kind == WSMsgType.CONTINUATION:
                if not frame.fin or self.parts is not None:  # fragmented message
                    if self.parts is None:
                        self.parts = []
                    self.parts.append(frame.get_payload_as_bytes())
                    if not frame.fin:
                        return
                    payload, self.parts = b"".join(self.parts), None
                else:
                    payload = frame.get_payload_as_bytes()
                self.on_message(payload)
                if receipts:
                    self.transport = transport
                    self.acks += NOTIFICATION_ID.findall(payload)
            elif kind == WSMsgType.CLOSE:
                counters.closed += 1
                code = frame.get_close_code()
                counters.close_codes[int(code)] = counters.close_codes.get(int(code), 0) + 1
                transport.send_close(code)
                transport.disconnect()

        def on_message(self, payload: bytes) -> None:
            counters.frames += 1
            if not self.ready.done():
                if b'"type":"hello"' in payload:
                    self.ready.set_result(None)
            n = self.count_verified(payload) if verify else payload.count(NOTIFICATION)
            if n and latency is not None:
                latency.record(payload)
            if n:
                now = time.monotonic()
                if counters.t_first is None:
                    counters.t_first = now
                counters.t_last = now
                counters.notifications += n
                per_sub[self.idx] += n
            counters.other_events += payload.count(TYPE) - n

        def count_verified(self, payload: bytes) -> int:
            doc = json.loads(payload)
            n = 0
            for ev in doc if isinstance(doc, list) else [doc]:
                if ev.get("type") != "notification":
                    continue
                n += 1
                if "cursor" in ev:
                    seq = int(ev["cursor"].rsplit(":", 1)[1])
                    if seq != self.last_seq + 1 and self.last_seq:
                        counters.order_errors += 1
                    self.last_seq = seq
                else:
                    if ev["feed"] <= self.last_feed:
                        counters.order_errors += 1
                    self.last_feed = ev["feed"]
            if payload.count(NOTIFICATION) != n:
                counters.order_errors += 1  # the fast count would be wrong
            return n

        def on_ws_disconnected(self, transport) -> None:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError("closed before hello"))

    return Subscriber


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _worker(conn, cfg: WorkerConfig) -> None:
    from picows import ws_connect

    counters = Counters()
    per_sub = [0] * len(cfg.tokens)
    latency = Latency() if cfg.latency else None
    listener_cls = _make_listener(counters, per_sub, cfg.verify, latency, cfg.receipts)
    loop = asyncio.get_running_loop()
    transports = []
    listeners: list = []
    errors: list[str] = []
    sem = asyncio.Semaphore(cfg.connect_concurrency)
    kw = {"local_addr": (cfg.source, 0)} if cfg.source else {}

    async def open_one(i: int, token: str) -> None:
        async with sem:
            ready = loop.create_future()
            try:
                transport, _ = await ws_connect(
                    lambda: listeners.append(listener_cls(i, ready)) or listeners[-1], cfg.url,
                    extra_headers={"Authorization": f"Bearer {token}"},
                    read_buffer_init_size=cfg.read_buffer, websocket_handshake_timeout=10,
                    **kw,
                )
                transports.append(transport)
                await asyncio.wait_for(ready, 10)
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                errors.append(repr(exc)[:200])

    t0 = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(open_one(i, t) for i, t in enumerate(cfg.tokens))),
        cfg.connect_timeout,
    )

    def snapshot(hist: bool = False) -> dict:
        out = {
            "connected": len(transports) - counters.closed, "connect_errors": len(errors),
            "errors_sample": errors[:3], "connect_s": round(connect_s, 3),
            "frames": counters.frames, "notifications": counters.notifications,
            "receipts_sent": counters.receipts_sent,
            "other_events": counters.other_events, "t_first": counters.t_first,
            "t_last": counters.t_last, "closed": counters.closed,
            "close_codes": counters.close_codes, "order_errors": counters.order_errors,
            "min_per_sub": min(per_sub) if per_sub else 0,
            "max_per_sub": max(per_sub) if per_sub else 0,
            "cpu_s": _cpu_self(),
        }
        if latency is not None:
            out["lat_in_window"], out["lat_outside"] = latency.in_window, latency.outside
            if hist:
                out["lat_hist"] = latency.hist.encode().decode()
        return out

    connect_s = time.monotonic() - t0
    conn.send(("ready", snapshot()))

    async def acknowledge() -> None:
        while True:
            await asyncio.sleep(RECEIPTS_EVERY)
            for listener in listeners:
                listener.send_receipts()

    acks = asyncio.ensure_future(acknowledge()) if cfg.receipts else None

    commands: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except EOFError:
            commands.put_nowait("stop")

    loop.add_reader(conn.fileno(), readable)
    while True:
        cmd = await commands.get()
        if cmd == "stats":
            conn.send(("stats", snapshot()))
        elif cmd == "hist":
            conn.send(("stats", snapshot(hist=True)))
        elif isinstance(cmd, tuple) and cmd[0] == "window" and latency is not None:
            latency.start_ns, latency.end_ns = cmd[1], cmd[2]
            conn.send(("stats", snapshot()))
        elif cmd == "stop":
            if acks is not None:
                acks.cancel()
            loop.remove_reader(conn.fileno())
            for t in transports:
                t.disconnect()
            await asyncio.sleep(0.1)
            conn.send(("stats", snapshot(hist=True)))
            return


def worker_main(conn, cfg: WorkerConfig) -> None:
    if cfg.cpus:
        os.sched_setaffinity(0, cfg.cpus)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_worker(conn, cfg))
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        try:
            conn.send(("error", repr(exc)))
        except OSError:
            pass


def _merge(snaps: list[dict]) -> dict:
    out: dict = {}
    for key in ("connected", "connect_errors", "frames", "notifications", "receipts_sent",
                "other_events",
                "closed", "order_errors", "cpu_s"):
        out[key] = sum(s[key] for s in snaps)
    out["connect_s"] = max(s["connect_s"] for s in snaps)
    out["min_per_sub"] = min(s["min_per_sub"] for s in snaps)
    out["max_per_sub"] = max(s["max_per_sub"] for s in snaps)
    firsts = [s["t_first"] for s in snaps if s["t_first"] is not None]
    lasts = [s["t_last"] for s in snaps if s["t_last"] is not None]
    out["t_first"] = min(firsts) if firsts else None
    out["t_last"] = max(lasts) if lasts else None
    codes: dict = {}
    for s in snaps:
        for k, v in s["close_codes"].items():
            codes[k] = codes.get(k, 0) + v
    out["close_codes"] = codes
    out["errors_sample"] = [e for s in snaps for e in s["errors_sample"]][:3]
    if all("lat_in_window" in s for s in snaps):
        out["lat_in_window"] = sum(s["lat_in_window"] for s in snaps)
        out["lat_outside"] = sum(s["lat_outside"] for s in snaps)
        if all("lat_hist" in s for s in snaps):
            out["lat_hist"] = merge_histograms([s["lat_hist"] for s in snaps])
    return out


def merge_histograms(encoded: list[str]) -> str:
    """One HdrHistogram (base64, as ``HdrHistogram.encode``) from several."""
    from hdrh.histogram import HdrHistogram

    total = HdrHistogram(1, 60_000_000, 3)
    for e in encoded:
        total.add(HdrHistogram.decode(e.encode()))
    return total.encode().decode()


class LoadGen:
    """``procs`` worker processes sharing ``tokens``; ``sources[i]`` is worker i's address."""

    def __init__(self, url: str, tokens: list[str], *, procs: int = 1,
                 cpus: set[int] | None = None, sources: list[str | None] | None = None,
                 read_buffer: int = 16384, verify: bool = False, latency: bool = False,
                 connect_timeout: float = 60.0, connect_concurrency: int = 200,
                 receipts: bool = False):
        ctx = multiprocessing.get_context("spawn")
        sources = sources or [None] * procs
        self.workers = []
        for i in range(procs):
            share = tokens[i::procs]
            cfg = WorkerConfig(url=url, tokens=share, source=sources[i % len(sources)],
                               cpus=cpus, read_buffer=read_buffer, verify=verify,
                               latency=latency, connect_timeout=connect_timeout,
                               connect_concurrency=connect_concurrency, receipts=receipts)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, cfg), daemon=True)
            self.workers.append((proc, parent))
        self.timeout = connect_timeout + 15

    def _recv(self, pipe, timeout: float) -> dict:
        if not pipe.poll(timeout):
            raise TimeoutError("load generator worker did not answer")
        kind, payload = pipe.recv()
        if kind == "error":
            raise RuntimeError(f"load generator worker failed: {payload}")
        return payload

    def start(self) -> dict:
        """Start the workers; return once every connection got its hello (or failed)."""
        for proc, _ in self.workers:
            proc.start()
        return _merge([self._recv(pipe, self.timeout) for _, pipe in self.workers])

    def stats(self, hist: bool = False) -> dict:
        """A snapshot of every worker, merged (``hist``: with the latency histogram)."""
        for _, pipe in self.workers:
            pipe.send("hist" if hist else "stats")
        return _merge([self._recv(pipe, 30) for _, pipe in self.workers])

    def set_window(self, start_ns: int, end_ns: int) -> None:
        """Latency mode: record the notifications stamped in [start_ns, end_ns)."""
        for _, pipe in self.workers:
            pipe.send(("window", start_ns, end_ns))
        for _, pipe in self.workers:
            self._recv(pipe, 30)

    def stop(self) -> dict | None:
        snaps = []
        for _, pipe in self.workers:
            try:
                pipe.send("stop")
                snaps.append(self._recv(pipe, 15))
            except (OSError, TimeoutError, RuntimeError, EOFError):
                pass
        for proc, _ in self.workers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        return _merge(snaps) if snaps else None

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.workers if p.pid]
