-- tidings schema v4 (SQLite): pending push and e-mail of one group collapse.
-- No semicolons inside comments: the runner splits on them.
-- A fallback job of a notification with a group_key carries the key (collapse).
-- A newer notification of the group replaces the user's pending job for that
-- channel instead of adding one, so 42 likes are one e-mail, not 42.
ALTER TABLE jobs ADD COLUMN collapse TEXT;
CREATE INDEX IF NOT EXISTS jobs_collapse ON jobs (app_id, user_id, channel, collapse)
  WHERE status = 'queued' AND collapse IS NOT NULL;
