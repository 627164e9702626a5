"""Fixtures of the gateway tests."""

from __future__ import annotations

import pytest

from tests.gateway.live import serve_on


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """``store(**settings)``: a server on SQLite or on PostgreSQL (a fresh
    schema), for the tests that take it (the mutes and recount tests)."""
    return lambda **overrides: serve_on(request.param, tmp_path, **overrides)
