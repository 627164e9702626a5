"""Request parsing, auth dependencies and error rendering shared by the routes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tidings.core import etag
from tidings.core.audit import Actor, key_actor
from tidings.core.locales import valid_tag
from tidings.core.models import LOCALE_RE
from tidings.errors import (
    BadRequest,
    Invalid,
    NotImplementedHere,
    PayloadTooLarge,
    RequestTimeout,
    TidingsError,
    Unauthorized,
    UnsupportedEncoding,
)

log = logging.getLogger("tidings.api")
T = TypeVar("T")
F = TypeVar("F")
_encode = msgspec.json.encode


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return _encode(content)


def tagged(request: Request, body: bytes) -> Response:
    """``body`` (JSON) with its ``ETag``, or, for a ``GET`` whose
    ``If-None-Match`` names that tag (or ``*``), ``304 Not Modified`` with the
    tag and no body (RFC 9110 §13.1.2): the client has the document already.
    The tag is a hash of the body, so only a small document that is not read
    on every page view should be answered this way (docs/channels.md)."""
    tag = etag.of(body)
    if request.method == "GET":
        condition = etag.parse_if_none_match(request.headers.get("if-none-match"))
        if condition is not None and condition.matches(tag):
            return Response(status_code=304, headers={"ETag": tag})
    return Response(body, media_type="application/json", headers={"ETag": tag})


def error_response(exc: TidingsError) -> Response:
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(retry + 0.999)))
    return JSON(exc.to_dict(), status_code=exc.status, headers=headers)


def _codings(values: list[str]) -> set[str]:
    return {coding.strip().lower() for value in values for coding in value.split(",")} - {""}


def coding_refusal(headers) -> TidingsError | None:
    """Why a body sent with ``headers`` (Starlette's) cannot be read: a
    content coding (``Content-Encoding: gzip``: 415, RFC 9110 §15.5.16) or a
    transfer coding other than chunked (``Transfer-Encoding: gzip, chunked``:
    501, RFC 9112 §6.1).  Nothing undoes them here, and the bytes read as
    they came were a puzzling ``malformed_json``, or taken in silence by a
    route that may ignore its body."""
    coded = _codings(headers.getlist("content-encoding")) - {"identity"}
    if coded:
        return UnsupportedEncoding(
            f"Content-Encoding {', '.join(sorted(coded))} is not supported: send the body as "
            "it is", field="Content-Encoding")
    coded = _codings(headers.getlist("transfer-encoding")) - {"chunked"}
    if coded:
        return NotImplementedHere(
            f"Transfer-Encoding {', '.join(sorted(coded))} is not supported: only chunked",
            field="Transfer-Encoding")
    return None


async def read_body(request: Request, limit: int) -> bytes:
    refused = coding_refusal(request.headers)
    if refused is not None:
        raise refused
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # the client went, or the server closed the connection because the
        # body did not arrive within body_timeout (api/uvicorn_http.py): not
        # a bug to log with its traceback, and nobody hears the answer
        raise RequestTimeout("the request body did not arrive") from None
    return b"".join(chunks)


def _field_of(message: str) -> str | None:
    # msgspec reports "... - at `$.to.users[0]`"; an unknown field is named
    # in the message ("Object contains unknown field `tittle`"), and the path
    # is that of the object holding it, so append the name.
    path = None
    if "at `$" in message:
        path = message.rsplit("at `$", 1)[1].rstrip("`").lstrip(".") or None
    if message.startswith("Object contains unknown field `"):
        name = message[len("Object contains unknown field `"):].split("`", 1)[0]
        path = f"{path}.{name}" if path else name
    return path


def decode(raw: bytes, type_: type[T]) -> T:
    """Decode and validate a JSON body: 400 for malformed JSON, 422 for rules."""
    return decoder(type_)(raw)


_decoders: dict[type, Callable[[bytes], Any]] = {}


def _choices(type_: type, field: str | None, message: str) -> str:
    """msgspec's "Invalid enum value 'html'", with the values a top-level
    field of ``type_`` takes ("format", "priority")."""
    if not message.startswith("Invalid enum value") or field is None:
        return message
    info = msgspec.inspect.type_info(type_)
    for f in getattr(info, "fields", ()):
        kind = f.type.types[0] if isinstance(f.type, msgspec.inspect.UnionType) else f.type
        if isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        if f.encode_name == field and isinstance(kind, msgspec.inspect.LiteralType):
            return f"{message}: {field} is one of " + ", ".join(f'"{v}"' for v in kind.values)
    return message


def decoder(type_: type[T]) -> Callable[[bytes], T]:
    """:func:`decode` for ``type_`` as a function of the body alone (one
    msgspec decoder per type, made once)."""
    found = _decoders.get(type_)
    if found is not None:
        return found
    decode_raw = msgspec.json.Decoder(type_).decode

    def decode_body(raw: bytes) -> T:
        try:
            return decode_raw(raw)
        except msgspec.ValidationError as exc:
            text = str(exc)
            field = _field_of(text)
            raise Invalid(_choices(type_, field, text.split(" - at ")[0]), field=field) from None
        except msgspec.DecodeError as exc:
            # an empty body never decodes: told apart only once it failed
            if not bytes(raw).strip():
                raise BadRequest("a JSON body is required", code="empty_body") from None
            raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from None
        except RecursionError:
            # msgspec raises this (not a DecodeError) for nesting past its depth limit.
            raise BadRequest("JSON is nested too deeply", code="malformed_json") from None

    _decoders[type_] = decode_body
    return decode_body


async def body_of(request: Request, type_: type[T]) -> T:
    service = request.app.state.service
    return decode(await read_body(request, service.settings.limits.max_body_bytes), type_)


def bearer(request: Request) -> str | None:
    return bearer_of(request.headers.get("authorization", ""))


def bearer_of(value: str) -> str | None:
    """The credential of an ``Authorization: Bearer`` header value."""
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    if value:
        raise Unauthorized("Authorization must be 'Bearer <credential>'")
    return None


def client_host(request: Request) -> str | None:
    """The caller's address, as the limits of failed logins, key checks and
    user tokens count it: the socket's peer, or the address a trusted proxy forwarded
    (uvicorn's proxy headers, FORWARDED_ALLOW_IPS, have set the scope's
    client by then); None on a Unix socket."""
    client = request.scope.get("client")
    return client[0] if client else None


async def server_auth(request: Request, scope: str) -> str:
    """The app id of a valid API key with ``scope``, after taking one token
    from the key's rate limit."""
    service = request.app.state.service
    key = bearer(request)
    # a cached key is answered from memory; only the others are checked
    # within the limit of failed checks, by the caller's address
    record = service.key_now(key, scope) or await service.authenticate_key(
        key, scope, client_host(request))
    request.state.app = record.app_id  # errors from here on are counted for this app
    request.state.key = record
    # 429 over Settings.key_rate (tidings/service/ratelimits.py)
    await service.limits.charge_key(record)
    return record.app_id


def actor_of(request: Request) -> Actor:
    """Who the audit log says made a change: the key ``server_auth`` took
    (its prefix and name) and the client's address."""
    record = request.state.key
    return key_actor(record.prefix, record.name, client_host(request))


async def user_auth(request: Request) -> tuple[str, str]:
    """The ``(app, user)`` of a valid user token, after taking one token from
    the user's rate limit."""
    service = request.app.state.service
    # a token that is not valid counts against the limits of invalid tokens
    # from the caller's address (client_host's rule)
    app, user = await service.authenticate_token(bearer(request), lambda: client_host(request))
    request.state.app = app
    # 429 over Settings.user_rate (tidings/service/ratelimits.py)
    service.limits.charge_user(app, user)
    return app, user


# A notification id as the routes check it (tidings.core.ids.is_id).
ID_SCHEMA = {"type": "string", "pattern": r"^[0-9A-HJKMNP-TV-Z]{26}\Z"}


class Query:
    """A query parameter: how its routes read it and how /openapi.json
    describes it, in one declaration.  A route states the ones it reads with
    ``@takes(...)`` (tidings.api.openapi documents them from the routes)."""

    def __init__(self, name: str, description: str, schema: dict, *,
                 check: Callable[[str], bool] | None = None, message: str = "",
                 required: bool = False, error: type[TidingsError] = Invalid):
        self.name, self.description, self.required = name, description, required
        self._schema, self._check, self._message, self._error = schema, check, message, error

    @property
    def validates(self) -> bool:
        """Whether a bad value is a 422 (an Invalid)."""
        return self._error is Invalid and (self._check is not None or self.required)

    def schema(self, limits) -> dict:
        return dict(self._schema)

    def parse(self, raw: str | None):
        """The value of the parameter's raw text (``None``: absent)."""
        if raw is None:
            if self.required:
                raise self._error(f"{self.name} is required (?{self.name}=...)",
                                  field=self.name)
            return None
        if self._check is not None and not self._check(raw):
            raise self._error(self._message, field=self.name)
        return raw

    def get(self, request: Request):
        return self.parse(request.query_params.get(self.name))

    def read(self, params: Mapping[str, str], limits: Any):
        """:meth:`get` for a direct route (``params``: tidings.api.direct.Call.params)."""
        return self.parse(params.get(self.name))


class IntQuery(Query):
    """An integer in ``[lo, hi]``; ``hi`` may be a setting (a function of the Limits)."""

    def __init__(self, name: str, description: str, default: int, lo: int,
                 hi: int | Callable[[Any], int]):
        super().__init__(name, description, {})
        self.default, self.lo, self.hi = default, lo, hi

    @property
    def validates(self) -> bool:
        return True

    def schema(self, limits) -> dict:
        hi = self.hi(limits) if callable(self.hi) else self.hi
        return {"type": "integer", "minimum": self.lo, "maximum": hi, "default": self.default}

    def get(self, request: Request) -> int:
        return self.read(request.query_params, request.app.state.service.settings.limits)

    def read(self, params: Mapping[str, str], limits: Any) -> int:
        hi = self.hi(limits) if callable(self.hi) else self.hi
        return int_of(params.get(self.name), self.name, self.default, self.lo, hi)


class ListQuery(Query):
    """A parameter that may be repeated (``?tag=a&tag=b``), up to ``most``
    times, each value checked like a :class:`Query`'s: a tuple of the values
    in order, duplicates dropped, or ``()`` when absent."""

    def __init__(self, name: str, description: str, item: dict, most: int, *,
                 check: Callable[[str], bool], message: str):
        super().__init__(name, description, item, check=check, message=message)
        self.most = most

    def schema(self, limits) -> dict:
        return {"type": "array", "items": dict(self._schema), "maxItems": self.most}

    def values(self, raw: list[str]) -> tuple[str, ...]:
        if len(raw) > self.most:
            raise Invalid(f"at most {self.most} {self.name} values", field=self.name)
        return tuple(dict.fromkeys(self.parse(value) for value in raw))

    def get(self, request: Request) -> tuple[str, ...]:
        return self.values(request.query_params.getlist(self.name))

    def read(self, params: Mapping[str, str], limits: Any):
        raise TypeError(f"?{self.name}= may repeat: read it with values()")


# A device whose language differs from its user's preferences' asks for its
# own (the inbox page, the group members, the live streams): docs/inbox.md.
LOCALE = Query("locale", "Show the notifications in this language (a BCP 47 tag) instead of "
               "the one of the user's preferences", {"type": "string", "maxLength": 35,
                                                     "pattern": LOCALE_RE},
               check=valid_tag, message='locale must be a BCP 47 language tag, such as "de" '
               'or "pt-BR"')


def takes(*params: Query):
    """Declare the query parameters a route reads (for /openapi.json)."""
    def mark(endpoint: F) -> F:
        endpoint.query = params  # type: ignore[attr-defined]
        return endpoint
    return mark


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return int_of(request.query_params.get(name), name, default, lo, hi)


def int_of(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    """The integer query parameter ``name`` of text ``raw`` (None: absent)."""
    if raw is None:
        return default
    # ASCII digits only, as in cursors: int() would also take "1_0", " 5 " and
    # other scripts' digits
    if not (raw.isascii() and raw.removeprefix("-").isdigit()):
        raise Invalid(f"{name} must be an integer", field=name)
    try:
        value = int(raw)
    except ValueError:  # past int()'s limit on digits
        raise Invalid(f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo} and {hi}", field=name)
    return value
