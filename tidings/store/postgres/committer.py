"""Group commit on PostgreSQL: concurrent publishes, one statement.

A publish on its own costs a pooled connection, a round trip and a commit
(with its WAL flush) for two or three rows.  The committer gathers the
publishes that arrive while earlier ones are being written and commits each
group in **one statement** (``sql.PUBLISH_MANY``: one multi-row statement per
table, arrays in, one round trip, one commit), like SQLite's writer thread
does for a single node (tidings/store/sqlite/store.py).  Up to
``in_flight`` groups are written at once, each on its own connection, so the
next group is gathered and sent while the last one waits for its commit.

At low rates there is nothing to gather: a publish that finds nothing being
written and nothing waiting is written at once, in the caller's task, with a
single publish's statements (publish.py), and so is a group of one.  Arrays,
a writer task and a hand-off back cost a one-publish group about as much
node CPU as the statement itself (~60-90 us a publish, bench NOTES).

Under load a group waits, at most ``GATHER``, until as many publishes have
arrived since the last commits as those commits answered: callers that
publish again once answered come back one by one through HTTP, and the
first of them would otherwise leave in a group of its own.  A publish to an
idle store never waits.

Seqs still come from the database, so nodes sharing it stay consistent:
the group's streams upsert moves every recipient's ``head_seq`` by the
number of the group's items addressed to them, under that row's lock, and
hands the seqs out in the order the items were submitted.  A user's seqs
stay gapless and in commit order across any number of nodes.

What it takes: notifications to lists of users, fanned out on write, with or
without an idempotency key.  Topics, broadcasts, grouped (``group_key``) and
scheduled notifications, and those with outbound jobs, keep their own
multi-statement paths (publish.py).

Failures: a connection failure or a database that cannot write fails the
whole group with ``Unavailable`` (nothing of it was committed: it was one
statement).  Any other error (one item's bad data) rolls the group back and
each item is published again on its own, so it fails alone.  A caller is
answered only after the commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from tidings.errors import Unavailable
from tidings.store.base import Delivery, NewNotification, PublishOutcome
from tidings.store.postgres.sql import PUBLISH_MANY

__all__ = ["Committer", "takes"]

MAX_ITEMS = 500  # publishes per group
MAX_PAIRS = 5000  # (publish, recipient) pairs per group, unless one publish has more
# Groups being written at once, each on a pooled connection.  Two: the next
# group is sent while the last one waits for its commit, and fewer, larger
# groups cost the database less per publish than four smaller ones (16
# publishers, 2-core machine: 1, 2, 4 in flight gave 3,005, 2,985, 2,750/s
# with 147, 200, 227 us of database CPU per publish; bench NOTES, session 7).
IN_FLIGHT = 2
# A publish is written at once, alone, only when the store has been idle this
# long (s): under load the next publish arrives within microseconds of the last
# commit's answer, and writing those alone split the groups (PostgreSQL CPU per
# publish +33% at 16 publishers, bench NOTES "Final pairs of the evening").
IDLE_GAP = 0.001
# Under load a group waits up to this long (s) for the callers that commits
# answered to publish again, until as many publishes arrived as were answered.
# Publishers that publish again once answered (an app's workers, a queue's
# consumers) are back within a few hundred microseconds, while each request
# still costs this node its HTTP work: without the wait the first of them
# left in a group of one or two and the rest followed in the next, so
# through HTTP at 16 publishers groups held 6 publishes where the same store
# in process gathered 16, and each statement costs the database ~200 us and
# this node ~60 us whatever its size (docs/deploy.md).
GATHER = 0.001

_decode = msgspec.json.decode


def takes(item: NewNotification) -> bool:
    """Whether ``item`` is published by group commit."""
    return (item.users is not None and item.group_key is None and item.deliver_at is None
            and not item.jobs)


class _Pending:
    __slots__ = ("item", "users", "fut", "run")

    def __init__(self, item: NewNotification, fut: asyncio.Future,
                 run: list[_Pending] | None = None):
        self.item = item
        self.users = list(dict.fromkeys(item.users or ()))
        self.fut = fut
        self.run = run  # the batch run it belongs to: one group, whole (publish_run)


class Committer:
    """``await committer.publish(app_id, item, window)`` -- see the module docstring.

    ``call(fn, *args)`` runs ``fn(conn, *args)`` on a pooled connection and
    turns connection failures into ``Unavailable`` (``PostgresStore._call``);
    ``alone(app_id, item, window)`` publishes one item by itself.
    """

    def __init__(self, call: Callable[..., Awaitable[Any]],
                 alone: Callable[[str, NewNotification, float], Awaitable[PublishOutcome]],
                 *, in_flight: int = IN_FLIGHT):
        self._call = call
        self._alone = alone
        self._in_flight = in_flight
        self._writers = 0
        self._tasks: set[asyncio.Task] = set()  # a running task needs a reference
        # waiting publishes per (app, window): one statement has one of each
        self._queues: dict[tuple[str, float], list[_Pending]] = {}
        self._claiming: set[tuple[str, str]] = set()  # (app, key) of the groups in flight
        self.groups = 0  # statements run, for tests and /metrics
        self.items = 0
        self._done_at = float("-inf")  # loop time the last write ended
        # publishes answered by commits and not yet followed by as many new
        # ones: the next group waits for them (GATHER), woken by the future
        self._out = 0
        self._gathered: asyncio.Future | None = None

    async def publish(self, app_id: str, item: NewNotification, window: float
                      ) -> PublishOutcome:
        loop = asyncio.get_running_loop()
        if not self._writers and not self._queues and loop.time() - self._done_at >= IDLE_GAP:
            return await self._idle(app_id, item, window)
        fut = loop.create_future()
        self._enqueue(app_id, window, [_Pending(item, fut)])
        return await fut

    async def publish_run(self, app_id: str, items: list[NewNotification], window: float
                          ) -> list[PublishOutcome | Exception]:
        """Consecutive items of one batch request, in their order: each
        chunk (at most a group's size) goes into one group whole, whose
        statement hands out seqs in item order, and the next chunk is queued
        once it is committed.  Gathered as single publishes, a batch's items
        could commit in two groups at once, or one alone beside a group, and
        a user's seqs come out of the request's order."""
        loop = asyncio.get_running_loop()
        out: list[PublishOutcome | Exception] = []
        for chunk in _chunks(items):
            run: list[_Pending] = []
            run += [_Pending(item, loop.create_future(), run) for item in chunk]
            self._enqueue(app_id, window, run)
            out += await asyncio.gather(*(p.fut for p in run), return_exceptions=True)
        return out

    def _enqueue(self, app_id: str, window: float, pending: list[_Pending]) -> None:
        """Queue ``pending`` for the next groups, with a writer to take them."""
        self._queues.setdefault((app_id, window), []).extend(pending)
        self._out = max(self._out - len(pending), 0)
        gathered = self._gathered
        if gathered is not None and not self._out:
            self._gathered = None
            _settle(gathered)
        if self._writers < self._in_flight:
            self._start_writer()

    def _start_writer(self) -> None:
        self._writers += 1
        task = asyncio.create_task(self._write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _idle(self, app_id: str, item: NewNotification, window: float
                    ) -> PublishOutcome:
        """Nothing being written and nothing waiting: there is no group to
        gather, so the publish is written at once, in the caller's task, with
        a single publish's statements (see the module docstring).  It counts
        as a writer meanwhile: what arrives now is grouped as usual."""
        claimed = (app_id, item.idempotency_key) if item.idempotency_key is not None else None
        self._writers += 1
        self._out = 0  # no load: nothing to wait for
        if claimed is not None:
            self._claiming.add(claimed)
        try:
            out = await self._alone(app_id, item, window)
            self.groups += 1
            self.items += 1
            return out
        finally:
            if claimed is not None:
                self._claiming.discard(claimed)
            self._writers -= 1
            self._done_at = asyncio.get_running_loop().time()
            if self._queues and self._writers < self._in_flight:
                self._start_writer()  # what arrived meanwhile, or waited for the key

    async def _write(self) -> None:
        try:
            # Once round the event loop first: the publishes whose requests
            # were read in the same pass join this group.
            await asyncio.sleep(0)
            while True:
                if self._queues and self._out:
                    await self._gather()
                key, group = self._next_group()
                if not group:
                    return  # what is left waits for a key in flight: its writer takes it
                claimed = {(key[0], p.item.idempotency_key) for p in group
                           if p.item.idempotency_key is not None}
                self._claiming |= claimed
                try:
                    await self._commit(key[0], key[1], group)
                    # these callers are likely to publish again: the next
                    # group waits for them (GATHER); a batch request's run
                    # is one caller
                    self._out += sum(p.run is None or p is p.run[0] for p in group)
                except BaseException as exc:  # never leave a caller waiting
                    for p in group:
                        _settle(p.fut, exc=exc if isinstance(exc, Exception)
                                else Unavailable("the store is closing"))
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    self._claiming -= claimed
        finally:
            self._writers -= 1
            self._done_at = asyncio.get_running_loop().time()

    async def _gather(self) -> None:
        """Wait until the answered callers are back (``_out``), at most GATHER."""
        gathered = self._gathered
        if gathered is None:
            gathered = self._gathered = asyncio.get_running_loop().create_future()
        timer = asyncio.get_running_loop().call_later(GATHER, _settle, gathered)
        try:
            await asyncio.shield(gathered)
        finally:
            timer.cancel()
            if self._gathered is gathered:
                self._gathered = None
        self._out = 0  # waited once: what has come is the group

    def _next_group(self) -> tuple[tuple[str, float], list[_Pending]]:
        for key in list(self._queues):
            group = self._take(key)
            if group:
                return key, group
        return ("", 0.0), []

    def _take(self, key: tuple[str, float]) -> list[_Pending]:
        """The next group of the ``key`` queue.  An idempotency key goes into
        a statement at most once (a second claim of it in one upsert is an
        error) and not while a group in flight holds it: a later publish with
        the key then waits and answers the earlier one's result, in the order
        they were submitted."""
        app_id = key[0]
        group: list[_Pending] = []
        keys: set[str] = set()
        pairs = 0
        rest: list[_Pending] = []
        later: set[int] = set()  # the runs left whole for a later group
        for p in self._queues[key]:
            k = p.item.idempotency_key
            run = p.run
            if run is None:
                full = bool(group) and (len(group) >= MAX_ITEMS
                                        or pairs + len(p.users) > MAX_PAIRS)
            elif p is run[0]:  # a run joins whole or waits whole
                full = bool(group) and (len(group) + len(run) > MAX_ITEMS
                                        or pairs + sum(len(q.users) for q in run) > MAX_PAIRS)
                if full:
                    later.add(id(run))
            else:
                full = id(run) in later
            if full or (k is not None and (k in keys or (app_id, k) in self._claiming)):
                rest.append(p)
                continue
            group.append(p)
            pairs += len(p.users)
            if k is not None:
                keys.add(k)
        if rest:
            # the queue of another app or window goes next
            del self._queues[key]
            self._queues[key] = rest
        else:
            del self._queues[key]
        return group

    async def _commit(self, app_id: str, window: float, group: list[_Pending]) -> None:
        if len(group) == 1:  # a single publish's statements: no arrays to encode
            self.groups += 1
            self.items += 1
            await self._one(app_id, window, group[0])
            return
        try:
            rows = await self._call(_publish_many, app_id, window, group)
        except Unavailable as exc:
            for p in group:
                _settle(p.fut, exc=exc)
            return
        except Exception:  # noqa: BLE001 - one item's fault: each on its own, in order
            for p in group:
                await self._one(app_id, window, p)
            return
        self.groups += 1
        self.items += len(group)
        dup: list[_Pending] = []
        for p, (_, went, total, users, epochs, seqs) in zip(group, rows, strict=True):
            if not went:
                dup.append(p)
                continue
            deliveries = list(map(Delivery, users, epochs, seqs)) if users else []
            n = len(deliveries)
            _settle(p.fut, PublishOutcome(p.item.id, "accepted", n, muted=total - n,
                                          deliveries=deliveries, body=p.item.body))
        if dup:
            await asyncio.gather(*(self._duplicate(app_id, p) for p in dup))

    async def _one(self, app_id: str, window: float, p: _Pending) -> None:
        try:
            _settle(p.fut, await self._alone(app_id, p.item, window))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            _settle(p.fut, exc=exc)

    async def _duplicate(self, app_id: str, p: _Pending) -> None:
        """The first result of a key that this group did not claim (committed
        by now: the claim waited for the transaction that holds the key)."""
        try:
            first = _decode(await self._call(_first_result, app_id, p.item.idempotency_key))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            _settle(p.fut, exc=exc)
            return
        _settle(p.fut, PublishOutcome(first["id"], "duplicate", first["recipients"],
                                      first.get("muted", 0), fingerprint=first.get("fp", "")))


def _chunks(items: list[NewNotification]) -> list[list[NewNotification]]:
    """``items`` in order, cut where a group would be full."""
    chunks: list[list[NewNotification]] = []
    chunk: list[NewNotification] = []
    pairs = 0
    for item in items:
        n = len(set(item.users or ()))
        if chunk and (len(chunk) >= MAX_ITEMS or pairs + n > MAX_PAIRS):
            chunks.append(chunk)
            chunk, pairs = [], 0
        chunk.append(item)
        pairs += n
    if chunk:
        chunks.append(chunk)
    return chunks


async def _publish_many(conn, app_id: str, window: float, group: list[_Pending]) -> list:
    items = [p.item for p in group]
    pair_item: list[int] = []
    pair_user: list[str] = []
    for i, p in enumerate(group, 1):
        pair_item += [i] * len(p.users)
        pair_user += p.users
    return await conn.fetch(
        PUBLISH_MANY, app_id, window,
        [it.id for it in items], [it.category for it in items], [it.body for it in items],
        [it.created_at for it in items], [it.expires_at for it in items],
        [it.idempotency_key for it in items], [it.fingerprint for it in items],
        pair_item, pair_user,
    )


async def _first_result(conn, app_id: str, key: str) -> bytes:
    return await conn.fetchval(
        "SELECT result FROM idempotency WHERE app_id = $1 AND key = $2", app_id, key)


def _settle(fut: asyncio.Future, value: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the caller went away; the publish stands
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
