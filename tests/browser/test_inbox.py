"""<tidings-inbox> in real Chromium against a real server: the bell, the feed,
groups, live arrival, click-to-open, read / archive / mark all, tabs, infinite
scroll, updated / deleted in place, the empty, offline and expired states, the
preferences panel, the keyboard, locales, and the element inside React and Vue."""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import expect

from tests.browser.inbox_pages import attr, open_plain, open_react, open_vue


def _api(server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.url + path, timeout=10,
                         headers={"Authorization": f"Bearer {server.api_key}"}, **kw)


def _states(server, user: str) -> dict[str, str]:
    r = _api(server, "GET", f"/v1/users/{user}/notifications", params={"state": "all"})
    assert r.status_code == 200, r.text
    return {it["notification"]["title"]: it["state"] for it in r.json()["items"]}


def _wait_for(check, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.1)


def _open(context, site, server, user: str, **attrs):
    attrs.setdefault("token", server.token(user))
    page = open_plain(context, site, server,
                      " ".join(attr(k.replace("_", "-"), v) for k, v in attrs.items()))
    return page, page.locator("tidings-inbox")


def _rows(inbox):
    return inbox.locator("li.item")


def test_bell_feed_groups_live_arrival_and_click_to_open(context, site, tidings_server):
    srv = tidings_server
    srv.publish({"users": ["ana"]}, title="Your order shipped", category="orders",
                url="https://shop.example/orders/4471")
    srv.publish({"users": ["ana"]}, title="<img src=x onerror=alert(1)>")
    for who in ["user_1", "user_2", "user_3"]:
        srv.publish({"users": ["ana"]}, title=f"{who} liked your post", actor=who,
                    group_key="post:7:likes", category="social")
    page, inbox = _open(context, site, srv, "ana")
    assert page.url.startswith(site.origin) and site.origin != srv.url   # across origins
    bell = inbox.locator("button.bell")
    expect(inbox.locator(".badge")).to_have_text("3")   # the group entry counts once
    expect(bell).to_have_attribute("aria-label", "Notifications, 3 unread")
    expect(bell).to_have_attribute("aria-expanded", "false")

    bell.click()
    panel = inbox.locator("[role=dialog]")
    expect(panel).to_be_visible()
    expect(bell).to_have_attribute("aria-expanded", "true")
    expect(_rows(inbox)).to_have_count(3)
    titles = _rows(inbox).locator(".title")
    expect(titles).to_have_text(["user_3 liked your post", "<img src=x onerror=alert(1)>",
                                 "Your order shipped"])   # newest first
    expect(_rows(inbox).first.locator(".group")).to_have_text("user_3 and 2 others")
    assert inbox.locator("img").count() == 0                # a title is text, never markup
    assert _rows(inbox).nth(1).locator(".main").evaluate("e => e.tagName") == "BUTTON"  # no url
    assert _rows(inbox).nth(2).locator(".main").get_attribute("href") == \
        "https://shop.example/orders/4471"
    expect(_rows(inbox).first.locator("time")).to_have_text("just now")

    srv.publish({"users": ["ana"]}, title="Live one", body="arrived while open")
    expect(titles.first).to_have_text("Live one")
    expect(_rows(inbox).first).to_have_class(re.compile(r"\bunread\b"))
    expect(inbox.locator(".badge")).to_have_text("4")

    # another like updates the group row in place: still one row, newest member
    srv.publish({"users": ["ana"]}, title="user_4 liked your post", actor="user_4",
                group_key="post:7:likes", category="social")
    expect(titles.first).to_have_text("user_4 liked your post")
    expect(_rows(inbox).first.locator(".group")).to_have_text("user_4 and 3 others")
    expect(_rows(inbox)).to_have_count(4)
    expect(inbox.locator(".badge")).to_have_text("4")

    # rows on screen are marked seen; reading them is the user's click
    _wait_for(lambda: _states(srv, "ana")["Live one"] == "seen")
    page.route("https://shop.example/**",
               lambda r: r.fulfill(body="<h1 id=landed>order 4471</h1>", content_type="text/html"))
    _rows(inbox).filter(has_text="Your order shipped").locator(".main").click()
    expect(page.locator("#landed")).to_have_text("order 4471")   # the url, opened
    assert _states(srv, "ana")["Your order shipped"] == "read"    # and marked read


