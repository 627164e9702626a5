"""``/v1/unsubscribe/{token}``: where every e-mail's ``List-Unsubscribe`` leads.

* ``GET`` changes nothing -- mail scanners and link previews follow links --
  and answers a small page saying what the link turns off, with a button
  that POSTs to the same URL.
* ``POST`` turns it off (tidings.service.outbound.Outbound.unsubscribe): the
  one-click request of RFC 8058, which a mailbox provider sends with the body
  ``List-Unsubscribe=One-Click``, form-encoded, without cookies or
  credentials, or the page's button.  ``200`` whether it was on or already
  off, never a redirect (RFC 8058 §3.2); a browser (``Accept: text/html``)
  gets a page, anything else JSON.  The body is not required.

No API key and no user token: the link is the credential, a MAC over the
app, the user, the category and the channel (tidings/core/unsubscribe.py).
A link that does not verify -- forged, truncated, another install's, another
app's name in it -- is ``404 bad_link`` before anything is read; one that
verifies takes a token from its own bucket (RateLimits.charge_link).

Errors are counted here rather than by the application's handler, with the
token left out of the path: the dashboard's recent errors show where an error
happened, and the token is what lets one unsubscribe the user.
"""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.api.common import JSON, error_response, read_body
from tidings.core import unsubscribe
from tidings.core.unsubscribe import Link
from tidings.dashboard.web import page, static_text
from tidings.errors import NotFound, TidingsError

PATH = "/v1/unsubscribe/{token}"
_BODY_MAX = 4096  # the one-click body is 26 bytes
_WHERE = "/v1/unsubscribe/…"
_CHANNELS = {"email": "e-mail"}


async def _verified(request: Request) -> tuple[Link, str]:
    """The link and the name of its app; 404 for a link that is not one."""
    service = request.app.state.service
    try:
        link = unsubscribe.verify(service.outbound.link_secret, request.path_params["token"])
    except unsubscribe.BadLink as exc:
        raise NotFound(f"this is not an unsubscribe link of this server ({exc.reason}); "
                       "copy the whole link from the message", code="bad_link",
                       field="token") from None
    record = await service.app(link.app)
    if record is None:
        raise NotFound("the app this link is for no longer exists")
    request.state.app = link.app  # errors from here on are counted for the app
    service.limits.charge_link(link)
    return link, record.name or link.app


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _what(link: Link, app: str) -> str:
    """What the link turns off, in words (escaped)."""
    channel = _CHANNELS.get(link.channel, link.channel)
    if link.category is None:
        return f"all {channel} notifications from {html.escape(app)}"
    return (f"{channel} notifications of the category \u201c{html.escape(link.category)}\u201d "
            f"from {html.escape(app)}")


def _page(*, state: str, heading: str, text: str, app: str, form: str = "", fine: str = "",
          status: int = 200, headers: dict | None = None) -> Response:
    fine = f'<p class="fine">{fine}</p>' if fine else ""
    body = (static_text("unsubscribe.html").replace("{{state}}", state)
            .replace("{{heading}}", heading).replace("{{app}}", html.escape(app))
            .replace("{{text}}", text).replace("<!--form-->", form).replace("<!--fine-->", fine))
    return page(body, status, headers)


def _refused(request: Request, exc: TidingsError) -> Response:
    service = request.app.state.service
    service.hub.metrics.error(getattr(request.state, "app", None), exc.code, exc.status,
                              f"{request.method} {_WHERE}")
    if not _wants_html(request):
        return error_response(exc)
    headers = error_response(exc).headers
    retry = {"Retry-After": headers["retry-after"]} if "retry-after" in headers else None
    text = exc.message[:1].upper() + exc.message[1:] + "."
    return _page(state="error", heading="This link does not work", app="tidings",
                 text=html.escape(text), status=exc.status, headers=retry)


_FORM = ('<form method="post">'  # no action: to this very URL (the CSP's form-action 'self')
         '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
         '<button type="submit" id="confirm">Unsubscribe</button></form>')


async def confirm(request: Request):
    """``GET``: what a POST would turn off, and the button that does it."""
    try:
        link, app = await _verified(request)
    except TidingsError as exc:
        return _refused(request, exc)
    return _page(state="confirm", heading="Unsubscribe", app=app,
                 text=f"Stop {_what(link, app)}?", form=_FORM,
                 fine="Notifications still reach your inbox in the app, and you can turn "
                      f"{_CHANNELS.get(link.channel, link.channel)} on again in its "
                      "notification settings.")


async def unsubscribe_now(request: Request):
    """``POST``: turn the link's channel off (idempotent)."""
    service = request.app.state.service
    try:
        await read_body(request, _BODY_MAX)  # what it says does not matter; its size does
        link, app = await _verified(request)
        changed = await service.outbound.unsubscribe(link)
    except TidingsError as exc:
        return _refused(request, exc)
    if not _wants_html(request):
        return JSON({"unsubscribed": True, "channel": link.channel, "category": link.category,
                     "changed": changed})
    return _page(state="done", heading="Unsubscribed", app=app,
                 text=f"You will get no more {_what(link, app)}.",
                 fine="A message already on its way may still arrive.")


routes = [
    Route(PATH, confirm, methods=["GET"]),
    Route(PATH, unsubscribe_now, methods=["POST"]),
]
