-- 0003_job_current.sql — where a running job is inside its current layer:
-- the layer the engine last reported, its step ('spectrum' or 'factors')
-- and the engine's estimate of that step done (0..1), updated at the
-- engine's progress reports (at most every 0.5 s). Shown while the job
-- runs; reset when it is claimed and when a layer finishes.
ALTER TABLE jobs ADD COLUMN current_layer TEXT;
ALTER TABLE jobs ADD COLUMN current_step TEXT;
ALTER TABLE jobs ADD COLUMN current_fraction REAL;
