"""Where a store keeps secrets in usable form, and how both stores seal them.

The inventory (``PLACES``) is every column that holds a secret tidings must
use, not merely compare: the pepper in ``meta``, the apps' signing secrets
(current and previous) and the webhook endpoints' secrets (current and
previous).  API keys are kept as HMACs and need no seal; the VAPID private key
and the SMTP password live in the settings, never in the store; a Web Push
subscription's ``auth`` is the browser's and opens nothing without the
VAPID private key.

A value's place is its table and row (``apps/<id>``); the place and the
column are the associated data it is sealed with (tidings/core/seal.py), so
a rotation opens the current secret and seals it again as the previous one.
The SQL here is the same in both dialects but for its placeholders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidings.core.seal import Seal, SealError
from tidings.store.outbound import WebhookEndpoint

__all__ = ["DROP_CHECK", "KEY_CHECK", "LEASE", "PEPPER", "PEPPER_PLACE", "PLACES", "Lease",
           "Place", "Serving", "app_place", "check_of", "open_pepper", "open_webhook",
           "refuse_serving", "resealed", "set_check", "webhook_place"]

Mark = Callable[[int], str]  # the n-th placeholder (1-based): "?" or "$n"


@dataclass(frozen=True, slots=True)
class Place:
    table: str
    keys: tuple[str, ...]  # the row's identity, which names its place
    columns: tuple[str, ...]  # the secrets in it
    only: str = ""  # a WHERE clause, for meta's one row

    def select(self) -> str:
        where = f" WHERE {self.only}" if self.only else ""
        return f"SELECT {', '.join(self.keys + self.columns)} FROM {self.table}{where}"

    def update(self, mark: Mark) -> str:
        """Set the columns (placeholders first) of the row named by the keys (after)."""
        n = len(self.columns)
        sets = ", ".join(f"{c} = {mark(i + 1)}" for i, c in enumerate(self.columns))
        where = " AND ".join(f"{k} = {mark(n + i + 1)}" for i, k in enumerate(self.keys))
        return f"UPDATE {self.table} SET {sets} WHERE {where}"

    def where(self, row: Sequence) -> str:
        return "/".join((self.table, *row[:len(self.keys)]))


PEPPER = Place("meta", ("key",), ("value",), "key = 'pepper'")
PEPPER_PLACE = "meta/pepper"
PLACES = (
    PEPPER,
    Place("apps", ("id",), ("signing_secret", "previous_secret")),
    Place("webhooks", ("app_id", "id"), ("secret", "previous_secret")),
)
# The key check of a sealed store (tidings/core/seal.py), absent from a plain one.
KEY_CHECK = Place("meta", ("key",), ("value",), "key = 'secret_key_check'")


def set_check(mark: Mark) -> str:
    return (f"INSERT INTO meta (key, value) VALUES ('secret_key_check', {mark(1)}) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value")


DROP_CHECK = "DELETE FROM meta WHERE key = 'secret_key_check'"


def check_of(rows: Sequence[Sequence]) -> str | None:
    """The key check among ``KEY_CHECK``'s rows (None: a plain store)."""
    return rows[0][1] if rows else None


def resealed(place: Place, rows: Sequence[Sequence], before: Seal,
             after: Seal) -> list[tuple]:
    """The arguments of ``place.update`` that turn each row's secrets from
    ``before``'s seal to ``after``'s (every value opened first: a value that
    does not open stops the whole change)."""
    out = []
    n = len(place.keys)
    for row in rows:
        where = place.where(row)
        values = tuple(after.wrap(before.unwrap(v, where, c), where, c)
                       for v, c in zip(row[n:], place.columns, strict=True))
        out.append((*values, *row[:n]))
    return out


def open_webhook(seal: Seal, app_id: str, row: Sequence) -> WebhookEndpoint:
    """An endpoint from its row (``id, url, secret, created_at,
    previous_secret, previous_until``), its secrets opened."""
    where = webhook_place(app_id, row[0])
    return WebhookEndpoint(row[0], row[1], seal.unwrap(row[2], where, "secret"),
                           row[3], seal.unwrap(row[4], where, "previous_secret"), row[5])


def open_pepper(seal: Seal, value: str) -> bytes:
    return bytes.fromhex(seal.unwrap(value, PEPPER_PLACE, "value"))


def app_place(app_id: str) -> str:
    return f"apps/{app_id}"


def webhook_place(app_id: str, wid: str) -> str:
    return f"webhooks/{app_id}/{wid}"


# -- the nodes serving the store ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class Lease:
    """A node serving the store (``Store.lease``) until ``expires_at`` (Unix seconds)."""

    node: str
    address: str
    pid: int
    expires_at: float


LEASE = ("INSERT INTO node_leases (node, address, pid, expires_at) VALUES ({}, {}, {}, {}) "
         "ON CONFLICT (node) DO UPDATE SET address = excluded.address, pid = excluded.pid, "
         "expires_at = excluded.expires_at")


class Serving(SealError):
    """A node holds a lease on the store, so its secrets must not change."""


def refuse_serving(leases: Sequence[Lease]) -> None:
    """Refuse a reseal while any node serves the store: a node keeps the key
    it started with, so it would fail to open the secrets it reads later, or
    write new ones under its old key (or plain)."""
    if not leases:
        return
    nodes = ", ".join(f"{x.node} (pid {x.pid}, {x.address})" for x in leases)
    raise Serving(f"{len(leases)} node(s) serving this store: {nodes}; stop every node "
                  "first (a killed node's lease expires after node_lease seconds), "
                  "or give --force")
