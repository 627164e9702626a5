"""API keys and user tokens."""

from __future__ import annotations

import base64
import json
import re

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core import auth
from tidings.core.auth import (
    SCOPES,
    hash_api_key,
    mint_token,
    new_api_key,
    new_signing_secret,
    split_api_key,
    unverified_app,
    verify_token,
    verify_token_rotated,
)
from tidings.errors import Unauthorized

SECRET = "s" * 64
OTHER = "o" * 64
PREVIOUS = "p" * 64  # the secret a rotation replaced
NOW = 1_700_000_000.0


def _b64(obj) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _bad(token, secret=SECRET, code="bad_token"):
    with pytest.raises(Unauthorized) as ei:
        verify_token(token, secret)
    assert ei.value.code == code
    assert ei.value.status == 401
    return ei.value


# -- API keys ----------------------------------------------------------------


def test_new_api_key_shape():
    key, prefix = new_api_key()
    assert re.fullmatch(r"tk_[0-9a-f]{8}_[A-Za-z0-9_\-]{32}", key)
    assert split_api_key(key) == prefix
    assert key.startswith(f"tk_{prefix}_")


def test_new_api_keys_differ():
    keys = {new_api_key()[0] for _ in range(100)}
    assert len(keys) == 100


def test_split_keeps_underscores_in_the_secret():
    # token_urlsafe can produce "_" in the secret part.
    assert split_api_key("tk_abcdef01_se_cr_et") == "abcdef01"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "tk_",
        "tk_abcdef01",  # no secret part
        "tk_abcdef01_",  # empty secret
        "tk_abcdef0_secret",  # prefix too short
        "tk_abcdef012_secret",  # prefix too long
        "tk__secret",
        "tk_abcdefgh_secret",  # the prefix is hex
        "tk_ABCDEF01_secret",  # lowercase hex
        "tk_abcdef0\x00_secret",  # a NUL never reaches the store (PostgreSQL refuses it)
        "tk_abcdéf01_secret",
        "xk_abcdef01_secret",
        "TK_abcdef01_secret",
        "abcdef01_secret",
        "tk_abcdef01_" + "x" * 200,  # too long
        None,
        123,
        b"tk_abcdef01_secret",
    ],
)
def test_split_rejects_malformed(key):
    assert split_api_key(key) is None


def test_split_length_limit_is_128():
    ok = "tk_abcdef01_" + "x" * (128 - 12)
    assert len(ok) == 128
    assert split_api_key(ok) == "abcdef01"
    assert split_api_key(ok + "x") is None


def test_hash_is_hmac_sha256_hex():
    h = hash_api_key("tk_abcdef01_secret", b"pepper")
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == hash_api_key("tk_abcdef01_secret", b"pepper")  # deterministic


def test_hash_depends_on_pepper_and_key():
    key = "tk_abcdef01_secret"
    assert hash_api_key(key, b"pepper-1") != hash_api_key(key, b"pepper-2")
    assert hash_api_key(key, b"p") != hash_api_key(key + "x", b"p")
    # Not a plain (unkeyed) hash of the key.
    import hashlib

    assert hash_api_key(key, b"p") != hashlib.sha256(key.encode()).hexdigest()


@settings(max_examples=100)
@given(st.text(max_size=64), st.binary(min_size=1, max_size=32), st.binary(min_size=1, max_size=32))
def test_hash_peppers_separate(key, p1, p2):
    if p1 != p2:
        assert hash_api_key(key, p1) != hash_api_key(key, p2)


@settings(max_examples=200)
@given(st.text(max_size=160))
def test_split_never_raises(text):
    prefix = split_api_key(text)
    if prefix is not None:
        assert len(prefix) == 8
        assert text.startswith(f"tk_{prefix}_")
        assert len(text) > 12 and len(text) <= 128


def test_signing_secret_is_long_and_random():
    a, b = new_signing_secret(), new_signing_secret()
    assert a != b
    assert len(a) >= 40


def test_scopes():
    assert SCOPES == {"publish", "read", "admin"}


# -- tokens ------------------------------------------------------------------


def test_mint_verify_round_trip():
    tok = mint_token("app1", "alice", SECRET, ttl=3600)
    app, user, exp, iat, jti = verify_token(tok, SECRET)
    assert (app, user) == ("app1", "alice")
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert (exp, iat, jti) == (claims["exp"], claims["iat"], claims["jti"])
    assert claims["exp"] - claims["iat"] == 3600


