-- 0005_profile.sql — latency profiles (decompd.profile's JSON: per layer the
-- time of the layer and of each candidate pair over a grid of ranks, on the
-- user's device) attached to models, and the one a job runs with.
--
-- The same shape as calibrations (0004): models.profile is the digest of
-- the attached profile's blob (PUT /v1/models/{id}/profile; NULL when
-- none), with the layers it covers and its size; jobs.profile is the digest
-- the job was submitted with (NULL: none), part of the job's identity
-- (request_key), and keeps the blob alive while the job exists. A blob is
-- collected when no models.digest, models.calibration, models.profile,
-- jobs.calibration, jobs.profile or artifacts.digest names it.
ALTER TABLE models ADD COLUMN profile TEXT;
ALTER TABLE models ADD COLUMN profile_layers INTEGER;
ALTER TABLE models ADD COLUMN profile_size INTEGER;
ALTER TABLE jobs ADD COLUMN profile TEXT;
CREATE INDEX models_by_profile ON models (profile);
CREATE INDEX jobs_by_profile ON jobs (profile);
