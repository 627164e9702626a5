"""An open-loop HTTP driver: requests leave at a fixed rate, whatever the server does.

A closed loop (send, wait for the answer, send the next) slows down when the
server stalls, so the stall delays few requests and hides from the
percentiles ("coordinated omission").  Here request ``i`` is due at
``start + i / rate``; a pool of keep-alive connections sends what is due,
and every latency is measured from the *intended* send time, so time spent
waiting for a free connection counts.  The send lag (actual − intended send
time) is kept apart to show how much of it was the driver's own: the event
loop's timers have 1 ms granularity, so requests leave up to ~1 ms late even
on an idle machine.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import hist
from bench.httpclient import HttpClient

SLOWEST = 20


@dataclass
class OpenLoopResult:
    scheduled: int = 0
    ok: int = 0
    errors: int = 0
    statuses: dict = field(default_factory=dict)
    error_sample: list = field(default_factory=list)
    # requests whose intended time fell in the measured window
    ok_in_window: int = 0
    recipients_in_window: int = 0
    # window requests still unanswered ``drain_s`` after the last send: recorded in
    # ``latency`` at the time they had waited by then (a lower bound), and counted here
    unanswered: int = 0
    latency: object = None  # HdrHistogram µs: intended send -> response, measured window
    send_lag: object = None  # HdrHistogram µs: intended -> actual send, measured window
    # the slowest requests of the measured window, (latency ms, s after the window's
    # start, send lag ms), slowest first: whether a tail is spread out or comes in bursts
    slowest: list = field(default_factory=list)
    start_ns: int = 0
    window: tuple[int, int] = (0, 0)
    seconds: float = 0.0


def window(start_ns: int, warmup: float, duration: float) -> tuple[int, int]:
    """The measured window [w0, w1) of a run starting at ``start_ns`` (monotonic ns)."""
    w0 = start_ns + int(warmup * 1e9)
    return w0, w0 + int(duration * 1e9)


async def run(host: str, port: int, headers: dict[str, str], *, rate: float, warmup: float,
              duration: float, start_ns: int,
              build: Callable[[int, int], tuple[str, str, bytes]], pool: int = 32,
              on_response: Callable[[int, bytes], int] | None = None,
              tick: Callable[[float], None] | None = None,
              drain_s: float = 30.0) -> OpenLoopResult:
    """Send request ``build(i, intended_ns)`` -> ``(method, path, body)`` at ``rate``/s
    for ``warmup + duration`` s from ``start_ns`` (``time.monotonic_ns()`` clock).

    ``on_response(status, body)`` returns the request's recipients (summed
    over the requests of the measured window); ``tick(elapsed_s)`` is called
    about twice a second (a progress bar).  Answers still missing ``drain_s``
    after the last send are given up (see ``OpenLoopResult.unanswered``).
    """
    res = OpenLoopResult(latency=hist.new(), send_lag=hist.new())
    clients = [HttpClient(host, port, headers) for _ in range(pool)]
    for c in clients:
        await c.connect()
    period_ns = int(1e9 / rate)
    total = int(rate * (warmup + duration))
    res.start_ns = start_ns
    w0, w1 = res.window = window(start_ns, warmup, duration)
    due: asyncio.Queue = asyncio.Queue()
    done = object()
    inflight: dict[int, int] = {}
    slow: list[tuple[int, int, int]] = []  # a min-heap of the SLOWEST slowest

    async def sender(client: HttpClient) -> None:
        while True:
            job = await due.get()
            if job is done:
                return
            i, intended = job
            raw = client.build(*build(i, intended))
            sent = time.monotonic_ns()
            in_window = w0 <= intended < w1
            inflight[i] = intended
            try:
                status, body = await client.send(raw)
            except Exception as exc:  # noqa: BLE001 - counted and sampled
                inflight.pop(i, None)
                res.errors += 1
                if len(res.error_sample) < 3:
                    res.error_sample.append(repr(exc)[:200])
                continue
            now = time.monotonic_ns()
            inflight.pop(i, None)
            res.statuses[status] = res.statuses.get(status, 0) + 1
            if status >= 300:
                res.errors += 1
                if len(res.error_sample) < 3:
                    res.error_sample.append(f"{status} {body[:200]!r}")
                continue
            res.ok += 1
            if in_window:
                res.ok_in_window += 1
                try:
                    res.recipients_in_window += on_response(status, body) if on_response else 1
                except Exception as exc:  # noqa: BLE001 - an answer it could not read
                    res.errors += 1
                    if len(res.error_sample) < 3:
                        res.error_sample.append(f"bad answer {exc!r} {body[:160]!r}")
                hist.record_ns(res.latency, now - intended)
                hist.record_ns(res.send_lag, sent - intended)
                if len(slow) < SLOWEST or now - intended > slow[0][0]:
                    (heapq.heappush if len(slow) < SLOWEST else heapq.heapreplace)(
                        slow, (now - intended, intended - w0, sent - intended))

    tasks = [asyncio.create_task(sender(c)) for c in clients]
    last_tick = 0.0
    t_begin = time.monotonic()
    try:
        i = 0
        while i < total:
            now = time.monotonic_ns()
            while i < total and res.start_ns + i * period_ns <= now:
                due.put_nowait((i, res.start_ns + i * period_ns))
                i += 1
                res.scheduled += 1
            if tick and time.monotonic() - last_tick >= 0.5:
                last_tick = time.monotonic()
                tick(max(now - res.start_ns, 0) / 1e9)
            if i < total:
                wait_ns = res.start_ns + i * period_ns - time.monotonic_ns()
                await asyncio.sleep(max(wait_ns, 0) / 1e9)
        for _ in clients:
            due.put_nowait(done)
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        if pending:
            now = time.monotonic_ns()
            waiting = list(inflight.values())
            while not due.empty():
                job = due.get_nowait()
                if job is not done:
                    waiting.append(job[1])
            for intended in waiting:
                if w0 <= intended < w1:
                    res.unanswered += 1
                    hist.record_ns(res.latency, now - intended)
    finally:
        res.seconds = time.monotonic() - t_begin
        res.slowest = [(round(lat / 1e6, 2), round(at / 1e9, 3), round(lag / 1e6, 2))
                       for lat, at, lag in sorted(slow, reverse=True)]
        for t in tasks:
            t.cancel()
        for c in clients:
            c.close()
    return res
