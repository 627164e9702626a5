"""Dashboard session cookies: signed, expiring, tamper-evident (no I/O)."""

from __future__ import annotations

import pytest

from tidings.dashboard.session import BadSession, issue, session_secret, verify

SECRET = session_secret(b"pepper")
NOW = 1_800_000_000


def test_round_trip():
    value = issue(SECRET, "acme", "0a1b2c3d", NOW, ttl=60)
    s = verify(SECRET, value, NOW + 59)
    assert (s.app, s.prefix, s.expires) == ("acme", "0a1b2c3d", NOW + 60)


def test_expired():
    value = issue(SECRET, "acme", "0a1b2c3d", NOW, ttl=60)
    with pytest.raises(BadSession) as exc:
        verify(SECRET, value, NOW + 60)
    assert exc.value.reason == "expired"


@pytest.mark.parametrize("change", [
    lambda v: v.replace("v1.acme.", "v1.other."),              # another app
    lambda v: v.replace(f".{NOW + 60}.", f".{NOW + 10**6}."),   # a longer life
    lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),          # the signature
])
def test_tampering_is_detected(change):
    value = change(issue(SECRET, "acme", "0a1b2c3d", NOW, ttl=60))
    with pytest.raises(BadSession) as exc:
        verify(SECRET, value, NOW)
    assert exc.value.reason == "forged"


def test_another_install_secret_is_refused():
    value = issue(session_secret(b"other pepper"), "acme", "0a1b2c3d", NOW, ttl=60)
    with pytest.raises(BadSession):
        verify(SECRET, value, NOW)


@pytest.mark.parametrize("value", [
    None, "", "v1", "v1.acme.0a1b2c3d.1", "v2.acme.0a1b2c3d.1.sig", "v1.ACME.0a1b2c3d.1.sig",
    "v1.acme.zz.1.sig", "v1.acme.0a1b2c3d.-1.sig", "v1.acme.0a1b2c3d.1.sig.extra",
    "v1.a\u00e9.0a1b2c3d.1.sig", "v1." + "a" * 300 + ".0a1b2c3d.1.sig",
    "v1.acme.0a1b2c3d.99999999999999999999.sig",
])
def test_malformed_values(value):
    with pytest.raises(BadSession) as exc:
        verify(SECRET, value, NOW)
    assert exc.value.reason in ("missing", "malformed")
