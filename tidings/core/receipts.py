"""Delivery receipts: what devices say they received and showed, batched.

A device acknowledges the notifications that reached it (``delivered``: live
or in a replay) and those it actually put on screen (``displayed``), a batch
at a time: ``{"type": "receipts", "delivered": [ids], "displayed": [ids]}``
as a WebSocket message, or the same object posted to ``/v1/me/receipts``
(docs/protocol.md#receipts).  Nothing here writes: :class:`ReceiptBuffer`
keeps ``(app, nid, kind, user)`` in a set -- a device repeating itself, or
two devices of one user, cost one entry -- and the service hands the set to
``Store.record_receipts`` once a second, with the delivery counters
(tidings.core.tracking).  The store keeps the first per user and drops what
the user cannot see, so the counts are unique users.

Sans I/O: the caller owns the clock and the store.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["KINDS", "MAX_PENDING", "ReceiptBuffer", "Receipts", "decode_receipts"]

KINDS = ("delivered", "displayed")
# Receipts held between flushes (or while the store is away); past it new ones
# are dropped and counted: they are statistics, and memory stays bounded.
MAX_PENDING = 200_000

Row = tuple[str, str, str, str]  # (app, notification id, kind, user)
# A notification id (tidings.core.ids), checked while decoding: no Python loop per id.
_Id = Annotated[str, Meta(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}\Z")]
_Ids = Annotated[list[_Id], Meta(max_length=1000)]


class Receipts(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One batch from a device (the WebSocket message, or the POST body)."""

    type: Literal["receipts"] | None = None
    delivered: _Ids = []
    displayed: _Ids = []


_decode = msgspec.json.Decoder(Receipts).decode


def decode_receipts(raw: bytes | str) -> Receipts | None:
    """A device's WebSocket message as receipts; None for anything else (a
    client message the server does not know, or with an id that is not a
    notification id, is ignored, as client messages always were)."""
    try:
        msg = _decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeError):
        return None
    return msg if msg.type == "receipts" else None


class ReceiptBuffer:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.pending: set[Row] = set()
        self.dropped = 0

    def add(self, app: str, user: str, receipts: Receipts) -> int:
        """Hold the batch's ids; returns how many it held."""
        pending, held = self.pending, 0
        for kind, ids in (("delivered", receipts.delivered), ("displayed", receipts.displayed)):
            for nid in ids:
                if len(pending) >= self.max_pending:
                    self.dropped += 1
                    continue
                pending.add((app, nid, kind, user))
                held += 1
        return held

    def take(self) -> set[Row]:
        """Everything pending, to write; the buffer starts empty again."""
        pending, self.pending = self.pending, set()
        return pending

    def restore(self, rows: set[Row]) -> None:
        """A write failed: keep its receipts for the next flush (within the cap)."""
        room = self.max_pending - len(self.pending)
        if len(rows) > room:
            self.dropped += len(rows) - max(room, 0)
            rows = set(list(rows)[:max(room, 0)])
        self.pending |= rows
