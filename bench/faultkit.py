"""The faults the fault report (bench/faults.py) injects, each on real processes
and real kernel objects that the report creates and removes itself.

Nothing here touches a server it did not start: PostgreSQL is a private
cluster (``initdb`` and ``pg_ctl`` of the installed version, run as the
``postgres`` user, on its own port and data directory), Redis a private
``redis-server`` on its own port.  Network namespaces, veth pairs, tmpfs and
bind mounts need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); ``require_root``
says so in one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.cluster import wait_until


def run(*args: str, timeout: float = 60) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the fault report needs root: it makes network namespaces, veth "
                         "pairs, a tmpfs and a read-only bind mount")


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise SystemExit("no PostgreSQL server installed (/usr/lib/postgresql/*/bin/pg_ctl)")
    return found[-1].parent


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port`` (fsync on, as shipped)."""

    def __init__(self, port: int):
        self.port = port
        self.bin = _pg_bin()
        # its own top directory, owned by the server's user (initdb refuses root)
        self.root = Path(tempfile.mkdtemp(prefix="tidings-faults-pg-"))
        os.chmod(self.root, 0o755)
        self.data = self.root / "data"
        shutil.chown(self.root, "postgres", "postgres")
        self.log = self.root / "server.log"

    @property
    def version(self) -> str:
        return self.bin.parent.name

    def _as_postgres(self, *args: str, timeout: float = 120) -> str:
        return run("runuser", "-u", "postgres", "--", *args, timeout=timeout)

    def init(self) -> None:
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "--no-instructions")

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.root} -c max_connections=100")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                          "-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                          "stop")

    def restart(self, mode: str = "immediate") -> None:
        """``-m immediate``: the server stops without a checkpoint, as in a crash,
        and recovers from its WAL when it starts again."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                          "-m", mode, "-w", "-t", "60", "restart")

    def running(self) -> bool:
        out = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"),
                              "-D", str(self.data), "status"], capture_output=True)
        return out.returncode == 0

    def create_db(self, name: str) -> str:
        self._as_postgres(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", name)
        return self.url(name)

    def url(self, db: str, host: str = "127.0.0.1", port: int | None = None) -> str:
        return f"postgresql://postgres@{host}:{port or self.port}/{db}"

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A throwaway ``redis-server`` on 127.0.0.1:``port``, no persistence."""

    def __init__(self, port: int, workdir: Path):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(workdir)]
        self.port = port
        self.proc: subprocess.Popen | None = None

    def url(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        return f"redis://{host}:{port or self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)

        def up() -> bool:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                 capture_output=True, text=True)
            return out.stdout.strip() == "PONG"

        wait_until(up, 10, "private redis")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Forwarder:
    """tests/cluster/tcpproxy.py as a process: killed, it is an outage (resets,
    then refused connections); with namespaces, it joins one to loopback."""

    def __init__(self, port: int, target_host: str, target_port: int, *,
                 listen_host: str = "127.0.0.1", listen_netns: str | None = None,
                 connect_netns: str | None = None):
        self.args = [sys.executable, "-m", "tests.cluster.tcpproxy", str(port), target_host,
                     str(target_port), "--listen-host", listen_host]
        if listen_netns:
            self.args += ["--listen-netns", listen_netns]
        if connect_netns:
            self.args += ["--connect-netns", connect_netns]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"forwarder {self.args[3:]} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Partition:
    """Two namespaces joined by a veth pair: ``node`` (where one tidings node
    runs) and ``gw``, where forwarders lead on to the private PostgreSQL and
    Redis on the host's loopback.  ``cut`` takes the gateway end of the pair
    down: the node's end loses carrier and every packet it sends is dropped
    without an answer (a silent partition, not a refused connection).
    Addresses exist only inside the two namespaces."""

    GW_ADDR = "10.231.0.1"
    NODE_ADDR = "10.231.0.2"

    def __init__(self, tag: str):
        self.node = f"tf-node-{tag}"
        self.gw = f"tf-gw-{tag}"
        self.node_if = f"tfn{tag}"[:15]
        self.gw_if = f"tfg{tag}"[:15]

    def create(self) -> None:
        for ns in (self.node, self.gw):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.node_if, "netns", self.node, "type", "veth", "peer",
            "name", self.gw_if, "netns", self.gw)
        run("ip", "-n", self.node, "addr", "add", f"{self.NODE_ADDR}/30", "dev", self.node_if)
        run("ip", "-n", self.gw, "addr", "add", f"{self.GW_ADDR}/30", "dev", self.gw_if)
        run("ip", "-n", self.node, "link", "set", self.node_if, "up")
        run("ip", "-n", self.gw, "link", "set", self.gw_if, "up")

    def cut(self) -> None:
        run("ip", "-n", self.gw, "link", "set", self.gw_if, "down")

    def heal(self) -> None:
        run("ip", "-n", self.gw, "link", "set", self.gw_if, "up")

    def remove(self) -> None:
        # deleting a namespace deletes the veth end in it, and with it the pair
        for ns in (self.node, self.gw):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def exists(self) -> bool:
        names = run("ip", "netns", "list")
        return any(line.split()[0] in (self.node, self.gw)
                   for line in names.splitlines() if line.strip())


class SmallDisk:
    """A tmpfs of ``size_mb`` mounted at ``path``: ``fill`` allocates every free
    block to a filler file (ENOSPC for everyone after), ``free`` deletes it."""

    def __init__(self, path: Path, size_mb: int = 32):
        self.path = path
        self.size_mb = size_mb
        self.filler = path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs",
            str(self.path))

    def fill(self) -> int:
        """Allocate until the file system refuses; returns the bytes taken."""
        taken = 0
        chunk = 1 << 20
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while chunk >= 4096:
                try:
                    os.posix_fallocate(fd, taken, chunk)
                    taken += chunk
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only for everyone, root included, for the ``with`` body: a
    bind mount of the directory onto itself, remounted read-only (EROFS on any
    write).  chmod would not do: root, which runs the report, ignores modes."""
    run("mount", "--bind", str(path), str(path))
    try:
        run("mount", "-o", "remount,bind,ro", str(path))
        yield
    finally:
        run("umount", str(path))
