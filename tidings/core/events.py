"""Live events: encoding once, framing per transport.

The notification body is encoded once per publish; each user's event is that
body spliced into a tiny per-user envelope (a bytes join, no re-encoding), and
feed events (broadcasts, large topics) are one frame shared by every
connection.

Event objects (the same JSON on WebSocket and SSE)::

    {"type": "hello", "epoch", "cursor", "counts": {"unread", "unseen", "at"}}
    {"type": "notification", "cursor": "<epoch>:<seq>", "notification": {...}}
    {"type": "notification", "cursor": ..., "notification": {...}, "group": {...}}
    {"type": "notification", "feed": <offset>, "notification": {...}}
    {"type": "updated", "notification": {...}}
    {"type": "updated", "notification": {...}, "group": {...}, "state": "..."}
    {"type": "deleted", "id": "..."}
    {"type": "state", "ids": [...], "all": bool, "state": "read"|"seen"|"archived"}
    {"type": "state", "ids": [...], "all": false, "state": "snoozed", "until": "<ISO 8601>"}
    {"type": "notification", "cursor": ..., "notification": {...}, "resurfaced": true}
    {"type": "counts", "unread": n, "unseen": n, "at": {"seq": n, "feed": n, "rev": n}}
    {"type": "recovered", "ok": bool, "missed": n}
    {"type": "token", "until": <unix seconds>}   (WebSocket: a fresh token was taken)

Counts (in ``hello``, ``counts``, and the client API's answers) carry ``at``:
the user's head seq and the app's feed head read in the same snapshot, so a
client adds to them only the notifications past that position, and the
revision of the user's counts (``Store.counts``' ``rev``), so that of two
counts read at the same position it keeps the later (docs/protocol.md,
"Counts and the badge").

A WebSocket text frame carries one event object, or a JSON array of several
when a burst is pending (one write per connection per loop tick).
"""

from __future__ import annotations

import math
from datetime import datetime

import msgspec

_encode = msgspec.json.encode


def encode(obj: object) -> bytes:
    return _encode(obj)


def notification_frame(epoch: str, seq: int, body: bytes) -> bytes:
    return b"%s%d%s" % (notification_head(epoch), seq, notification_tail(body))


# A personal event is head (per stream: its epoch) + seq + tail (per publish:
# the body), so the hot path formats one integer per recipient.
def notification_head(epoch: str) -> bytes:
    """What precedes the seq in a personal event of ``epoch``."""
    return b'{"type":"notification","cursor":"%s:' % epoch.encode()


def notification_tail(body: bytes) -> bytes:
    """What follows the seq in a personal event carrying ``body``."""
    return b'","notification":%s}' % body


def with_group(body: bytes, group: bytes) -> bytes:
    """The personal event payload of a group entry: the notification, then
    the entry's ``group`` object.  It takes the place of ``body`` in
    :func:`notification_frame` (and in ``Personal.body`` on the broker), so
    a grouped event costs the hot path nothing extra:
    ``..."notification":{...},"group":{...}}``."""
    return body + b',"group":' + group


def feed_frame(offset: int, body: bytes) -> bytes:
    return b'{"type":"notification","feed":%d,"notification":%s}' % (offset, body)


def updated_frame(body: bytes) -> bytes:
    return b'{"type":"updated","notification":%s}' % body


def group_updated_frame(body: bytes, group: bytes, state: str) -> bytes:
    """A group entry changed without a new member (one was retracted): the
    entry ``group["id"]`` now shows ``body``, with this summary and state,
    as the user's inbox page shows it."""
    return b'{"type":"updated","notification":%s,"group":%s,"state":"%s"}' % (
        body, group, state.encode())


def deleted_frame(nid: str) -> bytes:
    return _encode({"type": "deleted", "id": nid})


def state_frame(ids: list[str] | None, state: str, all_: bool = False) -> bytes:
    return _encode({"type": "state", "ids": ids or [], "all": all_, "state": state})


def snoozed_frame(ids: list[str], until: str) -> bytes:
    """Entries snoozed on some device: out of the inbox until ``until``."""
    return _encode({"type": "state", "ids": ids, "all": False, "state": "snoozed",
                    "until": until})


RESURFACED = b',"resurfaced":true'


def resurfaced(body: bytes) -> bytes:
    """The personal event payload of an entry back from a snooze: the
    notification, then ``"resurfaced": true`` (before a group entry's
    ``group``, :func:`with_group`), spliced as ``with_group`` is."""
    return body + RESURFACED


def unmarked(payload: bytes) -> tuple[bytes, bytes]:
    """A ``Personals`` body as (the notification, the mark :func:`resurfaced`
    added, b"" for none): what reads the notification (its ``expires_at``
    near its end, its ``locales``) reads the first, and the second follows
    it again."""
    if payload.endswith(RESURFACED):
        return payload[:-len(RESURFACED)], RESURFACED
    return payload, b""


def counts_object(unread: int, unseen: int, seq: int, feed: int,
                  expires: float | None = None, rev: int = 0) -> dict:
    """The counts as every answer carries them: read at ``seq``, ``feed``
    and ``rev``.  (``expires`` is the gateway's own business: it is not sent.)"""
    return {"unread": unread, "unseen": unseen, "at": {"seq": seq, "feed": feed, "rev": rev}}


