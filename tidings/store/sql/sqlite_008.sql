-- tidings schema v8 (SQLite): delivery receipts per device.
-- No semicolons inside comments: the runner splits on them.
-- The receipts table keeps one row per user (the unique-user counts), this
-- one the first devices of each user (at most MAX_DEVICES of
-- tidings.core.receipts per notification, kind and user) for the timeline,
-- with the time the server received each device's batch and its label.
-- Only for a user with a receipts row: what the user cannot see has none.
CREATE TABLE IF NOT EXISTS device_receipts (
  app_id TEXT NOT NULL, nid TEXT NOT NULL, user_id TEXT NOT NULL, kind TEXT NOT NULL,
  device TEXT NOT NULL, label TEXT, at REAL NOT NULL,
  PRIMARY KEY (app_id, nid, user_id, kind, device)
) WITHOUT ROWID;
