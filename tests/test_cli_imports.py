"""What the CLI loads: every command pays for the imports of ``tidings.cli``,
and the test suite alone starts it hundreds of times.  So the modules only
``serve`` needs (the HTTP app, the server, the network backends, the
channels' HTTP client) load inside the commands that use them; the operator
commands load the service and the store, nothing more."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# What only serving (or one backend) needs.
SERVING = ["uvicorn", "starlette", "tidings.api", "tidings.dashboard", "asyncpg", "redis",
           "httpx", "aiosmtplib", "pywebpush"]
# What the operator commands need, and `--help` does not.
OPERATING = ["tidings.service.service", "tidings.store.base", "tidings.gateway.hub",
             "cryptography", "jwt", "asyncio"]


def loaded(script: str, cwd) -> list[str]:
    """The modules of SERVING and OPERATING that ``script`` left loaded, in a fresh interpreter."""
    names = SERVING + OPERATING
    code = (script + "\nimport json, sys\n"
            f"print(json.dumps([m for m in {names!r} if m in sys.modules]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_the_cli_loads_neither_the_service_nor_the_server(tmp_path):
    assert loaded("import tidings.cli", tmp_path) == []


def test_the_operator_commands_load_the_service_but_not_the_server(tmp_path):
    data = str(tmp_path / "data")
    script = f"""
import contextlib, io
from tidings.cli import main
for args in (["migrate", "--data", {data!r}], ["app", "create", "shop", "--data", {data!r}],
             ["key", "list", "--app", "shop", "--data", {data!r}],
             ["token", "--app", "shop", "--user", "ann", "--data", {data!r}]):
    with contextlib.redirect_stdout(io.StringIO()):
        main(args, standalone_mode=False)
"""
    assert loaded(script, tmp_path) == OPERATING
