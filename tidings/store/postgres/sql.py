"""The PostgreSQL store's statements (used by store.py).

Kept apart so that the store reads as what it does, and the SQL as one
place to review: every multi-user write orders its rows by user id
``COLLATE "C"`` (the columns' collation), which gives every node and every
kind of write one lock order.  ``$1`` is always the app id and, where a user
is involved, ``$2`` the user id.
"""

from __future__ import annotations

STATE_CODE = {"unseen": 0, "seen": 1, "read": 2, "archived": 3}
STATE_NAME = ("unseen", "seen", "read", "archived", "snoozed")
SNOOZED = 4  # the state code of a snoozed entry (postgres_022.sql)

# A user sees a feed item addressed to everyone or to a topic they follow.
_VISIBLE = (
    "(n.audience = '*' OR n.audience IN "
    "(SELECT topic FROM topic_subs WHERE app_id = n.app_id AND user_id = $2))"
)


def _not_muted(array: str | None) -> str:
    """The predicate that leaves out feed items of the categories in
    ``array`` (a text[] expression), a user's in-app mutes.  None: the user
    has none, and the statement is the one it was before mutes hid feed
    items, whose plans were tuned (bench/inboxplans.py)."""
    return "" if array is None else f" AND n.category <> ALL({array})"


# User $2's in-app mutes read by the statement itself, for a caller that does
# not hold them: the mutes table says what the preferences do (every write of
# them rewrites its rows in the same transaction), and mutes_user
# (postgres_018.sql) finds them.  Not correlated with the row, so an InitPlan
# reads them once per statement, in the statement's snapshot, and saves the
# round trip of reading them first (docs/delivery.md).
STORED_MUTES = "ARRAY(SELECT category FROM mutes WHERE app_id = $1 AND user_id = $2)"


def _mutes_array(muted: str | None, given: str) -> str | None:
    """The text[] expression of the mutes for ``muted``: None (the user has
    none), ``"given"`` (the parameter ``given``) or ``"stored"``."""
    return {None: None, "given": given, "stored": STORED_MUTES}[muted]


# Write fan-out, one statement: $1 app, $2 id, $3 category, $4 body,
# $5 created_at, $6 expires_at, $7 the audience (users array or topic).
# Returns the audience size before muting and the deliveries as three arrays.
_FANOUT = """
WITH audience AS ({source}),
recipients AS (
  SELECT u FROM audience WHERE NOT EXISTS (
    SELECT 1 FROM mutes m WHERE m.app_id = $1 AND m.category = $3 AND m.user_id = audience.u)
),
seqs AS (
  INSERT INTO streams AS s (app_id, user_id, epoch, head_seq)
  SELECT $1, u, left(gen_random_uuid()::text, 8), 1 FROM recipients ORDER BY u
  ON CONFLICT (app_id, user_id) DO UPDATE SET head_seq = s.head_seq + 1
  RETURNING user_id, epoch, head_seq
),
note AS (
  INSERT INTO notifications (app_id, id, category, body, recipients, created_at, expires_at)
  SELECT $1, $2, $3, $4, count(*), $5, $6 FROM seqs
){entries}
SELECT (SELECT count(*) FROM audience),
       array_agg(user_id), array_agg(epoch), array_agg(head_seq) FROM seqs
"""
# An entry carries its body up to INLINE_BODY bytes (postgres_010.sql): the
# page reads it from the entry's own index, not from the notification row.
INLINE_BODY = 1024
ENTRY_BODY = f"CASE WHEN octet_length({{}}) <= {INLINE_BODY} THEN {{}} END"
_ENTRIES = f""",
entries AS (
  INSERT INTO inbox (app_id, user_id, seq, nid, created_at, expires_at, body)
  SELECT $1, user_id, head_seq, $2, $5, $6, {ENTRY_BODY.format("$4", "$4")} FROM seqs
)"""
_USERS = 'SELECT u COLLATE "C" AS u FROM unnest($7::text[]) AS t(u)'
_TOPIC = "SELECT user_id AS u FROM topic_subs WHERE app_id = $1 AND topic = $7"
FANOUT_USERS = _FANOUT.format(source=_USERS, entries=_ENTRIES)
FANOUT_TOPIC = _FANOUT.format(source=_TOPIC, entries=_ENTRIES)
# A grouped fan-out writes its entries itself, after merging (groups.py).
SEQS_USERS = _FANOUT.format(source=_USERS, entries="")
SEQS_TOPIC = _FANOUT.format(source=_TOPIC, entries="")

