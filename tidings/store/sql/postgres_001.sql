-- tidings schema v1 (PostgreSQL 13+).  States: 0 unseen, 1 seen, 2 read, 3 archived.
--
-- The same tables as sqlite_001.sql.  Differences:
-- * Identifiers (app, user, notification id, topic, key) are COLLATE "C": ids
--   sort by their bytes as in SQLite (newest first == id order), the B-trees
--   compare faster, and "sort the recipients" means the same order in Python
--   and in SQL, which is the lock order of every multi-user write.
-- * Times are double precision (seconds since the epoch, like SQLite's REAL),
--   so a float written is the float read back.
-- * Bodies and documents are bytea; deleted is a boolean.
-- Applied by `tidings migrate` in one transaction (tidings/store/migrations.py).
CREATE TABLE IF NOT EXISTS meta (key text COLLATE "C" PRIMARY KEY, value text NOT NULL);
CREATE TABLE apps (
  id text COLLATE "C" PRIMARY KEY, name text NOT NULL, signing_secret text NOT NULL,
  created_at double precision NOT NULL
);
CREATE TABLE api_keys (
  prefix text COLLATE "C" PRIMARY KEY, app_id text COLLATE "C" NOT NULL REFERENCES apps(id),
  hash text NOT NULL, scopes text NOT NULL, created_at double precision NOT NULL
);
CREATE TABLE notifications (
  app_id text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL, category text NOT NULL,
  body bytea NOT NULL, audience text COLLATE "C", feed_offset bigint,
  recipients integer NOT NULL DEFAULT 0, created_at double precision NOT NULL,
  expires_at double precision, deleted boolean NOT NULL DEFAULT false,
  PRIMARY KEY (app_id, id)
);
CREATE UNIQUE INDEX notifications_feed
  ON notifications (app_id, feed_offset) WHERE feed_offset IS NOT NULL;
CREATE INDEX notifications_feed_audience
  ON notifications (app_id, audience, id) WHERE feed_offset IS NOT NULL;
-- One row per user: the row lock taken by "head_seq = head_seq + 1" is what
-- serialises concurrent publishes to one user across every node.
CREATE TABLE streams (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL, epoch text NOT NULL,
  head_seq bigint NOT NULL, floor_seq bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (app_id, user_id)
);
CREATE TABLE inbox (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL, seq bigint NOT NULL,
  nid text COLLATE "C" NOT NULL, state smallint NOT NULL DEFAULT 0,
  created_at double precision NOT NULL, expires_at double precision,
  PRIMARY KEY (app_id, user_id, seq)
);
CREATE INDEX inbox_nid ON inbox (app_id, nid);
-- The app's read fan-out timeline: the same row lock hands out feed offsets.
CREATE TABLE feed_heads (
  app_id text COLLATE "C" PRIMARY KEY, head bigint NOT NULL, floor bigint NOT NULL DEFAULT 0
);
CREATE TABLE feed_state (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  nid text COLLATE "C" NOT NULL, state smallint NOT NULL,
  PRIMARY KEY (app_id, user_id, nid)
);
CREATE TABLE topic_subs (
  app_id text COLLATE "C" NOT NULL, topic text COLLATE "C" NOT NULL,
  user_id text COLLATE "C" NOT NULL,
  PRIMARY KEY (app_id, topic, user_id)
);
CREATE INDEX topic_subs_user ON topic_subs (app_id, user_id);
CREATE TABLE prefs (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL, doc bytea NOT NULL,
  PRIMARY KEY (app_id, user_id)
);
CREATE TABLE mutes (
  app_id text COLLATE "C" NOT NULL, category text COLLATE "C" NOT NULL,
  user_id text COLLATE "C" NOT NULL,
  PRIMARY KEY (app_id, category, user_id)
);
CREATE TABLE idempotency (
  app_id text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL, result bytea NOT NULL,
  created_at double precision NOT NULL,
  PRIMARY KEY (app_id, key)
);
