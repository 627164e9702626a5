"""Stream positions and the recovery decision.

A user's stream position is ``(epoch, seq, feed)``:

* ``epoch`` -- changes only if the user's history was lost or reset;
* ``seq``   -- the user's personal sequence: strictly increasing, gapless;
* ``feed``  -- the app's fan-out-on-read timeline offset (broadcasts and
  topics above the fan-out threshold).

Written as the cursor string ``"<epoch>:<seq>"`` or, when the client has
seen feed items, ``"<epoch>:<seq>:<feed>"``.  A two-part cursor means "no
feed position": feed items are then not replayed (the hello gives the
current one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tidings.errors import BadRequest

# ASCII digits only (``\d`` would take e.g. Arabic-Indic digits) and ``\Z``,
# not ``$`` (which also matches before a trailing newline).
CURSOR_RE = r"^([0-9a-f]{1,16}):([0-9]{1,18})(?::([0-9]{1,18}))?\Z"
CURSOR_MAX = 64
_CURSOR = re.compile(CURSOR_RE)


@dataclass(frozen=True, slots=True)
class Cursor:
    epoch: str
    seq: int
    feed: int | None = None

    def __str__(self) -> str:
        if self.feed is None:
            return f"{self.epoch}:{self.seq}"
        return f"{self.epoch}:{self.seq}:{self.feed}"


def parse_cursor(text: str | None) -> Cursor | None:
    """Parse a cursor string; ``None``/empty means "no cursor" (start live)."""
    if text is None or text == "":
        return None
    if not isinstance(text, str) or len(text) > CURSOR_MAX:
        raise BadRequest("cursor is not valid", field="cursor", code="bad_cursor")
    m = _CURSOR.match(text)
    if not m:
        raise BadRequest(
            'cursor must look like "<epoch>:<seq>" or "<epoch>:<seq>:<feed>"',
            field="cursor", code="bad_cursor",
        )
    feed = m.group(3)
    return Cursor(m.group(1), int(m.group(2)), int(feed) if feed is not None else None)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What to do with a resuming client.

    ``ok`` false means "no partial recovery": the client must reload its inbox
    page; the stream then continues live from ``head``.
    """

    ok: bool
    replay_from_seq: int  # replay personal entries with seq > this
    replay_from_feed: int  # replay feed entries with offset > this
    missed: int  # personal + feed entries that will be replayed (0 if not ok)
    reason: str = ""


def decide_recovery(
    cursor: Cursor | None,
    *,
    epoch: str,
    head_seq: int,
    oldest_seq: int,
    head_feed: int,
    oldest_feed: int,
    replay_max: int,
) -> Recovery | None:
    """Decide how a stream starts.

    ``oldest_seq`` / ``oldest_feed`` are the oldest positions still retained
    (``head + 1`` when nothing is retained).  Returns ``None`` when there is
    no cursor: the stream simply starts live at the head.
    """
    live = Recovery(False, head_seq, head_feed, 0)
    if cursor is None:
        return None
    if cursor.epoch != epoch:
        return Recovery(False, head_seq, head_feed, 0, "epoch")
    if cursor.seq > head_seq or (cursor.feed is not None and cursor.feed > head_feed):
        # A position from the future: the store was reset under the same epoch,
        # or the cursor was forged.  Never pretend to recover.
        return Recovery(False, head_seq, head_feed, 0, "ahead")
    if cursor.seq + 1 < oldest_seq:
        return Recovery(False, head_seq, head_feed, 0, "retention")
    feed_from = head_feed if cursor.feed is None else cursor.feed
    if cursor.feed is not None and cursor.feed + 1 < oldest_feed:
        return Recovery(False, head_seq, head_feed, 0, "retention")
    missed = (head_seq - cursor.seq) + (head_feed - feed_from)
    if missed > replay_max:
        return Recovery(False, live.replay_from_seq, live.replay_from_feed, 0, "too_many")
    return Recovery(True, cursor.seq, feed_from, missed)
