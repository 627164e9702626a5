"""Versioned schema migrations: one pattern for every SQL dialect.

A dialect's schema is the ordered list of scripts ``sql/<dialect>_NNN.sql``
(001, 002, ...); the database records the last one applied as the
``schema_version`` row of its ``meta`` table (0 when there is none).  Every
runner does the same:

1. take the database's migration lock (SQLite: ``BEGIN IMMEDIATE``;
   PostgreSQL: ``pg_advisory_xact_lock``), so two processes starting at once
   never apply a script twice;
2. read the version again under the lock, and refuse a database *newer* than
   the code (an older tidings must not write into a schema it does not know);
3. apply the next script and record its number in the same transaction;
4. repeat until nothing is pending.

When to migrate is the backend's policy (docs/operations.md): the embedded
SQLite store migrates itself on open; PostgreSQL is migrated explicitly with
``tidings migrate`` and refuses to open while a script is pending.

This module holds what the dialects share: finding the scripts and deciding
what a recorded version means.  It does no I/O on any database.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["SchemaError", "scripts", "latest", "pending", "require_current"]


class SchemaError(RuntimeError):
    """The database's schema does not match this code (newer, or migrations pending)."""


@cache
def scripts(dialect: str) -> tuple[tuple[int, str], ...]:
    """``(version, sql)`` of every ``sql/<dialect>_NNN.sql``, in version order."""
    pattern = re.compile(rf"{re.escape(dialect)}_(\d{{3}})\.sql")
    found = {}
    for entry in resources.files("tidings.store").joinpath("sql").iterdir():
        match = pattern.fullmatch(entry.name)
        if match:
            found[int(match.group(1))] = entry.read_text()
    versions = sorted(found)
    # A hole (001, 003) would mean a lost file: the database would record 3
    # without ever running 2.
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"{dialect} migrations are not numbered 1..n: {versions}")
    return tuple((v, found[v]) for v in versions)


def latest(dialect: str) -> int:
    """The schema version this code expects."""
    found = scripts(dialect)
    return found[-1][0] if found else 0


def pending(dialect: str, current: int) -> list[tuple[int, str]]:
    """The scripts still to apply to a database at ``current``.

    Raises :class:`SchemaError` when the database is newer than this code."""
    newest = latest(dialect)
    if current > newest:
        raise SchemaError(
            f"database schema v{current} is newer than this tidings (v{newest}); "
            "upgrade tidings (a schema is never migrated backwards)"
        )
    return [(v, sql) for v, sql in scripts(dialect) if v > current]


def require_current(dialect: str, current: int, how_to_migrate: str) -> None:
    """Refuse a database that is not exactly at this code's version."""
    todo = pending(dialect, current)
    if todo:
        raise SchemaError(
            f"database schema v{current} is older than this tidings (v{latest(dialect)}); "
            f"{how_to_migrate}"
        )
