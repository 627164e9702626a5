"""Server API: what app backends call with an API key (docs/design.md §4)."""

from __future__ import annotations

import logging

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.api.common import (
    ID_SCHEMA,
    JSON,
    LOCALE,
    IntQuery,
    ListQuery,
    Query,
    actor_of,
    bearer_of,
    body_of,
    decode,
    decoder,
    read_body,
    server_auth,
    tagged,
    takes,
)
from tidings.api.direct import Call, DirectRoute, starlette_route
from tidings.core import etag, preferences
from tidings.core.ids import is_id
from tidings.core.models import (
    CATEGORY_RE,
    NO_CONTROL_RE,
    BatchRequest,
    PatchRequest,
    Preferences,
    PublishRequest,
    RevokeRequest,
    SubscribersRequest,
    TokenRequest,
    valid_category,
    valid_tag,
    valid_topic,
    valid_user,
)
from tidings.core.preferences import PreferencesPatch
from tidings.errors import Invalid, NotFound, TidingsError
from tidings.service.revocations import revoked, revoked_one

_IDEMPOTENCY_MAX = 255
_STATES = ("unread", "unseen", "seen", "read", "archived", "snoozed", "all")
# The query parameters of the routes below (and of the client API's inbox).
SUBSCRIBERS_LIMIT = IntQuery("limit", "How many subscribers to list", 100, 1, 1000)
PAGE_LIMIT = IntQuery("limit", "Page size (at most the server's page_max)", 50, 1,
                      lambda limits: limits.page_max)
BEFORE = Query("before", "The page after this notification id (the last one of the "
               "previous page)", ID_SCHEMA, check=is_id,
               message="before must be a notification id")
STATE = Query("state", "Only the entries in this state",
              {"type": "string", "enum": list(_STATES)}, check=_STATES.__contains__,
              message=f"state must be one of {', '.join(_STATES)}")
# ?category= and ?tag= may repeat: any of the values (both given: both hold).
FILTER_VALUES_MAX = 20
CATEGORY = ListQuery("category", "Only the items of this category (repeat it for any of "
                     f"several, at most {FILTER_VALUES_MAX})",
                     {"type": "string", "pattern": CATEGORY_RE}, FILTER_VALUES_MAX,
                     check=valid_category, message="category must be 1-64 of A-Z a-z 0-9 _ . : -")
TAG = ListQuery("tag", "Only the items carrying this tag (repeat it for any of several, at most "
                f"{FILTER_VALUES_MAX})",
                {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NO_CONTROL_RE},
                FILTER_VALUES_MAX, check=valid_tag,
                message="tag must be 1-64 characters, none a control character")
_INTERNAL = {"error": {"code": "internal", "message": "internal error"}}
log = logging.getLogger("tidings.api")
_encode = msgspec.json.encode
_decode_publish = decoder(PublishRequest)


class _UserConvertor(Convertor):
    """User ids may hold "/" and any other printable character; ``:path``
    would refuse control characters with a 404 where the caller deserves a
    422 naming the field, so match anything and validate in the handler."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("user", _UserConvertor())


def batch_item_key(key: str | None, i: int) -> str | None:
    """Item ``i``'s key in a batch keyed ``key``.  U+001F can never be part
    of a key sent in the header (printable characters only), so the items'
    keys and single publishes' keys never meet: a single publish keyed
    "K#0" is not item 0 of the batch keyed "K"."""
    return None if key is None else f"{key}\x1f{i}"


def _idempotency_key(value: str | None) -> str | None:
    if value is not None and not (0 < len(value) <= _IDEMPOTENCY_MAX and value.isprintable()):
        raise Invalid(
            f"Idempotency-Key must be 1-{_IDEMPOTENCY_MAX} printable characters",
            field="Idempotency-Key",
        )
    return value


def _user(request: Request) -> str:
    user = request.path_params["user"]
    if not valid_user(user):
        raise Invalid("user id must be 1-128 printable characters", field="user")
    return user


def _topic(request: Request) -> str:
    topic = request.path_params["topic"]
    if not valid_topic(topic):
        raise Invalid("topic must be 1-128 of A-Z a-z 0-9 _ . : -", field="topic")
    return topic


def _nid(request: Request) -> str:
    nid = request.path_params["id"]
    if not is_id(nid):
        raise NotFound("no such notification", field="id")
    return nid


def _key_now(service, call: Call, scope: str) -> str | None:
    """``_key_auth`` from memory: a cached key with ``scope`` and, if the key
    is rate limited, a token of this node's lease.  None: nothing was
    decided, await ``_key_auth``."""
    record = service.key_now(bearer_of(call.header(b"authorization") or ""), scope)
    if record is None:
        return None
    call.state["app"], call.key = record.app_id, record  # errors from here count for it
    if not service.limits.charge_now(record):
        return None
    return record.app_id


async def _key_auth(service, call: Call, scope: str) -> str:
    """``server_auth`` for a direct route: the app id of a valid key with
    ``scope``, after taking one token from the key's rate limit."""
    record = await service.authenticate_key(
        bearer_of(call.header(b"authorization") or ""), scope, call.client())
    call.state["app"], call.key = record.app_id, record  # errors from here count for it
    await service.limits.charge_key(record)
    return record.app_id


