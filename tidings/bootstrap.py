"""First-start setup and the store-side operator actions the CLI runs.

Only ``serve`` and ``migrate`` create a store.  The operator actions (``app
create``, ``token``, ``revoke-tokens``, ``key ...``) work on an existing one and say where they
looked when there is none, instead of leaving an empty ``./tidings-data/``
behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tidings.config import Settings
from tidings.core.audit import CLI, OPERATOR, AuditEntry, new_entry
from tidings.core.models import valid_app_id
from tidings.errors import Conflict, NotFound

# Every CLI command imports this module: the service, the store and the
# sealing (cryptography) load inside the actions that use them, so that
# `tidings --help` or `tidings migrate` do not pay for them.
if TYPE_CHECKING:
    from tidings.core.seal import Seal
    from tidings.service import Service
    from tidings.store.base import AppRecord

DEMO_USER = "demo-user"


class NoStore(NotFound):
    """An operator action found no store where it looked."""


def _run(main):
    """``asyncio.run``, imported here: `tidings --help` needs no event loop."""
    import asyncio

    return asyncio.run(main)


def store_location(settings: Settings) -> str:
    """Where the store is, for messages: the SQLite file, or the URL without its password."""
    if not settings.store or settings.store.startswith("sqlite:"):
        return str(settings.sqlite_path)
    parts = urlsplit(settings.store)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return settings.store


def _require_store(settings: Settings) -> None:
    # PostgreSQL is never created by opening it (its schema needs `tidings
    # migrate`); the SQLite file would be, so look before opening.
    if (not settings.store or settings.store.startswith("sqlite:")) \
            and not settings.sqlite_path.exists():
        raise NoStore(f"no store at {settings.sqlite_path}: start `tidings serve` there first, "
                      "or give the server's --data or --store")


async def _with_service(settings: Settings, fn, *, create: bool = False):
    from tidings.service import Service

    if not create:
        _require_store(settings)
    service = Service.from_settings(settings)  # without its HTTP app (Starlette, the dashboard)
    await service.open()
    try:
        return await fn(service)
    finally:
        await service.close()


def first_start(settings: Settings) -> dict | None:
    """Create the first app when the store has none; return what to print."""

    async def run(service: Service):
        if await service.store.list_apps():
            return None
        try:
            app, key = await service.create_app("default", app_id="default", actor=OPERATOR)
        except Exception:
            # Nodes of a cluster started together on an empty database: one
            # of them created it first, and this one starts like any other.
            if await service.store.get_app("default") is not None:
                return None
            raise
        token, *_ = await service.mint_token(app.id, DEMO_USER, 7 * 24 * 3600)
        return {"app": app.id, "api_key": key, "signing_secret": app.signing_secret,
                "demo_user": DEMO_USER, "demo_token": token}

    return _run(_with_service(settings, run, create=True))


def create_app(settings: Settings, name: str, app_id: str | None = None) -> dict:
    """A new app; its id is ``app_id``, else ``name`` when that is a valid id,
    else a generated one."""
    if app_id is None and valid_app_id(name):
        app_id = name

    async def run(service: Service):
        if app_id is not None and await service.store.get_app(app_id) is not None:
            raise Conflict(f"app {app_id!r} already exists in {store_location(settings)}",
                           field="app")
        app, key = await service.create_app(name, app_id=app_id, actor=CLI)
        return {"app": app.id, "api_key": key, "signing_secret": app.signing_secret}

    return _run(_with_service(settings, run))


async def _require_app(service: Service, settings: Settings, app_id: str) -> AppRecord:
    record = await service.app(app_id)
    if record is None:
        apps = ", ".join(a.id for a in await service.store.list_apps()) or "none"
        raise NotFound(f"no such app {app_id!r} in {store_location(settings)} "
                       f"(apps there: {apps})", field="app")
    return record


def mint_token(settings: Settings, app_id: str, user: str, ttl: int) -> str:
    async def run(service: Service):
        await _require_app(service, settings, app_id)
        token, *_ = await service.mint_token(app_id, user, ttl)
        return token

    return _run(_with_service(settings, run))


def revoke_tokens(settings: Settings, app_id: str, user: str, *, jti: str | None = None,
                  token: str | None = None) -> dict:
    """Revoke every token of the app's ``user`` issued until now
    (tidings/service/revocations.py): ``{"app", "user", "revoked_before"}``,
    once that second has come; or, with ``jti`` or ``token``, that one token
    of the user until it expires: ``{"app", "user", "jti", "revoked_until"}``.
    Servers on a shared broker hear of it at once (as for ``revoke_key``);
    any other server within REFRESH_INTERVAL."""
    from tidings.service.revocations import revoked, revoked_one

    async def run(service: Service):
        record = await _require_app(service, settings, app_id)
        if jti is None and token is None:
            before = await service.revocations.revoke(app_id, user, actor=CLI)
            return {"app": app_id, **revoked(user, before)}
        one, until = await service.revocations.revoke_one(record, user, jti=jti, token=token,
                                                          actor=CLI)
        return {"app": app_id, **revoked_one(user, one, until)}

    return _run(_with_service(settings, run))


def create_key(settings: Settings, app_id: str, scopes: Iterable[str],
               name: str | None, expires_at: datetime | None = None) -> dict:
    """A new API key of the app: ``{"app", "api_key", "prefix", "scopes",
    "name", "created_at", "expires_at", "last_used_at"}`` (the key is shown
    this once)."""
    from tidings.service.keys import describe

    async def run(service: Service):
        await _require_app(service, settings, app_id)
        key, info = await service.keys.create(app_id, scopes, name, expires_at, actor=CLI)
        return {"app": app_id, "api_key": key, **describe(info)}

    return _run(_with_service(settings, run))


def rotate_key(settings: Settings, app_id: str, prefix: str, grace: int | None) -> dict:
    """A new key with the scopes and name of the app's key ``prefix``, which
    expires after ``grace`` seconds (tidings/service/keys.py): ``{"app",
    "api_key", ..., "replaces": {...}}``, the new key shown this once.
    Servers on a shared broker read the old key again at once (as for
    ``revoke_key``); any other within KEY_CACHE_TTL."""
    from tidings.service.keys import rotated

    async def run(service: Service):
        await _require_app(service, settings, app_id)
        try:
            key, rotation = await service.keys.rotate(app_id, prefix, grace, actor=CLI)
        except NotFound:
            raise NotFound(f"app {app_id!r} has no API key {prefix!r}",
                           field="prefix") from None
        return {"app": app_id, **rotated(key, rotation)}

    return _run(_with_service(settings, run))


def list_keys(settings: Settings, app_id: str) -> list[dict]:
    from tidings.service.keys import describe

    async def run(service: Service):
        await _require_app(service, settings, app_id)
        return [describe(k) for k in await service.keys.list(app_id)]

    return _run(_with_service(settings, run))


def revoke_key(settings: Settings, app_id: str, prefix: str) -> None:
    """Revoke the app's key ``prefix``.  Servers on a shared broker hear of
    it at once (this process publishes on the broker of ``settings``,
    the PostgreSQL store's own by default); any other server drops the key
    within KEY_CACHE_TTL (tidings/service/keys.py)."""
    async def run(service: Service):
        await _require_app(service, settings, app_id)
        try:
            await service.keys.revoke(app_id, prefix, actor=CLI)
        except NotFound:
            raise NotFound(f"app {app_id!r} has no API key {prefix!r}",
                           field="prefix") from None

    _run(_with_service(settings, run))


def rotate_secret(settings: Settings, app_id: str, overlap: int | None) -> dict:
    """A new signing secret for the app (tidings/service/apps.py):
    ``{"app", "signing_secret", "previous_secret_valid_until"}``.  Servers on
    a shared broker hear of it at once (as for ``revoke_key``); any other
    server within APP_CACHE_TTL, its open streams within a second more."""
    from tidings.service.apps import rotated

    async def run(service: Service):
        await _require_app(service, settings, app_id)
        record = await service.apps.rotate(app_id, overlap, actor=CLI)
        return rotated(record, time.time())

    return _run(_with_service(settings, run))


def migrate(settings: Settings) -> tuple[list[int], int]:
    """Apply the store's pending schema migrations: ``(versions applied, version now)``."""
    from tidings.store import migrate as migrate_store

    return _run(migrate_store(settings.store, settings.sqlite_path))


def check_outbox(settings: Settings) -> None:
    """Refuse to serve an outbox that is not there (unreachable, no table)."""
    from tidings.outbox.consumer import check

    _run(check(settings.outbox_url))


# -- sealed secrets (docs/security.md#sealed-secrets) --------------------------------
async def _on_store(settings: Settings, fn):
    """Run ``fn(store)`` on the store alone: no service, so no key is checked
    before ``fn`` has said what it expects."""
    from tidings.store import open_store

    store = open_store(settings.store, settings.sqlite_path)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


async def _resealed(settings: Settings, store, action: str, before: Seal, after: Seal,
                    force: bool) -> int:
    """``store.reseal``, its change recorded in the operator app's audit log
    (the secrets are every app's) in the same transaction."""
    operator, now = settings.operator_app, time.time()

    def record(rows: int) -> AuditEntry:
        assert operator is not None
        return new_entry(operator, CLI, action, None, now, rows=rows)

    return await store.reseal(before, after, force=force,
                              audit=record if operator else None)


def _operator_key(settings: Settings) -> bytes:
    from tidings.core.seal import SealError

    key = settings.operator_key()
    if key is None:
        raise SealError("no secret key: set TIDINGS_SECRET_KEY or TIDINGS_SECRET_KEY_FILE "
                        "(`tidings secrets keygen` makes one)")
    return key


def seal_secrets(settings: Settings, force: bool = False) -> int:
    """Seal every secret of the store under the operator's key, in one
    transaction: how many rows it rewrote.  Creates an embedded store that is
    not there yet, so that a new install starts sealed.  Refused while a node
    serves the store, unless ``force`` (``Store.reseal``)."""
    from tidings.core.seal import PLAIN, Seal, SealError
    from tidings.store.sealed import KEY_CHECK, check_of

    after = Seal(_operator_key(settings))

    async def run(store):
        check = check_of(await store.secret_rows(KEY_CHECK))
        if check is not None:
            raise SealError("the store's secrets are already sealed" + (
                " under this key" if after.knows(check)
                else ": `tidings secrets rekey` changes the key"))
        return await _resealed(settings, store, "secrets.seal", PLAIN, after, force)

    return _run(_on_store(settings, run))


def unseal_secrets(settings: Settings, force: bool = False) -> int:
    """Store every secret plain again (the key is checked first)."""
    from tidings.core.seal import PLAIN, Seal

    _require_store(settings)
    before = Seal(_operator_key(settings))
    async def run(store):
        return await _resealed(settings, store, "secrets.unseal", before, PLAIN, force)

    return _run(_on_store(settings, run))


def rekey_secrets(settings: Settings, new_key: bytes, force: bool = False) -> int:
    """Seal every secret under ``new_key`` instead of the current key.  The
    same key again rewrites a store sealed in the first format in the current
    one (tidings/core/seal.py)."""
    from tidings.core.seal import Seal, SealError
    from tidings.store.sealed import KEY_CHECK, check_of

    _require_store(settings)
    before, after = Seal(_operator_key(settings)), Seal(new_key)

    async def run(store):
        if before.check == after.check == check_of(await store.secret_rows(KEY_CHECK)):
            raise SealError("the new key is the store's key already, and every secret is "
                            "sealed in the current format")
        return await _resealed(settings, store, "secrets.rekey", before, after, force)

    return _run(_on_store(settings, run))
