"""tidings.toml: defaults < the file < TIDINGS_* variables < flags; `tidings
config` prints the result with its secrets masked; `serve --config` runs on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.test_durability import _free_port
from tidings.config_file import ConfigError, effective, load

FILE = """
port = 9000
data = "./from-file"
store = "postgresql://ann:s3cret@db.internal:5432/tidings"
allowed_origins = ["https://app.example.com"]
key_rate = 50.0

[limits]
page_max = 50

[email]
host = "smtp.from-file.test"
password = "mailpass"

[webhook]
timeout = 3.0
"""


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TIDINGS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_each_layer_over_the_one_before(tmp_path, clean_env):
    path = tmp_path / "tidings.toml"
    path.write_text(FILE)
    settings, found = load(str(path))
    assert found == path
    assert (settings.port, settings.data, settings.key_rate) == (9000, "./from-file", 50.0)
    assert settings.allowed_origins == ("https://app.example.com",)
    assert settings.limits.page_max == 50 and settings.limits.max_batch == 1000  # a default
    assert settings.email is not None and settings.email.host == "smtp.from-file.test"
    assert settings.webhook is not None and settings.webhook.timeout == 3.0

    clean_env.setenv("TIDINGS_PORT", "9100")
    clean_env.setenv("TIDINGS_EMAIL_HOST", "smtp.from-env.test")
    settings, _ = load(str(path))
    assert settings.port == 9100  # the environment over the file
    assert settings.email is not None and settings.email.host == "smtp.from-env.test"
    assert settings.email.password == "mailpass"  # the file's other fields stay

    settings, _ = load(str(path), port=9200, data=None)  # a flag over both; None: not given
    assert (settings.port, settings.data) == (9200, "./from-file")

    clean_env.setenv("TIDINGS_WEBHOOK", "off")
    assert load(str(path))[0].webhook is None  # a switch in the environment wins


def test_the_file_is_found_by_variable_or_in_the_working_directory(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    assert load()[1] is None and load()[0].port == 8080  # no file: the defaults
    (tmp_path / "tidings.toml").write_text("port = 7000\n")
    assert load()[0].port == 7000
    other = tmp_path / "other.toml"
    other.write_text("port = 7001\npush = false\n")
    clean_env.setenv("TIDINGS_CONFIG", str(other))
    settings, found = load()
    assert found == other and settings.port == 7001 and settings.push is None


@pytest.mark.parametrize(("text", "message"), [
    ("prot = 1\n", "unknown setting 'prot'"),
    ("[email]\nhots = 'x'\n", "unknown setting 'hots' in [email]"),
    ("port = 'x'\n", "invalid setting: Expected `int`, got `str` - at `$.port`"),
    ("[push\n", "not valid TOML"),
    ("email = 3\n", "email is a table ([email]) or false"),
])
def test_a_bad_file_is_one_clear_error(tmp_path, clean_env, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(str(path))
    assert message in str(err.value)


def test_secrets_are_masked(tmp_path, clean_env):
    path = tmp_path / "tidings.toml"
    path.write_text(FILE + '\n[push]\nvapid_private_key = "pushkey-secret"\n'
                           'vapid_subject = "mailto:ops@acme.test"\n')
    clean_env.setenv("TIDINGS_BROKER", "redis://:redispass@127.0.0.1:6379/0")
    clean_env.setenv("TIDINGS_SECRET_KEY", "sealkey-secret")
    doc = effective(load(str(path))[0])
    text = json.dumps(doc)
    assert doc["secret_key"] == "***"
    for secret in ("s3cret", "mailpass", "pushkey-secret", "redispass", "sealkey-secret"):
        assert secret not in text
    assert doc["store"] == "postgresql://ann:***@db.internal:5432/tidings"
    assert doc["email"]["password"] == "***" and doc["push"]["vapid_private_key"] == "***"
    assert doc["push"]["vapid_subject"] == "mailto:ops@acme.test"


def test_the_egress_proxy_is_a_variable_masked_and_checked(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    assert load()[0].egress_proxy is None
    clean_env.setenv("TIDINGS_EGRESS_PROXY", "http://egress:proxypass@proxy.internal:3128")
    settings, _ = load()
    assert settings.egress_proxy == "http://egress:proxypass@proxy.internal:3128"
    assert effective(settings)["egress_proxy"] == "http://egress:***@proxy.internal:3128"
    clean_env.setenv("TIDINGS_EGRESS_PROXY", "")
    assert load()[0].egress_proxy is None  # empty: none
    clean_env.setenv("TIDINGS_EGRESS_PROXY", "https://egress:proxypass@proxy.internal:3128")
    with pytest.raises(ConfigError, match="egress_proxy must be an http:// URL") as err:
        load()
    assert "proxypass" not in str(err.value)


def _cli(*args, cwd, env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "tidings", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_tidings_config_prints_the_effective_settings(tmp_path):
    (tmp_path / "tidings.toml").write_text(FILE)
    r = _cli("config", cwd=tmp_path, env={"TIDINGS_PORT": "9100"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# effective settings: defaults < tidings.toml < TIDINGS_*")
    assert "\nport = 9100\n" in r.stdout and 'data = "./from-file"' in r.stdout
    assert "s3cret" not in r.stdout and "mailpass" not in r.stdout
    assert "[limits]\n" in r.stdout and "\npage_max = 50\n" in r.stdout
    assert "# push = false  (off)" in r.stdout
    as_json = json.loads(_cli("config", "--json", cwd=tmp_path).stdout)
    assert as_json["port"] == 9000 and as_json["email"]["password"] == "***"
    bad = _cli("config", "--config", "missing.toml", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "Error: no configuration file at missing.toml")


@pytest.mark.timeout(90)
def test_serve_runs_on_the_file(tmp_path):
    port = _free_port()
    (tmp_path / "conf.toml").write_text(f'port = {port}\ndata = "./served"\n')
    proc = subprocess.Popen([sys.executable, "-m", "tidings", "serve", "--config", "conf.toml"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={k: v for k, v in os.environ.items()
                                            if not k.startswith("TIDINGS_")})
    try:
        for line in proc.stdout:
            if "listening on" in line:
                break
        assert f"listening on http://127.0.0.1:{port}" in line
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert (tmp_path / "served" / "tidings.db").exists()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_limits_from_the_environment_and_flags_over_the_file(tmp_path, clean_env):
    path = tmp_path / "tidings.toml"
    path.write_text(FILE)  # [limits] page_max = 50
    clean_env.setenv("TIDINGS_LIMITS_MAX_BATCH", "10")
    clean_env.setenv("TIDINGS_LIMITS_PAGE_MAX", "40")
    limits = load(str(path))[0].limits
    assert (limits.page_max, limits.max_batch, limits.ids_max) == (40, 10, 1000)
    limits = load(str(path), limits={"page_max": "20"})[0].limits
    assert (limits.page_max, limits.max_batch) == (20, 10)  # a flag over both, the rest kept

    clean_env.setenv("TIDINGS_LIMITS_PAGE_MAX", "many")
    with pytest.raises(ConfigError, match=r"Expected `int`, got `str` - at `\$.limits.page_max`"):
        load(str(path))
    clean_env.delenv("TIDINGS_LIMITS_PAGE_MAX")
    clean_env.setenv("TIDINGS_LIMITS_PAGE_MAXX", "40")  # a typo is not silently ignored
    with pytest.raises(ValueError, match="unknown limit TIDINGS_LIMITS_PAGE_MAXX"):
        load(str(path))


@pytest.mark.parametrize(("flag", "message"), [
    ("page_maxx=3", "Invalid value for --limit: 'page_maxx' is not a limit"),
    ("page_max", "Invalid value for --limit: 'page_max' is not NAME=VALUE"),
    ("page_max=lots", "invalid setting: Expected `int`, got `str` - at `$.limits.page_max`"),
])
def test_a_bad_limit_flag_is_one_clear_error(tmp_path, flag, message):
    r = _cli("serve", "--data", "d", "--port", "0", "--limit", flag, cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(90)
def test_serve_enforces_a_limit_given_as_a_flag(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--data", "d",
         "--limit", "max_body_bytes=300"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")})
    try:
        key = None
        for line in proc.stdout:
            if "API key:" in line:
                key = line.split()[-1]
            if "listening on" in line:
                break
        assert key is not None
        url = f"http://127.0.0.1:{port}/v1/notifications"
        headers = {"Authorization": f"Bearer {key}"}
        small = {"to": {"users": ["ann"]}, "title": "hi"}
        assert httpx.post(url, json=small, headers=headers).status_code == 202
        big = httpx.post(url, json=small | {"body": "x" * 400}, headers=headers)
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
