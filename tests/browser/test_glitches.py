"""Dashboard and demo details a new user noticed, in real Chromium: a lone
latency sample is drawn (the chart is not empty while its tile shows p99),
and a notification's url opens from the demo inbox."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from tests.browser.test_dashboard import _login

# the latency series' colours (dashboard.js COLORS p50, p95, p99)
SERIES_RGB = [[0x15, 0xAA, 0xBF], [0xF5, 0x9F, 0x00], [0xE0, 0x31, 0x31]]
ARGS = ["#chart-latency canvas", SERIES_RGB]

COUNT_SERIES_PIXELS = """([selector, colours]) => {
  const canvas = document.querySelector(selector);
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] < 200) continue;
    if (colours.some(([r, g, b]) => Math.abs(d[i] - r) + Math.abs(d[i + 1] - g)
                                    + Math.abs(d[i + 2] - b) < 30)) n++;
  }
  return n;
}"""


def test_a_lone_latency_sample_is_drawn(context, tidings_server):
    device = context.new_page()
    device.goto(f"{tidings_server.url}/demo?token={tidings_server.token('ivy')}")
    expect(device.locator("#status")).to_have_attribute("data-state", "live")
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    assert page.evaluate(COUNT_SERIES_PIXELS, ARGS) == 0

    tidings_server.publish({"users": ["ivy"]}, title="one, alone")
    expect(page.locator("#p99")).to_have_text(re.compile(r"^\d+(\.\d)?$"))
    # one delivery is one second's sample between seconds without any: a dot
    page.wait_for_function(f"({COUNT_SERIES_PIXELS})({json.dumps(ARGS)}) >= 40")


def test_a_demo_item_opens_its_url_and_is_read(context, tidings_server):
    page = context.new_page()
    page.goto(f"{tidings_server.url}/demo?token={tidings_server.token('ola')}")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    target = f"{tidings_server.url}/healthz?from=demo"
    tidings_server.publish({"users": ["ola"]}, title="Your order shipped", url=target)
    tidings_server.publish({"users": ["ola"]}, title="no link here")
    with_url = page.locator("#list li", has_text="Your order shipped")
    expect(with_url.locator(".title a")).to_have_attribute("href", target)
    expect(page.locator("#list li", has_text="no link here").locator("a")).to_have_count(0)

    with context.expect_page() as opened:
        with_url.locator(".meta").click()  # anywhere on the item, not only its title
    assert opened.value.url == target
    expect(with_url).not_to_have_class(re.compile(r"\bunread\b"))
    expect(page.locator("#badge")).to_have_text("1")
