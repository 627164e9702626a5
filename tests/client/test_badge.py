"""The badge rule (tidings.client.badge, docs/protocol.md "Counts and the
badge"), sans I/O: counts and notifications in, in racy orders, the badge out."""

from __future__ import annotations

import pytest

from tests.client.badge_scenarios import SCENARIOS, counts, hello, personal, play
from tidings.client.badge import Badge


@pytest.mark.parametrize("case", SCENARIOS, ids=[c["name"] for c in SCENARIOS])
def test_the_badge_ends_exact(case):
    badge = play(case["events"], resumed=case["cursor"] is not None)
    assert badge.counts == case["badge"]
    assert not badge.ask


def test_nothing_to_show_before_hello():
    badge = Badge()
    badge.notification(personal(1))
    assert badge.counts is None
    assert not badge.take({"unread": "1"}) and not badge.take(None)
    assert badge.counts is None


def test_older_counts_are_refused_and_hello_starts_over():
    badge = Badge()
    badge.hello(hello("9:0", 4, 4, 9)["counts"])
    assert not badge.take(counts(1, 1, 8))
    assert not badge.take(counts(1, 1, 9, feed=-1))
    assert badge.take(counts(3, 3, 9))  # the same position: a newer state
    assert badge.counts == {"unread": 3, "unseen": 3}
    badge.hello(hello("2:0", 1, 1, 2)["counts"])  # a new stream (another epoch, say)
    assert badge.counts == {"unread": 1, "unseen": 1}


def test_an_update_of_a_group_entry_asks_the_server():
    badge = Badge()
    badge.hello(hello("1:0", 1, 0, 1)["counts"])  # the entry, seen
    badge.notification(personal(2, group=2))  # one more like: unseen again?
    assert badge.counts == {"unread": 1, "unseen": 0} and badge.ask
    assert badge.take(counts(1, 0, 1))  # an answer from before the update
    assert badge.ask
    badge.notification(personal(3))
    assert badge.take(counts(1, 1, 2))  # the answer: it is unseen again
    assert not badge.ask
    assert badge.counts == {"unread": 2, "unseen": 2}


def test_counts_older_than_a_forgotten_notification_ask_the_server():
    badge = Badge(counted_max=3)
    badge.hello(hello("0:0", 0, 0, 0)["counts"])
    for seq in range(1, 6):
        badge.notification(personal(seq))
    assert badge.counts == {"unread": 5, "unseen": 5} and not badge.ask
    assert badge.take(counts(0, 0, 4))  # only 5 is remembered past seq 4: exact
    assert badge.counts == {"unread": 1, "unseen": 1} and not badge.ask
    for seq in range(6, 10):
        badge.notification(personal(seq))  # 6 is forgotten
    assert badge.take(counts(0, 0, 5))  # 6 is in neither: only the server knows
    assert badge.ask
    assert badge.take(counts(4, 4, 9))
    assert badge.counts == {"unread": 4, "unseen": 4} and not badge.ask
