"""The transactional outbox: publish inside the app's own PostgreSQL transaction.

An app inserts a row into ``tidings_outbox`` in the same transaction as its
business write; ``tidings serve --outbox`` consumes the table and publishes
each row (consumer.py).  A notification then exists exactly when the order,
the comment, the like does, whatever crashes when.

The table is the whole contract, so any language can use it without a
client library (docs/outbox.md has the SQL): ``app`` is the app id and
``payload`` exactly the JSON body of ``POST /v1/notifications``.
:func:`publish` is that insert for Python, on an asyncpg or psycopg
connection.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

__all__ = ["SCHEMA", "NOTIFY_CHANNEL", "OutboxMissing", "publish"]

# Every insert wakes the consumers (one notification per statement, with the
# schema as payload: tables of the same name in other schemas of the same
# database are not theirs).  Without it they poll.
NOTIFY_CHANNEL = "tidings_outbox"

SCHEMA = """\
-- tidings transactional outbox (docs/outbox.md).  Apply it in the app's
-- database: psql "$DATABASE_URL" -f outbox.sql.  Safe to run again.
CREATE TABLE IF NOT EXISTS tidings_outbox (
    id         bigserial PRIMARY KEY,  -- the idempotency key of the publish
    app        text NOT NULL,          -- the app id
    payload    jsonb NOT NULL,         -- the body of POST /v1/notifications
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Rows that can never be published (a bad payload, an unknown app), with why.
CREATE TABLE IF NOT EXISTS tidings_outbox_dead (
    id         bigint PRIMARY KEY,
    app        text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    reason     text NOT NULL
);

CREATE OR REPLACE FUNCTION tidings_outbox_wake() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tidings_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS tidings_outbox_wake ON tidings_outbox;
CREATE TRIGGER tidings_outbox_wake AFTER INSERT ON tidings_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tidings_outbox_wake();
"""



class OutboxMissing(Exception):
    """The outbox database has no outbox tables (where its search_path looks)."""


_INSERT_ASYNCPG = "INSERT INTO tidings_outbox (app, payload) VALUES ($1, $2::jsonb) RETURNING id"
_INSERT_PSYCOPG = "INSERT INTO tidings_outbox (app, payload) VALUES (%s, %s::jsonb) RETURNING id"


def publish(conn: Any, *, app: str, to: dict | list[str], title: str = "", **fields: Any):
    """Queue a notification in the outbox, on the caller's connection and
    inside the caller's transaction; returns the row id.

    ``to`` is the ``to`` object of ``POST /v1/notifications``
    (``{"users": [...]}``, ``{"topic": "..."}`` or ``{"all": true}``), or a
    list of user ids; ``fields`` are the body's other fields (``body``,
    ``data``, ``category``, ``deliver_at``, ...).  Nothing is validated
    here beyond being JSON: the consumer moves a row it cannot publish to
    ``tidings_outbox_dead`` with the reason.

    asyncpg connections and psycopg ``AsyncConnection``: ``await`` the result.
    psycopg (3) and psycopg2 connections: it returns the id directly.
    """
    if not isinstance(app, str) or not app:
        raise ValueError("app must be the app id")
    body = {"to": {"users": list(to)} if isinstance(to, list) else to, "title": title, **fields}
    payload = json.dumps(body, default=_jsonable, ensure_ascii=False)
    module = type(conn).__module__.split(".")[0]
    if module == "asyncpg":
        return conn.fetchval(_INSERT_ASYNCPG, app, payload)
    if module == "psycopg" and hasattr(conn, "cursor") and _is_async(conn):
        return _publish_psycopg_async(conn, app, payload)
    if module in ("psycopg", "psycopg2"):
        with conn.cursor() as cur:
            cur.execute(_INSERT_PSYCOPG, (app, payload))
            return cur.fetchone()[0]
    raise TypeError(f"publish needs an asyncpg or psycopg connection, not {type(conn).__name__}")


def _is_async(conn: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(conn, "execute", None))


async def _publish_psycopg_async(conn: Any, app: str, payload: str) -> int:
    async with conn.cursor() as cur:
        await cur.execute(_INSERT_PSYCOPG, (app, payload))
        row = await cur.fetchone()
        return row[0]


def _jsonable(value: Any) -> Any:
    """datetimes (``deliver_at``) as ISO 8601, as the HTTP API takes them."""
    isoformat = getattr(value, "isoformat", None)
    if isoformat is None:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return isoformat()
