"""Quiet hours: the window, midnight, DST, zones, and the per-channel plan."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tidings.core.models import ChannelPrefs, Preferences, QuietHours
from tidings.core.quiet import (
    CHANNELS,
    InvalidTimeZone,
    Plan,
    QuietWindow,
    plan,
    quiet_until,
    zone,
)


def at(text: str) -> datetime:
    """An instant written in UTC: ``at("2024-06-01 20:30")``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


PARIS = QuietWindow.parse("22:00", "07:00", "Europe/Paris")


# -- the window ----------------------------------------------------------------------


def test_same_day_window_is_start_inclusive_end_exclusive():
    w = QuietWindow.parse("13:00", "14:30", "UTC")
    assert not w.contains(at("2024-06-01 12:59:59"))
    assert w.contains(at("2024-06-01 13:00"))
    assert w.contains(at("2024-06-01 14:29:59.999999"))
    assert not w.contains(at("2024-06-01 14:30"))
    assert w.ends_after(at("2024-06-01 13:10")) == at("2024-06-01 14:30")
    assert w.ends_after(at("2024-06-01 14:30")) is None


def test_window_crossing_midnight():
    # Paris is UTC+2 in June: 22:00-07:00 local is 20:00-05:00 UTC.
    assert not PARIS.contains(at("2024-06-01 19:59"))
    assert PARIS.contains(at("2024-06-01 20:00"))
    assert PARIS.ends_after(at("2024-06-01 20:30")) == at("2024-06-02 05:00")
    # after midnight local time, the end is the same local day
    assert PARIS.ends_after(at("2024-06-02 04:59")) == at("2024-06-02 05:00")
    assert PARIS.ends_after(at("2024-06-02 05:00")) is None


def test_start_equal_end_is_an_empty_window():
    w = QuietWindow.parse("09:00", "09:00", "Europe/Paris")
    assert w.empty
    for hour in range(24):
        assert w.ends_after(at(f"2024-06-01 {hour:02d}:00")) is None


def test_the_answer_is_in_utc():
    until = PARIS.ends_after(datetime(2024, 6, 1, 23, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")))
    assert until.tzinfo is UTC and until == at("2024-06-02 05:00")


def test_naive_instants_are_refused():
    with pytest.raises(ValueError, match="aware"):
        PARIS.contains(datetime(2024, 6, 1, 23, 0))


# -- DST ------------------------------------------------------------------------------
# Europe/Paris: 2024-03-31 02:00 CET -> 03:00 CEST (01:00 UTC);
#               2024-10-27 03:00 CEST -> 02:00 CET (01:00 UTC).


def test_spring_forward_night_is_an_hour_shorter():
    # 22:00 CET (21:00 UTC) to 07:00 CEST (05:00 UTC): 8 hours, not 9
    assert PARIS.ends_after(at("2024-03-30 21:00")) == at("2024-03-31 05:00")


def test_fall_back_night_is_an_hour_longer():
    # 22:00 CEST (20:00 UTC) to 07:00 CET (06:00 UTC): 10 hours
    assert PARIS.ends_after(at("2024-10-26 20:00")) == at("2024-10-27 06:00")


def test_end_inside_the_spring_forward_gap_ends_at_the_jump():
    # 02:30 does not exist that night; the wall clock passes it at 03:00 CEST
    w = QuietWindow.parse("01:00", "02:30", "Europe/Paris")
    assert w.ends_after(at("2024-03-31 00:10")) == at("2024-03-31 01:00")


def test_end_that_happens_twice_ends_at_the_first():
    w = QuietWindow.parse("01:00", "02:30", "Europe/Paris")
    # 01:10 CEST -> the first 02:30 (CEST) is 00:30 UTC
    assert w.ends_after(at("2024-10-26 23:10")) == at("2024-10-27 00:30")
    # after the clocks go back the wall clock is inside the window again, until 02:30 CET
    assert not w.contains(at("2024-10-27 00:45"))  # 02:45 CEST
    assert w.contains(at("2024-10-27 01:00"))  # 02:00 CET
    assert w.ends_after(at("2024-10-27 01:00")) == at("2024-10-27 01:30")


def test_a_backward_jump_out_of_the_window_ends_it():
    # 02:45 CEST is inside 02:30-04:00; at 01:00 UTC the clock reads 02:00 CET, outside
    w = QuietWindow.parse("02:30", "04:00", "Europe/Paris")
    assert w.ends_after(at("2024-10-27 00:45")) == at("2024-10-27 01:00")


def test_a_skipped_day_samoa_2011():
    # Pacific/Apia jumped from 2011-12-29 23:59:59 (UTC-10) to 2011-12-31 00:00 (UTC+14)
    w = QuietWindow.parse("22:00", "07:00", "Pacific/Apia")
    until = w.ends_after(at("2011-12-30 08:30"))  # 22:30 local on the 29th
    assert until == datetime(2011, 12, 31, 7, 0, tzinfo=zoneinfo.ZoneInfo("Pacific/Apia"))


def test_half_hour_dst_lord_howe():
    # Australia/Lord_Howe moves its clocks by 30 minutes (02:00 -> 02:30 in October)
    lhi = zoneinfo.ZoneInfo("Australia/Lord_Howe")
    w = QuietWindow.parse("01:00", "02:15", "Australia/Lord_Howe")
    local = w.ends_after(datetime(2024, 10, 6, 1, 30, tzinfo=lhi)).astimezone(lhi)
    assert (local.hour, local.minute) == (2, 30)


# -- zones --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../../etc/passwd", "/etc/localtime",
                                  "Europe/Paris/", "europe/paris", "Europe", "zone.tab",
                                  "localtime", "posixrules", "UTC ", "a\x00b", None, 42])