def test_receipts_delivered_on_both_transports_and_displayed_on_screen(browser, site,
                                                                        tidings_server):
    srv = tidings_server
    # kim has two browsers (WebSocket, and SSE on a laptop), lee one (SSE)
    ws_ctx, laptop_ctx, sse_ctx = (browser.new_context() for _ in range(3))

    def receipts(nid):
        r = _api(srv, "GET", f"/v1/notifications/{nid}")
        in_app = r.json()["delivery"]["in_app"]
        return in_app["acknowledged"], in_app["displayed"]

    def events(nid, user, kind):
        r = _api(srv, "GET", f"/v1/notifications/{nid}/timeline", params={"user": user})
        return [e for e in r.json()["events"] if e["event"] == kind]

    try:
        kim_page, kim = _open(ws_ctx, site, srv, "kim")
        laptop_page, laptop = _open(laptop_ctx, site, srv, "kim", transport="sse")
        _, lee = _open(sse_ctx, site, srv, "lee", transport="sse")
        for inbox in (kim, laptop, lee):
            expect(inbox.locator("[part~=state-empty]")).to_be_attached()   # live, loaded
        nid = srv.publish({"users": ["kim", "lee", "max"]}, title="Receipts")
        for inbox in (kim, laptop, lee):
            expect(inbox.locator(".badge")).to_have_text("1")
        # unique users: kim's two browsers are one
        _wait_for(lambda: receipts(nid) == (2, 0) and len(events(nid, "kim", "delivered")) == 2)
        # the timeline has each of kim's browsers, by the id tidings.js keeps in localStorage
        kept = [p.evaluate("localStorage.getItem('tidings.device')") for p in (kim_page,
                                                                              laptop_page)]
        delivered = events(nid, "kim", "delivered")
        assert sorted(e["device"] for e in delivered) == sorted(kept) and kept[0] != kept[1]
        assert {e["label"] for e in delivered} == {"Chrome on Linux"}
        kim.locator("button.bell").click()            # on kim's screen now
        expect(_rows(kim)).to_have_count(1)
        _wait_for(lambda: receipts(nid) == (2, 1))
        assert [e["device"] for e in events(nid, "kim", "displayed")] == kept[:1]
        lee.locator("button.bell").click()
        _wait_for(lambda: receipts(nid) == (2, 2))
        kim.locator("button.bell").click()            # closed and opened again: still once
        kim.locator("button.bell").click()
        expect(_rows(kim)).to_have_count(1)
        later = srv.publish({"users": ["kim"]}, title="Later")
        _wait_for(lambda: receipts(later) == (1, 1))  # kim's batches after the reopening...
        assert receipts(nid) == (2, 2)                 # ...said nothing more about the first
        assert len(events(nid, "kim", "displayed")) == 1
    finally:
        for ctx in (ws_ctx, laptop_ctx, sse_ctx):
            ctx.close()


