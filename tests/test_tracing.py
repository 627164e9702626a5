"""OpenTelemetry traces: off and free without OTEL_EXPORTER_OTLP_ENDPOINT; on,
one publish is one trace from the HTTP request to each device write, linked
across nodes through the broker message (the SDK's in-memory exporter, two
nodes over PostgreSQL and Redis), outbound attempts are spans, and a real
`tidings serve` exports to an OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import websockets
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import run_server, two_nodes
from tests.gateway.live import recv_events, ws_connect
from tests.test_durability import _free_port, read_first_start
from tidings import tracing
from tidings.config import WebhookConfig


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


def test_off_without_the_endpoint_and_nothing_imported(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = (
        "import sys\n"
        "from tidings.api.app import create_app\n"
        "from tidings.config import Settings\n"
        "from tidings import tracing\n"
        f"create_app(Settings(data={str(tmp_path)!r}))\n"
        "assert tracing.TRACER is None\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "from tidings.broker.base import Personal\n"
        "assert Personal('e', 1, b'{}').trace == ''\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


async def _wait_for(exporter, names: set[str], timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {s.name for s in exporter.get_finished_spans()}
        if names <= found:
            return exporter.get_finished_spans()
        await asyncio.sleep(0.05)
    raise AssertionError(f"spans {names - found} never ended; got {found}")


@pytest.mark.timeout(60)
async def test_one_publish_is_one_trace_across_two_nodes(tmp_path, spans):
    async with two_nodes(tmp_path) as (a, b):
        ws = await ws_connect(b, await b.token("tess"))  # the device is on node b
        try:
            await recv_events(ws, 1)  # hello
            async with a.http() as http:  # the publish goes to node a
                r = await http.post("/v1/notifications",
                                    json={"to": {"users": ["tess"]}, "title": "traced"})
                assert r.status_code == 202
            (event,) = await recv_events(ws, 1)
            assert event["notification"]["title"] == "traced"
        finally:
            await ws.close()
        found = await _wait_for(spans, {"publish", "store.commit", "broker.publish",
                                        "deliver", "device.write"})
    by_name = {s.name: s for s in found}
    publish, commit, broker = by_name["publish"], by_name["store.commit"], by_name[
        "broker.publish"]
    deliver, write = by_name["deliver"], by_name["device.write"]
    trace = publish.context.trace_id
    assert {s.context.trace_id for s in (commit, broker, deliver, write)} == {trace}
    assert commit.parent.span_id == publish.context.span_id
    assert broker.parent.span_id == publish.context.span_id
    # node b continued the trace from the Redis message's traceparent
    assert deliver.parent.span_id == broker.context.span_id and deliver.parent.is_remote
    assert write.parent.span_id == deliver.context.span_id
    assert publish.attributes["tidings.notification_id"] == r.json()["id"]
    assert write.attributes["tidings.user"] == "tess"


class _Receiver(BaseHTTPRequestHandler):
    """An HTTP endpoint that answers 200 and keeps what it was sent."""

    received: list[tuple[str, bytes]] = []

    def do_POST(self):  # noqa: N802 (the http.server naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve_http(handler) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_port}"


@pytest.mark.timeout(60)
async def test_an_outbound_attempt_is_a_span(tmp_path, spans):
    hooks = type("Hooks", (_Receiver,), {"received": []})
    httpd, hook_url = _serve_http(hooks)
    try:
        async with run_server(tmp_path, webhook=WebhookConfig(allow_insecure=True)) as srv:
            async with srv.http() as http:
                r = await http.post("/v1/webhooks", json={"url": hook_url + "/hook"})
                assert r.status_code == 201, r.text
                r = await http.post("/v1/notifications",
                                    json={"to": {"users": ["una"]}, "title": "hooked"})
                nid = r.json()["id"]
            found = await _wait_for(spans, {"outbound.attempt"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    attempt = next(s for s in found if s.name == "outbound.attempt")
    assert attempt.attributes["tidings.channel"] == "webhook"
    assert attempt.attributes["tidings.outcome"] == "delivered"
    assert attempt.attributes["tidings.attempt"] == 1
    assert any(json.loads(body).get("notification", {}).get("id") == nid
               or nid.encode() in body for _, body in hooks.received)


@pytest.mark.timeout(60)
async def test_each_item_of_a_batch_is_a_publish_span(tmp_path, spans):
    async with run_server(tmp_path) as srv:
        async with srv.http() as http:
            r = await http.post("/v1/notifications/batch", json={"notifications": [
                {"to": {"users": ["bo"]}, "title": "one"}, {"to": {}, "title": "bad"},
                {"to": {"users": ["bo"]}, "title": "two"}]})
            assert r.status_code == 202, r.text
            results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "error", "accepted"]
    found = await _wait_for(spans, {"publish"})
    ids = {s.attributes.get("tidings.notification_id") for s in found if s.name == "publish"}
    assert ids == {results[0]["id"], results[2]["id"], None}  # None: the refused item's


@pytest.mark.timeout(90)
def test_a_real_server_exports_to_an_otlp_receiver(tmp_path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    collector = type("Collector", (_Receiver,), {"received": []})
    httpd, endpoint = _serve_http(collector)
    port = _free_port()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "tidings-test"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--data", str(tmp_path / "d"), "--port",
         str(port), "--node", "node-x"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        first = read_first_start(proc)
        url = f"http://127.0.0.1:{port}"

        async def device_and_publish():
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/me/stream") as ws:
                await ws.send(json.dumps({"type": "auth", "token": first["token"]}))
                await ws.recv()  # hello
                r = httpx.post(url + "/v1/notifications", json={
                    "to": {"users": ["demo-user"]}, "title": "exported"},
                    headers={"Authorization": f"Bearer {first['api_key']}"})
                assert r.status_code == 202
                await ws.recv()

        asyncio.run(device_and_publish())
        names: set[str] = set()
        services: set[str] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not {"publish", "deliver",
                                                   "device.write"} <= names:
            time.sleep(0.1)
            for path, body in list(collector.received):
                assert path == "/v1/traces"
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                    services.add(f"{attrs.get('service.name')}/{attrs.get('service.instance.id')}")
                    names |= {s.name for ss in rs.scope_spans for s in ss.spans}
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        httpd.shutdown()
        httpd.server_close()
    assert {"publish", "store.commit", "broker.publish", "deliver", "device.write"} <= names
    assert services == {"tidings-test/node-x"}