def test_bad_zone_names_are_a_validation_error(name):
    with pytest.raises(InvalidTimeZone):
        zone(name)
    assert issubclass(InvalidTimeZone, ValueError)


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires",
                                  "Asia/Kathmandu", "Etc/GMT+5"])
def test_good_zone_names(name):
    assert zone(name).key == name


@pytest.mark.parametrize("start,end", [("24:00", "07:00"), ("7:00", "08:00"), ("12:00", "12:60"),
                                       ("12:00\n", "13:00"), ("1\u0663:00", "13:00")])
def test_bad_times_are_refused(start, end):
    with pytest.raises(ValueError):
        QuietWindow.parse(start, end)


def test_window_from_stored_preferences():
    hours = msgspec.json.decode(b'{"start":"22:00","end":"07:00","tz":"Europe/Paris"}',
                                type=QuietHours)
    assert QuietWindow.of(hours) == PARIS


# -- priority -------------------------------------------------------------------------


def test_urgent_bypasses_quiet_hours():
    now = at("2024-06-01 21:00")
    assert quiet_until(PARIS, "normal", now) == at("2024-06-02 05:00")
    assert quiet_until(PARIS, "high", now) == at("2024-06-02 05:00")
    assert quiet_until(PARIS, "urgent", now) is None
    assert quiet_until(None, "low", now) is None


# -- the per-channel plan ---------------------------------------------------------------


def prefs(categories=None, quiet=None) -> Preferences:
    body = {"categories": categories or {}}
    if quiet:
        body["quiet_hours"] = quiet
    return msgspec.json.decode(msgspec.json.encode(body), type=Preferences)


QUIET = {"start": "22:00", "end": "07:00", "tz": "Europe/Paris"}
NIGHT = at("2024-06-01 21:00")  # 23:00 in Paris
DAY = at("2024-06-01 10:00")


def test_no_preferences_means_every_channel_now():
    assert plan(None, "social", "normal", NIGHT) == Plan(now=CHANNELS, later=(), muted=())


def test_quiet_hours_hold_interrupting_channels_but_not_the_inbox():
    p = plan(prefs(quiet=QUIET), "social", "normal", NIGHT)
    assert p.now == ("in_app",)
    assert p.later == ("webhook", "push", "email")
    assert p.until == at("2024-06-02 05:00")
    assert plan(prefs(quiet=QUIET), "social", "normal", DAY).now == CHANNELS


def test_urgent_bypasses_quiet_hours_but_not_a_mute():
    p = prefs({"billing": {"email": False, "push": False}}, QUIET)
    got = plan(p, "billing", "urgent", NIGHT)
    assert got == Plan(now=("in_app", "webhook"), later=(), muted=("push", "email"))
    got = plan(p, "billing", "normal", NIGHT)
    assert got.now == ("in_app",) and got.later == ("webhook",) and got.muted == ("push", "email")


