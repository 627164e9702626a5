"""Store fixtures, parametrized over every backend.

The contract suite (``test_contract.py``) runs once per entry of
``BACKENDS``.  Adding a backend means adding its name to ``BACKENDS`` and a
branch to ``make_store`` that builds a fresh, unopened store over that
backend's storage; the suite itself does not change.

PostgreSQL runs against the server of ``tests/services.py`` (skipped on a
laptop without one, a failure in CI); each test gets a schema of its own,
migrated, and dropped afterwards, so parallel runs never see each other.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.services import require_postgres
from tidings.store.base import Store
from tidings.store.sqlite import SQLiteStore

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
async def make_store(request, tmp_path) -> Callable[[], Store]:
    """A factory of unopened stores that all share one backing storage.

    Calling it twice gives two instances over the same data, which is how the
    suite checks what survives a close and reopen.
    """
    if request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "tidings.db")
    elif request.param == "postgres":
        from tests.store.pg import fresh_schema
        from tidings.store.postgres import PostgresStore

        url = require_postgres()
        async with fresh_schema(url) as settings:
            yield lambda: PostgresStore(url, server_settings=settings)
    else:
        raise AssertionError(f"no factory for backend {request.param!r}")


@pytest.fixture
async def store(make_store):
    """An opened store on fresh storage, closed after the test."""
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