# Read fan-out: the app's feed_heads row hands out the next offset (and its
# lock makes offsets commit in order).
FEED = """
WITH head AS (
  INSERT INTO feed_heads AS f (app_id, head) VALUES ($1, 1)
  ON CONFLICT (app_id) DO UPDATE SET head = f.head + 1 RETURNING head
)
INSERT INTO notifications
  (app_id, id, category, body, audience, feed_offset, recipients, created_at, expires_at)
SELECT $1, $2, $3, $4, $5, head, 0, $6, $7 FROM head
RETURNING feed_offset
"""

HEAD = (
    "SELECT s.epoch, s.head_seq, s.floor_seq, coalesce(f.head, 0), coalesce(f.floor, 0), "
    # the user's preferences, for their in-app mutes: one primary-key read more
    "(SELECT doc FROM prefs WHERE app_id = $1 AND user_id = $2) "
    "FROM streams s LEFT JOIN feed_heads f ON f.app_id = s.app_id "
    "WHERE s.app_id = $1 AND s.user_id = $2"
)
# The heads of a list of users' streams ($2), for the hub's repair pass.
HEADS = (
    "SELECT user_id, epoch, head_seq FROM streams "
    "WHERE app_id = $1 AND user_id = ANY($2::text[])"
)
NEW_STREAM = (
    "INSERT INTO streams (app_id, user_id, epoch, head_seq) "
    "VALUES ($1, $2, left(gen_random_uuid()::text, 8), 0) ON CONFLICT DO NOTHING"
)

# What a replay reads past a stream's position: personal entries after $3
# (seq) and visible feed items after $4 (offset), live at $5 (now), oldest
# first.  A NULL position leaves its kind out (a paged replay reads one kind
# at a time).
_PERSONAL_PAST = """
 FROM inbox i JOIN notifications n ON n.app_id = i.app_id AND n.id = i.nid
 WHERE i.app_id = $1 AND i.user_id = $2 AND i.seq > $3 AND i.state <> 4
   AND (i.expires_at IS NULL OR i.expires_at > $5)
 ORDER BY i.seq"""
_FEED_PAST = """
 WHERE n.app_id = $1 AND n.feed_offset > $4 AND NOT n.deleted
   AND (n.expires_at IS NULL OR n.expires_at > $5) AND {visible}{mutes}
 ORDER BY n.feed_offset"""

# Personal entries and feed items in one round trip: (is_feed, id, body,
# state, created_at, seq or offset, gid, grp, page_key: set for an entry back
# from a snooze).  $6 limit; REPLAY_MUTED: $7 the user's in-app mutes.
_REPLAY = f"""
(SELECT false, n.id, n.body, i.state, n.created_at, i.seq, i.gid, i.grp,
        i.page_key{_PERSONAL_PAST}
 LIMIT $6)
UNION ALL
(SELECT true, n.id, n.body, coalesce(fs.state, 0)::smallint, n.created_at, n.feed_offset,
        NULL::text, NULL::bytea, NULL::text
 FROM notifications n LEFT JOIN feed_state fs
   ON fs.app_id = n.app_id AND fs.user_id = $2 AND fs.nid = n.id{_FEED_PAST}
 LIMIT $6)
"""
REPLAY = _REPLAY.format(visible=_VISIBLE, mutes="")
REPLAY_MUTED = _REPLAY.format(visible=_VISIBLE, mutes=_not_muted("$7::text[]"))

# Whether a replay would find more than $6 entries of either kind: the row
# after the first $6, looked for without reading a body (the ``replay_max``
# rule, decided before a paged replay sends anything).
_REPLAY_EXCEEDS = f"""
SELECT EXISTS (SELECT 1{_PERSONAL_PAST} OFFSET $6 LIMIT 1)
    OR EXISTS (SELECT 1 FROM notifications n{_FEED_PAST} OFFSET $6 LIMIT 1)
"""
REPLAY_EXCEEDS = _REPLAY_EXCEEDS.format(visible=_VISIBLE, mutes="")
REPLAY_EXCEEDS_MUTED = _REPLAY_EXCEEDS.format(visible=_VISIBLE, mutes=_not_muted("$7::text[]"))