def test_mutes_are_per_category():
    p = prefs({"billing": {"in_app": False}})
    assert plan(p, "billing", "normal", DAY).muted == ("in_app",)
    assert plan(p, "social", "normal", DAY).muted == ()


def test_a_category_the_preferences_do_not_name_follows_star():
    """"*" is every other category (what an unsubscribe link for all of them
    writes): a named category keeps its own switches, all of them."""
    p = prefs({"*": {"email": False}, "billing": {"push": False}})
    assert plan(p, "social", "normal", DAY).muted == ("email",)
    assert plan(p, "anything", "normal", DAY).muted == ("email",)
    assert plan(p, "billing", "normal", DAY).muted == ("push",)  # its own, not "*"'s
    assert plan(prefs({"*": {}}), "social", "normal", DAY).muted == ()


def test_everything_muted_leaves_no_until():
    off = {"in_app": False, "webhook": False, "push": False, "email": False}
    got = plan(prefs({"x": off}, QUIET), "x", "normal", NIGHT)
    assert got == Plan(now=(), later=(), muted=CHANNELS, until=None)


def test_plan_over_configured_channels_only():
    got = plan(prefs(quiet=QUIET), "x", "normal", NIGHT, channels=("in_app", "email"))
    assert got.now == ("in_app",) and got.later == ("email",)
    with pytest.raises(ValueError):
        plan(None, "x", "normal", NIGHT, channels=("sms",))


def test_a_stored_zone_that_no_longer_loads_reads_as_utc():
    stored = Preferences(quiet_hours=QuietHours("22:00", "07:00", "Gone/Zone"))
    got = plan(stored, "x", "normal", at("2024-06-01 23:00"))
    assert got.until == at("2024-06-02 07:00")


def test_channel_prefs_default_on():
    assert all(getattr(ChannelPrefs(), c) for c in CHANNELS)


# -- properties ---------------------------------------------------------------------------

ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules"})
times = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2037, 12, 30), timezones=st.just(UTC)
)


@settings(max_examples=400, deadline=None)
@given(tz=st.sampled_from(ZONES), start=times, end=times, now=instants,
       fractions=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=8))
@example(tz="Europe/Paris", start="01:00", end="02:30", now=at("2024-03-31 00:10"), fractions=[0.5])
@example(tz="Europe/Paris", start="02:30", end="04:00", now=at("2024-10-27 00:45"), fractions=[0.9])
@example(tz="Pacific/Apia", start="22:00", end="07:00", now=at("2011-12-30 08:30"), fractions=[0.5])
def test_held_exactly_until_the_wall_clock_leaves_the_window(tz, start, end, now, fractions):
    """The contract: held iff inside; the end is after now, outside the window,
    and every instant before it is inside (nothing is held a second too long)."""
    w = QuietWindow.parse(start, end, tz)
    local = now.astimezone(w.zone).time()
    until = w.ends_after(now)
    if until is None:
        assert not w.contains(now)
        return
    assert w.contains(now)
    assert start != end
    assert until > now and not w.contains(until)
    assert until - now <= timedelta(hours=50)
    for f in fractions:
        # timedelta * float rounds to the microsecond: stay strictly before ``until``
        point = min(now + (until - now) * f, until - timedelta(microseconds=1))
        assert w.contains(max(point, now))
    one_before = until - timedelta(seconds=1)
    if one_before > now:
        assert w.contains(one_before)
    # Where the zone's offset stays put, the hold is plain wall-clock arithmetic.
    offset = now.astimezone(w.zone).utcoffset()
    steps = int((until - now).total_seconds() // 1800) + 1
    assume(all((now + timedelta(minutes=30 * k)).astimezone(w.zone).utcoffset() == offset
               for k in range(steps + 1)))
    assume(until.astimezone(w.zone).utcoffset() == offset)
    minute = local.hour * 60 + local.minute + local.second / 60 + local.microsecond / 6e7
    expected = (w.end.hour * 60 + w.end.minute - minute) % (24 * 60)
    assert (until - now).total_seconds() / 60 == pytest.approx(expected, abs=1e-6)
