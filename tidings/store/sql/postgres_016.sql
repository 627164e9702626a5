-- tidings schema v16 (PostgreSQL): the categories an app declares.
-- PUT /v1/categories (admin key) replaces the app's list, one JSON document
-- per app (tidings.core.models.Categories: key, label, description), read by
-- GET /v1/categories and by users (GET /v1/me/categories) for a preferences
-- screen. Nothing that delivers reads it.
CREATE TABLE IF NOT EXISTS app_categories (
  app_id text COLLATE "C" PRIMARY KEY, doc bytea NOT NULL
);
