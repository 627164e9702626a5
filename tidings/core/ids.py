"""Time-ordered identifiers.

A notification id is 26 characters of Crockford base32: 48 bits of
milliseconds since the epoch, then 80 random bits (the ULID layout).  Ids
sort by creation time, so ``before=<id>`` pagination and "newest first"
agree, and two nodes never need to coordinate to mint one.

Within one process ids minted in the same millisecond are strictly
increasing: the next is the previous one plus one (ULID's monotonic mode), so
a burst of publishes lists in publish order.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALID = frozenset(_ALPHABET)
# every 10-bit value as its two digits: an id is 13 look-ups, not 26 steps
_PAIRS = [_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024)]
_RAND_MAX = (1 << 80) - 1
_last_ms = -1
_last_rand = 0
_prefix = ""
_high = -1  # the random part above its low 20 bits, and its 12 digits
_high_digits = ""


def _time_prefix(ms: int) -> str:
    # 10 digits = 50 bits; the top 2 are zero for 48-bit times
    p = _PAIRS
    return (p[(ms >> 40) & 1023] + p[(ms >> 30) & 1023] + p[(ms >> 20) & 1023]
            + p[(ms >> 10) & 1023] + p[ms & 1023])


def _rand_digits(r: int) -> str:
    """The 16 digits of the 80 random bits.  Ids of one millisecond count up
    by one, so the 12 digits above the low 20 bits are kept while they stay."""
    global _high, _high_digits
    p = _PAIRS
    high = r >> 20
    if high != _high:
        _high = high
        _high_digits = (p[high >> 50] + p[(high >> 40) & 1023] + p[(high >> 30) & 1023]
                        + p[(high >> 20) & 1023] + p[(high >> 10) & 1023] + p[high & 1023])
    return _high_digits + p[(r >> 10) & 1023] + p[r & 1023]


_POOL_BYTES = 10 * 256
_pool = b""  # random bytes drawn ahead: 10 for each new millisecond
_pool_at = 0


def _random80() -> int:
    """80 random bits.  One ``os.urandom`` call per 256 of them: the call
    lets go of the GIL (getrandom may block), and handing the GIL to the
    store's writer thread and back cost the event loop more than the bytes."""
    global _pool, _pool_at
    at = _pool_at
    if at >= len(_pool):
        _pool, at = os.urandom(_POOL_BYTES), 0
    _pool_at = at + 10
    return int.from_bytes(_pool[at:at + 10], "big")


def _forget_pool() -> None:
    # a forked child draws bytes of its own, never its parent's
    global _pool, _pool_at, _last_ms
    _pool, _pool_at, _last_ms = b"", 0, -1


os.register_at_fork(after_in_child=_forget_pool)


def new_id(now_ms: int | None = None) -> str:
    global _last_ms, _last_rand, _prefix
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ms == _last_ms:
        _last_rand = (_last_rand + 1) & _RAND_MAX  # same millisecond: one more
    else:
        _last_ms, _prefix = ms, _time_prefix(ms)
        _last_rand = _random80()
    return _prefix + _rand_digits(_last_rand)


def id_at(ms: int) -> str:
    """A fresh id for time ``ms`` that leaves the monotonic sequence alone:
    for a notification scheduled for later, whose id sorts by its delivery
    time.  (Minting it with ``new_id`` would restart the sequence of the
    current millisecond, and the next id of this one could sort lower.)"""
    rand = int.from_bytes(os.urandom(10), "big")
    p = _PAIRS
    return _time_prefix(ms) + "".join(p[(rand >> s) & 1023] for s in range(70, -1, -10))


_TIME_MAX = (1 << 48) - 1  # the last millisecond an id can hold (the year 10889)


def id_floor(ms: int) -> str:
    """The lowest id of time ``ms``: every id minted before ``ms`` sorts below it.
    A time before the epoch is the epoch's (negative, its bits wrapped round
    to an id above every other), one past the ids' range the last one's."""
    return _time_prefix(min(max(ms, 0), _TIME_MAX)) + "0" * 16


def is_id(text: object) -> bool:
    return isinstance(text, str) and len(text) == 26 and all(c in _VALID for c in text)


def id_time_ms(nid: str) -> int:
    value = 0
    for c in nid[:10]:
        value = (value << 5) | _ALPHABET.index(c)
    # 26 chars = 130 bits and the time sits above the 80 random bits, so the
    # first 10 chars (the top 50 bits, whose top 2 are zero) are the time.
    return value


def new_epoch() -> str:
    """A short random stream epoch: it changes only when a user's history is lost."""
    return os.urandom(4).hex()
