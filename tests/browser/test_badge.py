"""The badge of tidings.js and <tidings-inbox>, in real Chromium, when counts
and notifications cross (docs/protocol.md, "Counts and the badge").

The server runs in the test's own event loop (``run_server``), so a test can
pause its store reads with the hooks of tests/gateway/test_counts.py and
make each race happen for sure, while Chromium talks to it over real
sockets; Playwright's async API shares that loop.  The event orders of
tests/client/badge_scenarios.py are then played to tidings.js by a scripted
WebSocket (Playwright's ``route_web_socket``), as the Python ``Badge`` gets
them.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, _require_chromium
from tests.browser.inbox_pages import Site
from tests.client.badge_scenarios import SCENARIOS, counts, hello, personal
from tests.conftest import run_server
from tests.gateway.live import Held, Pause, publish

# <tidings-inbox> for a user; window.seen counts the events its client
# emitted, by type (the badge is drawn by then: both happen in one handler)
INBOX = """<!doctype html><meta charset="utf-8"><title>badge</title>
<script src="{url}/tidings-inbox.js"></script>
<tidings-inbox url="{url}" token="{token}"></tidings-inbox>
<script>
  window.seen = {{}};
  const inbox = document.querySelector("tidings-inbox");
  for (const type of ["hello", "notification", "state", "counts"])
    inbox.client.on(type, () => {{ window.seen[type] = (window.seen[type] || 0) + 1; }});
</script>"""
# tidings.js alone: window.badge is the last "counts" it emitted, and
# window.handled the events it took from the (scripted) stream
CLIENT = """<!doctype html><meta charset="utf-8"><title>badge</title>
<script src="{url}/tidings.js"></script>
<script>
  window.badge = null; window.handled = 0; window.asked = 0;
  window.start = (options) => {{
    const c = Tidings.connect(Object.assign({{ url: "{url}", token: "{token}",
                                                receipts: false }}, options));
    const handle = c._handle;
    c._handle = function (ev) {{ handle.call(this, ev); window.handled += 1; }};
    c.on("counts", (b) => {{ window.badge = b; }});
  }};
</script>"""


@pytest.fixture
async def chromium():
    _require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def server(tmp_path):
    async with run_server(tmp_path) as live:
        yield live


async def open_page(chromium, site: Site, html: str):
    """A page of ``site`` showing ``html``; uncaught errors are collected."""
    page = await chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(site.add("badge.html", html))
    return page, errors


async def badge_text(page) -> str:
    badge = page.locator("tidings-inbox").locator(".badge")
    return "" if await badge.is_hidden() else await badge.text_content()


async def until(page, expression: str) -> None:
    await page.wait_for_function(expression, timeout=10_000)


async def test_the_bell_stays_exact_when_counts_are_overtaken(chromium, server, site, monkeypatch):
    """A mark-read made elsewhere reads its counts, then a notification commits
    and reaches the browser before those counts do."""
    token = await server.token("rae")
    ids = await publish(server, {"users": ["rae"]}, 2)
    page, errors = await open_page(chromium, site, INBOX.format(url=server.url, token=token))
    await until(page, "window.seen.hello === 1")
    assert await page.evaluate("inbox.client._using") == "websocket"
    assert await badge_text(page) == "2"
    pause = Pause(monkeypatch, server.service.store, "counts", "rae")
    async with server.http(key=token) as http:
        marking = asyncio.create_task(
            http.post("/v1/me/notifications/read", json={"ids": [ids[0]]}))
        await pause.reached()  # one unread, read at seq 2; not sent yet
        try:
            await publish(server, {"users": ["rae"]}, 1, title="third")
            await until(page, "window.seen.notification === 1")
            assert await badge_text(page) == "3"
        finally:
            pause.release()
        assert (await marking).status_code == 200
    await until(page, "window.seen.state === 1")
    assert await badge_text(page) == "2"  # the counts said 1, at seq 2: plus seq 3
    assert not errors
    await page.close()


async def test_the_bell_counts_once_what_hello_already_counted(chromium, server, site, monkeypatch):
    """A notification commits between the stream's head read and hello's
    counts: hello holds it, and it arrives live as well."""
    token = await server.token("sol")
    pause = Pause(monkeypatch, server.service.store, "counts", "sol", before=True)
    held = Held(monkeypatch)
    page, errors = await open_page(chromium, site, INBOX.format(url=server.url, token=token))
    try:
        await pause.reached()
        await publish(server, {"users": ["sol"]}, 1)
        await held.wait(1)
    finally:
        pause.release()
    await until(page, "window.seen.notification === 1")
    assert await badge_text(page) == "1"
    assert not errors
    await page.close()


async def scripted(chromium, server, site, frames: list, *, cursor: str | None = None):
    """tidings.js against a scripted stream that sends ``frames`` once it is
    authenticated; returns the page when it has handled all of them."""
    page, errors = await open_page(
        chromium, site, CLIENT.format(url=server.url, token=await server.token("sam")))

    def on_stream(ws):
        def first(message):
            for frame in frames:
                ws.send(json.dumps(frame))
        ws.on_message(first)

    await page.route_web_socket(re.compile(r".*/v1/me/stream.*"), on_stream)
    await page.evaluate("(cursor) => window.start({ cursor: cursor })", cursor)
    n = sum(len(f) if isinstance(f, list) else 1 for f in frames)
    await until(page, f"window.handled === {n}")
    return page, errors


async def test_tidings_js_ends_every_racy_order_on_the_exact_badge(chromium, server, site):
    for case in SCENARIOS:
        page, errors = await scripted(chromium, server, site, case["events"], cursor=case["cursor"])
        assert await page.evaluate("window.badge") == case["badge"], case["name"]
        assert not errors, case["name"]
        await page.close()


async def test_tidings_js_asks_again_when_an_answer_predates_a_group_update(chromium, server, site):
    """An update of a group entry: only the server knows whether it is unseen
    again.  The first answer was read before the update (another node's
    cache), so the client asks once more."""
    answers = [counts(1, 0, 1), counts(1, 1, 2)]
    page, errors = await open_page(
        chromium, site, CLIENT.format(url=server.url, token=await server.token("sam")))
    asked: list[str] = []

    async def answer(route):
        asked.append(route.request.url)
        body = answers[min(len(asked), len(answers)) - 1]
        await route.fulfill(status=200, content_type="application/json",
                            body=json.dumps({k: v for k, v in body.items() if k != "type"}))

    await page.route(server.url + "/v1/me/counts", answer)
    frames = [hello("1:0", 1, 0, 1), personal(2, group=2)]

    def on_stream(ws):
        ws.on_message(lambda _: [ws.send(json.dumps(f)) for f in frames])

    await page.route_web_socket(re.compile(r".*/v1/me/stream.*"), on_stream)
    await page.evaluate("window.start({})")
    await until(page, "window.badge && window.badge.unseen === 1")
    assert await page.evaluate("window.badge") == {"unread": 1, "unseen": 1}
    assert len(asked) == 2
    assert not errors
    await page.close()


def protocol_snippet() -> str:
    """The badge rule's snippet of docs/protocol.md ("Counts and the badge")."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    found = re.search(r"```js\n(// The badge:.*?function tidingsBadge.*?)```", text, re.S)
    assert found, "the snippet is gone from docs/protocol.md"
    return found.group(1)


