-- 0002_model_spec.sql — a model may carry its layer spec (PUT
-- /v1/models/{id}/spec), so jobs on it can omit theirs. Canonical JSON, as
-- decomp_spec_to_json gives it; NULL when none was given.
ALTER TABLE models ADD COLUMN spec TEXT;
