"""The landing page at / and the favicon, in real Chromium: a new user who
opens the server's address finds their way, and what browsers ask for on
their own never shows as an error on the dashboard."""

from __future__ import annotations

import httpx
from playwright.sync_api import expect

from tests.browser.test_dashboard import _login


def test_the_landing_page_leads_to_the_dashboard_the_api_and_the_demo(context, tidings_server):
    failed: list[str] = []
    context.on("response", lambda r: failed.append(f"{r.status} {r.url}")
               if r.status >= 400 else None)
    console: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.goto(tidings_server.url + "/")
    expect(page).to_have_title("tidings")
    expect(page.locator("h1")).to_contain_text("tidings")
    # the publish example names this server and says where $API_KEY comes from
    expect(page.locator("pre")).to_contain_text(f"{tidings_server.url}/v1/notifications")
    expect(page.locator(".fine").first).to_contain_text("tidings serve")
    # the browser fetched the icon the page names, and it is a picture
    icon = page.evaluate("""async () => {
        const r = await fetch(document.querySelector("link[rel=icon]").href);
        return [r.status, r.headers.get("content-type")];
    }""")
    assert icon == [200, "image/svg+xml"]

    token = tidings_server.token("lena")
    page.fill("#token", token)
    page.get_by_role("button", name="Open").click()
    expect(page).to_have_url(tidings_server.url + "/demo?token=" + token)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    for link, lands_on in (("API reference", "/docs"), ("Dashboard", "/dashboard/login")):
        page.goto(tidings_server.url + "/")
        page.get_by_role("link", name=link).click()
        expect(page).to_have_url(tidings_server.url + lands_on)
    assert failed == [] and console == []


def test_favicon_and_browser_requests_are_not_errors(context, tidings_server):
    ico = httpx.get(tidings_server.url + "/favicon.ico")
    assert ico.status_code == 200 and ico.headers["content-type"] == "image/x-icon"
    assert ico.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    robots = httpx.get(tidings_server.url + "/robots.txt")
    assert robots.status_code == 200 and "Disallow: /" in robots.text
    assert httpx.get(tidings_server.url + "/").status_code == 200
    for path in ("/apple-touch-icon.png", "/apple-touch-icon-precomposed.png",
                 "/.well-known/appspecific/com.chrome.devtools.json"):
        assert httpx.get(tidings_server.url + path).status_code == 404

    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    # a real mistake is listed; none of the browser's own requests above is
    httpx.get(tidings_server.url + "/no/such/page")
    expect(page.locator("#errors")).to_contain_text("not_found")
    errors = page.locator("#errors").inner_text()
    assert "/no/such/page" in errors or "not_found" in errors
    for path in ("favicon", "apple-touch-icon", "well-known", "robots"):
        assert path not in errors
    snapshot = page.evaluate("fetch('/dashboard/api/snapshot').then(r => r.json())")
    assert "favicon" not in str(snapshot) and "apple-touch" not in str(snapshot)
