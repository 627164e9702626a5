"""A store that cannot write answers 503 with Retry-After, and /readyz is red
until it can again (docs/operations.md#readiness).

The embedded store is made read-only for real: the database file is marked
immutable (``chattr +i``, which binds root too), so SQLite opens it
read-only and every write statement fails with SQLITE_READONLY.  The file
system is full for real too: the data directory is a small tmpfs, filled.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from tests.api.conftest import store_overrides
from tests.api.test_hostile import assert_error
from tests.conftest import run_server
from tests.services import missing

PUBLISH = "/v1/notifications"
NOTE = {"to": {"users": ["u1"]}, "title": "t"}


def _chattr(flag: str, path: Path) -> None:
    if shutil.which("chattr") is None:
        missing("chattr (e2fsprogs) is not installed")
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"chattr {flag} is not supported here: {done.stderr.strip()}")


@contextlib.contextmanager
def immutable(path: Path):
    _chattr("+i", path)
    try:
        yield
    finally:
        _chattr("-i", path)


async def _unavailable(r) -> None:
    assert_error(r, 503, "unavailable")
    assert int(r.headers["retry-after"]) >= 1


async def test_a_read_only_database_is_503_and_not_ready_until_writable(tmp_path):
    async with run_server(tmp_path, store=None) as server:
        async with server.http() as http:
            assert (await http.post(PUBLISH, json=NOTE)).status_code == 202
        key = server.api_key
    db = tmp_path / "data" / "tidings.db"
    with immutable(db):
        async with run_server(tmp_path, store=None, api_key=key) as server:
            async with server.http() as http:
                await _unavailable(await http.post(PUBLISH, json=NOTE))
                r = await http.post(f"{PUBLISH}/batch", json={"notifications": [NOTE, NOTE]})
                assert r.status_code == 202, r.text
                assert [x["error"]["code"] for x in r.json()["results"]] == ["unavailable"] * 2
                await _unavailable(await http.put("/v1/topics/t/subscribers/u1"))
                await _unavailable(await http.put("/v1/users/u1/preferences", json={}))
                ready = await http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["store"] is False, ready.text
                # reads still work
                r = await http.get("/v1/users/u1/notifications")
                assert len(r.json()["items"]) == 1
                _chattr("-i", db)
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert (await http.post(PUBLISH, json=NOTE)).status_code == 202
                r = await http.get("/v1/users/u1/notifications")
                assert len(r.json()["items"]) == 2


async def test_a_full_disk_is_503_and_not_ready_until_there_is_room(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        async with run_server(tmp_path, store=None) as server:
            async with server.http() as http:
                assert (await http.post(PUBLISH, json=NOTE)).status_code == 202
                filler = data / "filler"
                with open(filler, "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                big = {**NOTE, "body": "x" * 8000}
                for _ in range(50):  # until the WAL needs a page it cannot have
                    r = await http.post(PUBLISH, json=big)
                    if r.status_code != 202:
                        break
                await _unavailable(r)
                ready = await http.get("/readyz")
                assert ready.status_code == 503, ready.text
                filler.unlink()
                assert (await http.get("/readyz")).status_code == 200
                assert (await http.post(PUBLISH, json=big)).status_code == 202
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


async def test_a_read_only_postgresql_is_503_and_not_ready(tmp_path):
    # A session that may not write, as on a standby after a failover
    # gone wrong: every write fails with SQLSTATE 25006.
    async with store_overrides("postgres") as store:
        async with run_server(tmp_path, **store) as server:
            async with server.http() as http:
                assert (await http.post(PUBLISH, json=NOTE)).status_code == 202
            key = server.api_key
        read_only = store["store"] + "&default_transaction_read_only=on"
        async with run_server(tmp_path, store=read_only, api_key=key) as server:
            async with server.http() as http:
                await _unavailable(await http.post(PUBLISH, json=NOTE))
                await _unavailable(await http.put("/v1/topics/t/subscribers/u1"))
                r = await http.post(f"{PUBLISH}/batch", json={"notifications": [NOTE]})
                assert r.json()["results"][0]["error"]["code"] == "unavailable", r.text
                ready = await http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["store"] is False, ready.text
                r = await http.get("/v1/users/u1/notifications")
                assert len(r.json()["items"]) == 1
