-- 0008_nodes.sql — the nodes serving this index: each daemon writes its row
-- at start and at every heartbeat (GET /v1/nodes). id is its node_id (the
-- host name by default); address is what it listens on; heartbeat_at (Unix
-- ms) its last heartbeat; workers its decomposition threads and running
-- the jobs they hold now. A node that stops beating stays listed with its
-- last heartbeat (the API says whether it is alive).
CREATE TABLE nodes (
  id           TEXT PRIMARY KEY,
  version      TEXT NOT NULL,
  address      TEXT NOT NULL,
  started_at   INTEGER NOT NULL,
  heartbeat_at INTEGER NOT NULL,
  workers      INTEGER NOT NULL,
  running      INTEGER NOT NULL
);
