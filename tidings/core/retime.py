"""What waits for a user when their preferences change: timed again.

A job waits after the publish that planned it (the offline fallback's delay,
quiet hours) and a digest window stays open for hours.  When the user changes
their quiet hours or their digest rules meanwhile, what waits follows the new
preferences (docs/channels.md, "Changed while waiting"):

* **A job not attempted yet** is timed as a publish made now would time it,
  with the delay counted from its own publish: not before ``created_at +
  fallback_delay`` when it is a fallback (push, e-mail), and, unless it is
  ``urgent``, not inside the quiet hours as they are now.  Quiet hours removed
  make it due now (or when its delay ends); shorter ones, due at their new
  end; quiet hours set or moved over the present moment hold it until they
  end.  A job only waiting for its delay gets the same time back.

  Nothing in the job table says *why* a job waits, and nothing needs to: its
  ``created_at``, ``fallback`` flag and ``priority`` (in its notification)
  give the time a publish would give it.  The delay is the current setting:
  a job queued under another ``fallback_delay`` takes this one when its user
  changes their quiet hours.  Jobs already attempted wait for a retry's
  backoff, and digest jobs are sent as soon as their window closes: both
  are left alone.

* **A held digest item** follows the rule its category and channel have now
  (the user's, or the app's default): it moves to the window of that rule,
  which counts from its oldest item still held (its interval after it, or
  the next daily time), closes no earlier than now, and waits for the end of
  quiet hours.  A rule removed closes the item's window now (or when quiet
  hours end) and sends what it held **as one digest**: the user had waited
  for a summary, and ten messages at once are the interruption a digest was
  asked to spare them.  From then on each notification goes on its own.

Only a change of quiet hours or digest rules re-times anything (a switch
turned off is asked again at send time instead); the work is bounded by
:data:`MAX_JOBS` and :data:`MAX_ITEMS`, the user's jobs due soonest and
items held longest: what lies beyond keeps its time.  Nothing here does I/O:
the store reads the rows and writes the times in the preferences'
transaction (``Store.update_preferences``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from tidings.core import digest, quiet
from tidings.core.models import DigestRule, Preferences

__all__ = ["CLOSING", "MAX_ITEMS", "MAX_JOBS", "HeldItem", "Retime", "Retimed", "Retimer",
           "WaitingJob", "retimer"]

# The most jobs and held items one change re-times: a user has a handful of
# each (a pending group collapses to one job), and a change of preferences is
# one request that should not turn into a scan of a backlog.
MAX_JOBS = 1000
MAX_ITEMS = 1000
# The window key of items whose rule was removed: they close together, and no
# publish joins them (no rule has this key).
CLOSING = "closing"


@dataclass(slots=True)
class WaitingJob:
    """A queued job, not attempted yet, due later and not being sent."""

    id: str
    channel: str
    created_at: float
    not_before: float
    fallback: bool
    notification: bytes


@dataclass(slots=True)
class HeldItem:
    """A notification held in a digest window (one row per destination)."""

    channel: str
    rule: str
    nid: str
    created_at: float
    due_at: float
    notification: bytes


@dataclass(slots=True)
class Retimed:
    """What to write back."""

    jobs: dict[str, float] = field(default_factory=dict)  # job id -> not_before
    # (channel, rule, nid) -> the rule key it moves to (every destination of it)
    moves: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # (channel, rule key) -> the window's closing time, for all its items
    windows: dict[tuple[str, str], float] = field(default_factory=dict)
    # channels with a job due now that was not: their lanes are woken
    sooner: set[str] = field(default_factory=set)


class _Priority(msgspec.Struct):
    priority: str = "normal"


_priority = msgspec.json.Decoder(_Priority).decode


@dataclass
class Retimer:
    """Re-times one user's waiting jobs and held items under ``prefs``."""

    prefs: Preferences
    quiet_changed: bool
    now: float
    fallback_delay: float
    defaults: digest.Rules
    result: Retimed | None = None

    def __call__(self, jobs: list[WaitingJob], items: list[HeldItem]) -> Retimed:
        out = Retimed()
        now = datetime.fromtimestamp(self.now, UTC)
        if self.quiet_changed:
            window = quiet.window_of(self.prefs)
            for job in jobs:
                if digest.is_digest(job.id):
                    continue
                try:
                    priority = _priority(job.notification).priority
                except msgspec.DecodeError:
                    continue
                until = quiet.quiet_until(window, priority, now)
                base = job.created_at + (self.fallback_delay if job.fallback else 0.0)
                at = max(base, until.timestamp() if until is not None else self.now)
                if at != job.not_before:
                    out.jobs[job.id] = at
                    if at <= self.now:
                        out.sooner.add(job.channel)
        self._windows(items, now, out)
        self.result = out
        return out

    def _windows(self, items: list[HeldItem], now: datetime, out: Retimed) -> None:
        rules: dict[str, DigestRule | None] = {}
        opened: dict[tuple[str, str], float] = {}
        changed: set[tuple[str, str]] = set()
        for item in items:
            try:
                category = digest.category_of(item.notification)
            except msgspec.DecodeError:
                continue
            rule = digest.rule_for(self.prefs, self.defaults, category, item.channel)
            key = digest.key(rule) if rule is not None else CLOSING
            rules[key] = rule
            window = (item.channel, key)
            if key != item.rule:
                out.moves[item.channel, item.rule, item.nid] = key
                changed.add(window)
            elif self.quiet_changed:
                changed.add(window)
            opened[window] = min(opened.get(window, item.created_at), item.created_at)
        for window in sorted(changed):
            first = datetime.fromtimestamp(opened[window], UTC)
            out.windows[window] = digest.retimed(rules[window[1]], first, now,
                                                 self.prefs).timestamp()


# (the preferences before, after) -> what re-times the user's waiting jobs
# and held items, or None: Store.update_preferences calls it in its transaction.
Retime = Callable[[Preferences, Preferences], "Retimer | None"]


def retimer(old: Preferences, new: Preferences, *, now: float, fallback_delay: float,
            defaults: digest.Rules) -> Retimer | None:
    """A :class:`Retimer` for a change from ``old`` to ``new``; None when
    neither the quiet hours nor the digest rules changed (nothing to read)."""
    quiet_changed = old.quiet_hours != new.quiet_hours
    if not quiet_changed and old.digests == new.digests:
        return None
    return Retimer(new, quiet_changed, now, fallback_delay, defaults)
