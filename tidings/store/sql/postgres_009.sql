-- tidings schema v9 (PostgreSQL): delivery receipts per device (see sqlite_008.sql).
CREATE TABLE device_receipts (
  app_id text COLLATE "C" NOT NULL, nid text COLLATE "C" NOT NULL,
  user_id text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
  device text COLLATE "C" NOT NULL, label text, at double precision NOT NULL,
  PRIMARY KEY (app_id, nid, user_id, kind, device)
);
