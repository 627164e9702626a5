"""The audit log: writing the records the store does not write in a change's
transaction, reading them, and their retention (docs/security.md#audit-log).

Every change the store holds hands its record (``entry``, or one made by
the service that makes the change) to the store, which writes it in the
change's transaction (tidings/store/audit.py).  The changes the store does
not hold (a node's drain, a dashboard login, a failed one) are recorded by
``record`` right after them: a crash between the two loses the record, and a
store that refuses the record's write is logged as an error, the change
standing (it was made, and its answer says so).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tidings.config import Settings
from tidings.core.audit import Actor, AuditEntry, new_entry
from tidings.store.base import Store

__all__ = ["Audit"]

log = logging.getLogger("tidings")


class Audit:
    def __init__(self, settings: Settings, store: Store,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.clock = clock

    def entry(self, app: str, actor: Actor, action: str, target: str | None,
              **details: Any) -> AuditEntry:
        """A record made now, for a store method to write in its transaction."""
        return new_entry(app, actor, action, target, self.clock(), **details)

    async def record(self, app: str, actor: Actor, action: str, target: str | None,
                     **details: Any) -> None:
        """Write the record of a change that has committed."""
        entry = self.entry(app, actor, action, target, **details)
        try:
            await self.store.add_audit(entry)
        except Exception as exc:  # the change stands: say loudly what was not recorded
            log.error("audit record lost: app %s, %s %s by %s: %s", app, action, target,
                      actor.name, exc)

    async def page(self, app: str, *, limit: int, before: str | None = None,
                   action: str | None = None, since: float | None = None) -> list[AuditEntry]:
        return await self.store.audit_log(app, limit=limit, before=before, action=action,
                                          since=since)

    async def prune(self) -> int:
        """Retention: delete the records older than ``audit_retention_days``."""
        days = self.settings.audit_retention_days
        return await self.store.prune_audit(self.clock() - days * 86400)