def test_mark_read_archive_tabs_and_mark_all_follow_other_devices(browser, site, tidings_server):
    srv = tidings_server
    for i in range(3):
        srv.publish({"users": ["bo"]}, title=f"news {i}")
    phone, laptop = browser.new_context(), browser.new_context()
    try:
        a_page, a = _open(phone, site, srv, "bo")
        _, b = _open(laptop, site, srv, "bo")
        expect(b.locator(".badge")).to_have_text("3")
        a.locator("button.bell").click()
        row = _rows(a).filter(has_text="news 1")
        row.locator("[data-act=read]").click()
        expect(row).not_to_have_class(re.compile(r"\bunread\b"))
        expect(a.locator(".badge")).to_have_text("2")
        expect(b.locator(".badge")).to_have_text("2")            # the laptop follows, live

        _rows(a).filter(has_text="news 2").locator("[data-act=archive]").click()
        expect(_rows(a)).to_have_count(2)
        expect(b.locator(".badge")).to_have_text("1")
        a.get_by_role("tab", name="Archived").click()
        expect(a.get_by_role("tab", name="Archived")).to_have_attribute("aria-selected", "true")
        expect(_rows(a).locator(".title")).to_have_text(["news 2"])
        a.get_by_role("tab", name="Unread").click()
        expect(_rows(a).locator(".title")).to_have_text(["news 0"])

        a.locator("[part~=mark-all]").click()
        expect(a.locator(".badge")).to_be_hidden()
        expect(b.locator(".badge")).to_be_hidden()
        expect(a.locator(".state")).to_have_text("No unread notifications.")
        expect(a.locator("[part~=mark-all]")).to_be_disabled()
        assert _states(srv, "bo") == {"news 0": "read", "news 1": "read", "news 2": "archived"}
        assert a_page.title() == "Acme"
    finally:
        phone.close()
        laptop.close()


def test_infinite_scroll_and_a_tab_filtered_by_category(context, site, tidings_server):
    srv = tidings_server
    for i in range(45):
        srv.publish({"users": ["cy"]}, title=f"item {i:02d}",
                    category="ci" if i % 3 == 0 else "social")
    _, inbox = _open(context, site, srv, "cy", page_size=10, tabs=[
        {"label": "Everything"}, {"label": "CI", "category": "ci"}])
    inbox.locator("button.bell").click()
    scroller = inbox.locator(".scroller")
    seen = []
    for _ in range(10):       # scroll to the end, page after page
        expect(inbox.locator(".feed")).to_have_attribute("aria-busy", "false")
        seen.append(_rows(inbox).count())
        if seen[-1] == 45:
            break
        scroller.evaluate("s => s.scrollTop = s.scrollHeight")
        expect(_rows(inbox)).not_to_have_count(seen[-1])
    assert seen[0] >= 10 and len(seen) > 2, seen   # it came in pages
    titles = _rows(inbox).locator(".title").all_inner_texts()
    assert titles == [f"item {i:02d}" for i in reversed(range(45))]   # newest first, each once
    expect(inbox.locator(".more")).to_be_hidden()                     # the end

    inbox.get_by_role("tab", name="CI").click()
    expect(inbox.locator(".feed")).to_have_attribute("aria-busy", "false")
    assert _rows(inbox).count() >= 10   # a page's worth of matches, read page by page
    scroller.evaluate("s => s.scrollTop = s.scrollHeight")
    expect(_rows(inbox)).to_have_count(15)
    assert _rows(inbox).locator(".title").all_inner_texts() == [
        f"item {i:02d}" for i in reversed(range(45)) if i % 3 == 0]


