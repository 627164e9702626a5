-- tidings schema v18 (PostgreSQL): one user's in-app mutes by user.
-- An inbox page or counts read for a user whose mutes the caller does not
-- hold (no stream of theirs on the node) reads them inside its own statement
-- from mutes, whose primary key leads with the category: this index finds
-- one user's rows (and serves the delete that rewrites them) without reading
-- every mute of the app. Small: one row per user and muted category.
CREATE INDEX IF NOT EXISTS mutes_user ON mutes (app_id, user_id, category);
