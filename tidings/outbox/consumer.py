"""The outbox consumer: ``tidings serve --outbox`` publishes ``tidings_outbox`` rows.

Exactly once in the inbox, whatever dies when:

* A batch is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` inside one
  transaction on the outbox database; its rows are published (up to
  ``CONCURRENCY`` at once, like the items of a batch publish) with
  ``outbox:<id>`` as the idempotency key, then deleted, and the transaction
  commits.  Other consumers skip the locked rows, so
  several nodes share one outbox without doing the same work twice.
* A consumer that dies mid-batch (SIGKILL, a lost connection) never commits:
  PostgreSQL rolls the claim back, the rows are visible again, and whoever
  takes them next publishes with the same keys -- the store answers
  ``duplicate`` for those already in the inbox instead of writing them again.
  This holds within the idempotency window (24 h): a row published and then
  left undeleted for longer, with no consumer running, would be published
  again.
* A row that can never be published (a payload ``POST /v1/notifications``
  would refuse, an unknown app) is moved to ``tidings_outbox_dead`` with the
  reason, in the same transaction, so it never blocks the rows behind it.  A
  payload over ``max_body_bytes`` is moved so without being fetched.
  When the store is down, what was published is deleted and the rows the
  store could not take wait for the next try.

Consumers wake on ``NOTIFY tidings_outbox`` (the table's trigger) and poll
every ``poll_interval`` seconds as the fallback (a notification sent while a
consumer was reconnecting is not queued for it).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from tidings.api.common import decode
from tidings.core.backoff import Backoff
from tidings.core.models import PublishRequest, valid_app_id
from tidings.errors import (
    Invalid,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TidingsError,
    Unavailable,
)
from tidings.outbox import NOTIFY_CHANNEL, OutboxMissing
from tidings.store.postgres.errors import DOWN, STALE

log = logging.getLogger("tidings.outbox")

CONNECT_TIMEOUT = 5.0
KEY_PREFIX = "outbox:"  # the idempotency key of row N is "outbox:N"
CONCURRENCY = 16  # rows of a batch in flight at once

# A payload over $2 bytes (max_body_bytes, what POST /v1/notifications
# takes) comes as NULL: a batch of them is not fetched into memory whole.
_CLAIM = (
    "SELECT id, app, CASE WHEN octet_length(payload::text) <= $2 THEN payload::text END "
    "FROM tidings_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
)
_DELETE = "DELETE FROM tidings_outbox WHERE id = ANY($1::bigint[])"
_BURY = """
WITH gone AS (
    DELETE FROM tidings_outbox o USING unnest($1::bigint[], $2::text[]) AS r(id, reason)
    WHERE o.id = r.id
    RETURNING o.id, o.app, o.payload, o.created_at, r.reason
)
INSERT INTO tidings_outbox_dead (id, app, payload, created_at, reason)
SELECT id, app, payload, created_at, reason FROM gone
ON CONFLICT (id) DO UPDATE SET app = EXCLUDED.app, payload = EXCLUDED.payload,
    created_at = EXCLUDED.created_at, failed_at = now(), reason = EXCLUDED.reason
