"""How the embedded store tells "the file cannot be written now" from a bad job.

The writer (store.py) answers these with 503 and ``Retry-After`` wherever
they come from (BEGIN, a statement inside a job, COMMIT), and readiness is
red until a write commits again; the scheduler (schedule.py) leaves a due
notification pending on them instead of marking it failed.
"""

from __future__ import annotations

import sqlite3

# SQLite primary result codes (the low byte of the extended code): a
# read-only file or file system, an I/O error, a full disk.
CANNOT_WRITE = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
                          sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})
# Another process held the lock past busy_timeout: 503 too, readiness stays.
BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of ``exc``, None for other errors."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is about the file or its lock rather than the job."""
    return primary_code(exc) in CANNOT_WRITE | BUSY
