"""Browser tests: Playwright driving the system Chromium against a real server.

Each test gets ``tidings serve`` as a child process (a fresh data directory,
the app ``default`` its first start creates, an ephemeral port) that it can
stop and start again on the same port and data directory.  Pages load
``tidings.js``, the dashboard and the demo from that server, as a user's
browser would.

Without ``/usr/bin/chromium`` these tests skip with the reason; in CI
(``TIDINGS_REQUIRE_SERVICES=1``, set by ``.ci/run``, which also installs
Chromium) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.services import missing
from tidings.core.auth import mint_token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]
APP = "default"  # created by the first start; the operator app (Settings.operator_app)


def _require_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    try:
        yield ctx
    finally:
        ctx.close()
    assert not errors, errors  # no uncaught exception in any page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``tidings serve`` in a child process: start, stop, start again."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.log = data_dir.parent / "server.log"
        self.proc: subprocess.Popen | None = None
        self.api_key = self.signing_secret = ""

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tidings", "serve", "--data", str(self.data_dir),
                 "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise TimeoutError("server did not start")
        if not self.api_key:  # printed once, on the first start
            text = self.log.read_text()
            self.api_key = re.search(r"API key:\s+(\S+)", text).group(1)
            self.signing_secret = re.search(r"signing secret:\s+(\S+)", text).group(1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def token(self, user: str, ttl: int = 3600) -> str:
        return mint_token(APP, user, self.signing_secret, ttl)

    def publish(self, to: dict, **fields) -> str:
        r = httpx.post(self.url + "/v1/notifications", json={"to": to, **fields},
                       headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def _with_service(self, fn):
        """Run ``await fn(service)`` on this server's data directory from
        another process-like context, as the CLI's ``app create`` does (in a
        thread: the test thread's Playwright owns an event loop)."""
        from tidings.api.app import build_service
        from tidings.config import Settings

        async def run():
            service = build_service(Settings(data=str(self.data_dir)))
            await service.open()
            try:
                return await fn(service)
            finally:
                await service.close()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result(30)

    def publish_offline(self, to: dict, titles: list[str]) -> None:
        """Publish straight into the store while this server is stopped, as
        another node of a cluster would."""
        from tidings.core.models import PublishRequest

        async def publish(service):
            for title in titles:
                await service.publish(
                    APP, msgspec.convert({"to": to, "title": title}, PublishRequest))

        self._with_service(publish)

    def create_key(self, scopes: set[str]) -> str:
        async def create(service):
            return await service.create_api_key(APP, scopes)

        return self._with_service(create)


@pytest.fixture
def tidings_server(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def site(tmp_path):
    """The app's pages that embed the inbox, on a loopback origin of their own
    (inbox_pages.Site)."""
    from tests.browser.inbox_pages import Site

    s = Site(tmp_path / "site")
    yield s
    s.close()
