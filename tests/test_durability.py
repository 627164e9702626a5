"""A 2xx publish survives SIGKILL of the server one instant later (docs/design.md §2.1)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data, port, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``tidings serve`` on ``data`` (more flags in ``args``, the environment
    ``env``), once it answers ``/healthz``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--data", str(data), "--port", str(port),
         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    with proc:  # waits, and closes the pipe once read
        raise RuntimeError("server did not start:\n" + proc.stdout.read())


def read_first_start(proc: subprocess.Popen) -> dict[str, str]:
    """What ``tidings serve`` printed up to its "listening on" line: the whole
    ``text`` and the first start's ``api_key``, ``signing_secret`` and ``token``."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on" in line:
            break
    text = "".join(lines)
    found = {name: re.search(pattern, text) for name, pattern in (
        ("api_key", r"API key:\s+(\S+)"), ("signing_secret", r"signing secret:\s+(\S+)"),
        ("token", r"demo user token:\s+(\S+)"))}
    return {"text": text, **{k: m.group(1) for k, m in found.items() if m}}


@pytest.mark.timeout(120)
def test_acknowledged_publishes_survive_sigkill(tmp_path):
    data = tmp_path / "data"
    subprocess.check_call([sys.executable, "-m", "tidings", "migrate", "--data", str(data)],
                          stdout=subprocess.DEVNULL)
    created = json.loads(subprocess.check_output(
        [sys.executable, "-m", "tidings", "app", "create", "durable", "--json",
         "--data", str(data)], text=True))
    key = created["api_key"]
    port = _free_port()
    proc = _start(data, port)
    acked = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={"Authorization": f"Bearer {key}"}) as http:
            for i in range(50):
                r = http.post("/v1/notifications",
                              json={"to": {"users": ["u1", "u2"]}, "title": f"t{i}"})
                assert r.status_code == 202
                acked.append(r.json()["id"])
        os.kill(proc.pid, signal.SIGKILL)  # the instant after the last 2xx
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()

    proc = _start(data, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                          headers={"Authorization": f"Bearer {key}"}) as http:
            for user in ("u1", "u2"):
                r = http.get(f"/v1/users/{user}/notifications", params={"limit": 100})
                ids = [item["id"] for item in r.json()["items"]]
                assert ids == list(reversed(acked))
                assert [item["seq"] for item in r.json()["items"]] == list(range(50, 0, -1))
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
