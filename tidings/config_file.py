"""The configuration file, ``tidings.toml``, and the effective settings.

Settings are layered, each over the one before (docs/operations.md#configuration):

1. the defaults (tidings/config.py);
2. the file: ``--config PATH``, else ``$TIDINGS_CONFIG``, else ``./tidings.toml`` when it exists;
3. ``TIDINGS_*`` environment variables;
4. command-line flags.

The file has the settings' own names: top-level keys (``port = 8080``,
``allowed_origins = ["https://app.example.com"]``) and one table per section
(``[limits]``, ``[outbound]``, ``[webhook]``, ``[push]``, ``[email]``); a
section set to ``false`` is off (``push = false``).  An unknown name is an
error, so a typo never passes silently.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

from tidings.config import (
    EmailConfig,
    Limits,
    OutboundConfig,
    Settings,
    WebhookConfig,
    WebPushConfig,
    from_env,
)

DEFAULT_FILE = "tidings.toml"
MASK = "***"
# Secrets among the settings: shown masked by `tidings config`.
_SECRET_FIELDS = {("push", "vapid_private_key"), ("email", "password")}
_SECRET_SETTINGS = {"secret_key"}
_URL_FIELDS = {"store", "broker", "outbox", "egress_proxy"}
SECTIONS = {"limits": Limits, "outbound": OutboundConfig, "webhook": WebhookConfig,
            "push": WebPushConfig, "email": EmailConfig}


class ConfigError(ValueError):
    """The configuration file cannot be read, or names a setting that does not exist."""


def find(path: str | None) -> Path | None:
    """The file to read: the one given, else $TIDINGS_CONFIG, else ./tidings.toml if present."""
    given = path or os.environ.get("TIDINGS_CONFIG")
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"no configuration file at {given}")
        return Path(given)
    default = Path(DEFAULT_FILE)
    return default if default.is_file() else None


def read(path: Path) -> dict:
    """The file's settings, checked against the settings' names."""
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    fields = Settings.__struct_fields__
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        section = _section_type(key)
        if section is None:
            continue
        if value is False:
            raw[key] = None  # `push = false`: the section is off
        elif isinstance(value, dict):
            for name in value:
                if name not in section.__struct_fields__:
                    raise ConfigError(f"{path}: unknown setting {name!r} in [{key}]")
        else:
            raise ConfigError(f"{path}: {key} is a table ([{key}]) or false")
    return raw


def load(path: str | None = None, **overrides) -> tuple[Settings, Path | None]:
    """The effective settings and the file they were read from (None: no file)."""
    found = find(path)
    base = read(found) if found else {}
    try:
        return from_env(base, **overrides), found
    except msgspec.ValidationError as exc:
        where = f" (defaults < {found} < environment < flags)" if found else ""
        raise ConfigError(f"invalid setting: {exc}{where}") from None


def effective(settings: Settings) -> dict:
    """The settings as plain data with every secret masked, for `tidings config`."""
    doc = msgspec.to_builtins(settings)
    for key in _URL_FIELDS:
        if doc.get(key):
            doc[key] = mask_url(doc[key])
    for section, name in _SECRET_FIELDS:
        if doc.get(section) and doc[section].get(name):
            doc[section][name] = MASK
    for key in _SECRET_SETTINGS:
        if doc.get(key):
            doc[key] = MASK
    return doc


def mask_url(url: str) -> str:
    """A URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def to_toml(doc: dict) -> str:
    """``effective()`` as a tidings.toml (unset values and off sections as comments)."""
    top, tables = [], []
    for key, value in doc.items():
        if _section_type(key) is not None:
            if value is None:
                tables.append(f"# {key} = false  (off)")
                continue
            lines = [f"[{key}]"]
            for name, v in value.items():
                lines.append(_line(name, v))
            tables.append("\n".join(lines))
        else:
            top.append(_line(key, value))
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def _line(name: str, value) -> str:
    if value is None:
        return f"# {name} = (not set)"
    return f"{name} = {_value(value)}"


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return msgspec.json.encode(str(value)).decode()  # a TOML basic string


def _section_type(key: str):
    return SECTIONS.get(key)
