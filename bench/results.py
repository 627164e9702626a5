"""Where results go: ``bench/results/<date>/results.jsonl`` (one JSON line per run)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results"


def today_dir(root: Path | None = None) -> Path:
    d = (root or ROOT) / dt.date.today().isoformat()
    d.mkdir(parents=True, exist_ok=True)
    return d


def git_commit() -> str | None:
    """HEAD's short hash, with "+dirty" when tidings/ has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../tidings"],
                               capture_output=True, text=True, timeout=5, cwd=here).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty.strip() else "")) or None


def invocation_id() -> str:
    return dt.datetime.now().strftime("%Y%m%dT%H%M%S")


def append(path: Path, record: dict) -> None:
    record = {**record, "loadavg": [round(x, 2) for x in os.getloadavg()]}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
