"""Dashboard sessions ended by a logout, on every node.

A dashboard session is a signed cookie that no node keeps
(tidings/dashboard/session.py), so deleting the cookie alone would leave a
copy of it working until it expires.  A logout therefore records the
session's id in the store (``Store.end_dashboard_session``) until the
session would have expired anyway, and every node refuses a session whose
id is there.  Every node shares the store, so this holds on every node,
across restarts, and whether or not the broker carried anything.

What a node remembers mirrors a revoked key (tidings/service/keys.py,
docs/operations.md#dashboard): a session found open is trusted for at most
``SESSION_CACHE_TTL`` before the store is asked again, so a logout reaches

* **at once the node that logged out** (``end`` forgets the session before
  it answers);
* **every other node as soon as the broker's ``SessionEnded`` arrives**
  (on ``KEYS_CHANNEL``, which every node listens to; a broker reconnect, after
  which messages may have been lost, forgets every session);
* **every node within ``SESSION_CACHE_TTL`` whatever happens**.

A logout that arrives while a session is being read from the store may be
of that session: the answer is then used for that request but not cached
(``_heard``), as for keys.
"""

from __future__ import annotations

from tidings.broker.base import KEYS_CHANNEL, Broker, Message, SessionEnded
from tidings.config import Settings
from tidings.core.audit import AuditEntry
from tidings.core.lru import LRU
from tidings.store.base import Store

__all__ = ["SESSION_CACHE_TTL", "Sessions"]

# Seconds a node trusts that a session it found open is still open: the
# longest a logged-out session still works on a node the broker's message
# did not reach (the same as a revoked key's, KEY_CACHE_TTL).
SESSION_CACHE_TTL = 5.0


class Sessions:
    def __init__(self, settings: Settings, store: Store, broker: Broker):
        self.store = store
        self.broker = broker
        self.caching = settings.cache
        self._open: LRU[str, bool] = LRU(10_000, ttl=SESSION_CACHE_TTL)  # ids found open
        self._heard = 0  # logouts heard (and broker reconnects)

    def open(self) -> None:
        """After the broker is open (Service.open hands this node the
        messages of ``KEYS_CHANNEL``)."""
        self.broker.on_reconnect(self._forget_all)

    async def end(self, session_id: str, expires: float, now: float, *,
                  audit: AuditEntry | None = None) -> None:
        """Log the session out, on every node: kept in the store until
        ``expires``, forgotten here at once, announced to the others.
        ``audit``: the logout's record, written in the same transaction."""
        await self.store.end_dashboard_session(session_id, expires, now, audit=audit)
        self._forget(session_id)  # here, before the answer
        self.broker.publish(KEYS_CHANNEL, SessionEnded(session_id))  # every other node

    async def ended(self, session_id: str) -> bool:
        """Whether the session was logged out (from memory, mostly)."""
        if self.caching and session_id in self._open:
            return False
        heard = self._heard
        ended = await self.store.dashboard_session_ended(session_id)
        if not ended and self.caching and heard == self._heard:
            self._open.put(session_id, True)
        return ended

    def on_message(self, message: Message) -> None:
        if isinstance(message, SessionEnded):
            self._forget(message.session)

    def _forget(self, session_id: str) -> None:
        self._heard += 1
        self._open.pop(session_id)

    def _forget_all(self) -> None:
        """The broker reconnected: logouts sent meanwhile may be lost."""
        self._heard += 1
        self._open.clear()
