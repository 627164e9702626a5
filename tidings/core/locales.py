"""Localized notifications: which text a user sees.

A publish may carry ``"locales": {"de": {"title": ..., "body": ...}, "fr-CA":
{...}}``: per-language overrides of the notification's ``title``, ``body``
and ``url`` (a field an override leaves out is the notification's own).  A
user's language is the ``locale`` of their preferences (or a device's
``?locale=``).  Wherever text is shown for a user -- the inbox page, the live
events, e-mail, Web Push, digests -- the server hands out the notification
*resolved* for that language (:func:`resolve`): the best override's fields
in place of the notification's own, ``locale`` naming the override taken,
and ``locales`` left out.

The best override is the lookup of RFC 4647 §3.4: the tag itself, then the
tag cut short one subtag at a time (``de-Latn-AT`` → ``de-Latn`` → ``de``;
a single-letter subtag goes with the one after it), compared without regard
to case (BCP 47 tags are case-insensitive).  None found: the notification's
own text.  An app's categories take the same lookup for their labels and
descriptions (:func:`text`).  A tag is well-formed when it follows the ``langtag`` (or
private-use) production of RFC 5646 §2.1; the grandfathered irregular tags
(``i-klingon``) are not taken.

A notification without ``locales`` costs the live path one search of its
bytes (:func:`has_locales`), nothing else.  Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec

from tidings.core.models import LOCALE_RE, MAX_LOCALES, LocaleText
from tidings.errors import Invalid

__all__ = ["MAX_LOCALES", "best", "check", "check_tags", "has_locales", "resolve",
           "resolve_frame", "resolve_payload", "text", "valid_tag"]

_TAG = re.compile(LOCALE_RE)


def valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and bool(_TAG.match(tag))


def check(locales: dict[str, LocaleText] | None) -> dict[str, LocaleText] | None:
    """``locales`` as a notification keeps them (None for none), after the
    rules msgspec does not say: each tag well-formed, and once whatever its case."""
    if not locales:
        return None
    check_tags(locales, "locales")
    return locales


def check_tags(tags: Iterable[str], where: str) -> None:
    """Refuse (422 naming ``where.<tag>``) a tag of ``tags`` that is not
    well-formed, or that comes twice whatever its case."""
    seen: set[str] = set()
    for tag in tags:
        if not valid_tag(tag):
            raise Invalid(f"locale {tag!r} is not a BCP 47 language tag (such as \"de\" or "
                          "\"pt-BR\")", field=f"{where}.{tag}")
        low = tag.lower()
        if low in seen:
            raise Invalid(f"locale {tag!r} is given twice (tags are compared without "
                          "regard to case)", field=f"{where}.{tag}")
        seen.add(low)


def text(texts: dict[str, str] | None, want: str, default: str) -> tuple[str, str | None]:
    """The text of ``texts`` (by tag) that a reader of ``want`` is shown, and
    its tag; ``default`` and None when no tag fits (a category's label and
    description: tidings/api/categories.py)."""
    tag = best(texts, want) if texts else None
    return (default, None) if tag is None else (texts[tag], tag)  # type: ignore[index]


def best(tags: Iterable[str], want: str) -> str | None:
    """The tag of ``tags`` that the lookup of RFC 4647 §3.4 picks for
    ``want``, None when none fits."""
    if not want:
        return None
    by_lower = {t.lower(): t for t in tags}
    key = want.lower()
    while key:
        found = by_lower.get(key)
        if found is not None:
            return found
        cut = key.rfind("-")
        if cut < 0:
            return None
        key = key[:cut]
        if len(key) >= 2 and key[-2] == "-":  # a singleton goes with what followed it
            key = key[:-2]
    return None


_LAST = ("deliver_at", "expires_at")
_MARK = b'"locales":{'


def has_locales(body: bytes) -> bool:
    """Whether ``body`` (a notification, or an event carrying one) may hold
    overrides: the one test a notification without them costs.  A ``data``
    object with such a key answers True, and :func:`resolve` then finds
    nothing to do."""
    return _MARK in body


class _Resolvable(msgspec.Struct, omit_defaults=True):
    """The fields :func:`resolve` touches; the others pass through as they are."""

    locales: dict[str, LocaleText] | None = None


_decode_resolvable = msgspec.json.Decoder(_Resolvable).decode
_decode_object = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_encode = msgspec.json.encode


def resolve(body: bytes, want: str) -> bytes:
    """The notification ``body`` as a user of language ``want`` ("" for
    none) sees it: the best override's fields in place of its own, its tag
    as ``locale``, and no ``locales``.  ``body`` itself when it has none."""
    if not has_locales(body):
        return body
    try:
        fields = _decode_object(body)
        raw = fields.get("locales")
        if raw is None:
            return body
        locales = _decode_resolvable(b'{"locales":' + bytes(raw) + b"}").locales or {}
    except msgspec.DecodeError:
        return body
    del fields["locales"]
    tag = best(locales, want)
    if tag is None:
        return _encode(fields)
    last = {name: fields.pop(name) for name in _LAST if name in fields}
    text = locales[tag]
    for name in ("title", "body", "url"):
        value = getattr(text, name)
        if value is not None:
            fields[name] = value  # encoded alike
    fields["locale"] = tag  # type: ignore[assignment]
    fields.update(last)  # ``expires_at`` stays last (events.EXPIRES)
    return _encode(fields)


def resolve_frame(frame: bytes, want: str) -> bytes:
    """An event object (``notification``, ``updated``, a feed item's) with
    the notification it carries resolved for ``want``."""
    if not has_locales(frame):
        return frame
    try:
        fields = _decode_object(frame)
    except msgspec.DecodeError:
        return frame
    note = fields.get("notification")
    if note is None:
        return frame
    fields["notification"] = msgspec.Raw(resolve(bytes(note), want))
    return _encode(fields)


_WRAP = b'{"notification":'


def resolve_payload(payload: bytes, want: str) -> bytes:
    """A personal event's payload (the notification, maybe followed by a
    group entry's summary: events.with_group) resolved for ``want``."""
    if not has_locales(payload):
        return payload
    return resolve_frame(_WRAP + payload + b"}", want)[len(_WRAP):-1]
