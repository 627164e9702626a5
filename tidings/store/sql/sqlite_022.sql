-- tidings schema v22 (SQLite): snoozed inbox entries.
-- No semicolons inside comments: the runner splits on them.
-- A snoozed entry has state 4 (every page filter but snoozed and all, and
-- the counts, leave it out as they leave out archived ones) and the time
-- it comes back, snoozed_until. page_key is the place in the page of an
-- entry that came back (a time-ordered id of the moment it did), NULL for
-- every other entry, whose place is its notification id.
ALTER TABLE inbox ADD COLUMN snoozed_until REAL;
ALTER TABLE inbox ADD COLUMN page_key TEXT;
-- The scheduler's look for snoozes that are due: only snoozed rows.
CREATE INDEX IF NOT EXISTS inbox_snoozed ON inbox (snoozed_until) WHERE snoozed_until IS NOT NULL;
