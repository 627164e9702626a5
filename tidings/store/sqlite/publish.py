"""The SQLite store's write transactions (store.py runs them).

Each function runs on the store's writer thread, inside its group commit:
``conn`` is the write connection with a transaction open, and a function
that raises has its own transaction rolled back alone (``_Writer._run_batch``).
Kept apart from store.py so that the store reads as its public methods and
the writer, and the multi-statement writes as one place to review.
"""

from __future__ import annotations

import sqlite3
import time

import msgspec

from tidings.core.ids import id_floor, new_epoch
from tidings.store.base import RECOUNT_MAX, Delivery, NewNotification, Pruned, PublishOutcome
from tidings.store.sqlite import groups as _groups
from tidings.store.sqlite import schedule as _sched
from tidings.store.sqlite.appends import WriterConnection
from tidings.store.sqlite.entries import entry_seqs, seqs_json
from tidings.store.sqlite.errors import transient
from tidings.store.sqlite.outbound import insert_jobs_tx

__all__ = ["bump_revs_tx", "ensure_stream", "prune_tx", "publish_many_tx", "publish_tx",
           "set_state_tx"]

_CHUNK = 500  # host parameters per IN (...) list
_encode = msgspec.json.encode


def _chunks(items: list, n: int = _CHUNK):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def bump_revs_tx(conn: sqlite3.Connection, app_id: str, users: list[str]) -> None:
    """These users' counts moved with no seq or offset: raise their revision
    (``Counts.rev``; user ``''``: every user of the app), in the caller's
    transaction."""
    conn.executemany(
        "INSERT INTO counts_revs(app_id, user_id, rev) VALUES (?,?,1) "
        "ON CONFLICT(app_id, user_id) DO UPDATE SET rev=rev+1",
        [(app_id, u) for u in users],
    )


def ensure_stream(conn: sqlite3.Connection, app_id: str, user: str):
    conn.execute(
        "INSERT INTO streams(app_id, user_id, epoch, head_seq) VALUES (?,?,?,0) "
        "ON CONFLICT DO NOTHING", (app_id, user, new_epoch()),
    )
    return conn.execute(
        "SELECT epoch, head_seq, floor_seq FROM streams WHERE app_id=? AND user_id=?",
        (app_id, user),
    ).fetchone()


def publish_tx(conn: WriterConnection, app_id: str, item: NewNotification, threshold: int,
               window: float):
    """One publish.  A plain one (no group key, fanned out on write) only
    gathers its rows on ``conn``, written with the group's others
    (appends.py); the others write at once, after what was gathered."""
    if (item.users is not None and item.idempotency_key is None and item.deliver_at is None
            and item.group_key is None and not item.jobs
            and not conn.has_mutes(app_id, item.category)):
        return _append(conn, app_id, item, item.users)
    return _publish(conn, app_id, item, threshold, window)


publish_tx.appends = True  # type: ignore[attr-defined]  # store.py: needs no flush first


