"""One error vocabulary for HTTP and WebSocket.

Every error the service raises is a :class:`TidingsError` with a stable machine
``code``, an HTTP ``status`` and a human ``message`` (and optionally the
offending ``field``).  The HTTP layer renders it as
``{"error": {"code", "message", "field"}}``; the WebSocket layer maps it to a
close code.

WebSocket close codes (RFC 6455 §7.4.2 reserves 4000-4999 for applications):

* ``4000-4099`` -- **reconnect**: the client should reconnect (with backoff)
  and resume from its cursor.  Slow consumer, shutdown, node drain, a user
  over the client API's rate limit.
* ``4400-4499`` -- **do not reconnect**: bad token, forbidden, bad request.
  Reconnecting with the same credentials will fail again.

``1000`` (normal) and ``1001`` (going away) keep their RFC meaning; clients
treat ``1001`` like the reconnect range.
"""

from __future__ import annotations

# -- WebSocket close codes ---------------------------------------------------
CLOSE_SLOW_CONSUMER = 4000  # queue over its cap; resume from cursor
CLOSE_SHUTDOWN = 4001  # node shutting down / draining
CLOSE_RESYNC = 4002  # server could not keep the stream gapless; resume
CLOSE_PING_TIMEOUT = 4003  # no pong within the ping timeout
CLOSE_TOKEN_EXPIRED = 4004  # the stream's token expired: reconnect with a fresh one
# The user is over the client API's rate limit (Settings.user_rate): a
# reconnect code, not 4429, so that a page refused once backs off and comes
# back instead of stopping for good.
CLOSE_RATE_LIMITED = 4005

CLOSE_BAD_REQUEST = 4400  # malformed first message, bad cursor, bad query
CLOSE_UNAUTHORIZED = 4401  # missing, expired or forged token
CLOSE_FORBIDDEN = 4403  # origin not allowed, app mismatch
CLOSE_TOO_MANY = 4429  # too many connections for this user (do not hammer)

RECONNECT_CLOSE_CODES = range(4000, 4100)
FATAL_CLOSE_CODES = range(4400, 4500)


def should_reconnect(close_code: int | None) -> bool:
    """Whether a client seeing ``close_code`` should reconnect and resume."""
    if close_code is None:
        return True  # connection dropped without a close frame
    return close_code not in FATAL_CLOSE_CODES


class TidingsError(Exception):
    """Base of every error a client can see."""

    status = 400
    code = "bad_request"
    close_code = CLOSE_BAD_REQUEST

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


class BadRequest(TidingsError):
    status, code = 400, "bad_request"


class Unauthorized(TidingsError):
    status, code, close_code = 401, "unauthorized", CLOSE_UNAUTHORIZED


class Forbidden(TidingsError):
    status, code, close_code = 403, "forbidden", CLOSE_FORBIDDEN


class NotFound(TidingsError):
    status, code = 404, "not_found"


class Conflict(TidingsError):
    status, code = 409, "conflict"


class PreconditionFailed(TidingsError):
    """A conditional request's condition is false (RFC 9110 §13.1.1: an
    ``If-Match`` that is not the current ETag); nothing was changed."""

    status, code = 412, "precondition_failed"


class PayloadTooLarge(TidingsError):
    status, code = 413, "payload_too_large"


class RequestTimeout(TidingsError):
    """A request body that did not arrive in time (``Limits.body_timeout``)."""

    status, code = 408, "request_timeout"


class UnsupportedEncoding(TidingsError):
    """A body in a content coding (gzip, br...): not undone, so not read."""

    status, code = 415, "unsupported_encoding"


class Invalid(TidingsError):
    """Well-formed JSON that breaks a rule (type, range, unknown field)."""

    status, code = 422, "invalid"


class RateLimited(TidingsError):
    status, code, close_code = 429, "rate_limited", CLOSE_RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: str | None):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TooManyConnections(RateLimited):
    """The user has ``max_connections_per_user`` streams open on this node:
    another connect would only be refused again until one closes."""

    code, close_code = "too_many_connections", CLOSE_TOO_MANY


class NotImplementedHere(TidingsError):
    """A transfer coding other than chunked (RFC 9112 §6.1: 501)."""

    status, code = 501, "not_implemented"


class Unavailable(TidingsError):
    """The store or broker cannot take the request now; retry later."""

    status, code, close_code = 503, "unavailable", CLOSE_SHUTDOWN

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: str | None):
        super().__init__(message, **kw)
        self.retry_after = retry_after


__all__ = [
    "TidingsError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict",
    "PreconditionFailed", "PayloadTooLarge", "UnsupportedEncoding", "Invalid", "RateLimited",
    "TooManyConnections", "NotImplementedHere", "Unavailable",
    "should_reconnect",
    "CLOSE_SLOW_CONSUMER", "CLOSE_SHUTDOWN", "CLOSE_RESYNC", "CLOSE_PING_TIMEOUT",
    "CLOSE_TOKEN_EXPIRED", "CLOSE_RATE_LIMITED",
    "CLOSE_BAD_REQUEST", "CLOSE_UNAUTHORIZED", "CLOSE_FORBIDDEN", "CLOSE_TOO_MANY",
]
