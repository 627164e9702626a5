"""The app's categories: declared by its admin, read by its users' devices.

An app declares the categories its notifications use, each with the label a
preferences screen shows and optionally a line saying what it sends
(``PUT /v1/categories``, admin key: like the frequency caps and digest
defaults of ``PUT /v1/caps``, it is app-wide configuration that every user
sees, not something each backend that publishes should be able to rewrite).
``GET /v1/categories`` reads it back with any key that may read.

A device reads it with the user's token (``GET /v1/me/categories``) together
with the app's digest defaults, so that a preferences screen lists the
categories by name and says what "the app's default" is for each
(``<tidings-inbox>``, docs/inbox.md#preferences).  Publishing never reads the
list: a notification may carry any category, declared or not.

Each category may carry its label and description in other languages
(``"labels": {"de": "Antworten"}``, ``"descriptions"`` likewise), by BCP 47
tag.  ``GET /v1/categories`` answers the document as it was put; the user's
read answers each category in the user's language (``?locale=``, else their
preferences' ``locale``), by the lookup notifications take
(tidings/core/locales.py): ``label`` and ``description`` the best fitting
ones, ``locale`` on a category naming the tag taken, ``labels`` and
``descriptions`` left out, and ``locale`` at the top naming the reader's
language.  A document without translations is answered as it is, without
reading the user's preferences.

Both reads answer an ``ETag``, and ``304`` to an ``If-None-Match`` naming it:
the list changes seldom, and a device reads it each time its preferences
screen opens.  The tag is a hash of the answer, which names the reader's
language: a device that changes language gets the new labels, not a ``304``.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from tidings.api.common import (
    JSON,
    LOCALE,
    actor_of,
    body_of,
    server_auth,
    tagged,
    takes,
    user_auth,
)
from tidings.core import locales
from tidings.core.audit import LISTED
from tidings.core.models import Categories, CategoryInfo
from tidings.errors import Invalid

_decode = msgspec.json.Decoder(Categories).decode
_encode = msgspec.json.encode


async def _read(service, app: str) -> Categories:
    doc = await service.store.get_categories(app)
    return _decode(doc) if doc else Categories([])


async def get_categories(request: Request):
    app = await server_auth(request, "read")
    return tagged(request, _encode(await _read(request.app.state.service, app)))


async def put_categories(request: Request):
    app = await server_auth(request, "admin")
    doc = await body_of(request, Categories)
    seen: set[str] = set()
    for i, category in enumerate(doc.categories):
        if category.id in seen:
            raise Invalid(f"category {category.id} is listed twice",
                          field=f"categories[{i}].id")
        seen.add(category.id)
        if category.labels is not None:
            locales.check_tags(category.labels, f"categories[{i}].labels")
        if category.descriptions is not None:
            locales.check_tags(category.descriptions, f"categories[{i}].descriptions")
    service = request.app.state.service
    await service.store.put_categories(app, _encode(doc), audit=service.audit.entry(
        app, actor_of(request), "categories.update", None,
        categories=[c.id for c in doc.categories][:LISTED], count=len(doc.categories)))
    return JSON(doc)


def _translated(doc: Categories) -> bool:
    return any(c.labels or c.descriptions for c in doc.categories)


def _localized(category: CategoryInfo, want: str) -> dict:
    """``category`` as a reader of language ``want`` sees it."""
    label, tag = locales.text(category.labels, want, category.label)
    description, other = locales.text(category.descriptions, want, category.description)
    shown: dict = {"id": category.id, "label": label}
    if description:
        shown["description"] = description
    if tag or other:
        shown["locale"] = tag or other
    return shown


@takes(LOCALE)
async def my_categories(request: Request):
    """The app's categories, in the user's language, and its digest defaults
    (``PUT /v1/caps``): what a category whose user has no rule of their own
    gets."""
    app, user = await user_auth(request)
    given = LOCALE.get(request)  # checked whether or not the document needs it
    service = request.app.state.service
    doc = await _read(service, app)
    answer: dict = {"categories": doc.categories}
    if _translated(doc):
        want = await service.reader_locale(app, user, given)
        answer = {"categories": [_localized(c, want) for c in doc.categories]}
        if want:
            answer["locale"] = want
    answer["digests"] = await service.limits.digests(app)
    return tagged(request, _encode(answer))


routes = [
    Route("/v1/categories", get_categories, methods=["GET"]),
    Route("/v1/categories", put_categories, methods=["PUT"]),
    Route("/v1/me/categories", my_categories, methods=["GET"]),
]
