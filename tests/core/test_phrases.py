"""tidings' own words in the recipient's language (tidings/core/phrases.py):
the language a tag gets, the plural forms, English for the rest."""

from __future__ import annotations

import pytest

from tidings.core.phrases import ONE, PHRASES, language, phrase


@pytest.mark.parametrize(("want", "lang"), [
    ("fr", "fr"), ("fr-CA", "fr"), ("DE-at", "de"), ("de-Latn-CH", "de"), ("en-GB", "en"),
    ("ja", "en"), ("", "en"), ("x-private", "en"), ("frr", "en"),  # North Frisian is not fr
])
def test_a_tag_gets_its_language_by_its_subtags_else_english(want, lang):
    assert language(want) == lang


@pytest.mark.parametrize(("want", "n", "said"), [
    ("en", 1, "1 new notification"), ("en", 3, "3 new notifications"),
    ("en", 0, "0 new notifications"),
    ("fr", 1, "1 nouvelle notification"), ("fr-CA", 3, "3 nouvelles notifications"),
    ("fr", 0, "0 nouvelle notification"),  # French counts 0 as one
    ("de", 1, "1 neue Benachrichtigung"), ("de-AT", 3, "3 neue Benachrichtigungen"),
    ("ja", 2, "2 new notifications"),
])
def test_a_count_takes_its_languages_plural_form(want, n, said):
    assert phrase("new", want, n) == said


def test_the_fixed_words_and_a_phrase_a_language_leaves_out():
    assert [phrase("open", t) for t in ("en", "fr", "de", "pt")] == [
        "Open", "Ouvrir", "Öffnen", "Open"]
    assert phrase("more", "fr", 1) == "... et 1 autre"
    assert phrase("more", "de", 12) == "... und 12 weitere"
    PHRASES["xx"], ONE["xx"] = {"open": "Op"}, frozenset()
    try:
        assert (phrase("open", "xx-YY"), phrase("new", "xx", 1)) == ("Op", "1 new notification")
    finally:
        del PHRASES["xx"], ONE["xx"]


def test_every_language_has_a_plural_rule_and_the_same_phrases():
    assert set(ONE) == set(PHRASES)
    for lang, row in PHRASES.items():
        assert set(row) == set(PHRASES["en"]), lang
        for key, text in row.items():
            assert isinstance(text, tuple) == isinstance(PHRASES["en"][key], tuple), (lang, key)
