"""<tidings-inbox> with the server's filters and the app's categories, in real
Chromium against a real server: a category or tag tab is one filtered request
(full however rare the category), follows live items; the preferences panel
lists the app's declared categories with their labels and descriptions, and
says what "App default" is for each (docs/inbox.md#tabs, #preferences)."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import expect

from tests.browser.inbox_pages import attr, open_plain


def _api(server, method: str, path: str, **kw) -> httpx.Response:
    r = httpx.request(method, server.url + path, timeout=10,
                      headers={"Authorization": f"Bearer {server.api_key}"}, **kw)
    assert r.status_code < 300, r.text
    return r


def _open(context, site, server, user: str, **attrs):
    attrs.setdefault("token", server.token(user))
    page = open_plain(context, site, server,
                      " ".join(attr(k.replace("_", "-"), v) for k, v in attrs.items()))
    return page, page.locator("tidings-inbox")


def _titles(inbox) -> list[str]:
    return inbox.locator("li.item .title").all_inner_texts()


def test_a_rare_category_tab_is_one_full_page_and_follows_live_items(context, site,
                                                                      tidings_server, tmp_path):
    """Three ci items under sixty social ones: the CI tab asks the server for
    them and shows all three at once; the tag tab likewise, a broadcast
    included; live items go to the tabs they match, and only those."""
    srv = tidings_server
    for i in range(3):
        srv.publish({"users": ["lea"]}, title=f"build {i}", category="ci")
    for i in range(60):
        srv.publish({"users": ["lea"]}, title=f"chat {i:02d}", category="social",
                    tags=["mention"] if i == 7 else [])
    srv.publish({"all": True}, title="maintenance", category="ops", tags=["mention"])
    page, inbox = _open(context, site, srv, "lea", page_size=5, tabs=[
        {"label": "All"}, {"label": "CI", "category": "ci"},
        {"label": "Mentions", "tags": ["mention"]}])
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/v1/me/notifications?" in r.url
            else None)
    inbox.locator("button.bell").click()
    expect(inbox.locator("li.item").first).to_be_visible()

    inbox.get_by_role("tab", name="CI").click()
    expect(inbox.locator(".feed")).to_have_attribute("aria-busy", "false")
    expect(inbox.locator("li.item")).to_have_count(3)
    assert _titles(inbox) == ["build 2", "build 1", "build 0"]
    filtered = [u for u in asked if "category=" in u or "tag=" in u]
    assert len(filtered) == 1 and "category=ci" in filtered[0] and "limit=5" in filtered[0], asked
    expect(inbox.locator(".more")).to_be_hidden()   # the server said: nothing more

    inbox.get_by_role("tab", name="Mentions").click()
    expect(inbox.locator("li.item")).to_have_count(2)
    assert _titles(inbox) == ["maintenance", "chat 07"]
    filtered = [u for u in asked if "category=" in u or "tag=" in u]
    assert len(filtered) == 2 and "tag=mention" in filtered[1], asked

    # live: a build goes to CI (and All), a chat to neither filtered tab
    inbox.get_by_role("tab", name="CI").click()
    expect(inbox.locator("li.item")).to_have_count(3)
    srv.publish({"users": ["lea"]}, title="build 3", category="ci")
    srv.publish({"users": ["lea"]}, title="chat live", category="social")
    srv.publish({"users": ["lea"]}, title="pinged", category="social", tags=["mention"])
    expect(inbox.locator("li.item").first.locator(".title")).to_have_text("build 3")
    expect(inbox.locator("li.item")).to_have_count(4)
    page.wait_for_timeout(500)   # what would come has come (and slid in)
    assert "chat live" not in _titles(inbox) and "pinged" not in _titles(inbox)
    page.screenshot(path=str(tmp_path / "tabs.png"))
    inbox.get_by_role("tab", name="Mentions").click()
    expect(inbox.locator("li.item").first.locator(".title")).to_have_text("pinged")
    expect(inbox.locator("li.item")).to_have_count(3)
    inbox.get_by_role("tab", name="All").click()
    expect(inbox.locator("li.item").first.locator(".title")).to_have_text("pinged")


def test_the_preferences_panel_lists_the_apps_categories_and_their_defaults(
        context, site, tidings_server, tmp_path):
    srv = tidings_server
    _api(srv, "PUT", "/v1/categories", json={"categories": [
        {"id": "social", "label": "Replies and mentions",
         "description": "When someone answers you"},
        {"id": "ci", "label": "Builds"},
        {"id": "billing", "label": "Receipts", "description": "Payments and invoices"}]})
    _api(srv, "PUT", "/v1/caps", json={"digests": {
        "social": {"push": {"every": 3600}, "email": {"every": 3600}},
        "billing": {"push": {"daily": "09:00", "tz": "UTC"},
                    "email": {"daily": "09:00", "tz": "UTC"}},
        "ci": {"email": {"every": 600}}}})
    _api(srv, "PUT", "/v1/users/mo/preferences", json={
        "categories": {"promo": {"email": False}},
        "digests": {"social": {"push": {}, "email": {}}}})
    page, inbox = _open(context, site, srv, "mo")   # no `categories` attribute
    inbox.locator("button.bell").click()
    inbox.get_by_role("button", name="Preferences").click()
    rows = inbox.locator("tbody th")
    # the app's, in its order, with their labels; then the user's own
    expect(rows).to_have_text(["Replies and mentionsWhen someone answers you", "Builds",
                               "ReceiptsPayments and invoices", "promo"])
    expect(inbox.locator("tbody th .desc")).to_have_text(["When someone answers you",
                                                          "Payments and invoices"])
    # "App default" says what it is
    def default_of(label: str):
        return inbox.locator("tbody tr", has_text=label).locator(".default")

    expect(default_of("Replies and mentions")).to_have_text("App default: at most hourly")
    expect(default_of("Builds")).to_have_text("App default: per channel")
    expect(default_of("Receipts")).to_have_text(
        re.compile(r"^App default: once a day at 09:00( UTC)?$"))
    expect(default_of("promo")).to_have_text("App default: each one")
    # and a screen reader reads it with the choice
    expect(inbox.get_by_label("Builds: Digest")).to_have_accessible_description(
        "App default: per channel")
    expect(inbox.get_by_label("Replies and mentions: Digest")).to_have_value("each")
    expect(inbox.get_by_label("Receipts: Digest")).to_have_value("")
    expect(inbox.get_by_label("promo: E-mail")).not_to_be_checked()
    page.screenshot(path=str(tmp_path / "preferences.png"))

    # saving writes the app's categories' switches under their ids
    inbox.get_by_label("Builds: Push").uncheck()
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    prefs = _api(srv, "GET", "/v1/users/mo/preferences").json()
    assert prefs["categories"]["ci"] == {"push": False}

    # a string set on the element wins over the app's label; French keeps the app's
    inbox.evaluate("el => { el.strings = { category_ci: 'My builds' }; }")
    inbox.get_by_role("button", name="Back to notifications").click()
    inbox.get_by_role("button", name="Preferences").click()
    expect(rows.nth(1)).to_have_text("My builds")
    inbox.evaluate("el => { el.strings = {}; el.setAttribute('locale', 'fr'); }")
    inbox.get_by_role("button", name="Retour aux notifications").click()
    inbox.get_by_role("button", name="Préférences").click()
    expect(rows.nth(1)).to_have_text("Builds")
    expect(inbox.locator("tbody tr", has_text="Replies and mentions").locator(".default")) \
        .to_have_text("Par défaut : au plus une fois par heure")


def test_the_attribute_still_chooses_the_rows(context, site, tidings_server):
    """A `categories` attribute lists the rows itself; the app's labels and
    defaults still apply to the ones it names without a label."""
    srv = tidings_server
    _api(srv, "PUT", "/v1/categories", json={"categories": [
        {"id": "social", "label": "Replies"}, {"id": "ci", "label": "Builds"}]})
    _, inbox = _open(context, site, srv, "ned",
                     categories=["ci", {"id": "social", "label": "Chat"}, "other"])
    inbox.locator("button.bell").click()
    inbox.get_by_role("button", name="Preferences").click()
    expect(inbox.locator("tbody th")).to_have_text(["Builds", "Chat", "other"])
    expect(inbox.locator("tbody tr", has_text="Builds").locator(".default")).to_have_text(
        "App default: each one")
