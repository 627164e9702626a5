"""The SQLite writer thread's own cost per publish: ``python -m bench.writer``.

No HTTP and no service: ``--concurrency`` coroutines in this process call
``SQLiteStore.publish`` back to back, one recipient each (over ``--users``
users, in a fixed order), ``--count`` publishes in all, on a fresh file with
``synchronous=FULL``.  What it prints: the writer thread's user and kernel
CPU per publish (from ``/proc``; it swings with the machine's load), the
jobs per commit, and the writer thread's id, so that a run under
``valgrind --tool=callgrind --separate-threads=yes`` can be read for that
thread alone: instructions do not swing with the load.  Two runs with
different ``--count`` and the difference of their instructions, divided by
the difference of the counts, give the writer's instructions per publish
without the start-up (docs/delivery.md, "Where a single publish's CPU goes").
Every group holds ``--concurrency`` publishes (see ``run``).

``--batch K``: every call is ``SQLiteStore.publish_many`` of K publishes
(one job, as ``POST /v1/notifications/batch`` makes it), ``--count``
publishes in all; the figures stay per publish.

``--topic N`` measures write fan-out instead: N users follow one topic and
every publish goes to it (N inbox rows each, N at most the fan-out
threshold); the figures are then also given per recipient.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from tidings.core.ids import new_id
from tidings.store.base import NewNotification
from tidings.store.sqlite import SQLiteStore

APP = "bench"
TOPIC = "bench"


def _cpu(tid: int) -> tuple[float, float]:
    """User and kernel seconds of thread ``tid`` of this process."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def run(args: argparse.Namespace) -> None:
    # The loop thread keeps the GIL until it waits: each round of answers
    # settled brings the next ``--concurrency`` publishes to the writer as
    # one group, also under callgrind (whose threads take turns), so that
    # two runs of different code compare groups of the same size.
    sys.setswitchinterval(10.0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = SQLiteStore(Path(tmp) / "tidings.db")
        await store.open()
        try:
            writer = next(t for t in threading.enumerate()
                          if t.name == "tidings-sqlite-writer")
            users = [f"user-{i}" for i in range(args.users)]
            per = args.count // args.concurrency
            body = msgspec.json.encode({"title": "hello", "body": "x" * 60})
            fanout = args.topic
            if fanout:
                await store.subscribe(APP, TOPIC, [f"member-{i}" for i in range(fanout)])

            def note(k: int, i: int) -> NewNotification:
                if fanout:
                    target: tuple = (None, TOPIC)
                else:
                    target = ([users[(k * per + i) % len(users)]], None)
                return NewNotification(new_id(), "default", body, time.time(), None, *target,
                                       False, None, "", None, None, [])

            async def publisher(k: int) -> None:
                threshold = max(fanout, 100)
                if args.batch:
                    for i in range(0, per, args.batch):
                        await store.publish_many(
                            APP, [note(k, j) for j in range(i, min(i + args.batch, per))],
                            fanout_threshold=threshold, window=3600)
                    return
                for i in range(per):
                    await store.publish(APP, note(k, i), fanout_threshold=threshold,
                                        window=3600)

            await asyncio.gather(*(publisher(k) for k in range(min(args.concurrency, 64))))
            commits0, jobs0 = writer.commits, writer.jobs_done  # after a warm-up round
            u0, s0 = _cpu(writer.native_id)
            t0 = time.perf_counter()
            await asyncio.gather(*(publisher(k) for k in range(args.concurrency)))
            wall = time.perf_counter() - t0
            u1, s1 = _cpu(writer.native_id)
            done = writer.jobs_done - jobs0
            jobs = done * (args.batch or 1)  # publishes
            print(f"publishes {jobs}  commits {writer.commits - commits0}  "
                  f"jobs/commit {done / max(writer.commits - commits0, 1):.1f}  "
                  f"writer user {(u1 - u0) / jobs * 1e6:.1f} us  "
                  f"kernel {(s1 - s0) / jobs * 1e6:.1f} us  "
                  f"wall {wall / jobs * 1e6:.1f} us  writer tid {writer.native_id}")
            if fanout:
                n = jobs * fanout
                print(f"recipients {n}  writer user {(u1 - u0) / n * 1e6:.2f} us  "
                      f"kernel {(s1 - s0) / n * 1e6:.2f} us per recipient")
        finally:
            await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--batch", type=int, default=0, metavar="K",
                   help="K publishes a call (publish_many, one job)")
    p.add_argument("--topic", type=int, default=0, metavar="N",
                   help="publish to a topic of N members (write fan-out)")
    p.add_argument("--dir", default=None, help="where the temporary database goes")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
