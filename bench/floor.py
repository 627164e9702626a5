"""The floor of ``bench publish``: a bare ASGI POST handler answering 202.

It reads the request body and answers a JSON body of the size tidings'
publish answer has, under uvicorn with the options ``tidings serve`` uses
(uvloop, httptools), pinned like the server and driven by the same client.
Its CPU per request is what any Python service on this HTTP server pays
before doing anything; ``bench publish`` prints tidings' CPU per publish
divided by it (``floor_ratio``).

Run as ``python -m bench.floor --host H --port P``; :func:`running` starts it
pinned for ``bench publish`` and ``bench latency``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# the length of {"id":"<26 chars>","recipients":1,"status":"accepted"}
BODY = b'{"id":"01JEXAMPLE0000000000000000","recipients":1,"status":"accepted"}'
_START = {"type": "http.response.start", "status": 202,
          "headers": [(b"content-type", b"application/json"),
                      (b"content-length", str(len(BODY)).encode())]}
_BODY = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body, more = b"", True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    await send(_START)
    await send(_BODY)


@contextlib.contextmanager
def running(server_cpu: str | None) -> Iterator[tuple[str, int, int]]:
    """The floor's server, pinned like tidings' (``taskset -c server_cpu``):
    yields its host, port and pid, and stops it after."""
    from bench.server import free_port, wait_port

    host, port = "127.0.0.1", free_port()
    cmd = [sys.executable, "-m", "bench.floor", "--host", host, "--port", str(port)]
    if server_cpu:
        cmd = ["taskset", "-c", server_cpu, *cmd]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_port(host, port, proc)
        yield host, port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    # the HTTP options of `tidings serve` (tidings/cli.py)
    uvicorn.run(app, host=a.host, port=a.port, loop="uvloop", http="httptools",
                log_level="warning", backlog=4096, lifespan="on")


if __name__ == "__main__":
    main()
