"""The transactional outbox (tidings/outbox): the table contract, the Python
publish function on asyncpg and psycopg, and the consumer on the real
PostgreSQL -- dead letters, LISTEN/NOTIFY wake-ups and polling, two
consumers sharing one outbox, and a consumer killed mid-batch.

Each test has a schema of its own (tests/store/pg.py) holding both the
store's tables and the app's outbox, the default deployment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import asyncpg
import psycopg
import pytest
from click.testing import CliRunner

from scripts.cluster import free_port_block
from tests.services import require_postgres
from tests.store.pg import fresh_schema
from tidings import outbox
from tidings.api.app import build_service
from tidings.cli import main
from tidings.config import Settings
from tidings.outbox.consumer import OutboxConsumer

TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def outbox_db():
    """A migrated store schema with the outbox tables in it: ``(url, conn)``."""
    base = require_postgres()
    async with fresh_schema(base) as settings:
        url = f"{base}?search_path={settings['search_path']}"
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(outbox.SCHEMA)
            yield url, conn
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def service_on(url: str, tmp_path, name: str = "n"):
    service = build_service(Settings(store=url, broker="local", data=str(tmp_path / name)))
    await service.open()
    try:
        yield service
    finally:
        await service.close()


@contextlib.asynccontextmanager
async def consuming(service, url: str, **options):
    consumer = OutboxConsumer(service, url, **options)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def wait_empty(conn, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval("SELECT count(*) FROM tidings_outbox"):
        assert time.monotonic() < deadline, "the outbox was not consumed"
        await asyncio.sleep(0.05)


async def inbox_titles(conn, app: str) -> list[str]:
    """Every notification title in the store, with repeats, one per inbox row."""
    rows = await conn.fetch(
        "SELECT convert_from(n.body, 'UTF8')::jsonb->>'title' AS title FROM inbox i "
        "JOIN notifications n ON n.app_id = i.app_id AND n.id = i.nid WHERE i.app_id = $1",
        app)
    return sorted(r["title"] for r in rows)


async def fill(conn, app: str, n: int, users: int = 10) -> None:
    """``n`` rows, titled t0..t<n-1>, to ``users`` users, in one statement."""
    await conn.execute(
        "INSERT INTO tidings_outbox (app, payload) SELECT $1, jsonb_build_object("
        "'to', jsonb_build_object('users', jsonb_build_array('u' || (i % $3))), "
        "'title', 't' || i) FROM generate_series(0, $2 - 1) AS i", app, n, users)


def titles(n: int) -> list[str]:
    return sorted(f"t{i}" for i in range(n))


# -- the contract ---------------------------------------------------------------

async def test_the_schema_command_prints_ddl_that_can_be_applied_twice():
    result = CliRunner().invoke(main, ["outbox", "schema"])
    assert result.exit_code == 0, result.output
    assert result.output == outbox.SCHEMA
    async with outbox_db() as (_, conn):
        await conn.execute(result.output)  # again: an app's migrations may re-run it
        columns = await conn.fetch(
            "SELECT column_name, data_type, is_nullable, column_default FROM "
            "information_schema.columns WHERE table_name = 'tidings_outbox' "
            "AND table_schema = current_schema() ORDER BY ordinal_position")
        got = {r["column_name"]: (r["data_type"], r["is_nullable"]) for r in columns}
        assert got == {"id": ("bigint", "NO"), "app": ("text", "NO"),
                       "payload": ("jsonb", "NO"),
                       "created_at": ("timestamp with time zone", "NO")}
        defaults = {r["column_name"]: r["column_default"] for r in columns}
        assert defaults["id"].startswith("nextval(") and defaults["created_at"] == "now()"
        assert await conn.fetchval("SELECT to_regclass('tidings_outbox_dead') IS NOT NULL")


async def test_publish_on_asyncpg_commits_and_rolls_back_with_the_transaction():
    async with outbox_db() as (_, conn):
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await outbox.publish(conn, app="shop", to={"users": ["ann"]}, title="lost")
                raise RuntimeError("the business write failed")
        async with conn.transaction():
            row_id = await outbox.publish(conn, app="shop", to=["ann", "bo"], title="Shipped",
                                          body="Order 42", data={"order": 42})
        rows = await conn.fetch("SELECT id, app, payload::text FROM tidings_outbox")
        assert [(r["id"], r["app"]) for r in rows] == [(row_id, "shop")]
        import json
        assert json.loads(rows[0]["payload"]) == {
            "to": {"users": ["ann", "bo"]}, "title": "Shipped", "body": "Order 42",
            "data": {"order": 42}}


async def test_publish_on_psycopg_sync_and_async():
    async with outbox_db() as (url, conn):
        base, _, query = url.partition("?")
        dsn = f"{base}?options=-csearch_path%3D{query.split('=')[1]}"
        with psycopg.connect(dsn) as sync:
            first = outbox.publish(sync, app="shop", to={"topic": "deals"}, title="sync")
            sync.rollback()
            second = outbox.publish(sync, app="shop", to={"topic": "deals"}, title="sync")
            sync.commit()
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            third = await outbox.publish(aconn, app="shop", to={"all": True}, title="async")
            await aconn.commit()
        rows = await conn.fetch("SELECT id, payload->>'title' AS t FROM tidings_outbox "
                                "ORDER BY id")
        assert [(r["id"], r["t"]) for r in rows] == [(second, "sync"), (third, "async")]
        assert first < second < third


async def test_publish_refuses_what_is_not_a_connection():
    with pytest.raises(TypeError):
        outbox.publish(object(), app="shop", to=["ann"], title="x")
    with pytest.raises(ValueError):
        outbox.publish(object(), app="", to=["ann"], title="x")


def test_serve_refuses_an_outbox_without_postgresql(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), "--outbox"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "Error: the outbox is a PostgreSQL table: give --outbox postgresql://... "
        "or use a PostgreSQL store")


async def test_serve_refuses_an_outbox_database_without_the_table(tmp_path):
    base = require_postgres()
    async with fresh_schema(base) as settings:
        url = f"{base}?search_path={settings['search_path']}"
        result = await asyncio.to_thread(CliRunner().invoke, main, [
            "serve", "--data", str(tmp_path), "--store", url, "--outbox"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "Error: the outbox database has no tidings_outbox table: apply "
        "`tidings outbox schema` to it first (docs/outbox.md)")


# -- the consumer ---------------------------------------------------------------

async def test_rows_are_published_and_bad_ones_move_to_the_dead_letter_table(tmp_path):
    async with outbox_db() as (url, conn), service_on(url, tmp_path) as service:
        app, _ = await service.create_app("shop")
        good = {"to": {"users": ["ann"]}, "title": "ok"}
        rows = [
            (app.id, '{"to": {"users": ["ann"]}, "title": "first"}'),
            (app.id, '{"to": {}, "title": "nobody"}'),  # no recipient
            ("app_nope", '{"to": {"users": ["ann"]}, "title": "x"}'),  # unknown app
            (app.id, '{"to": {"users": ["ann"]}, "title": 7}'),  # wrong type
            (app.id, '[1, 2]'),  # not an object
            (app.id, '{"to": {"users": ["ann"]}, "data": {"x": "' + "x" * 20_000 + '"}}'),
            (app.id, '{"to": {"users": ["ann"]}, "title": "last"}'),
        ]
        await conn.executemany("INSERT INTO tidings_outbox (app, payload) VALUES ($1, $2)", rows)
        async with consuming(service, url, poll_interval=0.2) as consumer:
            await wait_empty(conn)
            async with conn.transaction():
                await outbox.publish(conn, app=app.id, **good)
            await wait_empty(conn)
        assert await inbox_titles(conn, app.id) == ["first", "last", "ok"]
        dead = await conn.fetch("SELECT id, app, reason FROM tidings_outbox_dead ORDER BY id")
        assert [r["app"] for r in dead] == [app.id, "app_nope", app.id, app.id, app.id]
        reasons = [r["reason"] for r in dead]
        assert reasons[0].startswith("invalid") and "to" in reasons[0], reasons
        assert reasons[1].startswith("not_found (app)"), reasons
        assert "title" in reasons[2] and "str" in reasons[2], reasons
        assert "object" in reasons[3], reasons
        assert reasons[4].startswith("payload_too_large"), reasons
        assert (consumer.published, consumer.dead, consumer.duplicates) == (3, 5, 0)


async def test_absurd_rows_are_dead_letters_that_the_consumer_does_not_fetch_or_echo(tmp_path):
    """A payload over ``max_body_bytes`` (what ``POST /v1/notifications``
    refuses with 413) is buried without being fetched: a batch of 10 MB
    titles would have been a gigabyte in the node's memory before a single
    row was refused.  An ``app`` that is no app id is refused as such, not
    echoed whole into the reason and the log."""
    async with outbox_db() as (url, conn), service_on(url, tmp_path) as service:
        app, _ = await service.create_app("shop")
        limit = service.settings.limits.max_body_bytes
        await conn.execute(
            "INSERT INTO tidings_outbox (app, payload) SELECT $1, jsonb_build_object('to', "
            "jsonb_build_object('users', jsonb_build_array('ann')), 'title', repeat('x', $2)) "
            "FROM generate_series(1, 3)", app.id, limit)
        await conn.executemany("INSERT INTO tidings_outbox (app, payload) VALUES ($1, $2)", [
            ("x" * 100_000, '{"to": {"users": ["ann"]}, "title": "x"}'),
            ("app_\n", '{"to": {"users": ["ann"]}, "title": "x"}'),
            (app.id, '{"to": {"users": ["ann"]}, "title": "behind"}'),
        ])
        async with consuming(service, url, poll_interval=0.2) as consumer:
            await wait_empty(conn)
        assert await inbox_titles(conn, app.id) == ["behind"]
        reasons = [r["reason"] for r in await conn.fetch(
            "SELECT reason FROM tidings_outbox_dead ORDER BY id")]
        assert reasons[:3] == [f"payload_too_large: payload over {limit} bytes"] * 3, reasons
        assert [r.split(":")[0] for r in reasons[3:]] == ["invalid (app)"] * 2, reasons
        assert max(map(len, reasons)) < 200, reasons
        assert (consumer.published, consumer.dead) == (1, 5)


async def test_a_notify_wakes_the_consumer_long_before_its_next_poll(tmp_path):
    async with outbox_db() as (url, conn), service_on(url, tmp_path) as service:
        app, _ = await service.create_app("shop")
        async with consuming(service, url, poll_interval=3600) as consumer:
            await asyncio.sleep(0.5)  # the first (empty) poll is done; it now waits
            await outbox.publish(conn, app=app.id, to=["ann"], title="now")
            await wait_empty(conn, timeout=10)
            assert consumer.published == 1


async def test_without_the_trigger_polling_still_publishes(tmp_path):
    async with outbox_db() as (url, conn), service_on(url, tmp_path) as service:
        app, _ = await service.create_app("shop")
        await conn.execute("DROP TRIGGER tidings_outbox_wake ON tidings_outbox")
        async with consuming(service, url, poll_interval=0.2):
            await asyncio.sleep(0.5)
            await outbox.publish(conn, app=app.id, to=["ann"], title="polled")
            await wait_empty(conn, timeout=10)
        assert await inbox_titles(conn, app.id) == ["polled"]


async def test_two_consumers_share_one_outbox_without_double_work(tmp_path):
    total = 1500
    async with outbox_db() as (url, conn), \
            service_on(url, tmp_path, "a") as a, service_on(url, tmp_path, "b") as b:
        app, _ = await a.create_app("shop")
        async with consuming(a, url, batch=50) as one, consuming(b, url, batch=50) as two:
            await fill(conn, app.id, total)
            await wait_empty(conn)
        assert await inbox_titles(conn, app.id) == titles(total)
        assert one.published > 0 and two.published > 0, (one.published, two.published)
        assert one.published + two.published == total
        assert one.duplicates == two.duplicates == 0


@pytest.mark.timeout(180)
async def test_a_consumer_killed_mid_batch_republishes_nothing_twice(tmp_path):
    total = 3000
    async with outbox_db() as (url, conn), service_on(url, tmp_path) as service:
        app, _ = await service.create_app("shop")
        await fill(conn, app.id, total)
        port = free_port_block(1)
        env = {**os.environ, "TIDINGS_OUTBOX_BATCH": str(total)}  # one batch: all of it
        log = open(tmp_path / "node.log", "wb")
        name = f"killed-node-{port}"  # its sessions, in pg_stat_activity
        node = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", str(port),
             "--store", f"{url}&application_name={name}",
             "--broker", "local", "--outbox", "--data", str(tmp_path / "node")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Kill it once part of the batch is in the inbox: its rows are
            # still in the outbox, claimed by a transaction that never commits.
            deadline = time.monotonic() + 120
            while await conn.fetchval("SELECT count(*) FROM notifications") < 100:
                assert node.poll() is None, (tmp_path / "node.log").read_text()
                assert time.monotonic() < deadline, "the node published nothing"
                await asyncio.sleep(0.01)
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)
        finally:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
            log.close()
        # A transaction the node sent whole before it died still commits: count
        # once the database has ended every session of the dead node.
        deadline = time.monotonic() + 30
        while await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name):
            assert time.monotonic() < deadline, "the dead node's sessions never ended"
            await asyncio.sleep(0.05)
        before = await conn.fetchval("SELECT count(*) FROM notifications")
        assert 0 < before < total
        # the claim was rolled back: every row is there again
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM tidings_outbox") != total:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with consuming(service, url, batch=500) as consumer:
            await wait_empty(conn)
        assert await inbox_titles(conn, app.id) == titles(total)
        assert consumer.duplicates == before
        assert consumer.published == total - before