# COALESCE and CASE evaluate these subqueries only for the rows that need them.
_ENTRY_BODY_OR_NOTIFICATION = (
    "coalesce(i.body, (SELECT n.body FROM notifications n "
    "WHERE n.app_id = i.app_id AND n.id = i.nid))"
)
_GROUP_SUMMARY = (
    "CASE WHEN i.gid IS NOT NULL THEN (SELECT g.grp FROM inbox g "
    "WHERE g.app_id = i.app_id AND g.user_id = i.user_id AND g.seq = i.seq) END"
)

_STATE_FILTER = {  # inbox ?state= -> predicate on a state expression
    None: "{} < 3", "unread": "{} < 2", "unseen": "{} = 0", "seen": "{} = 1",
    "read": "{} = 2", "archived": "{} = 3", "snoozed": "{} = 4", "all": "true",
}


# A page's personal entries come in two halves: those in their notification's
# place (inbox_page, by id), and those back from a snooze, in the place of
# the moment they came back (page_key: postgres_022.sql), which the first
# half leaves out.  Both read the user's entries back from a snooze from
# ``back``, one probe of inbox_resurfaced, index-only (it includes nid):
# NOT IN reads only nid, so the first half stays the index-only scan of
# inbox_page it was, and the second half reads its rows from inbox_page by
# nid.  With no entry back from a snooze (most users) the page costs that
# one probe of an empty partial index, and the second half reads nothing.
_BACK = ("WITH back AS MATERIALIZED (SELECT r.nid, r.page_key FROM inbox r "
         "WHERE r.app_id = $1 AND r.user_id = $2 AND r.page_key IS NOT NULL)")
_NOT_BACK = "AND i.nid NOT IN (SELECT nid FROM back)"
_FROM_BACK = "back b JOIN inbox i ON i.app_id = $1 AND i.user_id = $2 AND i.nid = b.nid"


def _snoozed_column(state: str | None) -> str:
    """A snoozed entry's wake-up, read only by the pages that can show one
    (reading it elsewhere would cost the index-only scan)."""
    return "i.snoozed_until" if state in ("snoozed", "all") else "NULL::float8"


def _personal_halves(half: str, state: str | None, paged: bool) -> str:
    """``half`` (a personal half with ``{source}``, ``{key}``, ``{place}``,
    ``{where}`` and ``{snoozed}`` to fill) as the two halves above, joined by
    UNION ALL, after the ``WITH`` they share: the start of a statement."""
    snoozed = _snoozed_column(state)
    by_id = half.format(source="inbox i", key="NULL::text", place="i.nid", snoozed=snoozed,
                        where=_NOT_BACK + (" AND i.nid < $5" if paged else ""))
    back = half.format(source=_FROM_BACK, key="b.page_key", place="b.page_key",
                       snoozed=snoozed, where="AND b.page_key < $5" if paged else "")
    return f"{_BACK}\n{by_id}\nUNION ALL\n{back}"


def _inbox_sql(state: str | None, paged: bool, muted: str | None = None) -> str:
    """Newest first, both halves; $3 now, $4 limit, $5 the ``before`` id,
    then (``muted="given"``) the user's in-app mutes; ``muted="stored"``
    reads them (STORED_MUTES)."""
    personal = _STATE_FILTER[state].format("i.state")
    feed = _STATE_FILTER[state].format("coalesce(fs.state, 0)")
    mutes = _not_muted(_mutes_array(muted, ("$6" if paged else "$5") + "::text[]"))
    # Personal entries page by id, not by seq as in SQLite: seqs follow the
    # order in which concurrent publishes (from several connections and nodes)
    # took the stream's lock, which need not be the order of their ids, and
    # ``before=<id>`` must neither skip nor repeat an entry.  inbox_page
    # (postgres_010.sql) holds one user's rows in id order with what a page
    # shows: an index-only scan, newest first.  Only a body too large to be
    # copied into the entry (or one written before v10) is read from its
    # notification, and only a group entry's summary from the heap.
    half = f"""
(SELECT false, i.nid, {_ENTRY_BODY_OR_NOTIFICATION}, i.state, i.created_at, i.seq, i.gid,
        {_GROUP_SUMMARY}, {{key}}, {{snoozed}}
 FROM {{source}}
 WHERE i.app_id = $1 AND i.user_id = $2 AND (i.expires_at IS NULL OR i.expires_at > $3)
   AND {personal} {{where}}
 ORDER BY {{place}} DESC LIMIT $4)"""
    return f"""
{_personal_halves(half, state, paged)}
UNION ALL
(SELECT true, n.id, n.body, coalesce(fs.state, 0)::smallint, n.created_at, n.feed_offset,
        NULL::text, NULL::bytea, NULL::text, NULL::float8
 FROM notifications n LEFT JOIN feed_state fs
   ON fs.app_id = n.app_id AND fs.user_id = $2 AND fs.nid = n.id
 WHERE n.app_id = $1 AND n.feed_offset IS NOT NULL AND NOT n.deleted
   AND (n.expires_at IS NULL OR n.expires_at > $3) AND {_VISIBLE}
   AND {feed} {"AND n.id < $5" if paged else ""}{mutes}
 ORDER BY n.id DESC LIMIT $4)
"""


