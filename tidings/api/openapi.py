"""The OpenAPI 3.1 document, built from the msgspec models.

Schemas come from the same Structs that validate requests, and query
parameters from the same declarations the routes read them with (their
``@takes``, tidings.api.common.Query), so the document cannot drift from the
validation; tests/api/test_openapi.py pins the list of operations so that a
new or removed route is a conscious change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec
from starlette.routing import BaseRoute, Route, WebSocketRoute

from tidings.api.apidocs import EXAMPLES, PROTOCOL
from tidings.api.common import ID_SCHEMA, Query
from tidings.config import Limits
from tidings.core.auth import PREFIX_RE
from tidings.core.models import (
    NO_CONTROL_RE,
    TOPIC_RE,
    USER_RE,
    BatchRequest,
    Categories,
    DrainRequest,
    InboxItem,
    KeyRequest,
    KeyRotateRequest,
    Notification,
    PatchRequest,
    Preferences,
    PublishRequest,
    RevokeRequest,
    RotateRequest,
    ShedRequest,
    SnoozeRequest,
    StateRequest,
    SubscribersRequest,
    TokenRequest,
    UnsnoozeRequest,
)
from tidings.core.outbound import (
    SUBSCRIPTION_ID_RE,
    WEBHOOK_ID_RE,
    Caps,
    EmailRequest,
    PushSubscriptionRequest,
    WebhookRequest,
)
from tidings.core.preferences import PreferencesPatch
from tidings.core.receipts import Receipts
from tidings.core.unsubscribe import MAX_TOKEN

_ERROR = {"$ref": "#/components/schemas/Error"}
# The path parameters as the routes check them (tidings/api/*.py), so that a
# client generated from the document knows what a valid one is.
_ID = ID_SCHEMA
PATH_PARAMS: dict[str, dict] = {
    "user": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": USER_RE},
    "topic": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": TOPIC_RE},
    "id": _ID,
    "wid": {"type": "string", "pattern": WEBHOOK_ID_RE.pattern},
    "sid": {"type": "string", "pattern": SUBSCRIPTION_ID_RE.pattern},
    "jid": {"type": "string", "minLength": 1, "maxLength": 80, "pattern": NO_CONTROL_RE},
    "prefix": {"type": "string", "pattern": PREFIX_RE},
    "token": {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN,
              "pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z"},
}
# Python's ``\Z`` (end of string, even before a final newline) is not an
# ECMA-262 escape; a look-ahead for "no character follows" means the same
# in both, so the document's patterns work in any generated client.
_END = "(?![\\s\\S])"

# (method, path, summary, auth, request model)
OPERATIONS: list[tuple[str, str, str, str, type | None]] = [
    ("post", "/v1/notifications", "Publish one notification", "apiKey", PublishRequest),
    ("post", "/v1/notifications/batch", "Publish up to 1,000 notifications", "apiKey",
     BatchRequest),
    ("get", "/v1/notifications/{id}", "A notification and its delivery statistics", "apiKey",
     None),
    ("patch", "/v1/notifications/{id}", "Correct a notification (devices updated live), "
     "or a scheduled one and its deliver_at before it fires", "apiKey", PatchRequest),
    ("delete", "/v1/notifications/{id}", "Retract a notification (devices updated live)",
     "apiKey", None),
    ("put", "/v1/topics/{topic}/subscribers/{user}", "Subscribe a user to a topic", "apiKey",
     None),
    ("delete", "/v1/topics/{topic}/subscribers/{user}", "Unsubscribe a user", "apiKey", None),
    ("post", "/v1/topics/{topic}/subscribers", "Subscribe or unsubscribe many users",
     "apiKey", SubscribersRequest),
    ("get", "/v1/topics/{topic}", "Topic size and subscribers", "apiKey", None),
    ("get", "/v1/users/{user}/notifications", "A user's inbox", "apiKey", None),
    ("get", "/v1/users/{user}/notifications/{id}/group",
     "The members of a user's group entry holding a notification", "apiKey", None),
    ("get", "/v1/users/{user}/preferences", "A user's preferences", "apiKey", None),
    ("put", "/v1/users/{user}/preferences", "Replace a user's preferences", "apiKey",
     Preferences),
    ("patch", "/v1/users/{user}/preferences", "Change part of a user's preferences (a JSON "
     "merge patch: what it does not name is kept)", "apiKey", PreferencesPatch),
    ("post", "/v1/users/{user}/tokens", "Mint a user token", "apiKey", TokenRequest),
    ("get", "/v1/me/notifications", "My inbox, newest first", "userToken", None),
    ("get", "/v1/me/notifications/{id}/group",
     "The members of my group entry holding a notification", "userToken", None),
    ("get", "/v1/me/counts", "My unread and unseen counts, and the seq and feed offset they "
     "were read at (docs/protocol.md, \"Counts and the badge\")", "userToken", None),
    ("post", "/v1/me/notifications/read", "Mark read", "userToken", StateRequest),
    ("post", "/v1/me/notifications/seen", "Mark seen", "userToken", StateRequest),
    ("post", "/v1/me/notifications/archive", "Archive", "userToken", StateRequest),
    ("post", "/v1/me/notifications/snooze", "Snooze: out of the inbox and the counts until "
     "`until` (ISO 8601 with a zone, at most 90 days ahead), then back first and unread "
     "(docs/inbox.md#snooze)", "userToken", SnoozeRequest),
    ("post", "/v1/me/notifications/unsnooze", "Bring snoozed entries back now, first and "
     "unread", "userToken", UnsnoozeRequest),
    ("post", "/v1/me/receipts", "Receipts: what reached this device and what it showed "
     "(docs/protocol.md#receipts)", "userToken", Receipts),
    ("get", "/v1/me/preferences", "My preferences", "userToken", None),
    ("put", "/v1/me/preferences", "Replace my preferences", "userToken", Preferences),
    ("patch", "/v1/me/preferences", "Change part of my preferences (a JSON merge patch: what "
     "it does not name is kept)", "userToken", PreferencesPatch),
    ("get", "/v1/me/stream", "Live events over WebSocket (see docs/protocol.md)", "userToken",
     None),
    ("get", "/v1/me/events", "Live events over Server-Sent Events", "userToken", None),
    # outbound channels (docs/channels.md): destinations, caps, the queue
    ("post", "/v1/webhooks", "Add a webhook endpoint; its secret is shown once (admin key)",
     "apiKey", WebhookRequest),
    ("get", "/v1/webhooks", "The app's webhook endpoints, without secrets (admin key)",
     "apiKey", None),
    ("post", "/v1/webhooks/{wid}/rotate",
     "New signing secret; the old one signs on for a day (admin key)", "apiKey", None),
    ("delete", "/v1/webhooks/{wid}", "Remove a webhook endpoint (admin key)", "apiKey", None),
    # the app's API keys (admin key; docs/security.md#api-keys)
    ("post", "/v1/keys", "Create an API key; the key is shown once (admin key)", "apiKey",
     KeyRequest),
    ("get", "/v1/keys", "The app's API keys, without the keys (admin key)", "apiKey", None),
    ("delete", "/v1/keys/{prefix}",
     "Revoke an API key: it stops working on every node within seconds (admin key)",
     "apiKey", None),
    ("post", "/v1/keys/{prefix}/rotate",
     "A new key with the same scopes and name, shown once; the old one expires after "
     "`grace` seconds (default 24 h, 0 for a leak) (admin key)", "apiKey", KeyRotateRequest),
    ("get", "/v1/audit", "The app's audit log, newest first: every change of its keys, "
     "secrets, webhooks, caps, categories, dead letters, users' tokens and dashboard "
     "logins (admin key)", "apiKey", None),
    # the app's signing secret (admin key; docs/security.md#rotating-the-signing-secret)
    ("post", "/v1/signing-secret/rotate",
     "New signing secret for user tokens, shown once; the old one is taken for "
     "`overlap` seconds more (default token_max_ttl, 0 for a leak) (admin key)", "apiKey",
     RotateRequest),
    # a user's tokens (docs/security.md#revoking-a-users-tokens)
    ("post", "/v1/users/{user}/tokens/revoke",
     "Revoke every token of a user issued until now (no body), or one token of the user "
     "by its jti or itself ({\"jti\"} or {\"token\"}): refused on every node within "
     "seconds, its open streams end (a publish key, like minting)", "apiKey", RevokeRequest),
    ("put", "/v1/users/{user}/email", "Set a user's e-mail address", "apiKey", EmailRequest),
    ("get", "/v1/users/{user}/email", "A user's e-mail address", "apiKey", None),
    ("delete", "/v1/users/{user}/email", "Remove a user's e-mail address", "apiKey", None),
    # the app's categories, for preferences screens (docs/inbox.md#preferences)
    ("get", "/v1/categories", "The categories the app declared, with their labels and "
     "their translations, as put", "apiKey", None),
    ("put", "/v1/categories", "Replace the app's categories: id, label, description, and "
     "labels and descriptions in other languages by BCP 47 tag (admin key)", "apiKey",
     Categories),
    ("get", "/v1/me/categories", "The app's categories in the user's language (?locale=, "
     "else their preferences'; a category's locale names the translation taken) and its "
     "digest defaults, for a preferences screen", "userToken", None),
    ("get", "/v1/caps", "The app's frequency caps per category", "apiKey", None),
    ("put", "/v1/caps", "Replace the app's frequency caps (admin key)", "apiKey", Caps),
    ("get", "/v1/notifications/{id}/outbound", "A notification's queued and dead jobs",
     "apiKey", None),
    ("get", "/v1/notifications/{id}/timeline",
     "One user's journey with a notification, with times (?user=)", "apiKey", None),
    ("get", "/v1/outbound/dead", "The dead-letter list, newest first (admin key)", "apiKey",
     None),
    ("post", "/v1/outbound/dead/{jid}/retry", "Queue a dead job again (admin key)", "apiKey",
     None),
    ("get", "/v1/push/vapid-public-key", "The VAPID public key browsers subscribe with",
     "none", None),
    ("post", "/v1/me/push-subscriptions", "Register this browser's push subscription",
     "userToken", PushSubscriptionRequest),
    ("get", "/v1/me/push-subscriptions", "My push subscriptions", "userToken", None),
    ("delete", "/v1/me/push-subscriptions/{sid}", "Remove a push subscription", "userToken",
     None),
    # the link in every e-mail's List-Unsubscribe header (docs/channels.md#unsubscribing):
    # the link is the credential
    ("get", "/v1/unsubscribe/{token}",
     "A page saying what the unsubscribe link turns off, with a button that POSTs; changes "
     "nothing", "none", None),
    ("post", "/v1/unsubscribe/{token}",
     "One-click unsubscribe (RFC 8058): the link's channel off for its user, in its category "
     "or in all of them; idempotent", "none", None),
    ("get", "/healthz", "Liveness", "none", None),
    ("get", "/readyz", "Readiness (store and broker reachable)", "none", None),
    # this node alone: send them to its own address, not through the balancer
    # (docs/deploy.md#draining-a-node-without-stopping-it)
    ("get", "/v1/node", "This node: draining, open streams, the drain or shed running "
     "(operator app's admin key)", "apiKey", None),
    ("post", "/v1/node/drain", "Drain this node without stopping it: not ready, new streams "
     "refused, open ones ended with 4001 spread over `over` seconds (default 30) "
     "(operator app's admin key)", "apiKey", DrainRequest),
    ("post", "/v1/node/undrain", "Ready again: this node takes streams (operator app's "
     "admin key)", "apiKey", None),
    ("post", "/v1/node/shed", "End `fraction` of this node's open streams with 4001, spread "
     "over `over` seconds; readiness unchanged (operator app's admin key)", "apiKey",
     ShedRequest),
    ("get", "/metrics", "Prometheus metrics (admin key; other apps only for the operator app)",
     "apiKey", None),
    # the dashboard's data (an admin key, or the dashboard's session cookie);
    # its pages, login and SSE stream are for browsers and not listed
    ("get", "/dashboard/api/snapshot", "Dashboard: the cluster's numbers now, summed over "
     "its nodes (?view=node: this node's) (admin key)", "apiKey", None),
    ("get", "/dashboard/api/history", "Dashboard: the last five minutes, per second "
     "(?view= as for the snapshot)", "apiKey", None),
    ("get", "/dashboard/api/notification",
     "Dashboard: a notification's counts and recipients, and a user's timeline (?id=&user=)",
     "apiKey", None),
    ("get", "/dashboard/api/audit", "Dashboard: the app's audit log, as GET /v1/audit",
     "apiKey", None),
]


# Routes whose body may be left out (the model's defaults then apply).
OPTIONAL_BODY = {("post", "/v1/signing-secret/rotate"), ("post", "/v1/keys/{prefix}/rotate"),
                 ("post", "/v1/users/{user}/tokens/revoke"), ("post", "/v1/node/drain")}
# Form bodies (not JSON), all optional: what the route is sent, not what it needs.
FORMS: dict[tuple[str, str], dict] = {
    ("post", "/v1/unsubscribe/{token}"): {  # what a mailbox provider sends (RFC 8058 §3.1)
        "type": "object", "properties": {"List-Unsubscribe": {"const": "One-Click"}}},
}

# What a success answers where it is not "200 OK" (the routes in tidings/api/*.py).
SUCCESS: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/v1/notifications"): {"202": "Accepted: committed and durable (a repeated "
                                           "Idempotency-Key answers the first result)"},
    ("post", "/v1/notifications/batch"): {"202": "Accepted: one result per item, each "
                                                 "committed or with its own error"},
    ("post", "/v1/users/{user}/tokens"): {"201": "Token minted"},
    ("post", "/v1/me/receipts"): {"202": "Held; written within a second"},
    ("post", "/v1/webhooks"): {"201": "Endpoint added"},
    ("post", "/v1/keys"): {"201": "Key created (the only time it is shown)"},
    ("delete", "/v1/keys/{prefix}"): {"204": "Revoked"},
    ("post", "/v1/keys/{prefix}/rotate"): {"201": "Key created (the only time it is shown); "
                                                  "the old one expires after the grace"},
    ("post", "/v1/me/push-subscriptions"): {"201": "Subscription registered"},
    ("post", "/v1/outbound/dead/{jid}/retry"): {"202": "Queued again"},
    ("post", "/v1/node/drain"): {"202": "Draining: the node's state, the ends under way"},
    ("post", "/v1/node/shed"): {"202": "Shedding: the node's state, the ends under way"},
    # every refusal comes after the upgrade, as a close code (the protocol,
    # above), but for too many invalid tokens in the Authorization header
    ("get", "/v1/me/stream"): {"101": "Switching Protocols: the WebSocket stream; a refusal "
                                      "closes it with a 44xx code",
                               "429": "Too many invalid user tokens from the address or on "
                                      "the node, the token in the Authorization header: "
                                      "refused before the upgrade, with Retry-After"},
    ("get", "/v1/me/events"): {"200": "The event stream (text/event-stream)"},
    ("get", "/readyz"): {"200": "Ready", "503": "Not ready: the store does not answer, or "
                                               "the node is draining"},
    ("get", "/v1/unsubscribe/{token}"): {"200": "The page (text/html)"},
    ("post", "/v1/unsubscribe/{token}"): {
        "200": "Off, now or already: {\"unsubscribed\": true, \"channel\", \"category\" "
               "(null: every category), \"changed\"}; a page for Accept: text/html"},
}
# The writes that take If-Match (docs/channels.md#writing-back-what-was-read),
# and the reads that take If-None-Match: every one answers an ETag.
_PREFERENCES = ("/v1/me/preferences", "/v1/users/{user}/preferences")
IF_MATCH = {(method, path) for path in _PREFERENCES for method in ("put", "patch")}
IF_NONE_MATCH = {("get", path) for path in (*_PREFERENCES, "/v1/categories",
                                            "/v1/me/categories", "/v1/caps")}
ETAGGED = IF_MATCH | IF_NONE_MATCH
_ERRORS = {
    "400": "Malformed request (JSON, header)",
    "401": "Missing, malformed or invalid credential",
    "403": "The API key lacks the scope this needs",
    "404": "No such resource",
    "409": "A limit or state forbids it",
    "412": "If-Match is not the current ETag: the document changed since it was read; "
           "nothing was changed",
    "413": "Request body too large",
    "422": "A field or parameter breaks a rule",
    "429": "Rate limited: retry after Retry-After seconds",
    "503": "A backend is unavailable: retry after Retry-After seconds",
}
# Error statuses beyond what the auth, body and parameters of a route imply.
EXTRA_ERRORS: dict[tuple[str, str], set[str]] = {
    ("post", "/v1/webhooks"): {"409"},
    ("patch", "/v1/notifications/{id}"): {"409"},  # deliver_at of one published already
    ("post", "/v1/keys"): {"409"},  # max_api_keys
    ("delete", "/v1/keys/{prefix}"): {"409"},  # the app's last admin key
    ("post", "/v1/keys/{prefix}/rotate"): {"409"},  # max_api_keys
    # max_token_revocations, max_revoked_tokens
    ("post", "/v1/users/{user}/tokens/revoke"): {"409"},
    ("get", "/v1/push/vapid-public-key"): {"404"},
    ("post", "/v1/node/undrain"): {"409"},  # shutting down (SIGTERM)
    ("post", "/v1/node/shed"): {"409"},  # draining
    ("get", "/dashboard/api/notification"): {"404"},  # ?id= none of the app's
    ("get", "/v1/audit"): {"400"},  # a bad cursor
    ("get", "/dashboard/api/audit"): {"400"},
    # a bad cursor (its 429s, the user's rate and too many streams, are every user route's)
    ("get", "/v1/me/events"): {"400"},
    # the link's own rate limit; a body over 4,096 bytes
    ("get", "/v1/unsubscribe/{token}"): {"429"},
    ("post", "/v1/unsubscribe/{token}"): {"413", "429"},
    **{op: {"412"} for op in IF_MATCH},  # a stale If-Match
    **{op: {"400"} for op in IF_NONE_MATCH},  # a malformed If-None-Match
}
# "*" or a list of entity-tags (RFC 9110 §8.8.3), as tidings/core/etag.py reads them
_TAG_RE = r'(W/)?"[\x21\x23-\x7e]*"'
_TAGS_RE = rf"^[ \t]*(\*|{_TAG_RE}([ \t]*,[ \t]*{_TAG_RE})*)[ \t]*\Z"
_IF_MATCH = {
    "name": "If-Match", "in": "header", "required": False,
    "description": "Apply only if the preferences are still those of this ETag (a GET's, or "
                   "the last write's): else 412 precondition_failed and nothing changes, "
                   "unless the write would leave them as they are (made already, e.g. a "
                   "retry whose answer was lost: 200). * matches always (a user's "
                   "preferences always exist, the defaults at first)",
    "schema": {"type": "string", "maxLength": 4096, "pattern": _TAGS_RE},
}
_IF_NONE_MATCH = {
    "name": "If-None-Match", "in": "header", "required": False,
    "description": "The ETags of the copies the client holds (W/ tags match too), or *: "
                   "304 Not Modified, without a body, when one is the current ETag",
    "schema": {"type": "string", "maxLength": 4096, "pattern": _TAGS_RE},
}
_ETAG = {"ETag": {"description": "The strong validator of the document answered: send it "
                                 "as If-None-Match to read it again only if it changed "
                                 "(and, for the preferences, as If-Match to write them back)",
                  "schema": {"type": "string"}}}
_NOT_MODIFIED = {"description": "Not Modified: If-None-Match names the current ETag; no body",
                 "headers": _ETAG}


def _responses(method: str, path: str, auth: str, model: type | None,
               query: tuple[Query, ...] = ()) -> dict:
    """The statuses the route answers: its success, and the errors its
    credential, body, path and query parameters can earn it."""
    if path == "/v1/me/stream":
        return {code: {"description": text} for code, text in SUCCESS[(method, path)].items()}
    errors = set(EXTRA_ERRORS.get((method, path), ()))
    if auth == "apiKey":
        # 429: failed key checks from the address (every route that takes a
        # key), and the key's rate limit (/v1/ only)
        errors |= {"401", "403", "429"}
    elif auth == "userToken":
        errors |= {"401", "429"}  # the user's rate limit
    if model is not None:
        errors |= {"400", "413", "422"}
    if "{" in path:
        errors.add("404")
        if "{token}" not in path:  # an unsubscribe link is one of ours or none (404)
            errors.add("422")
    if any(q.validates for q in query):
        errors.add("422")
    if path not in ("/healthz", "/readyz", "/v1/push/vapid-public-key"):
        errors.add("503")
    responses: dict = {code: {"description": text} for code, text in
                       SUCCESS.get((method, path), {"200": "OK"}).items()}
    if (method, path) in ETAGGED:
        responses["200"]["headers"] = _ETAG
    if (method, path) in IF_NONE_MATCH:
        responses["304"] = _NOT_MODIFIED
    for code in sorted(errors):
        responses[code] = {"description": _ERRORS[code],
                           "content": {"application/json": {"schema": _ERROR}}}
    return responses


def query_params(routes: Iterable[BaseRoute]) -> dict[tuple[str, str], tuple[Query, ...]]:
    """The query parameters each operation's endpoint declares (``@takes``)."""
    found: dict[tuple[str, str], tuple[Query, ...]] = {}
    for route in routes:
        if isinstance(route, Route | WebSocketRoute):
            params = getattr(route.endpoint, "query", ())
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {user:user} -> {user}
            methods = getattr(route, "methods", None) or {"GET"}  # a WebSocket's upgrade
            for method in methods:
                if params and method != "HEAD":
                    found[(method.lower(), path)] = params
    return found


