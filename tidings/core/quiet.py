"""Quiet hours and channel routing: deliver now, hold until later, or never.

A user's quiet hours are a daily window of *wall-clock* time in their own
zone, ``{"start": "22:00", "end": "07:00", "tz": "Europe/Paris"}``.  While the
window is open, interrupting channels (push, e-mail, webhook) hold a
notification until it closes; the in-app inbox still receives it at once,
because a badge that nobody is looking at interrupts no one.

The rules, each tested in ``tests/core/test_quiet.py``:

* The window is ``[start, end)``: a notification at exactly ``end`` goes out.
* ``start > end`` crosses midnight (22:00-07:00 is quiet at 23:30 and 06:59).
* ``start == end`` is an **empty** window: never quiet.  The other reading,
  "quiet all day", would hold notifications for a window that never ends;
  muting the channel is the way to say "never".
* DST: the window follows the wall clock, so 22:00-07:00 stays 22:00-07:00
  on the nights the clocks change (9 or 10 hours long that night).  When
  ``end`` does not exist that day (it falls in the spring-forward gap) the
  window ends at the jump, the first instant the wall clock is past ``end``;
  when it exists twice (autumn), it ends at the first of them.  In general the
  hold lasts until the *first instant after now at which the local wall
  clock is outside the window*, and that is what :meth:`QuietWindow.ends_after`
  computes, jumps included.
* ``priority: urgent`` bypasses quiet hours, never an explicit mute.
* A zone name must load with :mod:`zoneinfo`; ``localtime`` and
  ``posixrules`` load too but name the *server's* zone, so they are refused.

Nothing here reads a clock: every function takes ``now`` (an aware datetime).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tidings.core.models import ALL_CATEGORIES, ChannelPrefs, Preferences, QuietHours

__all__ = [
    "CHANNELS",
    "HELD_IN_QUIET_HOURS",
    "InvalidTimeZone",
    "Plan",
    "QuietWindow",
    "plan",
    "quiet_until",
    "switched_off",
    "window_of",
    "zone",
]

CHANNELS = ("in_app", "webhook", "push", "email")
# The channels that interrupt a person (or, for webhooks, let the app do so on
# the user's behalf: SMS, a phone call).  in_app is left out on purpose.
HELD_IN_QUIET_HOURS = frozenset({"webhook", "push", "email"})

_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")
# Keys that zoneinfo loads but that mean "whatever zone this server is in".
_SERVER_ALIASES = frozenset({"localtime", "posixrules"})
# How far ahead to look for the window's end.  A window is under 24 h of wall
# time; clock jumps add at most a day (Samoa skipped 2011-12-30 entirely).
_HORIZON = timedelta(hours=50)
_STEP = 3600  # seconds between offset samples; zones never change twice an hour


class InvalidTimeZone(ValueError):
    """The quiet-hours zone is not an IANA time zone name this server knows."""


def zone(name: object) -> ZoneInfo:
    """Load an IANA zone by name, or raise :class:`InvalidTimeZone`."""
    if not isinstance(name, str) or name in _SERVER_ALIASES:
        raise InvalidTimeZone(f"unknown time zone: {name!r}")
    try:
        return ZoneInfo(name)
    # ZoneInfoNotFoundError for unknown names; ValueError for "../x", absolute
    # paths and tzdata files that are not zones ("zone.tab"); OSError for the rest.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimeZone(f"unknown time zone: {name!r}") from None


def _hhmm(text: object) -> time:
    m = _HHMM.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"quiet hours need HH:MM times, got {text!r}")
    return time(int(m.group(1)), int(m.group(2)))


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("quiet hours need an aware datetime, not a naive one")
    return at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class QuietWindow:
    """A daily ``[start, end)`` window of wall-clock time in ``zone``."""

    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, start: str, end: str, tz: str = "UTC") -> QuietWindow:
        return cls(_hhmm(start), _hhmm(end), zone(tz))

    @classmethod
    def of(cls, hours: QuietHours) -> QuietWindow:
        return cls.parse(hours.start, hours.end, hours.tz)

    @property
    def empty(self) -> bool:
        return self.start == self.end

    def _wall_in(self, wall: time) -> bool:
        s, e = self.start, self.end
        if s < e:
            return s <= wall < e
        if s > e:  # crosses midnight
            return wall >= s or wall < e
        return False  # start == end: empty, see the module docstring

    def contains(self, at: datetime) -> bool:
        """Whether the user's wall clock is inside the window at instant ``at``."""
        wall = _aware(at).astimezone(self.zone)
        return self._wall_in(wall.time())

    def ends_after(self, at: datetime) -> datetime | None:
        """The first instant after ``at`` outside the window (UTC), or ``None``
        when ``at`` itself is outside it (nothing to wait for).

        The wall clock leaves the window either by reaching ``end`` or by a
        jump (a DST change or a zone's change of offset).  Both kinds of
        instant are collected and the earliest one outside the window wins.
        """
        now = _aware(at)
        if not self.contains(now):
            return None
        crossings = sorted(self._end_crossings(now))
        # The first crossing is outside the window (``end`` is exclusive), so
        # only jumps before it can end the window earlier.
        limit = crossings[0] if crossings else now + _HORIZON
        for instant in sorted([*_offset_changes(self.zone, now, limit), *crossings]):
            if instant > now and not self.contains(instant):
                return instant
        # Unreachable for any zone in tzdata: the horizon is past every window.
        raise AssertionError(f"no end of quiet hours found after {now.isoformat()}")

    def _end_crossings(self, now: datetime) -> Iterator[datetime]:
        """Instants after ``now`` at which the wall clock reads ``end``."""
        today = now.astimezone(self.zone).date()
        for days in (-1, 0, 1, 2):
            wall = datetime.combine(today + timedelta(days=days), self.end)
            for fold in (0, 1):  # an autumn wall time happens twice
                instant = wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)
                # A wall time in a spring-forward gap never happens: zoneinfo
                # still maps it, but the round trip gives another wall time.
                real = instant.astimezone(self.zone).replace(tzinfo=None) == wall
                if real and instant > now:
                    yield instant