async def publish(service, call: Call) -> tuple[int, bytes]:
    app = _key_now(service, call, "publish") or await _key_auth(service, call, "publish")
    req = _decode_publish(call.body())
    result = await service.publish(app, req, _idempotency_key(call.header(b"idempotency-key")))
    call.state["notification_id"] = result["id"]  # for this request's log lines
    return 202, _encode(result)


class _DecodedBatch(msgspec.Struct, forbid_unknown_fields=True):
    """``BatchRequest`` with its items decoded in the same pass."""

    notifications: list[PublishRequest]


_decode_whole = msgspec.json.Decoder(_DecodedBatch).decode


def _whole_batch(raw: bytes) -> list[PublishRequest] | None:
    """The items of a batch whose every item is valid, decoded in one pass
    (a Python call and a second parse per item fewer); None when anything
    fails to, for ``publish_batch`` to decode item by item and answer each
    one's error."""
    try:
        items = _decode_whole(raw).notifications
    except (msgspec.DecodeError, RecursionError):
        return None
    return items or None  # an empty list: BatchRequest's error


async def publish_batch(service, call: Call) -> tuple[int, bytes]:
    # the first token: bad bodies cost too
    app = _key_now(service, call, "publish") or await _key_auth(service, call, "publish")
    limits = service.settings.limits
    body = call.body()
    whole = _whole_batch(body)
    raws = decode(body, BatchRequest).notifications if whole is None else []
    n = len(raws) if whole is None else len(whole)
    if n > limits.max_batch:
        raise Invalid(f"at most {limits.max_batch} notifications per batch",
                      field="notifications")
    key = _idempotency_key(call.header(b"idempotency-key"))
    # A batch costs one token per notification; _key_auth took the first.
    await service.limits.charge_key(call.key, n - 1)

    reqs: list[PublishRequest | Exception] = [] if whole is None else [*whole]
    for raw in raws:
        try:
            reqs.append(_decode_publish(raw))
        except TidingsError as exc:
            reqs.append(exc)
    keys = [None] * len(reqs) if key is None else [batch_item_key(key, i)
                                                   for i in range(len(reqs))]
    results = await service.publish_many(app, reqs, keys)
    for i, result in enumerate(results):
        if isinstance(result, Exception):
            if isinstance(result, TidingsError):
                results[i] = {"status": "error", **result.to_dict()}
            else:
                # One result per item, always: the others may be committed, so a
                # 500 for the whole batch would make the client publish them twice.
                log.error("batch item %d failed", i, exc_info=result)
                results[i] = {"status": "error", **_INTERNAL}
    return 202, _encode({"results": results})


# Served by the HTTP protocol of `tidings serve` without ASGI, and as
# ordinary routes below (tidings/api/direct.py).
direct_routes = [
    DirectRoute("POST", "/v1/notifications", publish,
                lambda settings: settings.limits.max_body_bytes),
    DirectRoute("POST", "/v1/notifications/batch", publish_batch,
                lambda settings: settings.limits.max_body_bytes * 16),
]


