"""Event encoding and per-transport framing."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core import events as ev
from tidings.core.models import Notification

decode = msgspec.json.decode

NOTE = Notification(id="01ARZ3NDEKTSV4RRFFQ69G5FAV", category="billing",
                    created_at="2024-01-01T00:00:00Z", title='Say "hi"\nnow', data={"k": [1, 2]})
BODY = ev.encode(NOTE)
NOTE_OBJ = decode(BODY)


def test_encode_is_msgspec_json():
    assert ev.encode({"a": 1, "b": [True, None]}) == b'{"a":1,"b":[true,null]}'
    assert b"\n" not in BODY  # newline is escaped


def test_notification_frame():
    frame = ev.notification_frame("deadbeef", 42, BODY)
    assert decode(frame) == {
        "type": "notification", "cursor": "deadbeef:42", "notification": NOTE_OBJ
    }


def test_notification_frame_cursor_is_parseable():
    from tidings.core.cursor import Cursor, parse_cursor

    obj = decode(ev.notification_frame("ab", 7, BODY))
    assert parse_cursor(obj["cursor"]) == Cursor("ab", 7)


def test_feed_frame():
    assert decode(ev.feed_frame(1234, BODY)) == {
        "type": "notification", "feed": 1234, "notification": NOTE_OBJ,
    }


def test_updated_frame():
    assert decode(ev.updated_frame(BODY)) == {"type": "updated", "notification": NOTE_OBJ}


def test_deleted_frame():
    assert decode(ev.deleted_frame("01ARZ3NDEKTSV4RRFFQ69G5FAV")) == {
        "type": "deleted", "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    }


def test_deleted_frame_escapes():
    assert decode(ev.deleted_frame('a"b\\c')) == {"type": "deleted", "id": 'a"b\\c'}


def test_state_frame():
    assert decode(ev.state_frame(["a", "b"], "read")) == {
        "type": "state", "ids": ["a", "b"], "all": False, "state": "read",
    }
    assert decode(ev.state_frame(None, "seen", all_=True)) == {
        "type": "state", "ids": [], "all": True, "state": "seen",
    }


def test_counts_frame_says_where_the_counts_were_read():
    frame = ev.counts_frame(3, 10, 17, 4, None, 6)
    assert decode(frame) == {"type": "counts", "unread": 3, "unseen": 10,
                             "at": {"seq": 17, "feed": 4, "rev": 6}}
    assert ev.is_counts(frame)
    # how late: by position, then revision, then (an expiry between) the lower counts
    assert ev.counts_position(frame) == (17, 4, 6, -3, -10)
    assert ev.counts_position(b'{"type":"counts","unread":1,"unseen":1}') == (-1,) * 5


def test_hello_frame():
    assert decode(ev.hello_frame("ab", "ab:5:9", (1, 2, 7, 9))) == {
        "type": "hello", "epoch": "ab", "cursor": "ab:5:9",
        "counts": {"unread": 1, "unseen": 2, "at": {"seq": 7, "feed": 9, "rev": 0}},
    }


@pytest.mark.parametrize("ok,missed", [(True, 3), (False, 0)])
def test_recovered_frame(ok, missed):
    frame = ev.recovered_frame(ok, missed)
    assert decode(frame) == {"type": "recovered", "ok": ok, "missed": missed}


def test_ws_batch_of_one_is_the_frame():
    f = ev.counts_frame(1, 1, 1, 0)
    assert ev.ws_batch([f]) is f


def test_ws_batch_of_several_is_a_json_array():
    frames = [ev.counts_frame(1, 2, 1, 0), ev.notification_frame("ab", 1, BODY),
              ev.deleted_frame("x")]
    out = decode(ev.ws_batch(frames))
    assert isinstance(out, list)
    assert out == [decode(f) for f in frames]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@settings(max_examples=200)
@given(st.lists(objects, min_size=1, max_size=8))
def test_ws_batch_property(objs):
    frames = [ev.encode(o) for o in objs]
    out = decode(ev.ws_batch(frames))
    if len(objs) == 1:
        assert out == objs[0]
    else:
        assert out == objs


def test_sse_event_without_id():
    f = ev.counts_frame(1, 2, 1, 0)
    assert ev.sse_event(f) == (
        b'data: {"type":"counts","unread":1,"unseen":2,"at":{"seq":1,"feed":0,"rev":0}}\n\n')


def test_sse_event_with_id():
    f = ev.notification_frame("ab", 9, BODY)
    out = ev.sse_event(f, "ab:9")
    assert out == b"id: ab:9\ndata: " + f + b"\n\n"


@settings(max_examples=200)
@given(objects, st.none() | st.from_regex(r"\A[0-9a-f]{1,8}:[0-9]{1,6}\Z"))
def test_sse_event_is_one_data_line(obj, eid):
    frame = ev.encode(obj)
    out = ev.sse_event(frame, eid)
    assert out.endswith(b"\n\n")
    lines = out[:-2].split(b"\n")
    if eid is None:
        assert len(lines) == 1
    else:
        assert len(lines) == 2
        assert lines[0] == b"id: " + eid.encode()
    assert lines[-1].startswith(b"data: ")
    assert decode(lines[-1][len(b"data: "):]) == obj


def test_group_updated_frame():
    group = ev.encode({"id": "g", "count": 2})
    assert decode(ev.group_updated_frame(BODY, group, "seen")) == {
        "type": "updated", "notification": NOTE_OBJ, "group": {"id": "g", "count": 2},
        "state": "seen",
    }


def test_a_bodys_expiry_is_found_in_its_last_bytes():
    """``expires_at`` is a notification's last field (what lets the hub look
    for a ttl in a bounded tail, once per publish)."""
    assert Notification.__struct_fields__[-1] == "expires_at"
    iso = "2026-01-01T00:00:05.123+00:00"
    stored = datetime.fromisoformat(iso).timestamp()
    note = Notification(id="01J9", category="c", created_at="t", title="x" * 500,
                        data={"k": 1}, tags=["a"], group_key="g", actor="ann",
                        deliver_at="2026-01-01T00:00:00.000+00:00", expires_at=iso)
    body = msgspec.json.encode(note)
    assert body.find(ev.EXPIRES, len(body) - ev.EXPIRES_TAIL) >= 0
    # the millisecond the body says, and the one after: the store's time is within it
    for found in (ev.expiry(body), ev.expiry(ev.feed_frame(3, body), trailing=1),
                  ev.frame_expiry(ev.group_updated_frame(body, b'{"id":"x"}', "seen")),
                  ev.payload_expiry(ev.with_group(body, b'{"id":"x","count":2}'))):
        assert found is not None and stored < found <= stored + 0.001
    plain = msgspec.json.encode(Notification(id="01J9", category="c", created_at="t"))
    assert ev.expiry(plain) is None and ev.frame_expiry(ev.counts_frame(1, 1, 1, 0)) is None
    # a key of that name in data is no ttl, and is read as none
    fake = msgspec.json.encode(Notification(id="01J9", category="c", created_at="t",
                                            data={"expires_at": "soon"}))
    assert ev.expiry(fake) is None
