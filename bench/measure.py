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
