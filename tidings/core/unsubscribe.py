"""Unsubscribe links: what an e-mail's ``List-Unsubscribe`` URL carries
(RFC 2369, one-click per RFC 8058), and what following it changes.

A link names the app, the user, the notification's category (``None``: every
category, for a digest of several) and the channel it turns off, signed with
HMAC-SHA256 under a key derived from the install's pepper, like dashboard
sessions (tidings/dashboard/session.py).  Not under the app's signing secret:
rotating that one (after a leak) must not break the links already sitting in
inboxes.  Every node shares the store and so the pepper, so a link works on
any node and after restarts.

Links do not expire: RFC 8058 expects one to work for as long as the message
may be read, and what it can do is bounded -- switch one channel off for one
user, which the user can switch on again.  The MAC covers the app, so a link
of one app cannot touch another app's user.

Format: ``<payload>.<mac>``, both base64url without padding; the payload is
the JSON array ``[app, user, category or null, channel]`` and the MAC its
first 16 bytes (128 bits), computed over the payload's text as sent.  16
rather than 32 bytes because the URL must fit in one header line (RFC 5322
§2.1.1: 998 characters) with a user id of 128 characters.

Nothing here does I/O; :func:`switch_off` is the change to a user's
preferences, which the store applies in place (``Store.update_preferences``:
read and written under the user's row lock, so a change the user makes at
the same instant is not lost).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

import msgspec

from tidings.core.models import (
    ALL_CATEGORIES,
    CATEGORY_RE,
    ChannelPrefs,
    Preferences,
    valid_app_id,
    valid_user,
)

__all__ = ["CHANNELS", "BadLink", "Link", "issue", "link_secret", "switch_off", "verify"]

# The channels a link may switch off.  Only e-mail carries links today; the
# token names the channel so that another one can without a new format.
CHANNELS = ("email",)
MAX_TOKEN = 1024  # a real token is under 900 characters (see the module docstring)
_MAC_BYTES = 16
_MAC_TEXT = 22  # its base64url characters
_B64 = re.compile(r"^[A-Za-z0-9_-]+\Z")
_CATEGORY = re.compile(CATEGORY_RE)


class Link(msgspec.Struct, array_like=True, frozen=True):
    app: str
    user: str
    category: str | None  # None: every category
    channel: str


class BadLink(ValueError):
    """The token is malformed, truncated or forged; ``reason`` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def link_secret(pepper: bytes) -> bytes:
    """The links' key, derived so that it is neither a key hash nor a session key."""
    return hmac.new(pepper, b"tidings unsubscribe link v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> bytes:
    return hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:_MAC_BYTES]


def issue(secret: bytes, link: Link) -> str:
    """The token of ``link`` (ValueError for a link no route would take)."""
    _check(link)
    payload = _b64(msgspec.json.encode(link))
    return f"{payload}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str) -> Link:
    """The link ``token`` names; :class:`BadLink` when it is not one of ours."""
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        raise BadLink("malformed")
    payload, dot, mac = token.partition(".")
    if not dot or not _B64.match(payload) or not (mac == "" or _B64.match(mac)):
        raise BadLink("malformed")
    if len(mac) < _MAC_TEXT:  # a mail reader that cut the line, a copy that missed the end
        raise BadLink("truncated")
    try:
        given = _unb64(mac)
    except (binascii.Error, ValueError):
        raise BadLink("malformed") from None
    if len(mac) != _MAC_TEXT or len(given) != _MAC_BYTES:
        raise BadLink("malformed")
    # The MAC first: nothing of a forged payload is decoded.
    if not hmac.compare_digest(_mac(secret, payload), given):
        raise BadLink("forged")
    try:
        link = msgspec.json.decode(_unb64(payload), type=Link)
        _check(link)
    except (binascii.Error, ValueError, msgspec.DecodeError):  # signed by us: a bug
        raise BadLink("malformed") from None
    return link


def _check(link: Link) -> None:
    if not (valid_app_id(link.app) and valid_user(link.user)
            and (link.category is None or _CATEGORY.match(link.category))
            and link.channel in CHANNELS):
        raise ValueError(f"not a link tidings makes: {link!r}")


def switch_off(prefs: Preferences, category: str | None, channel: str) -> Preferences | None:
    """``prefs`` with ``channel`` off for ``category`` (``None``: for every
    category: the ones the preferences name and ``"*"``, every other one);
    ``None`` when it is off already, so that a repeated request writes nothing."""
    names = [category] if category is not None else [*prefs.categories, ALL_CATEGORIES]
    changed = {}
    for name in names:
        # A category the preferences leave out follows "*", then "on"
        # (tidings.core.quiet.plan).
        current = prefs.categories.get(name)
        if current is None and name != ALL_CATEGORIES:
            current = prefs.categories.get(ALL_CATEGORIES)
        current = current or ChannelPrefs()
        if getattr(current, channel):
            changed[name] = msgspec.structs.replace(current, **{channel: False})
    if not changed:
        return None
    return msgspec.structs.replace(prefs, categories={**prefs.categories, **changed})
