-- tidings schema v8 (PostgreSQL): the timeline of one notification for one
-- user (see sqlite_007.sql).  committed_at defaults to the clock at the
-- INSERT, inside the publish transaction (older rows stay NULL: a default
-- set after the column is added leaves them alone).
ALTER TABLE inbox ADD COLUMN seen_at double precision,
  ADD COLUMN read_at double precision, ADD COLUMN archived_at double precision;
ALTER TABLE feed_state ADD COLUMN seen_at double precision,
  ADD COLUMN read_at double precision, ADD COLUMN archived_at double precision;
ALTER TABLE notifications ADD COLUMN committed_at double precision;
ALTER TABLE notifications ALTER COLUMN committed_at
  SET DEFAULT extract(epoch FROM clock_timestamp());
CREATE TABLE job_attempts (
  app_id text COLLATE "C" NOT NULL, nid text COLLATE "C" NOT NULL,
  user_id text COLLATE "C" NOT NULL, job_id text COLLATE "C" NOT NULL,
  attempt integer NOT NULL, channel text COLLATE "C" NOT NULL, at double precision NOT NULL,
  result text COLLATE "C" NOT NULL, error text, next_at double precision,
  PRIMARY KEY (app_id, nid, user_id, job_id, at, attempt)
);
CREATE INDEX job_attempts_at ON job_attempts (at);