def _publish(conn: WriterConnection, app_id: str, item: NewNotification, threshold: int,
             window: float):
    """:func:`publish_tx`'s other publishes.  A function of its own: its
    comprehensions make cells of its variables on every call, which the
    plain publish has no need to pay for."""
    if item.idempotency_key is not None:
        row = conn.find_key(app_id, item.idempotency_key)
        if row and row[1] > item.created_at - window:
            first = msgspec.json.decode(row[0])
            return PublishOutcome(
                first["id"], "duplicate", first["recipients"], first.get("muted", 0),
                fingerprint=first.get("fp", ""),
            )
    if item.deliver_at is not None:
        conn.flush()
        out = _sched.schedule_tx(conn, app_id, item)
        _remember_key(conn, app_id, item, out)
        return out

    users: list[str] = []
    audience: str | None = None
    if item.users is not None:
        users = list(dict.fromkeys(item.users))
    elif item.topic is not None:
        # the members up to one past the threshold (no count first)
        users = conn.topic_members(app_id, item.topic, max(threshold, 0) + 1)
        if len(users) > threshold:
            audience, users = item.topic, []
    else:
        audience = "*"

    out = PublishOutcome(item.id, "accepted", 0, body=item.body)
    if audience is not None:
        conn.flush()
        (offset,) = conn.execute(
            "INSERT INTO feed_heads(app_id, head) VALUES (?, 1) ON CONFLICT(app_id) "
            "DO UPDATE SET head=head+1 RETURNING head", (app_id,),
        ).fetchone()
        conn.execute(
            "INSERT INTO notifications(app_id, id, category, body, audience, feed_offset, "
            "recipients, created_at, expires_at, committed_at) VALUES (?,?,?,?,?,?,0,?,?,?)",
            (app_id, item.id, item.category, item.body, audience, offset,
             item.created_at, item.expires_at, time.time()),
        )
        out.feed_offset, out.audience, out.category = offset, audience, item.category
    else:
        muted: set[str] = set()
        if conn.has_mutes(app_id, item.category):
            for part in _chunks(users):
                marks = ",".join("?" * len(part))
                muted.update(r[0] for r in conn.execute(
                    "SELECT user_id FROM mutes WHERE app_id=? AND category=? "
                    f"AND user_id IN ({marks})", (app_id, item.category, *part),
                ))
        recipients = [u for u in users if u not in muted] if muted else users
        created, expires, nid = item.created_at, item.expires_at, item.id
        epochs, seqs = conn.next_seqs(app_id, recipients)
        out.deliveries = list(map(Delivery, recipients, epochs, seqs))
        # group entries are found through group_members: no seqs for them
        plain = None if item.group_key else seqs_json(recipients, seqs)
        conn.add_notification((app_id, nid, item.category, item.body, len(recipients), created,
                               expires, plain))
        if item.group_key is None:
            conn.add_entries(app_id, recipients, seqs, nid, created, expires, plain)
        else:
            # reads the inbox: everything gathered so far must be in it
            conn.flush()
            rows = [(app_id, user, seq, nid, created, expires)
                    for user, seq in zip(recipients, seqs, strict=True)]
            _groups.insert_entries_tx(conn, app_id, item, rows, out.deliveries)
        out.recipients, out.muted = len(recipients), len(muted)
        if item.jobs:  # in the same transaction as the inbox rows (docs/design.md §2.1)
            out.replaced = insert_jobs_tx(conn, item.jobs)

    _remember_key(conn, app_id, item, out)
    return out


def _append(conn: WriterConnection, app_id: str, item: NewNotification,
            users: list[str]) -> PublishOutcome:
    """The usual publish, as :func:`publish_tx` makes it with fewer steps:
    to users (nobody of the app muted its category), without a key, a
    group, a schedule or outbound jobs."""
    nid, created, expires = item.id, item.created_at, item.expires_at
    if len(users) == 1:  # the usual publish: its steps in one call, the outcome positional
        user = users[0]
        epoch, seq = conn.append_one(app_id, user, nid, item.category, item.body, created,
                                     expires)
        return PublishOutcome(nid, "accepted", 1, 0, [Delivery(user, epoch, seq)], None, None,
                              item.body)
    users = list(dict.fromkeys(users))
    epochs, seqs = conn.next_seqs(app_id, users)
    plain = seqs_json(users, seqs)
    conn.add_notification((app_id, nid, item.category, item.body, len(users), created, expires,
                           plain))
    conn.add_entries(app_id, users, seqs, nid, created, expires, plain)
    return PublishOutcome(nid, "accepted", len(users), 0, list(map(Delivery, users, epochs, seqs)),
                          None, None, item.body)


