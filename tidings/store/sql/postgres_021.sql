-- tidings schema v21 (PostgreSQL): the audit log of each app.
-- One row per change an admin key, a dashboard session, the CLI or the
-- operator made (tidings/core/audit.py lists the actions), written in the
-- change's transaction where the store method takes it, else right after.
-- id is time-ordered (tidings/core/ids.py), so the primary key serves the
-- newest-first pages of one app, their filters by action and by time, and
-- the cursor. details is a small JSON object and never holds a secret.
-- The retention sweep deletes rows older than audit_retention_days by at.
CREATE TABLE IF NOT EXISTS audit_log (
  app_id text COLLATE "C" NOT NULL,
  id text COLLATE "C" NOT NULL,
  at double precision NOT NULL,
  actor text NOT NULL,
  address text,
  action text COLLATE "C" NOT NULL,
  target text,
  details text NOT NULL,
  PRIMARY KEY (app_id, id)
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);