INBOX = {(state, paged): _inbox_sql(state, paged) for state in _STATE_FILTER
         for paged in (False, True)}
# for a user who muted categories in-app
INBOX_MUTED = {(state, paged): _inbox_sql(state, paged, "given") for state in _STATE_FILTER
               for paged in (False, True)}
# for a user whose mutes the caller does not hold
INBOX_STORED_MUTES = {(state, paged): _inbox_sql(state, paged, "stored")
                      for state in _STATE_FILTER for paged in (False, True)}

# A body holding the escape \u0000 (a NUL in a title, say) cannot be read by
# PostgreSQL's JSON functions, which refuse to turn it into text.  Such a body
# passes the SQL filter below and is judged in Python (codec.shown_by); every
# other body is judged here, so a page comes back full in one round trip.
_NUL_ESCAPE = "'\\x5c7530303030'::bytea"
_JSON = f"CASE WHEN position({_NUL_ESCAPE} IN {{}}) = 0 THEN convert_from({{}}, 'UTF8')::json END"


def inbox_filtered_sql(state: str | None, paged: bool, categories: bool, tags: bool,
                       muted: str | None = None) -> str:
    """``INBOX[state, paged]`` keeping only the items of some categories
    (``$6``, ``$5`` unpaged: text[]) and carrying some tags (the parameter
    after).  Read in the same order, newest first, from the same index: a
    personal entry's category and tags come from the body it carries
    (inbox_page), so a filter adds no read of the notification row (except
    for a body too large to copy, as the page itself does); a feed item's
    category is its column.  The JSON is parsed once per row read (OFFSET 0
    keeps the LATERAL from being inlined into each test); ``x.j`` is NULL
    for a body with a NUL escape, which passes here and is judged in Python.
    ``muted="given"``: the user's in-app mutes are the last parameter
    (text[]); ``"stored"``: the statement reads them (STORED_MUTES)."""
    personal = _STATE_FILTER[state].format("i.state")
    feed = _STATE_FILTER[state].format("coalesce(fs.state, 0)")
    n = 5 + paged
    cats = f"${n}::text[]" if categories else ""
    tag_list = f"${n + categories}::text[]" if tags else ""
    mutes = _not_muted(_mutes_array(muted, f"${n + categories + tags}::text[]"))
    # Only the tags become jsonb (for ?|, "any of these strings"): a body
    # without tags has none, NULL, no match.  Twice as fast as testing each
    # element (json_array_elements_text): 4.7 ms against 10.5 ms for a tag
    # that none of a user's 2,000 entries carries.
    has_tag = f"coalesce((x.j -> 'tags')::jsonb ?| {tag_list}, false)"
    personal_test = " AND ".join(
        ([f"(x.j ->> 'category') = ANY({cats})"] if cats else []) + ([has_tag] if tags else []))
    feed_test = " AND ".join(
        ([f"n.category = ANY({cats})"] if cats else []) + ([f"(x.j IS NULL OR {has_tag})"]
                                                           if tags else []))
    feed_json = (f"CROSS JOIN LATERAL (SELECT {_JSON.format('n.body', 'n.body')} AS j OFFSET 0) x"
                 if tags else "")
    half = f"""
(SELECT false, i.nid, e.body, i.state, i.created_at, i.seq, i.gid, {_GROUP_SUMMARY},
        {{key}}, {{snoozed}}
 FROM {{source}}
 CROSS JOIN LATERAL (SELECT {_ENTRY_BODY_OR_NOTIFICATION} AS body OFFSET 0) e
 CROSS JOIN LATERAL (SELECT {_JSON.format("e.body", "e.body")} AS j OFFSET 0) x
 WHERE i.app_id = $1 AND i.user_id = $2 AND (i.expires_at IS NULL OR i.expires_at > $3)
   AND {personal} {{where}} AND (x.j IS NULL OR ({personal_test}))
 ORDER BY {{place}} DESC LIMIT $4)"""
    return f"""
{_personal_halves(half, state, paged)}
UNION ALL
(SELECT true, n.id, n.body, coalesce(fs.state, 0)::smallint, n.created_at, n.feed_offset,
        NULL::text, NULL::bytea, NULL::text, NULL::float8
 FROM notifications n LEFT JOIN feed_state fs
   ON fs.app_id = n.app_id AND fs.user_id = $2 AND fs.nid = n.id
 {feed_json}
 WHERE n.app_id = $1 AND n.feed_offset IS NOT NULL AND NOT n.deleted
   AND (n.expires_at IS NULL OR n.expires_at > $3) AND {_VISIBLE}
   AND {feed} {"AND n.id < $5" if paged else ""} AND {feed_test}{mutes}
 ORDER BY n.id DESC LIMIT $4)
"""

