-- tidings schema v20 (PostgreSQL): the revision of each user's counts.
-- A change that moves a user's counts without a seq or a feed offset (a
-- state change, a retraction, a topic joined or left, an in-app mute, a
-- retention sweep) adds one to rev in its own transaction, and the counts
-- read it in the same statement: of two counts read at the same position,
-- the one with the higher rev was read later (docs/protocol.md, "Counts and
-- the badge"). user_id '' (no user id is empty) is the app's own row, for
-- changes that move every user's counts at once: the counts add both.
-- A table of its own, not a column of streams: a publish locks its
-- recipients' streams rows, and a state change must not wait for it.
CREATE TABLE IF NOT EXISTS counts_revs (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL, rev bigint NOT NULL,
  PRIMARY KEY (app_id, user_id)
);
