-- tidings schema v5 (SQLite): digests (tidings/core/digest.py, docs/channels.md).
-- No semicolons inside comments: the runner splits on them.
-- One row per notification held for a user's digest, per channel and
-- destination.  A window is the rows of one (app, user, channel, rule), and
-- its due_at is the one the first row got: later rows copy it.  Sending
-- deletes the window's rows and queues the digest job in one transaction.
CREATE TABLE IF NOT EXISTS digest_items (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, channel TEXT NOT NULL, rule TEXT NOT NULL,
  nid TEXT NOT NULL, destination BLOB NOT NULL, notification BLOB NOT NULL,
  created_at REAL NOT NULL, expires_at REAL, due_at REAL NOT NULL,
  PRIMARY KEY (app_id, user_id, channel, rule, nid, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS digest_items_due ON digest_items (due_at);
CREATE INDEX IF NOT EXISTS digest_items_nid ON digest_items (app_id, nid);