async def get_notification(request: Request):
    app = await server_auth(request, "read")
    return JSON(await request.app.state.service.get_notification(app, _nid(request)))


async def patch_notification(request: Request):
    app = await server_auth(request, "publish")
    patch = await body_of(request, PatchRequest)
    return JSON(await request.app.state.service.patch_notification(app, _nid(request), patch))


async def delete_notification(request: Request):
    app = await server_auth(request, "publish")
    # "cancelled": it was scheduled and never fired; "retracted": devices are told
    status = await request.app.state.service.delete_notification(app, _nid(request))
    return JSON({"deleted": True, "status": status})


async def put_subscriber(request: Request):
    app = await server_auth(request, "publish")
    n = await request.app.state.service.subscribe(app, _topic(request), [_user(request)], True)
    return JSON({"added": n})


async def delete_subscriber(request: Request):
    app = await server_auth(request, "publish")
    n = await request.app.state.service.subscribe(app, _topic(request), [_user(request)], False)
    return JSON({"removed": n})


async def bulk_subscribers(request: Request):
    app = await server_auth(request, "publish")
    service = request.app.state.service
    topic = _topic(request)
    req = await body_of(request, SubscribersRequest)
    cap = service.settings.limits.max_bulk_subscribers
    if len(req.users) > cap:
        raise Invalid(f"at most {cap} users per call", field="users")
    users = list(dict.fromkeys(req.users))
    n = await service.subscribe(app, topic, users, req.action == "add")
    return JSON({"added" if req.action == "add" else "removed": n})


@takes(SUBSCRIBERS_LIMIT)
async def get_topic(request: Request):
    app = await server_auth(request, "read")
    service = request.app.state.service
    topic = _topic(request)
    limit = SUBSCRIBERS_LIMIT.get(request)
    count, users = await service.store.topic_info(app, topic, limit)
    return JSON({
        "topic": topic, "subscribers": count, "users": users,
        "fanout": "read" if count > service.settings.fanout_threshold else "write",
    })


@takes(PAGE_LIMIT, BEFORE, STATE, CATEGORY, TAG, LOCALE)
async def user_notifications(request: Request):
    app = await server_auth(request, "read")
    return await _inbox(request, app, _user(request))


async def _inbox(request: Request, app: str, user: str):
    service = request.app.state.service
    limit, before, state = PAGE_LIMIT.get(request), BEFORE.get(request), STATE.get(request)
    return JSON(await service.inbox(app, user, limit=limit, before=before, state=state,
                                    categories=CATEGORY.get(request), tags=TAG.get(request),
                                    locale=LOCALE.get(request)))


@takes(PAGE_LIMIT, BEFORE, LOCALE)
async def user_notification_group(request: Request):
    app = await server_auth(request, "read")
    return await _group(request, app, _user(request))


async def _group(request: Request, app: str, user: str):
    """The members of the user's group entry holding notification ``id``."""
    service = request.app.state.service
    nid = _nid(request)
    limit, before = PAGE_LIMIT.get(request), BEFORE.get(request)
    return JSON(await service.group_members(app, user, nid, limit=limit, before=before,
                                            locale=LOCALE.get(request)))


async def get_user_preferences(request: Request):
    app = await server_auth(request, "read")
    return await read_preferences(request, app, _user(request))


async def put_user_preferences(request: Request):
    app = await server_auth(request, "publish")
    return await put_preferences(request, app, _user(request))


async def patch_user_preferences(request: Request):
    app = await server_auth(request, "publish")
    return await patch_preferences(request, app, _user(request))


# -- a user's preferences, for both routes (``/v1/users/{user}`` and ``/v1/me``) --
# Each answer carries the document's ETag; a PUT or PATCH with If-Match is
# applied only while the document is still the one that tag names (checked
# under the store's lock, tidings.service.Service._change_preferences), so a
# client that writes back what it read cannot undo a change made in between
# (docs/channels.md#writing-back-what-was-read).  A GET with If-None-Match
# naming the tag is a 304 (tidings.api.common.tagged).

