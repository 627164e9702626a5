"""Which text a user sees (tidings/core/locales.py): well-formed tags, the
lookup's fallback chain, and a resolved notification's shape."""

from __future__ import annotations

import json

import msgspec
import pytest

from tidings.core import events
from tidings.core.locales import best, check, resolve, resolve_frame, resolve_payload, valid_tag
from tidings.core.models import LocaleText, Notification
from tidings.errors import Invalid


@pytest.mark.parametrize("tag", ["de", "de-AT", "zh-Hant-TW", "es-419", "sr-Latn-RS",
                                 "en-US-x-twain", "x-private", "DE-at", "sl-rozaj-biske"])
def test_well_formed_tags_are_taken(tag):
    assert valid_tag(tag)


@pytest.mark.parametrize("tag", ["", "d", "de_AT", "de-", "-de", "de--AT", "de AT", "de\n",
                                 "i-klingon", "german-x", "de-AT-" + "a" * 40, "123", "d3"])
def test_malformed_tags_are_refused(tag):
    assert not valid_tag(tag)
    with pytest.raises(Invalid) as info:
        check({tag: LocaleText(title="x")})
    assert info.value.field == f"locales.{tag}"


def test_a_tag_given_twice_in_two_cases_is_refused():
    with pytest.raises(Invalid, match="twice"):
        check({"de": LocaleText(), "DE": LocaleText()})
    assert check({}) is None


@pytest.mark.parametrize(("tags", "want", "picked"), [
    (["de", "de-AT"], "de-AT", "de-AT"),  # the tag itself
    (["de", "fr-CA"], "de-AT", "de"),  # then its language
    (["de-Latn"], "de-Latn-AT", "de-Latn"),  # one subtag at a time
    (["en"], "en-a-bbb-x-ccc", "en"),  # a singleton goes with what follows it
    (["DE"], "de-at", "DE"),  # without regard to case
    (["fr-CA"], "fr", None),  # never more specific than asked
    (["de"], "", None),  # no locale: the notification's own
    (["de"], "en", None),
])
def test_the_lookup_falls_back_from_the_tag_to_its_language_then_to_none(tags, want, picked):
    assert best(tags, want) == picked


def _body(**fields) -> bytes:
    note = Notification(id="n1", category="c", created_at="2025-01-01T00:00:00.000Z",
                        title="Hello", body="Your order shipped", url="/o/1", **fields)
    return msgspec.json.encode(note)


def test_a_resolved_notification_carries_the_override_and_its_tag_and_no_locales():
    body = _body(locales={"de": LocaleText(title="Hallo", body="Versandt"),
                          "fr": LocaleText(url="/fr/o/1")},
                 expires_at="2025-01-02T00:00:00.000Z")
    de = json.loads(resolve(body, "de-AT"))
    assert (de["title"], de["body"], de["url"], de["locale"]) == (
        "Hallo", "Versandt", "/o/1", "de")
    assert "locales" not in de
    fr = json.loads(resolve(body, "fr"))
    assert (fr["title"], fr["url"], fr["locale"]) == ("Hello", "/fr/o/1", "fr")
    en = json.loads(resolve(body, "en"))
    assert (en["title"], "locale" in en, "locales" in en) == ("Hello", False, False)
    # expires_at stays last, where the gateway looks for it
    for tag in ("de", "fr", "en", ""):
        assert events.expiry(resolve(body, tag)) == events.expiry(body) is not None


def test_a_notification_without_locales_is_passed_as_it_is():
    body = _body(data={"locales": "not the field"})
    assert resolve(body, "de") is body
    frame = events.updated_frame(_body())
    assert resolve_frame(frame, "de") is frame


def test_events_and_group_payloads_are_resolved_around_the_notification():
    body = _body(locales={"de": LocaleText(title="Hallo")})
    feed = json.loads(resolve_frame(events.feed_frame(7, body), "de"))
    assert (feed["feed"], feed["notification"]["title"]) == (7, "Hallo")
    payload = resolve_payload(events.with_group(body, b'{"count":2}'), "de")
    got = json.loads(events.notification_frame("e", 3, payload))
    assert got["group"] == {"count": 2} and got["notification"]["title"] == "Hallo"
