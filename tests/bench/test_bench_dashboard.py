"""Smoke test of ``python -m bench dashboard``: a tiny run of both cache settings.

It measures nothing (a run this small means nothing); it checks that the
scenario runs end to end, that every snapshot request was answered with the
service-wide view, that the open dashboards got their pushes, and that the
report compares the two settings.
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


def test_tiny_dashboard_run_both_ways(tmp_path):
    cmd = [sys.executable, "-m", "bench", "dashboard", "--runs", "1", "--conns", "40",
           "--topics", "4", "--publish-rate", "20", "--viewers", "2", "--rate", "20",
           "--warmup", "0.5", "--duration", "2", "--settle", "0.2", "--timeout", "30",
           "--server-cpu", "", "--loadgen-cpu", "", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=55,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["cache"] for r in records] == ["on", "off"]
    for r in records:
        assert r["scenario"] == "dashboard" and r["errors"] == 0, r
        assert r["conns"] == 40 and r["snapshot_connections"] == 40
        assert r["snapshot_scope"] == "*"  # the operator's service-wide view
        assert r["requests"] >= 20 and r["p50_ms"] > 0
        assert r["viewer_snapshots"] >= 2
        assert r["published"] > 0 and r["publish_errors"] == 0
    report = (tmp_path / "report.md").read_text()
    assert "## dashboard" in report and "with the cache, p50" in report
