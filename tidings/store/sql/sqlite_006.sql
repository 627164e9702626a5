-- tidings schema v6 (SQLite): delivery receipts from devices.
-- No semicolons inside comments: the runner splits on them.
-- One row per notification, kind (delivered or displayed) and user, with the
-- time the first acknowledgement was written: unique users by construction,
-- a device repeating itself changes nothing.
CREATE TABLE IF NOT EXISTS receipts (
  app_id TEXT NOT NULL, nid TEXT NOT NULL, kind TEXT NOT NULL, user_id TEXT NOT NULL,
  at REAL NOT NULL,
  PRIMARY KEY (app_id, nid, kind, user_id)
) WITHOUT ROWID;
