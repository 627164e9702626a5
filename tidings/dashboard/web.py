"""Static files of the browser side, served from memory, and the page headers.

Everything the browser loads ships inside the package (``static/``): the
dashboard's script and styles, uPlot (vendored, MIT, with its licence), the
dependency-free client ``tidings.js``, the ``<tidings-inbox>`` element and the
demo inbox.  No CDN, no build
step.  Files are read once and answered with an ETag, so a browser that has
them gets ``304 Not Modified``.
"""

from __future__ import annotations

import functools
import hashlib
import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from tidings import __version__
from tidings.errors import NotFound

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".LICENSE": "text/plain; charset=utf-8",
}

# Pages run only our own files: no inline script or style, nothing from
# another origin, no framing (clickjacking), no referrer (the demo's URL
# carries a user token).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@functools.cache
def _files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, content type, etag), for every shipped static file."""
    out = {}
    for entry in (resources.files("tidings.dashboard") / "static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        data = entry.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
        out[entry.name] = (data, _TYPES[suffix], etag)
    return out


def static_text(name: str) -> str:
    return _files()[name][0].decode()


# GET /tidings-inbox.js: the element with everything it needs, as one script
# (tidings.js first: the element is built on it).
INBOX_PARTS = ("tidings.js", "tidings-inbox-ui.js", "tidings-inbox-view.js", "tidings-inbox.js")


@functools.cache
def _inbox_bundle() -> tuple[bytes, str, str]:
    data = b"\n".join(_files()[name][0] for name in INBOX_PARTS)
    etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
    return data, _TYPES[".js"], etag


def static_response(request: Request, name: str, max_age: int = 3600) -> Response:
    found = _files().get(name)
    if found is None:
        raise NotFound("no such file")
    return _cached(request, found, max_age)


def _cached(request: Request, found: tuple[bytes, str, str], max_age: int) -> Response:
    data, ctype, etag = found
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}",
               "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ctype, headers=headers)


def page(html: str, status: int = 200, headers: dict | None = None) -> Response:
    return Response(html, status_code=status, media_type="text/html; charset=utf-8",
                    headers={**PAGE_HEADERS, **(headers or {})})


async def static_file(request: Request):
    """``GET /dashboard/static/{name}``: public code and styles, no data."""
    return static_response(request, request.path_params["name"])


async def tidings_js(request: Request):
    """``GET /tidings.js``: the browser client (docs/protocol.md)."""
    return static_response(request, "tidings.js", max_age=300)


async def landing(request: Request):
    """``GET /``: what this server is, with links to the dashboard, the demo and the API."""
    origin = str(request.base_url).rstrip("/")  # from the Host header: escaped
    text = static_text("index.html").replace("{{version}}", html.escape(__version__))
    return page(text.replace("{{origin}}", html.escape(origin)))


async def favicon(request: Request):
    """``/favicon.ico`` and ``/favicon.svg``: browsers ask for the first on their own."""
    return static_response(request, request.url.path.lstrip("/"), max_age=86400)


async def robots(request: Request):
    """``GET /robots.txt``: nothing here is for search engines."""
    return PlainTextResponse("User-agent: *\nDisallow: /\n")


async def tidings_inbox_js(request: Request):
    """``GET /tidings-inbox.js``: the ``<tidings-inbox>`` element (docs/inbox.md)."""
    return _cached(request, _inbox_bundle(), max_age=300)


async def demo(request: Request):
    """``GET /demo?token=<user token>``: a demo inbox built only on tidings.js.

    The page is static; the token is read by its script and checked by the
    API calls and the stream it makes (a bad one shows an error on the page)."""
    return page(static_text("demo.html"))
