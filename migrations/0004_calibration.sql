-- 0004_calibration.sql — calibrations (the Gram matrices of layers' inputs,
-- a decompd.calibration safetensors file) attached to models, and the one a
-- job runs with.
--
-- models.calibration is the digest of the attached calibration's blob (PUT
-- /v1/models/{id}/calibration; NULL when none), with the layers it covers
-- and its size. models.archive_spec is a TorchScript model's layer spec as
-- its archive gave it (canonical JSON), recorded by the first job that
-- loaded the archive, so that a calibration can be checked against it.
-- jobs.calibration is the digest the job was submitted with (NULL: none);
-- it is part of the job's identity (request_key) and keeps the blob alive
-- while the job exists. A blob is collected when no models.digest,
-- models.calibration, jobs.calibration or artifacts.digest names it.
ALTER TABLE models ADD COLUMN calibration TEXT;
ALTER TABLE models ADD COLUMN calibration_layers INTEGER;
ALTER TABLE models ADD COLUMN calibration_size INTEGER;
ALTER TABLE models ADD COLUMN archive_spec TEXT;
ALTER TABLE jobs ADD COLUMN calibration TEXT;
CREATE INDEX models_by_calibration ON models (calibration);
CREATE INDEX jobs_by_calibration ON jobs (calibration);
