-- tidings schema v12 (SQLite): an app's signing secret can be rotated, with an overlap.
-- A rotation (POST /v1/signing-secret/rotate, tidings app rotate-secret) keeps the
-- secret it replaces in previous_secret, still taken for tokens until previous_until
-- (unix seconds). Apps never rotated keep both NULL.
ALTER TABLE apps ADD COLUMN previous_secret TEXT;
ALTER TABLE apps ADD COLUMN previous_until REAL;