def openapi_document(routes: Iterable[BaseRoute] = (), limits: Limits | None = None) -> dict:
    """The document for an app of ``routes`` (their query parameters) and
    ``limits`` (the bounds that are settings, such as page_max)."""
    query = query_params(routes)
    limits = limits or Limits()
    # InboxItem (and with it Group): what inbox pages and group listings hold
    models = [m for *_, m in OPERATIONS if m is not None] + [Notification, InboxItem]
    (_, components) = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}"
    )
    components["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": "string"}}, "required": ["code", "message"]}},
        "required": ["error"],
    }
    paths: dict = {}
    for method, path, summary, auth, model in OPERATIONS:
        op: dict = {
            "summary": summary,
            "responses": _responses(method, path, auth, model, query.get((method, path), ())),
        }
        if auth != "none":
            op["security"] = [{auth: []}]
        if model is not None:
            schema = {"$ref": f"#/components/schemas/{model.__name__}"}
            op["requestBody"] = {"required": (method, path) not in OPTIONAL_BODY,
                                 "content": {"application/json": {"schema": schema}}}
            if (method, path) in EXAMPLES:
                op["requestBody"]["content"]["application/json"]["example"] = \
                    EXAMPLES[(method, path)]
        if (method, path) in FORMS:
            op["requestBody"] = {"required": False, "content": {
                "application/x-www-form-urlencoded": {"schema": FORMS[(method, path)]}}}
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": PATH_PARAMS[p]}
            for p in params
        ] + [
            {"name": q.name, "in": "query", "required": q.required,
             "description": q.description, "schema": q.schema(limits)}
            for q in query.get((method, path), ())
        ] + ([_IF_MATCH] if (method, path) in IF_MATCH else []) + (
            [_IF_NONE_MATCH] if (method, path) in IF_NONE_MATCH else [])
        if parameters:
            op["parameters"] = parameters
        paths.setdefault(path, {})[method] = op
    return _portable({
        "openapi": "3.1.0",
        "info": {"title": "tidings", "version": "1", "description": PROTOCOL},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "An app's API key (server API)"},
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A user token (client API)"},
            },
        },
    })


def _portable(node):
    """The document with every ``pattern``'s ``\\Z`` written as ``_END``."""
    if isinstance(node, dict):
        return {k: (v.replace("\\Z", _END) if k == "pattern" and isinstance(v, str)
                    else _portable(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_portable(v) for v in node]
    return node
