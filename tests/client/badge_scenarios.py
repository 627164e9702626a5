"""Event sequences a device may get, in racy orders, and the badge each must
end on (docs/protocol.md, "Counts and the badge").

One table for both clients: ``tests/client/test_badge.py`` feeds them to the
Python ``Badge``, ``tests/browser/test_badge.py`` to ``tidings.js`` in
Chromium.  ``cursor`` is the position the client connects with (a resume:
its replay is not counted by a server without ``at``).
"""

from __future__ import annotations

from tidings.client.badge import Badge

EPOCH = "3f9a01c2"


def play(events: list[dict], resumed: bool, *, drop_repeats: bool = True) -> Badge:
    """What a client following the rule does with each event: replaying
    between a resuming hello and its recovered, and (``drop_repeats``) a
    notification whose id it already had dropped."""
    badge, seen, replaying = Badge(), set(), False
    for ev in events:
        if ev["type"] == "hello":
            replaying = resumed
            badge.hello(ev["counts"])
        elif ev["type"] == "recovered":
            replaying = False
        elif ev["type"] == "counts":
            badge.take(ev)
        elif ev["type"] == "notification":
            nid = ev["notification"]["id"]
            if drop_repeats and nid in seen:
                continue
            seen.add(nid)
            badge.notification(ev, replaying)
    return badge


def _at(seq: int, feed: int, rev: int | None) -> dict:
    return {"seq": seq, "feed": feed} if rev is None else {"seq": seq, "feed": feed, "rev": rev}


def hello(cursor: str, unread: int, unseen: int, seq: int | None = None, feed: int = 0,
          rev: int | None = None) -> dict:
    counts: dict = {"unread": unread, "unseen": unseen}
    if seq is not None:
        counts["at"] = _at(seq, feed, rev)
    return {"type": "hello", "epoch": EPOCH, "cursor": f"{EPOCH}:{cursor}", "counts": counts}


def counts(unread: int, unseen: int, seq: int | None = None, feed: int = 0,
           rev: int | None = None) -> dict:
    ev: dict = {"type": "counts", "unread": unread, "unseen": unseen}
    if seq is not None:
        ev["at"] = _at(seq, feed, rev)
    return ev


def personal(seq: int, group: int | None = None) -> dict:
    ev: dict = {"type": "notification", "cursor": f"{EPOCH}:{seq}",
                "notification": {"id": f"p{seq}", "title": f"seq {seq}"}}
    if group is not None:
        ev["group"] = {"id": "g", "key": "k", "count": group, "actor_count": 1,
                       "actors": ["a"], "latest_at": "t", "first_id": "g"}
    return ev


def feed(offset: int) -> dict:
    return {"type": "notification", "feed": offset,
            "notification": {"id": f"f{offset}", "title": f"feed {offset}"}}


def state(*ids: str) -> dict:
    return {"type": "state", "ids": list(ids), "all": False, "state": "read"}


def recovered(missed: int) -> dict:
    return {"type": "recovered", "ok": True, "missed": missed}


SCENARIOS = [
    {
        # race 1: the counts of a mark-read were read just before seq 6
        # committed, and arrive after it
        "name": "counts overtaken by a notification",
        "cursor": None,
        "events": [hello("5:0", 2, 2, 5), personal(6), state("p4"), counts(1, 1, 5)],
        "badge": {"unread": 2, "unseen": 2},
    },
    {
        # race 2: seq 6 committed between the head read (the cursor) and the
        # counts: hello counts it, and it arrives live as well
        "name": "hello counts a notification that arrives live",
        "cursor": None,
        "events": [hello("5:0", 3, 3, 6), personal(6), personal(7)],
        "badge": {"unread": 4, "unseen": 4},
    },
    {
        # seq 6 committed between hello's counts and the replay's read: the
        # replay brings it, and it is one more
        "name": "a replay past hello's counts",
        "cursor": f"{EPOCH}:3:0",
        "events": [hello("3:0", 5, 5, 5), personal(4), personal(5), personal(6), recovered(3)],
        "badge": {"unread": 6, "unseen": 6},
    },
    {
        "name": "older counts after newer ones are ignored",
        "cursor": None,
        "events": [hello("5:0", 2, 2, 5), personal(6), personal(7), counts(3, 3, 7),
                   counts(2, 2, 6)],
        "badge": {"unread": 3, "unseen": 3},
    },
    {
        # a broadcast committed after the counts were read, and arriving first
        "name": "feed items past the counts",
        "cursor": None,
        "events": [hello("0:3", 1, 1, 0, 3), feed(4), personal(1), counts(0, 0, 0, 3)],
        "badge": {"unread": 2, "unseen": 2},
    },
    {
        "name": "duplicates of a replay are not counted",
        "cursor": f"{EPOCH}:5:0",
        "events": [hello("5:0", 3, 3, 6), personal(6), recovered(1), personal(6), personal(7)],
        "badge": {"unread": 4, "unseen": 4},
    },
    {
        # two devices mark one entry read each at the same moment: the counts
        # of the first (one unread) are read first and arrive last
        "name": "counts of two changes cross",
        "cursor": None,
        "events": [hello("2:0", 2, 2, 2, rev=0), counts(0, 0, 2, rev=2),
                   counts(1, 1, 2, rev=1)],
        "badge": {"unread": 0, "unseen": 0},
    },
    {
        # a mark-read's counts are read just before the other unread entry
        # expires, and arrive after the node's read of the expiry (which
        # writes nothing: the same revision, lower counts)
        "name": "counts of a mark-read cross an expiry",
        "cursor": None,
        "events": [hello("2:0", 2, 2, 2, rev=0), counts(0, 0, 2, rev=1), personal(3),
                   counts(1, 1, 2, rev=1)],
        "badge": {"unread": 1, "unseen": 1},
    },
    {
        # a topic joined: more at the same position, a higher revision
        "name": "counts that rise with their revision",
        "cursor": None,
        "events": [hello("2:0", 1, 1, 2, rev=3), counts(4, 4, 2, rev=4)],
        "badge": {"unread": 4, "unseen": 4},
    },
    {
        # a server that does not send "rev": at the same position, as they come
        "name": "counts without a revision",
        "cursor": None,
        "events": [hello("2:0", 1, 1, 2), counts(4, 4, 2), counts(3, 3, 2)],
        "badge": {"unread": 3, "unseen": 3},
    },
    {
        # a server that does not send "at": as clients always did
        "name": "counts without a position",
        "cursor": f"{EPOCH}:1:0",
        "events": [hello("1:0", 2, 2), personal(2), recovered(1), personal(3), counts(1, 1),
                   personal(4)],
        "badge": {"unread": 2, "unseen": 2},
    },
]
