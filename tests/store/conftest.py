"""Store fixtures, parametrized over every backend.

The contract suite (``test_contract.py``) runs once per entry of
``BACKENDS``.  Adding a backend (PostgreSQL, ...) means adding its name to
``BACKENDS`` and a branch to ``make_store`` that builds a fresh, unopened
store over that backend's storage; the suite itself does not change.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tidings.store.base import Store
from tidings.store.sqlite import SQLiteStore

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def make_store(request, tmp_path) -> Callable[[], Store]:
    """A factory of unopened stores that all share one backing storage.

    Calling it twice gives two instances over the same data, which is how the
    suite checks what survives a close and reopen.
    """
    if request.param == "sqlite":
        path = tmp_path / "tidings.db"
        return lambda: SQLiteStore(path)
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
