-- 0007_job_lease.sql (PostgreSQL) — as ../0007_job_lease.sql: the claiming
-- node and the lease's end (Unix ms, PostgreSQL's clock), renewed by that
-- node's heartbeat while the job runs.
ALTER TABLE jobs ADD COLUMN lease_node TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires BIGINT;
CREATE INDEX jobs_by_lease ON jobs (state, lease_expires);
