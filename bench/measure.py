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

    def run(self) -> None:
        while not self._stop.is_set():
            self.rss()
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()


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
