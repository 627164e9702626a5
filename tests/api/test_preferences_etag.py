"""ETag and If-Match on .../preferences: a client that reads the whole
document, lets the user edit it and writes it back cannot undo a change made
in between (an unsubscribe link, another device); the condition is checked
under the store's lock, so it holds against concurrent writers; on both stores
(docs/channels.md#writing-back-what-was-read)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tidings.client import AsyncClient, TidingsAPIError
from tidings.core.unsubscribe import Link, issue

ME = "/v1/me/preferences"
USER = "/v1/users/alice/preferences"
START = {"categories": {"promo": {"push": False}}}


async def _written(live, body: dict = START) -> str:
    """Store ``body`` as alice's preferences; the ETag they have now."""
    async with live.http() as http:
        r = await http.put(USER, json=body)
        assert r.status_code == 200, r.text
        return r.headers["etag"]


async def test_a_read_gives_an_etag_that_a_write_takes_and_renews(each_store):
    async with each_store.http() as http, \
            each_store.http(await each_store.token("alice")) as me:
        fresh = await me.get(ME)  # never written: the defaults have a tag too
        assert fresh.status_code == 200 and fresh.json() == {}
        tag = fresh.headers["etag"]
        assert tag.startswith('"') and tag.endswith('"') and len(tag) == 34
        assert (await http.get(USER)).headers["etag"] == tag  # one document, two routes

        r = await me.put(ME, json=START, headers={"If-Match": tag})
        assert r.status_code == 200, r.text
        assert r.json() == START and r.headers["etag"] != tag
        tag = r.headers["etag"]
        read = await http.get(USER)
        assert read.headers["etag"] == tag and read.content == r.content

        r = await http.patch(USER, json={"quiet_hours": None,
                                         "categories": {"social": {"email": False}}},
                             headers={"If-Match": f'"nope", {tag}'})  # any tag of a list
        assert r.status_code == 200, r.text
        assert r.json()["categories"]["social"] == {"email": False}
        assert r.headers["etag"] not in (tag, None)
        # the same document written again keeps its tag; without If-Match, as before
        same = await me.put(ME, json=r.json())
        assert same.status_code == 200 and same.headers["etag"] == r.headers["etag"]


async def _unsubscribed(live) -> None:
    """alice follows an e-mail's unsubscribe link for "social"."""
    link = issue(live.service.outbound.link_secret, Link(live.app, "alice", "social", "email"))
    async with live.http() as http:
        r = await http.post(f"/v1/unsubscribe/{link}")
        assert r.status_code == 200 and r.json()["changed"], r.text


async def _put_elsewhere(live) -> None:
    """Another device of alice's replaces the document."""
    async with live.http(await live.token("alice")) as me:
        r = await me.put(ME, json={"quiet_hours": {"start": "22:00", "end": "07:00"}})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("between", [_unsubscribed, _put_elsewhere])
@pytest.mark.parametrize(("method", "path"), [("PUT", ME), ("PATCH", ME), ("PUT", USER),
                                              ("PATCH", USER)])
