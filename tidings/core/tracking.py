"""Delivery tracking: counters per notification, channel and field, batched.

"Delivered to a device" happens on the hottest path there is (a live stream
writes an event), so nothing there may cost a store write or even a dict
update per delivery.  The gateway only appends what it routed to a list
(:meth:`DeliveryTracker.reached`, one append per broker message, never per
connection), and a task flushes every second or so: the list becomes
counters, the counters one ``Store.record_deliveries`` call.

Outbound channels report through :meth:`DeliveryTracker.add` (or write
``Store.record_delivery`` themselves when they want it durable at once).

Counting rule for ``in_app`` / ``delivered``: once per user per node per
notification -- a broker message reaches every open stream of one user (or,
for a feed item, of every user following it) on this node, and it counts
the users, not the streams.  A user whose devices sit on two nodes counts
twice; a device that replays what another device of the same user on this
node already had is not counted again (the hub checks), one that replays
after every device of the user had gone may be.  docs/delivery.md has the
whole rule.

A feed item skipped by a stream because its user muted the category in-app
(tidings/gateway/stream.py) is not delivered to that user: the stream
appends ``(app, frame, user)`` (:meth:`DeliveryTracker.muted_feed`, on the
muted path only), and the fold counts those users under ``in_app`` /
``muted`` instead of ``delivered``.

Sans I/O: the caller owns the clock and the store.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["DeliveryTracker", "Key", "MAX_PENDING", "feed_nid", "personal_nid"]

Key = tuple[str, str, str, str]  # (app, notification id, channel, field)
# Distinct counters held while the store is away; past it new keys are
# dropped (and counted in ``dropped``): tracking must never grow memory
# without bound (docs/design.md §2.6), and it is statistics, not data.
MAX_PENDING = 100_000

_ID = 26  # a notification id (tidings.core.ids)
_FEED_MARK = b'"notification":{"id":"'


def personal_nid(body: bytes) -> bytes | None:
    """The id of an encoded notification (msgspec writes ``id`` first)."""
    return body[7:7 + _ID] if body.startswith(b'{"id":"') else None


def feed_nid(frame: bytes) -> bytes | None:
    """The id of the notification inside a feed ``notification`` frame."""
    at = frame.find(_FEED_MARK)
    if at < 0:
        return None
    at += len(_FEED_MARK)
    return frame[at:at + _ID]


class DeliveryTracker:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.pending: dict[Key, int] = {}
        self.dropped = 0
        # (app, encoded body) per personal message routed to >= 1 stream, and
        # (app, frame, users) per feed message: turned into counters at flush
        self._personal: list[tuple[str, bytes]] = []
        # (app, encoded body, users) per message for many users (broker.base.Personals)
        self._personals: list[tuple[str, bytes, int]] = []
        self._feed: list[tuple[str, bytes, int]] = []
        # (app, frame, user) per stream that skipped a feed message its user
        # muted: the same broker message as one of ``_feed``, in the same fold
        self._muted: list[tuple[str, bytes, str]] = []
        self.reached = self._personal.append  # the hot path: one bound-method call
        self.reached_users = self._personals.append
        self.reached_feed = self._feed.append
        self.muted_feed = self._muted.append

    def add(self, app: str, nid: str, channel: str, field: str, n: int = 1) -> None:
        key = (app, nid, channel, field)
        pending = self.pending
        if key in pending:
            pending[key] += n
        elif len(pending) < self.max_pending:
            pending[key] = n
        else:
            self.dropped += n

    def fold(self) -> dict[tuple[str, str], int]:
        """Turn what the gateway routed into ``in_app`` ``delivered`` and
        ``muted`` counters; returns them per app and field (for /metrics)."""
        personal, self._personal[:] = list(self._personal), []
        personals, self._personals[:] = list(self._personals), []
        feed, self._feed[:] = list(self._feed), []
        muted = self._muted_users()
        per_app: Counter[tuple[str, str]] = Counter()
        reached: Counter[tuple[str, bytes | None]] = Counter(
            (app, personal_nid(body)) for app, body in personal)
        for app, body, users in personals:
            reached[(app, personal_nid(body))] += users
        for app, frame, users in feed:
            raw = feed_nid(frame)
            if raw is not None and users:
                skipped = min(muted.pop((app, raw), 0), users)
                reached[(app, raw)] += users - skipped
                if skipped:
                    self._count(per_app, app, raw, "muted", skipped)
        for (app, raw), n in reached.items():
            if raw is not None and n:
                self._count(per_app, app, raw, "delivered", n)
        return dict(per_app)

    def _muted_users(self) -> Counter[tuple[str, bytes]]:
        """The users who muted each feed item, per (app, id): once per user,
        however many of their streams here skipped it."""
        muted, self._muted[:] = set(self._muted), []
        out: Counter[tuple[str, bytes]] = Counter()
        for app, frame, _user in muted:
            raw = feed_nid(frame)
            if raw is not None:
                out[(app, raw)] += 1
        return out

    def _count(self, per_app: Counter[tuple[str, str]], app: str, raw: bytes, field: str,
               n: int) -> None:
        self.add(app, raw.decode("ascii", "replace"), "in_app", field, n)
        per_app[(app, field)] += n

    def take(self) -> dict[Key, int]:
        """Everything pending, to write; the tracker starts empty again."""
        pending, self.pending = self.pending, {}
        return pending

    def restore(self, counts: dict[Key, int]) -> None:
        """A write failed: keep its counters for the next flush."""
        for (app, nid, channel, field), n in counts.items():
            self.add(app, nid, channel, field, n)