# Raise the revision of users' counts (``Counts.rev``; user '': every user
# of the app), as the tail of a statement that changed them: ``BUMP_REV``
# rows (app, user, 1) ``ON_REV``.  It comes last in each transaction that
# takes it, and several users' rows are taken sorted: no deadlock.
BUMP_REV = "INSERT INTO counts_revs AS r (app_id, user_id, rev)"
ON_REV = "ON CONFLICT (app_id, user_id) DO UPDATE SET rev = r.rev + 1"

# Move entries forward: personal rows in place, feed items by upserting the
# user's lazy feed_state row, and the user's revision if anything moved.
# $3 state code, $4 now, $5 the ids (if given).
# When an entry first became seen, read, archived rides on the same UPDATE
# (moving to read marks it seen too when it skipped that step).
_STAMPS = ", ".join(
    f"{col} = CASE WHEN $3 >= {code} THEN coalesce({{table}}{col}, $4) ELSE {{table}}{col} END"
    for col, code in (("seen_at", 1), ("read_at", 2), ("archived_at", 3)))
_SET_STATE = f"""
WITH personal AS (
  UPDATE inbox SET state = $3, {_STAMPS.format(table="")}
  WHERE app_id = $1 AND user_id = $2 AND state < $3
    AND (expires_at IS NULL OR expires_at > $4) {{ids_personal}}
  RETURNING nid
), feed AS (
  INSERT INTO feed_state AS fs (app_id, user_id, nid, state, seen_at, read_at, archived_at)
  SELECT $1, $2, n.id, $3, CASE WHEN $3 >= 1 THEN $4 END, CASE WHEN $3 >= 2 THEN $4 END,
         CASE WHEN $3 >= 3 THEN $4 END FROM notifications n
  WHERE n.app_id = $1 AND n.feed_offset IS NOT NULL AND NOT n.deleted
    AND (n.expires_at IS NULL OR n.expires_at > $4) AND {_VISIBLE} {{ids_feed}}
  ORDER BY n.id
  ON CONFLICT (app_id, user_id, nid) DO UPDATE SET state = EXCLUDED.state,
    {_STAMPS.format(table="fs.")}
    WHERE fs.state < EXCLUDED.state
  RETURNING nid
), bumped AS (
  {BUMP_REV} SELECT $1, $2, 1 WHERE EXISTS (SELECT FROM personal) OR EXISTS (SELECT FROM feed)
  {ON_REV}
)
SELECT nid FROM personal UNION ALL SELECT nid FROM feed
"""
SET_STATE = _SET_STATE.format(ids_personal="", ids_feed="")
# An older member's id marks the group entry that holds it now.
SET_STATE_IDS = _SET_STATE.format(
    ids_personal="AND (nid = ANY($5::text[]) OR gid IN (SELECT m.gid FROM group_members m "
                 "WHERE m.app_id = $1 AND m.user_id = $2 AND m.nid = ANY($5::text[])))",
    ids_feed="AND n.id = ANY($5::text[])")

