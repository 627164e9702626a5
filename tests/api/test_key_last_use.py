"""When each API key was last used, over real HTTP (tidings/service/keys.py,
docs/security.md#when-a-key-was-last-used): a node notes it in memory when
it reads a valid key from the store, never writes on a request, and writes
its notes in one batch (``write_used``, which ``Keys.run`` calls once a
minute and the lifespan at shutdown).

The store is the server's own, its class extended to count its writes of
last uses: what is asserted is how many writes, never how long anything took.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.api.test_keys import KEYS, _publish
from tests.conftest import run_server
from tidings.store.sqlite import SQLiteStore


def _count_writes(server) -> list[list[tuple[str, str, float]]]:
    """The server's store, its class extended to keep each batch of last
    uses it is asked to write; returns that list of batches."""
    store = server.service.store
    base = type(store)
    batches: list[list[tuple[str, str, float]]] = []

    async def note_api_keys_used(self, used):
        batch = list(used)
        batches.append(batch)
        await base.note_api_keys_used(self, batch)

    store.__class__ = type(f"Counting{base.__name__}", (base,),
                           {"note_api_keys_used": note_api_keys_used})
    return batches


async def _last_used(server) -> dict[str, str | None]:
    async with server.http() as http:
        return {k["prefix"]: k["last_used_at"] for k in (await http.get(KEYS)).json()["keys"]}


async def test_requests_never_write_and_one_batch_writes_every_key_once(each_store):
    server = each_store
    keys = server.service.keys
    writes = _count_writes(server)
    mine = server.api_key.split("_")[1]
    async with server.http() as http:
        r = await http.post(KEYS, json={"scopes": ["publish"]})
        other = r.json()
    before = keys.clock()
    async with server.http() as first, server.http(other["api_key"]) as second:
        for _ in range(100):
            for http in (first, second):
                r = await http.post("/v1/notifications", json={"to": {"users": ["ann"]}})
                assert r.status_code == 202
    assert writes == []  # nothing written on any request
    assert await keys.write_used() == 2
    assert len(writes) == 1  # one write, each key once
    assert sorted(prefix for _, prefix, _ in writes[0]) == sorted([mine, other["prefix"]])
    assert await keys.write_used() == 0 and len(writes) == 1  # nothing new: no write
    used = await _last_used(server)
    for prefix in (mine, other["prefix"]):
        at = datetime.fromisoformat(used[prefix]).timestamp()
        assert before - 1 <= at <= keys.clock()


async def test_with_the_cache_off_a_key_is_still_written_once_per_batch(tmp_path):
    """Every request reads its key from the store then, and notes it: the
    notes of one key are still one row of one write."""
    async with run_server(tmp_path, cache=False) as server:
        keys = server.service.keys
        writes = _count_writes(server)
        for _ in range(50):
            assert await _publish(server, server.api_key) == 202
        assert writes == []
        assert await keys.write_used() == 1
        assert [len(batch) for batch in writes] == [1]
        first = (await _last_used(server))[server.api_key.split("_")[1]]
        assert await _publish(server, server.api_key) == 202
        assert await keys.write_used() == 1
        again = (await _last_used(server))[server.api_key.split("_")[1]]
        assert again is not None and first is not None and again >= first
        assert len(writes) == 2


async def test_a_key_never_used_is_listed_as_such_and_a_failed_write_is_kept(each_store):
    server = each_store
    keys = server.service.keys
    async with server.http() as http:
        r = await http.post(KEYS, json={"scopes": ["read"], "name": "idle"})
        idle = r.json()["prefix"]
    assert await _publish(server, server.api_key) == 202
    store = server.service.store
    base = type(store)

    async def failing(self, used):
        raise ConnectionError("the store cannot be reached")

    store.__class__ = type(f"Failing{base.__name__}", (base,), {"note_api_keys_used": failing})
    with pytest.raises(ConnectionError):
        await keys.write_used()
    store.__class__ = base
    assert list(keys.used) == [server.api_key.split("_")[1]]  # kept for the next try
    assert await keys.write_used() == 1
    used = await _last_used(server)
    assert used[idle] is None and used[server.api_key.split("_")[1]] is not None


async def test_a_node_writes_what_it_noted_when_it_stops(tmp_path):
    async with run_server(tmp_path, store=None) as server:  # its own SQLite file
        assert await _publish(server, server.api_key) == 202
        app, prefix = server.app, server.api_key.split("_")[1]
    store = SQLiteStore(tmp_path / "data" / "tidings.db")
    await store.open()
    try:
        listed = {k.prefix: k.last_used_at for k in await store.list_api_keys(app)}
        assert listed[prefix] is not None
    finally:
        await store.close()
