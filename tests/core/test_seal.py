"""The seal of the store's secrets, without a store (tidings/core/seal.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.core.seal import PLAIN, PREFIX, PREFIX_V1, Seal, SealError, new_key, parse_key


def test_a_sealed_value_opens_only_under_its_key_and_in_its_place():
    seal = Seal(parse_key(new_key()))
    one, two = seal.wrap("s3cret", "apps/a", "c"), seal.wrap("s3cret", "apps/a", "c")
    assert one.startswith(PREFIX) and "s3cret" not in one
    assert one != two  # a fresh nonce each time
    assert seal.unwrap(one, "apps/a", "c") == seal.unwrap(two, "apps/a", "c") == "s3cret"
    with pytest.raises(SealError, match=r"apps/b \(c\) does not open .* moved from another row"):
        seal.unwrap(one, "apps/b", "c")
    with pytest.raises(SealError, match="does not open"):
        Seal(parse_key(new_key())).unwrap(one, "apps/a", "c")
    with pytest.raises(SealError, match="is sealed: give the store's key"):
        PLAIN.unwrap(one, "apps/a", "c")
    with pytest.raises(SealError, match="not sealed in a sealed store"):
        seal.unwrap("s3cret", "apps/a", "c")
    assert PLAIN.wrap("s3cret", "apps/a", "c") == PLAIN.unwrap("s3cret", "apps/a", "c") \
        == "s3cret"
    assert seal.wrap(None, "apps/a", "c") is None and seal.unwrap(None, "apps/a", "c") is None


def test_a_sealed_value_does_not_open_in_the_other_column_of_its_row():
    seal = Seal(parse_key(new_key()))
    current = seal.wrap("new", "apps/a", "signing_secret")
    with pytest.raises(SealError, match=r"the sealed secret of apps/a \(previous_secret\) "
                                        "does not open .* another row or column"):
        seal.unwrap(current, "apps/a", "previous_secret")
    moved = seal.moved(current, "apps/a", "signing_secret", "previous_secret")
    assert seal.unwrap(moved, "apps/a", "previous_secret") == "new"
    assert PLAIN.moved("x", "apps/a", "signing_secret", "previous_secret") == "x"


def _first_format(key: bytes, value: str, where: str) -> str:
    """A value as the first format sealed it: bound to its row only."""
    nonce = os.urandom(12)
    raw = nonce + AESGCM(key).encrypt(nonce, value.encode(), where.encode())
    return PREFIX_V1 + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_first_format_opens_only_in_a_store_whose_check_is_the_first():
    key = parse_key(new_key())
    old = _first_format(key, "s3cret", "apps/a")
    first_check = hmac.new(key, b"tidings secret key check v1", hashlib.sha256).hexdigest()
    seal = Seal(key)
    assert seal.knows(first_check) and seal.knows(seal.check)
    reader = seal.expect(first_check)
    assert reader.check == seal.check  # what a reseal writes is the current check
    assert reader.unwrap(old, "apps/a", "signing_secret") == "s3cret"
    assert reader.unwrap(old, "apps/a", "previous_secret") == "s3cret"  # the gap it leaves
    with pytest.raises(SealError, match="apps/b .* does not open"):
        reader.unwrap(old, "apps/b", "signing_secret")
    # a store resealed in the current format takes no first-format value back
    with pytest.raises(SealError, match=r"apps/a \(signing_secret\) is in the first format"):
        seal.expect(seal.check).unwrap(old, "apps/a", "signing_secret")
    with pytest.raises(SealError, match="wrong secret key"):
        Seal(parse_key(new_key())).expect(first_check)
    with pytest.raises(SealError, match="is sealed: give the store's key"):
        PLAIN.unwrap(old, "apps/a", "signing_secret")


# 33 bytes, not base64url, 30 bytes
@pytest.mark.parametrize("text", ["", "short", "A" * 44, "!" * 43, "A" * 40])
def test_a_key_is_32_bytes_of_base64url(text):
    with pytest.raises(SealError, match="is not a secret key: 32 bytes in base64url"):
        parse_key(text)
    assert len(parse_key(new_key() + "\n")) == 32