def test_a_reconnect_while_the_next_page_loads_leaves_infinite_scroll_working(context, site,
                                                                              tidings_server):
    """A reconnect reloads the tab's first page while its next page is still
    on its way: that answer, come last, is for the old list and is dropped,
    and the feed is not left busy, so scrolling goes on loading pages."""
    srv = tidings_server
    for i in range(25):
        srv.publish({"users": ["cal"]}, title=f"item {i:02d}")
    sockets = []   # the server's side of each of the page's WebSockets
    context.route_web_socket(re.compile(r"/v1/me/stream"),
                             lambda ws: sockets.append(ws.connect_to_server()))
    held = []      # next-page requests, kept from the server until released
    released = []  # set once they are: later ones go straight through

    def hold(route):   # every one: under load a page may be asked for before the scroll
        if released:
            route.continue_()
        else:
            held.append(route)
    context.route(re.compile(r"/v1/me/notifications\?.*before="), hold)
    page, inbox = _open(context, site, srv, "cal", page_size=10)
    inbox.locator("button.bell").click()
    feed, scroller = inbox.locator(".feed"), inbox.locator(".scroller")
    expect(_rows(inbox)).to_have_count(10)
    scroller.evaluate("s => s.scrollTop = s.scrollHeight")   # the next page: held
    expect(inbox.locator(".more")).to_have_text("Loading older notifications…")
    deadline = time.monotonic() + 15
    while not held:                        # Playwright calls hold inside its own calls
        assert time.monotonic() < deadline, "no next page was asked for"
        page.wait_for_timeout(50)
    expect(feed).to_have_attribute("aria-busy", "true")

    page.evaluate("""() => {
      window.reloads = [];
      document.querySelector("tidings-inbox").client.on("inbox", (p) => reloads.push(p.reason));
    }""")
    sockets[0].close()                     # the server drops the stream: the client reconnects
    page.wait_for_function("reloads.length > 0")   # and the tab reloads its first page
    released.append(True)                  # the old next page's answer comes after
    for route in held:
        route.continue_()
    expect(feed).to_have_attribute("aria-busy", "false")
    scroller.evaluate("s => s.scrollTop = s.scrollHeight")
    expect(_rows(inbox)).to_have_count(25)
    expect(feed).to_have_attribute("aria-busy", "false")
    expect(inbox.locator(".more")).to_be_hidden()                     # the end
    assert _rows(inbox).locator(".title").all_inner_texts() == [
        f"item {i:02d}" for i in reversed(range(25))]                 # newest first, each once
    assert len(sockets) == 2


def test_a_first_page_that_failed_leaves_the_feed_not_busy(context, site, tidings_server):
    """The feed is busy while a page is on its way, not after its request
    failed: it shows the error and Try again, and is busy again for the retry."""
    srv = tidings_server
    srv.publish({"users": ["dom"]}, title="Hello")
    failed, down = [], [True]

    def answer(route):   # the inbox pages fail while down
        if not down[0]:
            return route.continue_()
        failed.append(route.request.url)
        route.fulfill(status=503, json={"error": {"code": "unavailable", "message": "down"}})
    context.route(re.compile(r"/v1/me/notifications\?"), answer)
    _, inbox = _open(context, site, srv, "dom")
    inbox.locator("button.bell").click()
    feed = inbox.locator(".feed")
    expect(inbox.locator("[part~=state-error]")).to_contain_text("Couldn't load notifications.")
    expect(feed).to_have_attribute("aria-busy", "false")
    assert failed
    down[0] = False
    inbox.get_by_role("button", name="Try again").click()
    expect(_rows(inbox).locator(".title")).to_have_text(["Hello"])
    expect(feed).to_have_attribute("aria-busy", "false")


def test_updated_and_deleted_apply_in_place_over_sse(context, site, tidings_server):
    srv = tidings_server
    first = srv.publish({"users": ["di"]}, title="Meeting at 10:00")
    second = srv.publish({"users": ["di"]}, title="Lunch?")
    _, inbox = _open(context, site, srv, "di", transport="sse")   # SSE across origins
    inbox.locator("button.bell").click()
    expect(_rows(inbox)).to_have_count(2)
    assert inbox.evaluate("e => e.client.status") == "live"
    assert _api(srv, "PATCH", f"/v1/notifications/{first}",
                json={"title": "Meeting moved to 11:00"}).status_code == 200
    expect(_rows(inbox).locator(".title")).to_have_text(["Lunch?", "Meeting moved to 11:00"])
    assert _api(srv, "DELETE", f"/v1/notifications/{second}").status_code in (200, 204)
    expect(_rows(inbox).locator(".title")).to_have_text(["Meeting moved to 11:00"])
    srv.publish({"users": ["di"]}, title="over SSE")
    expect(_rows(inbox).locator(".title")).to_have_text(["over SSE", "Meeting moved to 11:00"])


