"""<tidings-inbox> and snooze in real Chromium against a real server
(docs/inbox.md#snooze): the row's Snooze menu, by mouse and by keyboard, in the
user's local time; a snoozed row leaving every page of the user at once; a row
back from a snooze first and unread, live and after a reload; a Snoozed tab."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
from playwright.sync_api import expect

from tests.browser.inbox_pages import attr, open_plain

ZONE = "America/New_York"   # the browser's, not the machine's: "Tomorrow" is the user's


def _open(context, site, server, user: str, **attrs):
    attrs.setdefault("token", server.token(user))
    page = open_plain(context, site, server,
                      " ".join(attr(k.replace("_", "-"), v) for k, v in attrs.items()))
    return page, page.locator("tidings-inbox")


def _items(server, user: str) -> dict[str, dict]:
    r = httpx.get(server.url + f"/v1/users/{user}/notifications", params={"state": "all"},
                  headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {it["notification"]["title"]: it for it in r.json()["items"]}


def _titles(inbox):
    return inbox.locator("li.item .title")


def test_snooze_from_the_row_menu_by_mouse_and_keyboard_leaves_every_tab(browser, site,
                                                                         tidings_server):
    srv = tidings_server
    for i in range(4):
        srv.publish({"users": ["zoe"]}, title=f"news {i}")
    ctx = browser.new_context(timezone_id=ZONE)
    try:
        a_page, a = _open(ctx, site, srv, "zoe")
        _, b = _open(ctx, site, srv, "zoe")            # a second tab of the same user
        expect(b.locator(".badge")).to_have_text("4")
        a.locator("button.bell").click()
        b.locator("button.bell").click()
        expect(_titles(b)).to_have_text(["news 3", "news 2", "news 1", "news 0"])

        # the mouse: the row's Snooze button opens its menu, "1 hour" snoozes
        row = a.locator("li.item").filter(has_text="news 2")
        row.hover()
        button = row.locator("[data-act=snooze-menu]")
        expect(button).to_have_attribute("aria-label", "Snooze: news 2")
        expect(button).to_have_attribute("aria-haspopup", "menu")
        expect(button).to_have_attribute("aria-expanded", "false")
        button.click()
        menu = row.get_by_role("menu", name="Snooze: news 2")
        expect(menu).to_be_visible()
        expect(button).to_have_attribute("aria-expanded", "true")
        expect(menu.get_by_role("menuitem")).to_have_text(["1 hour", "Tomorrow, 9:00 AM"])
        expect(menu.get_by_role("menuitem").first).to_be_focused()
        clicked = datetime.now(UTC)
        menu.get_by_role("menuitem", name="1 hour").click()
        expect(_titles(a)).to_have_text(["news 3", "news 1", "news 0"])
        expect(_titles(b)).to_have_text(["news 3", "news 1", "news 0"])   # live, elsewhere
        expect(b.locator(".badge")).to_have_text("3")                     # its counts too
        item = _items(srv, "zoe")["news 2"]
        assert item["state"] == "snoozed"
        until = datetime.fromisoformat(item["snoozed_until"])
        assert timedelta(minutes=59) < until - clicked < timedelta(minutes=61)

        # the keyboard: Enter opens it on its first item, arrows move, Escape
        # closes only the menu, ArrowUp on the button opens it on its last item
        row = a.locator("li.item").filter(has_text="news 1")
        button = row.locator("[data-act=snooze-menu]")
        button.focus()
        a_page.keyboard.press("Enter")
        items = row.get_by_role("menuitem")
        expect(items.first).to_be_focused()
        a_page.keyboard.press("ArrowDown")
        expect(items.nth(1)).to_be_focused()
        a_page.keyboard.press("ArrowDown")
        expect(items.first).to_be_focused()                  # round
        a_page.keyboard.press("Escape")
        expect(row.get_by_role("menu")).to_be_hidden()
        expect(button).to_be_focused()
        expect(a.locator("[role=dialog]")).to_be_visible()   # the panel stays open
        a_page.keyboard.press("ArrowUp")
        expect(items.nth(1)).to_be_focused()
        a_page.keyboard.press("Enter")                       # "Tomorrow, 9:00 AM"
        expect(_titles(a)).to_have_text(["news 3", "news 0"])
        expect(_titles(b)).to_have_text(["news 3", "news 0"])
        expect(a.locator(".badge")).to_have_text("2")
        # focus goes to the same button of the row now in its place
        expect(a.locator("li.item").nth(1).locator("[data-act=snooze-menu]")).to_be_focused()
        until = datetime.fromisoformat(_items(srv, "zoe")["news 1"]["snoozed_until"])
        local = until.astimezone(ZoneInfo(ZONE))
        today = datetime.now(ZoneInfo(ZONE)).date()
        assert (local.date(), local.hour, local.minute) == (today + timedelta(days=1), 9, 0)

        # a click elsewhere closes an open menu
        row = a.locator("li.item").first
        row.hover()
        row.locator("[data-act=snooze-menu]").click()
        expect(row.get_by_role("menu")).to_be_visible()
        a.locator("[role=dialog] h2").click()
        expect(row.get_by_role("menu")).to_be_hidden()

        # a tab of snoozed rows says until when; they have no Snooze of their own
        _, c = _open(ctx, site, srv, "zoe", locale="fr", tabs=[
            {"label": "All"}, {"label": "Snoozed", "state": "snoozed"}])
        c.locator("button.bell").click()
        c.get_by_role("tab", name="Snoozed").click()
        expect(_titles(c)).to_have_text(["news 2", "news 1"])
        expect(c.locator("li.item").last.locator("[part~=item-snoozed]")).to_have_text(
            re.compile(r"^Reportée jusqu'au .*09:00"))
        assert c.locator("[data-act=snooze-menu]").count() == 0
        c.get_by_role("tab", name="All").click()
        expect(c.locator("li.item").first.locator("[data-act=snooze-menu]")).to_have_attribute(
            "aria-label", "Reporter: news 3")
    finally:
        ctx.close()


def test_an_open_snooze_menu_survives_its_row_drawn_again(browser, site, tidings_server):
    """The row turns read on another device while its menu is open: the row is
    drawn again and its menu stays open on the same item, and the choice works."""
    srv = tidings_server
    nid = srv.publish({"users": ["kim"]}, title="build failed")
    srv.publish({"users": ["kim"]}, title="build passed")
    ctx = browser.new_context(timezone_id=ZONE)
    try:
        _, a = _open(ctx, site, srv, "kim")
        a.locator("button.bell").click()
        row = a.locator("li.item").filter(has_text="build failed")
        expect(row).to_have_class(re.compile(r"\bseen\b"))      # the panel's own redraw is done
        row.hover()
        row.locator("[data-act=snooze-menu]").click()
        menu = row.get_by_role("menu", name="Snooze: build failed")
        a.page.keyboard.press("ArrowDown")
        expect(menu.get_by_role("menuitem").nth(1)).to_be_focused()
        first = row.element_handle()
        r = httpx.post(srv.url + "/v1/me/notifications/read", json={"ids": [nid]},
                       headers={"Authorization": f"Bearer {srv.token('kim')}"}, timeout=10)
        assert r.status_code == 200, r.text
        expect(row).to_have_class(re.compile(r"\bread\b"))        # drawn again, live
        assert not first.evaluate("li => li.isConnected")          # a new row, not the old one
        expect(menu).to_be_visible()
        expect(row.locator("[data-act=snooze-menu]")).to_have_attribute("aria-expanded", "true")
        expect(menu.get_by_role("menuitem").nth(1)).to_be_focused()
        menu.get_by_role("menuitem", name="1 hour").click()
        expect(_titles(a)).to_have_text(["build passed"])
        assert _items(srv, "kim")["build failed"]["state"] == "snoozed"
    finally:
        ctx.close()


def test_a_snoozed_row_comes_back_first_and_unread_live_and_after_a_reload(browser, site,
                                                                           tidings_server):
    srv = tidings_server
    for i in range(3):
        srv.publish({"users": ["max"]}, title=f"note {i}")
    token = srv.token("max")
    ctx = browser.new_context()
    try:
        a_page, a = _open(ctx, site, srv, "max", token=token)
        _, b = _open(ctx, site, srv, "max", token=token)
        a.locator("button.bell").click()
        b.locator("button.bell").click()
        expect(_titles(a)).to_have_text(["note 2", "note 1", "note 0"])
        oldest = a.locator("li.item").filter(has_text="note 0")
        oldest.locator("[data-act=read]").click()
        expect(oldest).not_to_have_class(re.compile(r"\bunread\b"))
        expect(b.locator(".badge")).to_have_text("2")

        # snoozed elsewhere (the API), for a second or two
        nid = _items(srv, "max")["note 0"]["id"]
        until = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        r = httpx.post(srv.url + "/v1/me/notifications/snooze", json={"ids": [nid], "until": until},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200 and r.json()["changed"] == 1, r.text
        for inbox in (a, b):
            expect(_titles(inbox)).to_have_text(["note 2", "note 1"])
        # then back: first, unread, on both pages, and counted again
        for inbox in (a, b):
            expect(_titles(inbox)).to_have_text(["note 0", "note 2", "note 1"])
            expect(inbox.locator("li.item").first).to_have_class(re.compile(r"\bunread\b"))
            expect(inbox.locator(".badge")).to_have_text("3")
        a.get_by_role("tab", name="Unread").click()
        expect(_titles(a)).to_have_text(["note 0", "note 2", "note 1"])

        # a newer notification goes above it; a reload keeps the server's order
        srv.publish({"users": ["max"]}, title="note 3")
        expect(_titles(b)).to_have_text(["note 3", "note 0", "note 2", "note 1"])
        a_page.reload()
        a.locator("button.bell").click()
        expect(_titles(a)).to_have_text(["note 3", "note 0", "note 2", "note 1"])
    finally:
        ctx.close()


def test_a_page_boundary_after_a_row_back_from_a_snooze(context, site, tidings_server):
    """The last row of a page came back from a snooze: the next page's rows,
    newer by id, still go below it (its place is the page's next_before)."""
    srv = tidings_server
    for i in range(4):
        srv.publish({"users": ["ivy"]}, title=f"item {i}")
    token = srv.token("ivy")
    nid = _items(srv, "ivy")["item 0"]["id"]
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    r = httpx.post(srv.url + "/v1/me/notifications/snooze", json={"ids": [nid], "until": until},
                   headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.json()["changed"] == 1, r.text
    deadline = time.monotonic() + 15
    while _items(srv, "ivy")["item 0"]["state"] == "snoozed":
        assert time.monotonic() < deadline, "it never came back"
        time.sleep(0.1)
    for i in range(4, 6):                               # newer than its return: above it
        srv.publish({"users": ["ivy"]}, title=f"item {i}")
    _, inbox = _open(context, site, srv, "ivy", token=token, page_size=3)
    inbox.locator("button.bell").click()
    expect(_titles(inbox)).to_have_text(["item 5", "item 4", "item 0", "item 3", "item 2",
                                         "item 1"])
