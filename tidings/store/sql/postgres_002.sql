-- tidings schema v2 (PostgreSQL): aggregation by group_key, scheduled
-- delivery, delivery tracking.  The same tables as sqlite_002.sql, with the
-- types and collations of postgres_001.sql.
--
-- A personal inbox entry made from a notification with a group_key carries
-- the key, the id of the entry's group (gid: the notification that opened
-- it, stable while later ones merge in) and the merged summary (grp, the
-- JSON of tidings.core.aggregate.GroupSummary).  Ungrouped entries leave the
-- three NULL, so the partial indexes below cost them nothing.
ALTER TABLE inbox ADD COLUMN group_key text COLLATE "C";
ALTER TABLE inbox ADD COLUMN gid text COLLATE "C";
ALTER TABLE inbox ADD COLUMN grp bytea;
-- Finds the user's entries of a group key, among them the unread one a new
-- notification merges into.  (state stays out of the predicate: that keeps
-- marking entries read a HOT update.)
CREATE INDEX inbox_group
  ON inbox (app_id, group_key, user_id) WHERE group_key IS NOT NULL;
CREATE INDEX inbox_gid ON inbox (app_id, user_id, gid) WHERE gid IS NOT NULL;
-- Every notification merged into a group entry, per user: lists a group's
-- members and maps an old member's id to the entry that now holds it.
CREATE TABLE group_members (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  nid text COLLATE "C" NOT NULL, gid text COLLATE "C" NOT NULL,
  created_at double precision NOT NULL,
  PRIMARY KEY (app_id, user_id, nid)
);
CREATE INDEX group_members_gid ON group_members (app_id, user_id, gid, nid);
CREATE INDEX group_members_nid ON group_members (app_id, nid);
-- Notifications published with a future deliver_at, until they fire.
-- status: pending, sent, cancelled, expired.  payload: the notification to
-- publish when due (body, target, expiry), as JSON.  Nodes claim due rows
-- with FOR UPDATE SKIP LOCKED inside the transaction that publishes them.
CREATE TABLE scheduled (
  app_id text COLLATE "C" NOT NULL, id text COLLATE "C" NOT NULL,
  due_at double precision NOT NULL, status text NOT NULL, payload bytea NOT NULL,
  expires_at double precision, created_at double precision NOT NULL,
  fired_at double precision,
  PRIMARY KEY (app_id, id)
);
CREATE INDEX scheduled_due ON scheduled (due_at) WHERE status = 'pending';
-- Delivery tracking: counters per notification, channel and field
-- (in_app delivered, webhook sent, email failed, ...), added to in batches.
CREATE TABLE delivery_counts (
  app_id text COLLATE "C" NOT NULL, nid text COLLATE "C" NOT NULL,
  channel text COLLATE "C" NOT NULL, field text COLLATE "C" NOT NULL, n bigint NOT NULL,
  PRIMARY KEY (app_id, nid, channel, field)
);
