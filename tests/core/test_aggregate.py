"""group_key aggregation: the merge rule, its order independence, rendering."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.aggregate import (
    ActorSample,
    GroupSummary,
    actors_line,
    decode,
    describe_actors,
    encode,
    merge,
    start,
)
from tidings.core.ids import new_id
from tidings.core.models import Notification

_ms = itertools.count(1_700_000_000_000)


def note(actor: str | None = "user_1", key: str = "post:42:likes", **kw) -> Notification:
    ms = next(_ms)
    return Notification(id=kw.pop("id", new_id(ms)), category="social", created_at=f"t{ms}",
                        title=kw.pop("title", f"{actor} liked your post"), group_key=key,
                        actor=actor, **kw)


def fold(notes, sample=3):
    summary = None
    for n in notes:
        summary = merge(summary, n, sample)
    return summary


def test_a_new_group():
    n = note("user_17")
    s = merge(None, n)
    assert s == start(n)
    assert (s.key, s.count, s.actor_count) == ("post:42:likes", 1, 1)
    assert s.actors == (ActorSample("user_17", n.id),)
    assert s.latest == n and s.first_id == n.id


def test_merge_counts_and_keeps_the_latest_fields():
    a, b, c = note("user_1"), note("user_2", url="/p/42"), note("user_3", data={"k": 1})
    s = fold([a, b, c])
    assert s.count == 3 and s.actor_count == 3
    assert [x.actor for x in s.actors] == ["user_3", "user_2", "user_1"]
    assert s.latest == c and s.first_id == a.id


def test_sample_is_bounded_most_recent_first_and_distinct():
    notes = [note(f"user_{i}") for i in range(10)]
    s = fold(notes + [note("user_4")])
    assert [x.actor for x in s.actors] == ["user_4", "user_9", "user_8"]
    assert s.count == 11
    # user_4 had dropped out of the sample, so it is counted again (documented)
    assert s.actor_count == 11


def test_a_repeating_actor_moves_to_the_front_without_counting_twice():
    s = fold([note("user_1"), note("user_2"), note("user_1")])
    assert [x.actor for x in s.actors] == ["user_1", "user_2"]
    assert s.actor_count == 2 and s.count == 3


def test_notifications_without_actor_count_but_name_no_one():
    s = fold([note(None), note(None)])
    assert s.count == 2 and s.actor_count == 0 and s.actors == ()
    assert describe_actors(s) == ""
    s = merge(s, note(""))  # an empty actor is no actor
    assert s.actor_count == 0 and s.count == 3


def test_a_late_arrival_does_not_replace_the_latest():
    older, newer = note("user_1"), note("user_2")
    s = fold([newer, older])
    assert s.latest == newer
    assert s.first_id == older.id
    assert [x.actor for x in s.actors] == ["user_2", "user_1"]


def test_merging_the_latest_again_changes_nothing():
    s = fold([note("a"), note("b")])
    assert merge(s, s.latest) is s


def test_the_group_key_must_match():
    s = start(note(key="k1"))
    with pytest.raises(ValueError):
        merge(s, note(key="k2"))
    with pytest.raises(ValueError):
        start(note(key=None))
    with pytest.raises(ValueError):
        start(note(), sample=-1)


def test_summary_round_trips_as_one_json_blob():
    s = fold([note("user_1", data={"post": 42}), note("user_2", tags=["x"])])
    blob = encode(s)
    assert isinstance(blob, bytes)
    assert decode(blob) == s
    raw = msgspec.json.decode(blob)
    assert raw["actors"][0] == ["user_2", s.actors[0].last_id]  # compact pairs
    assert set(raw) == {"key", "count", "actor_count", "actors", "first_id", "latest"}


def test_client_view():
    s = fold([note("user_1"), note("user_2")])
    assert s.view() == {"key": "post:42:likes", "count": 2, "actor_count": 2,
                        "actors": ["user_2", "user_1"], "latest_at": s.latest.created_at}


# -- rendering --------------------------------------------------------------------------


def summary_of(actors: list[str], actor_count: int) -> GroupSummary:
    base = note(actors[0] if actors else None)
    return GroupSummary(key="k", count=actor_count or 1, actor_count=actor_count,
                        actors=tuple(ActorSample(a, f"{i:026d}") for i, a in enumerate(actors)),
                        first_id=base.id, latest=base)


@pytest.mark.parametrize(
    "actors,count,names,text",
    [
        (["user_17"], 1, 1, "user_17"),
        (["user_17", "user_9"], 2, 1, "user_17 and user_9"),
        (["user_17", "user_9"], 2, 2, "user_17 and user_9"),
        (["user_17", "user_9", "user_3"], 42, 1, "user_17 and 41 others"),
        (["user_17", "user_9", "user_3"], 42, 2, "user_17, user_9 and 40 others"),
        (["user_17", "user_9", "user_3"], 3, 3, "user_17, user_9 and user_3"),
        (["user_17", "user_9", "user_3"], 3, 2, "user_17, user_9 and user_3"),
        (["user_17"], 2, 1, "user_17 and 1 other"),  # the second actor was not sampled
        ([], 0, 1, ""),
    ],
)
def test_describe_actors(actors, count, names, text):
    assert describe_actors(summary_of(actors, count), names) == text


def test_actors_line_is_the_structured_form():
    assert actors_line(summary_of(["a", "b", "c"], 42)) == (["a"], 41)
    assert actors_line(summary_of(["a", "b", "c"], 42), names=5) == (["a", "b", "c"], 39)
    with pytest.raises(ValueError):
        actors_line(summary_of(["a"], 1), names=0)


# -- properties ---------------------------------------------------------------------------

actor_names = st.sampled_from(["a", "b", "c", "d", "e", "f", None])


@settings(max_examples=200)
@given(actors=st.lists(actor_names, min_size=1, max_size=25), sample=st.integers(0, 4),
       seed=st.randoms(use_true_random=False))
def test_arrival_order_does_not_change_the_group(actors, sample, seed):
    notes = [note(a) for a in actors]
    shuffled = list(notes)
    seed.shuffle(shuffled)
    one, two = fold(notes, sample), fold(shuffled, sample)
    assert one.count == two.count == len(notes)
    assert one.latest == two.latest == max(notes, key=lambda n: n.id)
    assert one.first_id == two.first_id == min(n.id for n in notes)
    assert one.actors == two.actors
    # the sample is exactly the newest ``sample`` distinct actors
    newest: dict[str, str] = {}
    for n in notes:
        if n.actor:
            newest[n.actor] = max(newest.get(n.actor, ""), n.id)
    expected = sorted(newest.items(), key=lambda kv: kv[1], reverse=True)[:sample]
    assert [(a.actor, a.last_id) for a in one.actors] == expected
    if len(newest) <= sample:  # nothing ever dropped out: the count is exact
        assert one.actor_count == two.actor_count == len(newest)
    assert one.actor_count >= len(newest)
    assert one.actor_count <= sum(1 for n in notes if n.actor)
