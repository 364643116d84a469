-- 0003_job_current.sql (PostgreSQL) — as ../0003_job_current.sql.
ALTER TABLE jobs ADD COLUMN current_layer TEXT;
ALTER TABLE jobs ADD COLUMN current_step TEXT;
ALTER TABLE jobs ADD COLUMN current_fraction DOUBLE PRECISION;
