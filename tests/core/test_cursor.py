"""Cursor parsing/formatting and the recovery decision."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidings.core.cursor import Cursor, Recovery, decide_recovery, parse_cursor
from tidings.errors import BadRequest

MAX18 = 10**18 - 1
HEX = "0123456789abcdef"

epochs = st.text(alphabet=HEX, min_size=1, max_size=16)
positions = st.integers(min_value=0, max_value=MAX18)
cursors = st.builds(Cursor, epochs, positions, st.none() | positions)


def _expect_bad(text):
    with pytest.raises(BadRequest) as ei:
        parse_cursor(text)
    assert ei.value.code == "bad_cursor"
    assert ei.value.field == "cursor"
    assert ei.value.status == 400
    return ei.value


# -- parse / format --------------------------------------------------------------


@pytest.mark.parametrize("text", [None, ""])
def test_no_cursor_means_start_live(text):
    assert parse_cursor(text) is None


def test_parse_two_part():
    c = parse_cursor("a1b2:42")
    assert c == Cursor("a1b2", 42, None)
    assert c.feed is None
    assert str(c) == "a1b2:42"


def test_parse_three_part():
    c = parse_cursor("deadbeef:7:1000")
    assert c == Cursor("deadbeef", 7, 1000)
    assert str(c) == "deadbeef:7:1000"


def test_parse_limits_accepted():
    c = parse_cursor("f" * 16 + ":" + "9" * 18 + ":" + "9" * 18)
    assert c == Cursor("f" * 16, MAX18, MAX18)


def test_parse_zero():
    assert parse_cursor("0:0:0") == Cursor("0", 0, 0)


def test_leading_zeros_parse_to_int():
    assert parse_cursor("ab:007") == Cursor("ab", 7)


def test_cursor_is_frozen():
    c = Cursor("ab", 1)
    with pytest.raises(AttributeError):
        c.seq = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "ab",  # no seq
        "ab:",  # empty seq
        ":1",  # empty epoch
        "AB:1",  # upper-case epoch
        "xy:1",  # not hex
        "f" * 17 + ":1",  # epoch too long
        "ab:" + "1" * 19,  # seq too long
        "ab:1:" + "1" * 19,  # feed too long
        "ab:-1",
        "ab:1:-1",
        "ab:1:2:3",
        "ab:1:",
        "ab::1",
        " ab:1",
        "ab:1 ",
        "ab: 1",
        "ab:1\n",  # trailing newline ($ would accept this)
        "ab:1:2\n",
        "ab:\u0663",  # Arabic-Indic digit three
        "ab:1:\u0663",
        "ab:\uff11",  # fullwidth digit one
        "ab:1.5",
        "ab:1e3",
        "ab:+1",
        "ab:0x10",
        "a" * 65,
        "ab:" + "0" * 70,  # > 64 chars overall
    ],
)
def test_parse_rejects_malformed(text):
    _expect_bad(text)


@pytest.mark.parametrize("value", [0, 1, 1.5, b"ab:1", ["ab:1"], {"c": 1}, b""])
def test_parse_rejects_non_strings(value):
    _expect_bad(value)


@settings(max_examples=200)
@given(cursors)
def test_format_parse_round_trip(c):
    text = str(c)
    assert len(text) <= 64
    assert parse_cursor(text) == c
    assert str(parse_cursor(text)) == text
    assert text.count(":") == (1 if c.feed is None else 2)


def _oracle_valid(text: str) -> bool:
    """Independent definition of a well-formed cursor."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        return False
    epoch, *nums = parts
    if not (1 <= len(epoch) <= 16 and all(ch in HEX for ch in epoch)):
        return False
    return all(1 <= len(n) <= 18 and all(ch in "0123456789" for ch in n) for n in nums)


near_miss = st.text(alphabet="0123456789abcdefABCDEFxyz:- \n\t\u0663\uff11+.", max_size=70)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), near_miss))
@example("ab:1\n")
@example("ab:1:\u0663")
@example("")
def test_parse_junk_only_bad_request(text):
    try:
        c = parse_cursor(text)
    except BadRequest as e:
        assert e.code == "bad_cursor"
        assert e.field == "cursor"
        assert text != ""
        assert not _oracle_valid(text)
        return
    # Anything else raised propagates and fails the test.
    if text == "":
        assert c is None
        return
    assert isinstance(c, Cursor)
    assert _oracle_valid(text)
    # The parsed cursor round-trips (modulo leading zeros in the numbers).
    assert parse_cursor(str(c)) == c
    epoch, seq, *feed = text.split(":")
    assert c.epoch == epoch and c.seq == int(seq)
    assert c.feed == (int(feed[0]) if feed else None)


@settings(max_examples=200)
@given(st.binary(max_size=40) | st.integers() | st.floats(allow_nan=True) | st.lists(st.text()))
def test_parse_non_text_only_bad_request(value):
    _expect_bad(value)


# -- decide_recovery -------------------------------------------------------------


def _decide(cursor, **kw):
    base = dict(epoch="ab", head_seq=10, oldest_seq=1, head_feed=100, oldest_feed=1, replay_max=50)
    base.update(kw)
    return decide_recovery(cursor, **base)


def test_no_cursor_returns_none():
    assert _decide(None) is None


def test_up_to_date_cursor_ok_with_nothing_missed():
    r = _decide(Cursor("ab", 10, 100))
    assert r == Recovery(True, 10, 100, 0)


def test_partial_replay_counts_both_streams():
    r = _decide(Cursor("ab", 7, 95))
    assert r.ok
    assert (r.replay_from_seq, r.replay_from_feed, r.missed) == (7, 95, 3 + 5)
    assert r.reason == ""


