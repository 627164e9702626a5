"""Digests: many notifications of a channel sent as one, when the user asks.

A user's preferences (or, failing them, the app's defaults in ``PUT
/v1/caps``) may give a channel of a category a :class:`DigestRule`:

* ``{"every": 3600}`` -- at most once per interval.  The first notification
  held opens a window; everything the channel would have sent until the
  window closes (``every`` seconds later) goes out as one digest then.
* ``{"daily": "09:00", "tz": "Europe/Paris"}`` -- once a day at that wall
  clock time in the user's zone.  A time the clocks skip that day (a
  spring-forward gap) is read as the instant just after the jump.
* ``{}`` -- no digest: each notification goes out on its own.  This is how a
  user overrides an app's default.

Categories whose rules are equal share a window: a user with hourly e-mail
for ``social`` and ``comments`` gets one e-mail an hour listing both.  An
``urgent`` notification is never held.  A window that would close in the
user's quiet hours closes when they end (:mod:`tidings.core.quiet`).

Nothing here reads a clock or a store: the window's state lives in the store
(``digest_items``) and :class:`tidings.service.outbound.Outbound` sends it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from tidings.core import quiet
from tidings.core.models import DigestRule, Preferences
from tidings.core.phrases import phrase

__all__ = ["DIGEST_PREFIX", "InvalidDigest", "Rules", "body", "category_of", "check", "due",
           "is_digest", "item_categories", "item_ids", "job_id", "key", "retimed", "rule_for"]

# Digest jobs' ids start with it: the channels and the statistics tell them apart.
DIGEST_PREFIX = "digest-"
_LISTED = 50  # items a digest's text lists by title; data.digest.items carries all


# {category: {channel: rule}}: a user's ``digests`` or an app's defaults
Rules = Mapping[str, Mapping[Any, DigestRule]]


class InvalidDigest(ValueError):
    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def check(digests: Rules, where: str) -> None:
    """Refuse a rule that says both ``every`` and ``daily``, or names an
    unknown zone (``where`` prefixes the field named in the error)."""
    for category, channels in digests.items():
        for channel, rule in channels.items():
            field = f"{where}.{category}.{channel}"
            if rule.every is not None and rule.daily is not None:
                raise InvalidDigest("a digest is either every N seconds or daily, not both",
                                    field)
            try:
                quiet.zone(rule.tz)
            except quiet.InvalidTimeZone:
                raise InvalidDigest("unknown time zone", f"{field}.tz") from None


def rule_for(prefs: Preferences | None, defaults: Rules,
             category: str, channel: str) -> DigestRule | None:
    """The rule batching ``channel`` of ``category`` for this user; None
    when each notification goes on its own.  The user's choice for the
    channel wins over the app's default."""
    mine = prefs.digests.get(category) if prefs is not None and prefs.digests else None
    rule = mine.get(channel) if mine else None  # type: ignore[call-overload]
    if rule is None:
        app = defaults.get(category)
        rule = app.get(channel) if app else None
    if rule is None or (rule.every is None and rule.daily is None):
        return None
    return rule


def key(rule: DigestRule) -> str:
    """Equal rules share a window: this is what the store groups by."""
    return f"every:{rule.every}" if rule.every is not None else f"daily:{rule.daily}@{rule.tz}"


def due(rule: DigestRule, now: datetime, prefs: Preferences | None = None) -> datetime:
    """When a window opened at ``now`` closes (UTC), moved to the end of the
    user's quiet hours if it would close inside them."""
    return _after_quiet(_closing(rule, now), prefs)


def retimed(rule: DigestRule | None, opened: datetime, now: datetime,
            prefs: Preferences | None) -> datetime:
    """When a window opened at ``opened`` closes under the user's preferences
    as they are ``now`` (they changed while it was open): the interval or the
    daily time counted from ``opened``, not before ``now``, moved to the end
    of quiet hours.  ``rule`` None (the user removed it) closes it now, or
    when quiet hours end: what it holds goes out as one digest rather than
    as a burst of single messages."""
    at = now.astimezone(UTC) if rule is None else max(_closing(rule, opened), now)
    return _after_quiet(at, prefs)


