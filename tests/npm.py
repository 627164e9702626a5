"""Packages from the npm registry for the tests that need them (React for the
inbox's React page, TypeScript for the declarations), installed once into a
cache directory (``$TIDINGS_TEST_CACHE``, default ``~/.cache/tidings-tests``).
Without npm, or without the registry, those tests skip (fail in CI), like any
missing service (tests/services.missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.services import missing


def npm() -> str:
    found = shutil.which("npm")
    if found is None:
        missing("npm is not installed (apt-get install npm)")
    return found


def npm_install(name: str, *specs: str) -> Path:
    """``node_modules`` holding ``specs``, installed under the cache as ``name``."""
    cache = Path(os.environ.get("TIDINGS_TEST_CACHE", Path.home() / ".cache" / "tidings-tests"))
    prefix = cache / name
    done_marker = prefix / ".installed"
    if done_marker.exists():
        return prefix / "node_modules"
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm(), "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
         "--no-package-lock", *specs], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        missing(f"npm install {' '.join(specs)} failed: {done.stderr.strip()[-300:]}")
    done_marker.write_text(" ".join(specs))
    return prefix / "node_modules"
