"""API test fixtures.  ``each_store`` runs the test once on SQLite
and once on PostgreSQL (a fresh schema), whatever TIDINGS_TEST_STORE says,
for rules that must read the same on both (docs/design.md §2.8)."""

from __future__ import annotations

import contextlib

import pytest

from tests.conftest import run_server


@contextlib.asynccontextmanager
async def store_overrides(kind: str):
    """The run_server overrides of store ``kind`` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        yield {"store": None}
        return
    from tests.services import require_postgres
    from tests.store.pg import fresh_schema

    url = require_postgres()
    async with fresh_schema(url) as pg:
        yield {"store": f"{url}?search_path={pg['search_path']}"}


@pytest.fixture(params=["sqlite", "postgres"])
async def each_store(request, tmp_path):
    async with store_overrides(request.param) as store:
        async with run_server(tmp_path, **store) as live:
            yield live
