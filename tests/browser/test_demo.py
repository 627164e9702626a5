"""The demo inbox and tidings.js in real Chromium: live arrival, two devices,
a server restart, the SSE fallback, fatal close codes, recovered:false."""

from __future__ import annotations

import httpx
from playwright.sync_api import expect


def _open_demo(context, server, user: str, query: str = ""):
    page = context.new_page()
    page.goto(f"{server.url}/demo?token={server.token(user)}{query}")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return page


def _titles(page) -> list[str]:
    return page.locator("#list li .title").all_inner_texts()


def test_a_live_notification_arrives_with_its_badge(context, tidings_server):
    page = _open_demo(context, tidings_server, "ana")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#badge")).to_be_hidden()
    tidings_server.publish({"users": ["ana"]}, title="user_17 replied to your comment",
                           body="Totally agree.", category="social")
    item = page.locator("#list li.unread")
    expect(item).to_have_count(1)
    expect(item.locator(".title")).to_have_text("user_17 replied to your comment")
    expect(item.locator(".body")).to_have_text("Totally agree.")
    expect(page.locator("#badge")).to_have_text("1")
    expect(page.locator("#status")).to_have_attribute("data-transport", "websocket")
    # a title is data, never markup
    tidings_server.publish({"users": ["ana"]}, title="<img src=x onerror=alert(1)>")
    expect(page.locator("#list li")).to_have_count(2)
    assert page.locator("#list img").count() == 0
    expect(page.locator("#badge")).to_have_text("2")


def test_two_devices_mark_read_on_one_and_the_badge_drops_on_the_other(browser, tidings_server):
    phone = browser.new_context()
    laptop = browser.new_context()
    try:
        a = _open_demo(phone, tidings_server, "bo")
        b = _open_demo(laptop, tidings_server, "bo")
        for i in range(3):
            tidings_server.publish({"users": ["bo"]}, title=f"news {i}")
        for page in (a, b):
            expect(page.locator("#list li.unread")).to_have_count(3)
            expect(page.locator("#badge")).to_have_text("3")

        a.locator("#list li", has_text="news 1").click()  # mark read on the phone
        expect(a.locator("#badge")).to_have_text("2")
        expect(b.locator("#badge")).to_have_text("2")   # ...the laptop follows, live
        expect(b.locator("#list li", has_text="news 1")).not_to_have_class("unread")
        expect(b.locator("#list li.unread")).to_have_count(2)

        b.locator("#mark-all").click()                    # mark all read on the laptop
        expect(a.locator("#badge")).to_be_hidden()
        expect(a.locator("#list li.unread")).to_have_count(0)
        expect(a.locator("#mark-all")).to_be_disabled()
    finally:
        phone.close()
        laptop.close()


def test_a_page_resumes_across_a_server_restart_and_loses_nothing(context, tidings_server):
    page = _open_demo(context, tidings_server, "cy")
    tidings_server.publish({"users": ["cy"]}, title="before")
    expect(page.locator("#list li")).to_have_count(1)

    tidings_server.stop()
    expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
    missed = [f"while down {i}" for i in range(3)]
    tidings_server.publish_offline({"users": ["cy"]}, missed)  # another node took them
    tidings_server.start()  # same port, same data

    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=40_000)
    expect(page.locator("#list li")).to_have_count(4)
    assert sorted(_titles(page)) == sorted(["before", *missed])  # each exactly once
    expect(page.locator("#badge")).to_have_text("4")
    tidings_server.publish({"users": ["cy"]}, title="after")  # and live again
    expect(page.locator("#list li").first.locator(".title")).to_have_text("after")
    expect(page.locator("#badge")).to_have_text("5")


def test_sse_when_asked_for(context, tidings_server):
    page = _open_demo(context, tidings_server, "di", "&transport=sse")
    expect(page.locator("#status")).to_have_attribute("data-transport", "sse")
    tidings_server.publish({"users": ["di"]}, title="over SSE")
    expect(page.locator("#list li.unread .title")).to_have_text("over SSE")
    page.locator("#list li").first.click()
    expect(page.locator("#badge")).to_be_hidden()
    expect(page.locator("#list li.unread")).to_have_count(0)


