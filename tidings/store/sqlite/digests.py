"""The SQLite store's digest windows (contract: tidings/store/outbound.py,
schema: sql/sqlite_005.sql).  The one writer thread makes each window's
close a single transaction: its items leave and its digest job arrives
together, so a window is sent once even with several processes on one file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from tidings.core import retime
from tidings.core.models import Preferences
from tidings.store.outbound import DigestBuilder, DigestItem, NewJob

__all__ = ["SQLiteDigests", "held_tx", "hold_tx", "move_tx"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_decode_prefs = msgspec.json.Decoder(Preferences).decode

_HOLD = (
    "INSERT INTO digest_items(app_id, user_id, channel, rule, nid, destination, notification, "
    "created_at, expires_at, due_at) VALUES (?,?,?,?,?,?,?,?,?, COALESCE((SELECT min(due_at) "
    "FROM digest_items WHERE app_id=? AND user_id=? AND channel=? AND rule=?), ?)) "
    "ON CONFLICT DO NOTHING"
)
_QUEUE = (
    "INSERT INTO jobs(id, app_id, user_id, nid, channel, destination, notification, "
    "created_at, expires_at, not_before, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(id) DO NOTHING"
)


def hold_tx(conn: Any, held: list[NewJob]) -> None:
    """Put ``held`` (jobs with a ``digest`` key) in their windows, inside the
    caller's transaction."""
    conn.executemany(_HOLD, [
        (j.app, j.user, j.channel, n.digest, n.nid, _encode(j.destination), j.notification,
         j.created_at, j.expires_at, j.app, j.user, j.channel, n.digest, n.not_before)
        for n in held for j in (n.job,)
    ])


def held_tx(conn: Any, app_id: str, user: str) -> list[retime.HeldItem]:
    """The user's held items, oldest first, up to ``retime.MAX_ITEMS``."""
    return [retime.HeldItem(*r) for r in conn.execute(
        "SELECT channel, rule, nid, created_at, due_at, notification FROM digest_items "
        "WHERE app_id=? AND user_id=? ORDER BY created_at, nid LIMIT ?",
        (app_id, user, retime.MAX_ITEMS)).fetchall()]


def move_tx(conn: Any, app_id: str, user: str, out: retime.Retimed) -> None:
    """Items to the windows of their new rules, then the windows' closing times."""
    conn.executemany(
        "UPDATE digest_items SET rule=? WHERE app_id=? AND user_id=? AND channel=? AND rule=? "
        "AND nid=?", [(new, app_id, user, channel, rule, nid)
                      for (channel, rule, nid), new in out.moves.items()])
    conn.executemany(
        "UPDATE digest_items SET due_at=? WHERE app_id=? AND user_id=? AND channel=? AND rule=?",
        [(due, app_id, user, channel, rule) for (channel, rule), due in out.windows.items()])


class SQLiteDigests:
    # Provided by SQLiteStore: _write (the writer thread), _q1 (reads).
    _write: Callable[..., asyncio.Future]
    _q1: Callable[..., Any]

    async def flush_digests(self, now: float, limit: int, build: DigestBuilder) -> list[str]:
        # Look on the read connection first: a poll with nothing due writes nothing.
        if self._q1("SELECT 1 FROM digest_items WHERE due_at<=? LIMIT 1", (now,)) is None:
            return []

        def flush(conn):
            channels: set[str] = set()
            windows = conn.execute(
                "SELECT DISTINCT app_id, user_id, channel, rule FROM digest_items "
                "WHERE due_at<=? LIMIT ?", (now, limit)).fetchall()
            for app, user, channel, rule in windows:
                rows = conn.execute(
                    "DELETE FROM digest_items WHERE app_id=? AND user_id=? AND channel=? "
                    "AND rule=? AND due_at<=? RETURNING nid, destination, notification, "
                    "created_at, expires_at", (app, user, channel, rule, now)).fetchall()
                items = sorted((DigestItem(r[0], _decode(r[1]), r[2], r[3], r[4])
                                for r in rows if r[4] is None or r[4] > now),
                               key=lambda i: (i.nid, i.created_at))
                if not items:
                    continue
                # As they are now, in the closing transaction: a channel the
                # user switched off while the window was open sends nothing.
                prefs = conn.execute("SELECT doc FROM prefs WHERE app_id=? AND user_id=?",
                                     (app, user)).fetchone()
                jobs = build(app, user, channel, rule, items,
                             _decode_prefs(prefs[0]) if prefs else None)
                conn.executemany(_QUEUE, [
                    (j.id, j.app, j.user, n.nid, j.channel, _encode(j.destination),
                     j.notification, j.created_at, j.expires_at, n.not_before, j.created_at)
                    for n in jobs for j in (n.job,)])
                channels.update(n.job.channel for n in jobs)
            return sorted(channels)

        return await self._write(flush)