def test_every_minted_token_carries_a_random_jti_the_fast_path_reads():
    """A jti of 96 random bits (16 URL-safe characters), another each time;
    the fast path takes the shape and reads it as PyJWT does, and a token
    without one has None."""
    tokens = [mint_token("app1", "alice", SECRET, ttl=60, now=NOW) for _ in range(50)]
    jtis = [jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens]
    assert len(set(jtis)) == 50
    assert all(len(j) == 16 and auth.valid_jti(j) for j in jtis)
    tok = mint_token("app1", "alice", SECRET, ttl=60)
    assert auth._fast_claims(tok, SECRET, time_now()) is not None
    assert verify_token(tok, SECRET)[4] == _pyjwt_outcome(tok, SECRET)[4]
    assert verify_token(mint_token("app1", "alice", SECRET, ttl=60, jti="j-1"), SECRET)[4] \
        == "j-1"
    base = {"sub": "alice", "app": "app1", "exp": int(time_now()) + 60}
    assert verify_token(jwt.encode(base, SECRET, algorithm="HS256"), SECRET)[4] is None
    # a jti that is not a string: PyJWT refuses it, and so does the fast path
    _bad(jwt.encode({**base, "jti": 5}, SECRET, algorithm="HS256"))


def test_revocable_reads_an_expired_token_of_either_secret():
    """What a revocation of one token reads: (app, user, exp, jti) of a token
    signed with one of the secrets, expired or not; anything else is bad."""
    old = mint_token("app1", "alice", PREVIOUS, ttl=60, now=NOW, jti="j1")
    assert auth.revocable(old, (SECRET, PREVIOUS)) == ("app1", "alice", int(NOW) + 60, "j1")
    for bad in (old, "junk", "x" * 5000, mint_token("app1", "alice", OTHER, ttl=60)):
        with pytest.raises(Unauthorized):
            auth.revocable(bad, (SECRET,))
    odd = jwt.encode({"sub": "alice", "app": "app1", "exp": "soon"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized):
        auth.revocable(odd, (SECRET,))


def test_signed_by_tells_the_secret_that_signed_a_token():
    tok = mint_token("app1", "alice", PREVIOUS, ttl=60, now=NOW)
    assert auth.signed_by(tok, PREVIOUS)
    assert not auth.signed_by(tok, SECRET)
    assert not auth.signed_by("a.b", PREVIOUS) and not auth.signed_by("a.b.c", PREVIOUS)


def test_iat_is_read_as_pyjwt_checked_it_and_none_without_one():
    """The fast path's iat, PyJWT's (a float, a numeric string: int() of it,
    as PyJWT checks it) and a token without one."""
    now = int(time_now())
    base = {"sub": "alice", "app": "app1", "exp": now + 60}
    assert verify_token(jwt.encode(base, SECRET, algorithm="HS256"), SECRET)[3] is None
    for iat, read in ((now - 5, now - 5), (now - 5.9, now - 6), (str(now - 7), now - 7)):
        token = jwt.encode({**base, "iat": iat}, SECRET, algorithm="HS256")
        assert verify_token(token, SECRET) == ("app1", "alice", now + 60, read, None), iat


def test_mint_uses_injected_clock_and_hs256():
    tok = mint_token("app1", "bob", SECRET, ttl=60, now=NOW, jti="j")
    header = jwt.get_unverified_header(tok)
    assert header["alg"] == "HS256"
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert claims == {"sub": "bob", "app": "app1", "iat": int(NOW), "exp": int(NOW) + 60,
                      "jti": "j"}


def test_unicode_user_round_trip():
    tok = mint_token("app1", "ユーザー@example", SECRET, ttl=60)
    assert verify_token(tok, SECRET)[1] == "ユーザー@example"


def test_expired_token():
    tok = mint_token("app1", "alice", SECRET, ttl=60, now=NOW)
    _bad(tok, code="token_expired")


def test_expired_check_happens_before_app_check():
    tok = jwt.encode({"sub": "alice", "exp": int(NOW)}, SECRET, algorithm="HS256")
    _bad(tok, code="token_expired")


def test_wrong_secret():
    tok = mint_token("app1", "alice", OTHER, ttl=3600)
    _bad(tok)


def test_tampered_payload():
    tok = mint_token("app1", "alice", SECRET, ttl=3600)
    h, _, s = tok.split(".")
    claims = jwt.decode(tok, options={"verify_signature": False})
    claims["sub"] = "mallory"
    _bad(f"{h}.{_b64(claims)}.{s}")


def test_alg_none_refused():
    import time

    now = int(time.time())
    payload = {"sub": "alice", "app": "app1", "iat": now, "exp": now + 3600}
    for alg in ("none", "None", "NONE"):
        tok = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(payload)}."
        _bad(tok)
    # The crafted token is otherwise well-formed: the app is readable unverified.
    assert unverified_app(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}.") == "app1"


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_refused(alg):
    import time

    payload = {"sub": "alice", "app": "app1", "exp": int(time.time()) + 3600}
    tok = jwt.encode(payload, SECRET, algorithm=alg)
    # Sanity: the token is valid for its own algorithm with the right secret.
    assert jwt.decode(tok, SECRET, algorithms=[alg])["sub"] == "alice"
    _bad(tok)


