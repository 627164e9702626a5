"""Smoke tests of the benchmark entry point: tiny runs through the real code path.

Runs ``python -m bench fanout`` (fresh ``tidings serve``, picows subscribers in a
worker process, keep-alive publishers) with 20 subscribers x 20 notifications,
no CPU pinning, every frame parsed and checked, and asserts nothing was lost;
``latency`` with 20 connections at 50 notifications/s for a second; ``inbox``
on 200 users x 5 notifications, with its one-broadcast-is-one-write check.
They measure nothing: the numbers of so small a run mean nothing, and no
timing goal belongs in a test.
"""

from __future__ import annotations

import importlib.util
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
    # measured, though not necessarily above zero: /proc counts CPU in 10 ms
    # ticks, and 20 broadcasts to 20 sockets can cost less than one tick
    assert record["server_cpu_us_per_delivery"] >= 0
    assert record["server_cpu_s"] >= 0 and "server_cpu_by_thread_s" in record
    assert (tmp_path / "report.md").exists()


def _run_bench(tmp_path, *args: str, timeout: float = 110) -> list[dict]:
    cmd = [sys.executable, "-m", "bench", *args, "--runs", "1", "--server-cpu", "",
           "--loadgen-cpu", "", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]


@pytest.mark.timeout(120)  # two server starts on a busy CI machine
def test_tiny_latency_run_times_every_notification(tmp_path):
    pytest.importorskip("hdrh", reason="hdrhistogram (test/bench extra) is not installed")
    (record,) = _run_bench(tmp_path, "latency", "--conns", "20", "--rate", "50",
                           "--duration", "1", "--warmup", "0.3", "--procs", "1",
                           "--sources", "", "--settle", "0.2", "--pool", "4")
    assert record["scenario"] == "latency" and record["conns"] == 20
    assert record["pub_errors"] == 0 and record["connect_errors"] == 0
    assert record["published"] == record["expected"] == 50
    assert record["lost"] == 0, record
    assert record["lat_count"] == 50 and record["lat_p99_ms"] > 0
    assert record["outside_window"] == 15  # the warm-up's, not timed
    assert record["lat_hist"] and record["server_cpu_us_per_delivery"] > 0
    # the floor ran at the same rate after the run: answered, and measured
    assert record["floor_errors"] == 0 and record["floor_cpu_us_per_request"] >= 0
    assert "floor_ratio" in record
    report = (tmp_path / "report.md").read_text()
    assert "## latency" in report
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "latency-percentiles.png").stat().st_size > 0
        assert "(latency-percentiles.png)" in report


@pytest.mark.timeout(120)  # two server starts on a busy CI machine
def test_tiny_inbox_run_and_broadcast_is_one_write(tmp_path):
    pytest.importorskip("hdrh", reason="hdrhistogram (test/bench extra) is not installed")
    records = _run_bench(tmp_path, "inbox", "--users", "200", "--per-user", "5",
                         "--rate", "50", "--duration", "1", "--warmup", "0.2", "--probe", "3",
                         "--pool", "2", "--cache-dir", str(tmp_path / "data"))
    run, check = records
    assert run["scenario"] == "inbox" and run["users"] == 200 and run["entries"] == 1000
    assert run["errors"] == 0, run  # every page held 5 items, every count was 5/3
    assert run["page_count"] == run["counts_count"] == 50
    assert run["page_unloaded_count"] == run["counts_unloaded_count"] == 3
    assert run["page_server_cpu_us"] > 0 and run["counts_server_cpu_us"] > 0
    assert check["scenario"] == "broadcast_write" and check["status"] == 202
    # one stored notification (+ the app's feed head): nothing per user
    assert check["rows_by_table"]["notifications"] == 1
    assert check["rows_written"] <= 2 and "inbox" not in check["rows_by_table"]
    assert check["removed_after"] == 1
    assert "## inbox" in (tmp_path / "report.md").read_text()


@pytest.mark.timeout(120)  # two server starts on a busy CI machine
def test_tiny_inbox_run_on_postgresql(tmp_path):
    pytest.importorskip("hdrh", reason="hdrhistogram (test/bench extra) is not installed")
    from tests.services import require_postgres

    url = require_postgres()
    records = _run_bench(tmp_path, "inbox", "--store", url, "--users", "200", "--per-user", "5",
                         "--rate", "50", "--duration", "1", "--warmup", "0.2", "--probe", "3",
                         "--pool", "2", "--cache-dir", str(tmp_path / "data"))
    run, check = records
    assert run["store"] == "postgresql" and run["entries"] == 1000
    assert run["errors"] == 0, run
    assert run["page_count"] == run["counts_count"] == 50
    assert check["store"] == "postgresql" and check["status"] == 202
    assert check["rows_by_table"]["notifications"] == 1 and "inbox" not in check["rows_by_table"]
    assert check["removed_after"] == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", ["postgresql", "redis"])
def test_tiny_publish_run_on_postgresql_counts_the_database_backends(tmp_path, broker):
    from tests.services import require_postgres, require_redis

    url = require_postgres()
    extra = ["--broker", require_redis()] if broker == "redis" else []
    (run,) = _run_bench(tmp_path, "publish", "--store", url, "--count", "300", "--warmup", "50",
                        "--concurrency", "4", "--no-floor", *extra)
    assert run["store"] == "postgresql" and run["broker"] == broker
    assert run["errors"] == 0 and run["count"] == 300, run
    # the store's pool and (PostgreSQL alone) the broker's sessions did the writing
    assert run["pg_cpu_s"] > 0 and run["pg_cpu_us_per_publish"] > 0


def test_pgfloor_runs_the_stores_own_statements(tmp_path):
    from bench import pgfloor
    from tests.services import require_postgres

    url = require_postgres()
    if pgfloor.pgbench_path() is None:
        pytest.skip("pgbench is not installed")
    rows = pgfloor.run(url, clients=4, group=4, seconds=1)
    assert [(r["mode"], r["sessions"]) for r in rows] == [
        ("single", 4), ("grouped", 1), ("store", 4)]
    assert [r["per_statement"] for r in rows[:2]] == [1, 4]
    assert all(r["publishes_per_s"] > 0 for r in rows)
    assert all(r["wal_flushes_per_s"] > 0 for r in rows[:2])
    assert rows[2]["pg_cpu_us"] > 0 and rows[2]["per_statement"] >= 1


@pytest.mark.timeout(120)  # two servers, two schemas
def test_tiny_cache_run_measures_both_modes_in_turns_with_the_runs_cuts(tmp_path):
    pytest.importorskip("hdrh", reason="hdrhistogram (test/bench extra) is not installed")
    from tests.services import require_postgres, require_redis

    records = _run_bench(tmp_path, "cache", "--store", require_postgres(), "--broker",
                         require_redis(), "--users", "5", "--fill", "2", "--requests", "6")
    on, off = records
    assert (on["cache"], off["cache"]) == (True, False)
    assert on["run"] == off["run"] == 1 and on["invocation"] == off["invocation"]
    for rec in records:  # every kind measured on both servers
        assert rec["delivery_count"] == rec["page_count"] == rec["page_changed_count"] == 6
    # the run's cut, from the two servers' figures of that run
    assert on["delivery_cut_p50_pct"] == off["delivery_cut_p50_pct"] == round(
        100 * (1 - on["delivery_p50_ms"] / off["delivery_p50_ms"]), 1)
