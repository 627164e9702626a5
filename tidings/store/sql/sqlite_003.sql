-- tidings schema v3 (SQLite): outbound channels (docs/channels.md).
-- No semicolons inside comments: the runner splits on them.
-- Destinations: an app's webhook endpoints (secrets in plain text, as HMAC
-- needs them), users' Web Push subscriptions and e-mail addresses, and the
-- app's frequency caps per category.
CREATE TABLE IF NOT EXISTS webhooks (
  app_id TEXT NOT NULL, id TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,
  previous_secret TEXT, previous_until REAL, created_at REAL NOT NULL,
  PRIMARY KEY (app_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS push_subscriptions (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, id TEXT NOT NULL, endpoint TEXT NOT NULL,
  p256dh TEXT NOT NULL, auth TEXT NOT NULL, created_at REAL NOT NULL,
  PRIMARY KEY (app_id, user_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS emails (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, address TEXT NOT NULL,
  name TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (app_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS caps (app_id TEXT PRIMARY KEY, doc BLOB NOT NULL) WITHOUT ROWID;
-- The job queue and its dead-letter list (status 'queued' or 'dead').  A job
-- is due when not_before has passed and no lease holds it.  Delivered and
-- cancelled jobs are deleted, dead ones stay until retention drops them.
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, app_id TEXT NOT NULL, user_id TEXT NOT NULL, nid TEXT NOT NULL,
  channel TEXT NOT NULL, destination BLOB NOT NULL, notification BLOB NOT NULL,
  created_at REAL NOT NULL, expires_at REAL, not_before REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
  status TEXT NOT NULL DEFAULT 'queued', lease_until REAL,
  fallback INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (channel, not_before) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (app_id, user_id, nid) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_app ON jobs (app_id, nid, id);
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs (app_id, id) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS jobs_dead_age ON jobs (updated_at) WHERE status = 'dead';
