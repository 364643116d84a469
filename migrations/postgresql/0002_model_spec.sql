-- 0002_model_spec.sql (PostgreSQL) — as ../0002_model_spec.sql.
ALTER TABLE models ADD COLUMN spec TEXT;
