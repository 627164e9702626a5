-- tidings schema v1 (SQLite).  States: 0 unseen, 1 seen, 2 read, 3 archived.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, signing_secret TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
  prefix TEXT PRIMARY KEY, app_id TEXT NOT NULL REFERENCES apps(id), hash TEXT NOT NULL,
  scopes TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
  app_id TEXT NOT NULL, id TEXT NOT NULL, category TEXT NOT NULL, body BLOB NOT NULL,
  audience TEXT, feed_offset INTEGER, recipients INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL, expires_at REAL, deleted INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (app_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS notifications_feed
  ON notifications (app_id, feed_offset) WHERE feed_offset IS NOT NULL;
CREATE TABLE IF NOT EXISTS streams (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, epoch TEXT NOT NULL, head_seq INTEGER NOT NULL,
  PRIMARY KEY (app_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, seq INTEGER NOT NULL, nid TEXT NOT NULL,
  state INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, expires_at REAL,
  PRIMARY KEY (app_id, user_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_nid ON inbox (app_id, nid);
CREATE TABLE IF NOT EXISTS feed_heads (app_id TEXT PRIMARY KEY, head INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feed_state (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, nid TEXT NOT NULL, state INTEGER NOT NULL,
  PRIMARY KEY (app_id, user_id, nid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topic_subs (
  app_id TEXT NOT NULL, topic TEXT NOT NULL, user_id TEXT NOT NULL,
  PRIMARY KEY (app_id, topic, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS topic_subs_user ON topic_subs (app_id, user_id);
CREATE TABLE IF NOT EXISTS prefs (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, doc BLOB NOT NULL, PRIMARY KEY (app_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mutes (
  app_id TEXT NOT NULL, category TEXT NOT NULL, user_id TEXT NOT NULL,
  PRIMARY KEY (app_id, category, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
  app_id TEXT NOT NULL, key TEXT NOT NULL, result BLOB NOT NULL, created_at REAL NOT NULL,
  PRIMARY KEY (app_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notifications_feed_audience
  ON notifications (app_id, audience, id) WHERE feed_offset IS NOT NULL;
ALTER TABLE streams ADD COLUMN floor_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE feed_heads ADD COLUMN floor INTEGER NOT NULL DEFAULT 0;
