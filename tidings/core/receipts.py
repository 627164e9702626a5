"""Delivery receipts: what devices say they received and showed, batched.

A device acknowledges the notifications that reached it (``delivered``: live
or in a replay) and those it actually put on screen (``displayed``), a batch
at a time: ``{"type": "receipts", "device": "...", "label": "...",
"delivered": [ids], "displayed": [ids]}`` as a WebSocket message, or the same
object posted to ``/v1/me/receipts`` (docs/protocol.md#receipts).

A batch names its device (``device``, an id the client keeps, and ``label``,
what a person reads: "Chrome on macOS").  One that does not is its
connection's: the WebSocket's own id (:func:`connection_device`), or
:data:`HTTP_DEVICE` for a POST.  Ids starting with ``~`` are the server's.

Nothing here writes: :class:`ReceiptBuffer` keeps the first
``(app, nid, kind, user, device)`` with the time the server received it and
the label -- a device repeating itself costs one entry -- and the service
hands the rows to ``Store.record_receipts`` once a second, with the delivery
counters (tidings.core.tracking).  The store keeps one row per user (the
unique-user counts) and the first :data:`MAX_DEVICES` devices per user
(the timeline), and drops what the user cannot see.

Sans I/O: the caller owns the clock and the store.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["HTTP_DEVICE", "KINDS", "MAX_DEVICES", "MAX_PENDING", "ReceiptBuffer", "Receipts",
           "Row", "connection_device", "decode_receipts", "first_per_user", "per_device"]

KINDS = ("delivered", "displayed")
# Receipts held between flushes (or while the store is away); past it new ones
# are dropped and counted: they are statistics, and memory stays bounded.
MAX_PENDING = 200_000
# Devices kept per notification, kind and user (the first ones): what a
# client inventing a device id per batch can cost the store.
MAX_DEVICES = 20
# The device of a POST that names none.
HTTP_DEVICE = "~http"

# (app, notification id, kind, user, device, label, received at)
Row = tuple[str, str, str, str, str, str | None, float]
# A notification id (tidings.core.ids), checked while decoding: no Python loop per id.
_Id = Annotated[str, Meta(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}\Z")]
_Ids = Annotated[list[_Id], Meta(max_length=1000)]
# A device id: printable (no C0 or DEL, as every identifier a client chooses,
# tidings.core.models), 1-64 characters, not starting with "~" (the server's).
DEVICE_RE = r"^[^\x00-\x1f\x7f~][^\x00-\x1f\x7f]{0,63}\Z"
LABEL_RE = r"^[^\x00-\x1f\x7f]{1,64}\Z"
DeviceId = Annotated[str, Meta(pattern=DEVICE_RE, max_length=64)]
DeviceLabel = Annotated[str, Meta(pattern=LABEL_RE, max_length=64)]


class Receipts(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One batch from a device (the WebSocket message, or the POST body)."""

    type: Literal["receipts"] | None = None
    device: DeviceId | None = None
    label: DeviceLabel | None = None
    delivered: _Ids = []
    displayed: _Ids = []


_decode = msgspec.json.Decoder(Receipts).decode


def decode_receipts(raw: bytes | str) -> Receipts | None:
    """A device's WebSocket message as receipts; None for anything else (a
    client message the server does not know, or with an id that is not a
    notification id or a device id that is not one, is ignored, as client
    messages always were)."""
    try:
        msg = _decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeError):
        return None
    return msg if msg.type == "receipts" else None


def connection_device() -> str:
    """A WebSocket's own device id, for its batches that name none."""
    return "~" + secrets.token_hex(4)


class ReceiptBuffer:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        # (app, nid, kind, user, device) -> (label, first received at)
        self.pending: dict[tuple[str, str, str, str, str], tuple[str | None, float]] = {}
        self.dropped = 0

    def add(self, app: str, user: str, receipts: Receipts, device: str, at: float) -> int:
        """Hold the batch's ids as received at ``at`` from ``device`` (the
        batch's own ``device`` wins); returns how many it held."""
        pending, held = self.pending, 0
        device = receipts.device or device
        value = (receipts.label, at)
        for kind, ids in (("delivered", receipts.delivered), ("displayed", receipts.displayed)):
            for nid in ids:
                key = (app, nid, kind, user, device)
                if key in pending:
                    held += 1  # the first time stays
                elif len(pending) >= self.max_pending:
                    self.dropped += 1
                else:
                    pending[key] = value
                    held += 1
        return held

    def take(self) -> list[Row]:
        """Everything pending, to write; the buffer starts empty again."""
        pending, self.pending = self.pending, {}
        return [(*key, label, at) for key, (label, at) in pending.items()]

    def restore(self, rows: list[Row]) -> None:
        """A write failed: keep its receipts for the next flush (within the
        cap), before what arrived meanwhile (theirs are the first times)."""
        kept = {row[:5]: row[5:] for row in rows[:max(self.max_pending, 0)]}
        self.dropped += len(rows) - len(kept)
        for key, value in self.pending.items():
            if key in kept:
                continue
            if len(kept) >= self.max_pending:
                self.dropped += 1
            else:
                kept[key] = value
        self.pending = kept


def first_per_user(rows: Iterable[Row]) -> list[tuple[str, str, str, str, float]]:
    """``(app, nid, kind, user, at)`` once per user, at their first device's
    time, sorted (the stores' unique-user rows)."""
    first: dict[tuple[str, str, str, str], float] = {}
    for app, nid, kind, user, _device, _label, at in rows:
        key = (app, nid, kind, user)
        if key not in first or at < first[key]:
            first[key] = at
    return sorted((*key, at) for key, at in first.items())


def per_device(rows: Iterable[Row]) -> list[Row]:
    """The rows sorted by notification, kind, user and time, at most
    :data:`MAX_DEVICES` devices per notification, kind and user: the order
    the stores write them in (so the first devices are the ones kept)."""
    out: list[Row] = []
    group, n = None, 0
    for row in sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3], r[6], r[4])):
        if row[:4] != group:
            group, n = row[:4], 0
        n += 1
        if n <= MAX_DEVICES:
            out.append(row)
    return out