def test_a_group_entry_follows_its_retracted_members_live(context, site, tidings_server,
                                                           tmp_path):
    srv = tidings_server
    srv.publish({"users": ["gus"]}, title="Welcome")
    likes = [srv.publish({"users": ["gus"]}, title=f"{who} liked your post", actor=who,
                         group_key="post:9:likes", category="social")
             for who in ("user_1", "user_2", "user_3")]
    page, inbox = _open(context, site, srv, "gus")   # WebSocket
    inbox.locator("button.bell").click()
    titles, group = _rows(inbox).locator(".title"), _rows(inbox).first.locator(".group")
    expect(titles).to_have_text(["user_3 liked your post", "Welcome"])
    expect(group).to_have_text("user_3 and 2 others")
    expect(inbox.locator(".badge")).to_have_text("2")
    assert inbox.evaluate("e => e.client.status") == "live"
    pages: list[str] = []   # inbox pages asked for from now on: there must be none
    page.on("request", lambda r: pages.append(r.url) if "/v1/me/notifications?" in r.url
            else None)

    def server_titles() -> list[str]:
        items = _api(srv, "GET", "/v1/users/gus/notifications").json()["items"]
        return [it["notification"]["title"] for it in items]

    # the member the entry shows: it shows the next newest, one fewer, where it was
    assert _api(srv, "DELETE", f"/v1/notifications/{likes[2]}").status_code == 200
    expect(titles).to_have_text(["user_2 liked your post", "Welcome"])
    expect(group).to_have_text("user_2 and user_1")
    assert titles.all_inner_texts() == server_titles()
    page.screenshot(path=str(tmp_path / "group-retracted.png"))
    # an older member: the same title, and no count for one alone
    assert _api(srv, "DELETE", f"/v1/notifications/{likes[0]}").status_code == 200
    expect(group).to_have_count(0)
    expect(titles).to_have_text(["user_2 liked your post", "Welcome"])
    # the last one: the entry goes, and the badge with it
    assert _api(srv, "DELETE", f"/v1/notifications/{likes[1]}").status_code == 200
    expect(titles).to_have_text(["Welcome"])
    expect(inbox.locator(".badge")).to_have_text("1")
    assert titles.all_inner_texts() == server_titles()
    assert pages == []   # all of it from the live events, without a reload


def test_empty_offline_and_expired_states(browser, context, site, tidings_server):
    srv = tidings_server
    page, inbox = _open(context, site, srv, "eve")
    inbox.locator("button.bell").click()
    expect(inbox.locator("[part~=state-empty]")).to_have_text("You're all caught up.")
    expect(inbox.locator("[part~=notice]")).to_be_hidden()

    srv.stop()
    notice = inbox.locator("[part~=notice-offline]")
    expect(notice).to_contain_text("You're offline")
    srv.start()
    expect(notice).to_be_hidden(timeout=40_000)
    srv.publish({"users": ["eve"]}, title="back online")
    expect(_rows(inbox).locator(".title")).to_have_text(["back online"])

    other = browser.new_context()
    try:
        _, bad = _open(other, site, srv, "eve", token=srv.token("eve", ttl=-60))
        bad.locator("button.bell").click()
        expect(bad.locator("[part~=notice-error]")).to_contain_text("Your session has ended")
        expect(bad.locator(".feed")).to_have_attribute("aria-busy", "false")   # nothing loads
        bad.evaluate("(e, t) => { e.getToken = () => t }", srv.token("eve"))   # a fresh one
        expect(bad.locator("[part~=notice-error]")).to_be_hidden()
        expect(_rows(bad).locator(".title")).to_have_text(["back online"])
    finally:
        other.close()


