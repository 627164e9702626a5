"""/openapi.json matches tidings.api.openapi.OPERATIONS, and both match the router."""

from __future__ import annotations

import json
import re

import websockets
from starlette.routing import Route, WebSocketRoute

from tidings.api.openapi import OPERATIONS

SAMPLE = {"id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "topic": "guild:7", "user": "alice",
          "wid": "wh_0123456789abcdef", "sid": "AAAAAAAAAAAAAAAA",
          "jid": "01HZZZZZZZZZZZZZZZZZZZZZZZ.email.0"}
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
        params = {p["name"] for p in op.get("parameters", [])}
        assert params == set(re.findall(r"\{(\w+)\}", path))
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
