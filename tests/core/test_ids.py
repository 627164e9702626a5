"""Time-ordered ids (ULID layout) and stream epochs."""

from __future__ import annotations

import os
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.cursor import parse_cursor
from tidings.core.ids import id_time_ms, is_id, new_epoch, new_id

MAX_MS = 2**48 - 1
ms = st.integers(min_value=0, max_value=MAX_MS)
CROCKFORD = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}\Z")


def test_known_layout():
    # Zero time: the first 10 chars (the time part) are all zeros.
    assert new_id(0)[:10] == "0" * 10
    # 1 ms is the lowest time bit: bit 80 = the last bit of char 10.
    assert new_id(1)[:10] == "0000000001"
    # Max 48-bit time: the first char carries only 3 bits ("7"), the rest "Z".
    assert new_id(MAX_MS)[:10] == "7ZZZZZZZZZ"


def test_id_time_ms_known_value():
    t = 1_700_000_000_123
    assert id_time_ms(new_id(t)) == t


def test_default_clock_is_now():
    before = int(time.time() * 1000)
    nid = new_id()
    after = int(time.time() * 1000)
    assert before <= id_time_ms(nid) <= after


@settings(max_examples=200)
@given(ms)
def test_shape_and_time_round_trip(t):
    nid = new_id(t)
    assert len(nid) == 26
    assert CROCKFORD.match(nid)
    assert is_id(nid)
    assert id_time_ms(nid) == t


@settings(max_examples=200)
@given(ms, ms)
def test_ids_sort_by_time(a, b):
    ia, ib = new_id(a), new_id(b)
    if a < b:
        assert ia < ib
    elif a > b:
        assert ia > ib
    else:
        assert ia[:10] == ib[:10]


def test_ids_in_one_millisecond_are_distinct():
    ids = {new_id(1_700_000_000_000) for _ in range(2000)}
    assert len(ids) == 2000


def test_each_millisecond_starts_from_fresh_random_bits():
    # more milliseconds than one draw of the random pool holds
    tails = [new_id(1_700_000_000_000 + i)[10:] for i in range(1000)]
    assert len(set(tails)) == 1000


def test_a_forked_child_never_mints_its_parents_ids():
    new_id(1_700_000_000_000)  # the parent has drawn random bytes ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids of later milliseconds, to the parent
        os.close(read)
        os.write(write, "".join(new_id(1_700_000_000_001 + i) for i in range(20)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_id(1_700_000_000_001 + i) for i in range(20))
    assert len(child) == len(parent) == 20 * 26
    assert child != parent


def test_sorting_a_batch_sorts_by_time():
    times = [5, 3_000_000, 1, 2**40, 77, 2**47 + 3]
    ids = [new_id(t) for t in times]
    assert [id_time_ms(i) for i in sorted(ids)] == sorted(times)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0" * 25,
        "0" * 27,
        "0" * 25 + "I",  # excluded from Crockford
        "0" * 25 + "L",
        "0" * 25 + "O",
        "0" * 25 + "U",
        "0" * 25 + "a",  # lower case not accepted
        "0" * 25 + " ",
        None,
        123,
        b"0" * 26,
        ["0" * 26],
    ],
)
def test_is_id_rejects(value):
    assert not is_id(value)


def test_is_id_accepts_a_hand_written_id():
    assert is_id("01ARZ3NDEKTSV4RRFFQ69G5FAV")


def test_new_epoch_shape():
    e = new_epoch()
    assert re.fullmatch(r"[0-9a-f]{8}", e)
    # An epoch is usable in a cursor.
    assert parse_cursor(f"{e}:0").epoch == e


def test_new_epoch_is_random():
    assert len({new_epoch() for _ in range(200)}) > 190


def test_ids_in_one_millisecond_increase_in_minting_order():
    ids = [new_id(1_700_000_000_000) for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert {id_time_ms(i) for i in ids} == {1_700_000_000_000}
