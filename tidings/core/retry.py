"""The retry schedule of outbound deliveries (webhook, Web Push, e-mail).

A failed delivery is retried after an exponentially growing, fully jittered
delay ("full jitter", AWS Architecture Blog, "Exponential Backoff And
Jitter"): when a receiver comes back after an outage, the backlog of every
app does not arrive in one synchronized wave.  After ``max_attempts`` the job
goes to the dead-letter list instead.

Unlike :class:`tidings.core.backoff.Backoff` (one reconnecting client, state
in memory), the schedule here is stateless: the attempt count lives in the
durable job, so any node can compute the next time after a restart.  The
random source and the clock are arguments, so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to give up.

    The defaults spread 16 attempts over at most about a day (about half a
    day on average): ceilings 5 s, 10 s, 20 s ... capped at 6 h.  That
    outlasts a receiver's deploy or a provider's regional incident without
    keeping a dead endpoint's jobs forever.
    """

    base: float = 5.0  # seconds; the ceiling of the first retry's delay
    cap: float = 6 * 3600.0  # no single wait is longer than this
    max_attempts: int = 16  # attempts in all, the first one included
    # A receiver's Retry-After is honoured up to this many seconds; a larger
    # value (or a date far ahead) is clamped so a typo cannot park a job for a year.
    max_retry_after: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ValueError("retry policy needs 0 < base <= cap")
        if self.max_attempts < 1:
            raise ValueError("retry policy needs max_attempts >= 1")
        if self.max_retry_after < 0:
            raise ValueError("retry policy needs max_retry_after >= 0")

    def ceiling(self, failures: int) -> float:
        """The upper bound of the wait after the ``failures``-th failed attempt."""
        if failures < 1:
            raise ValueError("failures counts from 1")
        # min() before the power would not help: 2**1100 is a float overflow.
        exponent = min(failures - 1, 64)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """A full-jitter wait in ``[0, ceiling(failures)]``."""
        return self.ceiling(failures) * rand()

    def next_at(
        self,
        failures: int,
        now: float,
        rand: Callable[[], float] = random.random,
        retry_after: float | None = None,
    ) -> float | None:
        """The unix time of the next attempt, or ``None``: dead-letter the job.

        ``failures`` counts the failed attempts so far, this one included.  A
        receiver's ``retry_after`` (seconds) is a lower bound on the wait: it
        asked for at least that long, and jitter may only add to it.
        """
        if failures >= self.max_attempts:
            return None
        wait = self.delay(failures, rand)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return now + wait


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3).

    Either delay-seconds or an HTTP-date; a date in the past means "now" (0).
    Anything unparsable is ignored (``None``): the normal schedule applies.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # delay-seconds is 1*DIGIT: no sign, no fraction
        # A 5,000-digit value would trip int()'s digit limit; it means "very long" anyway.
        return float(int(value)) if len(value) <= 12 else 1e12
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
