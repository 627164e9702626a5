"""Wire models and pure rules of the outbound channels' API.

What app backends and browsers send to register destinations (webhook
endpoints, push subscriptions, e-mail addresses) and to set frequency caps,
with the checks that turn a bad one into a 422 when it is registered rather
than a failure at every send.  No I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from tidings.core.models import NO_CONTROL_RE, Category, Digests

__all__ = [
    "Cap",
    "Caps",
    "EmailRequest",
    "PushSubscriptionRequest",
    "WebhookRequest",
    "check_email",
    "subscription_id",
]

MAX_CAP_WINDOW = 30 * 24 * 3600  # a cap's window is at most 30 days
MAX_CAP = 1_000_000


# Destinations are identifiers: no control characters (tidings/core/models.py).
_Url = Annotated[str, Meta(min_length=1, max_length=2048, pattern=NO_CONTROL_RE)]
_KEY = r"^[A-Za-z0-9_\-=+/]*\Z"  # base64 or base64url, as browsers send the keys


class WebhookRequest(msgspec.Struct, forbid_unknown_fields=True):
    url: _Url


class PushKeys(msgspec.Struct, forbid_unknown_fields=True):
    p256dh: Annotated[str, Meta(max_length=128, pattern=_KEY)]
    auth: Annotated[str, Meta(max_length=64, pattern=_KEY)]


class PushSubscriptionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A browser's ``PushSubscription.toJSON()``, sent as is."""

    endpoint: _Url
    keys: PushKeys
    expirationTime: float | None = None  # noqa: N815 - the browser's own spelling


class EmailRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, Meta(min_length=3, max_length=254)]
    name: Annotated[str, Meta(max_length=128)] = ""


class Cap(msgspec.Struct, forbid_unknown_fields=True):
    """At most ``max`` notifications of a category per user per ``per`` seconds."""

    per: Annotated[int, Meta(ge=1, le=MAX_CAP_WINDOW)]
    max: Annotated[int, Meta(ge=1, le=MAX_CAP)]


class Caps(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An app's frequency settings, per category (``PUT /v1/caps``): caps,
    and the digests its users get unless their preferences say otherwise."""

    categories: Annotated[dict[Category, Cap], Meta(max_length=256)] = {}
    digests: Digests = {}


# One "@", no whitespace or control characters, a dotted domain of LDH labels
# (or an address literal in brackets).  Deliberately not RFC 5322 in full:
# quoted local parts and comments are legal there and useless here.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}\Z")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def check_email(address: str) -> str:
    """The address if it is usable for SMTP, else ValueError with the reason."""
    if len(address) > 254 or address.count("@") != 1:
        raise ValueError("an e-mail address has exactly one @ and at most 254 characters")
    local, domain = address.split("@")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") \
            or ".." in local:
        raise ValueError("the part before @ is not a usable mailbox name")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("the domain is not a valid host name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError("the domain is not a valid host name")
    return address


def check_name(name: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("the name must not contain control characters")
    return name


WEBHOOK_ID_RE = re.compile(r"^wh_[0-9a-f]{16}\Z")
SUBSCRIPTION_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{16}\Z")


def subscription_id(endpoint: str) -> str:
    """A push subscription's id: derived from its endpoint, so the same
    browser registering again replaces its old entry instead of adding one."""
    digest = hashlib.sha256(endpoint.encode()).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode()


def redact_destination(channel: str, destination: dict[str, Any]) -> dict[str, Any]:
    """A job's destination as the admin API shows it.  A push endpoint is a
    capability URL (whoever has it can push to that browser), and its keys
    decrypt the payloads: show the push service's origin and the
    subscription id only."""
    if channel == "push":
        endpoint = str(destination.get("endpoint", ""))
        origin = "/".join(endpoint.split("/", 3)[:3])
        return {"push_service": origin, "subscription": destination.get("subscription")}
    return dict(destination)
