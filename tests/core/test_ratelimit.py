"""Token buckets (the arithmetic shared with the Redis script), on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.ratelimit import TokenBuckets, check, take


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_new_bucket_is_full_then_refuses_with_the_wait():
    clock = Clock()
    b = TokenBuckets(clock)
    assert [b.take("k", rate=2.0, burst=3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k", rate=2.0, burst=3) == pytest.approx(0.5)
    clock.now += 0.25
    assert b.take("k", rate=2.0, burst=3) == pytest.approx(0.25)


def test_waiting_the_answer_is_enough():
    clock = Clock()
    b = TokenBuckets(clock)
    b.take("k", rate=3.0, burst=1)
    wait = b.take("k", rate=3.0, burst=1)
    assert wait == pytest.approx(1 / 3)
    clock.now += wait
    assert b.take("k", rate=3.0, burst=1) == 0.0


def test_a_refusal_takes_nothing():
    clock = Clock()
    b = TokenBuckets(clock)
    b.take("k", rate=1.0, burst=2, cost=2)
    for _ in range(5):
        assert b.take("k", rate=1.0, burst=2, cost=2) == pytest.approx(2.0)
    clock.now += 2.0
    assert b.take("k", rate=1.0, burst=2, cost=2) == 0.0


def test_refill_stops_at_burst():
    clock = Clock()
    b = TokenBuckets(clock)
    b.take("k", rate=10.0, burst=2)
    clock.now += 3600
    assert [b.take("k", rate=10.0, burst=2) for _ in range(3)][:2] == [0.0, 0.0]
    assert b.take("k", rate=10.0, burst=2) > 0


def test_keys_are_independent():
    b = TokenBuckets(Clock())
    assert b.take("a", rate=1.0, burst=1) == 0.0
    assert b.take("a", rate=1.0, burst=1) > 0
    assert b.take("b", rate=1.0, burst=1) == 0.0


def test_a_clock_going_backwards_refills_nothing():
    tokens, wait = take(0.0, last=100.0, now=50.0, rate=1.0, burst=5, cost=1)
    assert (tokens, wait) == (0.0, 1.0)


def test_memory_is_bounded_by_forgetting_full_buckets():
    clock = Clock()
    b = TokenBuckets(clock, max_keys=10)
    for i in range(10):
        b.take(f"k{i}", rate=1.0, burst=1)
    clock.now += 1.0  # all full again: forgetting them changes nothing
    b.take("another", rate=1.0, burst=1)
    assert len(b) == 1
    assert b.take("k0", rate=1.0, burst=1) == 0.0


def test_a_crowded_table_keeps_the_half_furthest_from_full():
    """Every bucket still refilling: the ones the limit holds back most stay
    (the old rule forgot them all, and the heaviest user started afresh)."""
    clock = Clock()
    b = TokenBuckets(clock, max_keys=10)
    for i in range(10):  # k{i} took i + 1 of 10 tokens: k9 is the heaviest
        b.take(f"k{i}", rate=1.0, burst=10, cost=i + 1)
    clock.now += 0.5
    b.take("new", rate=1.0, burst=10)
    assert len(b) == 6  # the five furthest from full, and the newcomer
    # k5..k9 kept what they were missing; k0..k4 start full again
    assert b.take("k9", rate=1.0, burst=10, cost=2) == pytest.approx(1.5)
    assert b.take("k0", rate=1.0, burst=10, cost=10) == 0.0


def test_a_million_users_stay_within_max_keys_and_the_heavy_one_stays_limited():
    clock, passes = Clock(), []

    class Counted(TokenBuckets):
        def _prune(self, now: float) -> None:
            passes.append(now)
            super()._prune(now)

    b = Counted(clock, max_keys=10_000)
    assert b.take_checked("heavy", 1.0, 5, 5) == 0.0
    take = b.take_checked
    for start in range(0, 1_000_000, 10_000):  # on a clock that barely moves
        for i in range(start, start + 10_000):
            take(i, 1.0, 5)  # a user id (any hashable key)
        clock.now += 1e-3
        assert len(b) <= 10_000
        assert b.take_checked("heavy", 1.0, 5) > 0  # never forgotten: it owes the most
    assert len(passes) <= 1_000_000 // 5_000  # each pass leaves room for half the table


@pytest.mark.parametrize("rate, burst, cost", [
    (0, 1, 1), (-1.0, 1, 1), (float("inf"), 1, 1), (float("nan"), 1, 1), ("1", 1, 1),
    (1.0, 0, 1), (1.0, 1.5, 1), (1.0, True, 1), (1.0, 2, 0), (1.0, 2, 3), (1.0, 2, 1.0),
])
def test_impossible_limits_are_refused(rate, burst, cost):
    with pytest.raises(ValueError):
        check(rate, burst, cost)
    with pytest.raises(ValueError):
        TokenBuckets(Clock()).take("k", rate, burst, cost)


@given(
    rate=st.floats(0.01, 1000), burst=st.integers(1, 100),
    steps=st.lists(st.tuples(st.floats(0, 10), st.integers(1, 100)), max_size=30),
)
def test_never_more_than_burst_plus_refill(rate, burst, steps):
    """Whatever the pattern, what was granted never exceeds the burst plus
    what refilled in the elapsed time."""
    clock = Clock()
    b = TokenBuckets(clock)
    start, granted = clock.now, 0
    for dt, cost in steps:
        clock.now += dt
        cost = min(cost, burst)
        wait = b.take("k", rate, burst, cost)
        assert wait >= 0
        if wait == 0:
            granted += cost
        else:
            assert wait <= cost / rate + 1e-9
    assert granted <= burst + (clock.now - start) * rate + 1e-6


def test_give_puts_tokens_back_up_to_the_burst():
    clock = Clock()
    b = TokenBuckets(clock)
    assert [b.take("k", rate=1.0, burst=2) for _ in range(2)] == [0.0, 0.0]
    assert b.take("k", rate=1.0, burst=2) == pytest.approx(1.0)
    b.give("k", rate=1.0, burst=2)
    assert b.take("k", rate=1.0, burst=2) == 0.0
    b.give("k", rate=1.0, burst=2, cost=2)
    b.give("k", rate=1.0, burst=2)  # never above the burst
    assert [b.take("k", rate=1.0, burst=2) for _ in range(2)] == [0.0, 0.0]
    assert b.take("k", rate=1.0, burst=2) > 0
    b.give("never-taken", rate=1.0, burst=2)  # a missing bucket is full already
    assert "never-taken" not in b._buckets