def test_two_part_cursor_does_not_replay_feed():
    r = _decide(Cursor("ab", 7))
    assert r.ok
    assert r.replay_from_seq == 7
    assert r.replay_from_feed == 100  # live from the feed head
    assert r.missed == 3


def test_epoch_mismatch():
    r = _decide(Cursor("cd", 10, 100))
    assert not r.ok and r.reason == "epoch"
    assert (r.replay_from_seq, r.replay_from_feed, r.missed) == (10, 100, 0)


def test_seq_ahead_of_head():
    r = _decide(Cursor("ab", 11, 100))
    assert not r.ok and r.reason == "ahead"
    assert (r.replay_from_seq, r.replay_from_feed, r.missed) == (10, 100, 0)


def test_feed_ahead_of_head():
    r = _decide(Cursor("ab", 10, 101))
    assert not r.ok and r.reason == "ahead"


def test_seq_older_than_retention():
    # oldest retained is 5; a client at 3 needs 4, which is gone.
    r = _decide(Cursor("ab", 3, 100), oldest_seq=5)
    assert not r.ok and r.reason == "retention"
    assert (r.replay_from_seq, r.missed) == (10, 0)


def test_seq_exactly_at_retention_edge_is_ok():
    # client at 4 needs 5.., oldest retained is 5.
    r = _decide(Cursor("ab", 4, 100), oldest_seq=5)
    assert r.ok and r.missed == 6


def test_feed_older_than_retention():
    r = _decide(Cursor("ab", 10, 50), oldest_feed=60)
    assert not r.ok and r.reason == "retention"


def test_feed_retention_ignored_for_two_part_cursor():
    r = _decide(Cursor("ab", 10), oldest_feed=100)
    assert r.ok and r.missed == 0


def test_nothing_retained_but_cursor_at_head_is_ok():
    r = _decide(Cursor("ab", 10, 100), oldest_seq=11, oldest_feed=101)
    assert r.ok and r.missed == 0


def test_nothing_retained_and_cursor_behind_is_not_ok():
    r = _decide(Cursor("ab", 9, 100), oldest_seq=11, oldest_feed=101)
    assert not r.ok and r.reason == "retention"


def test_too_many_missed():
    r = _decide(Cursor("ab", 0, 50), replay_max=59)
    assert not r.ok and r.reason == "too_many"
    assert (r.replay_from_seq, r.replay_from_feed, r.missed) == (10, 100, 0)


def test_missed_exactly_replay_max_is_ok():
    r = _decide(Cursor("ab", 0, 50), replay_max=60)
    assert r.ok and r.missed == 60


def test_replay_max_zero_only_accepts_up_to_date():
    assert _decide(Cursor("ab", 10, 100), replay_max=0).ok
    assert not _decide(Cursor("ab", 9, 100), replay_max=0).ok


@st.composite
def recovery_inputs(draw):
    epoch = draw(st.sampled_from(["ab", "cd", "0"]))
    head_seq = draw(st.integers(0, 1000))
    oldest_seq = draw(st.integers(0, head_seq + 1))
    head_feed = draw(st.integers(0, 1000))
    oldest_feed = draw(st.integers(0, head_feed + 1))
    replay_max = draw(st.integers(0, 300))
    c_epoch = draw(st.sampled_from([epoch, epoch, epoch, "ff"]))
    c_seq = draw(st.integers(0, head_seq + 20))
    c_feed = draw(st.none() | st.integers(0, head_feed + 20))
    kw = dict(
        epoch=epoch, head_seq=head_seq, oldest_seq=oldest_seq, head_feed=head_feed,
        oldest_feed=oldest_feed, replay_max=replay_max,
    )
    return Cursor(c_epoch, c_seq, c_feed), kw


@settings(max_examples=300)
@given(recovery_inputs())
def test_recovery_invariants(args):
    c, kw = args
    r = decide_recovery(c, **kw)
    assert isinstance(r, Recovery)
    head_seq, head_feed = kw["head_seq"], kw["head_feed"]
    feed_from = head_feed if c.feed is None else c.feed
    expected_missed = (head_seq - c.seq) + (head_feed - feed_from)

    epoch_ok = c.epoch == kw["epoch"]
    not_ahead = c.seq <= head_seq and (c.feed is None or c.feed <= head_feed)
    retained = c.seq + 1 >= kw["oldest_seq"] and (c.feed is None or c.feed + 1 >= kw["oldest_feed"])
    within = expected_missed <= kw["replay_max"]

    if r.ok:
        assert r.replay_from_seq == c.seq
        assert r.replay_from_feed == feed_from
        assert r.missed == expected_missed
        assert r.missed >= 0
        assert r.reason == ""
    else:
        assert r.missed == 0
        assert r.replay_from_seq == head_seq
        assert r.replay_from_feed == head_feed
        assert r.reason in {"epoch", "ahead", "retention", "too_many"}

    # Each failure condition alone rules out recovery ...
    if not epoch_ok:
        assert not r.ok and r.reason == "epoch"
    if not not_ahead:
        assert not r.ok
    if not retained:
        assert not r.ok
    if epoch_ok and not_ahead and not within:
        assert not r.ok
    # ... and together they are exactly the conditions for recovery.
    assert r.ok == (epoch_ok and not_ahead and retained and within)


@settings(max_examples=100)
@given(recovery_inputs())
def test_recovery_ignores_cursor_none(args):
    _, kw = args
    assert decide_recovery(None, **kw) is None