def test_preferences_panel_saves_toggles_and_quiet_hours(context, site, tidings_server):
    srv = tidings_server
    digests = {"promo": {"email": {"every": 3600}}}   # a category the panel does not show
    assert _api(srv, "PUT", "/v1/users/fay/preferences",
                json={"categories": {"billing": {"push": False}},
                      "digests": digests}).status_code == 200
    _, inbox = _open(context, site, srv, "fay",
                     categories=["social", {"id": "ci", "label": "Builds"}])
    inbox.locator("button.bell").click()
    inbox.get_by_role("button", name="Preferences").click()
    expect(inbox.locator("h2")).to_have_text("Preferences")
    expect(inbox.locator("tbody th")).to_have_text(["social", "Builds", "billing"])
    expect(inbox.get_by_label("billing: Push")).not_to_be_checked()
    inbox.get_by_label("social: E-mail").uncheck()
    inbox.get_by_label("Hold push and e-mail during quiet hours").check()
    inbox.locator("input[name=start]").fill("21:30")
    inbox.locator("input[name=end]").fill("06:45")
    inbox.locator("input[name=tz]").fill("Europe/Paris")
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    prefs = _api(srv, "GET", "/v1/users/fay/preferences").json()
    assert prefs == {"categories": {"billing": {"push": False}, "social": {"email": False}},
                     "quiet_hours": {"start": "21:30", "end": "06:45", "tz": "Europe/Paris"},
                     "digests": digests}   # what the panel does not change is kept

    inbox.locator("input[name=tz]").fill("Mars/Olympus")      # the server's 400, shown
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_contain_text("That didn't work")
    inbox.get_by_role("button", name="Back to notifications").click()
    expect(inbox.locator("h2")).to_have_text("Notifications")


def test_preferences_panel_shows_every_other_category_last(context, site, tidings_server):
    """After an unsubscribe link for every category the preferences hold
    "*": the panel shows it last as "All other categories", with its outbound
    switches only (no in-app one, no digest), and saving keeps it."""
    srv = tidings_server
    assert _api(srv, "PUT", "/v1/users/kai/preferences", json={"categories": {
        "*": {"email": False}, "billing": {"email": False}}}).status_code == 200
    _, inbox = _open(context, site, srv, "kai", categories=["social"])
    inbox.locator("button.bell").click()
    inbox.get_by_role("button", name="Preferences").click()
    expect(inbox.locator("tbody th")).to_have_text(["social", "billing", "All other categories"])
    every = inbox.locator("tbody tr").last
    expect(every.locator("input[type=checkbox]")).to_have_count(2)   # push, e-mail
    expect(every.locator("select")).to_have_count(0)
    expect(inbox.get_by_label("All other categories: E-mail")).not_to_be_checked()
    inbox.get_by_label("All other categories: Push").uncheck()
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    prefs = _api(srv, "GET", "/v1/users/kai/preferences").json()
    assert prefs["categories"] == {"*": {"push": False, "email": False},
                                   "billing": {"email": False}}


def test_preferences_panel_keeps_changes_made_while_it_was_open(context, site, tidings_server):
    """The panel saves what the user changed in it, not the document it
    loaded: an unsubscribe link followed (or another device's change) while
    it is open stays; a category the preferences do not name shows the
    switches of "*" it follows, and saving the panel does not name it."""
    srv = tidings_server
    assert _api(srv, "PUT", "/v1/users/lea/preferences",
                json={"categories": {"*": {"email": False}}}).status_code == 200
    _, inbox = _open(context, site, srv, "lea", categories=["social", "billing"])
    inbox.locator("button.bell").click()
    inbox.get_by_role("button", name="Preferences").click()
    expect(inbox.get_by_label("social: E-mail")).not_to_be_checked()   # follows "*"
    expect(inbox.get_by_label("social: Push")).to_be_checked()
    # meanwhile, elsewhere: billing's push off (an e-mail's link, another device)
    assert _api(srv, "PATCH", "/v1/users/lea/preferences",
                json={"categories": {"billing": {"push": False}}}).status_code == 200
    inbox.get_by_label("social: Push").uncheck()
    inbox.get_by_label("Hold push and e-mail during quiet hours").check()
    inbox.locator("input[name=tz]").fill("UTC")
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    prefs = _api(srv, "GET", "/v1/users/lea/preferences").json()
    assert prefs["categories"] == {"*": {"email": False},
                                   "billing": {"push": False, "email": False},
                                   "social": {"push": False, "email": False}}
    assert prefs["quiet_hours"] == {"start": "22:00", "end": "07:00", "tz": "UTC"}
    # a second save with nothing changed writes nothing new
    assert _api(srv, "PATCH", "/v1/users/lea/preferences",
                json={"categories": {"social": {"email": True}}}).status_code == 200
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    assert _api(srv, "GET", "/v1/users/lea/preferences").json()["categories"]["social"] == {
        "push": False}


