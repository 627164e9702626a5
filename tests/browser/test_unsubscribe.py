"""The unsubscribe link of a real e-mail, opened in real Chromium: the page
says what it turns off and changes nothing until its button is pressed; the
button's POST (under the page's Content-Security-Policy) turns it off."""

from __future__ import annotations

import email
import email.policy
import os
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ServerProcess, _free_port
from tests.channels.peers import Mailbox


@pytest.fixture
def mailbox():
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


@pytest.fixture
def mailing_server(tmp_path, mailbox):
    box, port = mailbox
    srv = ServerProcess(tmp_path / "data", env={
        "TIDINGS_EMAIL_HOST": "127.0.0.1", "TIDINGS_EMAIL_PORT": str(port),
        "TIDINGS_EMAIL_STARTTLS": "false", "TIDINGS_EMAIL_SENDER": "Acme <notify@acme.test>",
        "TIDINGS_OUTBOUND_FALLBACK_DELAY": "0", "TIDINGS_OUTBOUND_POLL_INTERVAL": "0.05"})
    srv.env["TIDINGS_EMAIL_PUBLIC_URL"] = srv.url  # known before the start: its port is
    srv.start()
    try:
        yield srv, box
    finally:
        srv.stop()


def _received(box: Mailbox, n: int) -> list[email.message.EmailMessage]:
    deadline = time.monotonic() + 15
    while len(box.messages) < n:
        assert time.monotonic() < deadline, "no mail arrived"
        time.sleep(0.05)
    return [email.message_from_bytes(e.content, policy=email.policy.default)
            for e in box.messages]


def test_the_page_asks_and_its_button_unsubscribes(context, mailing_server, tmp_path):
    srv, box = mailing_server
    api = {"Authorization": f"Bearer {srv.api_key}"}
    r = httpx.put(f"{srv.url}/v1/users/mia/email", json={"email": "mia@example.test"},
                  headers=api)
    assert r.status_code == 200 and r.json()["enabled"] is True
    srv.publish({"users": ["mia"]}, category="social", title="Lena liked your photo")
    (msg,) = _received(box, 1)
    url = msg["List-Unsubscribe"].strip("<>")
    assert url.startswith(f"{srv.url}/v1/unsubscribe/")

    failed: list[str] = []
    context.on("response", lambda r: failed.append(f"{r.status} {r.url}")
               if r.status >= 400 else None)
    console: list[str] = []  # a CSP violation (inline style, a form elsewhere) shows here
    page = context.new_page()
    page.set_viewport_size({"width": 720, "height": 480})
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.goto(url)
    expect(page.locator("h1")).to_have_text("Unsubscribe")
    expect(page.locator("#what")).to_have_text(
        "Stop e-mail notifications of the category \u201csocial\u201d from default?")
    expect(page.locator("#unsubscribe")).to_have_attribute("data-state", "confirm")
    # the dashboard's stylesheet, found by a relative path, styled the card
    assert page.evaluate("getComputedStyle(document.body).display") == "grid"
    shots = tmp_path / "shots"
    shots.mkdir()
    page.screenshot(path=str(shots / "unsubscribe-confirm.png"))
    # opening it changed nothing
    prefs = httpx.get(f"{srv.url}/v1/users/mia/preferences", headers=api).json()
    assert prefs == {}

    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.locator("h1")).to_have_text("Unsubscribed")
    expect(page.locator("#unsubscribe")).to_have_attribute("data-state", "done")
    expect(page.locator("#what")).to_have_text(
        "You will get no more e-mail notifications of the category \u201csocial\u201d "
        "from default.")
    assert page.url == url  # answered in place, no redirect (RFC 8058 §3.2)
    page.screenshot(path=str(shots / "unsubscribe-done.png"))
    if os.environ.get("TIDINGS_KEEP_SHOTS"):
        print("screenshots in", shots)
    prefs = httpx.get(f"{srv.url}/v1/users/mia/preferences", headers=api).json()
    assert prefs == {"categories": {"social": {"email": False}}}

    # the next "social" notification sends no e-mail; another category does
    srv.publish({"users": ["mia"]}, category="social", title="Lena liked another photo")
    srv.publish({"users": ["mia"]}, category="billing", title="Invoice ready")
    msgs = _received(box, 2)
    assert [m["Subject"] for m in msgs] == ["Lena liked your photo", "Invoice ready"]

    assert failed == [] and console == [], (failed, console)

    # a link cut short is a clear page (a 404, which the console reports), not a traceback
    page.goto(url[:-4])
    expect(page.locator("h1")).to_have_text("This link does not work")
    expect(page.locator("#what")).to_contain_text("truncated")
    page.screenshot(path=str(shots / "unsubscribe-refused.png"))
    assert failed == [f"404 {url[:-4]}"], failed
    assert "Traceback" not in srv.log.read_text()
