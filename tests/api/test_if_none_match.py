"""If-None-Match on the documents a client reads again and again (RFC 9110
§13.1.2): a GET naming the current ETag -- in a list, weak or not, or ``*`` --
is a 304 with the tag and no body; any other a 200 with the document; a
malformed one a 400.  The preferences on both routes and both stores, the
categories and the caps (docs/channels.md#reading-again-only-what-changed)."""

from __future__ import annotations

import pytest

from tidings.client import AsyncClient

ME = "/v1/me/preferences"
USER = "/v1/users/alice/preferences"
START = {"categories": {"promo": {"push": False}}}


async def _tag(http, path: str) -> str:
    r = await http.get(path)
    assert r.status_code == 200 and r.headers["etag"], r.text
    return r.headers["etag"]


def _not_modified(r, tag: str) -> None:
    assert r.status_code == 304, r.text
    assert r.headers["etag"] == tag and r.content == b""
    assert "content-type" not in r.headers


@pytest.mark.parametrize("path", [ME, USER])
async def test_a_read_of_the_preferences_the_client_has_is_a_304(each_store, path):
    async with each_store.http() as server, \
            each_store.http(await each_store.token("alice")) as me:
        http = me if path == ME else server
        assert (await http.put(path, json=START)).status_code == 200
        tag = await _tag(http, path)
        for value in (tag, f'"other", {tag}', f"W/{tag}", f'"x" ,W/{tag}', "*"):
            _not_modified(await http.get(path, headers={"If-None-Match": value}), tag)
        # a tag of another document, or the other user's: the document
        for value in ('"other"', f'W/"{tag[1:-1]}x"', '""'):
            r = await http.get(path, headers={"If-None-Match": value})
            assert r.status_code == 200 and r.json() == START, (value, r.text)
            assert r.headers["etag"] == tag

        # changed elsewhere: the tag the client holds gives the new document
        assert (await server.patch(USER, json={"quiet_hours": None,
                                               "categories": {"x": {"email": False}}})
                ).status_code == 200
        r = await http.get(path, headers={"If-None-Match": tag})
        assert r.status_code == 200 and r.json()["categories"]["x"] == {"email": False}
        assert r.headers["etag"] != tag
        _not_modified(await http.get(path, headers={"If-None-Match": r.headers["etag"]}),
                      r.headers["etag"])


async def test_a_user_never_written_has_the_defaults_tag(each_store):
    """And If-None-Match is read on GET only: a write is never a 304."""
    async with each_store.http(await each_store.token("bob")) as bob:
        tag = await _tag(bob, ME)
        _not_modified(await bob.get(ME, headers={"If-None-Match": tag}), tag)
        _not_modified(await bob.get(ME, headers={"If-None-Match": "*"}), tag)
        r = await bob.put(ME, json={}, headers={"If-None-Match": tag})
        assert r.status_code == 200 and r.json() == {} and r.headers["etag"] == tag


@pytest.mark.parametrize("value", ["abc", '"abc', '"a",', ',"a"', '"a" "b"', "**", "",
                                   '"a", *', 'W/ "a"', ", ".join(['"x"'] * 65)])
@pytest.mark.parametrize("path", [ME, USER, "/v1/me/categories", "/v1/categories", "/v1/caps"])
async def test_a_malformed_if_none_match_is_a_400(server, value, path):
    async with server.http() as key, server.http(await server.token("alice")) as me:
        http = me if path.startswith("/v1/me/") else key
        r = await http.get(path, headers={"If-None-Match": value})
        assert r.status_code == 400, (value, r.text)
        error = r.json()["error"]
        assert error["code"] == "malformed_if_none_match" and error["field"] == "If-None-Match"
        assert "If-None-Match" in error["message"]


async def test_the_categories_and_the_caps_answer_304_until_they_change(each_store):
    async with each_store.http() as key, each_store.http(await each_store.token("alice")) as me:
        for http, path in ((key, "/v1/categories"), (me, "/v1/me/categories"),
                           (key, "/v1/caps")):
            tag = await _tag(http, path)
            _not_modified(await http.get(path, headers={"If-None-Match": f"W/{tag}"}), tag)
        before = {path: await _tag(http, path) for http, path in
                  ((key, "/v1/categories"), (me, "/v1/me/categories"), (key, "/v1/caps"))}
        r = await key.put("/v1/categories", json={"categories": [
            {"id": "social", "label": "Social"}]})
        assert r.status_code == 200, r.text
        r = await key.put("/v1/caps", json={"categories": {"social": {"max": 3, "per": 3600}}})
        assert r.status_code == 200, r.text
        for http, path in ((key, "/v1/categories"), (me, "/v1/me/categories"),
                           (key, "/v1/caps")):
            r = await http.get(path, headers={"If-None-Match": before[path]})
            assert r.status_code == 200 and r.headers["etag"] != before[path], r.text
            assert "social" in r.text
            _not_modified(await http.get(path, headers={"If-None-Match": r.headers["etag"]}),
                          r.headers["etag"])


async def test_a_browser_may_send_if_none_match(server):
    origin = "https://app.example.com"
    async with server.http(await server.token("alice")) as me:
        r = await me.options(ME, headers={"Origin": origin,
                                          "Access-Control-Request-Method": "GET",
                                          "Access-Control-Request-Headers": "if-none-match"})
        assert r.status_code in (200, 204), r.text
        assert "If-None-Match" in r.headers["access-control-allow-headers"]
        tag = await _tag(me, ME)
        r = await me.get(ME, headers={"Origin": origin, "If-None-Match": tag})
        assert r.status_code == 304 and "ETag" in r.headers["access-control-expose-headers"]


async def test_the_python_client_reads_again_only_what_changed(each_store):
    async with AsyncClient(each_store.url, each_store.api_key,
                           token=await each_store.token("alice")) as client:
        prefs = await client.get_preferences()
        assert await client.get_preferences(if_none_match=prefs.etag) is None
        assert await client.get_user_preferences("alice", if_none_match=prefs.etag) is None
        await client.set_user_preferences("alice", START)
        fresh = await client.get_preferences(if_none_match=prefs.etag)
        assert fresh == START and fresh.etag != prefs.etag
        again = await client.get_user_preferences("alice", if_none_match=prefs.etag)
        assert again == START and again.etag == fresh.etag