def _offset_at(zone_: ZoneInfo, ts: float) -> timedelta | None:
    return datetime.fromtimestamp(ts, UTC).astimezone(zone_).utcoffset()


def _offset_changes(zone_: ZoneInfo, lo: datetime, hi: datetime) -> list[datetime]:
    """The instants in ``(lo, hi]`` at which the zone's UTC offset changes,
    to the second (tzdata transitions fall on whole seconds)."""
    out = []
    prev_ts = math.floor(lo.timestamp())
    prev = _offset_at(zone_, prev_ts)
    end_ts = math.ceil(hi.timestamp())
    while prev_ts < end_ts:
        ts = min(prev_ts + _STEP, end_ts)
        off = _offset_at(zone_, ts)
        if off != prev:
            a, b = prev_ts, ts  # offset(a) == prev, offset(b) != prev
            while b - a > 1:
                mid = (a + b) // 2
                if _offset_at(zone_, mid) == prev:
                    a = mid
                else:
                    b = mid
            out.append(datetime.fromtimestamp(b, UTC))
        prev_ts, prev = ts, off
    return out


def quiet_until(window: QuietWindow | None, priority: str, now: datetime) -> datetime | None:
    """``None``: deliver now.  A UTC datetime: hold until then.

    ``urgent`` bypasses quiet hours (a mute is decided elsewhere: :func:`plan`).
    """
    if window is None or priority == "urgent":
        return None
    return window.ends_after(now)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one notification goes for one user, and when."""

    now: tuple[str, ...]  # deliver at once
    later: tuple[str, ...]  # held by quiet hours until ``until``
    muted: tuple[str, ...]  # switched off by the user for this category: never
    until: datetime | None = None  # UTC; set exactly when ``later`` is not empty


def _switches(prefs: Preferences | None, category: str) -> ChannelPrefs | None:
    """The switches deciding ``category`` (None: every channel on)."""
    if prefs is None or not prefs.categories:
        return None
    # A category the preferences do not name follows "*" (every other
    # category), which an unsubscribe link may have switched e-mail off in.
    chosen = prefs.categories.get(category)
    return chosen if chosen is not None else prefs.categories.get(ALL_CATEGORIES)


def switched_off(prefs: Preferences | None, category: str, channel: str) -> bool:
    """Whether the user switched ``channel`` off for ``category``: what
    :func:`plan` calls muted, asked again when a queued job comes due."""
    chosen = _switches(prefs, category)
    return chosen is not None and not getattr(chosen, channel)


def window_of(prefs: Preferences | None) -> QuietWindow | None:
    """The user's quiet hours, if they have any."""
    if prefs is None or prefs.quiet_hours is None:
        return None
    try:
        return QuietWindow.of(prefs.quiet_hours)
    except ValueError:
        # Preferences are validated when they are written; a stored zone
        # that no longer loads (removed from tzdata) reads as UTC rather
        # than failing a publish that has nothing to do with it.
        return QuietWindow.parse(prefs.quiet_hours.start, prefs.quiet_hours.end, "UTC")


def plan(
    prefs: Preferences | None,
    category: str,
    priority: str,
    now: datetime,
    channels: tuple[str, ...] = CHANNELS,
) -> Plan:
    """Route a notification through a user's preferences.

    A channel the user switched off for the category (or, for a category
    the preferences do not name, in ``"*"``) is muted whatever the
    priority.  Of the rest, the interrupting channels wait for the end of
    quiet hours unless the notification is ``urgent``.  ``channels`` lets a
    caller leave out channels the app has not configured.
    """
    _aware(now)
    muted: list[str] = []
    on: list[str] = []
    chosen = _switches(prefs, category)
    for name in channels:
        if name not in CHANNELS:
            raise ValueError(f"unknown channel {name!r}")
        # A channel left out of the stored preferences is on (docs/design.md §4).
        (on if chosen is None or getattr(chosen, name) else muted).append(name)
    until = quiet_until(window_of(prefs), priority, now)
    later = [c for c in on if until is not None and c in HELD_IN_QUIET_HOURS]
    return Plan(
        now=tuple(c for c in on if c not in later),
        later=tuple(later),
        muted=tuple(muted),
        until=until if later else None,
    )
