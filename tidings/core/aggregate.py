"""Aggregation by ``group_key``: "user_17 and 41 others liked your post".

A notification whose ``group_key`` matches an unread inbox entry of the same
user updates that entry instead of adding a row (docs/design.md §3).  This module is
the pure merge rule and the rendering helpers; the store decides *which*
entry to merge into (same user, same key, still unread) and persists the
:class:`GroupSummary` as one JSON blob next to the entry.

The summary keeps what a client needs to draw the row, modelled on Mastodon's
grouped notifications (``notifications_count``, ``sample_account_ids``, the
most recent notification):

* ``count`` -- notifications merged, exactly;
* ``actors`` -- up to :data:`SAMPLE_ACTORS` distinct actors, most recent
  first, each with the id of its latest notification;
* ``actor_count`` -- distinct actors seen.  Exact while no actor comes back
  after dropping out of the sample; such a returning actor is counted again,
  because remembering every actor would make the blob grow without bound;
* ``latest`` -- the newest notification (by id), whose title, body and url
  the row shows.

Ids are ULIDs (:mod:`tidings.core.ids`), so "newest" is the largest id, and
the merge does not depend on arrival order: a scheduled or delayed
notification that lands late never replaces a newer ``latest``, and the
sample is always the N actors with the newest notifications.
"""

from __future__ import annotations

from typing import Any

import msgspec

from tidings.core.models import Notification

__all__ = [
    "SAMPLE_ACTORS",
    "ActorSample",
    "GroupSummary",
    "actors_line",
    "decode",
    "describe_actors",
    "encode",
    "merge",
    "start",
]

SAMPLE_ACTORS = 3  # Mastodon shows a few avatars per group; 3 names fit one line


class ActorSample(msgspec.Struct, array_like=True, frozen=True):
    """One sampled actor, encoded as ``[actor, last_id]`` to keep the blob small."""

    actor: str
    last_id: str  # id of this actor's newest notification in the group


class GroupSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The aggregate of one group in one user's inbox (persisted as JSON)."""

    key: str
    count: int
    actor_count: int
    actors: tuple[ActorSample, ...]
    first_id: str  # the oldest notification merged: "since" for a client
    latest: Notification

    def view(self) -> dict[str, Any]:
        """The ``group`` object a client receives beside the latest notification."""
        return {
            "key": self.key,
            "count": self.count,
            "actor_count": self.actor_count,
            "actors": [a.actor for a in self.actors],
            "latest_at": self.latest.created_at,
        }


def start(note: Notification, sample: int = SAMPLE_ACTORS) -> GroupSummary:
    """The summary of a group that holds only ``note``."""
    if note.group_key is None:
        raise ValueError("a notification without group_key does not aggregate")
    if sample < 0:
        raise ValueError("sample must be >= 0")
    actors = (ActorSample(note.actor, note.id),) if note.actor and sample > 0 else ()
    return GroupSummary(
        key=note.group_key,
        count=1,
        actor_count=1 if note.actor else 0,
        actors=actors,
        first_id=note.id,
        latest=note,
    )


def merge(
    summary: GroupSummary | None, note: Notification, sample: int = SAMPLE_ACTORS
) -> GroupSummary:
    """The summary after ``note`` joins the group (``None``: a new group).

    Merging the notification that is already ``latest`` again returns the
    summary unchanged, so a replayed insert cannot inflate the count.
    """
    if summary is None:
        return start(note, sample)
    if note.group_key != summary.key:
        raise ValueError(f"group_key {note.group_key!r} does not match {summary.key!r}")
    if note.id == summary.latest.id:
        return summary
    actors = list(summary.actors)
    actor_count = summary.actor_count
    if note.actor:
        known = next((i for i, a in enumerate(actors) if a.actor == note.actor), None)
        if known is None:
            actor_count += 1
            actors.append(ActorSample(note.actor, note.id))
        elif note.id > actors[known].last_id:
            actors[known] = ActorSample(note.actor, note.id)
        # Newest first; ties cannot happen (ids are unique), the actor breaks them anyway.
        actors.sort(key=lambda a: (a.last_id, a.actor), reverse=True)
        del actors[sample:]
    return GroupSummary(
        key=summary.key,
        count=summary.count + 1,
        actor_count=actor_count,
        actors=tuple(actors),
        first_id=min(summary.first_id, note.id),
        latest=note if note.id > summary.latest.id else summary.latest,
    )


def actors_line(summary: GroupSummary, names: int = 1) -> tuple[list[str], int]:
    """The actors to name and how many others to count, for a client's own
    (translated) sentence: ``(["user_17"], 41)`` -> "user_17 and 41 others".

    Never answers "A and 1 other" when two names fit: naming the second actor
    is as short and says more.
    """
    if names < 1:
        raise ValueError("names must be at least 1")
    shown = [a.actor for a in summary.actors[:names]]
    others = max(0, summary.actor_count - len(shown))
    if others == 1 and len(summary.actors) > len(shown):
        shown.append(summary.actors[len(shown)].actor)
        others = 0
    return shown, others


def describe_actors(summary: GroupSummary, names: int = 1) -> str:
    """The English rendering: "user_17", "user_17 and user_9",
    "user_17 and 41 others", "user_17, user_9 and 40 others".  Empty when the
    group has no actors (the client shows the latest title alone)."""
    shown, others = actors_line(summary, names)
    if not shown:
        return ""
    if others:
        tail = f"{others} other" if others == 1 else f"{others} others"
        return f"{', '.join(shown)} and {tail}"
    if len(shown) == 1:
        return shown[0]
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GroupSummary)


def encode(summary: GroupSummary) -> bytes:
    """The JSON blob a store persists."""
    return _encoder.encode(summary)


def decode(blob: bytes | str) -> GroupSummary:
    return _decoder.decode(blob)
