-- 0006_sharded_models.sql — sharded safetensors checkpoints (the Hugging
-- Face layout: model.safetensors.index.json plus its shards), each shard
-- uploaded as its own content-addressed blob (PUT /v1/blobs/{digest}) and
-- bound into one model by its index (POST /v1/models with the index and the
-- shards' digests).
--
-- model_shards: the shards of a sharded model (models.format
-- 'safetensors-sharded'), in the index's order (idx), each by its plain
-- file name and its blob's digest and size. The rows keep the shard blobs
-- alive while the model exists; deleting the model deletes them, and the
-- blobs are collected when nothing else names them.
--
-- loose_blobs: blobs stored by PUT /v1/blobs, with when they were last
-- uploaded (or re-uploaded). A row keeps its blob alive for
-- upload_ttl seconds (decompd's config) so that an index can bind it;
-- after that the row is dropped and the blob collected unless a model's
-- shard (or anything else) names it.
--
-- jobs.shard_bytes is the output shard size a job on a sharded model was
-- submitted with (NULL: the daemon's shard_bytes); jobs.peak_rss_bytes the
-- daemon's peak resident set when the job finished, as the engine's info
-- summary records it (a process-wide high-water mark, see README).
--
-- A blob is collected when no models.digest, models.calibration,
-- models.profile, jobs.calibration, jobs.profile, artifacts.digest,
-- model_shards.digest or loose_blobs.digest names it.
CREATE TABLE model_shards (
  model_id TEXT NOT NULL,
  idx      INTEGER NOT NULL,
  name     TEXT NOT NULL,     -- plain file name, never a path
  digest   TEXT NOT NULL,     -- "sha256:<64 hex>", the shard's blob
  size     INTEGER NOT NULL,
  PRIMARY KEY (model_id, idx),
  UNIQUE (model_id, name)
);
CREATE INDEX model_shards_by_digest ON model_shards (digest);

CREATE TABLE loose_blobs (
  digest      TEXT PRIMARY KEY,
  size        INTEGER NOT NULL,
  uploaded_at INTEGER NOT NULL
);
CREATE INDEX loose_blobs_by_time ON loose_blobs (uploaded_at);

ALTER TABLE jobs ADD COLUMN shard_bytes INTEGER;
ALTER TABLE jobs ADD COLUMN peak_rss_bytes INTEGER;
