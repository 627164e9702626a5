"""tidings.core.tracking: what the gateway routed becomes per-notification counters."""

from __future__ import annotations

import msgspec

from tidings.core import events
from tidings.core.ids import new_id
from tidings.core.models import Notification
from tidings.core.tracking import DeliveryTracker, feed_nid, personal_nid


def body(nid: str, **fields) -> bytes:
    return msgspec.json.encode(Notification(id=nid, category="c", created_at="t", **fields))


def test_ids_are_read_from_encoded_notifications_and_frames():
    nid = new_id()
    b = body(nid, title="x", group_key="g")
    assert personal_nid(b) == nid.encode()
    assert personal_nid(events.with_group(b, b'{"count":2}')) == nid.encode()
    assert feed_nid(events.feed_frame(7, b)) == nid.encode()
    assert personal_nid(b"[]") is None and feed_nid(b'{"type":"hello"}') is None


def test_fold_counts_users_per_notification_and_app():
    t = DeliveryTracker()
    a, b = new_id(), new_id()
    for _ in range(3):
        t.reached(("app1", body(a)))
    t.reached(("app2", body(a)))  # the same id in another app is another counter
    t.reached(("app1", body(b)))
    t.reached_feed(("app1", events.feed_frame(1, body(b)), 5))
    t.reached_feed(("app1", events.feed_frame(2, body(a)), 0))  # nobody here: nothing
    assert t.fold() == {("app1", "delivered"): 9, ("app2", "delivered"): 1}
    assert t.take() == {
        ("app1", a, "in_app", "delivered"): 3,
        ("app2", a, "in_app", "delivered"): 1,
        ("app1", b, "in_app", "delivered"): 6,
    }
    assert t.fold() == {} and t.take() == {}


def test_users_whose_streams_skipped_a_muted_feed_item_count_as_muted():
    t = DeliveryTracker()
    nid = new_id()
    frame = events.feed_frame(3, body(nid))
    t.reached_feed(("app1", frame, 4))  # four users follow it here...
    for user in ("mia", "mia", "zoe"):  # ...two muted it, mia on two devices
        t.muted_feed(("app1", frame, user))
    assert t.fold() == {("app1", "delivered"): 2, ("app1", "muted"): 2}
    assert t.take() == {("app1", nid, "in_app", "delivered"): 2,
                        ("app1", nid, "in_app", "muted"): 2}
    t.reached_feed(("app1", frame, 1))  # the only user here muted it: nothing delivered
    t.muted_feed(("app1", frame, "mia"))
    assert t.fold() == {("app1", "muted"): 1}


def test_a_failed_write_is_restored_and_memory_is_bounded():
    t = DeliveryTracker(max_pending=2)
    t.add("a", "n1", "webhook", "sent")
    t.add("a", "n1", "webhook", "sent", 2)
    taken = t.take()
    t.add("a", "n2", "email", "failed")
    t.restore(taken)  # the store write failed: nothing is lost...
    assert t.pending == {("a", "n1", "webhook", "sent"): 3, ("a", "n2", "email", "failed"): 1}
    t.add("a", "n3", "push", "sent", 4)  # ...up to max_pending distinct counters
    t.add("a", "n1", "webhook", "sent")  # a known one still adds
    assert ("a", "n3", "push", "sent") not in t.pending
    assert t.dropped == 4 and t.pending[("a", "n1", "webhook", "sent")] == 4
