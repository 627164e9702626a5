"""The error vocabulary and WebSocket close codes."""

from __future__ import annotations

import pytest

from tidings import errors as E
from tidings.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    TidingsError,
    TooManyConnections,
    Unauthorized,
    Unavailable,
    should_reconnect,
)

TABLE = [
    (BadRequest, 400, "bad_request", E.CLOSE_BAD_REQUEST),
    (Unauthorized, 401, "unauthorized", E.CLOSE_UNAUTHORIZED),
    (Forbidden, 403, "forbidden", E.CLOSE_FORBIDDEN),
    (NotFound, 404, "not_found", E.CLOSE_BAD_REQUEST),
    (Conflict, 409, "conflict", E.CLOSE_BAD_REQUEST),
    (PreconditionFailed, 412, "precondition_failed", E.CLOSE_BAD_REQUEST),
    (PayloadTooLarge, 413, "payload_too_large", E.CLOSE_BAD_REQUEST),
    (Invalid, 422, "invalid", E.CLOSE_BAD_REQUEST),
    # over the user's request rate: reconnect later; over the user's
    # streams: do not (close one first)
    (RateLimited, 429, "rate_limited", E.CLOSE_RATE_LIMITED),
    (TooManyConnections, 429, "too_many_connections", E.CLOSE_TOO_MANY),
    (Unavailable, 503, "unavailable", E.CLOSE_SHUTDOWN),
]


@pytest.mark.parametrize("cls,status,code,close", TABLE)
def test_error_classes(cls, status, code, close):
    err = cls("boom")
    assert isinstance(err, TidingsError)
    assert isinstance(err, Exception)
    assert (err.status, err.code, err.close_code) == (status, code, close)
    assert err.message == "boom"
    assert str(err) == "boom"
    assert err.field is None


def test_base_error_defaults():
    err = TidingsError("x")
    assert (err.status, err.code, err.close_code) == (400, "bad_request", E.CLOSE_BAD_REQUEST)


def test_to_dict_without_field():
    assert NotFound("no such notification").to_dict() == {
        "error": {"code": "not_found", "message": "no such notification"}
    }


def test_to_dict_with_field():
    assert Invalid("too long", field="title").to_dict() == {
        "error": {"code": "invalid", "message": "too long", "field": "title"}
    }


def test_code_override_is_per_instance():
    err = Unauthorized("expired", code="token_expired")
    assert err.code == "token_expired"
    assert err.to_dict()["error"]["code"] == "token_expired"
    assert err.status == 401
    # The class default is untouched.
    assert Unauthorized.code == "unauthorized"
    assert Unauthorized("x").code == "unauthorized"


def test_retry_after():
    assert RateLimited("slow down").retry_after == 1.0
    r = RateLimited("slow down", retry_after=2.5, field="user", code="too_many_connections")
    assert r.retry_after == 2.5
    assert r.field == "user" and r.code == "too_many_connections"
    u = Unavailable("store down", retry_after=0.5)
    assert u.retry_after == 0.5
    assert u.to_dict() == {"error": {"code": "unavailable", "message": "store down"}}


def test_errors_can_be_raised_and_caught_as_base():
    with pytest.raises(TidingsError) as ei:
        raise Forbidden("origin not allowed", field="origin")
    assert ei.value.to_dict()["error"]["field"] == "origin"


# -- close codes -------------------------------------------------------------


def test_close_code_constants_in_documented_ranges():
    for c in (E.CLOSE_SLOW_CONSUMER, E.CLOSE_SHUTDOWN, E.CLOSE_RESYNC, E.CLOSE_PING_TIMEOUT,
              E.CLOSE_TOKEN_EXPIRED, E.CLOSE_RATE_LIMITED):
        assert 4000 <= c <= 4099
        assert should_reconnect(c)
    for c in (E.CLOSE_BAD_REQUEST, E.CLOSE_UNAUTHORIZED, E.CLOSE_FORBIDDEN, E.CLOSE_TOO_MANY):
        assert 4400 <= c <= 4499
        assert not should_reconnect(c)
    codes = {E.CLOSE_SLOW_CONSUMER, E.CLOSE_SHUTDOWN, E.CLOSE_RESYNC, E.CLOSE_PING_TIMEOUT,
             E.CLOSE_TOKEN_EXPIRED, E.CLOSE_RATE_LIMITED,
             E.CLOSE_BAD_REQUEST, E.CLOSE_UNAUTHORIZED, E.CLOSE_FORBIDDEN, E.CLOSE_TOO_MANY}
    assert len(codes) == 10


@pytest.mark.parametrize("code", [4000, 4001, 4050, 4099])
def test_reconnect_range(code):
    assert should_reconnect(code)


@pytest.mark.parametrize("code", [4400, 4401, 4403, 4429, 4450, 4499])
def test_fatal_range(code):
    assert not should_reconnect(code)


def test_every_code_in_ranges():
    assert all(should_reconnect(c) for c in range(4000, 4100))
    assert not any(should_reconnect(c) for c in range(4400, 4500))


def test_dropped_connection_and_going_away_reconnect():
    assert should_reconnect(None)
    assert should_reconnect(1001)
    assert should_reconnect(1006)  # abnormal closure


def test_fatal_range_boundaries():
    assert should_reconnect(4399)
    assert should_reconnect(4500)


def test_ranges_exported():
    assert E.RECONNECT_CLOSE_CODES == range(4000, 4100)
    assert E.FATAL_CLOSE_CODES == range(4400, 4500)
    for name in E.__all__:
        assert hasattr(E, name)
