"""A device's badge: the unread and unseen counts, kept exact from the stream.

Every counts object the server sends (in ``hello``, in a ``counts`` event, in
the answers of ``GET /v1/me/counts`` and of a state change) says where it was
read: ``at``, the user's head seq and the app's feed head, read in the same
snapshot as the counts, and ``rev``, the revision of the user's counts, which
every change that moves them without a position raises (a state change, a
retraction, a topic joined or left...).  They count every notification up to
that position and none after it.  The badge is the last counts taken plus the
notifications that arrived past their position (docs/protocol.md, "Counts
and the badge"):

* a notification past ``at`` (a personal one with a higher seq, a feed item
  with a higher offset) adds one unread and one unseen; one at or before it
  is already counted.  An update of a group entry adds no unread (the entry
  was unread), and whether it made the entry unseen again only the server
  knows: :attr:`Badge.ask` turns true, and the answer of
  ``GET /v1/me/counts`` goes to :meth:`Badge.take`;
* counts read before the ones held (a lower seq, feed or rev) are ignored:
  a ``counts`` event that was on its way while a notification committed and
  overtook it, or while another change was made (another device's, at the
  same moment).  So are counts at the same ``at`` that count more than the
  ones held: only an expiry tells two such reads apart, and it only lowers
  the counts.  Others are taken, and the notifications already counted past
  their position are added to them again (they arrived before the counts
  did);
* ``hello``'s counts are always taken, and the count starts over.

Counts without ``at`` (a server older than it) are taken as they come, and
every live notification after them adds one, as clients always did.  Counts
without ``rev`` (a server older than it) are compared by seq and feed only,
and of two at the same position the later to arrive is taken.

Sans-I/O: events in, counts out.  The Python :class:`~tidings.client.Subscriber`
keeps one; ``tidings.js`` does the same in JavaScript.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# Notifications remembered past the last counts taken.  A counts event is
# overtaken only by the few notifications that commit while it is on its
# way; one older than what was forgotten sets :attr:`Badge.ask`.
COUNTED_MAX = 1000

_SEQ, _FEED = 0, 1


def _position(counts: dict) -> tuple[int, int, int | None] | None:
    """``(seq, feed, rev)`` of ``at``; rev None from a server that does not say it."""
    at = counts.get("at")
    if not isinstance(at, dict):
        return None
    seq, feed, rev = at.get("seq"), at.get("feed"), at.get("rev")
    if type(seq) is not int or type(feed) is not int:
        return None
    return seq, feed, rev if type(rev) is int else None


def _older(at: tuple[int, int, int | None], numbers: tuple[int, int],
           held: tuple[int, int, int | None], held_numbers: tuple[int, int]) -> bool:
    """Whether counts ``numbers`` read at ``at`` were read before the ones held."""
    if at[0] < held[0] or at[1] < held[1]:
        return True
    if at[2] is None or held[2] is None:
        return False
    if at[2] != held[2]:
        return at[2] < held[2]
    # the same position and revision: only expiries (which write nothing)
    # came between the two reads, and they only lower the counts
    return at[:2] == held[:2] and (numbers[0] > held_numbers[0] or numbers[1] > held_numbers[1])


def _numbers(counts: Any) -> tuple[int, int] | None:
    if not isinstance(counts, dict):
        return None
    unread, unseen = counts.get("unread"), counts.get("unseen")
    if type(unread) is not int or type(unseen) is not int:
        return None
    return unread, unseen


class Badge:
    """The counts a device shows; see the module docstring for the rule."""

    def __init__(self, counted_max: int = COUNTED_MAX):
        self._max = counted_max
        self._base: tuple[int, int] | None = None  # the counts last taken (and forgotten)
        self._taken: tuple[int, int] = (0, 0)  # the counts last taken, as the server said
        self._at: tuple[int, int, int | None] | None = None  # where (None: not said)
        # notifications counted since: (kind, position, unread, unseen, unknown)
        self._counted: deque[tuple[int, int, int, int, bool]] = deque()
        self._plus = [0, 0]  # what they add: unread, unseen
        self._unknown = 0  # how many of them only the server can count (group updates)
        self._lost = [-1, -1]  # the newest seq and feed forgotten for room
        self._stale = False  # counts taken from before a forgotten notification

    @property
    def counts(self) -> dict[str, int] | None:
        """``{"unread", "unseen"}`` to show, or None before the first counts."""
        if self._base is None:
            return None
        return {"unread": self._base[0] + self._plus[0], "unseen": self._base[1] + self._plus[1]}

    @property
    def ask(self) -> bool:
        """Only the server knows the exact counts now (an update of a group
        entry arrived, or counts older than a forgotten notification were
        taken): ask ``GET /v1/me/counts`` and :meth:`take` the answer."""
        return self._stale or self._unknown > 0

    def hello(self, counts: Any) -> None:
        """A stream (re)started: its ``hello``'s counts, whatever came before."""
        self._counted.clear()
        self._plus = [0, 0]
        self._unknown = 0
        self._lost = [-1, -1]
        self._stale = False
        self._at = None
        self.take(counts)

    def take(self, counts: Any) -> bool:
        """A ``counts`` event, or the counts of an answer; False when they
        were read before the ones held (and are ignored)."""
        numbers = _numbers(counts)
        if numbers is None:
            return False
        at = _position(counts)
        if at is None:  # a server that does not say: as they come
            self._base, self._at = numbers, None
            self._counted.clear()
            self._plus = [0, 0]
            self._unknown = 0
            return True
        held = self._at
        if held is not None and _older(at, numbers, held, self._taken):
            return False
        self._base, self._taken, self._at = numbers, numbers, at
        position = at[:2]
        kept = [c for c in self._counted if c[1] > position[c[0]]]
        self._counted = deque(kept)
        self._plus = [sum(c[2] for c in kept), sum(c[3] for c in kept)]
        self._unknown = sum(c[4] for c in kept)
        # forgotten notifications past this position are in neither the
        # counts nor what is remembered
        self._stale = self._lost[_SEQ] > at[0] or self._lost[_FEED] > at[1]
        return True

    def notification(self, event: dict, replaying: bool = False) -> None:
        """A ``notification`` event the client keeps (duplicates already
        dropped by id).  ``replaying``: between a resuming ``hello`` and its
        ``recovered``, which only a server that does not send ``at`` needs."""
        if self._base is None:
            return
        if self._at is None and replaying:
            return  # hello's counts hold the replay (a server without at)
        cursor, feed = event.get("cursor"), event.get("feed")
        if isinstance(cursor, str):
            try:
                kind, pos = _SEQ, int(cursor.split(":")[1])
            except (IndexError, ValueError):
                return
        elif type(feed) is int:
            kind, pos = _FEED, feed
        else:
            return
        if self._at is not None and pos <= self._at[:2][kind]:
            return  # read into the counts already
        group = event.get("group")
        if isinstance(group, dict) and isinstance(group.get("count"), int) and group["count"] > 1:
            entry = (kind, pos, 0, 0, True)  # an unread entry's update: unseen again?
        else:
            entry = (kind, pos, 1, 1, False)
        self._counted.append(entry)
        self._plus[0] += entry[2]
        self._plus[1] += entry[3]
        self._unknown += entry[4]
        while len(self._counted) > self._max:
            old = self._counted.popleft()
            self._unknown -= old[4]
            self._lost[old[0]] = max(self._lost[old[0]], old[1])
            self._base = (self._base[0] + old[2], self._base[1] + old[3])
            self._plus[0] -= old[2]
            self._plus[1] -= old[3]


__all__ = ["Badge", "COUNTED_MAX"]
