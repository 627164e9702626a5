"""Token buckets: the arithmetic of rate limits, with an injected clock.

A bucket holds up to ``burst`` tokens and refills continuously at ``rate``
tokens a second; a bucket nobody has touched is full.  Taking ``cost``
tokens succeeds when that many are there.  Otherwise nothing is taken and
the answer is how long until there will be enough: the ``Retry-After`` of a
429.  Not taking anything on a refusal means a client that keeps retrying
too early does not push its own wait further out.

The same arithmetic runs inside Redis (``tidings/broker/lua/take.lua``) for
limits shared by every node of a cluster; the two must stay in step, and the
broker contract suite checks both against the same expectations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

# Refilling in floating point can land a hair below a whole token after
# exactly the advertised wait; a caller that slept the full wait is served.
EPSILON = 1e-9


def check(rate: float, burst: int, cost: int) -> None:
    """Reject limits no bucket can honour (a cost above the burst would wait forever)."""
    if isinstance(rate, bool) or not (
        isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0
    ):
        raise ValueError(f"rate must be a positive number of tokens a second, not {rate!r}")
    if not (isinstance(burst, int) and not isinstance(burst, bool) and burst >= 1):
        raise ValueError(f"burst must be a positive integer, not {burst!r}")
    if not (isinstance(cost, int) and not isinstance(cost, bool) and 1 <= cost <= burst):
        raise ValueError(f"cost must be an integer from 1 to burst ({burst}), not {cost!r}")


def take(
    tokens: float, last: float, now: float, rate: float, burst: int, cost: int
) -> tuple[float, float]:
    """One step of a bucket that held ``tokens`` at time ``last``.

    Returns ``(tokens left at now, seconds to wait)``; the wait is 0.0 when
    the cost was taken.  A clock that went backwards refills nothing.
    """
    if now > last:
        tokens = min(float(burst), tokens + (now - last) * rate)
    if tokens >= cost - EPSILON:
        return max(0.0, tokens - cost), 0.0
    return tokens, (cost - tokens) / rate


class TokenBuckets:
    """Named buckets in one process (the in-process broker's ``take``, and
    each node's per-user buckets of the client API).

    Memory stays bounded: past ``max_keys`` buckets, the ones that have
    refilled completely are forgotten, which changes nothing since a missing
    bucket is a full one.  If more than half the table is still refilling,
    only the half furthest from full is kept -- the heaviest users, whom the
    limit is for -- and the others start full again, early by at most what
    they were missing.  Either way at least ``max_keys // 2`` new keys fit
    before the next pass, so a pass costs O(1) per key amortized, whatever
    the number of distinct keys (a million users).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        # key -> [tokens, last, full_at]
        self._buckets: dict[Hashable, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, rate: float, burst: int, cost: int = 1) -> float:
        """Take ``cost`` tokens from bucket ``key``; 0.0, or the seconds to wait."""
        check(rate, burst, cost)
        return self.take_checked(key, rate, burst, cost)

    def take_checked(self, key: Hashable, rate: float, burst: int, cost: int = 1) -> float:
        """:meth:`take` for a limit that passed :func:`check` already (a
        setting checked once at start): a fifth less time per take."""
        now = self.clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                self._prune(now)
                buckets = self._buckets
            tokens, last = float(burst), now
        else:
            tokens, last = bucket[0], bucket[1]
        tokens, wait = take(tokens, last, now, rate, burst, cost)
        buckets[key] = [tokens, now, now + (burst - tokens) / rate]
        return wait

    def give(self, key: Hashable, rate: float, burst: int, cost: int = 1) -> None:
        """Put back ``cost`` tokens taken from bucket ``key`` by a take whose
        work turned out not to count (never above ``burst``)."""
        bucket = self._buckets.get(key)
        if bucket is None:  # forgotten meanwhile: a missing bucket is full
            return
        now = self.clock()
        tokens, _ = take(bucket[0], bucket[1], now, rate, burst, 0)
        tokens = min(float(burst), tokens + cost)
        self._buckets[key] = [tokens, now, now + (burst - tokens) / rate]

    def _prune(self, now: float) -> None:
        live = {k: b for k, b in self._buckets.items() if b[2] > now}
        keep = self.max_keys // 2
        if len(live) > keep:
            ranked = sorted(live.items(), key=_full_at)
            live = dict(ranked[len(ranked) - keep:])
        self._buckets = live


def _full_at(item: tuple[Hashable, list[float]]) -> float:
    return item[1][2]