def publish_many_tx(conn: WriterConnection, app_id: str, items: list[NewNotification],
                    threshold: int, window: float) -> list:
    """The items of one batch request, as one job: their outcomes, in order.
    Optimistic like the group commit around it: when an item raises, the
    writer rolls the group back and runs this job again alone, as
    :func:`publish_many_alone`.

    The usual item (one user, as :func:`_append` takes it) is appended
    here, without :func:`publish_tx` and :func:`_append` around it: their
    calls were a third of the writer's Python per item."""
    out: list = []
    add = out.append
    append_one, has_mutes = conn.append_one, conn.has_mutes
    for item in items:
        users = item.users
        if (users is not None and len(users) == 1 and item.idempotency_key is None
                and item.deliver_at is None and item.group_key is None and not item.jobs
                and not has_mutes(app_id, item.category)):
            user, nid = users[0], item.id
            epoch, seq = append_one(app_id, user, nid, item.category, item.body,
                                    item.created_at, item.expires_at)
            add(PublishOutcome(nid, "accepted", 1, 0, [Delivery(user, epoch, seq)], None, None,
                               item.body))
        else:
            add(publish_tx(conn, app_id, item, threshold, window))
    return out


def publish_many_alone(conn: WriterConnection, app_id: str, items: list[NewNotification],
                       threshold: int, window: float) -> list:
    """:func:`publish_many_tx` with each item in a savepoint of its own: an
    item that fails gets its exception in place of an outcome, and takes
    nothing with it (no row, no seq).  An error about the file rather than
    the item fails the whole job (store.py answers it with 503)."""
    out: list = []
    for item in items:
        heads = conn.savepoint()
        try:
            outcome = publish_tx(conn, app_id, item, threshold, window)
            conn.release()
        except Exception as exc:
            conn.rollback_to(heads)
            if transient(exc):
                raise
            out.append(exc)
        else:
            out.append(outcome)
    return out


publish_many_tx.appends = True  # type: ignore[attr-defined]
publish_many_tx.alone = publish_many_alone  # type: ignore[attr-defined]  # store.py


def _remember_key(conn: WriterConnection, app_id: str, item: NewNotification,
                  out: PublishOutcome) -> None:
    if item.idempotency_key is not None:
        conn.remember_key(
            app_id, item.idempotency_key,
            _encode({"id": out.id, "recipients": out.recipients, "muted": out.muted,
                     "fp": item.fingerprint}),
            item.created_at,
        )


def state_stamps(code: int, now: float) -> tuple[str, tuple[float, ...]]:
    """The SET clauses (and their parameters) that record when an entry first
    became seen, read and archived, riding on the UPDATE that moves its state:
    moving to read marks it seen too when it skipped that step."""
    cols = [c for c, at in (("seen_at", 1), ("read_at", 2), ("archived_at", 3)) if code >= at]
    return "".join(f", {c}=coalesce({c}, ?)" for c in cols), (now,) * len(cols)


def set_state_tx(conn, app_id: str, user: str, ids: list[str] | None, code: int, now: float):
    changed: list[str] = []
    stamps, times = state_stamps(code, now)
    if ids is None:
        changed += [r[0] for r in conn.execute(
            f"UPDATE inbox SET state=?{stamps} WHERE app_id=? AND user_id=? AND state<? "
            "AND (expires_at IS NULL OR expires_at>?) RETURNING nid",
            (code, *times, app_id, user, code, now),
        )]
        feed_ids = [r[0] for r in conn.execute(
            "SELECT n.id FROM notifications n WHERE n.app_id=? AND n.feed_offset > 0 "
            "AND n.deleted=0 AND (n.expires_at IS NULL OR n.expires_at>?) AND (n.audience='*' "
            "OR n.audience IN (SELECT topic FROM topic_subs WHERE app_id=? AND user_id=?))",
            (app_id, now, app_id, user),
        )]
    else:
        # an older member's id marks the group entry that holds it now
        ids = list(dict.fromkeys(ids + _groups.current_ids(conn, app_id, user, ids)))
        for part in _chunks(entry_seqs(conn, app_id, user, ids)):
            marks = ",".join("?" * len(part))
            changed += [r[0] for r in conn.execute(
                f"UPDATE inbox SET state=?{stamps} WHERE app_id=? AND user_id=? AND state<? "
                f"AND (expires_at IS NULL OR expires_at>?) AND seq IN ({marks}) RETURNING nid",
                (code, *times, app_id, user, code, now, *part),
            )]
        done = set(changed)
        rest = [i for i in ids if i not in done]
        feed_ids = []
        for part in _chunks(rest):
            marks = ",".join("?" * len(part))
            feed_ids += [r[0] for r in conn.execute(
                f"SELECT n.id FROM notifications n WHERE n.app_id=? AND n.feed_offset > 0 "
                f"AND n.deleted=0 AND (n.expires_at IS NULL OR n.expires_at>?) "
                f"AND n.id IN ({marks}) AND (n.audience='*' OR n.audience IN "
                f"(SELECT topic FROM topic_subs WHERE app_id=? AND user_id=?))",
                (app_id, now, *part, app_id, user),
            )]
    for nid in feed_ids:
        row = conn.execute(
            "INSERT INTO feed_state(app_id, user_id, nid, state, seen_at, read_at, archived_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(app_id, user_id, nid) DO UPDATE SET "
            f"state=excluded.state{stamps} WHERE feed_state.state < excluded.state RETURNING nid",
            (app_id, user, nid, code, *[now if code >= c else None for c in (1, 2, 3)], *times),
        ).fetchone()
        if row:
            changed.append(nid)
    if changed:
        bump_revs_tx(conn, app_id, [user])
    return changed