"""


async def check(url: str) -> None:
    """Fail early (``tidings serve --outbox``) on an unreachable database or a
    missing table, with a message an operator can act on."""
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except DOWN as exc:
        raise Unavailable(f"cannot reach the outbox database: {exc}") from exc
    try:
        if await conn.fetchval("SELECT to_regclass('tidings_outbox') IS NULL OR "
                               "to_regclass('tidings_outbox_dead') IS NULL"):
            raise OutboxMissing(
                "the outbox database has no tidings_outbox table: apply "
                "`tidings outbox schema` to it first (docs/outbox.md)")
    finally:
        await conn.close()


class OutboxConsumer:
    """Publishes the rows of one outbox through ``service`` until stopped."""

    def __init__(self, service, url: str, *, batch: int = 100, poll_interval: float = 1.0):
        self.service = service
        self.url = url
        self.batch = batch
        self.poll_interval = poll_interval
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._schema = ""
        # counters: rows published, rows found already published (a consumer
        # died mid-batch), rows moved to the dead-letter table
        self.published = 0
        self.duplicates = 0
        self.dead = 0

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop between two rows; an open batch rolls back (its rows are
        published again, as duplicates, by the next consumer)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _on_notify(self, conn, pid, channel, payload) -> None:
        if payload == self._schema:
            self._wake.set()

    async def _run(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
                self._schema = await conn.fetchval("SELECT current_schema()")
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                await self._consume(conn, backoff)
            except (*DOWN, *STALE) as exc:
                log.warning("outbox: connection lost (%s); reconnecting", exc)
            except asyncpg.UndefinedTableError as exc:
                log.error("outbox: %s; apply `tidings outbox schema` (docs/outbox.md)", exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox: consumer failed; restarting")
            finally:
                if conn is not None:
                    conn.terminate()  # an open batch is rolled back by the server
            await asyncio.sleep(backoff.next_delay())

    async def _consume(self, conn, backoff: Backoff) -> None:
        while True:
            self._wake.clear()
            claimed, stalled = await self._batch(conn)
            if stalled:
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if claimed >= self.batch:
                continue  # probably more behind
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    async def _batch(self, conn) -> tuple[int, bool]:
        """Claim, publish and delete one batch; ``(rows claimed, stalled)``,
        stalled when the store is down and rows were left for later."""
        timeout = self.service.settings.outbound.send_timeout
        async with conn.transaction():
            rows = await conn.fetch(_CLAIM, self.batch, self.service.settings.limits.max_body_bytes,
                                    timeout=timeout)
            limit = asyncio.Semaphore(CONCURRENCY)

            async def one(row) -> object:
                async with limit:
                    return await self._publish(*row)

            # Concurrently, as POST /v1/notifications/batch does: concurrent
            # publishes share the store's commits.
            outcomes = await asyncio.gather(*(one(row) for row in rows))
            done = [row[0] for row, why in zip(rows, outcomes, strict=True) if why is None]
            dead = [(row[0], why) for row, why in zip(rows, outcomes, strict=True)
                    if isinstance(why, str)]
            stalled = any(why is _LATER for why in outcomes)
            if done:
                await conn.execute(_DELETE, done, timeout=timeout)
            if dead:
                await conn.execute(_BURY, [i for i, _ in dead], [r for _, r in dead],
                                   timeout=timeout)
        self.dead += len(dead)
        for row_id, reason in dead:
            log.warning("outbox: row %d moved to tidings_outbox_dead: %s", row_id, reason)
        return len(rows), stalled

    async def _publish(self, row_id: int, app: str, payload: str | None):
        """Publish one row: None when it is in the inbox, the reason when it
        never will be, ``_LATER`` when the store cannot take it now."""
        service = self.service
        try:
            if not valid_app_id(app):  # named in the reason: not echoed, however long
                raise Invalid("app must be an app id (1-64 of a-z 0-9 _ -)", field="app")
            if payload is None:
                raise PayloadTooLarge(
                    f"payload over {service.settings.limits.max_body_bytes} bytes")
            req = decode(payload.encode(), PublishRequest)
            # a row is moved for good only on a fresh read: an app remembered
            # as missing may have been created on another node since
            if await service.app(app) is None and await service.apps.read(app) is None:
                raise NotFound(f"no such app {app!r}", field="app")
            result = await service.publish(app, req, f"{KEY_PREFIX}{row_id}")
        except _TRANSIENT as exc:
            log.warning("outbox: row %d not published yet: %s", row_id, exc)
            return _LATER
        except TidingsError as exc:
            where = f" ({exc.field})" if exc.field else ""
            return f"{exc.code}{where}: {exc.message}"
        except Exception as exc:
            # A bug must not wedge the outbox: the row waits in the dead-letter
            # table, with what went wrong, to be inserted again once fixed.
            log.exception("outbox: row %d failed", row_id)
            return f"internal: {type(exc).__name__}: {exc}"
        if result["status"] == "duplicate":
            self.duplicates += 1
            log.warning("outbox: row %d was already published (a consumer stopped "
                        "mid-batch); not published again", row_id)
        else:
            self.published += 1
        return None


_LATER = object()
_TRANSIENT: tuple[type[BaseException], ...] = (Unavailable, RateLimited, *DOWN)