def test_preferences_panel_sets_digests_and_keeps_the_others(context, site, tidings_server):
    srv = tidings_server
    assert _api(srv, "PUT", "/v1/users/ivy/preferences", json={"digests": {
        "social": {"push": {"every": 600}, "email": {"every": 600}},
        "billing": {"webhook": {"every": 3600}}}}).status_code == 200
    _, inbox = _open(context, site, srv, "ivy", categories=["social", "builds"])
    inbox.locator("button.bell").click()
    inbox.get_by_role("button", name="Preferences").click()
    social = inbox.get_by_label("social: Digest")
    expect(social).to_have_value("every:600")               # set through the API, kept
    expect(social.locator("option:checked")).to_have_text("At most every 10 min")
    expect(inbox.get_by_label("builds: Digest")).to_have_value("")
    inbox.get_by_label("builds: Digest").select_option(label="Once a day")
    inbox.locator("input[name=digestAt]").fill("08:30")
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    prefs = _api(srv, "GET", "/v1/users/ivy/preferences").json()
    zone = prefs["digests"]["builds"]["email"]["tz"]
    assert prefs["digests"] == {
        "social": {"push": {"every": 600}, "email": {"every": 600}},
        "billing": {"webhook": {"every": 3600}},            # a channel the panel does not show
        "builds": {"push": {"daily": "08:30", "tz": zone}, "email": {"daily": "08:30", "tz": zone}},
    }
    social.select_option(label="Each one")
    inbox.get_by_label("builds: Digest").select_option(label="App default")
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    prefs = _api(srv, "GET", "/v1/users/ivy/preferences").json()
    assert prefs["digests"] == {"social": {"push": {}, "email": {}},
                                "billing": {"webhook": {"every": 3600}}}
    # the last rules off: none left
    assert _api(srv, "PUT", "/v1/users/ivy/preferences", json={"digests": {
        "social": {"push": {"every": 600}, "email": {"every": 600}}}}).status_code == 200
    inbox.get_by_role("button", name="Back to notifications").click()
    inbox.get_by_role("button", name="Preferences").click()
    expect(social).to_have_value("every:600")
    social.select_option(label="App default")
    inbox.get_by_role("button", name="Save").click()
    expect(inbox.locator(".saved")).to_have_text("Saved.")
    assert _api(srv, "GET", "/v1/users/ivy/preferences").json().get("digests", {}) == {}


