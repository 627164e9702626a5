-- tidings schema v10 (SQLite): API keys have a name, and are listed per app.
-- Keys are created, listed and revoked by their app (/v1/keys, tidings key):
-- a name says what a key is for, and api_keys_app lists one app's keys
-- without reading every app's. Keys made before keep no name (NULL).
ALTER TABLE api_keys ADD COLUMN name TEXT;
CREATE INDEX IF NOT EXISTS api_keys_app ON api_keys(app_id, created_at);
