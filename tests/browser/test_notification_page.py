"""The dashboard's notification page in real Chromium: search by id, pick a
recipient, the timeline drawn from a real device's receipts and state changes."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from playwright.sync_api import expect

from tests.browser.test_dashboard import _login

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _wait_for_event(server, nid: str, user: str, event: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = httpx.get(f"{server.url}/v1/notifications/{nid}/timeline", params={"user": user},
                      headers={"Authorization": f"Bearer {server.api_key}"})
        if event in [e["event"] for e in r.json()["events"]]:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event} event for {user}")


def test_search_a_notification_and_draw_a_users_timeline(context, tidings_server):
    server = tidings_server
    zoe = server.token("zoe")
    device = context.new_page()
    device.goto(f"{server.url}/demo?token={zoe}")
    expect(device.locator("#status")).to_have_attribute("data-state", "live")
    nid = server.publish({"users": ["zoe", "amy"]}, title="Build 1432 failed",
                         category="ci")
    expect(device.locator("#list")).to_contain_text("Build 1432 failed")
    # tidings.js acknowledges what arrived (delivered) by itself; the inbox
    # element reports displayed: here the device posts it as the element does
    headers = {"Authorization": f"Bearer {zoe}"}
    _wait_for_event(server, nid, "zoe", "delivered")  # tidings.js batches it, a second apart
    r = httpx.post(server.url + "/v1/me/receipts", json={"displayed": [nid]}, headers=headers)
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
    page.locator("#recipients .chip", has_text="zoe").click()
    expect(page.locator("#tl-user")).to_have_text("zoe")
    events = page.locator("#events tr td:nth-child(3)")
    expect(events).to_contain_text(["Accepted", "Committed", "Delivered to a device", "Displayed",
                                    "Seen", "Read"])
    expect(page.locator("#track .mark")).to_have_count(events.count())
    assert f"id={nid}" in page.url and "user=zoe" in page.url  # a link to this view
    page.set_viewport_size({"width": 1280, "height": 760})
    page.screenshot(path=str(DOCS / "dashboard-timeline.png"), full_page=True)

    # amy got it and did nothing yet: accepted and committed only
    page.locator("#recipients .chip", has_text="amy").click()
    expect(page.locator("#tl-user")).to_have_text("amy")
    expect(page.locator("#events tr")).to_have_count(2)
    # a user id that is not one is a clear message, not a broken page
    page.fill("#user", "x" * 200)
    page.click("#search button[type=submit]")
    expect(page.locator("#message")).to_contain_text("user id must be")
