-- 0010_job_tasks.sql — one job's work cut into tasks that any node's
-- workers claim (the cluster backend spreads a job over its nodes; the
-- embedded one runs a job whole and leaves this table empty). Stage 1 is
-- a group of layers' spectra, stage 2 the plan (the ranks for the whole
-- model, from every stage-1 record), stage 3 a group of layers' factors.
-- A task is claimed as a job is, on a lease (lease_node, lease_expires on
-- PostgreSQL's clock) renewed by its node's heartbeat; its record is the
-- blob `result` (one per task: a re-run replaces it), dropped when the job
-- ends. `node` is the node that last claimed it, kept for the dashboard.
CREATE TABLE job_tasks (
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  stage INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  layers TEXT NOT NULL,
  cost BIGINT NOT NULL DEFAULT 0,
  state TEXT NOT NULL DEFAULT 'queued',
  attempts INTEGER NOT NULL DEFAULT 0,
  node TEXT,
  lease_node TEXT,
  lease_expires BIGINT,
  result TEXT,
  result_size BIGINT,
  error_code TEXT,
  error_message TEXT,
  started_at BIGINT,
  finished_at BIGINT,
  PRIMARY KEY (job_id, stage, idx)
);
CREATE INDEX job_tasks_by_state ON job_tasks (state, lease_expires);
CREATE INDEX job_tasks_by_result ON job_tasks (result);