# Retract: flag the notification (its id and seqs are never reused) and drop
# every user's entry and state.  Returns whether this call did it.
# The unread and unseen counts of user {user} ($1 app, $3 now): personal
# entries and the feed items the user can see, in one pass, with the position
# they were read at (the user's head seq, the app's feed head), when the
# first unread entry they count expires (NULL: none does) and their
# revision (the user's and the app's, counts_revs).  One
# statement, so one snapshot (PostgreSQL's READ COMMITTED gives each
# statement its own, whole), which is what makes the position exact
# (docs/protocol.md, "Counts and the badge").
_COUNTS = """
SELECT count(*) FILTER (WHERE state < 2), count(*) FILTER (WHERE state = 0),
       coalesce((SELECT head_seq FROM streams WHERE app_id = $1 AND user_id = {user}), 0),
       coalesce((SELECT head FROM feed_heads WHERE app_id = $1), 0),
       min(expires_at) FILTER (WHERE state < 2),
       (SELECT coalesce(sum(rev), 0)::bigint FROM counts_revs
        WHERE app_id = $1 AND user_id IN ('', {user}))
FROM (SELECT state, expires_at FROM inbox WHERE app_id = $1 AND user_id = {user}
      AND (expires_at IS NULL OR expires_at > $3)
      UNION ALL
      SELECT coalesce(fs.state, 0), n.expires_at FROM notifications n
      LEFT JOIN feed_state fs ON fs.app_id = n.app_id AND fs.user_id = {user}
        AND fs.nid = n.id
      WHERE n.app_id = $1 AND n.feed_offset IS NOT NULL AND NOT n.deleted
        AND (n.expires_at IS NULL OR n.expires_at > $3)
        AND (n.audience = '*' OR n.audience IN
          (SELECT topic FROM topic_subs WHERE app_id = $1 AND user_id = {user})){mutes}
) AS mine"""
COUNTS = _COUNTS.format(user="$2", mutes="")
# The same leaving out the feed items of the categories $4 (in-app mutes).
COUNTS_MUTED = _COUNTS.format(user="$2", mutes=_not_muted("$4::text[]"))
# ... of the categories the user muted, read by the statement.
COUNTS_STORED_MUTES = _COUNTS.format(user="$2", mutes=_not_muted(STORED_MUTES))
# The same for each user of the array $2: (user, unread, unseen) rows.
COUNTS_MANY = ("SELECT t.u, c.* FROM unnest($2::text[]) AS t(u), LATERAL ("
               + _COUNTS.format(user="t.u", mutes="") + ") AS c")
# ... each leaving out the categories that user muted, read by the
# statement (an InitPlan per user, in the statement's snapshot).
COUNTS_MANY_STORED_MUTES = (
    "SELECT t.u, c.* FROM unnest($2::text[]) AS t(u), LATERAL ("
    + _COUNTS.format(user="t.u", mutes=_not_muted(
        "ARRAY(SELECT category FROM mutes WHERE app_id = $1 AND user_id = t.u)"))
    + ") AS c")
# ... for users who muted categories: $4 each one's, joined by "," (which
# no category name holds, tidings/core/models.py).
COUNTS_MANY_MUTED = (
    "SELECT t.u, c.* FROM unnest($2::text[], $4::text[]) AS t(u, m), LATERAL ("
    + _COUNTS.format(user="t.u", mutes=_not_muted("string_to_array(t.m, ',')")) + ") AS c")

# Retract $2 (its group entries were rebuilt first, groups.py): the plain
# entries that go, (user, state, expires_at) each; no row when it was gone.
DELETE = f"""
WITH gone AS (
  UPDATE notifications SET deleted = true
  WHERE app_id = $1 AND id = $2 AND NOT deleted RETURNING id
), entries AS (
  DELETE FROM inbox WHERE app_id = $1 AND nid = $2 RETURNING user_id, state, expires_at
), states AS (
  DELETE FROM feed_state WHERE app_id = $1 AND nid = $2
), bumped AS (  -- the app's revision: a feed item's followers are not listed
  {BUMP_REV} SELECT $1, '', 1 FROM gone {ON_REV}
)
SELECT coalesce((SELECT array_agg(user_id) FROM entries), '{{}}'),
       coalesce((SELECT array_agg(state) FROM entries), '{{}}'),
       coalesce((SELECT array_agg(expires_at) FROM entries), '{{}}')
FROM gone
"""


