"""/openapi.json matches tidings.api.openapi.OPERATIONS, and both match the router."""

from __future__ import annotations

import json
import re
from pathlib import Path

import websockets
from starlette.routing import Route, WebSocketRoute

import tidings
from tidings.api.openapi import OPERATIONS

SAMPLE = {"id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "topic": "guild:7", "user": "alice",
          "wid": "wh_0123456789abcdef", "sid": "AAAAAAAAAAAAAAAA",
          "jid": "01HZZZZZZZZZZZZZZZZZZZZZZZ.email.0", "prefix": "0123abcd",
          "token": "WyJ0ZXN0YXBwIiwiYWxpY2UiLG51bGwsImVtYWlsIl0.AAAAAAAAAAAAAAAAAAAAAA"}
# Live-stream endpoints: a plain GET would start a stream (SSE) or is not a
# WebSocket handshake; they are checked separately below.
STREAMS = {"/v1/me/stream", "/v1/me/events"}


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], path)


async def test_document_lists_exactly_the_operations(server):
    async with server.http() as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    listed = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    expected = {(method, path) for method, path, *_ in OPERATIONS}
    assert len(expected) == len(OPERATIONS), "duplicate operation in OPERATIONS"
    assert listed == expected

    schemas = doc["components"]["schemas"]
    assert "Error" in schemas
    for method, path, summary, auth, model in OPERATIONS:
        op = doc["paths"][path][method]
        assert op["summary"] == summary
        if auth == "none":
            assert "security" not in op
        else:
            assert op["security"] == [{auth: []}]
            assert auth in doc["components"]["securitySchemes"]
        if model is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in schemas
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == set(re.findall(r"\{(\w+)\}", path))
        # real statuses, no 2XX/4XX ranges (Swagger UI calls a 202 "Undocumented"
        # when only 2XX is listed): one success, then the errors
        codes = list(op["responses"])
        assert all(re.fullmatch(r"[1-5]\d\d", c) for c in codes), (path, codes)
        assert len([c for c in codes if c < "300"]) == 1, (path, codes)
        if auth == "apiKey":  # too many failed key checks, /metrics and /dashboard too
            assert {"401", "403", "429"} <= set(codes), (path, codes)
    assert list(doc["paths"]["/v1/notifications"]["post"]["responses"])[0] == "202"
    assert list(doc["paths"]["/v1/users/{user}/tokens"]["post"]["responses"])[0] == "201"
    # Every $ref anywhere in the document resolves.
    for ref in re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', json.dumps(doc)):
        assert ref in schemas, ref


async def test_every_operation_is_routed(server):
    token = await server.token("alice")
    async with server.http() as http:
        for method, path, _summary, auth, model in OPERATIONS:
            if path in STREAMS:
                continue
            key = token if auth == "userToken" else server.api_key
            r = await http.request(method.upper(), _concrete(path),
                                   headers={"Authorization": f"Bearer {key}"},
                                   content=b"{}" if model is not None else None)
            assert r.status_code != 405, (method, path, r.text)
            if r.status_code == 404:
                err = r.json()["error"]
                assert err["message"] != "no such endpoint", (method, path)
            assert r.status_code < 500, (method, path, r.text)


