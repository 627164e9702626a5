-- tidings schema v22 (PostgreSQL): snoozed inbox entries.
-- A snoozed entry has state 4 (every page filter but snoozed and all, and
-- the counts, leave it out as they leave out archived ones) and the time
-- it comes back, snoozed_until.  page_key is the place in the page of an
-- entry that came back (a time-ordered id of the moment it did), NULL for
-- every other entry, whose place is its notification id.  Both columns are
-- NULL for every existing row: adding them rewrites nothing.
ALTER TABLE inbox ADD COLUMN IF NOT EXISTS snoozed_until double precision;
ALTER TABLE inbox ADD COLUMN IF NOT EXISTS page_key text COLLATE "C";
-- The scheduler's look for snoozes that are due (FOR UPDATE SKIP LOCKED),
-- and a page's entries that came back (with nid: a page reads them from it
-- alone, postgres/sql.py): small, only the rows concerned.
CREATE INDEX IF NOT EXISTS inbox_snoozed ON inbox (snoozed_until)
  WHERE snoozed_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_resurfaced ON inbox (app_id, user_id, page_key)
  INCLUDE (nid) WHERE page_key IS NOT NULL;
