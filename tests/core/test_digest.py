"""Digest rules (tidings/core/digest.py): which rule applies, when a window
closes (intervals, daily wall-clock times across DST, quiet hours), and
what a digest carries."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from tidings.core import digest
from tidings.core.models import DigestRule, Preferences, QuietHours

HOURLY = DigestRule(every=3600)
NINE_PARIS = DigestRule(daily="09:00", tz="Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_users_choice_wins_over_the_apps_default_and_empty_means_none():
    app = {"social": {"email": HOURLY, "push": HOURLY}}
    mine = Preferences(digests={"social": {"email": NINE_PARIS, "push": DigestRule()}})
    assert digest.rule_for(mine, app, "social", "email") == NINE_PARIS
    assert digest.rule_for(mine, app, "social", "push") is None  # {} overrides the default
    assert digest.rule_for(None, app, "social", "push") == HOURLY
    assert digest.rule_for(Preferences(), app, "social", "webhook") is None
    assert digest.rule_for(Preferences(), app, "billing", "email") is None
    assert digest.rule_for(None, {}, "social", "email") is None


def test_equal_rules_share_a_key_and_different_ones_do_not():
    assert digest.key(DigestRule(every=3600)) == digest.key(HOURLY) == "every:3600"
    assert digest.key(NINE_PARIS) == "daily:09:00@Europe/Paris"
    assert digest.key(DigestRule(daily="09:00")) != digest.key(NINE_PARIS)


def test_an_interval_window_closes_that_long_after_it_opened():
    assert digest.due(HOURLY, utc(2026, 3, 1, 10, 15)) == utc(2026, 3, 1, 11, 15)


@pytest.mark.parametrize(("now", "closes"), [
    (utc(2026, 1, 15, 7, 59), utc(2026, 1, 15, 8, 0)),  # 08:59 Paris (UTC+1): today 09:00
    (utc(2026, 1, 15, 8, 0), utc(2026, 1, 16, 8, 0)),  # exactly 09:00: the next day's
    (utc(2026, 7, 15, 12, 0), utc(2026, 7, 16, 7, 0)),  # summer: UTC+2
    # The night the clocks go forward (29 March 2026) 09:00 is 07:00 UTC.
    (utc(2026, 3, 28, 20, 0), utc(2026, 3, 29, 7, 0)),
    (utc(2026, 10, 24, 20, 0), utc(2026, 10, 25, 8, 0)),  # and back (25 October)
])
def test_a_daily_window_closes_at_the_next_wall_clock_time_in_the_zone(now, closes):
    assert digest.due(NINE_PARIS, now) == closes


def test_a_daily_time_the_clocks_skip_is_read_just_after_the_jump():
    # 02:30 does not exist in Paris on 29 March 2026 (02:00 -> 03:00).
    rule = DigestRule(daily="02:30", tz="Europe/Paris")
    assert digest.due(rule, utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1, 30)  # 03:30 CEST


def test_a_window_closing_in_quiet_hours_closes_when_they_end():
    quiet = Preferences(quiet_hours=QuietHours(start="22:00", end="07:00", tz="Europe/Paris"))
    # opened 21:30 Paris: an hour later is 22:30, quiet until 07:00 (06:00 UTC)
    assert digest.due(HOURLY, utc(2026, 1, 15, 20, 30), quiet) == utc(2026, 1, 16, 6, 0)
    # a window closing outside them is left alone
    assert digest.due(HOURLY, utc(2026, 1, 15, 12, 0), quiet) == utc(2026, 1, 15, 13, 0)


def test_check_refuses_both_kinds_at_once_and_unknown_zones():
    digest.check({"social": {"email": HOURLY, "push": NINE_PARIS}}, "digests")
    with pytest.raises(digest.InvalidDigest) as both:
        digest.check({"social": {"email": DigestRule(every=60, daily="09:00")}}, "digests")
    assert both.value.field == "digests.social.email"
    with pytest.raises(digest.InvalidDigest) as zone:
        digest.check({"social": {"push": DigestRule(daily="09:00", tz="localtime")}}, "digests")
    assert zone.value.field == "digests.social.push.tz"


def test_the_model_refuses_short_intervals_bad_times_and_unknown_channels():
    for doc in ({"social": {"email": {"every": 59}}}, {"social": {"email": {"daily": "9:00"}}},
                {"social": {"in_app": {"every": 3600}}}, {"social": {"email": {"weekly": 1}}}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"digests": doc}, Preferences)


def test_a_digest_says_how_many_lists_the_titles_and_carries_the_notifications():
    notes = [msgspec.json.encode({"id": f"N{i}", "category": "social", "title": f"like {i}"})
             for i in range(7)]
    jid = digest.job_id("app", "alice", "push", "every:3600", "N0", 0)
    assert digest.is_digest(jid) and jid.endswith(".push.0")
    assert jid != digest.job_id("app", "bob", "push", "every:3600", "N0", 0)
    doc = msgspec.json.decode(digest.body(jid, notes, 1_767_225_600.0))
    assert doc["title"] == "7 new notifications"
    assert doc["body"].splitlines()[0] == "- like 0"
    assert doc["data"]["digest"]["count"] == 7
    assert [n["id"] for n in doc["data"]["digest"]["items"]] == [f"N{i}" for i in range(7)]
    assert digest.item_ids(digest.body(jid, notes, 0.0)) == [f"N{i}" for i in range(7)]
    one = msgspec.json.decode(digest.body(jid, notes[:1], 0.0))
    assert one["title"] == "1 new notification"


def test_a_digests_own_words_are_in_the_language_it_is_sent_in():
    notes = [msgspec.json.encode({"id": f"N{i}", "category": "social", "title": f"like {i}"})
             for i in range(53)]
    jid = digest.job_id("app", "alice", "email", "every:3600", "N0", 0)
    fr = msgspec.json.decode(digest.body(jid, notes, 0.0, "fr-CA"))
    assert fr["title"] == "53 nouvelles notifications"
    assert fr["body"].splitlines()[-1] == "... et 3 autres"
    assert msgspec.json.decode(digest.body(jid, notes[:1], 0.0, "fr"))["title"] == (
        "1 nouvelle notification")
    de = msgspec.json.decode(digest.body(jid, notes[:51], 0.0, "de"))
    assert (de["title"], de["body"].splitlines()[-1]) == (
        "51 neue Benachrichtigungen", "... und 1 weitere")
    assert msgspec.json.decode(digest.body(jid, notes[:1], 0.0, "de-CH"))["title"] == (
        "1 neue Benachrichtigung")
    ja = msgspec.json.decode(digest.body(jid, notes, 0.0, "ja"))  # no such row: English
    assert (ja["title"], ja["body"].splitlines()[-1]) == ("53 new notifications",
                                                          "... and 3 more")
