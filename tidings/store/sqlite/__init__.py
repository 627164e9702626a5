"""The embedded store: one SQLite file behind one writer thread.

store.py is the :class:`SQLiteStore` (the contract of ../base.py and the
writer); publish.py is what one publish writes, groups.py the group entries,
schedule.py the ``deliver_at`` rows and outbound.py the outbound queue."""

from tidings.store.sqlite.store import SQLiteStore, migrate

__all__ = ["SQLiteStore", "migrate"]
