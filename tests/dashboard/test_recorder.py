"""The per-second recorder: differences of the node's counters, per app (no I/O)."""

from __future__ import annotations

import asyncio

import pytest

from tidings.core.stats import LATENCY_BUCKETS, Stats
from tidings.dashboard.recorder import TOPIC_WINDOW, Recorder


class _Hub:
    def __init__(self):
        self.metrics = Stats()
        self.apps: dict[str, set] = {}


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _recorder(hub):
    clock = _Clock()
    return Recorder(hub, clock=clock, monotonic=clock), clock


def test_a_point_holds_the_differences_of_one_interval():
    hub = _Hub()
    rec, clock = _recorder(hub)
    st = hub.metrics.app("a")
    st.published, st.delivered = 3, 30
    st.errors["invalid"] = 2
    st.latency.observe(0.004)
    hub.metrics.published("a", "accepted", 1, "guild:7")
    hub.apps["a"] = {object(), object()}
    clock.t += 2.0
    p = rec.sample()
    a = p.apps["a"]
    assert (p.dt, a.published, a.delivered, a.errors, a.connections) == (2.0, 4, 30, 2, 2)
    assert a.latency[LATENCY_BUCKETS.index(0.005)] == 1 and sum(a.latency) == 1
    assert p.topics == {("a", "guild:7"): 1}

    clock.t += 1.0
    st.delivered += 5
    p = rec.sample()
    a = p.apps["a"]
    assert (a.published, a.delivered, a.errors, a.latency) == (0, 5, 0, None)
    assert p.topics == {}
    assert rec.tick == 2 and len(rec.points) == 2


def test_idle_apps_leave_no_entry_and_history_is_bounded():
    hub = _Hub()
    clock = _Clock()
    rec = Recorder(hub, history=3, clock=clock, monotonic=clock)
    hub.metrics.app("quiet")
    for _ in range(5):
        clock.t += 1.0
        p = rec.sample()
    assert p.apps == {}
    assert len(rec.points) == 3


async def test_next_sample_wakes_every_waiter_once():
    hub = _Hub()
    rec, clock = _recorder(hub)
    waiters = [asyncio.ensure_future(rec.next_sample()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    rec.sample()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    # a waiter that gives up does not cancel the others' future
    late = asyncio.ensure_future(rec.next_sample())
    other = asyncio.ensure_future(rec.next_sample())
    await asyncio.sleep(0)
    late.cancel()
    rec.sample()
    await asyncio.wait_for(other, 1)
    with pytest.raises(asyncio.CancelledError):
        await late


def test_the_topic_window_is_a_running_sum_of_the_last_minute():
    hub = _Hub()
    rec, clock = _recorder(hub)
    for second in range(TOPIC_WINDOW + 5):
        hub.metrics.published("a", "accepted", 1, "busy")
        if second == 0:
            hub.metrics.published("a", "accepted", 1, "once")
        clock.t += 1.0
        rec.sample()
        expected = {("a", "busy"): min(second + 1, TOPIC_WINDOW)}
        if second < TOPIC_WINDOW:
            expected[("a", "once")] = 1
        assert rec.topics_window == expected, second
