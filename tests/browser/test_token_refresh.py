"""tidings.js renews the stream's token before the server ends the stream.

The server closes a WebSocket with 4004 and ends an SSE response when the
stream's token expires (docs/protocol.md, "Token lifetime"). With
``getToken`` the client replaces the token first: over the open WebSocket,
or by reopening the SSE stream from its cursor. Tokens here are minted in the
past, so the first one ends a few seconds into the test.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import APP
from tidings.core.auth import LEEWAY, mint_token

_CLIENT = """([tokens, transport]) => {
  window.events = [];
  window.titles = [];
  const queue = tokens.slice();
  window.client = Tidings.connect({
    transport,
    getToken: () => {
      window.events.push("getToken");
      return queue.length > 1 ? queue.shift() : queue[0];
    },
  });
  client.on("notification", (n) => window.titles.push(n.title));
  client.on("hello", () => window.events.push("hello"));
  client.on("fatal", (f) => window.events.push("fatal:" + f.code));
}"""


def _short(server, user: str, seconds: int) -> tuple[str, float]:
    """A token the server takes for about ``seconds`` more, and when it stops."""
    now = int(time.time())
    exp = now + seconds - LEEWAY
    return mint_token(APP, user, server.signing_secret, ttl=exp - (now - 60), now=now - 60), \
        exp + LEEWAY


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_token_is_renewed_before_the_stream_ends(context, tidings_server, transport):
    user = "tom-" + transport
    short, until = _short(tidings_server, user, 8)  # exp in ~3 s: renewed ~2.4 s in
    page = context.new_page()
    sockets, streams = [], []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.on("request", lambda r: "/v1/me/events" in r.url and streams.append(r.url))
    page.goto(f"{tidings_server.url}/demo")  # no token: the page only loads tidings.js
    page.evaluate(_CLIENT, [[short, tidings_server.token(user)], transport])
    page.wait_for_function("() => window.events.filter(e => e === 'getToken').length >= 2",
                           timeout=15_000)
    # past the end of the first token: the stream is still live
    page.wait_for_timeout(max(0, (until + 1.5 - time.time()) * 1000))
    tidings_server.publish({"users": [user]}, title="after the first token")
    page.wait_for_function("() => window.titles.length === 1", timeout=10_000)
    events = page.evaluate("window.events")
    assert not [e for e in events if e.startswith("fatal")]
    if transport == "websocket":
        assert len(sockets) == 1  # renewed over the open socket: no reconnect
        assert events.count("hello") == 1
    else:
        assert len(streams) == 2  # reopened once, with the new token
        assert "token=" + short not in streams[1].replace("%2E", ".")
        assert events.count("hello") == 2
    expect(page.locator("body")).to_be_visible()


def test_a_static_token_that_expires_stops_the_client(context, tidings_server):
    """Without getToken there is nothing to renew with: the stream ends (4004),
    the reconnect with the same token is refused (4401), the client stops."""
    short, _ = _short(tidings_server, "una", 2)
    page = context.new_page()
    page.goto(f"{tidings_server.url}/demo")
    page.evaluate("""([token]) => {
      window.codes = [];
      const c = Tidings.connect({ token, transport: "websocket" });
      c.on("fatal", (f) => window.codes.push(f.code));
    }""", [short])
    page.wait_for_function("() => window.codes.length === 1", timeout=20_000)
    assert page.evaluate("window.codes") == [4401]
