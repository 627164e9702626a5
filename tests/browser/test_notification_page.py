"""The dashboard's notification page in real Chromium: search by id, pick a
recipient, the timeline drawn from a real device's receipts and state changes
and a real webhook receiver's refusal, then acceptance."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ServerProcess
from tests.browser.test_dashboard import _login

DOCS = Path(__file__).resolve().parents[2] / "docs"


class _Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint that refuses each delivery's first attempt (500)."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        first = self.headers.get("Tidings-Attempt") == "1"
        self.send_response(500 if first else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hooked_server(tmp_path) -> Iterator[ServerProcess]:
    """``tidings serve`` with one webhook endpoint, at a receiver on loopback."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    config = tmp_path / "tidings.toml"
    config.write_text("[webhook]\nallow_insecure = true\n"
                      "[outbound]\npoll_interval = 0.1\nretry_base = 1.0\nretry_cap = 1.0\n")
    srv = ServerProcess(tmp_path / "data", env={"TIDINGS_CONFIG": str(config)})
    srv.start()
    try:
        r = httpx.post(srv.url + "/v1/webhooks",
                       json={"url": f"http://127.0.0.1:{receiver.server_port}/hook"},
                       headers={"Authorization": f"Bearer {srv.api_key}"})
        assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()
        receiver.shutdown()
        receiver.server_close()


def _wait_for_event(server, nid: str, user: str, event: str, **fields) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = httpx.get(f"{server.url}/v1/notifications/{nid}/timeline", params={"user": user},
                      headers={"Authorization": f"Bearer {server.api_key}"})
        if any(e["event"] == event and all(e.get(k) == v for k, v in fields.items())
               for e in r.json()["events"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event} event for {user}")


def test_search_a_notification_and_draw_a_users_timeline(context, hooked_server, tmp_path):
    server = hooked_server
    zoe = server.token("zoe")
    device = context.new_page()
    device.goto(f"{server.url}/demo?token={zoe}")
    expect(device.locator("#status")).to_have_attribute("data-state", "live")
    nid = server.publish({"users": ["zoe", "amy"]}, title="Build 1432 failed",
                         category="ci")
    expect(device.locator("#list")).to_contain_text("Build 1432 failed")
    # tidings.js acknowledges what arrived (delivered) by itself, as this
    # browser (its id in localStorage, "Chrome on Linux"); zoe's phone posts
    # its delivered and displayed as an app on SSE does
    headers = {"Authorization": f"Bearer {zoe}"}
    _wait_for_event(server, nid, "zoe", "delivered")  # tidings.js batches it, a second apart
    browser_id = device.evaluate("localStorage.getItem('tidings.device')")
    r = httpx.post(server.url + "/v1/me/receipts", headers=headers, json={
        "device": "zoe-phone", "label": "Safari on iOS", "delivered": [nid],
        "displayed": [nid]})
    assert r.status_code < 300, r.text

    page = context.new_page()
    _login(page, server, server.api_key)
    expect(page).to_have_url(server.url + "/dashboard")
    page.goto(server.url + "/dashboard/notification")
    page.fill("#nid", "01HZZZZZZZZZZZZZZZZZZZZZZZ")
    page.click("#search button[type=submit]")
    expect(page.locator("#message")).to_have_text("no such notification")

    page.fill("#nid", nid)
    page.click("#search button[type=submit]")
    expect(page.locator("#title")).to_have_text("Build 1432 failed")
    expect(page.locator("#recipients .chip")).to_have_text(["amy", "zoe"])
    expect(page.locator("#counts tr").first).to_contain_text("in_app")
    # zoe reads it on the device; then the admin picks zoe
    device.locator("#list li", has_text="Build 1432 failed").first.click()
    r = httpx.post(server.url + "/v1/me/notifications/read", json={"ids": [nid]},
                   headers=headers)
    assert r.status_code == 200, r.text
    for user in ("zoe", "amy"):  # each recipient's webhook job: refused once, then sent
        _wait_for_event(server, nid, user, "attempt", result="sent")
    page.locator("#recipients .chip", has_text="zoe").click()
    expect(page.locator("#tl-user")).to_have_text("zoe")
    events = page.locator("#events tr td:nth-child(3)")
    expect(events).to_contain_text(["Accepted", "Committed", "Delivered", "Delivered",
                                    "Displayed", "Seen", "Read"])
    # each device's delivery, with its label and the start of its id
    delivered = page.locator("#events tr", has_text="Delivered").locator("td:nth-child(4)")
    expect(delivered).to_have_text([f"Chrome on Linux · {browser_id[:8]}…",
                                    "Safari on iOS · zoe-phone"])
    expect(page.locator("#events tr", has_text="Displayed")).to_contain_text(
        "Safari on iOS · zoe-phone")
    expect(page.locator("#events tr.event.warn")).to_contain_text("webhook #1: failed")
    expect(page.locator("#events tr.event.warn")).to_contain_text("next retry")
    expect(page.locator("#events tr.event.ok", has_text="Attempt")).to_contain_text(
        "webhook #2: sent")
    expect(page.locator("#track .mark")).to_have_count(events.count())
    # unique users per channel: both recipients' webhook jobs were sent, none gave up
    expect(page.locator("#counts tr", has_text="webhook").locator("td")).to_have_text(
        ["webhook", "2", "–", "–", "–", "–", "–", "2", "0"])
    assert f"id={nid}" in page.url and "user=zoe" in page.url  # a link to this view
    page.set_viewport_size({"width": 1280, "height": 760})
    # docs/operations.md shows this view; a test run leaves the checkout as it
    # was unless asked to refresh the picture (TIDINGS_REFRESH_DOCS=1)
    shots = DOCS if os.environ.get("TIDINGS_REFRESH_DOCS") == "1" else tmp_path
    page.screenshot(path=str(shots / "dashboard-timeline.png"), full_page=True)

    # amy got it and did nothing on a device: accepted, committed, her webhook's attempts
    page.locator("#recipients .chip", has_text="amy").click()
    expect(page.locator("#tl-user")).to_have_text("amy")
    expect(page.locator("#events tr td:nth-child(3)").nth(0)).to_have_text("Accepted")
    expect(page.locator("#events tr", has_text="Displayed")).to_have_count(0)
    # a user id that is not one is a clear message, not a broken page
    page.fill("#user", "x" * 200)
    page.click("#search button[type=submit]")
    expect(page.locator("#message")).to_contain_text("user id must be")
