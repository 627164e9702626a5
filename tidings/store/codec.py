"""What the SQL stores share: group entries, the scheduled payload, API keys.

**Group entries** (aggregation by ``group_key``, docs/design.md §3).  A personal
inbox entry made from a notification with a ``group_key`` is a group entry:
it stores the key, ``gid`` (the id of the notification that opened the
entry, stable while others merge in) and ``grp``, the merged
:class:`~tidings.core.aggregate.GroupSummary` as JSON.  The summary's
``latest`` is kept slim (id, category, time, key, actor): the entry shows
the notification row it points at, so a correction (PATCH) never leaves a
stale copy in the blob.

**Scheduled payload.**  A notification published with a future
``deliver_at`` is stored as one msgpack blob until it fires: everything
``publish`` needs then, exactly as the service prepared it.

**API keys.**  Scopes are stored as one text, sorted and comma-separated
(``admin,publish``); a revocation is decided on the app's keys read under
its write lock (``revocation``).

**Inbox filters.**  ``shown_by`` decides the inbox's ``?category=`` and
``?tag=`` on a stored body, for what a store cannot decide in SQL.
"""

from __future__ import annotations

import msgspec

from tidings.core import aggregate
from tidings.core.models import Notification
from tidings.store.base import LAST_ADMIN_KEY, NO_SUCH_KEY, REVOKED, NewNotification

__all__ = ["group_view", "merge_group", "new_group", "rebuild_group", "decode_payload",
           "edit_payload", "encode_payload", "scopes_text", "scopes_of", "revocation",
           "shown_by"]


def scopes_text(scopes: frozenset[str]) -> str:
    return ",".join(sorted(scopes))


def scopes_of(text: str) -> frozenset[str]:
    return frozenset(text.split(","))


def revocation(keys: list[tuple[str, str, float | None]], prefix: str) -> str:
    """What revoking ``prefix`` does to an app whose keys are ``keys``
    (``(prefix, scopes text, expires_at)``, read under the app's write lock,
    so that two revocations at once cannot each leave the other's key as the
    last admin key and both go): ``REVOKED``, ``NO_SUCH_KEY`` or
    ``LAST_ADMIN_KEY``.  Only an admin key without an expiry counts as one
    the app keeps: one that expires will not manage the app for long."""
    lasting = {p for p, s, expires in keys if expires is None and "admin" in scopes_of(s)}
    if not any(p == prefix for p, _, _ in keys):
        return NO_SUCH_KEY
    if lasting == {prefix}:
        return LAST_ADMIN_KEY
    return REVOKED


class _Labels(msgspec.Struct):
    """The fields of a stored notification body that the inbox filters read."""

    category: str = "default"
    tags: list[str] = []


_decode_labels = msgspec.json.Decoder(_Labels).decode


def shown_by(body: bytes, categories: tuple[str, ...], tags: tuple[str, ...]) -> bool:
    """Whether a stored notification ``body`` is in a page filtered by
    ``categories`` (any of them, or none given) and ``tags`` (it carries any
    of them, or none given)."""
    labels = _decode_labels(body)
    return ((not categories or labels.category in categories)
            and (not tags or any(t in tags for t in labels.tags)))


class _Meta(msgspec.Struct):
    """The fields of a stored notification body that a group needs."""

    created_at: str = ""
    actor: str | None = None


_decode_meta = msgspec.json.Decoder(_Meta).decode
_encode = msgspec.json.encode


def _slim(nid: str, category: str, key: str | None, body: bytes) -> Notification:
    try:
        meta = _decode_meta(body)
    except msgspec.DecodeError:
        meta = _Meta()
    return Notification(id=nid, category=category, created_at=meta.created_at,
                        group_key=key, actor=meta.actor)


def new_group(item: NewNotification) -> bytes:
    """The ``grp`` blob of an entry that ``item`` opens."""
    return aggregate.encode(aggregate.start(
        _slim(item.id, item.category, item.group_key, item.body)))


def merge_group(blob: bytes, item: NewNotification) -> bytes:
    """The ``grp`` blob after ``item`` merged into the entry holding ``blob``."""
    note = _slim(item.id, item.category, item.group_key, item.body)
    return aggregate.encode(aggregate.merge(aggregate.decode(blob), note))


def rebuild_group(key: str, members: list[tuple[str, str, bytes]]) -> bytes | None:
    """The ``grp`` blob of the entry holding ``members`` ((id, category,
    body), any order): after one of them was retracted.  None when empty."""
    summary = None
    for nid, category, body in sorted(members):
        summary = aggregate.merge(summary, _slim(nid, category, key, body))
    return None if summary is None else aggregate.encode(summary)


def group_view(blob: bytes, gid: str) -> bytes:
    """The ``group`` object clients get (JSON): the summary's view plus the
    entry's stable ``id`` and its oldest member ``first_id``."""
    summary = aggregate.decode(blob)
    return _encode({"id": gid, **summary.view(), "first_id": summary.first_id})


class _Payload(msgspec.Struct, array_like=True):
    id: str
    category: str
    body: bytes
    expires_at: float | None
    users: list[str] | None
    topic: str | None
    all: bool
    group_key: str | None


_encode_payload = msgspec.msgpack.Encoder().encode
_decode_payload = msgspec.msgpack.Decoder(_Payload).decode


def encode_payload(item: NewNotification) -> bytes:
    return _encode_payload(_Payload(
        item.id, item.category, item.body, item.expires_at, item.users, item.topic, item.all,
        item.group_key))


def decode_payload(blob: bytes, due_at: float) -> NewNotification:
    """The notification to publish when a scheduled one fires: it is created
    at its delivery time, and carries no idempotency key (the schedule
    itself was the idempotent step)."""
    p = _decode_payload(blob)
    return NewNotification(
        id=p.id, category=p.category, body=p.body, created_at=due_at,
        expires_at=p.expires_at, users=p.users, topic=p.topic, all=p.all,
        group_key=p.group_key,
    )


def edit_payload(blob: bytes, body: bytes, expires_at: float | None) -> bytes:
    """A stored payload with a new body and expiry (an edit before it fires):
    its target, category and group key stay as they were booked."""
    p = _decode_payload(blob)
    p.body, p.expires_at = body, expires_at
    return _encode_payload(p)
