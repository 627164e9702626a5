"""tidings.js when the user's tokens are revoked (POST
/v1/users/{user}/tokens/revoke): the server ends the stream (WebSocket 4401
"token revoked", or the SSE response) and refuses the old token; with
``getToken`` the client reconnects with a new token and misses nothing,
without it the client stops (docs/protocol.md, "Close codes").
"""

from __future__ import annotations

import httpx
import pytest

_CLIENT = """([url, key, user, transport]) => {
  window.events = [];
  window.titles = [];
  window.client = Tidings.connect({
    transport,
    // as an app's backend would: mint a token for the signed-in user
    getToken: () => {
      window.events.push("getToken");
      return fetch(url + "/v1/users/" + user + "/tokens", {
        method: "POST", headers: { Authorization: "Bearer " + key },
      }).then((r) => r.json()).then((d) => d.token);
    },
  });
  client.on("notification", (n) => window.titles.push(n.title));
  client.on("hello", () => window.events.push("hello"));
  client.on("fatal", (f) => window.events.push("fatal:" + f.code));
}"""


def _revoke(server, user: str) -> None:
    r = httpx.post(f"{server.url}/v1/users/{user}/tokens/revoke", timeout=10,
                   headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_revoked_token_is_replaced_from_get_token(context, tidings_server, transport):
    user = "rae-" + transport
    page = context.new_page()
    page.goto(f"{tidings_server.url}/demo")  # no token: the page only loads tidings.js
    page.evaluate(_CLIENT, [tidings_server.url, tidings_server.api_key, user, transport])
    page.wait_for_function("() => window.events.includes('hello')", timeout=15_000)
    tidings_server.publish({"users": [user]}, title="before")
    page.wait_for_function("() => window.titles.length === 1", timeout=10_000)
    _revoke(tidings_server, user)
    page.wait_for_function(
        "() => window.events.filter(e => e === 'hello').length === 2", timeout=15_000)
    tidings_server.publish({"users": [user]}, title="after")
    page.wait_for_function("() => window.titles.length === 2", timeout=10_000)
    events = page.evaluate("window.events")
    assert not [e for e in events if e.startswith("fatal")], events
    assert events.count("getToken") >= 2
    assert page.evaluate("window.titles") == ["before", "after"]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_without_get_token_a_revoked_token_stops_the_client(context, tidings_server,
                                                            transport):
    token = tidings_server.token("una")
    page = context.new_page()
    page.goto(f"{tidings_server.url}/demo")
    page.evaluate("""([token, transport]) => {
      window.codes = [];
      window.hellos = 0;
      const c = Tidings.connect({ token, transport });
      c.on("hello", () => { window.hellos += 1; });
      c.on("fatal", (f) => window.codes.push(f.code));
    }""", [token, transport])
    page.wait_for_function("() => window.hellos === 1", timeout=15_000)
    _revoke(tidings_server, "una")
    page.wait_for_function("() => window.codes.length === 1", timeout=20_000)
    assert page.evaluate("window.codes") == [4401]
    assert page.evaluate("window.hellos") == 1
