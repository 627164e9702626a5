"""Entity tags, ``If-Match`` and ``If-None-Match`` (RFC 9110 §8.8.3,
§13.1.1, §13.1.2): optimistic concurrency on a document a client reads, edits
and writes back whole, and a ``304`` for a client that asks again for a
document it already has.

A tag here is **strong** and derived from the bytes a ``GET`` answers (a
hash of them), so two equal documents have the same tag and any change gives
another: no version counter to store, so no migration.  ``If-Match`` compares
strongly: a weak tag (``W/"..."``) in it never matches.  ``If-None-Match``
compares weakly, as a ``GET``'s must: ``W/"x"`` matches ``"x"``.  ``*``
matches any current representation.  Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re

from tidings.errors import BadRequest, PreconditionFailed

__all__ = ["ANY", "IfMatch", "IfNoneMatch", "of", "parse_if_match", "parse_if_none_match"]

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
# (obs-text, bytes over 0x7E, is left out: no tag of ours has one, and a
# header's text arrives here decoded as Latin-1, where it would be ambiguous).
_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e]*")\s*(?:,|\Z)')
MAX_TAGS = 64  # a list longer than this is an attack, not a client


def of(body: bytes) -> str:
    """The strong tag of ``body``: 128 bits of its SHA-256, quoted."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


class IfMatch:
    """A parsed ``If-Match``: ``*`` or the list of tags it names."""

    __slots__ = ("wildcard", "tags", "raw")

    def __init__(self, tags: frozenset[str], *, wildcard: bool = False, raw: str = "*"):
        self.tags, self.wildcard, self.raw = tags, wildcard, raw

    def matches(self, current: str) -> bool:
        return self.wildcard or current in self.tags

    def check(self, current: str) -> None:
        """Raise :class:`PreconditionFailed` unless ``current`` matches: the
        caller changes nothing then."""
        if not self.matches(current):
            raise self.refused(current)

    def refused(self, current: str) -> PreconditionFailed:
        return PreconditionFailed(
            f"If-Match {self.raw} is not the current ETag {current}: the document "
            "changed since it was read; read it again and reapply the change",
            field="If-Match")


ANY = IfMatch(frozenset(), wildcard=True)


class IfNoneMatch:
    """A parsed ``If-None-Match``: ``*`` or the tags it names, weak or not."""

    __slots__ = ("wildcard", "tags")

    def __init__(self, tags: frozenset[str], *, wildcard: bool = False):
        self.tags, self.wildcard = tags, wildcard

    def matches(self, current: str) -> bool:
        """True when ``current`` (a strong tag) is one the client holds: a
        ``GET`` answers ``304 Not Modified`` then."""
        return self.wildcard or current in self.tags


def _tags(text: str, header: str, code: str) -> list[tuple[bool, str]]:
    """The ``(weak, opaque tag)`` of a comma-separated list of entity tags;
    :class:`BadRequest` (``code``) for anything else."""
    found: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(text):
        m = _TAG.match(text, pos)
        if m is None or len(found) == MAX_TAGS:
            raise BadRequest(
                f'{header} must be * or a list of quoted ETags ("..."), as an ETag header '
                f"of this resource gave (at most {MAX_TAGS})", field=header, code=code)
        found.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    if not found or text.endswith(","):
        raise BadRequest(f"{header} is empty: send * or a quoted ETag", field=header, code=code)
    return found


def parse_if_match(raw: str | None) -> IfMatch | None:
    """The ``If-Match`` header's value, or None without one;
    :class:`BadRequest` (``malformed_if_match``) for one that is neither ``*``
    nor a comma-separated list of quoted tags."""
    if raw is None:
        return None
    text = raw.strip()
    if text == "*":
        return ANY
    tags = _tags(text, "If-Match", "malformed_if_match")
    # a weak tag is parsed, and never matches
    return IfMatch(frozenset(tag for weak, tag in tags if not weak), raw=text[:100])


def parse_if_none_match(raw: str | None) -> IfNoneMatch | None:
    """The ``If-None-Match`` header's value, or None without one;
    :class:`BadRequest` (``malformed_if_none_match``) as for ``If-Match``."""
    if raw is None:
        return None
    text = raw.strip()
    if text == "*":
        return IfNoneMatch(frozenset(), wildcard=True)
    return IfNoneMatch(frozenset(tag for _weak, tag in _tags(
        text, "If-None-Match", "malformed_if_none_match")))
