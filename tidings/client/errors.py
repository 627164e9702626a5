"""Errors the SDK raises.

Both subclass :class:`tidings.errors.TidingsError`, so an application can catch
the server's own error vocabulary with one ``except`` whether the failure came
back over HTTP or as a WebSocket close code.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import msgspec

from tidings.errors import TidingsError


class TidingsAPIError(TidingsError):
    """A non-2xx answer from the server.

    ``status`` is the HTTP status, ``code`` the stable machine code from the
    ``{"error": {...}}`` body (``"http_<status>"`` when the body was not ours,
    e.g. from a proxy), ``retry_after`` the seconds the server asked us to wait
    (429/503), if any.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, field=field, code=code)
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (field {self.field!r})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r}, retry_after={self.retry_after!r})"
        )


# Close codes 44xx mirror HTTP statuses (4401 ~ 401); give them the same codes
# the HTTP layer would use so callers can treat both alike.
_CLOSE_NAMES = {
    4400: "bad_request",
    4401: "unauthorized",
    4403: "forbidden",
    4429: "too_many_connections",
}


class StreamClosed(TidingsAPIError):
    """The live stream was closed with a code that says "do not reconnect".

    Reconnecting with the same credentials would fail the same way (expired
    token, forbidden origin, too many connections), so the subscriber stops and
    raises this instead of hammering the server.  ``close_code`` is the
    WebSocket close code (or ``None`` for a refused handshake), ``reason`` the
    close reason text.
    """

    def __init__(self, close_code: int | None, reason: str = "", *, status: int | None = None,
                 code: str | None = None, field: str | None = None,
                 retry_after: float | None = None):
        if status is None:
            status = close_code - 4000 if close_code and 4400 <= close_code < 4500 else 0
        if code is None:
            code = _CLOSE_NAMES.get(close_code or 0, f"close_{close_code}")
        super().__init__(status, code, reason or f"stream closed with code {close_code}",
                         field, retry_after)
        # None for a refused handshake: only the SDK raises this, never the server
        self.close_code = close_code  # type: ignore[assignment]
        self.reason = reason


class Unreachable(TidingsAPIError):
    """The stream could not be opened ``attempts`` times in a row (the server is
    down, or not where the URL says): raised when ``max_retries`` is set."""

    def __init__(self, message: str, attempts: int):
        super().__init__(0, "unreachable", message)
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3).

    Accepts delta-seconds or an HTTP-date; anything unparsable is ``None``
    rather than an exception, because a bad hint must not turn a retryable
    error into a crash.
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def error_from_response(status: int, headers: Any, content: bytes | bytearray,
                        ) -> TidingsAPIError:
    """Build the error for a non-2xx response (``headers``: any mapping)."""
    retry_after = parse_retry_after(headers.get("retry-after"))
    code, message, field = f"http_{status}", "", None
    try:
        body = msgspec.json.decode(content) if content else None
    except msgspec.DecodeError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        field = err.get("field")
    if not message:
        text = content[:200].decode("utf-8", "replace").strip() if content else ""
        message = text or f"HTTP {status}"
    return TidingsAPIError(status, code, message, field, retry_after)


__all__ = ["TidingsAPIError", "StreamClosed", "parse_retry_after", "error_from_response"]
