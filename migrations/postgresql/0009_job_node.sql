-- 0009_job_node.sql — the node that last claimed a job (its node_id): who
-- ran it, kept when the job ends (lease_node, by contrast, is cleared). The
-- API shows it as the job's `node`.
ALTER TABLE jobs ADD COLUMN node TEXT;
