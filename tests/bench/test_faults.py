"""The fault report's machinery, run for real and small: ``python -m bench
faults`` with a network partition (namespaces, a veth pair, forwarders, a
private PostgreSQL and Redis, two nodes behind HAProxy) and a full disk (a
tmpfs), a few seconds each.  It asserts the delivery checks of both and that
the run removed the namespaces and mounts it made; the figures of so small a
run mean nothing (docs/faults.md holds the real one)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import missing, require_haproxy

REPO = Path(__file__).resolve().parents[2]


def _require_fault_tools() -> None:
    if os.geteuid() != 0:
        missing("the fault report needs root (network namespaces, tmpfs, bind mounts)")
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        missing("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    if not shutil.which("redis-server"):
        missing("redis-server is not installed")
    require_haproxy()


@pytest.mark.timeout(240)
def test_partition_and_disk_full_runs_check_and_clean_up(tmp_path):
    _require_fault_tools()
    doc = tmp_path / "faults.md"
    cmd = [sys.executable, "-m", "bench", "faults", "--runs", "1", "--only", "partition,disk-full",
           "--users", "2", "--msgs", "12", "--pause", "0.02", "--outage", "2",
           "--timeout", "60", "--out", str(tmp_path), "--doc", str(doc)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=220,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = {r["fault"]: r for r in map(json.loads,
                                          (tmp_path / "results.jsonl").read_text().splitlines())}
    assert set(records) == {"partition", "disk-full"}
    for rec in records.values():
        assert "error" not in rec, rec
        assert rec["acknowledged"] == rec["attempted"] >= 12 and rec["devices"] == 4
        assert (rec["lost"], rec["duplicated"], rec["out_of_order"], rec["false_2xx"]) == (
            0, 0, 0, 0), rec
        assert rec["recovered_s"] is not None
    # the cut-off node was asked directly while cut off
    assert set(records["partition"]["probe"]) == {"publish", "readyz"}
    # the full disk refused writes: the publisher was answered 503 and retried
    assert records["disk-full"]["answers"].get("503", 0) > 0, records["disk-full"]
    text = doc.read_text()
    assert "| network partition" in text and "| disk full" in text
    assert "python -m bench faults --runs 1 --only partition,disk-full" in text
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "tf-node-" not in netns and "tf-gw-" not in netns
    assert "tidings-faults-" not in Path("/proc/mounts").read_text()
