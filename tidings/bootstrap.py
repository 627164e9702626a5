"""First-start setup and the store-side operator actions the CLI runs."""

from __future__ import annotations

import asyncio

from tidings.config import Settings
from tidings.service import Service

DEMO_USER = "demo-user"


async def _with_service(settings: Settings, fn):
    from tidings.api.app import build_service

    service = build_service(settings)
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
            app, key = await service.create_app("default", app_id="default")
        except Exception:
            # Nodes of a cluster started together on an empty database: one
            # of them created it first, and this one starts like any other.
            if await service.store.get_app("default") is not None:
                return None
            raise
        token, _ = await service.mint_token(app.id, DEMO_USER, 7 * 24 * 3600)
        return {"app": app.id, "api_key": key, "signing_secret": app.signing_secret,
                "demo_user": DEMO_USER, "demo_token": token}

    return asyncio.run(_with_service(settings, run))


def create_app(settings: Settings, name: str) -> dict:
    async def run(service: Service):
        app, key = await service.create_app(name)
        return {"app": app.id, "api_key": key, "signing_secret": app.signing_secret}

    return asyncio.run(_with_service(settings, run))


def mint_token(settings: Settings, app_id: str, user: str, ttl: int) -> str:
    async def run(service: Service):
        token, _ = await service.mint_token(app_id, user, ttl)
        return token

    return asyncio.run(_with_service(settings, run))


def migrate(settings: Settings) -> tuple[list[int], int]:
    """Apply the store's pending schema migrations: ``(versions applied, version now)``."""
    from tidings.store import migrate as migrate_store

    return asyncio.run(migrate_store(settings.store, settings.sqlite_path))


def check_outbox(settings: Settings) -> None:
    """Refuse to serve an outbox that is not there (unreachable, no table)."""
    from tidings.outbox.consumer import check

    asyncio.run(check(settings.outbox_url))
