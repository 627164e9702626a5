"""The README's snippets are the files in examples/, and each one works
against a real ``tidings serve``: the shell lines through bash, the SDK
program through Python (the browser page: tests/browser/test_readme_page.py).

The snippets name the default address, http://127.0.0.1:8080; the tests run
them unchanged except for that address (a free port here), which the CLI
also takes from $TIDINGS_URL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_durability import _free_port, read_first_start

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8080"
# Blocks that are not examples: the install line (its steps run in
# tests/test_packaging.py), the test runner (CI runs it) and the file tree.
NOT_EXAMPLES = ("pip install . && tidings serve", "./scripts/test", "tidings/core/")


def readme_blocks() -> list[tuple[str | None, str]]:
    """(the example file a block says it is, or None; the block's text)."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"(<!-- example: (\S+) -->\n)?```[a-z]*\n(.*?)```", text, re.S):
        out.append((m.group(2), m.group(3)))
    return out


def test_every_readme_snippet_is_an_example_file():
    blocks = readme_blocks()
    named = [name for name, _ in blocks if name]
    assert len(named) >= 6
    for name, body in blocks:
        if name is None:
            assert any(marker in body for marker in NOT_EXAMPLES), body
            continue
        assert body == (ROOT / name).read_text(), f"README block differs from {name}"
    examples = {str(p.relative_to(ROOT)) for p in (ROOT / "examples").iterdir()}
    shown = set(named) | {"examples/backend.py"}  # linked from the README, not shown
    assert examples == shown


def example(name: str, url: str) -> str:
    return (ROOT / "examples" / name).read_text().replace(DEFAULT_URL, url)


@pytest.fixture
def quickstart(tmp_path):
    """`tidings serve` in a fresh directory, as the README has it, and an
    environment for the snippets: $API_KEY from its first start, the CLI on PATH."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "TIDINGS_URL": url}
    env.pop("API_KEY", None)
    server = subprocess.Popen([sys.executable, "-m", "tidings", "serve", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        first = read_first_start(server)
        env["API_KEY"] = first["api_key"]
        yield tmp_path, url, env
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()


def bash(script: str, cwd, env, timeout: float = 60) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.timeout(120)
def test_the_shell_quickstart(quickstart):
    cwd, url, env = quickstart
    token_sh = example("token.sh", url)
    env["USER_TOKEN"] = bash(token_sh + 'echo "$USER_TOKEN"\n', cwd, env).strip()
    assert env["USER_TOKEN"].count(".") == 2

    listener = subprocess.Popen(["bash", "-c", example("listen.sh", url)], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hello = json.loads(listener.stdout.readline())
        assert hello["type"] == "hello"
        published = json.loads(bash(example("publish.sh", url), cwd, env))
        assert published["status"] == "accepted" and published["recipients"] == 1
        again = json.loads(bash(example("publish.sh", url), cwd, env))  # same Idempotency-Key
        assert again["status"] == "duplicate" and again["id"] == published["id"]
        event = json.loads(listener.stdout.readline())
        assert event["type"] == "notification"
        assert event["notification"]["title"] == "Your order shipped"
    finally:
        listener.terminate()
        listener.wait(10)
        listener.stdout.close()
        listener.stderr.close()

    out = bash(example("inbox.sh", url), cwd, env)  # two JSON documents, back to back
    inbox, end = json.JSONDecoder().raw_decode(out)
    counts = out[end:].strip()
    assert [i["notification"]["title"] for i in inbox["items"]] == [
        "Your order shipped"]
    assert json.loads(counts) == {"unread": 1, "unseen": 1, "at": {"seq": 1, "feed": 0, "rev": 0}}


@pytest.mark.timeout(120)
def test_the_python_sdk_example(quickstart):
    cwd, url, env = quickstart
    program = cwd / "sdk.py"
    program.write_text(example("sdk.py", url))
    r = subprocess.run([sys.executable, str(program)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("hello")
    assert lines[-1].startswith("notification") and "user_17 replied" in lines[-1]
