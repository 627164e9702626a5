"""Entity tags and If-Match (tidings/core/etag.py), and the preferences' tag."""

from __future__ import annotations

import pytest

from tidings.core import etag
from tidings.core.models import ChannelPrefs, Preferences
from tidings.core.preferences import encoded
from tidings.core.preferences import etag as prefs_etag
from tidings.errors import BadRequest, PreconditionFailed


def test_equal_documents_have_one_tag_whatever_their_key_order():
    a = Preferences(categories={"a": ChannelPrefs(email=False), "b": ChannelPrefs()})
    b = Preferences(categories={"b": ChannelPrefs(), "a": ChannelPrefs(email=False)})
    assert encoded(a) == encoded(b) == b'{"categories":{"a":{"email":false},"b":{}}}'
    assert prefs_etag(a) == prefs_etag(b) != prefs_etag(Preferences())
    assert prefs_etag(Preferences()) == etag.of(b"{}")


@pytest.mark.parametrize(("raw", "tags"), [
    ('"x"', {'"x"'}), ('"x","y"', {'"x"', '"y"'}), ('  "x" ,\t"y"  ', {'"x"', '"y"'}),
    ('W/"x", "y"', {'"y"'}), ('""', {'""'}), ('"a!#~"', {'"a!#~"'}),
])
def test_a_list_of_tags_is_read_and_weak_ones_never_match(raw, tags):
    parsed = etag.parse_if_match(raw)
    assert parsed is not None and parsed.tags == tags and not parsed.wildcard
    for tag in tags:
        parsed.check(tag)
    with pytest.raises(PreconditionFailed) as refused:
        parsed.check('"other"')
    assert refused.value.status == 412 and refused.value.code == "precondition_failed"


def test_star_matches_anything_and_no_header_is_no_condition():
    assert etag.parse_if_match(None) is None
    star = etag.parse_if_match("*")
    assert star is etag.ANY
    star.check('"anything"')


@pytest.mark.parametrize("raw", ["", "x", '"x', '"x",', ',"x"', '"x" "y"', "**", '"x", *',
                                 'W/ "x"', '"caf\xe9"', '"a b"', ", ".join(['"x"'] * 65)])
def test_anything_else_is_a_400(raw):
    with pytest.raises(BadRequest) as bad:
        etag.parse_if_match(raw)
    assert bad.value.status == 400 and bad.value.code == "malformed_if_match"
    assert bad.value.field == "If-Match"


@pytest.mark.parametrize(("raw", "held"), [
    ('"x"', '"x"'), ('W/"x"', '"x"'), ('"y", W/"x"', '"x"'), (' "y" ,"x" ', '"x"'),
    ("*", '"anything"'), ("  *  ", '"x"'),
])
def test_if_none_match_compares_weakly(raw, held):
    parsed = etag.parse_if_none_match(raw)
    assert parsed is not None and parsed.matches(held)
    assert raw.strip() == "*" or not parsed.matches('"other"')


def test_no_if_none_match_is_no_condition():
    assert etag.parse_if_none_match(None) is None


@pytest.mark.parametrize("raw", ["", "x", '"x', '"x",', '"x" "y"', "**", '"x", *', 'W/ "x"',
                                 ", ".join(['"x"'] * 65)])
def test_a_malformed_if_none_match_is_a_400(raw):
    with pytest.raises(BadRequest) as bad:
        etag.parse_if_none_match(raw)
    assert bad.value.status == 400 and bad.value.code == "malformed_if_none_match"
    assert bad.value.field == "If-None-Match" and "If-None-Match" in bad.value.message
