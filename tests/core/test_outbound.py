"""The outbound registration rules (tidings/core/outbound.py), without I/O."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.outbound import (
    Caps,
    check_email,
    check_name,
    redact_destination,
    subscription_id,
)


@pytest.mark.parametrize("address", [
    "alice@example.com", "a.b+tag@mail.example.co.uk", "x@xn--bcher-kva.example",
    "user@bücher.example", "o'brien@example.ie", "a" * 64 + "@example.com",
])
def test_usable_addresses(address):
    assert check_email(address) == address


@pytest.mark.parametrize("address", [
    "", "plain", "a@b", "@example.com", "a@", "a@@example.com", "a@b@example.com",
    "a b@example.com", "a@exa mple.com", "a\n@example.com", "a@example.com\r\nBcc: x@y.z",
    ".a@example.com", "a.@example.com", "a..b@example.com", "a@-x.com", "a@x-.com",
    "a@example..com", "josé@example.com", "a" * 65 + "@example.com",
    "a@" + "b" * 64 + ".com", "a@" + ("b" * 60 + ".") * 5 + "com",
])
def test_unusable_addresses(address):
    with pytest.raises(ValueError):
        check_email(address)


@given(st.text(max_size=300))
def test_check_email_never_fails_other_than_with_valueerror(text):
    try:
        check_email(text)
    except ValueError:
        return
    # Whatever passes has no way to start a new SMTP or header line.
    assert "\r" not in text and "\n" not in text and text.count("@") == 1


def test_names_refuse_control_characters():
    assert check_name("Alice Liddell") == "Alice Liddell"
    for bad in ("A\nB", "A\rB", "A\x00", "\x7f"):
        with pytest.raises(ValueError):
            check_name(bad)


def test_subscription_ids_follow_the_endpoint():
    a = subscription_id("https://push.example/abc")
    assert a == subscription_id("https://push.example/abc")
    assert a != subscription_id("https://push.example/abd")
    assert len(a) == 16 and a.replace("-", "").replace("_", "").isalnum()


def test_push_destinations_are_redacted_for_listing():
    dest = {"endpoint": "https://fcm.googleapis.com/fcm/send/SECRET-TOKEN",
            "keys": {"p256dh": "k", "auth": "a"}, "subscription": "sid"}
    assert redact_destination("push", dest) == {
        "push_service": "https://fcm.googleapis.com", "subscription": "sid"}
    assert redact_destination("email", {"to": "a@b.c"}) == {"to": "a@b.c"}


def test_caps_validate_their_ranges():
    ok = msgspec.json.decode(b'{"categories":{"social":{"per":3600,"max":10}}}', type=Caps)
    assert ok.categories["social"].max == 10
    for bad in (b'{"categories":{"social":{"per":0,"max":1}}}',
                b'{"categories":{"social":{"per":1,"max":0}}}',
                b'{"categories":{"so cial":{"per":1,"max":1}}}',
                b'{"categories":{"social":{"per":2592001,"max":1}}}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=Caps)
