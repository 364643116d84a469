-- 0006_sharded_models.sql (PostgreSQL) — as ../0006_sharded_models.sql.
CREATE TABLE model_shards (
  model_id TEXT NOT NULL,
  idx      BIGINT NOT NULL,
  name     TEXT NOT NULL,
  digest   TEXT NOT NULL,
  size     BIGINT NOT NULL,
  PRIMARY KEY (model_id, idx),
  UNIQUE (model_id, name)
);
CREATE INDEX model_shards_by_digest ON model_shards (digest);

CREATE TABLE loose_blobs (
  digest      TEXT PRIMARY KEY,
  size        BIGINT NOT NULL,
  uploaded_at BIGINT NOT NULL
);
CREATE INDEX loose_blobs_by_time ON loose_blobs (uploaded_at);

ALTER TABLE jobs ADD COLUMN shard_bytes BIGINT;
ALTER TABLE jobs ADD COLUMN peak_rss_bytes BIGINT;