def _closing(rule: DigestRule, opened: datetime) -> datetime:
    """The interval after ``opened``, or the first daily time after it."""
    if rule.every is not None:
        return opened.astimezone(UTC) + timedelta(seconds=rule.every)
    assert rule.daily is not None
    try:
        zone = quiet.zone(rule.tz)
    except quiet.InvalidTimeZone:  # checked when written; removed from tzdata since
        zone = quiet.zone("UTC")
    hh, mm = map(int, rule.daily.split(":"))
    local = opened.astimezone(zone)
    for days in (0, 1, 2):
        wall = (local + timedelta(days=days)).replace(hour=hh, minute=mm, second=0,
                                                      microsecond=0, tzinfo=None)
        # fold=0 maps a wall time in a spring-forward gap past the jump
        candidate = wall.replace(tzinfo=zone).astimezone(UTC)
        if candidate > opened:
            return candidate
    return opened.astimezone(UTC)


def _after_quiet(at: datetime, prefs: Preferences | None) -> datetime:
    """``at``, or the end of the user's quiet hours when it falls inside them."""
    if prefs is not None and prefs.quiet_hours is not None:
        try:
            window = quiet.QuietWindow.of(prefs.quiet_hours)
        except ValueError:
            window = None
        end = window.ends_after(at) if window is not None else None
        if end is not None:
            return end
    return at


def job_id(app: str, user: str, channel: str, rule_key: str, first: str, n: int) -> str:
    """A digest job's id, stable for one window: ``digest-<hash>.<channel>.<n>``
    (the job table's ``nid.channel.seq`` shape; the hash names the window)."""
    h = hashlib.sha256("\x1f".join((app, user, channel, rule_key, first)).encode()).hexdigest()
    return f"{DIGEST_PREFIX}{h[:20]}.{channel}.{n}"


def is_digest(job_id_: str) -> bool:
    return job_id_.startswith(DIGEST_PREFIX)


class _Items(msgspec.Struct):
    id: str
    category: str = "default"


class _Digest(msgspec.Struct):
    items: list[_Items]


class _Data(msgspec.Struct):
    digest: _Digest


class _Body(msgspec.Struct):
    data: _Data


def item_ids(doc: bytes) -> list[str]:
    """The ids of the notifications a digest (made by :func:`body`) carries."""
    return [i.id for i in msgspec.json.decode(doc, type=_Body).data.digest.items]


def item_categories(doc: bytes) -> list[tuple[str, str]]:
    """``(id, category)`` of each notification a digest carries."""
    return [(i.id, i.category) for i in msgspec.json.decode(doc, type=_Body).data.digest.items]


class _Category(msgspec.Struct):
    category: str = "default"


def category_of(notification: bytes) -> str:
    """The category of a stored notification's JSON (msgspec.DecodeError if
    it is not one)."""
    return msgspec.json.decode(notification, type=_Category).category


def body(jid: str, notes: Sequence[bytes], created_at: float, locale: str = "") -> bytes:
    """A digest as a notification (so every channel can carry it): the title
    says how many, the body lists their titles, ``data.digest.items`` holds
    the notifications themselves, oldest first.  The title and the "... and
    N more" line are in the language of ``locale`` (tidings/core/phrases.py);
    ``notes`` come as the channel carries them: resolved for it, or as
    published (a webhook's, ``locales`` included)."""
    items: list[Any] = [msgspec.json.decode(n) for n in notes]
    n = len(items)
    lines = [f"- {' '.join(str(i.get('title') or i.get('body') or i.get('category')).split())}"
             for i in items[:_LISTED]]
    if n > _LISTED:
        lines.append(phrase("more", locale, n - _LISTED))
    doc = {
        "id": jid.split(".", 1)[0], "category": "digest",
        "created_at": datetime.fromtimestamp(created_at, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z"),
        "title": phrase("new", locale, n),
        "body": "\n".join(lines),
        "data": {"digest": {"count": n, "items": [msgspec.Raw(x) for x in notes]}},
    }
    return msgspec.json.encode(doc)
