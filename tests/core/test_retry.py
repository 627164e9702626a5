"""The outbound retry schedule: full jitter, cap, dead letter, Retry-After."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.retry import RetryPolicy, parse_retry_after


def test_defaults_spread_sixteen_attempts_over_about_a_day():
    p = RetryPolicy()
    assert (p.base, p.cap, p.max_attempts) == (5.0, 6 * 3600.0, 16)
    worst = sum(p.ceiling(k) for k in range(1, p.max_attempts))
    assert 20 * 3600 < worst < 26 * 3600


def test_ceilings_double_then_cap():
    p = RetryPolicy(base=1.0, cap=10.0, max_attempts=100)
    assert [p.ceiling(k) for k in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_huge_attempt_counts_do_not_overflow():
    p = RetryPolicy(base=1.0, cap=60.0, max_attempts=10**6)
    assert p.ceiling(5000) == 60.0


def test_delay_is_full_jitter():
    p = RetryPolicy(base=2.0, cap=100.0)
    assert p.delay(3, rand=lambda: 0.0) == 0.0
    assert p.delay(3, rand=lambda: 0.25) == pytest.approx(2.0)
    assert p.delay(3, rand=lambda: 1.0) == 8.0


def test_next_at_is_absolute_and_gives_up_after_max_attempts():
    p = RetryPolicy(base=1.0, cap=100.0, max_attempts=3)
    assert p.next_at(1, now=1000.0, rand=lambda: 0.5) == 1000.5
    assert p.next_at(2, now=1000.0, rand=lambda: 0.5) == 1001.0
    assert p.next_at(3, now=1000.0, rand=lambda: 0.5) is None
    assert p.next_at(4, now=1000.0, rand=lambda: 0.5) is None


def test_single_attempt_policy_never_retries():
    assert RetryPolicy(max_attempts=1).next_at(1, now=0.0) is None


def test_retry_after_is_a_lower_bound_clamped_by_max_retry_after():
    p = RetryPolicy(base=1.0, cap=10.0, max_attempts=5, max_retry_after=300.0)
    assert p.next_at(1, now=0.0, rand=lambda: 1.0, retry_after=120.0) == 120.0
    # the jittered wait already exceeds a short Retry-After: keep it
    assert p.next_at(4, now=0.0, rand=lambda: 1.0, retry_after=0.5) == 8.0
    assert p.next_at(1, now=0.0, rand=lambda: 1.0, retry_after=10**9) == 300.0
    assert p.next_at(1, now=0.0, rand=lambda: 1.0, retry_after=0.0) == 1.0
    # Retry-After does not resurrect a job that is out of attempts
    assert p.next_at(5, now=0.0, retry_after=1.0) is None


@pytest.mark.parametrize(
    "kw", [{"base": 0}, {"base": -1}, {"base": 10, "cap": 5}, {"max_attempts": 0},
           {"max_retry_after": -1}],
)
def test_bad_policies_are_rejected(kw):
    with pytest.raises(ValueError):
        RetryPolicy(**kw)


def test_ceiling_counts_failures_from_one():
    with pytest.raises(ValueError):
        RetryPolicy().ceiling(0)


def test_seeded_randomness_gives_a_reproducible_schedule():
    p = RetryPolicy(base=1.0, cap=50.0, max_attempts=8)

    def schedule(seed):
        rand = random.Random(seed).random
        return [p.next_at(k, now=0.0, rand=rand) for k in range(1, 9)]

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)
    assert schedule(7)[-1] is None


@settings(max_examples=300)
@given(
    base=st.floats(min_value=1e-3, max_value=60.0),
    factor=st.floats(min_value=1.0, max_value=1e4),
    max_attempts=st.integers(1, 40),
    failures=st.integers(1, 60),
    r=st.floats(min_value=0.0, max_value=1.0),
    now=st.floats(min_value=0.0, max_value=4e9),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1e7),
)
def test_next_at_stays_in_its_envelope(base, factor, max_attempts, failures, r, now,
                                       retry_after):
    p = RetryPolicy(base=base, cap=base * factor, max_attempts=max_attempts)
    at = p.next_at(failures, now=now, rand=lambda: r, retry_after=retry_after)
    if failures >= max_attempts:
        assert at is None
        return
    assert at is not None
    wait = at - now
    ceiling = min(p.cap, base * 2.0 ** (failures - 1))
    floor = min(retry_after or 0.0, p.max_retry_after)
    assert wait >= floor - 1e-6 * max(1.0, now)
    assert wait <= max(ceiling, floor) + 1e-6 * max(1.0, now)


# -- Retry-After ---------------------------------------------------------------


def test_retry_after_seconds():
    assert parse_retry_after("120", now=0.0) == 120.0
    assert parse_retry_after(" 0 ", now=0.0) == 0.0


def test_retry_after_http_date():
    now = datetime(2015, 10, 21, 7, 20, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 480.0
    when = datetime(2015, 10, 21, 7, 21, tzinfo=UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == 60.0


def test_retry_after_in_the_past_means_now():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=2e9) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "\u0661\u0662", "12 s"])
def test_unparsable_retry_after_is_ignored(value):
    assert parse_retry_after(value, now=0.0) is None


def test_absurdly_long_retry_after_does_not_crash():
    assert parse_retry_after("9" * 5000, now=0.0) >= 1e12


@given(st.text(max_size=40))
def test_retry_after_never_raises(value):
    got = parse_retry_after(value, now=1e9)
    assert got is None or got >= 0.0
