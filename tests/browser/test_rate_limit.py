"""A page whose user is over the client API's rate limit comes back by itself.

A stream connect, and each message on an open WebSocket, takes a token from
the user's bucket like any client-API request (docs/security.md#rate-limits).
Refused, a WebSocket closes with 4005, a "reconnect" code, and SSE answers
429: tidings.js backs off and connects again once the bucket has refilled,
where 4429 (too many streams) would have stopped it for good.
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import ServerProcess
from tidings.errors import CLOSE_RATE_LIMITED


@pytest.fixture
def slow_server(tmp_path):
    """A token every 4 s, one at most: a page's first connect finds none."""
    srv = ServerProcess(tmp_path / "data",
                        env={"TIDINGS_USER_RATE": "0.25", "TIDINGS_USER_BURST": "1"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_refused_stream_connect_reconnects_once_the_bucket_refills(context, slow_server,
                                                                     transport):
    page = context.new_page()
    refused: list[int] = []
    page.on("response", lambda r: "/v1/me/events" in r.url and r.status == 429
            and refused.append(r.status))
    page.goto(f"{slow_server.url}/demo")  # no token: the page only loads tidings.js
    page.evaluate("""async ([token, transport]) => {
      window.events = [];
      window.codes = [];
      const Native = window.WebSocket;  // to see the close codes tidings.js gets
      window.WebSocket = function (url) {
        const sock = new Native(url);
        sock.addEventListener("close", (e) => window.codes.push(e.code));
        return sock;
      };
      // the user's only token, spent: the connect below is refused
      const r = await fetch("/v1/me/counts", { headers: { Authorization: "Bearer " + token } });
      window.events.push("counts:" + r.status);
      const c = Tidings.connect({ token, transport });
      c.on("hello", () => window.events.push("hello"));
      c.on("fatal", (f) => window.events.push("fatal:" + f.code));
    }""", [slow_server.token("ria"), transport])
    page.wait_for_function("() => window.events.includes('hello')", timeout=30_000)
    events = page.evaluate("window.events")
    assert events[0] == "counts:200"
    assert not [e for e in events if e.startswith("fatal")], events
    if transport == "websocket":
        assert page.evaluate("window.codes")[0] == CLOSE_RATE_LIMITED
    else:
        assert refused  # the first EventSource was answered 429


def test_an_api_call_refused_for_the_rate_limit_is_sent_again(context, slow_server):
    """A call answered 429 did nothing: tidings.js sends it once more after
    its Retry-After, and the caller gets the answer, not an error."""
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda r: "/v1/me/counts" in r.url and statuses.append(r.status))
    page.goto(f"{slow_server.url}/demo")
    result = page.evaluate("""async ([token]) => {
      const c = Tidings.connect({ token, transport: "sse" });
      c.close();  // only the API calls: no stream takes the user's token
      const first = await c.counts();   // the bucket's one token
      const second = await c.counts();  // refused, then sent again 4 s later
      return [first.unread, second.unread];
    }""", [slow_server.token("sol")])
    assert result == [0, 0]
    assert statuses == [200, 429, 200]


@pytest.fixture
def quick_server(tmp_path):
    """A token a second, two at most: the connect and the first inbox page."""
    srv = ServerProcess(tmp_path / "data",
                        env={"TIDINGS_USER_RATE": "1", "TIDINGS_USER_BURST": "2"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_websocket_closed_for_a_message_over_the_rate_reconnects(context, quick_server):
    """The page floods its own stream (a bug, or a script): the first message
    that finds the bucket empty closes the stream with 4005, and tidings.js
    backs off, reconnects from its cursor once tokens are back, and shows
    what was published while it was away."""
    page = context.new_page()
    page.goto(f"{quick_server.url}/demo")
    page.evaluate("""async ([token]) => {
      window.events = [];
      window.codes = [];
      window.sockets = [];
      const Native = window.WebSocket;  // to reach the socket and see its close codes
      window.WebSocket = function (url) {
        const sock = new Native(url);
        window.sockets.push(sock);
        sock.addEventListener("close", (e) => window.codes.push(e.code));
        return sock;
      };
      const c = Tidings.connect({ token, transport: "websocket" });
      c.on("hello", () => window.events.push("hello"));
      c.on("notification", (n) => window.events.push("n:" + n.title));
      c.on("fatal", (f) => window.events.push("fatal:" + f.code));
    }""", [quick_server.token("uma")])
    page.wait_for_function("() => window.events.includes('hello')", timeout=30_000)
    page.evaluate("""() => {
      for (let i = 0; i < 50; i++) window.sockets[0].send('{"type":"receipts"}');
    }""")
    page.wait_for_function("() => window.codes.length > 0", timeout=30_000)
    assert page.evaluate("window.codes")[0] == CLOSE_RATE_LIMITED
    quick_server.publish({"users": ["uma"]}, title="while away")
    page.wait_for_function("() => window.events.includes('n:while away')", timeout=30_000)
    events = page.evaluate("window.events")
    assert events.count("hello") == 2, events
    assert not [e for e in events if e.startswith("fatal")], events
