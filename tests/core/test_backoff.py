"""Full-jitter exponential backoff."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.backoff import Backoff


def test_defaults():
    b = Backoff()
    assert b.base == 0.25
    assert b.cap == 20.0
    assert b.attempt == 0


def test_upper_envelope_doubles_then_caps():
    b = Backoff(base=1.0, cap=10.0, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_rand_zero_gives_zero():
    b = Backoff(base=1.0, cap=10.0, rand=lambda: 0.0)
    assert [b.next_delay() for _ in range(5)] == [0.0] * 5


def test_delay_is_ceiling_times_rand():
    b = Backoff(base=0.5, cap=100.0, rand=lambda: 0.5)
    assert b.next_delay() == pytest.approx(0.25)
    assert b.next_delay() == pytest.approx(0.5)
    assert b.next_delay() == pytest.approx(1.0)


def test_reset_restarts_the_sequence():
    b = Backoff(base=1.0, cap=100.0, rand=lambda: 1.0)
    for _ in range(5):
        b.next_delay()
    assert b.attempt == 5
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() == 1.0
    assert b.next_delay() == 2.0


def test_many_attempts_do_not_overflow_and_stay_capped():
    b = Backoff(base=0.25, cap=20.0, rand=lambda: 1.0)
    delays = [b.next_delay() for _ in range(2000)]
    assert max(delays) == 20.0
    assert delays[-1] == 20.0
    assert b.attempt <= 32


def test_default_random_source_is_within_bounds():
    b = Backoff(base=0.1, cap=3.0)
    for attempt in range(50):
        d = b.next_delay()
        assert 0.0 <= d <= min(3.0, 0.1 * 2**attempt)


def test_rand_is_called_once_per_delay():
    calls = itertools.count()
    b = Backoff(base=1.0, cap=8.0, rand=lambda: (next(calls), 0.5)[1])
    for _ in range(4):
        b.next_delay()
    assert next(calls) == 4


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=200)
@given(
    base=st.floats(min_value=1e-3, max_value=10.0),
    cap=st.floats(min_value=1e-3, max_value=120.0),
    rands=st.lists(unit, min_size=1, max_size=60),
    reset_at=st.none() | st.integers(0, 59),
)
def test_delays_within_full_jitter_envelope(base, cap, rands, reset_at):
    it = iter(rands)
    b = Backoff(base=base, cap=cap, rand=lambda: next(it))
    attempt = 0
    for i, r in enumerate(rands):
        if reset_at == i:
            b.reset()
            attempt = 0
        ceiling = min(cap, base * 2**attempt)
        d = b.next_delay()
        assert 0.0 <= d <= ceiling
        assert d == pytest.approx(ceiling * r)
        attempt += 1
