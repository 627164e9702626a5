-- tidings schema v10 (PostgreSQL): one user's inbox page from one place.
-- A page used to read each entry's body from its notification row: about
-- twenty random heap and index pages per page view, on a table that does not
-- fit shared_buffers at a million users.  The entry now carries a copy of a
-- body up to 1024 bytes (larger ones, and rows written before this version,
-- stay NULL and are read from notifications as before), and inbox_page holds
-- everything a page and the counts read, in (user, id) order: a page is an
-- index-only scan of one or two leaf pages, newest first, with no sort.
-- Building the index locks inbox writes for its duration (about a minute per
-- ten million entries here; docs/operations.md).
ALTER TABLE inbox ADD COLUMN IF NOT EXISTS body bytea;
CREATE INDEX IF NOT EXISTS inbox_page ON inbox (app_id, user_id, nid)
  INCLUDE (state, seq, created_at, expires_at, gid, body);
