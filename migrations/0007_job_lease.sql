-- 0007_job_lease.sql — a running job's lease: the node that claimed it
-- (lease_node, its node id) and until when the claim holds without a
-- heartbeat (lease_expires, Unix ms). The PostgreSQL backend, where several
-- daemons share the queue, writes them at each claim and renews them while
-- the job runs; a job whose lease has lapsed (its node died) is claimed
-- again. The embedded backend has one daemon per data dir and leaves them
-- NULL: the columns are here so both schemas have the same shape.
ALTER TABLE jobs ADD COLUMN lease_node TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires INTEGER;
