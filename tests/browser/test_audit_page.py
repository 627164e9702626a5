"""The dashboard's audit log page in real Chromium: the changes an admin key
made, newest first, filtered by action, the login the page itself made, and
the app's creation by the server's first start."""

from __future__ import annotations

import os

import httpx
from playwright.sync_api import expect

from tests.browser.test_dashboard import _login


def test_the_audit_page_lists_the_apps_changes(context, tidings_server, tmp_path):
    server = tidings_server
    auth = {"Authorization": f"Bearer {server.api_key}"}
    made = httpx.post(server.url + "/v1/keys", json={"scopes": ["publish"], "name": "ci"},
                      headers=auth).json()
    assert httpx.delete(f"{server.url}/v1/keys/{made['prefix']}", headers=auth).status_code \
        == 204
    assert httpx.put(server.url + "/v1/caps", json={"categories": {
        "promo": {"max": 3, "per": 86400}}}, headers=auth).status_code == 200
    page = context.new_page()
    _login(page, server, server.api_key)
    expect(page).to_have_url(server.url + "/dashboard")
    page.click("text=Audit log")
    expect(page).to_have_url(server.url + "/dashboard/audit")
    rows = page.locator("#records tr")
    expect(rows).to_have_count(5)
    expect(rows.nth(0).locator("td.action")).to_have_text("dashboard.login")
    expect(rows.nth(1).locator("td.action")).to_have_text("caps.update")
    expect(rows.nth(2)).to_contain_text(made["prefix"])
    expect(rows.nth(3)).to_contain_text("name: ci")
    # the first start made the app and its key: the server itself
    expect(rows.nth(4)).to_contain_text("app.create")
    expect(rows.nth(4)).to_contain_text("operator")
    expect(page.locator("#where")).to_have_text("Audit log · app default")
    assert made["api_key"] not in page.content()
    if os.environ.get("TIDINGS_SCREENSHOTS"):
        page.screenshot(path=os.environ["TIDINGS_SCREENSHOTS"], full_page=True)

    page.select_option("#action", "key.revoke")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_contain_text(made["prefix"])
    expect(page).to_have_url(server.url + "/dashboard/audit?action=key.revoke")
    page.reload()
    expect(page.locator("#action")).to_have_value("key.revoke")
    expect(rows).to_have_count(1)
