"""A user's preferences: what makes a document valid, and a change to part of it.

``PUT .../preferences`` replaces the whole document; ``PATCH`` changes only
what its body names, as a JSON merge patch (RFC 7396) of the document:

* ``{"categories": {"social": {"email": false}}}`` switches e-mail off for
  ``social`` and leaves its other switches as they were.  A category the
  preferences did not name starts from the switches it followed until then,
  those of ``"*"`` (every category not named), so naming it changes nothing
  but the switch given.  ``{"categories": {"social": null}}`` forgets the
  category: it follows ``"*"`` again.
* ``{"quiet_hours": {...}}`` sets the quiet hours as a whole, ``null``
  removes them.
* ``{"locale": "de-AT"}`` sets the language notifications are shown in
  (tidings/core/locales.py), ``null`` removes it.
* ``{"digests": {"social": {"email": {"every": 3600}}}}`` sets one channel's
  rule, ``{"digests": {"social": {"email": null}}}`` removes it, and
  ``{"digests": {"social": null}}`` every rule of the category.

The store applies the change under the user's row lock
(``Store.update_preferences``), so two changes made at the same instant, from
two devices, an unsubscribe link or the app's backend, are both kept: the
point of a patch over a read-change-write of the whole document.  A client
that does read, change and write the whole document back sends the ``ETag``
its read gave as ``If-Match`` (tidings/core/etag.py): the tag is a hash of
the document's canonical encoding (:func:`encoded`), checked under the same
lock.  Nothing here does I/O.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from tidings.core import etag as etags
from tidings.core import locales, quiet
from tidings.core.digest import InvalidDigest
from tidings.core.digest import check as check_digests
from tidings.core.models import (
    ALL_CATEGORIES,
    MAX_PREF_CATEGORIES,
    Category,
    ChannelPrefs,
    DigestRule,
    Preferences,
    PrefsCategory,
    QuietHours,
)
from tidings.errors import Invalid

__all__ = ["NONE_MUTED", "ChannelPrefsPatch", "PreferencesPatch", "check", "encoded", "etag",
           "merged", "muted"]

# The in-app mutes of a user who has none, shared (most users).
NONE_MUTED: frozenset[str] = frozenset()


def muted(prefs: Preferences) -> frozenset[str]:
    """The categories ``prefs`` switch off in-app (``in_app: false``): the
    user gets no inbox entry of them, and sees no feed item of them
    (docs/channels.md).  ``"*"`` never does (``check``)."""
    cats = [c for c, ch in prefs.categories.items() if not ch.in_app]
    return frozenset(cats) if cats else NONE_MUTED


def encoded(prefs: Preferences) -> bytes:
    """``prefs`` as the API answers them: JSON with its keys sorted, so that
    equal documents are equal bytes whatever order their keys were written
    in and whichever store kept them (PostgreSQL's ``jsonb`` reorders keys)."""
    return msgspec.json.encode(prefs, order="sorted")


def etag(prefs: Preferences) -> str:
    """The strong ETag of ``prefs``: a hash of :func:`encoded`, the bytes a
    ``GET`` answers.  A user never written has the defaults' tag."""
    return etags.of(encoded(prefs))


class ChannelPrefsPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The switches of one category to change; the others keep their value."""

    in_app: bool | UnsetType = UNSET
    webhook: bool | UnsetType = UNSET
    push: bool | UnsetType = UNSET
    email: bool | UnsetType = UNSET


class PreferencesPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a ``PATCH .../preferences`` may change (module docstring)."""

    categories: Annotated[dict[PrefsCategory, ChannelPrefsPatch | None],
                          Meta(max_length=MAX_PREF_CATEGORIES + 1)] = {}
    quiet_hours: QuietHours | None | UnsetType = UNSET
    digests: Annotated[
        dict[Category, dict[Literal["webhook", "push", "email"], DigestRule | None] | None],
        Meta(max_length=256)] = {}
    locale: Annotated[str, Meta(max_length=35)] | None | UnsetType = UNSET


def merged(prefs: Preferences, patch: PreferencesPatch) -> Preferences:
    """``prefs`` with ``patch`` applied (not checked: see :func:`check`)."""
    categories = dict(prefs.categories)
    every = categories.get(ALL_CATEGORIES)
    for name, change in patch.categories.items():
        if change is None:
            categories.pop(name, None)
            continue
        # what the category followed until now: its own switches, else "*"'s
        # (whose in_app is always on), else every switch on
        base = categories.get(name) or every or ChannelPrefs()
        given = {f: v for f in change.__struct_fields__
                 if (v := getattr(change, f)) is not UNSET}
        categories[name] = msgspec.structs.replace(base, **given)
    digests = {category: dict(rules) for category, rules in prefs.digests.items()}
    for category, changes in patch.digests.items():
        if changes is None:
            digests.pop(category, None)
            continue
        rules = digests.setdefault(category, {})
        for channel, rule in changes.items():
            if rule is None:
                rules.pop(channel, None)
            else:
                rules[channel] = rule
        if not rules:
            del digests[category]
    quiet_hours = prefs.quiet_hours if patch.quiet_hours is UNSET else patch.quiet_hours
    locale = prefs.locale if patch.locale is UNSET else patch.locale
    return Preferences(categories=categories, quiet_hours=quiet_hours,
                       digests=digests, locale=locale)


def check(prefs: Preferences) -> Preferences:
    """``prefs`` if a user may have them, else :class:`Invalid` naming the field."""
    every = prefs.categories.get(ALL_CATEGORIES)
    if every is not None and not every.in_app:
        raise Invalid('"*" switches the outbound channels of every other category; in_app '
                      "is switched off per category", field="categories.*.in_app")
    if len(prefs.categories) - (every is not None) > MAX_PREF_CATEGORIES:
        raise Invalid(f"at most {MAX_PREF_CATEGORIES} categories, and \"*\"",
                      field="categories")
    if prefs.quiet_hours is not None:
        try:
            quiet.zone(prefs.quiet_hours.tz)  # refuses "localtime": the server's zone
        except quiet.InvalidTimeZone:
            raise Invalid("unknown time zone", field="quiet_hours.tz") from None
    if prefs.locale is not None and not locales.valid_tag(prefs.locale):
        raise Invalid('locale must be a BCP 47 language tag, such as "de" or "pt-BR"',
                      field="locale")
    try:
        check_digests(prefs.digests, "digests")
    except InvalidDigest as exc:
        raise Invalid(str(exc), field=exc.field) from None
    return prefs
