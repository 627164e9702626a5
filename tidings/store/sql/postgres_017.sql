-- tidings schema v17 (PostgreSQL): API keys may expire, and keep their last use.
-- expires_at (Unix seconds, NULL for never) is set when a key is created
-- with one, or when a rotation replaces it. From then on the key is refused
-- (401 key_expired) and stays listed until it is revoked. last_used_at is
-- written by each node at most once a minute per key, from what it noted in
-- memory (tidings/service/keys.py), never on a request. Keys made before
-- never expire and have no last use until their next one.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at double precision;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS last_used_at double precision;
