"""HTTP clients: :class:`Client` (blocking) and :class:`AsyncClient`.

Every endpoint is written once, in :class:`_Endpoints`, as "build a request
and hand it to ``self._call``".  ``Client._call`` performs it and returns the
decoded JSON; ``AsyncClient._call`` returns a coroutine.  So the two clients
cannot drift apart, and ``await ac.publish(...)`` and ``c.publish(...)`` take
exactly the same arguments.

Server API calls authenticate with the app's API key; the ``/v1/me`` calls
act as one user and need a user token (given to the constructor, or per call
with ``token=``, so one backend client can act for many users).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from tidings.client.errors import TidingsAPIError, error_from_response, parse_retry_after

if TYPE_CHECKING:
    from tidings.client.subscriber import Subscriber

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_MAX_RETRY_WAIT = 30.0  # never sleep longer than this on a server hint


def _seg(value: str) -> str:
    """Quote one path segment: user ids may contain ``/``, ``?``, ``#``..."""
    return quote(str(value), safe="")


def _target(to: Any) -> dict:
    if isinstance(to, dict):
        return to
    if isinstance(to, str):
        raise TypeError('to= must be a dict or a list of user ids; for one user use ["alice"]')
    if isinstance(to, Iterable):
        return {"users": list(to)}
    raise TypeError(f"to= must be a dict or a list of user ids, not {type(to).__name__}")


class Tagged(dict):
    """A JSON object and the ``ETag`` it came with (the preferences'):
    ``prefs.etag``, to send back as ``if_match=`` so that a write of what was
    read is refused (412 ``precondition_failed``) when it changed meanwhile,
    or as ``if_none_match=`` to read them again only if they changed."""

    etag: str | None = None


def _if_match(etag: str | None) -> dict | None:
    return {"If-Match": etag} if etag is not None else None


def _if_none_match(etag: str | None) -> dict | None:
    return {"If-None-Match": etag} if etag is not None else None


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def notification(to: Any, **fields: Any) -> dict:
    """Build one publish body (also the item shape of :meth:`publish_batch`).

    ``to`` is ``{"users": [...]}``, ``{"topic": "..."}``, ``{"all": True}`` or
    simply a list of user ids.  Fields left as ``None`` are omitted because the
    server rejects unknown or mistyped fields (``"title": null`` is a 422)
    instead of guessing.  ``deliver_at`` may be a ``datetime`` (give it a tz).
    """
    body: dict[str, Any] = {"to": _target(to)}
    for key, value in fields.items():
        if value is not None:
            body[key] = _jsonable(value)
    return body


