-- tidings schema v7 (SQLite): the timeline of one notification for one user.
-- No semicolons inside comments: the runner splits on them.
-- When an entry first became seen, read and archived: set by the UPDATE
-- that moves its state (no write of its own), NULL for older rows.
ALTER TABLE inbox ADD COLUMN seen_at REAL;
ALTER TABLE inbox ADD COLUMN read_at REAL;
ALTER TABLE inbox ADD COLUMN archived_at REAL;
ALTER TABLE feed_state ADD COLUMN seen_at REAL;
ALTER TABLE feed_state ADD COLUMN read_at REAL;
ALTER TABLE feed_state ADD COLUMN archived_at REAL;
-- When the publish transaction wrote the notification (set by its own INSERT).
ALTER TABLE notifications ADD COLUMN committed_at REAL;
-- One row per attempt of an outbound job (webhook, push, e-mail), written in
-- the transaction that records the attempt's result: result sent, failed
-- (next_at: the retry) or dead.  Kept as long as dead letters (retention).
CREATE TABLE IF NOT EXISTS job_attempts (
  app_id TEXT NOT NULL, nid TEXT NOT NULL, user_id TEXT NOT NULL, job_id TEXT NOT NULL,
  attempt INTEGER NOT NULL, channel TEXT NOT NULL, at REAL NOT NULL, result TEXT NOT NULL,
  error TEXT, next_at REAL,
  PRIMARY KEY (app_id, nid, user_id, job_id, at, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_attempts_at ON job_attempts (at);