# What a sweep deletes that counts dropped with, as _COUNTS counts them
# (store.py): unread entries, feed items; live until then.  (The column that
# names whose, the table, what else makes a row count.)
_LOST = (("user_id", "inbox", "state<2"),
         ("audience", "notifications", "feed_offset>0 AND deleted=0"))


def _lost_tx(conn, where: str, args: tuple, older_than: float, now: float) -> Pruned:
    """Whose counts the sweep's deletes will lower (``Pruned.unread``,
    ``feeds`` and ``apps``): at most RECOUNT_MAX users and feeds named,
    past that their apps (store/base.py)."""
    lost = Pruned(0)
    apps: set[str] = set()
    for (column, table, counted), named in zip(_LOST, (lost.unread, lost.feeds), strict=True):
        sql = (f"SELECT DISTINCT app_id{{}} FROM {table} WHERE created_at<?{where} "
               f"AND {counted} AND (expires_at IS NULL OR expires_at>?)")
        named += conn.execute(sql.format(f", {column}") + " LIMIT ?",
                              (older_than, *args, now, RECOUNT_MAX + 1)).fetchall()
        if len(named) > RECOUNT_MAX:
            named.clear()
            apps.update(r[0] for r in conn.execute(sql.format(""), (older_than, *args, now)))
    lost.apps = sorted(apps)
    return lost


def prune_tx(conn, app_id: str | None, older_than: float) -> Pruned:
    where, args = ("", ()) if app_id is None else (" AND app_id=?", (app_id,))
    pruned = _lost_tx(conn, where, args, older_than, time.time())
    floors = conn.execute(
        "SELECT app_id, user_id, max(seq) FROM inbox WHERE created_at<?" + where +
        " GROUP BY app_id, user_id", (older_than, *args),
    ).fetchall()
    conn.executemany(
        "UPDATE streams SET floor_seq=max(floor_seq, ?) WHERE app_id=? AND user_id=?",
        [(s, a, u) for a, u, s in floors],
    )
    n = conn.execute("DELETE FROM inbox WHERE created_at<?" + where, (older_than, *args)).rowcount
    feed_floors = conn.execute(
        "SELECT app_id, max(feed_offset) FROM notifications WHERE feed_offset IS NOT NULL "
        "AND created_at<?" + where + " GROUP BY app_id", (older_than, *args),
    ).fetchall()
    conn.executemany(
        "UPDATE feed_heads SET floor=max(floor, ?) WHERE app_id=?",
        [(f, a) for a, f in feed_floors],
    )
    n += conn.execute(
        "DELETE FROM notifications WHERE created_at<?" + where, (older_than, *args)
    ).rowcount
    conn.execute("DELETE FROM idempotency WHERE created_at<?" + where, (older_than, *args))
    pruned.regrouped = _groups.prune_tx(conn, app_id, older_than, time.time())
    _sched.prune_tx(conn, app_id, older_than, id_floor(int(older_than * 1000)))
    for app in pruned.moved():
        bump_revs_tx(conn, app, [""])
    pruned.removed = n
    return pruned
