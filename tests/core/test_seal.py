"""The seal of the store's secrets, without a store (tidings/core/seal.py)."""

from __future__ import annotations

import pytest

from tidings.core.seal import PLAIN, PREFIX, Seal, SealError, new_key, parse_key


def test_a_sealed_value_opens_only_under_its_key_and_in_its_place():
    seal = Seal(parse_key(new_key()))
    one, two = seal.wrap("s3cret", "apps/a"), seal.wrap("s3cret", "apps/a")
    assert one.startswith(PREFIX) and "s3cret" not in one
    assert one != two  # a fresh nonce each time
    assert seal.unwrap(one, "apps/a") == seal.unwrap(two, "apps/a") == "s3cret"
    with pytest.raises(SealError, match="apps/b does not open .* moved from another row"):
        seal.unwrap(one, "apps/b")
    with pytest.raises(SealError, match="does not open"):
        Seal(parse_key(new_key())).unwrap(one, "apps/a")
    with pytest.raises(SealError, match="is sealed: give the store's key"):
        PLAIN.unwrap(one, "apps/a")
    with pytest.raises(SealError, match="not sealed in a sealed store"):
        seal.unwrap("s3cret", "apps/a")
    assert PLAIN.wrap("s3cret", "apps/a") == PLAIN.unwrap("s3cret", "apps/a") == "s3cret"
    assert seal.wrap(None, "apps/a") is None and seal.unwrap(None, "apps/a") is None


def test_the_key_check_tells_a_missing_a_wrong_and_an_unneeded_key():
    key = parse_key(new_key())
    seal = Seal(key)
    seal.expect(Seal(key).check)
    PLAIN.expect(None)
    with pytest.raises(SealError, match="wrong secret key"):
        Seal(parse_key(new_key())).expect(seal.check)
    with pytest.raises(SealError, match="sealed: give its key"):
        PLAIN.expect(seal.check)
    with pytest.raises(SealError, match="not sealed: run `tidings secrets seal`"):
        seal.expect(None)
    assert key.hex() not in (seal.check or "")


# 33 bytes, not base64url, 30 bytes
@pytest.mark.parametrize("text", ["", "short", "A" * 44, "!" * 43, "A" * 40])
def test_a_key_is_32_bytes_of_base64url(text):
    with pytest.raises(SealError, match="is not a secret key: 32 bytes in base64url"):
        parse_key(text)
    assert len(parse_key(new_key() + "\n")) == 32
