"""OutboundQueue: bounded by count and bytes, sticky overflow."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.queue import OutboundQueue


def test_empty_queue():
    q = OutboundQueue(max_events=3, max_bytes=100)
    assert len(q) == 0
    assert q.nbytes == 0
    assert not q.overflowed
    assert q.drain() == []


def test_push_and_drain_preserve_order():
    q = OutboundQueue(max_events=10, max_bytes=100)
    assert q.push(b"a")
    assert q.push(b"bb")
    assert q.push(b"ccc")
    assert len(q) == 3
    assert q.nbytes == 6
    assert q.drain() == [b"a", b"bb", b"ccc"]
    assert len(q) == 0
    assert q.nbytes == 0
    assert q.drain() == []


def test_push_tells_how_many_frames_are_pending():
    """1 means the queue was empty: the stream wakes its writer then only."""
    q = OutboundQueue(max_events=3, max_bytes=100)
    assert [q.push(b"a"), q.push(b"b")] == [1, 2]
    q.drain()
    assert [q.push(b"c"), q.push(b"d"), q.push(b"e")] == [1, 2, 3]
    assert q.push(b"f") == 0  # over the cap
    assert q.push(b"g") == 0


def test_drain_returns_a_fresh_list():
    q = OutboundQueue(max_events=10, max_bytes=100)
    q.push(b"x")
    taken = q.drain()
    q.push(b"y")
    assert taken == [b"x"]
    assert q.drain() == [b"y"]


def test_event_cap_exactly_reached_is_fine():
    q = OutboundQueue(max_events=2, max_bytes=100)
    assert q.push(b"a") and q.push(b"b")
    assert not q.overflowed
    assert not q.push(b"c")
    assert q.overflowed
    assert len(q) == 2
    assert q.nbytes == 2


def test_byte_cap_exactly_reached_is_fine():
    q = OutboundQueue(max_events=100, max_bytes=10)
    assert q.push(b"x" * 6)
    assert q.push(b"x" * 4)  # exactly 10
    assert not q.overflowed
    assert not q.push(b"x")
    assert q.overflowed
    assert q.nbytes == 10


def test_single_frame_larger_than_byte_cap_overflows():
    q = OutboundQueue(max_events=100, max_bytes=10)
    assert not q.push(b"x" * 11)
    assert q.overflowed
    assert len(q) == 0 and q.nbytes == 0


def test_empty_frame_still_counts_as_an_event():
    q = OutboundQueue(max_events=1, max_bytes=10)
    assert q.push(b"")
    assert not q.push(b"")
    assert q.overflowed


def test_overflow_is_sticky_even_after_drain():
    q = OutboundQueue(max_events=1, max_bytes=100)
    q.push(b"a")
    assert not q.push(b"b")
    assert q.drain() == [b"a"]
    # The connection is being closed; nothing more is accepted.
    assert not q.push(b"c")
    assert q.overflowed
    assert len(q) == 0


def test_zero_caps_refuse_everything():
    q = OutboundQueue(max_events=0, max_bytes=0)
    assert not q.push(b"")
    assert q.overflowed


ops = st.lists(st.one_of(st.binary(max_size=40), st.none()), max_size=60)


@settings(max_examples=300)
@given(st.integers(0, 12), st.integers(0, 200), ops)
def test_queue_never_exceeds_caps_and_overflows_exactly_at_cap(max_events, max_bytes, operations):
    q = OutboundQueue(max_events=max_events, max_bytes=max_bytes)
    model: list[bytes] = []
    overflowed = False
    delivered: list[bytes] = []
    accepted: list[bytes] = []
    for op in operations:
        if op is None:  # drain
            got = q.drain()
            assert got == model
            delivered.extend(got)
            model = []
        else:
            would_cross = len(model) + 1 > max_events or sum(map(len, model)) + len(op) > max_bytes
            ok = q.push(op)
            assert bool(ok) == (not overflowed and not would_cross)
            if ok:
                assert ok == len(model) + 1  # the frames pending with it
                model.append(op)
                accepted.append(op)
            else:
                overflowed = True
        assert q.overflowed == overflowed
        assert len(q) == len(model) <= max_events
        assert q.nbytes == sum(map(len, model)) <= max_bytes
    delivered.extend(q.drain())
    assert delivered == accepted  # nothing lost, nothing reordered, nothing invented
