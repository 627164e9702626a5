"""<tidings-inbox>'s ``locale`` attribute asks the server for that language,
in real Chromium against a real server (docs/inbox.md#languages): the pages,
the live stream and the app's category labels in the preferences panel come
in it, over the user's preferences; without the attribute they follow the
preferences (``<html lang>`` does not count); changed while the element runs,
the pages are read again in the new language, on the same client."""

from __future__ import annotations

import httpx
from playwright.sync_api import expect

from tests.browser.inbox_pages import attr, open_plain

LOCALES = {"fr": {"title": "Bonjour"}, "de": {"title": "Hallo"}}
CATEGORIES = {"categories": [
    {"id": "ci", "label": "Builds", "description": "When a build ends",
     "labels": {"fr": "Compilations", "de": "Bauten"},
     "descriptions": {"fr": "Quand une compilation finit"}}]}


def _api(server, method: str, path: str, **kw) -> httpx.Response:
    r = httpx.request(method, server.url + path, timeout=10,
                      headers={"Authorization": f"Bearer {server.api_key}"}, **kw)
    assert r.status_code < 300, r.text
    return r


def _open(context, site, server, user: str, asked: list[str], **attrs):
    """The element on a page of its own; ``asked`` gathers every URL the page
    asks of the server (the stream's WebSocket included)."""
    attrs.setdefault("token", server.token(user))
    context.on("request", lambda r: asked.append(r.url))
    context.on("page", lambda p: p.on("websocket", lambda ws: asked.append(ws.url)))
    page = open_plain(context, site, server, " ".join(attr(k, v) for k, v in attrs.items()))
    return page, page.locator("tidings-inbox")


def _setup(srv, user: str) -> None:
    _api(srv, "PUT", "/v1/categories", json=CATEGORIES)
    _api(srv, "PATCH", f"/v1/users/{user}/preferences", json={"locale": "de-AT"})
    srv.publish({"users": [user]}, title="Hello", category="ci", locales=LOCALES)


def test_the_locale_attribute_asks_the_server_for_its_language(context, site, tidings_server):
    srv = tidings_server
    _setup(srv, "lou")
    asked: list[str] = []
    page, inbox = _open(context, site, srv, "lou", asked, locale="fr-CA")
    inbox.locator("button.bell").click()
    rows = inbox.locator("li.item .title")
    expect(rows).to_have_text(["Bonjour"])               # the page, in French over German
    srv.publish({"users": ["lou"]}, title="Hello again", category="ci",
                locales={"fr": {"title": "Rebonjour"}, "de": {"title": "Wieder hallo"}})
    expect(rows).to_have_text(["Rebonjour", "Bonjour"])  # the live stream too
    inbox.get_by_role("button", name="Préférences").click()
    expect(inbox.locator("tbody th").first).to_have_text(
        "CompilationsQuand une compilation finit")
    for path in ("/v1/me/notifications?", "/v1/me/categories", "/v1/me/stream"):
        mine = [u for u in asked if path in u]
        assert mine and all("locale=fr-CA" in u for u in mine), (path, asked)

    # changed while it runs: the pages are read again in the new language, same client
    client = inbox.evaluate_handle("e => e.client")
    inbox.evaluate("e => e.setAttribute('locale', 'de')")
    inbox.get_by_role("button", name="Zurück zu den Benachrichtigungen").click()
    expect(rows).to_have_text(["Wieder hallo", "Hallo"])
    assert inbox.evaluate("(e, c) => e.client === c", client)
    inbox.get_by_role("button", name="Einstellungen").click()
    expect(inbox.locator("tbody th").first).to_have_text("BautenWhen a build ends")


def test_without_the_attribute_the_preferences_choose(context, site, tidings_server):
    srv = tidings_server
    _setup(srv, "max")
    asked: list[str] = []
    page, inbox = _open(context, site, srv, "max", asked)   # the page says <html lang="en">
    inbox.locator("button.bell").click()
    expect(inbox.locator("li.item .title")).to_have_text(["Hallo"])
    inbox.get_by_role("button", name="Preferences").click()
    expect(inbox.locator("tbody th").first).to_have_text("BautenWhen a build ends")
    assert not [u for u in asked if "locale=" in u], asked
