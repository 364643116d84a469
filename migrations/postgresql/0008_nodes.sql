-- 0008_nodes.sql — the nodes serving this index (see ../0008_nodes.sql):
-- every daemon sharing the database writes its row at start and at every
-- heartbeat.
CREATE TABLE nodes (
  id           TEXT PRIMARY KEY,
  version      TEXT NOT NULL,
  address      TEXT NOT NULL,
  started_at   BIGINT NOT NULL,
  heartbeat_at BIGINT NOT NULL,
  workers      INTEGER NOT NULL,
  running      INTEGER NOT NULL
);
