"""The inbox filtered by category and tag on the server (docs/protocol.md,
"The inbox"), on both stores: ``?category=`` and ``?tag=`` (each repeatable,
any of its values; both given, both hold) with ``?state=`` and the ``before``
cursor, over personal entries, group entries and feed items (broadcasts and
topics fanned out on read) alike.  A filtered page is full however rare what
it asks for; a bad value is a 422 naming the parameter."""

from __future__ import annotations

import pytest

from tests.api.conftest import store_overrides
from tests.conftest import run_server
from tests.gateway.live import recv_events, ws_connect

LONG = "x" * 1500  # a body PostgreSQL does not copy into the entry (over 1,024 bytes)


@pytest.fixture(params=["sqlite", "postgres"])
async def srv(request, tmp_path):
    # topics of more than 2 members are fanned out on read (feed items)
    async with store_overrides(request.param) as store:
        async with run_server(tmp_path, fanout_threshold=2, **store) as live:
            yield live


async def send(server, to: dict, **fields) -> str:
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": to, **fields})
        assert r.status_code == 202, r.text
        return r.json()["id"]


async def page(http, path: str = "/v1/me/notifications", **params) -> tuple[list[str], str | None]:
    r = await http.get(path, params=params)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]], r.json()["next_before"]


async def walk(http, **params) -> list[str]:
    """Every page of a filtered listing, each full but the last."""
    out, before = [], None
    while True:
        ids, before = await page(http, **params, **({"before": before} if before else {}))
        assert len(ids) == params["limit"] or before is None, (ids, before)
        out += ids
        if before is None:
            return out


async def test_a_rare_category_fills_its_pages_across_entries_and_feed_items(srv):
    """40 social notifications, and ci ones among them: personal, a broadcast,
    a large topic's, a long body, a group entry.  Pages of 3 of ci are full
    and newest first, and walk every ci item once."""
    async with srv.http() as http:
        for user in ("bob", "carol", "alice"):
            assert (await http.put(f"/v1/topics/builds/subscribers/{user}")).status_code == 200
    ci = []
    for i in range(40):
        await send(srv, {"users": ["alice"]}, category="social", title=f"s{i}")
        if i % 8 == 0:
            ci.append(await send(srv, {"users": ["alice"]}, category="ci", title=f"c{i}"))
    ci.append(await send(srv, {"all": True}, category="ci", title="broadcast"))
    await send(srv, {"all": True}, category="social", title="broadcast social")
    ci.append(await send(srv, {"topic": "builds"}, category="ci", title="topic"))
    ci.append(await send(srv, {"users": ["alice"]}, category="ci", body=LONG))
    await send(srv, {"users": ["alice"]}, category="ci", group_key="g", actor="a")
    ci.append(await send(srv, {"users": ["alice"]}, category="ci", group_key="g", actor="b"))
    await send(srv, {"users": ["bob"]}, category="ci")  # another user's
    token = await srv.token("alice")
    async with srv.http(token) as me:
        assert await walk(me, category="ci", limit=3) == ci[::-1]
        # any of several; a repeated value counts once
        both = await walk(me, category=["billing", "ci", "ci"], limit=3)
        assert both == ci[::-1]
        # what the inbox holds but the filter leaves out
        assert len(await walk(me, limit=50)) == 40 + len(ci) + 1
        # with the state: read the newest ci item, the unread ones are the rest
        r = await me.post("/v1/me/notifications/read", json={"ids": [ci[-1]]})
        assert r.status_code == 200, r.text
        assert await walk(me, category="ci", state="unread", limit=3) == ci[-2::-1]
        assert await walk(me, category="ci", state="read", limit=3) == [ci[-1]]
        # archived leave the default listing, filtered or not
        await me.post("/v1/me/notifications/archive", json={"ids": [ci[0]]})
        assert await walk(me, category="ci", limit=3) == ci[:0:-1]
        assert await walk(me, category="ci", state="archived", limit=3) == [ci[0]]
        assert await walk(me, category="nothing", limit=3) == []
    # the server API lists a user's inbox with the same filter
    async with srv.http() as http:
        ids, _ = await page(http, "/v1/users/alice/notifications", category="ci", limit=2)
        assert ids == ci[:0:-1][:2]


