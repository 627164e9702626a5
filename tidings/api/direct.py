"""Direct routes: the hot endpoints, callable without an ASGI round trip.

Publishing is what tidings does most, and under a plain ASGI stack the
request costs more than the publish: uvicorn's scope, request cycle, event
and two socket writes, then Starlette's middleware, router and ``Request``
(about 45 µs of the 90 the event loop spent on a publish, bench/results/
2026-12-06/NOTES.md).  The same holds for the two reads every device makes
when it opens its inbox: its first page and its counts.  A direct route is
written once, as a handler of a :class:`Call` (headers, query and body,
nothing else), and served two ways:

* as an ordinary Starlette route (:func:`starlette_route`), so the app stays
  a plain ASGI app that any ASGI server runs, and the route is listed,
  documented and tested like every other;
* straight from the HTTP protocol of ``tidings serve``
  (tidings/api/uvicorn_http.py), which parses the request with httptools,
  calls the handler and writes the whole answer in one socket write.

Both paths answer the same bytes and the same JSON errors
(tidings/errors.py): the handler raises :class:`TidingsError`, and
:func:`error_answer` renders it exactly like the app's exception handler.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.api.common import read_body
from tidings.config import Settings
from tidings.errors import TidingsError

log = logging.getLogger("tidings")
_encode = msgspec.json.encode

INTERNAL = _encode({"error": {"code": "internal", "message": "internal error"}})


class Call:
    """One request to a direct route: its headers, query string and body,
    the key once it was checked, and ``state``: the request's state as log
    lines and error counts read it ("app" once a key or token named one,
    "notification_id" once a publish made one; tidings/logs.py)."""

    __slots__ = ("headers", "query", "_body", "_error", "state", "key", "_index", "peer")

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes = b"",
                 error: TidingsError | None = None, state: dict | None = None,
                 query: bytes = b"", peer: Any = None):
        self.headers = headers  # lower-case names, as ASGI and httptools give them
        self.query = query  # the raw query string, without the "?"
        self._body = body
        self._error = error  # a body over the limit: raised when the handler reads it
        self.state: dict = {} if state is None else state
        self.key: Any = None
        self._index: dict[bytes, bytes] | None = None
        self.peer = peer  # the ASGI scope's client: (host, port) or None

    def client(self) -> str | None:
        """The caller's address, as the limits of failed key checks and of
        invalid user tokens count it (tidings/service/keys.py, Service.token_claims):
        the socket's peer, or the address a trusted proxy forwarded.  Asked
        only when a key is not in the cache, or a token failed."""
        return self.peer[0] if self.peer else None

    def params(self) -> dict[str, str]:
        """The query parameters as Starlette reads them (``request.query_params``:
        percent-decoded, blanks kept, the last of a repeated name wins)."""
        if not self.query:
            return {}
        return dict(parse_qsl(self.query.decode("latin-1"), keep_blank_values=True))

    def param_list(self, name: str) -> list[str]:
        """Every value of the query parameter ``name``, in order (as
        ``request.query_params.getlist``)."""
        return [v for k, v in parse_qsl(self.query.decode("latin-1"), keep_blank_values=True)
                if k == name]

    @property
    def app(self) -> str | None:
        return self.state.get("app")

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        index = self._index
        if index is None:  # a handler reads four or five: one pass over the headers
            index = self._index = dict(reversed(self.headers))  # the first one wins
        value = index.get(name)
        return None if value is None else value.decode("latin-1")

    def body(self) -> bytes:
        """The request body; raises what reading it raised (e.g. 413).  The
        handler reads it after checking the key, so a request with a bad key
        and a body over the limit is a 401 on both paths."""
        if self._error is not None:
            raise self._error
        return self._body


Handler = Callable[[Any, Call], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True)
class DirectRoute:
    """``handler(service, call) -> (status, JSON body)`` at ``method path``.
    ``body_limit(settings)`` is the largest body it reads.  A route that
    browsers call (``cors``) is served directly only when the request carries
    no ``Origin``: a cross-origin request goes the ASGI way, through the CORS
    middleware (tidings/api/cors.py)."""

    method: str
    path: str
    handler: Handler
    body_limit: Callable[[Settings], int]
    cors: bool = False


def error_answer(exc: TidingsError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """``(status, body, extra headers)`` of a TidingsError, as the app's
    exception handler renders it (tidings/api/common.error_response)."""
    retry = getattr(exc, "retry_after", None)
    extra = [] if retry is None else [(b"retry-after", str(max(1, int(retry + 0.999))).encode())]
    return exc.status, _encode(exc.to_dict()), extra


def starlette_route(route: DirectRoute) -> Route:
    """``route`` as a Starlette route (any ASGI server; errors go to the app's
    exception handlers like every other route's)."""
    handler, body_limit = route.handler, route.body_limit

    async def endpoint(request: Request) -> Response:
        service = request.app.state.service
        # request.state keeps its fields in scope["state"]: the app the handler
        # names there counts the errors, and the log lines see both fields
        call = Call(request.headers.raw, state=request.scope.setdefault("state", {}),
                    query=request.scope.get("query_string", b""),
                    peer=request.scope.get("client"))  # proxy headers applied
        try:
            call._body = await read_body(request, body_limit(service.settings))
        except TidingsError as exc:  # over the limit, or in a coding (415, 501)
            call._error = exc
        status, body = await handler(service, call)
        return Response(body, status_code=status, media_type="application/json")

    endpoint.__name__ = handler.__name__
    endpoint.query = getattr(handler, "query", ())  # type: ignore[attr-defined]  # @takes
    return Route(route.path, endpoint, methods=[route.method])


Table = dict[tuple[bytes, bytes], tuple[DirectRoute, Any]]


def table(app: Any) -> Table:
    """The direct routes of the ASGI app ``app`` (looked for through
    middleware that wraps it, e.g. uvicorn's proxy headers):
    ``{(method, path): (route, service)}``; empty for any other app."""
    seen = 0
    while app is not None and seen < 16:
        state = getattr(app, "state", None)
        routes = getattr(state, "direct_routes", None)
        if state is not None and routes is not None:
            service = state.service
            return {(r.method.encode(), r.path.encode()): (r, service) for r in routes}
        app, seen = getattr(app, "app", None), seen + 1
    return {}
