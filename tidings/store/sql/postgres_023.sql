-- tidings schema v23 (PostgreSQL): the layout does not change.
-- SQLite's v23 drops its inbox index by notification id and keeps each
-- notification's recipients on its row instead (sqlite_023.sql). The
-- PostgreSQL store keeps inbox_nid, and this number keeps both dialects at
-- the same version. A script must hold a statement (an empty one is an
-- error for the driver): the index says why it stays.
COMMENT ON INDEX inbox_nid IS
  'finds the recipients of a notification (retract, correct, counts by state)';
