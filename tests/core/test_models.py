"""Wire models: shapes and validation rules."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidings.core.models import (
    BatchRequest,
    Notification,
    PatchRequest,
    Preferences,
    PublishRequest,
    QuietHours,
    StateRequest,
    SubscribersRequest,
    Target,
    TokenRequest,
    valid_topic,
    valid_user,
)

enc = msgspec.json.encode


def dec(obj, type_):
    raw = obj if isinstance(obj, bytes) else enc(obj)
    return msgspec.json.decode(raw, type=type_)


def pub(**kw):
    body = {"to": {"users": ["alice"]}}
    body.update(kw)
    return dec(body, PublishRequest)


def rejects(obj, type_=PublishRequest):
    with pytest.raises(msgspec.ValidationError) as ei:
        dec(obj, type_)
    return str(ei.value)


# -- PublishRequest ----------------------------------------------------------


def test_minimal_publish_defaults():
    r = pub()
    assert r.to == Target(users=["alice"])
    assert r.category == "default"
    assert r.title == r.body == r.url == ""
    assert r.data == {}
    assert r.priority == "normal"
    assert r.tags == []
    assert r.group_key is None and r.actor is None and r.deliver_at is None and r.ttl is None


def test_full_publish():
    r = pub(
        category="billing.invoice", title="Invoice", body="Paid", url="https://x/1",
        data={"amount": 5, "nested": {"a": [1]}}, priority="urgent", tags=["a", "b"],
        group_key="inv", actor="system", deliver_at="2030-01-02T03:04:05Z", ttl=60,
    )
    assert r.priority == "urgent"
    assert r.deliver_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert r.data["nested"] == {"a": [1]}
    assert r.ttl == 60


def test_publish_targets():
    assert pub(to={"topic": "news:eu"}).to.topic == "news:eu"
    assert pub(to={"all": True}).to.all is True
    assert pub(to={"users": ["a", "b"]}).to.users == ["a", "b"]


def test_omit_defaults_on_encode():
    assert msgspec.json.decode(enc(pub())) == {"to": {"users": ["alice"]}}


def test_missing_to_rejected():
    assert "to" in rejects({"title": "x"})


@pytest.mark.parametrize(
    "extra",
    [{"tittle": "typo"}, {"to": {"users": ["a"], "group": "x"}}, {"id": "x"}],
)
def test_unknown_fields_rejected(extra):
    body = {"to": {"users": ["alice"]}}
    body.update(extra)
    rejects(body)


@pytest.mark.parametrize(
    "field,value",
    [
        ("title", 5),
        ("body", ["x"]),
        ("url", None),
        ("data", [1, 2]),
        ("data", "x"),
        ("priority", 1),
        ("tags", "a,b"),
        ("tags", [1]),
        ("ttl", "60"),
        ("ttl", 1.5),
        ("deliver_at", "tomorrow"),
        ("category", 3),
        ("to", ["alice"]),
    ],
)
def test_wrong_types_rejected(field, value):
    rejects({"to": {"users": ["alice"]}, field: value})


@pytest.mark.parametrize("priority", ["", "Normal", "critical", "HIGH", "low "])
def test_bad_priority_rejected(priority):
    rejects({"to": {"users": ["a"]}, "priority": priority})


@pytest.mark.parametrize("priority", ["low", "normal", "high", "urgent"])
def test_good_priorities(priority):
    assert pub(priority=priority).priority == priority


def test_title_length_limit():
    assert pub(title="x" * 1024).title == "x" * 1024
    rejects({"to": {"users": ["a"]}, "title": "x" * 1025})


def test_body_and_url_length_limits():
    url = "https://a.test/" + "u" * (2048 - 15)
    pub(body="x" * 8192, url=url)
    rejects({"to": {"users": ["a"]}, "body": "x" * 8193})
    rejects({"to": {"users": ["a"]}, "url": url + "u"})


@pytest.mark.parametrize("url", ["", "/p/42?a=1#c", "https://acme.test/p/42", "HTTP://a.test",
                                 "http://[::1]:8080/x"])
def test_a_url_is_a_path_or_http(url):
    assert pub(url=url).url == url


@pytest.mark.parametrize("url", ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,x",
                                 "file:///etc/passwd", "vbscript:x", "p/42", "https://",
                                 "https:///x", "ftp://a.test/x", "/p\n", "https://a.test/\x00"])
def test_other_urls_are_refused(url):
    rejects({"to": {"users": ["a"]}, "url": url})
    rejects({"url": url}, PatchRequest)


def test_tags_limits():
    pub(tags=["t" * 64] * 32)
    rejects({"to": {"users": ["a"]}, "tags": ["t"] * 33})
    rejects({"to": {"users": ["a"]}, "tags": ["t" * 65]})


def test_ttl_bounds():
    assert pub(ttl=1).ttl == 1
    assert pub(ttl=365 * 24 * 3600).ttl == 365 * 24 * 3600
    rejects({"to": {"users": ["a"]}, "ttl": 0})
    rejects({"to": {"users": ["a"]}, "ttl": -5})
    rejects({"to": {"users": ["a"]}, "ttl": 365 * 24 * 3600 + 1})


def test_group_key_and_actor_limits():
    pub(group_key="g" * 256, actor="a" * 128)
    rejects({"to": {"users": ["a"]}, "group_key": "g" * 257})
    rejects({"to": {"users": ["a"]}, "actor": "a" * 129})


@pytest.mark.parametrize("category", ["", "has space", "a/b", "x" * 65, "ok\n", "é"])
def test_bad_category(category):
    rejects({"to": {"users": ["a"]}, "category": category})


def test_category_limit():
    assert pub(category="A-z_0.9:" + "x" * 56).category.startswith("A-z")


@pytest.mark.parametrize(
    "user",
    [
        "",
        "x" * 129,
        "a\x00b",
        "a\nb",
        "alice\n",  # trailing newline
        "\ttab",
        "del\x7f",
        "esc\x1b[0m",
    ],
)
def test_bad_user_ids(user):
    rejects({"to": {"users": [user]}})
    assert not valid_user(user)


@pytest.mark.parametrize(
    "user", ["a", "x" * 128, "alice@example.com", "user with spaces", "ユーザー", "🙂"]
)
def test_good_user_ids(user):
    assert pub(to={"users": [user]}).to.users == [user]
    assert valid_user(user)


def test_empty_users_list_rejected():
    rejects({"to": {"users": []}})


@pytest.mark.parametrize(
    "topic", ["", "has space", " lead", "trail ", "a/b", "x" * 129, "news\n", "ü"]
)
def test_bad_topics(topic):
    rejects({"to": {"topic": topic}})
    assert not valid_topic(topic)


@pytest.mark.parametrize("topic", ["news", "x" * 128, "org:1.team-2_a"])
def test_good_topics(topic):
    assert pub(to={"topic": topic}).to.topic == topic
    assert valid_topic(topic)


def test_valid_helpers_reject_non_strings():
    for v in (None, 5, b"alice", ["alice"]):
        assert not valid_user(v)  # type: ignore[arg-type]
        assert not valid_topic(v)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.text(max_size=140))
@example("alice\n")
@example("x" * 129)
def test_valid_user_matches_rule(text):
    expected = 1 <= len(text) <= 128 and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    assert valid_user(text) == expected
    try:
        dec({"to": {"users": [text]}}, PublishRequest)
        accepted = True
    except msgspec.ValidationError:
        accepted = False
    assert accepted == expected


TOPIC_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


@settings(max_examples=200)
@given(st.text(max_size=140) | st.text(alphabet="abZ09_.:- \n/", max_size=140))
@example("news\n")
def test_valid_topic_matches_rule(text):
    expected = 1 <= len(text) <= 128 and set(text) <= TOPIC_CHARS
    assert valid_topic(text) == expected


def test_non_json_rejected():
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(b"{not json", type=PublishRequest)


# -- other request bodies -------------------------------------------------------


def test_batch_request():
    r = dec({"notifications": [{"to": {"all": True}}, {"x": 1}]}, BatchRequest)
    assert len(r.notifications) == 2
    assert msgspec.json.decode(r.notifications[0], type=PublishRequest).to.all is True
    rejects({"notifications": []}, BatchRequest)
    rejects({"notifications": [], "extra": 1}, BatchRequest)


def test_patch_request():
    r = dec({"title": "new"}, PatchRequest)
    assert r.title == "new" and r.body is None and r.priority is None
    assert msgspec.json.decode(enc(r)) == {"title": "new"}
    rejects({"priority": "meh"}, PatchRequest)
    rejects({"to": {"all": True}}, PatchRequest)
    rejects({"title": "x" * 1025}, PatchRequest)


def test_state_request():
    assert dec({"ids": ["a"]}, StateRequest).ids == ["a"]
    assert dec({"all": True}, StateRequest).all is True
    assert dec({}, StateRequest).ids is None
    rejects({"ids": ["x" * 33]}, StateRequest)
    # capped by Limits.ids_max in the route, not by the model
    assert len(dec({"ids": ["a"] * 1001}, StateRequest).ids) == 1001
    rejects({"state": "read"}, StateRequest)


def test_preferences():
    p = dec(
        {
            "categories": {"billing": {"email": False}},
            "quiet_hours": {"start": "22:00", "end": "07:30"},
        },
        Preferences,
    )
    assert p.categories["billing"].email is False
    assert p.categories["billing"].in_app is True
    assert p.quiet_hours == QuietHours("22:00", "07:30", "UTC")
    rejects({"categories": {"bad key": {}}}, Preferences)
    rejects({"categories": {"billing": {"sms": True}}}, Preferences)


@pytest.mark.parametrize("t", ["24:00", "7:30", "12:60", "12:00\n", "1\u0663:00", "12:0", ""])
def test_quiet_hours_bad_times(t):
    rejects({"start": t, "end": "07:00"}, QuietHours)


@pytest.mark.parametrize("t", ["00:00", "09:59", "19:30", "23:59"])
def test_quiet_hours_good_times(t):
    assert dec({"start": t, "end": t}, QuietHours).start == t


def test_subscribers_request():
    r = dec({"users": ["a", "b"]}, SubscribersRequest)
    assert r.action == "add"
    assert dec({"users": ["a"], "action": "remove"}, SubscribersRequest).action == "remove"
    rejects({"users": []}, SubscribersRequest)
    rejects({"users": ["a"], "action": "delete"}, SubscribersRequest)
    rejects({"users": ["a\x00"]}, SubscribersRequest)


def test_token_request():
    assert dec({}, TokenRequest).ttl == 3600
    assert dec({"ttl": 1}, TokenRequest).ttl == 1
    rejects({"ttl": 0}, TokenRequest)
    rejects({"user": "a"}, TokenRequest)


def test_notification_round_trip():
    n = Notification(
        id="01ARZ3NDEKTSV4RRFFQ69G5FAV", category="c", created_at="2024-01-01T00:00:00Z"
    )
    raw = enc(n)
    assert msgspec.json.decode(raw) == {
        "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "category": "c", "created_at": "2024-01-01T00:00:00Z",
    }
    assert msgspec.json.decode(raw, type=Notification) == n
