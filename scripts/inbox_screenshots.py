"""Take the <tidings-inbox> screenshots of docs/inbox.md from a real server.

    python scripts/inbox_screenshots.py [--wait 100] [--out docs]

Starts ``tidings serve`` on a temporary data directory, publishes a small
inbox for one user (some of it ``--wait`` seconds before the rest, so the
times differ, and a group entry of 42 likes), serves a host page on another
loopback port and has Chromium (``/usr/bin/chromium``, through Playwright)
take: the light panel (inbox.png), the dark one in French (inbox-dark.png),
the preferences (inbox-preferences.png), another user's inbox with a
Markdown body (inbox-markdown.png) and a row's Snooze menu open
(inbox-snooze.png).  Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import html
import http.server
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tidings.core.auth import mint_token

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme</title>
<script src="{server}/tidings-inbox.js"></script>
<style>
  body {{ margin: 0; font-family: system-ui, sans-serif; background: {bg}; color: {fg}; }}
  header {{ display: flex; align-items: center; gap: 24px; padding: 10px 28px;
           border-bottom: 1px solid #8884; }}
  .brand {{ font-weight: 700; font-size: 18px; flex: 1; }}
  nav a {{ color: inherit; margin-right: 18px; text-decoration: none; opacity: .8; }}
</style></head>
<body><header><span class="brand">Acme</span>
<nav><a href="#">Projects</a><a href="#">Team</a><a href="#">Billing</a></nav>
<tidings-inbox url="{server}" token="{token}" {attrs}></tidings-inbox></header></body></html>
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _publish(h: httpx.Client, user: str = "maria", **fields) -> None:
    r = h.post("/v1/notifications", json={"to": {"users": [user]}, **fields})
    r.raise_for_status()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wait", type=float, default=100.0,
                    help="seconds between the older and the newer notifications")
    ap.add_argument("--out", type=Path, default=DOCS)
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    data = Path(tempfile.mkdtemp(prefix="tidings-inbox-shots-"))
    port = _port()
    url = f"http://127.0.0.1:{port}"
    log = open(data / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "tidings", "serve", "--data",
                               str(data / "db"), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    site = data / "site"
    site.mkdir()
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *args, directory=str(site))
    host = http.server.ThreadingHTTPServer(("127.0.0.1", _port()), handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{host.server_port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        text = (data / "server.log").read_text()
        key = re.search(r"API key:\s+(\S+)", text).group(1)
        secret = re.search(r"signing secret:\s+(\S+)", text).group(1)
        h = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
        _publish(h, title="Invoice #2024-118 is ready", body="€1,240.00, due on 20 December.",
                 category="billing", url=origin + "/invoices/118")
        _publish(h, title="Weekly summary is ready", body="3 projects moved forward.",
                 category="digest")
        for i in range(42):
            _publish(h, title=f"user_{i} liked your post", body="“Sunset over the harbour”",
                     category="social", group_key="post:7:likes", actor=f"user_{i}")
        _publish(h, "sam", title="Invoice #2024-121 is ready", body="€310.00, due on 3 January.",
                 category="billing", url=origin + "/invoices/121")
        time.sleep(a.wait)
        _publish(h, "sam", title="night_owl replied to your comment",
                 body="“Totally agree, the second half was better.”", category="social",
                 url=origin + "/posts/7#c12")
        _publish(h, "sam", title="Deploy of api v2.14 needs your approval", category="ci",
                 url=origin + "/deploys/214", format="markdown",
                 body="**3 checks** passed, *1 needs review*:\n\n"
                      "- `migrations/019` adds a column\n"
                      "- the [diff](https://example.com/diff/214) and the "
                      "[runbook](https://example.com/runbook)")
        _publish(h, title="Build #8812 failed on main", body="2 tests failed in api/test_publish.",
                 category="ci", url=origin + "/builds/8812", priority="high")
        _publish(h, title="night_owl replied to your comment",
                 body="“Totally agree, the second half was better.”", category="social",
                 url=origin + "/posts/7#c12")
        h.put("/v1/users/maria/preferences", json={
            "categories": {"social": {"email": False}, "digest": {"push": False}},
            "quiet_hours": {"start": "22:00", "end": "07:00", "tz": "Europe/Paris"},
            "digests": {"social": {"push": {"every": 3600}, "email": {"every": 3600}},
                        "billing": {"push": {"daily": "09:00", "tz": "Europe/Paris"},
                                    "email": {"daily": "09:00", "tz": "Europe/Paris"}}}})
        # the app's categories and its digest defaults: the preferences panel's rows
        h.put("/v1/categories", json={"categories": [
            {"id": "social", "label": "Replies and likes",
             "description": "Answers to you, likes of your posts"},
            {"id": "ci", "label": "Builds", "description": "Failed and fixed builds"},
            {"id": "billing", "label": "Billing"},
            {"id": "digest", "label": "Weekly summary"}]}).raise_for_status()
        h.put("/v1/caps", json={"digests": {
            "social": {"push": {"every": 600}, "email": {"every": 600}},
            "digest": {"email": {"daily": "09:00", "tz": "Europe/Paris"}}}}).raise_for_status()

        def shot(browser, name, attrs, dark=False, prefs=False, read_first=False, hover=None,
                 user="maria", snooze=None):
            token = mint_token("default", user, secret, 3600)
            (site / f"{name}.html").write_text(PAGE.format(
                server=html.escape(url), token=html.escape(token), attrs=attrs,
                bg="#0d1117" if dark else "#f6f8fa", fg="#e6edf3" if dark else "#1f2328"))
            page = browser.new_page(viewport={"width": 980, "height": 700},
                                    color_scheme="dark" if dark else "light")
            page.goto(f"{origin}/{name}.html")
            inbox = page.locator("tidings-inbox")
            inbox.locator(".badge").wait_for()
            if read_first:   # one read row, so the difference shows
                page.evaluate("""() => {
                    const c = document.querySelector('tidings-inbox').client;
                    return c.inbox({limit: 50}).then(p => c.markRead(
                        p.items.filter(i => i.notification.category === 'billing').map(i => i.id)));
                }""")
            inbox.locator("button.bell").click()
            inbox.locator("li.item").nth(2).wait_for()
            if prefs:
                inbox.locator("[data-act=prefs]").click()
                inbox.locator("input[data-cat]").first.wait_for()
            time.sleep(0.6)   # the slide-in animation
            if snooze is not None:   # that row's Snooze menu, opened from the keyboard
                inbox.locator("li.item").nth(snooze).locator("[data-act=snooze-menu]").focus()
                page.keyboard.press("Enter")
                page.mouse.move(0, 0)
            elif hover is None:
                page.mouse.move(0, 0)
            else:   # a row's buttons show on hover
                inbox.locator("li.item").nth(hover).hover()
            page.screenshot(path=str(a.out / f"{name}.png"))
            page.close()

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            shot(browser, "inbox", "", read_first=True, hover=1)
            shot(browser, "inbox-dark", 'theme="dark" locale="fr"', dark=True)
            shot(browser, "inbox-preferences", "", prefs=True)   # the app's categories
            shot(browser, "inbox-markdown", "", user="sam")
            shot(browser, "inbox-snooze", "", snooze=1)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        log.close()
        host.shutdown()
        shutil.rmtree(data, ignore_errors=True)
    print(f"wrote inbox.png, inbox-dark.png, inbox-preferences.png, inbox-markdown.png and "
          f"inbox-snooze.png in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
