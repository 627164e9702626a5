"""Secrets at rest, sealed under the operator's key (docs/security.md#sealed-secrets).

The store holds secrets it must be able to use: the pepper (the root of the
API-key hashes, the dashboard's session key and the unsubscribe links' key),
the apps' signing secrets and the webhook endpoints' secrets.  A copy of the
database would hand them all over.  Sealed, each one is stored as
``sealed1:<base64url(nonce || AES-256-GCM ciphertext and tag)>`` under a key
the database does not hold (``TIDINGS_SECRET_KEY``), with:

* a fresh 96-bit nonce per value (NIST SP 800-38D §8.2.2: random nonces are
  safe far beyond the few thousand values a store seals under one key);
* the value's place and column (``apps/<id>#signing_secret``,
  ``webhooks/<app>/<id>#previous_secret``, ``meta/pepper#value``) as
  associated data, so a sealed value copied into another row, or into the
  other column of its row (the previous secret swapped with the current),
  does not open there;
* the versioned text prefix, so sealed and plain values are told apart, and
  a later format can come beside this one.

The first format, ``sealed1:``, bound the row only: it is still read in a
store whose key check is the first one (``_CHECK_V1``), and ``tidings secrets
rekey`` rewrites every value in the current format and the current check,
after which a ``sealed1:`` value is refused like a moved one.

A sealed store also keeps a key check, an HMAC-SHA256 of a constant under the
key, so a wrong key is refused at start rather than at the first secret.
Pure logic: no I/O; the stores apply it (tidings/store/sealed.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["PLAIN", "PREFIX", "PREFIX_V1", "Seal", "SealError", "new_key", "parse_key"]

PREFIX = "sealed2:"  # bound to the value's row and column
PREFIX_V1 = "sealed1:"  # bound to its row only; read, never written
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, GCM's native nonce size
_CHECK_V1 = b"tidings secret key check v1"  # a store that may hold sealed1 values
_CHECK = b"tidings secret key check v2"  # every value is sealed2
KEY_HELP = "TIDINGS_SECRET_KEY or TIDINGS_SECRET_KEY_FILE"


class SealError(ValueError):
    """The store's secrets and the key given do not go together."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> str:
    """A new operator key: 32 random bytes, base64url without padding."""
    return _b64(os.urandom(KEY_BYTES))


def parse_key(text: str, source: str = "TIDINGS_SECRET_KEY") -> bytes:
    """The 32 bytes of a key as ``tidings secrets keygen`` prints it."""
    try:
        raw = _unb64(text.strip())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise SealError(f"{source} is not a secret key: 32 bytes in base64url "
                        "(`tidings secrets keygen` makes one)")
    return raw


def _check(key: bytes, label: bytes) -> str:
    return hmac.new(key, label, hashlib.sha256).hexdigest()


class Seal:
    """Seals and opens a store's secrets under one key, or none (``PLAIN``).

    ``check`` is what the store keeps to know its key: None for a plain store.
    A seal reads ``sealed1:`` values only once ``expect`` has found the first
    key check, the mark of a store sealed before the current format.
    """

    __slots__ = ("_aead", "_key", "check", "old")

    def __init__(self, key: bytes | None = None, old: bool = False):
        self._key = key
        self._aead = AESGCM(key) if key is not None else None
        self.check = _check(key, _CHECK) if key is not None else None
        self.old = old and key is not None

    @property
    def sealed(self) -> bool:
        return self._aead is not None

    @overload
    def wrap(self, value: str, where: str, column: str) -> str: ...
    @overload
    def wrap(self, value: None, where: str, column: str) -> None: ...

    def wrap(self, value: str | None, where: str, column: str) -> str | None:
        """``value`` as the store keeps it in ``column`` of the row ``where``:
        sealed under the key, if any."""
        if value is None or self._aead is None:
            return value
        nonce = os.urandom(NONCE_BYTES)
        ad = f"{where}#{column}".encode()
        return PREFIX + _b64(nonce + self._aead.encrypt(nonce, value.encode(), ad))

    @overload
    def unwrap(self, value: str, where: str, column: str) -> str: ...
    @overload
    def unwrap(self, value: str | None, where: str, column: str) -> str | None: ...

    def unwrap(self, value: str | None, where: str, column: str) -> str | None:
        """The secret the store keeps in ``column`` of the row ``where``.  A
        sealed value needs the key; a plain value in a sealed store is refused
        too, since only a hand or a node without the key could have put it
        there."""
        if value is None:
            return None
        what = f"{where} ({column})"
        prefix, ad = PREFIX, f"{where}#{column}"
        if value.startswith(PREFIX_V1):
            if self._aead is not None and not self.old:
                raise SealError(f"the sealed secret of {what} is in the first format in a "
                                "store resealed since (put back by hand, or from a backup)")
            prefix, ad = PREFIX_V1, where
        elif not value.startswith(PREFIX):
            if self._aead is not None:
                raise SealError(f"the secret of {what} is not sealed in a sealed store "
                                "(written by a node without the key, or by hand)")
            return value
        if self._aead is None:
            raise SealError(f"the secret of {what} is sealed: give the store's key ({KEY_HELP})")
        try:
            raw = _unb64(value[len(prefix):])
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], ad.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(f"the sealed secret of {what} does not open under this key here: "
                            "a wrong key, or a value moved from another row or column") from None
        return plain.decode()

    def moved(self, value: str | None, where: str, before: str, after: str) -> str | None:
        """The value kept in ``before`` of the row ``where``, as kept in ``after``
        (a rotation's current secret becoming the previous one)."""
        return self.wrap(self.unwrap(value, where, before), where, after)

    def knows(self, check: str | None) -> bool:
        """Whether ``check`` is this key's, in either format."""
        return check is not None and self._key is not None and check in (
            self.check, _check(self._key, _CHECK_V1))

    def expect(self, check: str | None) -> Seal:
        """This seal for a store whose key check is ``check`` (None: plain),
        reading ``sealed1:`` values if the check is the first format's;
        a store sealed under another key, or not as this seal is, is refused."""
        if check == self.check:
            return self
        if self.knows(check):
            return Seal(self._key, old=True)
        if self.check is None:
            raise SealError(f"the store's secrets are sealed: give its key ({KEY_HELP})")
        if check is None:
            raise SealError("a secret key is given but the store's secrets are not sealed: "
                            "run `tidings secrets seal` first, or give no key")
        raise SealError("wrong secret key: the store's secrets are sealed under another")


PLAIN = Seal()
