-- 0004_calibration.sql (PostgreSQL) — as ../0004_calibration.sql.
ALTER TABLE models ADD COLUMN calibration TEXT;
ALTER TABLE models ADD COLUMN calibration_layers BIGINT;
ALTER TABLE models ADD COLUMN calibration_size BIGINT;
ALTER TABLE models ADD COLUMN archive_spec TEXT;
ALTER TABLE jobs ADD COLUMN calibration TEXT;
CREATE INDEX models_by_calibration ON models (calibration);
CREATE INDEX jobs_by_calibration ON jobs (calibration);
