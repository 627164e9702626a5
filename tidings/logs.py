"""Request ids and structured logs (docs/operations.md#logs).

Every HTTP request gets an id: the caller's ``X-Request-Id`` when it is a sane
token, else a new one.  The answer carries it back in ``X-Request-Id``, and
every log line written while the request is handled names it, with the app
once a key or token named one and the notification a publish created, so an
operator can go from a client's error report to the server's lines about it.

``tidings serve --log-format json`` writes one JSON object a line (time, level,
logger, message, node, and the request's fields when there is a request);
the default ``text`` format is uvicorn's own.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # the CLI reads this module without serving
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-Id"
_SANE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}\Z")  # what is echoed and logged as given

# (request id, the request's state dict: "app" and "notification_id" land there)
_request: contextvars.ContextVar[tuple[str, dict] | None] = contextvars.ContextVar(
    "tidings_request", default=None)
NODE = {"name": ""}  # this process's node name, set when the app is built


class RequestId:
    """Pure ASGI middleware: the id in, the id out, the id in every log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"]
                      if k == b"x-request-id"), "")
        rid = request_id(given)
        # Starlette's request.state lives in this dict: what the handlers put
        # there (the app, a notification id) is seen by the log lines.
        state = scope.setdefault("state", {})
        token = _request.set((rid, state))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request.reset(token)


_prefix = uuid.uuid4().hex[:16]  # this process's; unique with the counter after it
_counter = itertools.count()


def request_id(given: str | None) -> str:
    """The caller's id when sane, else a new one: 32 hex digits, unique per
    process start and request (a uuid4 per request cost 1.5 µs of a publish)."""
    if given and _SANE.match(given):
        return given
    return f"{_prefix}{next(_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def bind(rid: str, state: dict) -> contextvars.Token:
    """Name request ``rid`` in every log line from here on, with what lands in
    ``state`` ("app", "notification_id"); for handlers outside the
    middleware (tidings/api/uvicorn_http.py).  Undo with :func:`unbind`."""
    return _request.set((rid, state))


def unbind(token: contextvars.Token) -> None:
    _request.reset(token)


def current() -> dict:
    """The fields of the request being handled ({} outside a request)."""
    found = _request.get()
    if found is None:
        return {}
    rid, state = found
    out = {"request_id": rid}
    for key in ("app", "notification_id"):
        if state.get(key) is not None:
            out[key] = state[key]
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, node, the request's fields,
    and whatever a call passed as ``extra={"app": ..., "notification_id": ...}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "node": NODE["name"],
            **current(),
        }
        for key in ("app", "notification_id"):
            if key in record.__dict__:
                doc[key] = record.__dict__[key]
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) \
                and len(record.args) == 5:
            client, method, path, _, status = record.args
            doc.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc).decode()


def uvicorn_log_config(log_format: str, level: str) -> dict | None:
    """The logging configuration uvicorn applies (None: its own text format)."""
    if log_format == "text":
        return None
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tidings.logs.JsonFormatter"}},
        "handlers": {"json": handler},
        "loggers": {
            name: {"handlers": ["json"], "level": level.upper(), "propagate": False}
            for name in ("tidings", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
