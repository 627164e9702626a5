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


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ")


def _json_instruction(name: str) -> list[str]:
    import json
    import re

    m = re.search(rf"^{name} (?:.* )?CMD (\[.*\])$" if name == "HEALTHCHECK"
                  else rf"^{name} (\[.*\])$", _dockerfile(), re.M)
    assert m, name
    return json.loads(m.group(1))


@pytest.mark.timeout(600)
def test_the_image_install_steps_in_a_fresh_virtualenv(tmp_path):
    """What the Dockerfile does, without Docker: every dependency as a wheel,
    installed with no index, then its ENV, ENTRYPOINT + CMD and HEALTHCHECK run
    for real; the server writes nothing outside its data directory."""
    import os
    import re
    import socket
    import time

    text = _dockerfile()
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in text
    assert "pip install --no-cache-dir --no-index /wheels/*.whl" in text
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True,
                   timeout=120)
    py = tmp_path / "venv" / "bin" / "python"
    wheels = tmp_path / "wheels"
    subprocess.run([str(py), "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
                    str(ROOT)], check=True, timeout=400, capture_output=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index",
                    *map(str, wheels.glob("*.whl"))], check=True, timeout=300,
                   capture_output=True)

    env_line = re.search(r"^ENV (.*)$", text, re.M).group(1)
    image_env = dict(pair.split("=", 1) for pair in env_line.split())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "var-lib-tidings"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(image_env, TIDINGS_PORT=str(port), TIDINGS_HOST="127.0.0.1",
               TIDINGS_DATA=str(home / "data"), PATH=f"{py.parent}:{env['PATH']}")
    healthcheck = _json_instruction("HEALTHCHECK")
    assert healthcheck[0] == "python"
    command = _json_instruction("ENTRYPOINT") + _json_instruction("CMD")
    before = {p for p in (tmp_path / "venv").rglob("*")}

    def healthy() -> bool:
        return subprocess.run([str(py), *healthcheck[1:]], env=env, capture_output=True,
                              timeout=10).returncode == 0

    assert not healthy()  # nothing listens yet
    server = subprocess.Popen(command, cwd=home, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not healthy():
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(15)
    assert [p.name for p in home.iterdir()] == ["data"]  # only the volume's data
    assert {p for p in (tmp_path / "venv").rglob("*")} == before  # nothing in the image
