"""The audit log's records: who changed what of an app, and when.

A record is written for every change an admin key, a dashboard session, the
CLI or the operator makes (docs/security.md#audit-log): one of ``ACTIONS``,
its ``target`` (a key's prefix, a webhook's id, a user), and a few
``details``.  A refused change records nothing, except a dashboard login,
whose failures are what an audit of logins is for.

A record never holds a secret: no key, signing secret, webhook secret or
token.  ``new_entry`` refuses details named like one, the last line of
defence of a rule the callers keep by never passing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from tidings.core.ids import new_id

__all__ = ["ACTIONS", "CLI", "LISTED", "OPERATOR", "Actor", "AuditEntry", "describe",
           "key_actor", "new_entry", "origin", "session_actor"]

# Stable verbs: clients filter on them (?action=), so one is never renamed.
ACTIONS = (
    "app.create",
    "key.create", "key.rotate", "key.revoke", "key.drop",
    "signing_secret.rotate",
    "webhook.create", "webhook.rotate_secret", "webhook.delete",
    "caps.update", "categories.update",
    "dead_letter.retry",
    "tokens.revoke", "token.revoke",
    "node.drain", "node.undrain", "node.shed",
    "dashboard.login", "dashboard.login_failed", "dashboard.logout",
    "secrets.seal", "secrets.unseal", "secrets.rekey",
)
ACTION_RE = r"^[a-z_]{1,32}\.[a-z_]{1,32}\Z"

# what a detail may never be called: the values of these are secrets
_SECRET = re.compile(r"(^|_)(key|secret|token|hash|password)$")


class Actor(NamedTuple):
    """Who made a change: ``name`` as the log shows it, and the client's
    address when it came over HTTP."""

    name: str
    address: str | None = None


CLI = Actor("cli")
OPERATOR = Actor("operator")  # the server itself: its first start's app
# names (categories, ...) a record lists, at most: a record stays small
LISTED = 20


def key_actor(prefix: str, name: str | None, address: str | None) -> Actor:
    """An API key, by its prefix and name (never the key)."""
    return Actor(f"key {prefix}" + (f" ({name})" if name else ""), address)


def session_actor(prefix: str, address: str | None) -> Actor:
    return Actor(f"dashboard session of key {prefix}", address)


@dataclass(slots=True)
class AuditEntry:
    id: str  # time-ordered (tidings.core.ids): the cursor and the order
    app: str
    at: float
    actor: str
    address: str | None
    action: str
    target: str | None
    details: dict[str, Any] = field(default_factory=dict)


def new_entry(app: str, actor: Actor, action: str, target: str | None, at: float,
              **details: Any) -> AuditEntry:
    """A record of ``action`` made now (``at``, Unix seconds)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    named = sorted(k for k in details if _SECRET.search(k))
    if named:
        raise ValueError(f"an audit record never holds a secret: {named[0]!r}")
    return AuditEntry(new_id(int(at * 1000)), app, at, actor.name, actor.address, action,
                      target, {k: v for k, v in details.items() if v is not None})


def origin(url: str) -> str:
    """A URL's scheme, host and port: a webhook's path or query may be a
    capability (whoever knows it may post), and its user part a password."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def describe(entry: AuditEntry) -> dict:
    """A record as ``GET /v1/audit`` and the dashboard show it."""
    return {"id": entry.id, "app": entry.app,
            "at": datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="milliseconds"),
            "actor": entry.actor, "address": entry.address, "action": entry.action,
            "target": entry.target, "details": entry.details}
