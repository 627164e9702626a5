"""A bounded LRU map with a time-to-live, for the hot-path cache.

Pure: the clock is injected, nothing here does I/O.  Entries expire after
``ttl`` seconds even if nothing invalidated them -- the safety net for an
invalidation lost with a broker message (the broker is at most once).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_MISSING = object()


class LRU(Generic[K, V]):
    def __init__(self, maxsize: int, ttl: float = float("inf"),
                 clock: Callable[[], float] = time.monotonic):
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl = ttl
        self.clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        item = self._data.get(key)
        if item is None:
            self.misses += 1
            return default
        expires, value = item
        if expires <= self.clock():
            del self._data[key]
            self.misses += 1
            return default
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        expires = self.clock() + (self.ttl if ttl is None else min(ttl, self.ttl))
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def remaining(self, key: K) -> float:
        """Seconds until ``key``'s entry expires; 0.0 when there is none."""
        item = self._data.get(key)
        return 0.0 if item is None else max(0.0, item[0] - self.clock())

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def pop_where(self, test: Callable[[V], bool]) -> int:
        """Drop every entry whose value passes ``test``; returns how many.
        A walk over every entry: for rare invalidations by something other
        than the key (an API key revoked by its prefix)."""
        gone = [k for k, (_, v) in self._data.items() if test(v)]
        for k in gone:
            del self._data[k]
        return len(gone)

    def clear(self) -> None:
        self._data.clear()
