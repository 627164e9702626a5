"""Where the real PostgreSQL and Redis are, and what to do when they are not.

Tests of the PostgreSQL store and the Redis broker talk to real servers.  On
a laptop without them those tests skip with the reason; in CI
(``TIDINGS_REQUIRE_SERVICES=1``, set by ``.ci/run``) a missing service is a
failure, never a silent skip.

``TIDINGS_TEST_POSTGRES`` and ``TIDINGS_TEST_REDIS`` override the defaults.
"""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("TIDINGS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or default_port)
        with socket.create_connection(address, 1):
            return True
    except OSError:
        return False


def missing(reason: str):
    """Skip the test on a laptop; fail it in CI, where everything must be there."""
    if os.environ.get("TIDINGS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; CI requires it", pytrace=False)
    pytest.skip(reason)


def _require(name: str, url: str, default_port: int) -> str:
    if _reachable(url, default_port):
        return url
    missing(f"{name} is not reachable at {url} (set TIDINGS_TEST_{name.upper()} to point at one)")


def require_postgres() -> str:
    """The test PostgreSQL URL, or skip (fail in CI) when it is down."""
    return _require("postgres", POSTGRES_URL, 5432)


def require_redis() -> str:
    """The test Redis URL, or skip (fail in CI) when it is down."""
    return _require("redis", REDIS_URL, 6379)


def require_haproxy() -> str:
    """The HAProxy binary the cluster tests put in front of the nodes."""
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(path, os.X_OK):
        missing("HAProxy is not installed (Debian package haproxy)")
    return path