class _Endpoints:
    """The API surface, transport-agnostic (see the module docstring)."""

    def _call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
              headers: dict | None = None, user: bool = False, token: str | None = None) -> Any:
        raise NotImplementedError

    def _then(self, result: Any, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    # -- publishing -----------------------------------------------------------

    def publish(self, to: Any, *, category: str | None = None, title: str | None = None,
                body: str | None = None, format: str | None = None, url: str | None = None,
                data: dict | None = None, priority: str | None = None,
                tags: list[str] | None = None, group_key: str | None = None,
                actor: str | None = None, deliver_at: datetime | str | None = None,
                ttl: int | None = None, idempotency_key: str | None = None,
                locales: dict[str, dict[str, str]] | None = None,
                **extra: Any) -> Any:
        """Publish one notification; returns ``{"id", "recipients", "status", ...}``.

        ``locales`` gives its text in other languages (``{"de": {"title":
        ..., "body": ...}}``): each user sees the one of their preferences'
        ``locale`` (docs/channels.md#languages).

        Pass ``idempotency_key`` whenever a retry could duplicate a
        notification (timeouts): the server answers a repeat with the first
        result instead of notifying twice.
        """
        payload = notification(
            to, category=category, title=title, body=body, format=format, url=url, data=data,
            priority=priority, tags=tags, group_key=group_key, actor=actor,
            deliver_at=deliver_at, ttl=ttl, locales=locales, **extra,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/v1/notifications", json=payload, headers=headers)

    def publish_batch(self, notifications: Iterable[dict]) -> Any:
        """Publish many at once; returns the per-item ``results`` list, in order.

        Items are publish bodies (see :func:`notification`); a list ``to`` is
        accepted as shorthand for ``{"users": [...]}``.
        """
        items = [notification(n["to"], **{k: v for k, v in n.items() if k != "to"})
                 for n in notifications]
        return self._then(
            self._call("POST", "/v1/notifications/batch", json={"notifications": items}),
            lambda r: r.get("results", []) if isinstance(r, dict) else r,
        )

    def get_notification(self, notification_id: str) -> Any:
        return self._call("GET", f"/v1/notifications/{_seg(notification_id)}")

    def update_notification(self, notification_id: str, **fields: Any) -> Any:
        """PATCH title/body/format/url/data/priority/tags/locales (``{}`` removes the
        locales); recipients see an ``updated`` event."""
        patch = {k: _jsonable(v) for k, v in fields.items() if v is not None}
        return self._call("PATCH", f"/v1/notifications/{_seg(notification_id)}", json=patch)

    def delete_notification(self, notification_id: str) -> Any:
        return self._call("DELETE", f"/v1/notifications/{_seg(notification_id)}")

    # -- topics ---------------------------------------------------------------

    def subscribe(self, topic: str, users: str | Iterable[str]) -> Any:
        """Add one user (``PUT``) or many (bulk ``POST``) to a topic."""
        return self._topic_members(topic, users, "add")

    def unsubscribe(self, topic: str, users: str | Iterable[str]) -> Any:
        return self._topic_members(topic, users, "remove")

    def _topic_members(self, topic: str, users: str | Iterable[str], action: str) -> Any:
        base = f"/v1/topics/{_seg(topic)}/subscribers"
        if isinstance(users, str):
            method = "PUT" if action == "add" else "DELETE"
            return self._call(method, f"{base}/{_seg(users)}")
        return self._call("POST", base, json={"users": list(users), "action": action})

    def get_topic(self, topic: str) -> Any:
        return self._call("GET", f"/v1/topics/{_seg(topic)}")

    # -- users (server side) --------------------------------------------------

    def user_notifications(self, user: str, *, limit: int | None = None,
                           before: str | None = None, state: str | None = None) -> Any:
        return self._call("GET", f"/v1/users/{_seg(user)}/notifications",
                          params=_page(limit, before, state))

    def get_user_preferences(self, user: str, *, if_none_match: str | None = None) -> Any:
        """The user's preferences, a :class:`Tagged` dict: ``.etag`` is what
        ``if_match=`` of the writes below takes.  With ``if_none_match`` (an
        ``etag`` read), ``None`` while they are still those (304)."""
        return self._call("GET", f"/v1/users/{_seg(user)}/preferences",
                          headers=_if_none_match(if_none_match))

    def set_user_preferences(self, user: str, preferences: dict, *,
                             if_match: str | None = None) -> Any:
        """Replace the user's preferences; with ``if_match`` (an ``etag``
        read), only if they are still those: else a 412
        :class:`TidingsAPIError` and nothing changes."""
        return self._call("PUT", f"/v1/users/{_seg(user)}/preferences", json=preferences,
                          headers=_if_match(if_match))

    def update_user_preferences(self, user: str, patch: dict, *,
                                if_match: str | None = None) -> Any:
        """Change only what ``patch`` names (a JSON merge patch; ``None``
        removes); returns the preferences as stored."""
        return self._call("PATCH", f"/v1/users/{_seg(user)}/preferences", json=patch,
                          headers=_if_match(if_match))

    def create_token(self, user: str, ttl: int = 3600) -> Any:
        """Mint a user token; returns ``{"token", "user", "expires_at", "jti"}``
        (keep the ``jti`` to revoke that one token: ``revoke_tokens(user, jti=…)``)."""
        return self._call("POST", f"/v1/users/{_seg(user)}/tokens", json={"ttl": ttl})

    def mint_token(self, user: str, ttl: int = 3600) -> Any:
        """Mint a user token for a browser/app to open its stream; returns the string."""
        return self._then(self.create_token(user, ttl), lambda r: r["token"])

    def revoke_tokens(self, user: str, *, jti: str | None = None,
                      token: str | None = None) -> Any:
        """Revoke every token of ``user`` issued until now, on every node, and
        end the streams they opened (a ban, "log out everywhere"); returns
        ``{"user", "revoked_before"}``: a token whose ``iat`` is before that
        Unix second is refused, one minted from the answer on is taken.

        With ``jti`` (the ``jti`` of ``create_token``'s answer) or ``token``:
        only that token of the user (a stolen device), until it expires;
        returns ``{"user", "jti", "revoked_until"}``, and the user's other
        tokens go on (docs/security.md#revoking-a-users-tokens)."""
        path = f"/v1/users/{_seg(user)}/tokens/revoke"
        if jti is None and token is None:
            return self._call("POST", path)
        if jti is not None and token is not None:
            raise ValueError("give jti or token, not both")
        body = {"jti": jti} if token is None else {"token": token}
        return self._call("POST", path, json=body)

    # -- one node (an admin key of the operator app; its own address) --------

    def node_state(self) -> Any:
        """The node the request reaches: ``{"node", "pid", "draining",
        "shutting_down", "streams", "plan"}`` (the drain or shed running, or
        the last one)."""
        return self._call("GET", "/v1/node")

    def drain_node(self, over: float | None = None) -> Any:
        """Drain the node without stopping it: not ready, new streams refused,
        the open ones ended with 4001 spread over ``over`` seconds (default
        30); returns its state."""
        return self._call("POST", "/v1/node/drain",
                          json=None if over is None else {"over": over})

    def undrain_node(self) -> Any:
        """Make a drained node ready again; returns its state."""
        return self._call("POST", "/v1/node/undrain")

    def shed_streams(self, fraction: float, over: float | None = None) -> Any:
        """End ``fraction`` of the node's open streams with 4001, spread over
        ``over`` seconds (default 30), readiness unchanged; returns its state."""
        body: dict = {"fraction": fraction}
        if over is not None:
            body["over"] = over
        return self._call("POST", "/v1/node/shed", json=body)

    # -- the user's own view (user token) -------------------------------------

    def inbox(self, *, limit: int | None = None, before: str | None = None,
              state: str | None = None, token: str | None = None) -> Any:
        return self._call("GET", "/v1/me/notifications", params=_page(limit, before, state),
                          user=True, token=token)

    def counts(self, *, token: str | None = None) -> Any:
        """``{"unread", "unseen", "at"}`` for the badge: ``at`` is where they
        were read (docs/protocol.md, "Counts and the badge";
        :class:`tidings.client.badge.Badge` keeps a badge by that rule)."""
        return self._call("GET", "/v1/me/counts", user=True, token=token)

    def mark_read(self, ids: Iterable[str] | None = None, *, all: bool = False,
                  token: str | None = None) -> Any:
        return self._mark("read", ids, all, token)

    def mark_seen(self, ids: Iterable[str] | None = None, *, all: bool = False,
                  token: str | None = None) -> Any:
        return self._mark("seen", ids, all, token)

    def archive(self, ids: Iterable[str] | None = None, *, all: bool = False,
                token: str | None = None) -> Any:
        return self._mark("archive", ids, all, token)

    def snooze(self, ids: Iterable[str], until: datetime | str, *,
               token: str | None = None) -> Any:
        """Out of the inbox and the counts until ``until`` (an aware datetime,
        or ISO 8601 with a zone; at most 90 days ahead), then back first and
        unread (docs/inbox.md#snooze)."""
        at = until.isoformat() if isinstance(until, datetime) else until
        payload = {"ids": [ids] if isinstance(ids, str) else list(ids), "until": at}
        return self._call("POST", "/v1/me/notifications/snooze", json=payload,
                          user=True, token=token)

    def unsnooze(self, ids: Iterable[str], *, token: str | None = None) -> Any:
        """Snoozed entries back now, first and unread."""
        payload = {"ids": [ids] if isinstance(ids, str) else list(ids)}
        return self._call("POST", "/v1/me/notifications/unsnooze", json=payload,
                          user=True, token=token)

    def _mark(self, action: str, ids: Iterable[str] | None, all_: bool, token: str | None) -> Any:
        if all_ == (ids is not None):
            raise ValueError("pass either ids or all=True")
        if ids is None:
            payload: dict[str, Any] = {"all": True}
        else:
            payload = {"ids": [ids] if isinstance(ids, str) else list(ids)}
        return self._call("POST", f"/v1/me/notifications/{action}", json=payload,
                          user=True, token=token)

    def get_preferences(self, *, if_none_match: str | None = None,
                        token: str | None = None) -> Any:
        """My preferences, a :class:`Tagged` dict (``.etag``); ``None`` while
        they are still those of ``if_none_match`` (see
        :meth:`get_user_preferences`)."""
        return self._call("GET", "/v1/me/preferences", headers=_if_none_match(if_none_match),
                          user=True, token=token)

    def set_preferences(self, preferences: dict, *, if_match: str | None = None,
                        token: str | None = None) -> Any:
        """Replace my preferences (see :meth:`set_user_preferences`)."""
        return self._call("PUT", "/v1/me/preferences", json=preferences,
                          headers=_if_match(if_match), user=True, token=token)

    def update_preferences(self, patch: dict, *, if_match: str | None = None,
                           token: str | None = None) -> Any:
        """Change only what ``patch`` names (see :meth:`update_user_preferences`)."""
        return self._call("PATCH", "/v1/me/preferences", json=patch,
                          headers=_if_match(if_match), user=True, token=token)


def _page(limit: int | None, before: str | None, state: str | None) -> dict:
    params = {"limit": limit, "before": before, "state": state}
    return {k: v for k, v in params.items() if v is not None}


class _Transport(_Endpoints):
    """What both clients share: auth headers, decoding and the retry rule."""

    def __init__(self, base_url: str, api_key: str | None, token: str | None,
                 max_retries: int):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.token = token
        self.max_retries = max_retries

    def _headers(self, headers: dict | None, user: bool, token: str | None) -> dict:
        secret = self._user_token(token) if user else self.api_key
        if not secret:
            raise ValueError("this call needs an API key (api_key=...)")
        out = {"Authorization": f"Bearer {secret}"}
        if headers:
            out.update(headers)
        return out

    def _user_token(self, token: str | None) -> str:
        secret = token or self.token
        if not secret:
            raise ValueError("this call needs a user token (token=...)")
        return secret

    def _retry_delay(self, attempt: int, method: str, headers: dict,
                     response: httpx.Response | None, exc: Exception | None) -> float | None:
        """Seconds to wait before retrying, or ``None`` to give up.

        429/503 and refused connections are always safe to retry: the server
        did not act.  Timeouts and dropped connections are ambiguous (it may
        have acted), so only idempotent requests -- including a POST that
        carries an Idempotency-Key, and a PATCH that carries If-Match (the
        server answers a retry of one it made with success, not 412) -- are
        retried then.
        """
        if attempt >= self.max_retries:
            return None
        fallback = min(_MAX_RETRY_WAIT, 0.25 * 2**attempt)
        if response is not None:
            if response.status_code not in (429, 503):
                return None
            hint = parse_retry_after(response.headers.get("retry-after"))
            return min(_MAX_RETRY_WAIT, hint) if hint is not None else fallback
        if isinstance(exc, httpx.ConnectError):
            return fallback
        safe = method in _IDEMPOTENT or "Idempotency-Key" in headers or "If-Match" in headers
        return fallback if safe and isinstance(exc, httpx.TransportError) else None

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        if response.status_code == 304:  # if_none_match: the copy the caller has is current
            return None
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return None
            body = response.json()
            etag = response.headers.get("etag")
            if etag is None or not isinstance(body, dict):
                return body
            tagged = Tagged(body)
            tagged.etag = etag
            return tagged
        raise error_from_response(response.status_code, response.headers, response.content)


class Client(_Transport):
    """Blocking client over ``httpx.Client``.

    >>> c = Client("http://127.0.0.1:8080", api_key="tk_...")
    >>> c.publish(["alice"], title="Hi", idempotency_key="k1")

    Non-2xx answers raise :class:`TidingsAPIError`.  429/503 are retried up to
    ``max_retries`` times honouring ``Retry-After``.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, token: str | None = None,
                 timeout: float = 10.0, max_retries: int = 2,
                 http_client: httpx.Client | None = None, **httpx_kwargs: Any):
        super().__init__(base_url, api_key, token, max_retries)
        self._owns_http = http_client is None
        self.http = http_client or httpx.Client(timeout=timeout, **httpx_kwargs)

    def _call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
              headers: dict | None = None, user: bool = False, token: str | None = None) -> Any:
        hdrs = self._headers(headers, user, token)
        attempt = 0
        while True:
            response = exc = None
            try:
                response = self.http.request(method, self.base_url + path, json=json,
                                             params=params, headers=hdrs)
            except httpx.TransportError as e:
                exc = e
            delay = self._retry_delay(attempt, method, hdrs, response, exc)
            if delay is None:
                if exc is not None:
                    raise exc
                assert response is not None  # no transport error: an answer
                return self._decode(response)
            attempt += 1
            time.sleep(delay)

    def _then(self, result: Any, fn: Callable[[Any], Any]) -> Any:
        return fn(result)

    def subscriber(self, **kwargs: Any) -> Subscriber:
        """A :class:`~tidings.client.Subscriber` for this client's user token."""
        from tidings.client.subscriber import Subscriber

        return Subscriber(self.base_url, self._user_token(kwargs.pop("token", None)), **kwargs)

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Transport):
    """The same API as :class:`Client`; every method is a coroutine."""

    def __init__(self, base_url: str, api_key: str | None = None, *, token: str | None = None,
                 timeout: float = 10.0, max_retries: int = 2,
                 http_client: httpx.AsyncClient | None = None, **httpx_kwargs: Any):
        super().__init__(base_url, api_key, token, max_retries)
        self._owns_http = http_client is None
        self.http = http_client or httpx.AsyncClient(timeout=timeout, **httpx_kwargs)

    async def _call(self, method: str, path: str, *, json: Any = None,
                    params: dict | None = None, headers: dict | None = None, user: bool = False,
                    token: str | None = None) -> Any:
        hdrs = self._headers(headers, user, token)
        attempt = 0
        while True:
            response = exc = None
            try:
                response = await self.http.request(method, self.base_url + path, json=json,
                                                   params=params, headers=hdrs)
            except httpx.TransportError as e:
                exc = e
            delay = self._retry_delay(attempt, method, hdrs, response, exc)
            if delay is None:
                if exc is not None:
                    raise exc
                assert response is not None  # no transport error: an answer
                return self._decode(response)
            attempt += 1
            await asyncio.sleep(delay)

    async def _then(self, result: Any, fn: Callable[[Any], Any]) -> Any:
        return fn(await result)

    def subscriber(self, **kwargs: Any) -> Subscriber:
        """A :class:`~tidings.client.Subscriber` for this client's user token."""
        from tidings.client.subscriber import Subscriber

        return Subscriber(self.base_url, self._user_token(kwargs.pop("token", None)), **kwargs)

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


__all__ = ["Client", "AsyncClient", "Tagged", "TidingsAPIError", "notification"]
