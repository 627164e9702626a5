-- tidings schema v15 (SQLite): one token of a user revoked, by its jti.
-- No semicolons inside comments: the runner splits on them.
-- POST /v1/users/{user}/tokens/revoke with a jti or a token (tidings
-- revoke-tokens --jti) refuses the user's token carrying that jti until
-- revoked_until (Unix seconds, when the token expires), one row per token.
-- Every node reads the rows into memory and again every few seconds, those
-- written since it last read (revoked_at leads an index for that). A row
-- past revoked_until refuses nothing: the app's next revocation deletes it.
CREATE TABLE IF NOT EXISTS revoked_tokens (
  app_id TEXT NOT NULL, user_id TEXT NOT NULL, jti TEXT NOT NULL,
  revoked_until REAL NOT NULL, revoked_at REAL NOT NULL,
  PRIMARY KEY (app_id, user_id, jti)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revoked_tokens_at ON revoked_tokens (revoked_at);
