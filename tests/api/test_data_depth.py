"""A notification's ``data`` nests at most 32 levels (tidings.core.models.DATA_MAX_DEPTH).

``data`` is the one field of free JSON.  Nested deeper than that, it was
taken while the decoder's stack held, and then broke whatever read it on a
deeper stack: a publish nested some 980 levels was a 202 whose notification
answered 500 (with a traceback in the log) to ``GET /v1/notifications/{id}``,
the dashboard and ``PATCH``, for good; a level more was a 500 at the publish
itself.  Now any nesting past the limit is a 422 on every route that takes
``data``, and nothing is stored."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.api.test_hostile import assert_error
from tidings.core.models import DATA_MAX_DEPTH

PUBLISH = "/v1/notifications"


def nested(levels: int) -> dict:
    """A ``data`` object ``levels`` deep: itself the first level, then arrays."""
    value: object = "deep"
    for _ in range(levels - 1):
        value = [value]
    return {"d": value}


def raw(levels: int, **fields) -> bytes:
    """A publish whose data nests ``levels`` deep, as bytes."""
    inner = b"[" * (levels - 1) + b'"deep"' + b"]" * (levels - 1)
    head = json.dumps({"to": {"users": ["alice"]}, "title": "t", **fields})[:-1].encode()
    return head + b', "data": {"d": ' + inner + b"}}"


def test_nested_counts_levels_as_documented():
    assert json.dumps(nested(1)) == '{"d": "deep"}'
    assert json.dumps(nested(3)) == '{"d": [["deep"]]}'
    assert json.loads(raw(3))["data"] == nested(3)
    assert json.loads(raw(40))["data"] == nested(40)


async def _reads(server, http: httpx.AsyncClient, nid: str) -> None:
    """Every read of the notification works."""
    token = await server.token("alice")
    for path in (f"/v1/notifications/{nid}", f"/v1/notifications/{nid}/timeline?user=alice",
                 f"/dashboard/api/notification?id={nid}&user=alice",
                 "/v1/users/alice/notifications"):
        assert (await http.get(path)).status_code == 200, path
    r = await http.get("/v1/me/notifications", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


async def test_data_at_the_limit_is_taken_and_read_back(server):
    async with server.http() as http:
        r = await http.post(PUBLISH, content=raw(DATA_MAX_DEPTH),
                            headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        nid = r.json()["id"]
        await _reads(server, http, nid)
        r = await http.get("/v1/users/alice/notifications")
        assert r.json()["items"][0]["notification"]["data"] == nested(DATA_MAX_DEPTH)


@pytest.mark.parametrize("levels", [DATA_MAX_DEPTH + 1, 100])
async def test_data_nested_past_the_limit_is_refused_on_every_route(server, levels):
    body = raw(levels)
    async with server.http() as http:
        r = await http.post(PUBLISH, content=body, headers={"content-type": "application/json"})
        assert_error(r, 422, "invalid", "data")
        assert f"data nests more than {DATA_MAX_DEPTH} levels" in r.json()["error"]["message"]
        r = await http.post(f"{PUBLISH}/batch", content=b'{"notifications": [' + body + b"]}",
                            headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        (result,) = r.json()["results"]
        assert result["status"] == "error"
        assert (result["error"]["code"], result["error"]["field"]) == ("invalid", "data")

        # a correction: of a published notification, and of a scheduled one
        r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "title": "t",
                                           "data": {"keep": 1}})
        published = r.json()["id"]
        at = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        r = await http.post(PUBLISH, json={"to": {"users": ["alice"]}, "title": "later",
                                           "deliver_at": at, "data": {"keep": 2}})
        scheduled = r.json()["id"]
        for nid in (published, scheduled):
            patch = b'{"title": "u", "data": ' + body[body.index(b'{"d"'):-1] + b"}"
            r = await http.patch(f"{PUBLISH}/{nid}", content=patch,
                                 headers={"content-type": "application/json"})
            assert_error(r, 422, "invalid", "data")
        for nid, title, data in ((published, "t", {"keep": 1}),
                                 (scheduled, "later", {"keep": 2})):
            r = await http.get(f"{PUBLISH}/{nid}")
            assert r.status_code == 200, r.text
            note = r.json()["notification"]
            assert (note["title"], note["data"]) == (title, data)  # unchanged
        # nothing past the limit was stored: every read works
        await _reads(server, http, published)
        r = await http.get("/v1/users/alice/notifications")
        assert [n["notification"]["data"] for n in r.json()["items"]] == [{"keep": 1}]


async def test_no_depth_is_a_202_that_breaks_or_a_500(server):
    """Every depth from the limit to past the decoder's: a 422, or the
    decoder's 400 (where it gives up depends on how deep its stack already is:
    on main a window of depths just below it was a 202 whose every read
    answered 500, and a level or two more a 500 at the publish)."""
    async with server.http() as http:
        for levels in range(DATA_MAX_DEPTH + 1, 1001):
            r = await http.post(PUBLISH, content=raw(levels),
                                headers={"content-type": "application/json"})
            assert r.status_code in (400, 422), (levels, r.status_code, r.text)
            assert r.json()["error"]["code"] == ("invalid" if r.status_code == 422
                                                 else "malformed_json"), levels
        r = await http.get("/v1/users/alice/notifications")
        assert r.status_code == 200 and r.json()["items"] == []
