-- tidings schema v3 (PostgreSQL): outbound channels (docs/channels.md).
-- The same tables as sqlite_003.sql, with the conventions of postgres_001.sql
-- (identifiers COLLATE "C", times in double precision, documents in bytea).
CREATE TABLE webhooks (
  app_id text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL, url text NOT NULL,
  secret text NOT NULL, previous_secret text, previous_until double precision,
  created_at double precision NOT NULL,
  PRIMARY KEY (app_id, id)
);
CREATE TABLE push_subscriptions (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  id text COLLATE "C" NOT NULL, endpoint text NOT NULL, p256dh text NOT NULL,
  auth text NOT NULL, created_at double precision NOT NULL,
  PRIMARY KEY (app_id, user_id, id)
);
CREATE TABLE emails (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  address text NOT NULL, name text NOT NULL DEFAULT '',
  PRIMARY KEY (app_id, user_id)
);
CREATE TABLE caps (app_id text COLLATE "C" PRIMARY KEY, doc bytea NOT NULL);
-- The job queue and its dead-letter list (status 'queued' or 'dead').  Nodes
-- claim with FOR UPDATE SKIP LOCKED and a lease (lease_until), so a job is
-- sent by one node at a time while the lease holds.
CREATE TABLE jobs (
  id text COLLATE "C" PRIMARY KEY, app_id text COLLATE "C" NOT NULL,
  user_id text COLLATE "C" NOT NULL, nid text COLLATE "C" NOT NULL,
  channel text COLLATE "C" NOT NULL, destination bytea NOT NULL, notification bytea NOT NULL,
  created_at double precision NOT NULL, expires_at double precision,
  not_before double precision NOT NULL, attempts integer NOT NULL DEFAULT 0, last_error text,
  status text COLLATE "C" NOT NULL DEFAULT 'queued', lease_until double precision,
  fallback boolean NOT NULL DEFAULT false, updated_at double precision NOT NULL
);
CREATE INDEX jobs_due ON jobs (channel, not_before) WHERE status = 'queued';
CREATE INDEX jobs_user ON jobs (app_id, user_id, nid) WHERE status = 'queued';
CREATE INDEX jobs_app ON jobs (app_id, nid, id);
CREATE INDEX jobs_dead ON jobs (app_id, id) WHERE status = 'dead';
CREATE INDEX jobs_dead_age ON jobs (updated_at) WHERE status = 'dead';
