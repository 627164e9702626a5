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
from base64 import b32encode

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALID = frozenset(_ALPHABET)


# RFC 4648 base32 digits -> Crockford digits, so base64's C encoder does the work.
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
_last_ms = -1
_last_rand = 0
_prefix = ""


def _time_prefix(ms: int) -> str:
    out = []
    for _ in range(10):  # 50 bits; the top 2 are zero
        out.append(_ALPHABET[ms & 31])
        ms >>= 5
    return "".join(reversed(out))


def new_id(now_ms: int | None = None) -> str:
    global _last_ms, _last_rand, _prefix
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ms == _last_ms:
        _last_rand = (_last_rand + 1) & ((1 << 80) - 1)  # same millisecond: one more
    else:
        _last_ms, _prefix = ms, _time_prefix(ms)
        _last_rand = int.from_bytes(os.urandom(10), "big")
    # 80 random bits are exactly 16 base32 digits: no padding to strip
    return _prefix + b32encode(_last_rand.to_bytes(10, "big")).translate(_CROCKFORD).decode()


def id_at(ms: int) -> str:
    """A fresh id for time ``ms`` that leaves the monotonic sequence alone:
    for a notification scheduled for later, whose id sorts by its delivery
    time.  (Minting it with ``new_id`` would restart the sequence of the
    current millisecond, and the next id of this one could sort lower.)"""
    rand = int.from_bytes(os.urandom(10), "big")
    return _time_prefix(ms) + b32encode(rand.to_bytes(10, "big")).translate(_CROCKFORD).decode()


def id_floor(ms: int) -> str:
    """The lowest id of time ``ms``: every id minted before ``ms`` sorts below it."""
    return _time_prefix(ms) + "0" * 16


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
