"""CPU and memory of the server's process tree, sampled with psutil."""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil


class ProcSampler(threading.Thread):
    """Peak RSS (sampled every ``interval`` s) and CPU time of a process tree."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        total = 0
        for p in self._tree():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.peak = max(self.peak, total)
        return total

    def cpu(self) -> float:
        """User + system CPU seconds of the tree so far."""
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds of the root process's main thread and of its other threads.

        Python 3.11 does not name OS threads, so the others are keyed by their
        ``comm`` (usually the process name) and summed.
        """
        out: dict[str, float] = {}
        try:
            threads = self.root.threads()
        except psutil.NoSuchProcess:
            return out
        for t in threads:
            if t.id == self.root.pid:
                name = "main"
            else:
                name = "other:" + _thread_name(self.root.pid, t.id)
            out[name] = out.get(name, 0.0) + t.user_time + t.system_time
        return out

    def run(self) -> None:
        while not self._stop.is_set():
            self.rss()
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()


def _thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().strip() or str(tid)
    except OSError:
        return str(tid)


def thread_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per thread name between two :meth:`ProcSampler.thread_cpu` readings."""
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()
            if v - before.get(k, 0.0) >= 0.001}


def busy_cpu_s() -> float:
    """CPU seconds the whole machine was busy (all cores), for the 'other load' estimate."""
    c = psutil.cpu_times()
    return sum(c) - c.idle - getattr(c, "iowait", 0.0)


def own_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def settle_rss(sampler: ProcSampler, seconds: float, step: float = 0.25) -> int:
    """RSS after ``seconds`` (the last of a few samples; lets the allocator settle)."""
    deadline = time.monotonic() + seconds
    value = sampler.rss()
    while time.monotonic() < deadline:
        time.sleep(step)
        value = sampler.rss()
    return value


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def pin(cpus: str | None) -> set[int] | None:
    """Pin this process to ``cpus`` ("1" or "1,2"); return the set (None: no pinning)."""
    if not cpus:
        return None
    cpuset = {int(c) for c in cpus.split(",")}
    os.sched_setaffinity(0, cpuset)
    return cpuset


def pids_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (e.g. the load generator's workers)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class CpuMarks:
    """CPU readings (server tree, its threads, the machine, the load generator)
    taken at given moments.  ``at(when_ns)`` reads from a thread that sleeps
    until then, so an open-loop publisher on the event loop is never held up
    by the readings."""

    def __init__(self, sampler: ProcSampler, loadgen_pids: list[int]):
        self.sampler, self.pids = sampler, loadgen_pids
        self.marks: list[dict] = []

    def read(self) -> dict:
        return {"server": self.sampler.cpu(), "threads": self.sampler.thread_cpu(),
                "busy": busy_cpu_s(), "loadgen": pids_cpu_s(self.pids) + own_cpu_s(),
                "t": time.monotonic()}

    def at(self, when_ns: int) -> threading.Thread:
        def wait_and_read() -> None:
            delay = (when_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            self.marks.append(self.read())

        t = threading.Thread(target=wait_and_read, daemon=True)
        t.start()
        return t

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        server = b["server"] - a["server"]
        loadgen = b["loadgen"] - a["loadgen"]
        return {"server_cpu_s": server, "loadgen_cpu_s": loadgen,
                "other_cpu_s": (b["busy"] - a["busy"]) - server - loadgen,
                "wall_s": b["t"] - a["t"],
                "server_cpu_by_thread_s": thread_delta(a["threads"], b["threads"])}


def pg_backends_cpu(server_pid: int, pg_port: int = 5432) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving ``server_pid``'s
    connections (store pool and broker sessions), by backend pid.  A backend's
    process title names its client as ``host(port)``; the server's side of
    each connection to ``pg_port`` is such a port.  PostgreSQL's own helpers
    (WAL writer, checkpointer) are shared with everything else and not counted."""
    try:
        conns = psutil.Process(server_pid).net_connections(kind="tcp")
    except psutil.Error:
        return {}
    ports = {f"({c.laddr.port})" for c in conns if c.raddr and c.raddr.port == pg_port}
    out: dict[int, float] = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            title = " ".join(p.info["cmdline"] or ())
            if p.info["name"] != "postgres" and not title.startswith("postgres:"):
                continue
            if any(port in title for port in ports):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def pg_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`pg_backends_cpu` readings (a backend
    started in between counts from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())
