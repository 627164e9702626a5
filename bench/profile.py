"""Sample the server with py-spy during the measured phase, and summarise.

``py-spy record --format raw`` writes collapsed stacks ("f1;f2;f3 N"); from
them this module lists the functions with the most samples on top of the
stack (self) and anywhere in the stack (total), as % of all non-idle samples.
A profiled run is never one of the measured runs (py-spy costs the server CPU).

Reading it: py-spy samples wall time of threads it does not consider idle.
A thread waiting to re-acquire the GIL (after a syscall such as
``os.urandom``, or after epoll) or blocked in a COMMIT's fsync is counted as
busy at that line, so with two busy threads (loop + SQLite writer) some
"self" time is contention, not CPU.  ``server_cpu_by_thread_s`` in the
results gives the real CPU split; ``--profile-gil`` samples only the thread
holding the GIL (Python CPU; C code that releases the GIL, e.g. sqlite3's
statement execution, then disappears).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, out: Path, *, rate: int = 250, native: bool = False,
                 gil: bool = False):
        self.pid, self.out, self.rate, self.native, self.gil = pid, out, rate, native, gil
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Profiler:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        cmd = [exe, "record", "--pid", str(self.pid), "--format", "raw", "--threads",
               "--rate", str(self.rate), "--nonblocking", "-o", str(self.out)]
        if self.native:
            cmd.append("--native")
        if self.gil:
            cmd.append("--gil")  # only samples holding the GIL: Python CPU, no waits
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes the file on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# frames that only wrap everything below them (the CLI, the loop runner, thread start-up)
_WRAPPERS = ("click/", "threading.py", "asyncio/runners.py", "uvicorn/main.py",
             "uvicorn/server.py", "tidings/cli.py", "<module>", "process ")


def _short(where: str) -> str:
    return "/".join(where.split("/")[-2:])


def _parse_frame(frame: str) -> tuple[str, str]:
    """"send (tidings/gateway/transports.py:64)" -> ("send (gateway/transports.py)", ":64")."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if not where:
        return name, ""
    path, _, line = where.rpartition(":")
    if not path:
        return f"{name} ({_short(where)})", ""
    return f"{name} ({_short(path)})", f":{line}"


def summarise(raw: Path, top: int = 25) -> dict:
    """Self and total % by function, self % by line, and % per thread."""
    self_fn: collections.Counter = collections.Counter()
    total_fn: collections.Counter = collections.Counter()
    self_line: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += n
            frames = [f for f in frames[1:] if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        samples += n
        fn, ln = _parse_frame(frames[-1])
        self_fn[fn] += n
        self_line[fn.replace(")", ln + ")") if ln else fn] += n
        for f in {_parse_frame(f)[0] for f in frames}:
            if not any(w in f for w in _WRAPPERS):
                total_fn[f] += n

    def pct(c):
        return [(name, round(100 * v / max(samples, 1), 1)) for name, v in c.most_common(top)]

    return {"samples": samples, "self": pct(self_fn), "total": pct(total_fn),
            "self_lines": pct(self_line), "threads": pct(threads)}


def format_summary(summary: dict, top: int = 25) -> str:
    lines = [f"{summary['samples']} samples of non-idle threads (py-spy, {len(summary['threads'])}"
             " threads seen); % of those samples.", ""]
    if summary["threads"]:
        lines += ["| thread % | thread |", "|---:|---|"]
        lines += [f"| {p} | `{n}` |" for n, p in summary["threads"][:8]]
        lines.append("")
    for title, key in (("self % (function)", "self"), ("self % (line)", "self_lines"),
                       ("total % (function, wrappers omitted)", "total")):
        lines += [f"| {title} | |", "|---:|---|"]
        lines += [f"| {p} | `{n}` |" for n, p in summary[key][:top]]
        lines.append("")
    return "\n".join(lines)
