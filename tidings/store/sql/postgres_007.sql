-- tidings schema v7 (PostgreSQL): delivery receipts from devices (see sqlite_006.sql).
CREATE TABLE receipts (
  app_id text COLLATE "C" NOT NULL, nid text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
  user_id text COLLATE "C" NOT NULL, at double precision NOT NULL,
  PRIMARY KEY (app_id, nid, kind, user_id)
);
