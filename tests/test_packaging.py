"""The package builds without deprecation warnings (setuptools stops building
deprecated metadata after 2027-02-18) and carries everything a server needs:
the browser's files, the SQL migrations and the Redis scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_the_wheel_builds_cleanly_and_ships_its_assets(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "SetuptoolsDeprecationWarning" not in log
    assert "project.license" not in log
    (wheel,) = tmp_path.glob("tidings-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("tidings/dashboard/static/tidings.js", "tidings/dashboard/static/index.html",
                    "tidings/dashboard/static/favicon.ico", "tidings/broker/lua/take.lua",
                    "tidings/store/sql/sqlite_001.sql"):
        assert shipped in names, shipped
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()