async def test_a_stale_etag_is_refused_and_changes_nothing(each_store, between, method, path):
    read = await _written(each_store)
    await between(each_store)
    async with each_store.http() as http, \
            each_store.http(await each_store.token("alice")) as me:
        now = await http.get(USER)
        assert now.headers["etag"] != read
        client = me if path == ME else http
        # a change of the document as it is now: one it already holds succeeds (below)
        r = await client.request(method, path, json={"categories": {"promo": {"email": False}}},
                                 headers={"If-Match": read})
        assert r.status_code == 412, r.text
        error = r.json()["error"]
        assert error["code"] == "precondition_failed" and error["field"] == "If-Match"
        assert read in error["message"]
        after = await http.get(USER)
        assert after.content == now.content and after.headers["etag"] == now.headers["etag"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_writers_sending_the_same_etag_at_once_one_wins(each_store, method):
    """Eight devices read the same document and write their edit at once:
    the first to hold the user's lock changes it, every other is a 412."""
    tag = await _written(each_store)
    async with each_store.http(await each_store.token("alice")) as me:
        async def write(i: int):
            body = {"categories": {"promo": {"push": False}, f"c{i}": {"email": False}}}
            return await me.request(method, ME, json=body, headers={"If-Match": tag})

        answers = await asyncio.gather(*(write(i) for i in range(8)))
        won = [r for r in answers if r.status_code == 200]
        assert len(won) == 1, [r.status_code for r in answers]
        assert sorted(r.status_code for r in answers) == [200] + [412] * 7
        stored = await me.get(ME)
        assert stored.content == won[0].content
        assert stored.headers["etag"] == won[0].headers["etag"]
        assert len(stored.json()["categories"]) == 2


async def test_if_match_star_matches_a_user_never_written_too(each_store):
    """A user's preferences always exist (the defaults until a write), so
    ``*`` always matches: GET answers 200 with a representation (RFC 9110
    §13.1.1)."""
    async with each_store.http(await each_store.token("bob")) as bob:
        defaults = (await bob.get(ME)).headers["etag"]
        r = await bob.patch(ME, json={"categories": {"promo": {"email": False}}},
                            headers={"If-Match": "*"})
        assert r.status_code == 200, r.text
        assert r.headers["etag"] not in (defaults, None)
        r = await bob.put(ME, json={}, headers={"If-Match": "*"})
        assert r.status_code == 200 and r.json() == {}
        assert r.headers["etag"] == defaults  # the defaults again, the defaults' tag


async def test_a_weak_or_foreign_etag_never_matches(each_store):
    tag = await _written(each_store)
    async with each_store.http() as http:
        for value in (f"W/{tag}", '"0123"', '""', tag.upper().replace('"', "'") + ', "x"'):
            r = await http.put(USER, json={}, headers={"If-Match": value})
            expected = 400 if "'" in value else 412
            assert r.status_code == expected, (value, r.text)
        assert (await http.get(USER)).json() == START


@pytest.mark.parametrize("value", ["abc", '"abc', 'abc"', '"a",', ',"a"', '"a" "b"', "**",
                                   "", '"a", *', 'W/ "a"', '"a\\"b"',
                                   ", ".join(['"x"'] * 65)])
async def test_a_malformed_if_match_is_a_400_and_changes_nothing(each_store, value):
    await _written(each_store)
    async with each_store.http(await each_store.token("alice")) as me:
        for method in ("PUT", "PATCH"):
            r = await me.request(method, ME, json={}, headers={"If-Match": value})
            assert r.status_code == 400, (value, r.text)
            error = r.json()["error"]
            assert error["code"] == "malformed_if_match" and error["field"] == "If-Match"
            assert "If-Match" in error["message"]
        assert (await me.get(ME)).json() == START


async def test_a_browser_may_send_if_match_and_read_the_etag(server):
    origin = "https://app.example.com"
    async with server.http(await server.token("alice")) as me:
        r = await me.options(ME, headers={"Origin": origin,
                                          "Access-Control-Request-Method": "PUT",
                                          "Access-Control-Request-Headers": "if-match"})
        assert r.status_code in (200, 204), r.text
        assert "If-Match" in r.headers["access-control-allow-headers"]
        r = await me.get(ME, headers={"Origin": origin})
        assert "ETag" in r.headers["access-control-expose-headers"]


async def test_the_python_client_reads_the_etag_and_sends_if_match(each_store):
    async with AsyncClient(each_store.url, each_store.api_key,
                           token=await each_store.token("alice")) as client:
        prefs = await client.get_preferences()
        assert prefs == {} and prefs.etag
        saved = await client.set_preferences(START, if_match=prefs.etag)
        assert saved == START and saved.etag != prefs.etag
        with pytest.raises(TidingsAPIError) as stale:
            await client.update_user_preferences(
                "alice", {"categories": {"social": {"email": False}}}, if_match=prefs.etag)
        assert (stale.value.status, stale.value.code) == (412, "precondition_failed")
        mine = await client.get_user_preferences("alice")
        assert mine.etag == saved.etag
        changed = await client.update_preferences({"categories": {"promo": None}},
                                                  if_match=mine.etag)
        with pytest.raises(TidingsAPIError) as again:
            await client.set_user_preferences("alice", mine, if_match=mine.etag)
        assert again.value.status == 412
        assert (await client.get_preferences()).etag == changed.etag


NIGHT = {"start": "22:00", "end": "07:00"}


@pytest.mark.parametrize(("method", "body"), [
    ("PUT", {"categories": {"promo": {"push": False}, "social": {"email": False}},
             "quiet_hours": NIGHT}),
    ("PATCH", {"categories": {"social": {"email": False}}, "quiet_hours": NIGHT}),
])
@pytest.mark.parametrize("path", [ME, USER])
async def test_a_write_sent_again_after_it_was_made_succeeds(each_store, method, body, path):
    """A write whose answer was lost is sent again with the tag it was sent
    with, stale now that it made its change: the preferences are already
    what it asks for, so it succeeds with their tag (RFC 9110 §13.1.1).
    Once another writer changed what it sets, it is a 412 again: sending it
    then would undo that change."""
    tag = await _written(each_store)
    async with each_store.http() as http, \
            each_store.http(await each_store.token("alice")) as me:
        client = me if path == ME else http
        first = await client.request(method, path, json=body, headers={"If-Match": tag})
        assert first.status_code == 200 and first.headers["etag"] != tag, first.text
        again = await client.request(method, path, json=body, headers={"If-Match": tag})
        assert again.status_code == 200, again.text
        assert again.content == first.content and again.headers["etag"] == first.headers["etag"]

        r = await http.patch(USER, json={"quiet_hours": {"start": "23:00", "end": "06:00"}})
        assert r.status_code == 200, r.text
        now = await http.get(USER)
        r = await client.request(method, path, json=body, headers={"If-Match": tag})
        assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
        assert (await http.get(USER)).content == now.content


async def test_a_patch_made_already_keeps_a_change_made_beside_it(each_store):
    """A patch sent again after another writer changed something it does not
    name: applied to the preferences as they are, it changes nothing, so it
    succeeds, writes nothing and answers them with the other change."""
    tag = await _written(each_store)
    async with each_store.http(await each_store.token("alice")) as me:
        patch = {"categories": {"social": {"email": False}}}
        assert (await me.patch(ME, json=patch, headers={"If-Match": tag})).status_code == 200
        async with each_store.http() as http:
            assert (await http.patch(USER, json={"quiet_hours": {
                "start": "22:00", "end": "07:00"}})).status_code == 200
            now = await http.get(USER)
        r = await me.patch(ME, json=patch, headers={"If-Match": tag})
        assert r.status_code == 200, r.text
        assert r.content == now.content and r.headers["etag"] == now.headers["etag"]
        assert r.json()["quiet_hours"]["start"] == "22:00"
        # a PUT of what the patch made is not what they are now: refused
        r = await me.put(ME, json={"categories": {**START["categories"], **patch["categories"]}},
                         headers={"If-Match": tag})
        assert r.status_code == 412, r.text


class _AnswerLost(httpx.AsyncBaseTransport):
    """Real HTTP to the server, but the answer to the first write never
    reaches the client: the connection drops after the server committed."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method in ("PUT", "PATCH") and not self.lost:
            await response.aread()
            await response.aclose()
            self.lost += 1
            raise httpx.ReadError("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_the_python_client_retries_a_write_whose_answer_was_lost(each_store, method):
    """The client sends a PUT, or a PATCH with If-Match, again when the
    connection drops before the answer: the retry succeeds, once written."""
    tag = await _written(each_store)
    transport = _AnswerLost()
    async with AsyncClient(each_store.url, each_store.api_key, transport=transport) as client:
        body = {"categories": {"promo": {"push": False}, "social": {"email": False}}}
        write = client.set_user_preferences if method == "PUT" else \
            client.update_user_preferences
        saved = await write("alice", body, if_match=tag)
        assert transport.lost == 1
        assert saved == body and saved.etag != tag
        assert (await client.get_user_preferences("alice")).etag == saved.etag


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_writers_sending_the_same_write_at_once_all_succeed(each_store, method):
    """Eight copies of one write with one tag (a client's retries racing its
    first attempt): the first to hold the lock makes it, and every other
    finds it made."""
    tag = await _written(each_store)
    body = {"categories": {"promo": {"push": False}, "social": {"email": False}}}
    async with each_store.http(await each_store.token("alice")) as me:
        answers = await asyncio.gather(*(
            me.request(method, ME, json=body, headers={"If-Match": tag}) for _ in range(8)))
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert len({(r.content, r.headers["etag"]) for r in answers}) == 1
        assert (await me.get(ME)).json() == body
