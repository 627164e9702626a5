"""The dashboard in real Chromium: login, live numbers, charts, logout (which ends
the session on the server: a copy of its cookie opens nothing afterwards)."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tidings.dashboard.session import COOKIE


def _login(page, server, key: str) -> None:
    page.goto(server.url + "/dashboard")
    expect(page).to_have_url(server.url + "/dashboard/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_the_dashboard_renders_and_its_numbers_move(context, tidings_server):
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page).to_have_url(tidings_server.url + "/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(page.locator("#scope")).to_have_text("All apps")  # the operator app's key
    expect(page.locator("#delivered-total")).to_have_text("0")
    expect(page.locator("#nodes tr")).to_have_count(1)
    expect(page.locator("#nodes")).to_contain_text("(this)")
    assert page.locator(".uplot canvas").count() == 4  # the four charts drew

    # a device opens a stream: the connection count moves
    device = context.new_page()
    device.goto(f"{tidings_server.url}/demo?token={tidings_server.token('zoe')}")
    expect(device.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#connections")).to_have_text("1")
    expect(page.locator("#ws")).to_have_text("1")

    # notifications flow: published, delivered, the per-app row, the topics
    for i in range(5):
        tidings_server.publish({"users": ["zoe"]}, title=f"n{i}")
    tidings_server.publish({"topic": "guild:7"}, title="to a topic")
    expect(page.locator("#published-total")).to_have_text("6")
    expect(page.locator("#delivered-total")).to_have_text("5")
    expect(page.locator("#p99")).to_have_text(re.compile(r"^\d+(\.\d)?$"))
    expect(page.locator("#apps tr").first).to_contain_text("default")
    expect(page.locator("#topics")).to_contain_text("guild:7")

    # an error shows up in the recent errors
    r = context.request.get(tidings_server.url + "/v1/me/counts",
                            headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    expect(page.locator("#errors")).to_contain_text("bad_token")

    # the session cookie is not readable from the page
    assert page.evaluate("document.cookie") == ""
    assert any(c["name"] == COOKIE and c["httpOnly"] and c["sameSite"] == "Strict"
               for c in context.cookies())

    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))
    page.goto(tidings_server.url + "/dashboard")
    expect(page).to_have_url(tidings_server.url + "/dashboard/login")


def test_wrong_and_non_admin_keys_stay_on_the_login_form(context, tidings_server):
    page = context.new_page()
    _login(page, tidings_server, "tk_00000000_wrong")
    expect(page.locator(".note")).to_contain_text("not valid")
    expect(page.locator("#key")).to_be_visible()

    publisher = tidings_server.create_key({"publish", "read"})
    page.fill("#key", publisher)
    page.click("button[type=submit]")
    expect(page.locator(".note")).to_contain_text("lacks the 'admin' scope")
    assert not [c for c in context.cookies() if c["name"] == COOKIE]
    r = context.request.get(tidings_server.url + "/dashboard/api/snapshot")
    assert r.status == 401


def test_an_expired_session_goes_back_to_the_login(context, tidings_server):
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    # the cookie is replaced by a forged one: the page's next request is refused
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    context.add_cookies([{**cookie, "value": cookie["value"][:-4] + "AAAA"}])
    page.reload()
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=expired$"))
    expect(page.locator(".note")).to_contain_text("session ended")


def test_log_out_ends_the_session_on_the_server(context, tidings_server):
    url = tidings_server.url
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    copied = next(c for c in context.cookies() if c["name"] == COOKIE)  # before the logout

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))
    expect(page.locator(".note")).to_have_text("Logged out.")
    expect(page.locator("#key")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == COOKIE]
    page.go_back()  # the dashboard again: it asks to log in
    expect(page).to_have_url(re.compile(r"/dashboard/login"))
    page.goto(url + "/dashboard")
    expect(page).to_have_url(url + "/dashboard/login")

    # the cookie's value, kept from before the logout, no longer opens anything
    context.add_cookies([copied])
    page.goto(url + "/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))
    assert not [c for c in context.cookies() if c["name"] == COOKIE]  # dropped again
    r = context.request.get(url + "/dashboard/api/snapshot",
                            headers={"Cookie": f"{COOKIE}={copied['value']}"})
    assert r.status == 401 and r.json()["error"]["code"] == "session_ended"

    # logging in again opens a new session
    page.fill("#key", tidings_server.api_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(url + "/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
