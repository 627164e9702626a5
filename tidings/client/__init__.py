"""Python SDK for tidings.

* :class:`Client` / :class:`AsyncClient` -- the HTTP API: publish, topics,
  tokens, preferences (API key) and a user's inbox and state (user token);
* :class:`Subscriber` -- a user's live stream over WebSocket, resumable from a
  cursor, deduplicated, reconnecting with jittered backoff until closed, with
  the user's badge kept exact (:mod:`tidings.client.badge`).

Preferences come back as a :class:`Tagged` dict whose ``etag`` the writes
take as ``if_match=``: a write of what was read is refused (412) when the
preferences changed meanwhile (docs/channels.md#writing-back-what-was-read);
the reads take it as ``if_none_match=`` and return None while they did not.

Errors: non-2xx answers raise :class:`TidingsAPIError`; a fatal stream close
(4400-4499) raises :class:`StreamClosed`, a subclass of it, and a stream that
cannot be opened `max_retries` times in a row raises :class:`Unreachable`.
"""

from tidings.client.errors import StreamClosed, TidingsAPIError, Unreachable
from tidings.client.publisher import AsyncClient, Client, Tagged, notification
from tidings.client.subscriber import Subscriber

__all__ = [
    "Client", "AsyncClient", "Subscriber", "Tagged", "TidingsAPIError", "StreamClosed",
    "Unreachable", "notification",
]
