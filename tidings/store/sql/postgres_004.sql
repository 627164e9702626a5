-- tidings schema v4 (PostgreSQL): pending push and e-mail of one group collapse
-- (see sqlite_004.sql).
ALTER TABLE jobs ADD COLUMN collapse text COLLATE "C";
CREATE INDEX jobs_collapse ON jobs (app_id, user_id, channel, collapse)
  WHERE status = 'queued' AND collapse IS NOT NULL;
