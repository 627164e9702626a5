"""Unsubscribe links: tokens that only this install makes, and the change to
preferences that following one makes."""

from __future__ import annotations

import base64
import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core import unsubscribe
from tidings.core.models import ChannelPrefs, Preferences, QuietHours
from tidings.core.unsubscribe import BadLink, Link, issue, link_secret, switch_off, verify

SECRET = link_secret(b"p" * 32)
LINK = Link("testapp", "alice", "social", "email")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_link_comes_back_as_it_was_issued():
    for link in (LINK, Link("a", "x" * 128, None, "email"),
                 Link("app_1-x", "team/ann é 日本 🎉", "billing.v2:eu", "email")):
        token = issue(SECRET, link)
        assert verify(SECRET, token) == link
        assert len(token) < unsubscribe.MAX_TOKEN
        assert token.isascii() and "/" not in token and "=" not in token


def test_the_key_is_derived_from_the_pepper_and_is_its_own():
    from tidings.dashboard.session import session_secret

    assert link_secret(b"p" * 32) == SECRET
    assert link_secret(b"q" * 32) != SECRET
    assert session_secret(b"p" * 32) != SECRET  # not the dashboard's key


def test_the_longest_link_fits_in_a_header_line():
    """A user id of 128 four-byte characters, the longest app id and
    category: the URL still fits in one line of 998 (RFC 5322 §2.1.1) with
    a public URL of 60 characters."""
    token = issue(SECRET, Link("a" * 64, "🎉" * 128, "c" * 64, "email"))
    line = f"List-Unsubscribe: <https://notify.some-long-company-name.example/v1/unsubscribe/{token}>"
    assert len(line) <= 998, len(line)


@pytest.mark.parametrize("link", [Link("Bad App", "alice", None, "email"),
                                  Link("testapp", "", None, "email"),
                                  Link("testapp", "a\nb", None, "email"),
                                  Link("testapp", "alice", "has space", "email"),
                                  Link("testapp", "alice", "*", "email"),
                                  Link("testapp", "alice", None, "in_app"),
                                  Link("testapp", "alice", None, "webhook")])
def test_only_links_a_route_would_take_are_issued(link):
    with pytest.raises(ValueError):
        issue(SECRET, link)


def test_another_install_or_a_changed_byte_is_refused():
    token = issue(SECRET, LINK)
    with pytest.raises(BadLink) as exc:
        verify(link_secret(b"q" * 32), token)
    assert exc.value.reason == "forged"
    for i, c in enumerate(token):
        if c == ".":
            continue
        for other in {"A", "b", "_"} - {c}:
            changed = token[:i] + other + token[i + 1:]
            with pytest.raises(BadLink):
                verify(SECRET, changed)


def test_another_apps_name_in_a_valid_links_place_is_refused():
    """The MAC covers the app: a link of app B with app A written into it
    (the user and the MAC kept) names nobody."""
    token = issue(SECRET, Link("other", "alice", "social", "email"))
    _, mac = token.split(".")
    swapped = _b64(msgspec.json.encode(["testapp", "alice", "social", "email"]))
    with pytest.raises(BadLink) as exc:
        verify(SECRET, f"{swapped}.{mac}")
    assert exc.value.reason == "forged"


def test_truncated_and_malformed_tokens_say_so():
    token = issue(SECRET, LINK)
    payload, mac = token.split(".")
    cases = {
        token[:-1]: "truncated", token[:-5]: "truncated", f"{payload}.": "truncated",
        payload: "malformed", "": "malformed", ".": "malformed", f"{token}.x": "malformed",
        f"{payload}.{mac}AAAA": "malformed", token + "\n": "malformed",
        f"{payload}+.{mac}": "malformed", "é" + token: "malformed",
        "A" * (unsubscribe.MAX_TOKEN + 1): "malformed",
    }
    for bad, reason in cases.items():
        with pytest.raises(BadLink) as exc:
            verify(SECRET, bad)
        assert exc.value.reason == reason, (bad, exc.value.reason)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.from_regex(r"\A[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,30}\Z")))
def test_any_string_is_a_link_or_a_bad_link(text):
    try:
        verify(SECRET, text)
    except BadLink:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_a_signed_payload_that_is_not_a_link_is_a_bad_link(raw):
    """Even a payload signed with the key (which only a bug would make) is
    decoded and checked, never trusted as is."""
    payload = _b64(raw)
    mac = _b64(unsubscribe._mac(SECRET, payload))
    try:
        link = verify(SECRET, f"{payload}.{mac}")
    except BadLink:
        return
    assert msgspec.json.decode(raw) == [link.app, link.user, link.category, link.channel]


# -- the change to preferences ----------------------------------------------------------


def test_one_category_off_keeps_everything_else():
    prefs = Preferences(categories={"social": ChannelPrefs(push=False),
                                    "billing": ChannelPrefs()},
                        quiet_hours=QuietHours("22:00", "07:00", "Europe/Paris"))
    out = switch_off(prefs, "social", "email")
    assert out == Preferences(categories={"social": ChannelPrefs(push=False, email=False),
                                          "billing": ChannelPrefs()},
                              quiet_hours=prefs.quiet_hours)
    assert switch_off(out, "social", "email") is None  # idempotent: nothing to write
    fresh = switch_off(Preferences(), "comments", "email")
    assert msgspec.json.encode(fresh) == b'{"categories":{"comments":{"email":false}}}'


def test_every_category_off_names_them_and_the_rest():
    prefs = Preferences(categories={"social": ChannelPrefs(in_app=False),
                                    "billing": ChannelPrefs(email=False)})
    out = switch_off(prefs, None, "email")
    assert out is not None
    assert out.categories == {"social": ChannelPrefs(in_app=False, email=False),
                              "billing": ChannelPrefs(email=False),
                              "*": ChannelPrefs(email=False)}
    assert switch_off(out, None, "email") is None
    # a category it did not name is off through "*": nothing more to write
    assert switch_off(out, "comments", "email") is None


def test_every_category_off_fits_beside_the_most_categories():
    prefs = Preferences(categories={f"c{i}": ChannelPrefs() for i in range(256)})
    out = switch_off(prefs, None, "email")
    assert out is not None and len(out.categories) == 257
    # what the store decodes again
    again = msgspec.json.decode(msgspec.json.encode(out), type=Preferences)
    assert again == out


def test_the_module_does_no_io():
    # read: nothing but the standard library, msgspec and the models
    source = open(os.path.join(os.path.dirname(unsubscribe.__file__), "unsubscribe.py")).read()
    imports = {line.split()[1] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "base64", "binascii", "hashlib", "hmac", "re", "msgspec",
                       "tidings.core.models"}, imports