def counts_frame(unread: int, unseen: int, seq: int, feed: int,
                 expires: float | None = None, rev: int = 0) -> bytes:
    """A ``counts`` event (``expires`` is not sent, as in :func:`counts_object`)."""
    return (b'{"type":"counts","unread":%d,"unseen":%d,"at":{"seq":%d,"feed":%d,"rev":%d}}'
            % (unread, unseen, seq, feed, rev))


_COUNTS_HEAD = b'{"type":"counts",'


class _Position(msgspec.Struct):
    seq: int
    feed: int
    rev: int = 0


class _Counts(msgspec.Struct):
    unread: int = 0
    unseen: int = 0
    at: _Position | None = None


_decode_counts = msgspec.json.Decoder(_Counts).decode


def counts_position(frame: bytes) -> tuple[int, int, int, int, int]:
    """How late a ``counts`` event was read, to compare with another's:
    ``(seq, feed, rev, -unread, -unseen)``, all -1 when it does not say.
    At an equal ``at`` only expiries, which write nothing, tell two reads
    apart, and an expiry only lowers the counts: the lower is the later."""
    c = _decode_counts(frame)
    if c.at is None:
        return (-1, -1, -1, -1, -1)
    return (c.at.seq, c.at.feed, c.at.rev, -c.unread, -c.unseen)


def is_counts(frame: bytes) -> bool:
    """Whether ``frame`` is a ``counts`` event (as :func:`counts_frame` makes them)."""
    return frame.startswith(_COUNTS_HEAD)


def hello_frame(epoch: str, cursor: str, counts: tuple) -> bytes:
    """``counts``: ``(unread, unseen, seq, feed[, expires])``, as ``Store.counts`` reads them."""
    return _encode(
        {"type": "hello", "epoch": epoch, "cursor": cursor, "counts": counts_object(*counts)}
    )


def token_frame(until: float) -> bytes:
    """The answer to a fresh token on an open WebSocket: the stream now ends
    at ``until`` (Unix seconds; the token's ``exp`` plus the clock leeway)."""
    if until == math.inf:  # a token whose exp is past any float: no end
        return b'{"type":"token","until":null}'
    return b'{"type":"token","until":%d}' % until


def recovered_frame(ok: bool, missed: int) -> bytes:
    return _encode({"type": "recovered", "ok": ok, "missed": missed})


# When a notification runs out of its ttl.  Notification's last field is
# ``expires_at`` (tidings/core/models.py; msgspec writes fields in order and
# leaves defaults out), so in a body the service encoded it is within the
# last bytes when it is there at all: a publish without a ttl costs the
# gateway one bounded search, whatever the body's size.
EXPIRES = b'"expires_at":"'
EXPIRES_TAIL = 64  # '"expires_at":"' + an ISO time with offset + '"}', with room


class _Expiring(msgspec.Struct):
    expires_at: str | None = None


class _Carrying(msgspec.Struct):
    notification: _Expiring | None = None


_decode_expiring = msgspec.json.Decoder(_Expiring).decode
_decode_carrying = msgspec.json.Decoder(_Carrying).decode


def _timestamp(iso: str | None) -> float | None:
    """An ``expires_at`` as the store has it, or just after: the body says it
    in milliseconds, cut down (service.py's ``_iso``), so the stored time is
    within the millisecond that follows.  (A time read too early would find
    the entry still counted.)"""
    if iso is None:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp() + 0.001
    except (ValueError, OverflowError, OSError):
        return None


def expiry(body: bytes, trailing: int = 0) -> float | None:
    """When the notification ``body`` (as the service encodes it, followed
    by ``trailing`` more bytes: 1 in a feed frame) expires, None when it has
    no ``ttl``.  Looks at the last bytes only (see ``EXPIRES``); a body
    whose ``data`` ends with such a key is read whole, and is answered
    right."""
    end = len(body) - trailing
    if body.find(EXPIRES, max(0, end - EXPIRES_TAIL), end) < 0:
        return None
    try:
        if trailing:  # a feed frame: the notification is its "notification"
            note = _decode_carrying(body).notification
            return None if note is None else _timestamp(note.expires_at)
        return _timestamp(_decode_expiring(body).expires_at)
    except msgspec.DecodeError:
        return None


def frame_expiry(frame: bytes) -> float | None:
    """When the notification an event carries (``notification``, ``updated``,
    a group entry's included) expires; None without one, or for any other
    event.  Reads the whole frame: for events off the publish path."""
    if EXPIRES not in frame:
        return None
    try:
        note = _decode_carrying(frame).notification
    except msgspec.DecodeError:
        return None
    return None if note is None else _timestamp(note.expires_at)


def payload_expiry(payload: bytes) -> float | None:
    """:func:`frame_expiry` of a ``Personal`` message's body: the
    notification, maybe followed by a group entry's summary (:func:`with_group`)."""
    return frame_expiry(b'{"notification":' + payload + b"}")


def ws_batch(frames: list[bytes]) -> bytes:
    """One WebSocket message for a burst: the event itself, or a JSON array."""
    if len(frames) == 1:
        return frames[0]
    return b"[" + b",".join(frames) + b"]"


def sse_event(frame: bytes, event_id: str | None = None) -> bytes:
    """One SSE event (HTML Living Standard §9.2): optional id, one data line.

    Our JSON never contains a raw newline (msgspec escapes them), so one
    ``data:`` line is enough.
    """
    if event_id is None:
        return b"data: " + frame + b"\n\n"
    return b"id: " + event_id.encode() + b"\ndata: " + frame + b"\n\n"
