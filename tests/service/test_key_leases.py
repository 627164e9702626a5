"""API-key buckets with the hot-path cache on: tokens leased from the shared
bucket and spent from memory (tidings/service/ratelimits.py)."""

from __future__ import annotations

import pytest

from tidings.broker.local import LocalBroker
from tidings.config import Settings
from tidings.core.ratelimit import TokenBuckets
from tidings.errors import RateLimited
from tidings.service.ratelimits import RateLimits
from tidings.store.base import KeyRecord


class CountingBroker(LocalBroker):
    """The in-process broker on a clock that stands still, counting the
    shared-bucket round trips."""

    def __init__(self) -> None:
        super().__init__()
        self._buckets = TokenBuckets(lambda: 1000.0)
        self.takes: list[int] = []

    async def take(self, key: str, rate: float, burst: int, cost: int = 1) -> float:
        self.takes.append(cost)
        return await super().take(key, rate, burst, cost)


KEY = KeyRecord("app", "pfx", frozenset({"publish"}))


@pytest.mark.parametrize("cache", [True, False])
async def test_key_tokens_are_leased_with_the_cache_and_never_exceed_the_bucket(cache):
    broker = CountingBroker()
    # 0.05 s of 1000/s: leases of 50, a fortieth of the burst of 2000
    limits = RateLimits(Settings(cache=cache, key_rate=1000.0, key_burst=2000), None, broker)
    for _ in range(100):
        await limits.charge_key(KEY)
    assert broker.takes == ([50, 50] if cache else [1] * 100)
    # what this node holds plus what the shared bucket has left is never more
    # than the bucket held: the leases come out of it
    other = RateLimits(Settings(cache=False, key_rate=1000.0, key_burst=2000), None, broker)
    granted = 0
    with pytest.raises(RateLimited):
        for _ in range(2000):
            await other.charge_key(KEY)
            granted += 1
    assert granted == 2000 - 100


async def test_a_lease_is_not_needed_for_small_buckets_nor_for_large_costs():
    broker = CountingBroker()
    limits = RateLimits(Settings(cache=True, key_rate=10.0, key_burst=5), None, broker)
    for _ in range(5):
        await limits.charge_key(KEY)
    with pytest.raises(RateLimited):
        await limits.charge_key(KEY)
    assert broker.takes == [1] * 6  # a lease would be under one token: none taken
