"""A page whose user is over the client API's rate limit comes back by itself.

A stream connect takes a token from the user's bucket like any client-API
request (docs/security.md#rate-limits). Refused, a WebSocket closes with
4005, a "reconnect" code, and SSE answers 429: tidings.js backs off and
connects again once the bucket has refilled, where 4429 (too many streams)
would have stopped it for good.
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