def test_sse_fallback_when_websockets_are_blocked(context, tidings_server):
    # What a browser sees behind a proxy that refuses the upgrade: the
    # WebSocket fails before it opens (1006), while plain HTTP gets through.
    context.add_init_script("""
      window.WebSocket = class BlockedWebSocket {
        constructor(url) {
          window.__wsAttempts = (window.__wsAttempts || 0) + 1;
          setTimeout(() => {
            this.onerror && this.onerror(new Event("error"));
            this.onclose && this.onclose({ code: 1006, reason: "" });
          }, 20);
        }
        send() { throw new Error("not open"); }
        close() {}
      };
    """)
    page = _open_demo(context, tidings_server, "ed")
    expect(page.locator("#status")).to_have_attribute("data-transport", "sse")
    assert page.evaluate("window.__wsAttempts") == 1  # one try, then SSE for good
    tidings_server.publish({"users": ["ed"]}, title="via the fallback")
    expect(page.locator("#list li.unread .title")).to_have_text("via the fallback")
    expect(page.locator("#badge")).to_have_text("1")


def test_a_bad_token_stops_without_reconnecting(context, tidings_server):
    page = context.new_page()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.goto(f"{tidings_server.url}/demo?token=not-a-token")
    expect(page.locator("#status")).to_have_attribute("data-state", "stopped")
    expect(page.locator("#banner")).to_contain_text("token is not valid")
    page.wait_for_timeout(1500)  # a reconnect (0.25-0.5 s backoff) would show up here
    assert len(sockets) == 1


def test_recovered_false_reloads_the_inbox(context, tidings_server):
    tidings_server.publish({"users": ["fu"]}, title="stored earlier")
    page = context.new_page()
    page.goto(f"{tidings_server.url}/demo")  # no token: the page only loads tidings.js
    result = page.evaluate("""([token]) => new Promise((resolve) => {
        const seen = [];
        const client = Tidings.connect({ token, cursor: "deadbeef:5:0" });  // a foreign epoch
        client.on("recovered", (r) => seen.push("recovered:" + r.ok));
        client.on("inbox", (p) => {
          seen.push("inbox:" + p.reason);
          if (p.reason === "unrecovered") {
            resolve({ seen, titles: p.items.map((i) => i.notification.title),
                      cursor: client.cursor() });
            client.close();
          }
        });
    })""", [tidings_server.token("fu")])
    assert "recovered:false" in result["seen"]
    assert result["titles"] == ["stored earlier"]
    assert not result["cursor"].startswith("deadbeef:")  # hello's position was adopted


def test_a_group_entry_is_one_row_that_updates_in_place(context, tidings_server):
    page = _open_demo(context, tidings_server, "gi")
    ids = [tidings_server.publish({"users": ["gi"]}, title=f"{actor} liked your post",
                                  group_key="post:7:likes", actor=actor)
           for actor in ("user_17", "user_9", "user_3")]
    row = page.locator("#list li")
    expect(row).to_have_count(1)
    expect(row.locator(".title")).to_have_text("user_3 liked your post")
    expect(row.locator(".group")).to_contain_text("3 notifications")
    expect(page.locator("#badge")).to_have_text("1")  # one entry, one unread
    page.reload()  # the inbox page shows the same single entry
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#list li")).to_have_count(1)
    expect(page.locator("#list li .group")).to_contain_text("3 notifications")
    expect(page.locator("#badge")).to_have_text("1")
    # a retracted member leaves the row showing the next newest, live
    r = httpx.delete(f"{tidings_server.url}/v1/notifications/{ids[2]}", timeout=10,
                     headers={"Authorization": f"Bearer {tidings_server.api_key}"})
    assert r.status_code == 200, r.text
    expect(page.locator("#list li .title")).to_have_text("user_9 liked your post")
    expect(page.locator("#list li .group")).to_contain_text("2 notifications")
    expect(page.locator("#badge")).to_have_text("1")
