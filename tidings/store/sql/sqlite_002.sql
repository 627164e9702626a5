-- tidings schema v2 (SQLite): aggregation by group_key, scheduled delivery,
-- delivery tracking.  No semicolons inside comments: the runner splits on them.
--
-- A personal inbox entry made from a notification with a group_key carries
-- the key, the id of the entry's group (gid: the notification that opened
-- it, stable while later ones merge in) and the merged summary (grp, the
-- JSON of tidings.core.aggregate.GroupSummary).  Ungrouped entries leave the
-- three NULL, so the partial indexes below cost them nothing.
ALTER TABLE inbox ADD COLUMN group_key TEXT;
ALTER TABLE inbox ADD COLUMN gid TEXT;
ALTER TABLE inbox ADD COLUMN grp BLOB;
-- Finds the user's entries of a group key, among them the unread one a new
-- notification merges into.  (state stays out of the predicate: on
-- PostgreSQL that keeps marking entries read a HOT update.)
CREATE INDEX IF NOT EXISTS inbox_group
  ON inbox (app_id, group_key, user_id) WHERE group_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_gid ON inbox (app_id, user_id, gid) WHERE gid IS NOT NULL;
-- Every notification merged into a group entry, per user: lists a group's
-- members and maps an old member's id to the entry that now holds it.
CREATE TABLE IF NOT EXISTS group_members (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, nid TEXT NOT NULL, gid TEXT NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (app_id, user_id, nid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_gid ON group_members (app_id, user_id, gid, nid);
CREATE INDEX IF NOT EXISTS group_members_nid ON group_members (app_id, nid);
-- Notifications published with a future deliver_at, until they fire.
-- status: pending, sent, cancelled, expired.  payload: the notification to
-- publish when due (body, target, expiry), as JSON.
CREATE TABLE IF NOT EXISTS scheduled (
  app_id TEXT NOT NULL, id TEXT NOT NULL, due_at REAL NOT NULL, status TEXT NOT NULL,
  payload BLOB NOT NULL, expires_at REAL, created_at REAL NOT NULL, fired_at REAL,
  PRIMARY KEY (app_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled (due_at) WHERE status = 'pending';
-- Delivery tracking: counters per notification, channel and field
-- (in_app delivered, webhook sent, email failed, ...), added to in batches.
CREATE TABLE IF NOT EXISTS delivery_counts (
  app_id TEXT NOT NULL, nid TEXT NOT NULL, channel TEXT NOT NULL, field TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (app_id, nid, channel, field)
) WITHOUT ROWID;
