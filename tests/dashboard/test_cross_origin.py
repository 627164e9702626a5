"""Login and logout CSRF: a page on another origin posts the dashboard's
forms.  A login from there would put the visitor's browser in the poster's
session (or spend the visitor's address's failed logins); a logout from a
page of the same site (another port, a sibling subdomain) carries the
``SameSite=Strict`` cookie and would end the visitor's session.  Both are
refused, ``403 cross_origin``, before any key is read; curl and the
dashboard's own pages go on working (tidings.dashboard.routes.cross_origin)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import run_server
from tests.dashboard.test_logout import _client, _session, _snapshot
from tidings.config import Limits
from tidings.dashboard import session

WRONG = "tk_0a1b2c3d_wrongwrongwrongwrongwrongwrongwr"

# what a browser sends with a form posted from a page elsewhere
CROSS = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # a sandboxed frame, a data: URL, a no-referrer page
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site"},  # another port, a sibling subdomain
    {"Sec-Fetch-Site": "cross-site", "Origin": "null"},
    {"Referer": "https://evil.example/page"},  # a browser that sends no Origin
    {"Origin": "http://[::1"},  # not even a URL
    {"Origin": "ftp://HOST"},
    {"Origin": "http://HOST.evil.example"},
    {"Origin": "http://evil.example/HOST"},
    {"Origin": "http://user@HOST"},
    {"Referer": "http://HOST.evil.example/dashboard"},
]


def _headers(server, headers: dict) -> dict:
    host = server.url.removeprefix("http://")
    return {k: v.replace("HOST", host) for k, v in headers.items()}


def _assert_refused(r: httpx.Response, what: str) -> None:
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "set-cookie" not in r.headers  # neither a session set nor one dropped
    assert 'name="key"' in r.text and 'role="alert"' in r.text
    assert f"This {what} was sent from another site" in r.text


async def _audit(server) -> list[str]:
    async with server.http() as http:
        return [r["action"] for r in (await http.get("/v1/audit")).json()["records"]]


@pytest.fixture
async def limited(tmp_path):
    """One failed login a minute per address: a wrong key from another
    origin would spend it."""
    limits = Limits(login_failures_per_address=1)
    async with run_server(tmp_path, limits=limits, broker="local",
                          operator_app="testapp") as server:
        yield server


@pytest.mark.parametrize("headers", CROSS)
async def test_a_login_from_another_origin_is_refused_before_the_key_is_read(limited, headers):
    async with _client(limited) as http:
        for key in (WRONG, WRONG, limited.api_key):
            r = await http.post("/dashboard/login", data={"key": key},
                                headers=_headers(limited, headers))
            _assert_refused(r, "login")
            assert "To log in, use this form." in r.text
        # none of it counted as a failed login, nor was recorded: the
        # address still has its one failure, and then the right key
        assert (await http.post("/dashboard/login", data={"key": WRONG})).status_code == 401
        assert (await http.post("/dashboard/login",
                                data={"key": limited.api_key})).status_code == 429
    assert await _audit(limited) == ["dashboard.login_failed"]
    async with limited.http() as http:  # the refusal is an error on the dashboard
        errors = (await http.get("/dashboard/api/snapshot?view=node")).json()["errors"]
    assert [(e["status"], e["where"]) for e in errors if e["code"] == "cross_origin"] \
        == [(403, "POST /dashboard/login")] * 3


# what the dashboard's own pages send (Chromium, and a browser whose privacy
# settings null the Origin), what older browsers send, and curl
SAME = [
    {"Sec-Fetch-Site": "same-origin", "Origin": "null"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://HOST"},
    {"Sec-Fetch-Site": "none"},  # the user's own doing
    {"Origin": "http://HOST"},
    {"Origin": "HTTP://HOST"},
    {"Origin": "https://HOST"},  # behind a proxy that ends TLS
    {"Referer": "http://HOST/dashboard/login"},
    {},
]


@pytest.mark.parametrize("headers", SAME)
async def test_this_origin_and_curl_still_log_in_and_out(server, headers):
    async with _client(server) as http:
        r = await http.post("/dashboard/login", data={"key": server.api_key},
                            headers={**_headers(server, headers), "Sec-Fetch-Site": "same-site"})
        _assert_refused(r, "login")
        r = await http.post("/dashboard/login", data={"key": server.api_key},
                            headers=_headers(server, headers))
        assert r.status_code == 303, r.text
        cookie = r.cookies[session.COOKIE]
    assert (await _snapshot(server, cookie)).status_code == 200
    async with _client(server, cookie) as http:
        r = await http.post("/dashboard/logout", headers={"Origin": "https://evil.example"})
        _assert_refused(r, "logout")
        assert (await _snapshot(server, cookie)).status_code == 200
        r = await http.post("/dashboard/logout", headers=_headers(server, headers))
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?reason=logout"
    assert (await _snapshot(server, cookie)).status_code == 401


@pytest.mark.parametrize("host, same, other", [
    ("dash.example.com", "https://dash.example.com", "https://dash.example.com:8443"),
    ("dash.example.com:443", "https://dash.example.com", "https://dash.example.com:444"),
    ("dash.example.com", "http://dash.example.com:80", "http://dash.example.com:8080"),
    ("Dash.Example.com", "https://dash.example.com", "https://example.com"),
    ("dash.example.com:8443", "https://dash.example.com:8443", "https://dash.example.com"),
    ("dash.example.com", "http://dash.example.com", "https://other.example.com"),
])
async def test_the_origin_is_compared_with_the_host_the_request_was_sent_to(server, host,
                                                                          same, other):
    async with _client(server) as http:
        r = await http.post("/dashboard/login", data={"key": server.api_key},
                            headers={"Host": host, "Origin": other})
        _assert_refused(r, "login")
        r = await http.post("/dashboard/login", data={"key": server.api_key},
                            headers={"Host": host, "Origin": same})
        assert r.status_code == 303, r.text


@pytest.mark.parametrize("headers", CROSS)
async def test_a_logout_from_another_origin_ends_nothing(server, headers):
    cookie = await _session(server)
    async with _client(server, cookie) as http:  # the cookie goes along: the same site
        r = await http.post("/dashboard/logout", headers=_headers(server, headers))
    _assert_refused(r, "logout")
    assert "To log out, use Log out on the dashboard." in r.text
    assert (await _snapshot(server, cookie)).status_code == 200  # the session goes on
    assert "dashboard.logout" not in await _audit(server)


async def test_the_dashboards_pages_name_their_origin_to_it_alone(server):
    """``Referrer-Policy: same-origin`` on the login form and the pages with a
    Log out button: their posts carry the Origin a browser without
    ``Sec-Fetch-Site`` is checked by (no-referrer made it ``null``), and no
    other origin learns their URLs."""
    auth = {"Authorization": f"Bearer {server.api_key}"}
    async with _client(server) as http:
        pages = [await http.get("/dashboard/login"),
                 await http.post("/dashboard/login", data={"key": "tk_0a1b2c3d_x"}),
                 await http.post("/dashboard/login", data={"key": server.api_key},
                                 headers={"Origin": "https://evil.example"})]
        for path in ("/dashboard", "/dashboard/notification", "/dashboard/audit"):
            pages.append(await http.get(path, headers=auth))
        demo = await http.get("/demo")
    for r in pages:
        assert r.headers["content-type"].startswith("text/html"), r.url
        assert r.headers["referrer-policy"] == "same-origin", r.url
    assert demo.headers["referrer-policy"] == "no-referrer"  # its URL holds a token
