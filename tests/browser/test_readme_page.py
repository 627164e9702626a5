"""The README's browser example in real Chromium: examples/backend.py serves
examples/page.html on its own origin and mints the token with the API key;
the page loads tidings.js from the tidings server and talks to it across
origins (CORS for the client API, the WebSocket for the stream)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import _free_port
from tests.test_readme import example


def test_the_readme_page_on_its_own_origin(context, tidings_server, tmp_path):
    for name in ("backend.py", "page.html"):
        (tmp_path / name).write_text(example(name, tidings_server.url))
    port = _free_port()
    backend = subprocess.Popen([sys.executable, str(tmp_path / "backend.py")],
                               env={**os.environ, "API_KEY": tidings_server.api_key,
                                    "PORT": str(port)})
    site = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(site, timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        tidings_server.publish({"users": ["demo-user"]}, title="before the page opened")
        page = context.new_page()
        page.goto(site)
        expect(page.locator("#list li")).to_have_text(["before the page opened"])
        expect(page.locator("#badge")).to_have_text("1")
        tidings_server.publish({"users": ["demo-user"]}, title="live")
        expect(page.locator("#list li")).to_have_text(["live", "before the page opened"])
        expect(page.locator("#badge")).to_have_text("2")
        page.click("#mark-all")
        expect(page.locator("#badge")).to_have_text("0")
    finally:
        backend.terminate()
        backend.wait(10)
    assert Path(tmp_path / "page.html").read_text().count(tidings_server.url) == 2
