"""``peers``: tidings next to the peer kit's servers, under the kit's own rules.

Round-robin like the kit's ``bench_all.sh``: in each round, each target gets
a fresh server on the server CPU, ``--start-settle`` seconds, one run of the
kit's ``loadgen.py`` on the load-generator CPU inside the kit's loopback-only
network namespace, then a stop.  Peers are started with ``peerctl.sh``;
tidings is started here (``tidings serve`` in the same namespace, pinned the
same way) and measured through ``bench/peerkit_adapter.py``, which plugs a
tidings adapter into the very same ``loadgen.py``.

Results: the kit's JSON lines in ``bench/results/<date>/peers.jsonl``
(``peer`` = tidings for both tidings variants; ``label`` tells
``fanout``/``broadcast`` and the round).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report, results
from bench.server import TidingsServer

REPO = Path(__file__).resolve().parent.parent
TIDINGS_PORT = 8090


def kit_dir(a) -> Path:
    """The peer kit is not part of this repository: it comes from --kit or $TIDINGS_PEER_KIT."""
    kit = a.kit or os.environ.get("TIDINGS_PEER_KIT")
    if not kit:
        raise SystemExit("bench peers: give the peer kit's folder with --kit DIR "
                         "(or TIDINGS_PEER_KIT)")
    return Path(kit).resolve()


class Kit:
    def __init__(self, path: Path, server_cpu: str, loadgen_cpu: str):
        self.path = path
        self.env = {**os.environ, "SERVER_CPU": server_cpu, "LOADGEN_CPU": loadgen_cpu}
        self.netns = self.env.get("PEERS_NETNS", "peers")

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        r = subprocess.run([str(self.path / "peerctl.sh"), *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"peerctl.sh {' '.join(args)}: {r.returncode}\n{r.stderr[-2000:]}")
        return r.stdout

    def run(self, args: list[str], log: Path, timeout: float) -> int:
        with open(log, "w") as f:
            return subprocess.run([str(self.path / "peerctl.sh"), "run", *args], env=self.env,
                                  stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode

    def ns_prefix(self) -> list[str]:
        return [] if self.netns == "none" else ["ip", "netns", "exec", self.netns]

    def netns_up(self) -> None:
        """``peerctl.sh run`` creates the namespace (lo only) when it is missing."""
        self.ctl("run", "true")

    def wait_port(self, port: int, proc, timeout: float = 20) -> None:
        probe = [*self.ns_prefix(), sys.executable, "-c",
                 f"import socket; socket.create_connection(('127.0.0.1', {port}), 0.5)"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"port {port} not open in the namespace after {timeout} s")


def _loadgen_args(a, label: str, out: Path, pids: list[int]) -> list[str]:
    args = []
    for pid in pids:
        args += ["--pid", str(pid)]
    return args + ["--label", label, "--timeout", str(min(a.timeout, 150)), "--out", str(out),
                   "--subs", str(a.subs), "--msgs", str(a.msgs)]


def run_tidings(kit: Kit, a, mode: str, label: str, out: Path, log: Path) -> int:
    srv = TidingsServer(cpu=a.server_cpu or None, prefix=kit.ns_prefix(), port=TIDINGS_PORT)
    try:
        srv.start()
        kit.wait_port(TIDINGS_PORT, srv.proc)
        time.sleep(a.start_settle)
        users = [f"u{i:06d}" for i in range(a.subs)]
        conf = {"port": TIDINGS_PORT, "api_key": srv.api_key, "users": users,
                "tokens": srv.tokens(users), "mode": mode}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(conf, f)
        try:
            args = ["python", str(REPO / "bench" / "peerkit_adapter.py"), "--kit",
                    str(kit.path), "--config", f.name, "--",
                    *_loadgen_args(a, label, out, [srv.pid])]
            return kit.run(args, log, timeout=a.timeout + 120)
        finally:
            os.unlink(f.name)
    finally:
        srv.stop()


def run_peer(kit: Kit, a, name: str, label: str, out: Path, log: Path) -> int:
    kit.ctl("start", name, timeout=120)
    try:
        time.sleep(a.start_settle)
        pids = [int(p) for p in kit.ctl("pids", name).split()]
        args = ["python", str(kit.path / "loadgen.py"), name, *_loadgen_args(a, label, out, pids)]
        return kit.run(args, log, timeout=a.timeout + 120)
    finally:
        kit.ctl("stop", name, check=False)


def run_peers(a) -> Path:
    kit = Kit(kit_dir(a), a.server_cpu, a.loadgen_cpu)
    if not (kit.path / "peerctl.sh").exists():
        raise SystemExit(f"peer kit not found at {kit.path} (use --kit)")
    if a.install:
        subprocess.run([str(kit.path / "install.sh")], env=kit.env, check=True, timeout=3600)
    kit.netns_up()
    out_dir = a.out or results.today_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "peers.jsonl"
    logs = Path(tempfile.mkdtemp(prefix="tidings-peers-logs-"))
    modes = [m for m in a.tidings_modes.split(",") if m]
    peers = [p for p in a.peers.split(",") if p]
    targets = [("tidings", m) for m in modes] + [(p, None) for p in peers]
    for rnd in range(1, a.runs + 1):
        for name, mode in targets:
            label = f"{mode + ' ' if mode else ''}round{rnd}"
            log = logs / f"{name}-{mode or 'default'}-{rnd}.log"
            t0 = time.monotonic()
            if name == "tidings":
                rc = run_tidings(kit, a, mode, label, out, log)
            else:
                rc = run_peer(kit, a, name, label, out, log)
            tail = log.read_text(errors="replace")[-600:]
            print(f"[peers {name} {label}] rc={rc} {time.monotonic() - t0:.0f}s\n{tail}",
                  flush=True)
            time.sleep(1)
    if not a.no_report:
        report.write(out_dir)
    print(f"results: {out} (loadgen logs: {logs})")
    return out