def test_token_without_exp_refused():
    tok = jwt.encode({"sub": "alice", "app": "app1"}, SECRET, algorithm="HS256")
    _bad(tok)


def test_token_without_sub_refused():
    import time

    tok = jwt.encode({"app": "app1", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    _bad(tok)


def test_token_without_app_refused():
    import time

    tok = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    _bad(tok)


@pytest.mark.parametrize(
    "claims", [{"app": 5}, {"app": ["x"]}, {"sub": "bad\nuser"}, {"sub": "x" * 129}]
)
def test_token_with_bad_claims_refused(claims):
    import time

    payload = {"sub": "alice", "app": "app1", "exp": int(time.time()) + 60}
    payload.update(claims)
    tok = jwt.encode(payload, SECRET, algorithm="HS256")
    _bad(tok)


def test_leeway_is_small():
    import time

    now = time.time()
    # Expired 2 seconds ago: within the 5 s leeway.
    tok = jwt.encode({"sub": "a", "app": "x", "exp": int(now) - 2}, SECRET, algorithm="HS256")
    assert verify_token(tok, SECRET)[0] == "x"
    # Expired a minute ago: refused.
    tok = jwt.encode({"sub": "a", "app": "x", "exp": int(now) - 60}, SECRET, algorithm="HS256")
    _bad(tok, code="token_expired")


@pytest.mark.parametrize("junk", ["", "a.b.c", "not a token", "x" * 5000, None, 12, b"abc"])
def test_junk_tokens_refused(junk):
    _bad(junk)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_arbitrary_text_never_verifies(text):
    with pytest.raises(Unauthorized) as ei:
        verify_token(text, SECRET)
    assert ei.value.code in {"bad_token", "token_expired"}
    assert unverified_app(text) is None or isinstance(unverified_app(text), str)


def test_unverified_app():
    tok = mint_token("app-42", "alice", OTHER, ttl=60)
    assert unverified_app(tok) == "app-42"  # no secret needed
    assert unverified_app("junk") is None
    assert unverified_app(None) is None  # type: ignore[arg-type]
    assert unverified_app("x" * 5000) is None
    assert unverified_app(jwt.encode({"app": 7}, SECRET, algorithm="HS256")) is None
    assert unverified_app(jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")) is None


def test_algorithm_constant_is_hs256():
    assert auth.ALGORITHM == "HS256"


# -- the fast path: the same decisions as PyJWT -------------------------------

_CLAIM_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False, width=32),
    st.text(max_size=8), st.lists(st.integers(), max_size=2),
)


def _outcome(token, secret):
    try:
        return verify_token(token, secret)
    except Unauthorized as exc:
        return exc.code, exc.message


def _pyjwt_outcome(token, secret):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(auth, "_fast_claims", lambda *a: None)
        return _outcome(token, secret)


_CHANGES = ("claim", "claim", "extra", "header", "alg", "secret", "pad", "bits", "dup",
            "sig", "text")


@st.composite
def _tokens(draw):
    """A token as tidings mints it, with none, one or two changes, each of
    which may or may not leave it acceptable."""
    import time

    now = int(time.time())
    claims: dict = {"sub": "alice", "app": "app1", "iat": now, "exp": now + 60,
                    "jti": "Qm9_xY-1abcdefgh"}
    headers, alg, secret = None, "HS256", SECRET
    changes = draw(st.lists(st.sampled_from(_CHANGES), max_size=2))
    for change in changes:
        if change == "claim":  # another value, or none, for one of the five
            name = draw(st.sampled_from(["sub", "app", "iat", "exp", "jti"]))
            value = draw(st.one_of(
                st.just(None), _CLAIM_VALUES,
                st.sampled_from([now - 3, now - 5, now - 6, now - 60, now + 4, now + 6,
                                 "bad\nuser", "", "x" * 129])))
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        elif change == "extra":
            name = draw(st.sampled_from(["nbf", "aud", "jti", "iss", "x"]))
            near = st.integers(-10, 10).map(lambda d: now + d)
            claims[name] = draw(st.text(max_size=4) if name == "iss" else
                                st.one_of(near, st.text(max_size=4)))
        elif change == "header":
            headers = draw(st.sampled_from([{"kid": "1"}, {"typ": "jwt"}, {"typ": "JWT"}]))
        elif change == "alg":
            alg = draw(st.sampled_from(["HS384", "HS512"]))
        elif change == "secret":
            secret = draw(st.sampled_from([OTHER, PREVIOUS]))
    if "text" in changes:
        return draw(st.text(max_size=120))
    token = jwt.encode(claims, secret, algorithm=alg, headers=headers)
    h, p, s = token.split(".")
    if "pad" in changes:
        p += "=" * (-len(p) % 4 or 4)
        s = _sign(h, p, secret)
    if "bits" in changes and len(p) % 4 in (2, 3) and p[-1] not in "_-9zZ":
        p = p[:-1] + chr(ord(p[-1]) + 1)  # the same bytes, non-zero trailing bits
        s = _sign(h, p, secret)
    if "dup" in changes:  # a claim twice: the JSON decoders must agree on which wins
        raw = json.dumps(claims, separators=(",", ":"))[:-1]
        raw += (',' if claims else '') + '"sub":"mallory"}'
        p = base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()
        s = _sign(h, p, secret)
    if "sig" in changes:
        s = s[:-2] + ("AA" if not s.endswith("AA") else "BB")
    return f"{h}.{p}.{s}"


def _sign(header: str, payload: str, secret: str) -> str:
    import hashlib
    import hmac

    mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@settings(max_examples=1000, deadline=None)
@given(_tokens())
def test_fast_path_decides_like_pyjwt(token):
    assert _outcome(token, SECRET) == _pyjwt_outcome(token, SECRET)


def _rotated_outcome(token, previous):
    try:
        return verify_token_rotated(token, SECRET, previous)
    except Unauthorized as exc:
        return exc.code, exc.message


@settings(max_examples=1000, deadline=None)
@given(_tokens(), st.sampled_from([PREVIOUS, None]))
def test_fast_path_decides_like_pyjwt_with_both_secrets(token, previous):
    """After a rotation: the current secret and, while the overlap lasts, the
    previous one, each decided alike by the fast path and PyJWT."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(auth, "_fast_claims", lambda *a: None)
        by_pyjwt = _rotated_outcome(token, previous)
    assert _rotated_outcome(token, previous) == by_pyjwt


def test_a_token_of_the_previous_secret_verifies_only_while_it_is_given():
    now = int(time_now())
    old = mint_token("app1", "alice", PREVIOUS, ttl=60, now=now, jti="o")
    new = mint_token("app1", "alice", SECRET, ttl=60, now=now, jti="n")
    assert verify_token_rotated(new, SECRET, PREVIOUS) == ("app1", "alice", now + 60, now,
                                                          "n", False)
    assert verify_token_rotated(old, SECRET, PREVIOUS) == ("app1", "alice", now + 60, now,
                                                          "o", True)
    _bad(old, secret=SECRET)  # the overlap is over: no previous secret
    with pytest.raises(Unauthorized) as err:
        verify_token_rotated(old, SECRET, None)
    assert err.value.code == "bad_token"
    forged = mint_token("app1", "alice", OTHER, ttl=60, now=now)
    with pytest.raises(Unauthorized) as err:  # neither: the current secret's answer
        verify_token_rotated(forged, SECRET, PREVIOUS)
    assert (err.value.code, err.value.message) == ("bad_token", "token is not valid")
    expired = mint_token("app1", "alice", PREVIOUS, ttl=60, now=now - 3600)
    with pytest.raises(Unauthorized) as err:
        verify_token_rotated(expired, SECRET, PREVIOUS)
    assert err.value.code == "token_expired"


def test_fast_path_takes_the_minted_shape():
    tok = mint_token("app1", "alice", SECRET, ttl=60)
    claims = auth._fast_claims(tok, SECRET, time_now())
    assert claims is not None and claims["sub"] == "alice"
    # a header with anything more goes to PyJWT, which still accepts it
    other = jwt.encode({"sub": "alice", "app": "app1", "exp": int(time_now()) + 60}, SECRET,
                       algorithm="HS256", headers={"kid": "k1"})
    assert auth._fast_claims(other, SECRET, time_now()) is None
    assert verify_token(other, SECRET)[:2] == ("app1", "alice")


def test_fast_path_refuses_a_secret_pyjwt_refuses():
    pem = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
           "-----END PUBLIC KEY-----")
    claims = {"sub": "alice", "app": "app1", "exp": int(time_now()) + 60}
    token = f"{auth._HEADER}.{_b64(claims)}.{_sign(auth._HEADER, _b64(claims), pem)}"
    assert auth._fast_claims(token, pem, time_now()) is None
    _bad(token, secret=pem)


def time_now() -> float:
    import time

    return time.time()


def test_fast_path_expiry_edge_is_pyjwts():
    # PyJWT: expired when exp <= now - leeway
    tok = jwt.encode({"sub": "a", "app": "x", "exp": 1000}, SECRET, algorithm="HS256")
    assert auth._fast_claims(tok, SECRET, 1000.0 + auth.LEEWAY - 0.01)["exp"] == 1000
    with pytest.raises(Unauthorized) as ei:
        auth._fast_claims(tok, SECRET, 1000.0 + auth.LEEWAY)
    assert ei.value.code == "token_expired"
