#!/usr/bin/env python3
"""Run a tidings cluster on loopback: N nodes behind HAProxy.

    python scripts/cluster.py --nodes 3 \\
        --store postgresql://postgres@127.0.0.1:5432/test [--broker redis://127.0.0.1:6379]

starts ``tidings serve`` N times (ports 8101, 8102, ...), each a stateless
node over the same PostgreSQL (and Redis, if given; without it the nodes fan
out through PostgreSQL LISTEN/NOTIFY), and HAProxy on port 8100 in front of
them, with health checks on ``/readyz`` and no sticky sessions.  Ctrl+C stops
everything.  The failover tests and the benchmarks drive the same ``Cluster``
class, so what they measure is what this script runs.  docs/deploy.md explains
the HAProxy settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

# The HAProxy configuration compose.yaml uses; run here with a loopback bind
# address and servers, and a maxconn the process's descriptor limit allows.
HAPROXY_CFG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        with urlopen(url, timeout=timeout) as r:
            return r.status
    except URLError as exc:
        return getattr(exc, "code", 0) or 0
    except OSError:
        return 0


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(n: int) -> int:
    """A base port with ``n`` free ports from it (HAProxy, then the nodes).

    Drawn below the ephemeral range: a port the kernel chose for us (bind to
    port 0) is one any outgoing connection on the machine may take before a
    node restarted on it listens again ("Address already in use" under load).
    """
    rng = random.Random()
    high = max(_ephemeral_low(), 10000 + 2 * n)
    for _ in range(200):
        base = rng.randrange(10000, high - n)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no block of free ports")


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class Node:
    name: str
    port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = open(self.log, "ab")
        # /metrics without a key: the tests and benchmarks read it per node
        env = {**os.environ, "TIDINGS_METRICS_PUBLIC": "1"}
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        out.close()

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited:\n{self.log.read_text()[-3000:]}")
            return _get(self.url + "/readyz") == 200

        wait_until(ready, timeout, f"node {self.name} to be ready")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the whole group: workers too

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Cluster:
    store: str
    broker: str | None  # None: the store's PostgreSQL carries live events too
    nodes: int = 2
    base_port: int = 8100  # HAProxy; nodes take the next ports
    workdir: Path | None = None
    workers: int = 1
    extra: list[str] = field(default_factory=list)  # more `tidings serve` flags
    members: list[Node] = field(default_factory=list)
    haproxy: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.base_port}"

    def __post_init__(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tidings-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(1, self.nodes + 1):
            name = f"node{i}"
            port = self.base_port + i
            args = [sys.executable, "-m", "tidings", "serve", "--port", str(port),
                    "--store", self.store, "--node", name,
                    "--data", str(self.workdir / name), "--workers", str(self.workers),
                    *(["--broker", self.broker] if self.broker else []), *self.extra]
            self.members.append(Node(name, port, args, self.workdir / f"{name}.log"))

    def tidings(self, *args: str) -> str:
        """Run a ``tidings`` operator command against the cluster's store."""
        return subprocess.check_output(
            [sys.executable, "-m", "tidings", *args, "--store", self.store], text=True,
            timeout=60)

    def create_app(self, name: str = "app") -> dict:
        return json.loads(self.tidings("app", "create", name, "--json"))

    def start(self) -> Cluster:
        if self.store.startswith(("postgresql:", "postgres:")):
            # PostgreSQL nodes refuse to start on an old schema: migrate first,
            # as an operator would before a release.
            self.tidings("migrate")
        # The first node alone, so that first-start setup runs exactly once.
        first, *rest = self.members
        first.start()
        first.wait_ready()
        for node in rest:
            node.start()
        for node in rest:
            node.wait_ready()
        self.start_haproxy()
        return self

    def haproxy_config(self) -> str:
        # every proxied connection holds two descriptors; HAProxy refuses to
        # start if maxconn needs more than the process may open
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        maxconn = max(1000, (soft - 200) // 2)
        lines = []
        for line in HAPROXY_CFG.read_text().splitlines():
            setting = line.split()
            if setting[:1] == ["server"]:
                continue  # compose's servers; ours follow the backend
            if setting[:1] == ["maxconn"]:
                line = f"    maxconn {maxconn}"
            elif setting[:1] == ["bind"]:
                line = f"    bind 127.0.0.1:{self.base_port}"
            lines.append(line)
        lines += [f"    server {n.name} 127.0.0.1:{n.port} check" for n in self.members]
        return "\n".join(lines) + "\n"

    def start_haproxy(self) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(self.haproxy_config())
        out = open(self.workdir / "haproxy.log", "ab")
        self.haproxy = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=out,
                                        stderr=subprocess.STDOUT)
        out.close()
        wait_until(lambda: _get(self.url + "/readyz") == 200, 15, "HAProxy")

    def node(self, name: str) -> Node:
        return next(n for n in self.members if n.name == name)

    def stop(self) -> None:
        for node in self.members:
            node.stop()
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(10)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--port", type=int, default=8100, help="HAProxy port; nodes follow")
    parser.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--broker", default=None,
                        help="e.g. redis://127.0.0.1:6379 (default: PostgreSQL LISTEN/NOTIFY)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per node")
    parser.add_argument("--dir", type=Path, default=None, help="logs and node data")
    args = parser.parse_args()
    cluster = Cluster(args.store, args.broker, args.nodes, args.port, args.dir, args.workers)
    with cluster:
        print(f"tidings cluster: {cluster.url} -> "
              + ", ".join(f"{n.name} {n.url}" for n in cluster.members))
        print(f"logs in {cluster.workdir}; Ctrl+C to stop")
        print((cluster.workdir / "node1.log").read_text())
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
