"""Entity tags and ``If-Match`` (RFC 9110 §8.8.3, §13.1.1), for optimistic
concurrency on a document a client reads, edits and writes back whole.

A tag here is **strong** and derived from the bytes a ``GET`` answers (a
hash of them), so two equal documents have the same tag and any change gives
another: no version counter to store, so no migration.  ``If-Match`` compares
strongly: a weak tag (``W/"..."``) in it never matches.  ``*`` matches any
current representation.  Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re

from tidings.errors import BadRequest, PreconditionFailed

__all__ = ["ANY", "IfMatch", "of", "parse_if_match"]

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

    def check(self, current: str) -> None:
        """Raise :class:`PreconditionFailed` unless ``current`` matches: the
        caller changes nothing then."""
        if not (self.wildcard or current in self.tags):
            raise PreconditionFailed(
                f"If-Match {self.raw} is not the current ETag {current}: the document "
                "changed since it was read; read it again and reapply the change",
                field="If-Match")


ANY = IfMatch(frozenset(), wildcard=True)


def parse_if_match(raw: str | None) -> IfMatch | None:
    """The ``If-Match`` header's value, or None without one;
    :class:`BadRequest` (``malformed_if_match``) for one that is neither ``*``
    nor a comma-separated list of quoted tags."""
    if raw is None:
        return None
    text = raw.strip()
    if text == "*":
        return ANY
    strong: set[str] = set()
    pos, count = 0, 0
    while pos < len(text):
        m = _TAG.match(text, pos)
        count += 1
        if m is None or count > MAX_TAGS:
            raise BadRequest(
                'If-Match must be * or a list of quoted ETags ("..."), as an ETag header '
                f"of this resource gave (at most {MAX_TAGS})",
                field="If-Match", code="malformed_if_match")
        if m.group(1) is None:  # a weak tag is parsed, and never matches
            strong.add(m.group(2))
        pos = m.end()
    if count == 0 or text.endswith(","):
        raise BadRequest("If-Match is empty: send * or a quoted ETag",
                         field="If-Match", code="malformed_if_match")
    return IfMatch(frozenset(strong), raw=text[:100])
