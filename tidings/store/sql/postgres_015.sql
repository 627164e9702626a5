-- tidings schema v15 (PostgreSQL): one token of a user revoked, by its jti.
-- POST /v1/users/{user}/tokens/revoke with a jti or a token (tidings
-- revoke-tokens --jti) refuses the user's token carrying that jti until
-- revoked_until (Unix seconds, when the token expires), one row per token.
-- Every node reads the rows into memory and again every few seconds, those
-- written since it last read (revoked_at leads an index for that). A row
-- past revoked_until refuses nothing: the app's next revocation deletes it.
CREATE TABLE IF NOT EXISTS revoked_tokens (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  jti text COLLATE "C" NOT NULL,
  revoked_until double precision NOT NULL, revoked_at double precision NOT NULL,
  PRIMARY KEY (app_id, user_id, jti)
);
CREATE INDEX IF NOT EXISTS revoked_tokens_at ON revoked_tokens (revoked_at);
