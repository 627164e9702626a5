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
    if (prefix / ".installed").exists():
        return prefix / "node_modules"
    # Installed beside it and renamed into place: test workers running at the
    # same time (pytest -n) never see, or write into, a half-installed folder.
    staging = cache / f".{name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    done = subprocess.run(
        [npm(), "install", "--prefix", str(staging), "--no-audit", "--no-fund",
         "--no-package-lock", *specs], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        missing(f"npm install {' '.join(specs)} failed: {done.stderr.strip()[-300:]}")
    (staging / ".installed").write_text(" ".join(specs))
    if prefix.exists() and not (prefix / ".installed").exists():
        shutil.rmtree(prefix, ignore_errors=True)  # an unfinished install of an older layout
    try:
        staging.rename(prefix)
    except OSError:  # another worker's install got there first
        shutil.rmtree(staging, ignore_errors=True)
    return prefix / "node_modules"