async def test_stream_operations_are_routed(server):
    token = await server.token("alice")
    async with server.http() as http:
        async with http.stream("GET", "/v1/me/events", params={"token": token}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
    async with websockets.connect(server.ws_url + "/v1/me/stream") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        doc = json.loads(await ws.recv())
        assert (doc[0] if isinstance(doc, list) else doc)["type"] == "hello"


async def test_every_api_route_is_documented(server):
    """The reverse direction: a /v1 route missing from OPERATIONS fails here."""
    app = server.uvicorn.config.app
    routed = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if isinstance(route, WebSocketRoute):
            routed.add(("get", path))
        elif isinstance(route, Route):
            routed |= {(m.lower(), path) for m in route.methods if m != "HEAD"}
    documented = {(method, path) for method, path, *_ in OPERATIONS}
    api_routes = {(m, p) for m, p in routed if p.startswith("/v1/")}
    assert api_routes <= documented, api_routes - documented
    assert documented <= routed, documented - routed


def _pattern(schema: dict) -> re.Pattern:
    return re.compile(schema["pattern"])


async def test_the_document_states_the_identifier_patterns(server):
    """What the server refuses, the document says: a client generated from
    it knows a user id or topic before sending one (and every pattern is
    portable to ECMA regular expressions: no Python-only ``\\Z``)."""
    async with server.http() as http:
        doc = (await http.get("/openapi.json")).json()
    assert "\\Z" not in json.dumps(doc)
    params = {p["name"]: p["schema"] for ops in doc["paths"].values() for op in ops.values()
              for p in op.get("parameters", []) if p["in"] == "path"}
    for name in ("user", "topic", "id", "wid", "sid", "jid", "prefix", "token"):
        assert "pattern" in params[name], name
    good = {"user": ["alice", "team/ann", "x" * 128], "topic": ["guild:7", "a.b-c_d"],
            "id": ["01HZZZZZZZZZZZZZZZZZZZZZZZ"], "wid": ["wh_0123456789abcdef"],
            "sid": ["AAAAAAAAAAAAAAAA"], "jid": ["01HZZZZZZZZZZZZZZZZZZZZZZZ.email.0"],
            "prefix": ["0123abcd"], "token": [SAMPLE["token"]]}
    bad = {"user": ["", "alice\n", "a\x00", "x" * 129], "topic": ["has space", "t\n", "é"],
           "id": ["nope", "01hzzzzzzzzzzzzzzzzzzzzzzz", "01HZZZZZZZZZZZZZZZZZZZZZZZ\n"],
           "wid": ["wh_x", "wh_0123456789abcdef\n"], "sid": ["A" * 15, "A" * 16 + "\n"],
           "jid": ["a\x00", ""], "prefix": ["0123ABCD", "0123abc", "0123abcd\n", "tk_0123abcd"],
           "token": ["", "no-dot", "a.b.c", "a.b\n", "a+b.c", "a." + "b" * 1024]}
    for name, schema in params.items():
        if name not in good:
            continue
        for value in good[name]:
            assert _pattern(schema).search(value), (name, value)
            assert len(value) <= schema.get("maxLength", 10**6)
        for value in bad[name]:
            assert not (_pattern(schema).search(value)
                        and schema.get("minLength", 0) <= len(value)
                        <= schema.get("maxLength", 10**6)), (name, value)
    users = doc["components"]["schemas"]["Target"]["properties"]["users"]
    item = users["anyOf"][0]["items"] if "anyOf" in users else users["items"]
    assert not _pattern(item).search("alice\n") and _pattern(item).search("alice")
    topic = doc["components"]["schemas"]["Target"]["properties"]["topic"]
    topic = topic["anyOf"][0] if "anyOf" in topic else topic
    assert _pattern(topic).search("guild:7") and not _pattern(topic).search("guild 7")


async def test_405_lists_every_method_of_the_path(server):
    async with server.http() as http:
        for path, allowed in [("/v1/notifications/01HZZZZZZZZZZZZZZZZZZZZZZZ",
                               {"GET", "PATCH", "DELETE"}),
                              ("/v1/topics/t/subscribers/alice", {"PUT", "DELETE"}),
                              ("/v1/users/alice/email", {"GET", "PUT", "DELETE"}),
                              ("/v1/webhooks", {"GET", "POST"}),
                              ("/v1/me/preferences", {"GET", "PUT", "PATCH"})]:
            r = await http.request("POST" if "POST" not in allowed else "PATCH", path)
            assert r.status_code == 405, (path, r.text)
            got = {m.strip() for m in r.headers["allow"].split(",")}
            assert got - {"HEAD", "OPTIONS"} == allowed, (path, got)
            assert r.json()["error"]["code"] == "method_not_allowed"


# Every operation that reads the query string, and what it reads.
QUERY = {
    ("get", "/v1/topics/{topic}"): {"limit"},
    ("get", "/v1/users/{user}/notifications"): {"limit", "before", "state", "category", "tag",
                                                "locale"},
    ("get", "/v1/users/{user}/notifications/{id}/group"): {"limit", "before", "locale"},
    ("get", "/v1/me/notifications"): {"limit", "before", "state", "category", "tag", "locale"},
    ("get", "/v1/me/notifications/{id}/group"): {"limit", "before", "locale"},
    ("get", "/v1/notifications/{id}/timeline"): {"user"},
    ("get", "/v1/outbound/dead"): {"limit", "before"},
    ("get", "/dashboard/api/notification"): {"id", "user", "app"},
    ("get", "/v1/audit"): {"limit", "before", "action", "since"},
    ("get", "/dashboard/api/audit"): {"limit", "before", "action", "since"},
    ("get", "/dashboard/api/snapshot"): {"view"},
    ("get", "/dashboard/api/history"): {"view"},
    ("get", "/v1/me/events"): {"cursor", "token", "locale"},
    ("get", "/v1/me/stream"): {"cursor", "locale"},
    ("get", "/v1/me/categories"): {"locale"},
}


def _refused(r, name: str) -> bool:
    return r.status_code == 422 and r.json()["error"].get("field") == name


async def test_query_parameters_are_documented_as_the_routes_read_them(server):
    """The document lists each route's query parameters, and its bounds are
    the server's: the documented maximum (page_max, a setting, for inbox
    pages) and every documented state pass, one past them is a 422 naming
    the parameter."""
    token = await server.token("alice")
    async with server.http() as http:
        doc = (await http.get("/openapi.json")).json()
        listed = {(method, path): {p["name"] for p in op.get("parameters", [])
                                   if p["in"] == "query"}
                  for path, ops in doc["paths"].items() for method, op in ops.items()}
        assert {k: v for k, v in listed.items() if v} == QUERY
        inbox = doc["paths"]["/v1/me/notifications"]["get"]["parameters"]
        limit = next(p["schema"] for p in inbox if p["name"] == "limit")
        assert limit == {"type": "integer", "minimum": 1, "default": 50,
                         "maximum": server.service.settings.limits.page_max}
        checked = 0
        for method, path in QUERY:
            if path in STREAMS:
                continue
            op = doc["paths"][path][method]
            scheme = next(iter(op["security"][0]))
            key = token if scheme == "userToken" else server.api_key
            url = _concrete(path)
            params = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
            base = {"user": "alice"} if params.get("user", {}).get("required") else {}
            for name, param in params.items():
                schema, tries = param["schema"], []
                if schema.get("type") == "integer":
                    tries = [(schema["maximum"], True), (schema["minimum"], True),
                             (schema["maximum"] + 1, False), (schema["minimum"] - 1, False),
                             ("ten", False)]
                elif "enum" in schema:
                    tries = [(v, True) for v in schema["enum"]] + [("bogus", False)]
                elif schema.get("type") == "array":  # repeated: ?tag=a&tag=b
                    most = [f"v{i}" for i in range(schema["maxItems"])]
                    tries = [(most, True), (["v0"], True), ([*most, "one-more"], False),
                             ([""], False), (["v0", "v" * 65], False)]
                elif param["required"]:
                    r = await http.get(url, headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code in (404, 422), (path, name, r.text)
                    assert r.json()["error"]["field"] == name, (path, name)
                for value, ok in tries:
                    r = await http.get(url, params={**base, name: value},
                                       headers={"Authorization": f"Bearer {key}"})
                    assert _refused(r, name) is not ok, (path, name, value, r.text)
                    checked += 1
    assert checked > 30, checked


def test_query_parameters_are_read_through_their_declarations():
    """A route reading ``?name=`` by hand (not through a ``Query`` it names
    with ``@takes``) would be missing from the document.  The one exception:
    the dashboard's login page, a browser page the document does not list."""
    root = Path(tidings.__file__).parent
    by_hand = re.compile(r"""(query_params|query|_query\(scope\))(\.get\(|\[)\s*["']([^"']*)""")
    found = {(str(path.relative_to(root)), m.group(3))
             for path in root.rglob("*.py") for m in by_hand.finditer(path.read_text())}
    assert found == {("dashboard/routes.py", "reason")}


async def test_conditional_reads_and_writes_are_documented(server):
    """The ETag, the 304 and If-None-Match of the reads a client asks again;
    If-Match and the 412 of the preferences' writes."""
    async with server.http() as http:
        doc = (await http.get("/openapi.json")).json()
    pattern = re.compile(
        doc["paths"]["/v1/me/preferences"]["get"]["parameters"][0]["schema"]["pattern"])
    for path in ("/v1/me/preferences", "/v1/users/{user}/preferences", "/v1/me/categories",
                 "/v1/categories", "/v1/caps"):
        op = doc["paths"][path]["get"]
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "header"]
        assert names == ["If-None-Match"], path
        assert "ETag" in op["responses"]["200"]["headers"]
        assert "ETag" in op["responses"]["304"]["headers"]
        assert "content" not in op["responses"]["304"] and "400" in op["responses"]
    for path in ("/v1/me/preferences", "/v1/users/{user}/preferences"):
        for method in ("put", "patch"):
            op = doc["paths"][path][method]
            assert [p["name"] for p in op["parameters"] if p["in"] == "header"] == ["If-Match"]
            assert "412" in op["responses"] and "304" not in op["responses"]
    for value in ('"a"', 'W/"a", "b"', "*"):
        assert pattern.match(value), value
    assert not pattern.match('"a" "b"')