def test_keyboard_focus_trap_and_escape(context, site, tidings_server):
    srv = tidings_server
    for i in range(3):
        srv.publish({"users": ["gus"]}, title=f"note {i}")
    page, inbox = _open(context, site, srv, "gus")
    expect(inbox.locator(".badge")).to_have_text("3")
    inbox.locator("button.bell").focus()
    page.keyboard.press("Enter")
    tab_all = inbox.get_by_role("tab", name="All")
    expect(tab_all).to_be_focused()                      # focus moves into the dialog
    page.keyboard.press("ArrowRight")
    expect(inbox.get_by_role("tab", name="Unread")).to_be_focused()
    expect(inbox.get_by_role("tab", name="Unread")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowLeft")
    expect(tab_all).to_have_attribute("aria-selected", "true")
    expect(_rows(inbox)).to_have_count(3)

    inside = "e => e.shadowRoot.querySelector('[role=dialog]').contains(e.shadowRoot.activeElement)"
    for _ in range(14):                                  # more stops than the dialog has
        page.keyboard.press("Tab")
        assert inbox.evaluate(inside), "focus left the dialog"
    for _ in range(5):
        page.keyboard.press("Shift+Tab")
        assert inbox.evaluate(inside), "focus left the dialog"

    _rows(inbox).first.locator(".main").focus()
    page.keyboard.press("ArrowDown")
    expect(_rows(inbox).nth(1).locator(".main")).to_be_focused()
    page.keyboard.press("End")
    expect(_rows(inbox).nth(2).locator(".main")).to_be_focused()
    page.keyboard.press("Enter")                         # no url: opens = marks read
    expect(inbox.locator(".badge")).to_have_text("2")
    expect(_rows(inbox).nth(2).locator(".main")).to_be_focused()   # kept across the redraw

    page.keyboard.press("Escape")
    expect(inbox.locator("[role=dialog]")).to_be_hidden()
    expect(inbox.locator("button.bell")).to_be_focused()
    inbox.locator("button.bell").click()
    page.mouse.click(20, 400)                            # a click outside closes it
    expect(inbox.locator("[role=dialog]")).to_be_hidden()


def test_locales_and_overridden_strings(context, site, tidings_server):
    srv = tidings_server
    srv.publish({"users": ["hal"]}, title="Bonjour")
    page, inbox = _open(context, site, srv, "hal", locale="fr")
    inbox.locator("button.bell").click()
    expect(inbox.get_by_role("tab")).to_have_text(["Toutes", "Non lues", "Archivées"])
    expect(inbox.locator("[part~=mark-all]")).to_have_text("Tout marquer comme lu")
    expect(inbox.locator("time")).to_have_text("à l'instant")
    expect(inbox.locator("button.bell")).to_have_attribute("aria-label",
                                                           "Notifications, 1 non lue")
    inbox.evaluate("e => e.setAttribute('locale', 'de')")
    expect(inbox.get_by_role("tab")).to_have_text(["Alle", "Ungelesen", "Archiviert"])
    expect(inbox.locator("[data-act=read]")).to_have_attribute(
        "aria-label", "Als gelesen markieren: Bonjour")
    inbox.evaluate("e => { e.strings = { tabAll: 'Alles da', markAllRead: 'Gelesen' } }")
    expect(inbox.get_by_role("tab").first).to_have_text("Alles da")
    expect(inbox.locator("[part~=mark-all]")).to_have_text("Gelesen")


def test_the_element_inside_a_react_page(context, site, tidings_server):
    srv = tidings_server
    srv.publish({"users": ["ivy"]}, title="Welcome", url="https://app.example/welcome")
    page = open_react(context, site, srv, srv.token("ivy"))
    inbox = page.locator("tidings-inbox")
    expect(inbox.locator(".badge")).to_have_text("1")    # getToken, set by React through a ref
    client = inbox.evaluate_handle("e => e.client")
    srv.publish({"users": ["ivy"]}, title="Second")
    expect(inbox.locator(".badge")).to_have_text("2")
    inbox.locator("button.bell").click()
    _rows(inbox).filter(has_text="Welcome").locator(".main").click()
    expect(page.locator("#opened")).to_have_text("opened: Welcome")   # React routed it
    expect(inbox.locator(".badge")).to_have_text("1")
    expect(inbox.locator("[role=dialog]")).to_be_hidden()   # opening an item closes the panel

    page.locator("#french").click()                      # a React re-render with a new prop
    inbox.locator("button.bell").click()
    expect(inbox.get_by_role("tab").first).to_have_text("Toutes")
    assert inbox.evaluate("(e, c) => e.client === c", client)   # the same connection


def test_the_element_inside_a_vue_page(context, site, tidings_server):
    srv = tidings_server
    srv.publish({"users": ["jo"]}, title="Hallo Vue", url="https://app.example/vue")
    page = open_vue(context, site, srv, srv.token("jo"))
    inbox = page.locator("tidings-inbox")
    expect(inbox.locator(".badge")).to_have_text("1")    # getToken bound as a property
    inbox.locator("button.bell").click()
    _rows(inbox).first.locator(".main").click()
    expect(page.locator("#opened")).to_have_text("opened: Hallo Vue")   # Vue's @tidings-click
    expect(inbox.locator(".badge")).to_be_hidden()
