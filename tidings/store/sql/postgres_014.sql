-- tidings schema v14 (PostgreSQL): a user's tokens revoked before a moment.
-- POST /v1/users/{user}/tokens/revoke (tidings revoke-tokens) refuses every
-- token of the user whose iat is before revoked_before (Unix seconds), one
-- row per user, the cutoff only ever moved later. Every node reads the rows
-- into memory and again every few seconds, those newer than it last read
-- (revoked_before leads an index for that). A row older than token_max_ttl
-- refuses nothing that has not expired: the app's next revocation deletes it.
CREATE TABLE IF NOT EXISTS token_revocations (
  app_id text COLLATE "C" NOT NULL, user_id text COLLATE "C" NOT NULL,
  revoked_before double precision NOT NULL,
  PRIMARY KEY (app_id, user_id)
);
CREATE INDEX IF NOT EXISTS token_revocations_before ON token_revocations (revoked_before);
