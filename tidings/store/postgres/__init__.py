"""The cluster store: PostgreSQL through one asyncpg pool.

store.py is the :class:`PostgresStore` (the contract of ../base.py, the pool
and its retry rules); sql.py holds the statements, publish.py what one
publish writes, groups.py the group entries, schedule.py the ``deliver_at``
rows, outbound.py the outbound queue and errors.py how a failure is sorted."""

from tidings.store.postgres.store import PostgresStore, migrate

__all__ = ["PostgresStore", "migrate"]