async def test_tags_any_of_them_and_with_a_category(srv):
    await srv.token("alice")
    mention = await send(srv, {"users": ["alice"]}, tags=["mention", "x"], category="social")
    await send(srv, {"users": ["alice"]}, tags=["other"])
    build = await send(srv, {"users": ["alice"]}, tags=["build"], category="ci")
    feed = await send(srv, {"all": True}, tags=["mention"], category="ci")
    # a tag that looks like the category, or sits in the title: only tags count
    await send(srv, {"users": ["alice"]}, category="mention", title='"mention"',
               data={"tags": ["mention"]})
    quoted = await send(srv, {"users": ["alice"]}, tags=['say "hi" \\ ünï'])
    long = await send(srv, {"users": ["alice"]}, tags=["mention"], body=LONG)
    for i in range(25):
        await send(srv, {"users": ["alice"]}, title=f"plain {i}")
    async with srv.http(await srv.token("alice")) as me:
        assert await walk(me, tag="mention", limit=2) == [long, feed, mention]
        assert await walk(me, tag=["build", "mention"], limit=10) == [long, feed, build, mention]
        assert await walk(me, tag="mention", category="ci", limit=10) == [feed]
        assert await walk(me, tag=["build", "mention"], category=["ci", "social"],
                          limit=10) == [feed, build, mention]
        assert await walk(me, tag='say "hi" \\ ünï', limit=10) == [quoted]
        assert await walk(me, tag="say", limit=10) == []


async def test_bodies_holding_a_nul_are_judged_too(srv):
    """PostgreSQL cannot read a body with a NUL escape as JSON: such bodies
    pass its SQL and are judged in Python, re-reading past them so that a
    page of 2 is still full and nothing is skipped or repeated."""
    want = []
    for i in range(3):
        want.append(await send(srv, {"users": ["alice"]}, tags=["t"], title=f"\x00 {i}"))
    for i in range(5):
        await send(srv, {"users": ["alice"]}, tags=["u"], title=f"nul\x00 {i}",
                   data={"k\x00": ["\x00"]})
    await send(srv, {"all": True}, tags=["u"], title="feed \x00")
    want.append(await send(srv, {"all": True}, tags=["t"], title="feed \x00 t"))
    async with srv.http(await srv.token("alice")) as me:
        assert await walk(me, tag="t", limit=2) == want[::-1]
        assert await walk(me, tag="t", category="default", limit=1) == want[::-1]


async def test_a_filtered_first_page_is_cached_apart(srv):
    """The first page is cached while the user has a stream on the node: a
    filtered one is kept under its filter, and a new item invalidates both."""
    token = await srv.token("alice")
    social = await send(srv, {"users": ["alice"]}, category="social")
    ws = await ws_connect(srv, token)
    await recv_events(ws, 1)  # hello: the stream is live, pages are cached
    async with srv.http(token) as me:
        for _ in range(2):
            assert (await page(me))[0] == [social]
            assert (await page(me, category="ci"))[0] == []
            assert (await page(me, category="social"))[0] == [social]
        hits = srv.service.hub.cache.hits
        assert (await page(me, category="ci"))[0] == []
        assert srv.service.hub.cache.hits == hits + 1
        ci = await send(srv, {"users": ["alice"]}, category="ci")
        assert (await page(me, category="ci"))[0] == [ci]
        assert (await page(me, category="social"))[0] == [social]
        assert (await page(me))[0] == [ci, social]
    await ws.close()


@pytest.mark.parametrize("params, field", [
    ({"category": "c" * 65}, "category"),
    ({"category": ""}, "category"),
    ({"category": "a b"}, "category"),
    ({"category": "*"}, "category"),
    ({"category": "ci\n"}, "category"),
    ({"category": "é"}, "category"),
    ({"category": [f"c{i}" for i in range(21)]}, "category"),
    ({"tag": "t" * 65}, "tag"),
    ({"tag": ""}, "tag"),
    ({"tag": "a\x00b"}, "tag"),
    ({"tag": "a\x7f"}, "tag"),
    ({"tag": [f"t{i}" for i in range(21)]}, "tag"),
    ({"tag": "ok", "before": "not-an-id"}, "before"),
    ({"category": "ci", "before": "0" * 27}, "before"),
    ({"category": "ci", "state": "new"}, "state"),
])
async def test_bad_filters_are_refused_naming_the_parameter(srv, params, field):
    await send(srv, {"users": ["alice"]}, category="ci")
    async with srv.http(await srv.token("alice")) as me, srv.http() as http:
        for client, path in ((me, "/v1/me/notifications"),
                             (http, "/v1/users/alice/notifications")):
            r = await client.get(path, params=params)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid"
            assert r.json()["error"]["field"] == field, r.text
        # twenty values of each are taken; the store is as it was
        r = await me.get("/v1/me/notifications",
                         params={"category": [f"c{i}" for i in range(19)] + ["ci"],
                                 "tag": [f"t{i}" for i in range(20)]})
        assert r.status_code == 200 and r.json()["items"] == []
        assert len((await page(me, category="ci"))[0]) == 1
