"""The audit half of the store contract: each app's log of changes.

Guarantees every implementation gives (tests/api/test_audit.py, through the API on both stores):

* **In the change's transaction where it is given.**  ``create_app``,
  ``add_api_key``, ``rotate_api_key``, ``revoke_api_key``,
  ``rotate_signing_secret``, ``end_dashboard_session``, ``add_webhook``,
  ``rotate_webhook``, ``delete_webhook``, ``put_caps``, ``put_categories``
  and ``redrive_job`` take an ``audit`` record (``drop_expired_api_keys``
  a function making one per key, ``revoke_tokens``, ``revoke_token_id`` and
  ``reseal`` one making it of what they stored) and write it in the
  transaction of the change, only when the change is made: a key is never
  made without its record, nor a record left of a change refused.
  Every other change's record is written by ``add_audit`` after it commits
  (tidings/service/audit.py; docs/security.md says which and why).
* **A record refused is the change refused.**  A record the database
  refuses (a constraint, a trigger, a bug) rolls the change back and raises
  ``Unavailable`` (503 ``unavailable``, as a store that cannot write),
  never the database's own error.
* **Newest first, one app at a time.**  ``audit_log`` reads one app's
  records by id (time-ordered), never another app's.
* **Bounded.**  ``prune_audit`` deletes every app's records older than a
  time (the retention sweep's, ``audit_retention_days``).
"""

from __future__ import annotations

import abc
import logging

import msgspec

from tidings.core.audit import AuditEntry
from tidings.errors import Unavailable

__all__ = ["AuditStore", "audit_row", "entry_of", "refused"]

log = logging.getLogger("tidings")

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def audit_row(entry: AuditEntry) -> tuple:
    """The columns of ``audit_log`` in their order, details as JSON text."""
    return (entry.app, entry.id, entry.at, entry.actor, entry.address, entry.action,
            entry.target, _encode(entry.details).decode())


_last_refused: list[str] = [""]  # the id of the last record logged as refused


def refused(entry: AuditEntry, exc: BaseException) -> Unavailable:
    """What a change whose record the database refused (``exc``) raises: the
    operator reads why in the log (once: the SQLite writer runs a job that
    failed in a batch again alone), the client sees no internals."""
    if _last_refused[0] != entry.id:
        _last_refused[0] = entry.id
        log.error("audit record refused, change rolled back: app %s, %s %s by %s: %r",
                  entry.app, entry.action, entry.target, entry.actor, exc)
    return Unavailable(f"the store refused the audit record of {entry.action}, so nothing "
                       "changed; retry later")


def entry_of(row) -> AuditEntry:
    app, rid, at, actor, address, action, target, details = row
    return AuditEntry(rid, app, at, actor, address, action, target, _decode(details))


class AuditStore(abc.ABC):
    @abc.abstractmethod
    async def add_audit(self, entry: AuditEntry) -> None:
        """Write one record, in a transaction of its own."""

    @abc.abstractmethod
    async def audit_log(self, app_id: str, *, limit: int, before: str | None = None,
                        action: str | None = None, since: float | None = None
                        ) -> list[AuditEntry]:
        """Up to ``limit`` of the app's records, newest first: with an id
        below ``before`` (the previous page's last), of ``action``, made at
        or after ``since`` (Unix seconds) when given."""

    @abc.abstractmethod
    async def prune_audit(self, older_than: float) -> int:
        """Delete every app's records made before ``older_than``; how many."""
