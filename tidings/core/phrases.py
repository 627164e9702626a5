"""The words tidings writes itself, in the recipient's language.

A notification's own text comes in the user's language through its
``locales`` (tidings/core/locales.py).  A few words are tidings' own: a
digest's title ("3 new notifications") and its "... and 12 more" line, and
the e-mail's "New notification" (a notification without a title) and
"Open" (its link).  They follow the language the job is sent with (the
``locale`` kept with its destination), picked from :data:`PHRASES` by the
same lookup as a notification's overrides (``fr-CA`` → ``fr``), English
when no language fits.  ``<tidings-inbox>`` ships its own strings the same
way (tidings/dashboard/static/tidings-inbox-ui.js).

A phrase that counts is a pair ``(one, other)`` with ``{n}`` filled in;
:data:`ONE` says which counts take the first form, CLDR's plural rule
``one`` for whole numbers (French counts 0 with 1).  A language is a row of
the table, with its row of :data:`ONE`; a phrase it leaves out is the
English one.  Nothing here does I/O.
"""

from __future__ import annotations

from tidings.core.locales import best

__all__ = ["ONE", "PHRASES", "language", "phrase", "row"]

ENGLISH = "en"

PHRASES: dict[str, dict[str, str | tuple[str, str]]] = {
    "en": {
        "new": ("{n} new notification", "{n} new notifications"),
        "more": ("... and {n} more", "... and {n} more"),
        "untitled": "New notification",
        "open": "Open",
    },
    "fr": {
        "new": ("{n} nouvelle notification", "{n} nouvelles notifications"),
        "more": ("... et {n} autre", "... et {n} autres"),
        "untitled": "Nouvelle notification",
        "open": "Ouvrir",
    },
    "de": {
        "new": ("{n} neue Benachrichtigung", "{n} neue Benachrichtigungen"),
        "more": ("... und {n} weitere", "... und {n} weitere"),
        "untitled": "Neue Benachrichtigung",
        "open": "Öffnen",
    },
}

# The counts that take a phrase's ``one`` form (CLDR: en, de ``n = 1``; fr ``i = 0,1``)
ONE: dict[str, frozenset[int]] = {
    "en": frozenset({1}),
    "fr": frozenset({0, 1}),
    "de": frozenset({1}),
}


def row(want: str) -> str | None:
    """The language of :data:`PHRASES` that serves ``want`` by the lookup of
    RFC 4647 §3.4; None when none does (nor for "")."""
    return best(PHRASES, want)


def language(want: str) -> str:
    """The language of :data:`PHRASES` a reader of ``want`` (a BCP 47 tag,
    "" for none) gets: :func:`row`, else English."""
    return row(want) or ENGLISH


def phrase(key: str, want: str, n: int | None = None) -> str:
    """The phrase ``key`` in the language for ``want``; a counting one with
    ``n`` filled in, in the plural form ``n`` takes."""
    lang = language(want)
    if key not in PHRASES[lang]:
        lang = ENGLISH
    text = PHRASES[lang][key]
    if isinstance(text, tuple):
        one, other = text
        return (one if n in ONE[lang] else other).format(n=n)
    return text
