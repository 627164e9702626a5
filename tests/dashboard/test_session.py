"""Dashboard session cookies: signed, expiring, tamper-evident (no I/O)."""

from __future__ import annotations

import pytest

from tidings.dashboard.session import BadSession, _sign, issue, session_secret, verify

SECRET = session_secret(b"pepper")
NOW = 1_800_000_000


def test_round_trip():
    value = issue(SECRET, "acme", "0a1b2c3d", NOW, ttl=60)
    s = verify(SECRET, value, NOW + 59)
    assert (s.app, s.prefix, s.expires) == ("acme", "0a1b2c3d", NOW + 60)
    assert len(s.id) == 22 and s.id in value


def test_every_session_has_an_id_of_its_own():
    ids = {verify(SECRET, issue(SECRET, "acme", "0a1b2c3d", NOW), NOW).id for _ in range(100)}
    assert len(ids) == 100
    given = verify(SECRET, issue(SECRET, "acme", "0a1b2c3d", NOW, session_id="A" * 22), NOW)
    assert given.id == "A" * 22


def test_a_v1_cookie_is_refused():
    """Cookies from before sessions had an id (which no logout could end)."""
    payload = f"v1.acme.0a1b2c3d.{NOW + 60}"
    with pytest.raises(BadSession) as exc:
        verify(SECRET, f"{payload}.{_sign(SECRET, payload)}", NOW)
    assert exc.value.reason == "malformed"


def test_expired():
    value = issue(SECRET, "acme", "0a1b2c3d", NOW, ttl=60)
    with pytest.raises(BadSession) as exc:
        verify(SECRET, value, NOW + 60)
    assert exc.value.reason == "expired"


@pytest.mark.parametrize("change", [
    lambda v: v.replace("v2.acme.", "v2.other."),              # another app
    lambda v: v.replace(f".{NOW + 60}.", f".{NOW + 10**6}."),   # a longer life
    lambda v: v.replace(".Session_id_of_22_chars.", ".Another_id_of_22_chars."),  # another id
    lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),          # the signature
])
def test_tampering_is_detected(change):
    value = change(issue(SECRET, "acme", "0a1b2c3d", NOW, ttl=60,
                         session_id="Session_id_of_22_chars"))
    with pytest.raises(BadSession) as exc:
        verify(SECRET, value, NOW)
    assert exc.value.reason == "forged"


def test_another_install_secret_is_refused():
    value = issue(session_secret(b"other pepper"), "acme", "0a1b2c3d", NOW, ttl=60)
    with pytest.raises(BadSession):
        verify(SECRET, value, NOW)


SID = "Session_id_of_22_chars"


@pytest.mark.parametrize("value", [
    None, "", "v2", "v2.acme.0a1b2c3d.1", "v2.acme.0a1b2c3d.1.sig", "v1.acme.0a1b2c3d.1.sig",
    f"v3.acme.0a1b2c3d.1.{SID}.sig", f"v2.ACME.0a1b2c3d.1.{SID}.sig",
    f"v2.acme.zz.1.{SID}.sig", f"v2.acme.0a1b2c3d.-1.{SID}.sig",
    f"v2.acme.0a1b2c3d.1.{SID}.sig.extra", f"v2.a\u00e9.0a1b2c3d.1.{SID}.sig",
    f"v2.{'a' * 300}.0a1b2c3d.1.{SID}.sig", f"v2.acme.0a1b2c3d.99999999999999999999.{SID}.sig",
    "v2.acme.0a1b2c3d.1.short.sig", "v2.acme.0a1b2c3d.1.no+slash/in_an_id==.sig",
    f"v2.acme.0a1b2c3d.1.{'x' * 44}.sig",
])
def test_malformed_values(value):
    with pytest.raises(BadSession) as exc:
        verify(SECRET, value, NOW)
    assert exc.value.reason in ("missing", "malformed")