# Group commit (committer.py): many publishes of one app to lists of users,
# one statement.  $1 app, $2 the idempotency window; per item, in the
# order they were submitted: $3 ids, $4 categories, $5 bodies, $6 created_at,
# $7 expires_at, $8 idempotency keys (NULL: none), $9 fingerprints; per
# (item, recipient) pair: $10 the item's position (1-based), $11 the user.
#
# Locks are taken in one order: every claimed key first (sorted), then every
# stream (sorted), as a single publish_once does.  ``go`` needs the whole
# ``claims`` CTE (the array_agg), and the streams upsert sorts all of ``go``
# before it locks its first row.  A user addressed by k items of the group
# moves k seqs at once; the items get them in submission order.  A key that
# was not claimed (a retry, or a concurrent publish with that key) publishes
# nothing; its first result is read after the commit.
PUBLISH_MANY = f"""
WITH item AS (
  SELECT * FROM unnest($3::text[], $4::text[], $5::bytea[], $6::float8[], $7::float8[],
                       $8::text[], $9::text[])
    WITH ORDINALITY AS t(id, category, body, created_at, expires_at, key, fp, i)
),
audience AS (
  SELECT p.i, p.u COLLATE "C" AS u, EXISTS (
    SELECT 1 FROM mutes m WHERE m.app_id = $1 AND m.category = t.category AND m.user_id = p.u
  ) AS muted
  FROM unnest($10::int[], $11::text[]) AS p(i, u) JOIN item t ON t.i = p.i
),
sizes AS (
  SELECT i, count(*) AS total, count(*) FILTER (WHERE NOT muted) AS n
  FROM audience GROUP BY i
),
claims AS (
  INSERT INTO idempotency AS k (app_id, key, result, created_at)
  SELECT $1, t.key, convert_to(json_build_object(
           'id', t.id, 'recipients', coalesce(s.n, 0), 'muted', coalesce(s.total - s.n, 0),
           'fp', t.fp)::text, 'UTF8'), t.created_at
  FROM item t LEFT JOIN sizes s ON s.i = t.i
  WHERE t.key IS NOT NULL ORDER BY t.key COLLATE "C"
  ON CONFLICT (app_id, key) DO UPDATE SET result = EXCLUDED.result,
    created_at = EXCLUDED.created_at
  WHERE k.created_at <= EXCLUDED.created_at - $2
  RETURNING key
),
go AS (
  SELECT t.* FROM item t
  WHERE t.key IS NULL OR t.key = ANY ((SELECT array_agg(key) FROM claims)::text[])
),
heads AS (
  INSERT INTO streams AS s (app_id, user_id, epoch, head_seq)
  SELECT $1, a.u, left(gen_random_uuid()::text, 8), count(*)
  FROM audience a JOIN go ON go.i = a.i WHERE NOT a.muted
  GROUP BY a.u ORDER BY a.u
  ON CONFLICT (app_id, user_id) DO UPDATE SET head_seq = s.head_seq + EXCLUDED.head_seq
  RETURNING user_id, epoch, head_seq
),
seqs AS (
  SELECT a.i, a.u, h.epoch,
         h.head_seq - count(*) OVER w + row_number() OVER (w ORDER BY a.i) AS seq
  FROM audience a JOIN go ON go.i = a.i JOIN heads h ON h.user_id = a.u
  WHERE NOT a.muted
  WINDOW w AS (PARTITION BY a.u)
),
notes AS (
  INSERT INTO notifications (app_id, id, category, body, recipients, created_at, expires_at)
  SELECT $1, g.id, g.category, g.body, coalesce(s.n, 0), g.created_at, g.expires_at
  FROM go g LEFT JOIN sizes s ON s.i = g.i
),
entries AS (
  INSERT INTO inbox (app_id, user_id, seq, nid, created_at, expires_at, body)
  SELECT $1, q.u, q.seq, g.id, g.created_at, g.expires_at,
         {ENTRY_BODY.format("g.body", "g.body")} FROM seqs q JOIN go g ON g.i = q.i
)
SELECT t.i, g.i IS NOT NULL, coalesce(s.total, 0), d.users, d.epochs, d.seqs
FROM item t LEFT JOIN sizes s ON s.i = t.i LEFT JOIN go g ON g.i = t.i
LEFT JOIN (SELECT i, array_agg(u) AS users, array_agg(epoch) AS epochs, array_agg(seq) AS seqs
           FROM seqs GROUP BY i) AS d ON d.i = t.i
ORDER BY t.i
"""
