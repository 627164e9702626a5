-- tidings schema v23 (SQLite): no index on the inbox by notification id.
-- No semicolons inside comments: the runner splits on them.
-- inbox_nid cost every recipient of every publish one more B-tree entry,
-- under write fan-out about 45% of SQLite's work per inbox row. A
-- notification's row carries seqs instead, written once with it: the JSON
-- object of user id and seq of the plain entries (gid NULL) its publish
-- wrote, NULL or empty when it wrote none (feed items, group entries: those
-- are found through group_members). A plain entry keeps its nid and seq,
-- but a snoozed one that came back moves to a new seq and has a page_key:
-- inbox_back finds those few (tidings/store/sqlite/entries.py).
-- The rows written before are filled in from the index, which is then
-- dropped (built again first when a file whose version was set back runs
-- this again: only the rows still without seqs are read).
ALTER TABLE notifications ADD COLUMN seqs TEXT;
CREATE INDEX IF NOT EXISTS inbox_nid ON inbox (app_id, nid);
UPDATE notifications SET seqs = (
  SELECT json_group_object(i.user_id, i.seq) FROM inbox i
  WHERE i.app_id = notifications.app_id AND i.nid = notifications.id
    AND i.gid IS NULL AND i.page_key IS NULL
) WHERE feed_offset IS NULL AND seqs IS NULL;
CREATE INDEX IF NOT EXISTS inbox_back ON inbox (app_id, nid, user_id)
  WHERE page_key IS NOT NULL;
DROP INDEX IF EXISTS inbox_nid;
