"""Structured logs and request ids, from a real `tidings serve --log-format json`:
every answer carries X-Request-Id (the caller's when sane), and the log lines
of a request name it, with the app and the notification it published."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.test_durability import _free_port, read_first_start


@pytest.mark.timeout(90)
def test_json_logs_name_the_request_the_app_and_the_notification(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--data", str(tmp_path / "d"), "--port",
         str(port), "--log-format", "json", "--log-level", "info", "--node", "node-a"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        key = read_first_start(proc)["api_key"]
        auth = {"Authorization": f"Bearer {key}"}
        published = httpx.post(url + "/v1/notifications", headers={**auth, "X-Request-Id":
                               "order-42.retry-1"}, json={"to": {"users": ["u"]}, "title": "x"})
        assert published.status_code == 202
        assert published.headers["x-request-id"] == "order-42.retry-1"  # echoed as given
        nid = published.json()["id"]
        fresh = httpx.get(url + "/healthz")
        assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])  # made here
        refused = httpx.get(url + "/v1/me/counts", headers={"X-Request-Id": "no spaces here!"})
        assert refused.status_code == 401
        assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])  # not echoed
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(refused.headers["x-request-id"] in line
                                                      for line in lines):
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    reader.join(5)
    proc.stdout.close()
    proc.stderr.close()

    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert records and all({"time", "level", "logger", "message", "node"} <= set(r)
                           for r in records)
    assert all(r["node"] == "node-a" for r in records)
    publish = next(r for r in records if r.get("request_id") == "order-42.retry-1")
    assert publish["logger"] == "uvicorn.access" and publish["status"] == 202
    assert publish["method"] == "POST" and publish["path"] == "/v1/notifications"
    assert publish["app"] == "default" and publish["notification_id"] == nid
    bad = next(r for r in records if r.get("request_id") == refused.headers["x-request-id"])
    assert bad["status"] == 401 and "app" not in bad


def test_text_is_the_default_and_json_is_checked(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tidings", "serve", "--log-format", "xml"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "'xml' is not one of 'text', 'json'" in r.stderr