async def test_the_protocol_pages_snippet_ends_every_racy_order_on_the_exact_badge(chromium):
    page = await chromium.new_page()
    run = protocol_snippet() + """
      ;(events) => {
        let shown = null;
        const badge = tidingsBadge((c) => { shown = c; }), ids = new Set();
        for (const ev of events) {
          if (ev.type === "hello") badge.hello(ev.counts);
          else if (ev.type === "counts") badge.counts(ev);
          else if (ev.type === "notification" && !ids.has(ev.notification.id)) {
            ids.add(ev.notification.id);
            badge.notification(ev);
          }
        }
        return shown;
      }"""
    for case in SCENARIOS:
        said = [e.get("counts", e) for e in case["events"] if e["type"] in ("hello", "counts")]
        if not all("at" in c for c in said):
            continue  # the snippet speaks today's protocol only
        assert await page.evaluate(run, case["events"]) == case["badge"], case["name"]
    await page.close()


async def badge_becomes(page, text: str, timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (shown := await badge_text(page)) != text:
        assert loop.time() < deadline, f"the bell shows {shown!r}, not {text!r}"
        await asyncio.sleep(0.05)


async def test_the_bell_follows_counts_that_move_with_no_event_of_their_own(chromium, tmp_path,
                                                                            site):
    """An unread notification running out of its ttl, a large topic joined,
    a broadcast retracted: each sends counts, and <tidings-inbox> shows them
    (docs/protocol.md, "Counts with no event of their own")."""
    async with run_server(tmp_path, fanout_threshold=0) as server:
        token = await server.token("ivy")
        page, errors = await open_page(chromium, site, INBOX.format(url=server.url, token=token))
        await until(page, "window.seen.hello === 1")
        await publish(server, {"users": ["ivy"]}, 1, ttl=1)
        await badge_becomes(page, "1")
        await badge_becomes(page, "")  # it expired: nothing unread
        async with server.http() as http:
            assert (await http.put("/v1/topics/big/subscribers/other")).status_code < 300
            await publish(server, {"topic": "big"}, 2)  # feed items ivy does not see yet
            assert (await http.put("/v1/topics/big/subscribers/ivy")).status_code < 300
            await badge_becomes(page, "2")
            (nid,) = await publish(server, {"all": True}, 1)
            await badge_becomes(page, "3")
            assert (await http.delete(f"/v1/notifications/{nid}")).status_code == 200
            await badge_becomes(page, "2")
        assert not errors
        await page.close()
