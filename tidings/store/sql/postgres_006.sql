-- tidings schema v6 (PostgreSQL): digests (see sqlite_005.sql).
CREATE TABLE digest_items (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  channel text COLLATE "C" NOT NULL, rule text COLLATE "C" NOT NULL,
  nid text COLLATE "C" NOT NULL, destination bytea NOT NULL, notification bytea NOT NULL,
  created_at double precision NOT NULL, expires_at double precision,
  due_at double precision NOT NULL,
  PRIMARY KEY (app_id, user_id, channel, rule, nid, destination)
);
CREATE INDEX digest_items_due ON digest_items (due_at);
CREATE INDEX digest_items_nid ON digest_items (app_id, nid);
