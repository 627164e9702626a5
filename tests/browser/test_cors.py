"""A frontend on its own origin (another loopback port) uses tidings.js, the
client API and the SSE stream in real Chromium; an origin outside the
allowed list is kept out by the browser itself."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ServerProcess, _free_port

PAGE = """<!doctype html><meta charset="utf-8"><title>frontend</title>
<ul id="list"></ul><span id="badge"></span><span id="state"></span>
<script src="TIDINGS/tidings.js"></script>
<script>
  const params = new URLSearchParams(location.search);
  const client = Tidings.connect({url: "TIDINGS", token: params.get("token"),
                                  transport: params.get("transport") || "auto"});
  client.on("status", (s) => { document.querySelector("#state").textContent = s.state; });
  client.on("notification", (n) => {
    const li = document.createElement("li"); li.textContent = n.title;
    document.querySelector("#list").append(li);
  });
  client.on("counts", (c) => { document.querySelector("#badge").textContent = c.unread; });
  window.client = client;
</script>"""


class Frontend:
    """A static page on its own loopback port: another origin than tidings'."""

    def __init__(self, root: Path, tidings_url: str):
        root.mkdir(parents=True, exist_ok=True)
        (root / "index.html").write_text(PAGE.replace("TIDINGS", tidings_url))
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def frontends(tmp_path):
    made: list[Frontend] = []
    yield lambda url: made.append(Frontend(tmp_path / f"site{len(made)}", url)) or made[-1]
    for f in made:
        f.close()


def _fetch(page, path: str, token: str, method: str = "GET", body: dict | None = None):
    """fetch() from the page; returns [status, json] or the error's text."""
    return page.evaluate(
        """async ([url, token, method, body]) => {
             try {
               const r = await fetch(url, {method, headers: Object.assign(
                 {Authorization: "Bearer " + token},
                 body ? {"Content-Type": "application/json"} : {}),
                 body: body ? JSON.stringify(body) : undefined});
               return [r.status, await r.json()];
             } catch (e) { return String(e); }
           }""", [path, token, method, body])


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_any_origin_by_default(context, tidings_server, frontends, transport):
    site = frontends(tidings_server.url)
    token = tidings_server.token("cora")
    page = context.new_page()
    page.goto(f"{site.origin}/index.html?token={token}&transport={transport}")
    expect(page.locator("#state")).to_have_text("live")
    tidings_server.publish({"users": ["cora"]}, title="across origins")
    expect(page.locator("#list li")).to_have_text(["across origins"])
    expect(page.locator("#badge")).to_have_text("1")

    status, counts = _fetch(page, f"{tidings_server.url}/v1/me/counts", token)
    assert status == 200 and counts["unread"] == 1
    # a POST with a JSON body goes through a preflight
    status, _ = _fetch(page, f"{tidings_server.url}/v1/me/notifications/read", token,
                       "POST", {"all": True})
    assert status == 200
    expect(page.locator("#badge")).to_have_text("0")
    # errors are readable too: the page sees the 401 and its JSON, not a network error
    status, body = _fetch(page, f"{tidings_server.url}/v1/me/counts", "not-a-token")
    assert status == 401 and body["error"]["code"]


def test_only_the_allowed_origins_when_set(browser, tmp_path, frontends):
    # ports are known before the server starts, so the list can name the allowed one
    server = ServerProcess(tmp_path / "data")
    allowed = frontends(server.url)
    other = frontends(server.url)
    server.env["TIDINGS_ALLOWED_ORIGINS"] = allowed.origin
    server.start()
    ctx = browser.new_context()
    try:
        token = server.token("dora")
        ok = ctx.new_page()
        ok.goto(f"{allowed.origin}/index.html?token={token}&transport=sse")
        expect(ok.locator("#state")).to_have_text("live")
        server.publish({"users": ["dora"]}, title="for the allowed origin")
        expect(ok.locator("#list li")).to_have_text(["for the allowed origin"])
        status, _ = _fetch(ok, f"{server.url}/v1/me/notifications/read", token, "POST",
                           {"all": True})
        assert status == 200

        bad = ctx.new_page()
        bad.goto(f"{other.origin}/index.html?token={token}&transport=sse")
        # the browser refuses the answers: fetch fails, the stream never goes live
        assert "Failed to fetch" in _fetch(bad, f"{server.url}/v1/me/counts", token)
        bad.wait_for_timeout(1000)
        assert bad.locator("#state").inner_text() != "live"
        assert bad.locator("#list li").count() == 0
    finally:
        ctx.close()
        server.stop()


