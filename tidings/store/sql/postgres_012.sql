-- tidings schema v12 (PostgreSQL): an app's signing secret can be rotated, with an overlap.
-- A rotation (POST /v1/signing-secret/rotate, tidings app rotate-secret) keeps the
-- secret it replaces in previous_secret, still taken for tokens until previous_until
-- (unix seconds). Apps never rotated keep both NULL.
ALTER TABLE apps ADD COLUMN IF NOT EXISTS previous_secret text;
ALTER TABLE apps ADD COLUMN IF NOT EXISTS previous_until double precision;
