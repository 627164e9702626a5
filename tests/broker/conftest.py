"""Broker fixtures, parametrized over every backend.

The contract suite (``test_contract.py``) runs once per entry of
``BACKENDS``.  Adding a backend (Redis, ...) means adding its name to
``BACKENDS`` and a branch to ``make_broker``; the suite itself does not change.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tidings.broker.base import Broker
from tidings.broker.local import LocalBroker

BACKENDS = ["local"]


@pytest.fixture(params=BACKENDS)
def make_broker(request) -> Callable[[], Broker]:
    """A factory of unopened brokers of one backend."""
    if request.param == "local":
        return LocalBroker
    raise AssertionError(f"no factory for backend {request.param!r}")


@pytest.fixture
async def broker(make_broker):
    """An opened broker, closed after the test."""
    b = make_broker()
    await b.open()
    try:
        yield b
    finally:
        await b.close()
