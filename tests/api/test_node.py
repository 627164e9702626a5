"""The node's operator endpoints (tidings/api/nodes.py): who may call them,
what bodies they take, and when they refuse.  What a drain and a shed do to
streams: tests/gateway/test_shedding.py."""

from __future__ import annotations

import os

import pytest

from tests.conftest import run_server

ROUTES = [("GET", "/v1/node"), ("POST", "/v1/node/drain"), ("POST", "/v1/node/undrain"),
          ("POST", "/v1/node/shed")]


@pytest.fixture
async def operated(tmp_path):
    async with run_server(tmp_path, operator_app="testapp") as server:
        yield server


async def test_only_an_admin_key_of_the_operator_app_may(operated):
    server = operated
    publisher = await server.service.create_api_key("testapp", ("publish", "read"))
    _, tenant = await server.new_app("tenant")  # an admin key of another app
    async with server.http() as http:
        for method, path in ROUTES:
            body = {"fraction": 0.5} if path.endswith("shed") else None
            r = await http.request(method, path, json=body, headers={"Authorization": ""})
            assert r.status_code == 401, (path, r.text)
            r = await http.request(method, path, json=body,
                                   headers={"Authorization": f"Bearer {publisher}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope", path
            r = await http.request(method, path, json=body,
                                   headers={"Authorization": f"Bearer {tenant}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "not_operator", path
        assert server.service.hub.draining is False
        assert (await http.get("/readyz")).status_code == 200


async def test_no_operator_app_no_node_operations(tmp_path):
    async with run_server(tmp_path, operator_app=None) as server, server.http() as http:
        r = await http.post("/v1/node/drain", json={"over": 0})
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_operator"


async def test_the_node_state(operated):
    async with operated.http() as http:
        r = await http.get("/v1/node")
    assert r.status_code == 200
    assert r.json() == {"node": operated.uvicorn.config.app.state.node, "pid": os.getpid(),
                        "draining": False, "shutting_down": False, "streams": 0, "plan": None}


@pytest.mark.parametrize("path,body,field", [
    ("drain", {"over": -1}, "over"),
    ("drain", {"over": 3601}, "over"),
    ("drain", {"over": "soon"}, "over"),
    ("drain", {"over": True}, "over"),
    ("drain", {"later": 1}, "later"),
    ("drain", [], None),
    ("shed", {}, None),  # named in the message: "missing required field `fraction`"
    ("shed", {"fraction": 1.5}, "fraction"),
    ("shed", {"fraction": -0.1}, "fraction"),
    ("shed", {"fraction": "half"}, "fraction"),
    ("shed", {"fraction": 0.5, "over": 1e9}, "over"),
    ("shed", {"fraction": 0.5, "spread": 1}, "spread"),
])
async def test_bad_bodies_are_422(operated, path, body, field):
    async with operated.http() as http:
        r = await http.post(f"/v1/node/{path}", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid"
        assert r.json()["error"].get("field") == field
        assert (await http.get("/readyz")).status_code == 200  # nothing was done


async def test_malformed_and_missing_bodies_are_400(operated):
    async with operated.http() as http:
        r = await http.post("/v1/node/drain", content=b"{")
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
        r = await http.post("/v1/node/shed")
        assert r.status_code == 400 and r.json()["error"]["code"] == "empty_body"
        r = await http.post("/v1/node/shed", content=b"x" * 5000)
        assert r.status_code == 413


async def test_no_shed_while_draining_and_no_undrain_while_shutting_down(operated):
    async with operated.http() as http:
        assert (await http.post("/v1/node/drain", json={"over": 0})).status_code == 202
        r = await http.post("/v1/node/shed", json={"fraction": 0.5})
        assert r.status_code == 409 and r.json()["error"]["code"] == "draining"
        operated.uvicorn.config.app.state.draining = True  # as SIGTERM sets it
        r = await http.post("/v1/node/undrain")
        assert r.status_code == 409 and r.json()["error"]["code"] == "shutting_down"
        state = (await http.get("/v1/node")).json()
        assert state["draining"] is True and state["shutting_down"] is True
        assert (await http.get("/readyz")).status_code == 503
