"""How the store tells "the database is not there right now" from a bad request.

The store's retry loop (store.py's ``_call``) and the scheduler's firing
(schedule.py) both sort asyncpg's exceptions with these tuples.
"""

from __future__ import annotations

import asyncpg
from asyncpg import exceptions as pgerr

# Anything else (a unique violation, bad input) is the request's fault and
# propagates as is.
DOWN: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no route; TimeoutError too (connect, pool acquire)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, "closed in the middle of operation"
    pgerr.CannotConnectNowError,  # 57P03: starting up or shutting down
    pgerr.AdminShutdownError,  # 57P01: the server was stopped or restarted
    pgerr.CrashShutdownError,  # 57P02
    pgerr.TooManyConnectionsError,  # 53300
)
# A pooled connection found dead before the statement was sent ("connection
# is closed"; or a session the server ended while it sat idle, e.g. on a
# restart, which leaves asyncpg's protocol stuck): nothing reached the
# database, so the call is run again on a fresh connection.
STALE = (asyncpg.InterfaceError, pgerr.InternalClientError)
# InterfaceErrors that are not about the connection: bad arguments are a bug
# or bad input, never a reason to tell the client to come back later.
NOT_DOWN = (pgerr.DataError, pgerr.ClientConfigurationError,
             pgerr.UnsupportedClientFeatureError, pgerr.UnsupportedServerFeatureError)
# The database is there but cannot write now: disk full, out of memory
# (class 53), a read-only session or a standby (25006).  503 like DOWN, but
# the connection is sound and stays in the pool.
CANNOT_WRITE: tuple[type[BaseException], ...] = (
    pgerr.InsufficientResourcesError,
    pgerr.ReadOnlySQLTransactionError,
)
# The whole transaction was rolled back and may simply be run again.
RETRY = (pgerr.DeadlockDetectedError, pgerr.SerializationError)
ATTEMPTS = 3
