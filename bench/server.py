"""A tidings server under test: fresh data dir, own app, pinned to one core.

The server is started with the real CLI (``tidings serve``), so what is
measured is exactly what an operator runs.  The app is created offline with
``tidings app create`` before the first start; user tokens are minted
locally with the app's signing secret (the same code the CLI uses), which is
much faster than one CLI call per user.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tidings.core.auth import mint_token

APP_NAME = "bench"


_CODE: dict[str, str] = {}  # git revision -> folder holding that revision's tidings/


def use_code(rev: str | None) -> str | None:
    """Run servers from ``git archive rev`` instead of the working tree.

    The checkout is shared: other people's half-finished edits under tidings/
    would otherwise be what gets measured.  Returns the revision's short hash
    (recorded with each run); None leaves the working tree in use.
    """
    if not rev:
        _CODE.pop("dir", None)
        return None
    repo = Path(__file__).resolve().parents[1]
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=repo, check=True,
                           capture_output=True, text=True).stdout.strip()
    if _CODE.get("rev") != short:
        folder = tempfile.mkdtemp(prefix=f"tidings-{short}-")
        archive = subprocess.run(["git", "archive", short, "tidings"], cwd=repo, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        atexit.register(shutil.rmtree, folder, True)
        _CODE.update(rev=short, dir=folder)
    return short


def python_cmd() -> list[str]:
    """This interpreter, importing tidings from the ``--code`` tree when one is in use."""
    return [sys.executable, "-P"] if "dir" in _CODE else [sys.executable]


def tidings_cmd() -> list[str]:
    """The ``tidings`` CLI: a ``--code`` revision's, else this environment's entry point."""
    if "dir" in _CODE:
        return [*python_cmd(), "-m", "tidings"]  # -P: not the cwd's tidings/
    exe = Path(sys.executable).with_name("tidings")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tidings")
    return [found] if found else [sys.executable, "-m", "tidings"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"server port {port} not open after {timeout} s")


def code_env() -> dict[str, str]:
    """The environment for a tidings process (PYTHONPATH first to a ``--code`` tree)."""
    env = dict(os.environ)
    if "dir" in _CODE:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_CODE["dir"], env.get("PYTHONPATH", "")) if p)
    return env


class TidingsServer:
    """``with TidingsServer(cpu=0, env={...}) as srv:`` -> srv.url, srv.pid, srv.api_key."""

    def __init__(self, *, cpu: str | None = "0", env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", port: int | None = None,
                 prefix: list[str] | None = None, data_dir: str | None = None,
                 credentials: dict[str, str] | None = None, store: str | None = None,
                 args: list[str] | None = None):
        self.cpu = cpu
        self.env = env or {}
        self.host = host
        self.port = port
        self.prefix = prefix or []  # e.g. ["ip", "netns", "exec", "peers"]
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="tidings-bench-")
        self.proc: subprocess.Popen | None = None
        self.app = self.api_key = self.signing_secret = ""
        # A prepared data set (bench inbox) keeps its app across restarts:
        # {"app", "api_key", "signing_secret"} as `tidings app create --json` printed it.
        self.credentials = credentials
        self.store = store  # --store URL; None = the SQLite file under data_dir
        self.args = args or []  # more `tidings serve` flags, e.g. --workers 8 --broker URL
        self.log_path = os.path.join(self.data_dir, "server.log")

    # -- set-up -----------------------------------------------------------------
    def _store_args(self) -> list[str]:
        return ["--store", self.store] if self.store else []

    def create_app(self) -> None:
        if self.credentials is not None:
            doc = self.credentials
        else:
            if not self.store:  # `app create` never creates a store: make the SQLite file
                subprocess.run([*tidings_cmd(), "migrate", "--data", self.data_dir], check=True,
                               capture_output=True, timeout=60, env=code_env())
            out = subprocess.run(
                [*tidings_cmd(), "app", "create", APP_NAME, "--json", "--data", self.data_dir,
                 *self._store_args()],
                check=True, capture_output=True, text=True, timeout=60, env=code_env(),
            ).stdout
            doc = json.loads(out.strip().splitlines()[-1])
        self.app, self.api_key = doc["app"], doc["api_key"]
        self.signing_secret = doc["signing_secret"]

    def token(self, user: str, ttl: int = 24 * 3600) -> str:
        return mint_token(self.app, user, self.signing_secret, ttl)

    def tokens(self, users: list[str]) -> list[str]:
        return [self.token(u) for u in users]

    # -- life cycle -------------------------------------------------------------
    def start(self) -> None:
        self.create_app()
        if self.port is None:
            self.port = free_port(self.host)
        cmd = [*self.prefix]
        if self.cpu:
            cmd += ["taskset", "-c", self.cpu]
        cmd += [*tidings_cmd(), "serve", "--data", self.data_dir, "--host", self.host,
                "--port", str(self.port), "--log-level", "warning", *self._store_args(),
                *self.args]
        # One API key publishes everything in a benchmark: the per-key rate limit
        # (Settings.key_rate, 1,000/s) would measure the limiter, not the service.
        # The per-user limit (user_rate, 50/s per user on each node) stays on, as
        # deployed: the benches spread their requests and connects over many
        # users, and its take (~1 us, in memory) is part of each request's cost.
        env = {**code_env(), "TIDINGS_KEY_RATE": "0", **self.env}
        with open(self.log_path, "wb") as log:
            # taskset and ip netns exec both exec: the PID is the server's own.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        if not self.prefix:
            wait_port(self.host, self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/me/stream"

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> TidingsServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
