"""The API reference at /docs in real Chromium: every operation of
/openapi.json with its schema and example, the live protocol at the top, a
working "Try it out", and no request to any other host."""

from __future__ import annotations

import re

import msgspec
from playwright.sync_api import expect

from tidings.api.apidocs import EXAMPLES
from tidings.api.openapi import OPERATIONS
from tidings.core.models import PublishRequest


def test_the_reference_renders_from_local_assets_and_tries_a_publish(context, tidings_server):
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.goto(tidings_server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("tidings")
    expect(page.locator(".opblock")).to_have_count(len(OPERATIONS))
    # the live protocol, with its close codes, at the top of the page
    info = page.locator(".swagger-ui .info")
    expect(info.locator("h2", has_text="Live protocol")).to_be_visible()
    expect(info).to_contain_text("4401")
    expect(info).to_contain_text("recovered")

    # authorize with the API key, then publish from the page
    page.click("button.authorize")
    page.locator(".modal-ux input[type=text]").first.fill(tidings_server.api_key)
    page.locator(".modal-ux button.authorize").first.click()
    page.locator(".modal-ux button.close-modal").click()
    publish = page.locator("#operations-default-post_v1_notifications")
    publish.locator(".opblock-summary").click()
    example = publish.locator(".body-param__example, .highlight-code").first
    expect(example).to_contain_text("user_17 replied")
    publish.locator("button.try-out__btn").click()
    publish.locator("button.execute").click()
    expect(publish.locator(".live-responses-table tbody .response-col_status").first
           ).to_contain_text("202")
    expect(publish.locator(".live-responses-table")).to_contain_text('"status": "accepted"')
    # the answer is one the document lists, not "Undocumented"
    expect(publish.locator(".live-responses-table")).not_to_contain_text("Undocumented")
    expect(publish.locator(".responses-table tr.response[data-code='202']")).to_have_count(1)

    assert requests and all(u.startswith(tidings_server.url + "/") for u in requests), [
        u for u in requests if not u.startswith(tidings_server.url)]


def test_examples_are_valid_requests():
    models = {(m, p): model for m, p, _, _, model in OPERATIONS if model is not None}
    for (method, path), body in EXAMPLES.items():
        assert (method, path) in models, (method, path)
        raw = msgspec.json.encode(body)
        decoded = msgspec.json.decode(raw, type=models[(method, path)])  # raises on drift
        for item in getattr(decoded, "notifications", []):  # a batch: each one a publish
            msgspec.json.decode(item, type=PublishRequest)


def test_the_page_is_locked_to_this_origin(tidings_server):
    import httpx

    r = httpx.get(tidings_server.url + "/docs")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "connect-src 'self'" in csp
    assert re.search(r"default-src 'none'", csp)
    asset = httpx.get(tidings_server.url + "/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    assert httpx.get(tidings_server.url + "/docs/assets/../x").status_code == 404
