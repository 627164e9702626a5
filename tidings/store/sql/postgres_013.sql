-- tidings schema v13 (PostgreSQL): dashboard sessions that were logged out.
-- No semicolons inside comments: the runner splits on them.
-- A session is a signed cookie that no node keeps (tidings/dashboard/session.py).
-- Logging out keeps its id here until the session would have expired anyway
-- (expires, unix seconds), and every node refuses a session whose id is here.
-- A logout deletes the rows whose session has expired by then.
CREATE TABLE IF NOT EXISTS ended_sessions (
  id text COLLATE "C" PRIMARY KEY,
  expires double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS ended_sessions_expires ON ended_sessions (expires);
