"""Markdown bodies in <tidings-inbox>, in real Chromium against a real server:
the subset rendered as elements (strong, em, code, links, lists, line breaks),
a body's link followed where it points, a text body left as written, and
hostile bodies shown as text: no script runs, no attribute is injected, no
``javascript:`` link exists (docs/inbox.md#markdown-bodies)."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.inbox_pages import attr, open_plain

BODY = ("Build **812** failed on `main`, *again*.\nSee [the log](https://ci.example/812) "
        "or [mail us](mailto:ci@acme.test):\n\n- flaky `test_sync`\n- disk **full**\n\n"
        "3. retry\n4. fix")

HOSTILE = [
    "<script>window.pwned = 1</script>",
    "<img src=x onerror=\"window.pwned = 2\">",
    "**<svg onload=\"window.pwned = 3\">**",
    "[click](javascript:window.pwned=4)",
    "[click](JaVaScRiPt:window.pwned=5)",
    "[click](<javascript:window.pwned=6>)",
    "[data](data:text/html,<script>parent.pwned=7</script>)",
    "[quote](https://ok.example/\" onmouseover=\"window.pwned=8)",
    "[title](https://ok.example 'x\" onmouseover=\"window.pwned=9')",
    "![pixel](https://track.example/p.png) [rel](/relative)",
    "<a href=\"javascript:window.pwned=10\">a</a> &lt;b&gt; `<b>code</b>`",
]

# What the rendered subset may hold: these tags, and on them only these attributes.
INERT = """root => {
  const allowed = {P: [], BR: [], STRONG: [], EM: [], CODE: [], UL: [], OL: ["start"], LI: [],
                   A: ["href", "rel", "title"]};
  const bad = [];
  for (const body of root.querySelectorAll(".md")) {
    for (const e of body.querySelectorAll("*")) {
      const ok = allowed[e.tagName];
      if (!ok) bad.push(e.outerHTML);
      else for (const a of e.attributes) if (!ok.includes(a.name)) bad.push(e.outerHTML);
      if (e.tagName === "A" && !/^(https?|mailto):/.test(e.getAttribute("href"))) {
        bad.push(e.outerHTML);
      }
    }
  }
  for (const a of root.querySelectorAll("[href]")) {
    if (/^\\s*javascript:/i.test(a.getAttribute("href"))) bad.push(a.outerHTML);
  }
  return bad;
}"""


def _open(context, site, server, user: str):
    page = open_plain(context, site, server, attr("token", server.token(user)))
    inbox = page.locator("tidings-inbox")
    inbox.locator("button.bell").click()
    expect(inbox.locator("[role=dialog]")).to_be_visible()
    return page, inbox


def test_a_markdown_body_renders_the_subset_and_its_links_open(context, site, tidings_server):
    srv = tidings_server
    srv.publish({"users": ["ana"]}, title="Plain", body="**not bold** [x](https://a.example)")
    srv.publish({"users": ["ana"]}, title="CI failed", body=BODY, format="markdown",
                url="https://ci.example/runs/812")
    page, inbox = _open(context, site, srv, "ana")
    row = inbox.locator("li.item").filter(has_text="CI failed")
    body = row.locator("[part~=item-body]")
    expect(body.locator("p")).to_have_count(1)
    expect(body.locator("p strong")).to_have_text("812")
    expect(body.locator("p em")).to_have_text("again")
    expect(body.locator("p code")).to_have_text("main")
    expect(body.locator("p br")).to_have_count(1)
    expect(body.locator("ul > li")).to_have_text(["flaky test_sync", "disk full"])
    expect(body.locator("ul code")).to_have_text("test_sync")
    expect(body.locator("ol > li")).to_have_text(["retry", "fix"])
    assert body.locator("ol").get_attribute("start") == "3"
    links = body.locator("a")
    expect(links).to_have_text(["the log", "mail us"])
    assert [links.nth(i).get_attribute("href") for i in range(2)] == [
        "https://ci.example/812", "mailto:ci@acme.test"]
    for i in range(2):
        assert links.nth(i).get_attribute("rel") == "noopener noreferrer"
        # as the row's own link: no target
        assert links.nth(i).get_attribute("target") is None
    assert row.locator("a.main").get_attribute("target") is None
    assert inbox.evaluate(f"e => ({INERT})(e.shadowRoot)") == []

    # a text body is shown as written
    plain = inbox.locator("li.item").filter(has_text="Plain").locator("[part~=item-body]")
    expect(plain).to_have_text("**not bold** [x](https://a.example)")
    assert plain.locator("*").count() == 0

    # the body's link goes where it says; the rest of the row opens the notification
    page.route("https://ci.example/**", lambda r: r.fulfill(
        body=f"<h1 id=landed>{r.request.url}</h1>", content_type="text/html"))
    links.first.click()
    expect(page.locator("#landed")).to_have_text("https://ci.example/812")
    page.go_back()
    inbox = page.locator("tidings-inbox")
    inbox.locator("button.bell").click()
    row = inbox.locator("li.item").filter(has_text="CI failed")
    # over the list's text, the row's link is what the pointer reaches
    row.locator("[part~=item-body] ul").click(force=True)
    expect(page.locator("#landed")).to_have_text("https://ci.example/runs/812")


def test_hostile_markdown_bodies_are_text_and_run_nothing(context, site, tidings_server):
    srv = tidings_server
    for i, body in enumerate(HOSTILE):
        srv.publish({"users": ["bo"]}, title=f"hostile {i}", body=body, format="markdown")
    page, inbox = _open(context, site, srv, "bo")
    rows = inbox.locator("li.item")
    expect(rows).to_have_count(len(HOSTILE))
    # and one that arrives live, while the panel is open
    srv.publish({"users": ["bo"]}, title="live", body=HOSTILE[1] + "\n- " + HOSTILE[3],
                format="markdown")
    expect(rows).to_have_count(len(HOSTILE) + 1)
    for row in rows.all():
        row.hover()                                   # an injected onmouseover would fire
    page.wait_for_timeout(300)                        # an onerror or onload would have fired
    assert page.evaluate("window.pwned") is None
    assert inbox.evaluate(f"e => ({INERT})(e.shadowRoot)") == []
    assert inbox.evaluate("e => e.shadowRoot.querySelectorAll('.md img, .md script, .md svg,"
                          " .md iframe, .md style').length") == 0
    body = inbox.locator("li.item").filter(has_text="hostile 0").locator("[part~=item-body]")
    expect(body).to_have_text(HOSTILE[0])             # the markup, as characters
    body = inbox.locator("li.item").filter(has_text="hostile 3").locator("[part~=item-body]")
    expect(body).to_have_text(HOSTILE[3])
    body = inbox.locator("li.item").filter(has_text="hostile 10").locator("[part~=item-body]")
    expect(body.locator("code")).to_have_text("<b>code</b>")
    # the one web link among them is a link, its quote kept in the URL, not an attribute
    quoted = inbox.locator("li.item").filter(has_text="hostile 8").locator(".md a")
    assert quoted.get_attribute("href") == "https://ok.example/"
    assert quoted.get_attribute("title") == "x\" onmouseover=\"window.pwned=9"
    assert quoted.get_attribute("onmouseover") is None
