-- tidings schema v20 (SQLite): the revision of each user's counts.
-- No semicolons inside comments: the runner splits on them.
-- A change that moves a user's counts without a seq or a feed offset (a
-- state change, a retraction, a topic joined or left, an in-app mute, a
-- retention sweep) adds one to rev in its own transaction, and the counts
-- read it in the same statement: of two counts read at the same position,
-- the one with the higher rev was read later (docs/protocol.md, "Counts and
-- the badge"). user_id '' (no user id is empty) is the app's own row, for
-- changes that move every user's counts at once: the counts add both.
CREATE TABLE IF NOT EXISTS counts_revs (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, rev INTEGER NOT NULL,
  PRIMARY KEY (app_id, user_id)
) WITHOUT ROWID;
