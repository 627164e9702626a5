from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.lru import LRU


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_least_recently_used_is_evicted_first():
    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)
    assert "b" not in c
    assert c.get("a") == 1 and c.get("c") == 3


def test_entries_expire_after_their_ttl():
    clock = Clock()
    c = LRU(10, ttl=5, clock=clock)
    c.put("a", 1)
    c.put("short", 2, ttl=1)
    c.put("long", 3, ttl=99)  # never longer than the cache's own ttl
    clock.now = 1.0
    assert c.get("short") is None
    assert c.get("a") == 1
    clock.now = 5.0
    assert c.get("a") is None and c.get("long") is None
    assert len(c) == 0


def test_hits_misses_and_pop():
    c = LRU(10)
    c.put(("app", "u1"), 1)
    c.put(("app", "u2"), 2)
    c.put(("other", "u1"), 3)
    assert c.get(("app", "u1")) == 1 and c.get("nope") is None
    assert (c.hits, c.misses) == (1, 1)
    c.pop(("app", "u1"))
    c.pop("never there")
    c.pop(("app", "u2"))
    assert len(c) == 1 and c.get(("other", "u1")) == 3
    c.clear()
    assert len(c) == 0


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError):
        LRU(0)


@given(st.lists(st.tuples(st.integers(0, 20), st.integers()), max_size=200),
       st.integers(1, 8))
def test_never_holds_more_than_maxsize_and_keeps_the_latest_value(ops, maxsize):
    c = LRU(maxsize)
    model: dict[int, int] = {}
    for k, v in ops:
        c.put(k, v)
        model[k] = v
        assert len(c) <= maxsize
    for k in list(c._data):
        assert c.get(k) == model[k]


def test_pop_where_drops_the_entries_whose_value_passes():
    c = LRU(10)
    for k, v in [("a", 1), ("b", 2), ("c", 3), ("d", 4)]:
        c.put(k, v)
    assert c.pop_where(lambda v: v % 2 == 0) == 2
    assert [k for k in "abcd" if k in c] == ["a", "c"]
    assert c.pop_where(lambda v: v > 10) == 0