def _preferences_answer(request: Request, prefs: Preferences) -> Response:
    return tagged(request, preferences.encoded(prefs))


async def read_preferences(request: Request, app: str, user: str) -> Response:
    """The preferences, or ``304`` for a client that has them (If-None-Match)."""
    return _preferences_answer(
        request, await request.app.state.service.store.get_preferences(app, user))


async def put_preferences(request: Request, app: str, user: str) -> Response:
    if_match = etag.parse_if_match(request.headers.get("if-match"))
    prefs = await body_of(request, Preferences)
    return _preferences_answer(
        request, await request.app.state.service.put_preferences(app, user, prefs, if_match))


async def patch_preferences(request: Request, app: str, user: str) -> Response:
    """Change part of the preferences (tidings/core/preferences.py): what
    the body does not name stays as it is, whoever set it."""
    if_match = etag.parse_if_match(request.headers.get("if-match"))
    patch = await body_of(request, PreferencesPatch)
    return _preferences_answer(
        request, await request.app.state.service.update_preferences(app, user, patch, if_match))


async def mint_token(request: Request):
    app = await server_auth(request, "publish")
    service = request.app.state.service
    user = _user(request)
    raw = await read_body(request, 4096)
    req = decode(raw, TokenRequest) if raw.strip() else TokenRequest()
    token, exp, jti = await service.mint_token(app, user, req.ttl)
    return JSON({"token": token, "user": user, "expires_at": exp, "jti": jti},
                status_code=201)


# A revocation's body names one token, which may be the token itself (at
# most 4,096 characters) in JSON.
REVOKE_BODY_MAX = 8192


async def revoke_tokens(request: Request):
    """No body: every token of the user issued until now is refused on every
    node.  ``{"jti": …}`` or ``{"token": …}``: that one token of the user,
    until it expires.  The streams they opened end
    (tidings/service/revocations.py).  The key that may mint the user's
    tokens may revoke them."""
    app = await server_auth(request, "publish")
    service = request.app.state.service
    user = _user(request)
    raw = await read_body(request, REVOKE_BODY_MAX)
    if not raw.strip():
        before = await service.revocations.revoke(app, user, actor=actor_of(request))
        return JSON(revoked(user, before))
    req = decode(raw, RevokeRequest)
    if (req.jti is None) == (req.token is None):
        raise Invalid('send either "jti" or "token" to revoke one token, or no body to '
                      "revoke every token of the user", field="jti")
    record = await service.app(app)
    if record is None:  # the key's app was deleted meanwhile
        raise NotFound("no such app")
    jti, until = await service.revocations.revoke_one(record, user, jti=req.jti,
                                                      token=req.token, actor=actor_of(request))
    return JSON(revoked_one(user, jti, until))


routes = [
    *(starlette_route(r) for r in direct_routes),
    Route("/v1/notifications/{id}", get_notification, methods=["GET"]),
    Route("/v1/notifications/{id}", patch_notification, methods=["PATCH"]),
    Route("/v1/notifications/{id}", delete_notification, methods=["DELETE"]),
    Route("/v1/topics/{topic}/subscribers/{user:user}", put_subscriber, methods=["PUT"]),
    Route("/v1/topics/{topic}/subscribers/{user:user}", delete_subscriber, methods=["DELETE"]),
    Route("/v1/topics/{topic}/subscribers", bulk_subscribers, methods=["POST"]),
    Route("/v1/topics/{topic}", get_topic, methods=["GET"]),
    Route("/v1/users/{user:user}/notifications", user_notifications, methods=["GET"]),
    Route("/v1/users/{user:user}/notifications/{id}/group", user_notification_group,
          methods=["GET"]),
    Route("/v1/users/{user:user}/preferences", get_user_preferences, methods=["GET"]),
    Route("/v1/users/{user:user}/preferences", put_user_preferences, methods=["PUT"]),
    Route("/v1/users/{user:user}/preferences", patch_user_preferences, methods=["PATCH"]),
    Route("/v1/users/{user:user}/tokens", mint_token, methods=["POST"]),
    Route("/v1/users/{user:user}/tokens/revoke", revoke_tokens, methods=["POST"]),
]
