-- 0005_profile.sql (PostgreSQL) — as ../0005_profile.sql.
ALTER TABLE models ADD COLUMN profile TEXT;
ALTER TABLE models ADD COLUMN profile_layers BIGINT;
ALTER TABLE models ADD COLUMN profile_size BIGINT;
ALTER TABLE jobs ADD COLUMN profile TEXT;
CREATE INDEX models_by_profile ON models (profile);
CREATE INDEX jobs_by_profile ON jobs (profile);
