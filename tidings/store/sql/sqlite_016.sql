-- tidings schema v16 (SQLite): the categories an app declares.
-- No semicolons inside comments: the runner splits on them.
-- PUT /v1/categories (admin key) replaces the app's list, one JSON document
-- per app (tidings.core.models.Categories: key, label, description), read by
-- GET /v1/categories and by users (GET /v1/me/categories) for a preferences
-- screen. Nothing that delivers reads it.
CREATE TABLE IF NOT EXISTS app_categories (
  app_id TEXT PRIMARY KEY, doc BLOB NOT NULL
) WITHOUT ROWID;
