"""Smoke test of the benchmark entry point: a tiny fanout through the real code path.

Runs ``python -m bench fanout`` (fresh ``tidings serve``, picows subscribers in a
worker process, keep-alive publishers) with 20 subscribers x 20 notifications,
no CPU pinning, every frame parsed and checked, and asserts nothing was lost.
It measures nothing: the numbers of so small a run mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("picows", reason="the bench extra (picows, psutil) is not installed")
pytest.importorskip("psutil", reason="the bench extra (picows, psutil) is not installed")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("scenario", ["fanout", "broadcast"])
def test_tiny_run_loses_nothing(tmp_path, scenario):
    cmd = [sys.executable, "-m", "bench", scenario, "--runs", "1", "--subs", "20",
           "--msgs", "20", "--settle", "0.2", "--timeout", "30", "--idle-timeout", "5",
           "--server-cpu", "", "--loadgen-cpu", "", "--verify", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=50,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (record,) = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["scenario"] == scenario
    assert record["subs"] == 20 and record["connect_errors"] == 0
    assert record["pub_errors"] == 0
    assert record["expected"] == 400
    assert record["lost"] == 0, record
    assert record["order_errors"] == 0, record
    assert record["min_per_sub"] == record["max_per_sub"] == 20
    assert record["server_cpu_us_per_delivery"] > 0
    assert (tmp_path / "report.md").exists()
