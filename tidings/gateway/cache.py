"""Per-user read cache: unread counts, topic memberships, the first inbox page.

Correct across nodes because an entry is used only while this node receives
the user's broker channel -- that is, while one of the user's streams is
open here and its subscription has settled.  Everything that changes those
answers crosses that channel (a new entry, a state change, a retraction, a
membership change) or the app's feed channels (broadcasts, large topics),
and the hub invalidates on each of them.  Two safety nets cover what the
broker, being at most once, may lose: a broker reconnect invalidates
everything, and entries expire after a few seconds anyway.  An item that
expires by ``ttl`` has no event: the hub drops the user's entries at the
expiry it watches for them (recount.py).

Invalidation is O(1): it gives the user (or the app, for feed items) a new
version, and every entry remembers the versions it was read under.  Versions
come from one counter and never repeat, so an entry from before a user left
and came back can never match again.  The version is taken *before* the
store read, so a fill that raced an invalidation is stored already stale and
never served.
"""

from __future__ import annotations

import itertools
from typing import Any

from tidings.core.lru import LRU

Key = tuple[str, str]  # (app, user)
Version = tuple[int, int, int]  # (global, app, user)


class UserCache:
    def __init__(self, enabled: bool, ttl: float = 5.0, maxsize: int = 100_000):
        self.enabled = enabled
        self._entries: LRU[tuple, tuple[Version, Any]] = LRU(maxsize, ttl)
        self._next = itertools.count(1).__next__
        # app -> user -> current version, for the users whose channel this
        # node receives (by app first: a publish invalidates its recipients
        # without an (app, user) tuple each)
        self._users: dict[str, dict[str, int]] = {}
        self._apps: dict[str, int] = {}
        self._global = 0

    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    # -- which users may be cached ------------------------------------------------
    def live(self, key: Key) -> None:
        """The user's channel subscription has settled on this node."""
        if self.enabled:
            self._users.setdefault(key[0], {})[key[1]] = self._next()

    def live_users(self, app: str) -> dict[str, int]:
        """The app's users every change of whom reaches this node (none when off)."""
        return self._users.get(app, {})

    def gone(self, key: Key) -> None:
        """The user's last stream here closed: nothing tells us of changes now."""
        users = self._users.get(key[0])
        if users is not None:
            users.pop(key[1], None)
            if not users:
                del self._users[key[0]]

    # -- reads and fills ------------------------------------------------------------
    def version(self, key: Key) -> Version | None:
        """Take before reading the store; None: this answer must not be cached."""
        users = self._users.get(key[0]) if self.enabled else None
        user = None if users is None else users.get(key[1])
        if user is None:
            return None
        return self._global, self._apps.get(key[0], 0), user

    def get(self, kind: str, key: Key, *extra) -> Any:
        if not self.enabled or key[1] not in self._users.get(key[0], ()):
            return None
        entry = self._entries.get((kind, *key, *extra))
        if entry is None or entry[0] != self.version(key):
            return None
        return entry[1]

    def put(self, kind: str, key: Key, version: Version | None, value: Any, *extra) -> None:
        if version is not None:
            self._entries.put((kind, *key, *extra), (version, value))

    # -- invalidation (from the hub's broker handlers) -----------------------------
    def user_changed(self, key: Key) -> None:
        """Anything on the user's channel: entries, state, counts, memberships."""
        users = self._users.get(key[0])
        if users is not None and key[1] in users:
            users[key[1]] = self._next()

    def users_changed(self, app: str, users: list[str]) -> None:
        """``user_changed`` for each of ``users`` of ``app`` (a publish's
        recipients).  They all take one new version: a version is compared
        only with the same user's, and it is new to each of them.  In C
        (``filter``, ``dict.fromkeys``, ``update``): under write fan-out this
        is once per recipient."""
        live = self._users.get(app)
        if live:
            live.update(dict.fromkeys(filter(live.__contains__, users), self._next()))

    def app_changed(self, app: str) -> None:
        """A feed item (broadcast or large topic) or a change to one: every
        user's counts and first page in the app may have moved."""
        self._apps[app] = self._next()

    def clear(self) -> None:
        """After a broker outage: what changed meanwhile was never announced."""
        self._global += 1
        self._entries.clear()