def test_preflight_and_headers(tidings_server):
    """What the browser was told, as plain HTTP: the preflight, and no CORS on the
    server API's other routes (an API key belongs on a backend)."""
    origin = {"Origin": "http://127.0.0.1:1"}
    pre = httpx.options(f"{tidings_server.url}/v1/me/notifications/read", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in pre.headers  # never with "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    sse = httpx.options(f"{tidings_server.url}/v1/me/events", headers={
        **origin, "Access-Control-Request-Method": "GET"})
    assert sse.status_code == 204
    mint = httpx.options(f"{tidings_server.url}/v1/users/u1/tokens", headers={
        **origin, "Access-Control-Request-Method": "POST"})
    assert mint.status_code == 204
    publish = httpx.post(f"{tidings_server.url}/v1/notifications", headers={
        **origin, "Authorization": f"Bearer {tidings_server.api_key}"},
        json={"to": {"users": ["u1"]}, "title": "x"})
    assert publish.status_code == 202
    assert "access-control-allow-origin" not in publish.headers


def test_preferences_written_back_with_their_etag_across_origins(context, tidings_server,
                                                                 frontends):
    """tidings.js from another origin reads the preferences' ETag (exposed by
    CORS) and sends it as If-Match (allowed by the preflight): a write of
    what it read is refused once another writer changed them."""
    site = frontends(tidings_server.url)
    token = tidings_server.token("ella")
    page = context.new_page()
    page.goto(f"{site.origin}/index.html?token={token}&transport=sse")
    expect(page.locator("#state")).to_have_text("live")
    read = page.evaluate("""async () => {
        const prefs = await client.preferences();
        prefs.categories = {promo: {email: false}};
        const saved = await client.setPreferences(prefs, {ifMatch: prefs.etag});
        return [prefs.etag, JSON.stringify(prefs), saved.etag, Object.keys(saved)];
    }""")
    first, sent, tag, keys = read
    assert first and tag and tag != first
    assert sent == '{"categories":{"promo":{"email":false}}}' and keys == ["categories"]
    # another writer (the app's backend) changes them: the tag the page holds is stale
    elsewhere = httpx.patch(f"{tidings_server.url}/v1/users/ella/preferences",
                            headers={"Authorization": f"Bearer {tidings_server.api_key}"},
                            json={"categories": {"social": {"push": False}}})
    assert elsewhere.status_code == 200
    stale = page.evaluate("""async (tag) => {
        try { await client.updatePreferences({categories: {promo: {push: false}}},
                                             {ifMatch: tag}); }
        catch (e) { return [e.status, e.code]; }
        return "written";
    }""", tag)
    assert stale == [412, "precondition_failed"]
    now = httpx.get(f"{tidings_server.url}/v1/users/ella/preferences",
                    headers={"Authorization": f"Bearer {tidings_server.api_key}"})
    assert now.json()["categories"] == {"promo": {"email": False}, "social": {"push": False}}
    # If-None-Match (allowed by the preflight): null while the copy held is current
    held = page.evaluate("""async (tag) => {
        const same = await client.preferences({ifNoneMatch: tag});
        const fresh = await client.preferences({ifNoneMatch: '"other"'});
        return [same, fresh.etag, fresh.categories];
    }""", now.headers["etag"])
    assert held == [None, now.headers["etag"], now.json()["categories"]]
    again = page.evaluate("""async (tag) => {
        const saved = await client.updatePreferences({categories: {promo: null}},
                                                     {ifMatch: tag});
        return [saved.etag, saved.categories];
    }""", now.headers["etag"])
    assert again[0] != now.headers["etag"] and again[1] == {"social": {"push": False}}
