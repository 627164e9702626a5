"""The dashboard in real Chromium: login, live numbers, charts, logout (which ends
the session on the server: a copy of its cookie opens nothing afterwards), and
the cluster view of two nodes with its switch to this node alone, and a page
elsewhere that posts the login and logout forms (refused)."""

from __future__ import annotations

import asyncio
import http.server
import re
import secrets
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ServerProcess, _free_port
from tests.services import require_postgres, require_redis
from tidings.dashboard.session import COOKIE


def _login(page, server, key: str) -> None:
    page.goto(server.url + "/dashboard")
    expect(page).to_have_url(server.url + "/dashboard/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_the_dashboard_renders_and_its_numbers_move(context, tidings_server):
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page).to_have_url(tidings_server.url + "/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    expect(page.locator("#scope")).to_have_text("All apps")  # the operator app's key
    expect(page.locator("#delivered-total")).to_have_text("0")
    expect(page.locator("#nodes tr")).to_have_count(1)
    expect(page.locator("#nodes")).to_contain_text("(this)")
    assert page.locator(".uplot canvas").count() == 4  # the four charts drew

    # a device opens a stream: the connection count moves
    device = context.new_page()
    device.goto(f"{tidings_server.url}/demo?token={tidings_server.token('zoe')}")
    expect(device.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#connections")).to_have_text("1")
    expect(page.locator("#ws")).to_have_text("1")

    # notifications flow: published, delivered, the per-app row, the topics
    for i in range(5):
        tidings_server.publish({"users": ["zoe"]}, title=f"n{i}")
    tidings_server.publish({"topic": "guild:7"}, title="to a topic")
    expect(page.locator("#published-total")).to_have_text("6")
    expect(page.locator("#delivered-total")).to_have_text("5")
    expect(page.locator("#p99")).to_have_text(re.compile(r"^\d+(\.\d)?$"))
    expect(page.locator("#apps tr").first).to_contain_text("default")
    expect(page.locator("#topics")).to_contain_text("guild:7")

    # an error shows up in the recent errors
    r = context.request.get(tidings_server.url + "/v1/me/counts",
                            headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    expect(page.locator("#errors")).to_contain_text("bad_token")

    # the session cookie is not readable from the page
    assert page.evaluate("document.cookie") == ""
    assert any(c["name"] == COOKIE and c["httpOnly"] and c["sameSite"] == "Strict"
               for c in context.cookies())

    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))
    page.goto(tidings_server.url + "/dashboard")
    expect(page).to_have_url(tidings_server.url + "/dashboard/login")


def test_wrong_and_non_admin_keys_stay_on_the_login_form(context, tidings_server):
    page = context.new_page()
    _login(page, tidings_server, "tk_00000000_wrong")
    expect(page.locator(".note")).to_contain_text("not valid")
    expect(page.locator("#key")).to_be_visible()

    publisher = tidings_server.create_key({"publish", "read"})
    page.fill("#key", publisher)
    page.click("button[type=submit]")
    expect(page.locator(".note")).to_contain_text("lacks the 'admin' scope")
    assert not [c for c in context.cookies() if c["name"] == COOKIE]
    r = context.request.get(tidings_server.url + "/dashboard/api/snapshot")
    assert r.status == 401


def test_an_expired_session_goes_back_to_the_login(context, tidings_server):
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    # the cookie is replaced by a forged one: the page's next request is refused
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    context.add_cookies([{**cookie, "value": cookie["value"][:-4] + "AAAA"}])
    page.reload()
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=expired$"))
    expect(page.locator(".note")).to_contain_text("session ended")


def test_log_out_ends_the_session_on_the_server(context, tidings_server):
    url = tidings_server.url
    page = context.new_page()
    _login(page, tidings_server, tidings_server.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    copied = next(c for c in context.cookies() if c["name"] == COOKIE)  # before the logout

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))
    expect(page.locator(".note")).to_have_text("Logged out.")
    expect(page.locator("#key")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == COOKIE]
    page.go_back()  # the dashboard again: it asks to log in
    expect(page).to_have_url(re.compile(r"/dashboard/login"))
    page.goto(url + "/dashboard")
    expect(page).to_have_url(url + "/dashboard/login")

    # the cookie's value, kept from before the logout, no longer opens anything
    context.add_cookies([copied])
    page.goto(url + "/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))
    assert not [c for c in context.cookies() if c["name"] == COOKIE]  # dropped again
    r = context.request.get(url + "/dashboard/api/snapshot",
                            headers={"Cookie": f"{COOKIE}={copied['value']}"})
    assert r.status == 401 and r.json()["error"]["code"] == "session_ended"

    # logging in again opens a new session
    page.fill("#key", tidings_server.api_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(url + "/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


HOSTILE = """<!doctype html><meta charset="utf-8"><title>elsewhere</title>
<form id="f" method="post" action="TIDINGS/dashboard/ACTION">
<input type="hidden" name="key" value="KEY"></form>
<script>document.getElementById("f").submit();</script>"""


@pytest.fixture
def elsewhere(tmp_path):
    """Pages on another loopback port (the same site as tidings, another
    origin) that post the dashboard's forms as soon as they load."""
    root = tmp_path / "elsewhere"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def make(name: str, html: str) -> str:
        (root / name).write_text(html)
        return f"http://127.0.0.1:{httpd.server_port}/{name}"

    yield make
    httpd.shutdown()
    httpd.server_close()


def test_a_page_elsewhere_can_neither_log_in_nor_log_out(context, tidings_server, elsewhere):
    url = tidings_server.url
    attackers = tidings_server.create_key({"admin"})
    page = context.new_page()
    # a page on another port posts the attacker's key: the browser is not
    # logged in to the attacker's session
    page.goto(elsewhere("login.html", HOSTILE.replace("TIDINGS", url)
                        .replace("ACTION", "login").replace("KEY", attackers)))
    expect(page).to_have_url(url + "/dashboard/login")
    expect(page.locator(".note")).to_contain_text("This login was sent from another site")
    assert not [c for c in context.cookies() if c["name"] == COOKIE]
    # this form, on the dashboard's own origin, still logs in
    page.fill("#key", tidings_server.api_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(url + "/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    (mine,) = [c for c in context.cookies() if c["name"] == COOKIE]

    # the same site sends the SameSite=Strict cookie along: the logout is refused
    page.goto(elsewhere("logout.html", HOSTILE.replace("TIDINGS", url)
                        .replace("ACTION", "logout")))
    expect(page).to_have_url(url + "/dashboard/logout")
    expect(page.locator(".note")).to_contain_text("This logout was sent from another site")
    assert [c for c in context.cookies() if c["name"] == COOKIE] == [mine]
    page.goto(url + "/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.get_by_role("button", name="Log out").click()  # the dashboard's own still works
    expect(page).to_have_url(re.compile(r"/dashboard/login\?reason=logout$"))


@pytest.fixture
def two_node_cluster(tmp_path):
    """Two ``tidings serve`` processes, ``a`` and ``b``, over a fresh
    PostgreSQL schema (migrated as an operator would) and the test Redis
    under a key prefix of their own."""
    import asyncpg

    from tests.broker.conftest import delete_prefixed, unique_prefix

    pg, redis = require_postgres(), require_redis()
    prefix, schema = unique_prefix(), "t_" + secrets.token_hex(6)

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(pg)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def run(coro):  # the test thread's Playwright owns an event loop
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result(60)

    store = f"{pg}?search_path={schema}"
    for name in ("a", "b"):  # each node's log beside its data directory
        (tmp_path / name).mkdir()
    run(sql(f"CREATE SCHEMA {schema}"))
    env = {"TIDINGS_STORE": store, "TIDINGS_BROKER": f"{redis}?prefix={prefix}"}
    a = ServerProcess(tmp_path / "a" / "data", {**env, "TIDINGS_NODE": "a"})
    b = ServerProcess(tmp_path / "b" / "data", {**env, "TIDINGS_NODE": "b"})
    try:
        subprocess.run([sys.executable, "-m", "tidings", "migrate", "--store", store],
                       check=True, capture_output=True, timeout=60)
        a.start()  # the first start creates the app and prints its key
        b.api_key, b.signing_secret = a.api_key, a.signing_secret
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()
        run(sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        run(delete_prefixed(redis, prefix))


def test_the_dashboard_sums_the_cluster_and_switches_to_this_node(context, two_node_cluster,
                                                                 tmp_path):
    a, b = two_node_cluster
    page = context.new_page()
    _login(page, a, a.api_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    for server, user in ((a, "zoe"), (b, "yan")):  # a device on each node
        device = context.new_page()
        device.goto(f"{server.url}/demo?token={server.token(user)}")
        expect(device.locator("#status")).to_have_attribute("data-state", "live")
    for i in range(3):
        a.publish({"users": ["zoe"]}, title=f"a{i}")
    for i in range(2):
        b.publish({"users": ["yan"]}, title=f"b{i}")

    # the cluster: both nodes' figures, said so
    expect(page.locator("#view-switch")).to_be_visible()
    expect(page.locator("#view-note")).to_contain_text("the sums of 2 nodes")
    expect(page.locator("#published-total")).to_have_text("5")
    expect(page.locator("#delivered-total")).to_have_text("5")
    expect(page.locator("#connections")).to_have_text("2")
    expect(page.locator("#ws")).to_have_text("2")
    expect(page.locator(".node-only").first).to_be_visible()
    expect(page.get_by_role("button", name="Cluster")).to_have_attribute("aria-pressed", "true")
    assert page.locator(".uplot canvas").count() == 4
    page.screenshot(path=str(tmp_path / "dashboard-cluster.png"), full_page=True)

    # this node alone, and back
    page.get_by_role("button", name="This node").click()
    expect(page).to_have_url(a.url + "/dashboard?view=node")
    expect(page.locator("#view-note")).to_have_text("This node only: a.")
    expect(page.locator("#published-total")).to_have_text("3")
    expect(page.locator("#connections")).to_have_text("1")
    expect(page.locator(".node-only").first).to_be_hidden()
    page.screenshot(path=str(tmp_path / "dashboard-node.png"), full_page=True)
    page.reload()  # the view is in the address
    expect(page.locator("#published-total")).to_have_text("3")
    expect(page.get_by_role("button", name="This node")).to_have_attribute("aria-pressed",
                                                                         "true")
    page.get_by_role("button", name="Cluster").click()
    expect(page).to_have_url(a.url + "/dashboard")
    expect(page.locator("#published-total")).to_have_text("5")
    assert page.locator(".uplot canvas").count() == 4  # the same charts, new data
