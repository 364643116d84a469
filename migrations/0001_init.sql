-- 0001_init.sql — decompd's first schema: models, jobs with per-layer
-- progress, artifacts and API tokens. Applied once, in a transaction, when
-- PRAGMA user_version < 1. Times are Unix milliseconds.

CREATE TABLE models (
  id          TEXT PRIMARY KEY,          -- "m_" + 16 hex, random
  digest      TEXT NOT NULL UNIQUE,      -- "sha256:<64 hex>", the blob
  name        TEXT NOT NULL DEFAULT '',
  format      TEXT NOT NULL,             -- "pth", "safetensors"
  size        INTEGER NOT NULL,
  tensors     INTEGER NOT NULL,
  created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
  seq              INTEGER PRIMARY KEY AUTOINCREMENT, -- queue order, cursor
  id               TEXT NOT NULL UNIQUE,              -- "j_" + 16 hex
  model_id         TEXT NOT NULL,
  request_key      TEXT NOT NULL UNIQUE,  -- sha256 of model, spec, policy
  spec             TEXT NOT NULL,         -- canonical layer spec JSON
  policy           TEXT NOT NULL,         -- canonical policy JSON
  state            TEXT NOT NULL CHECK (state IN
                     ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  attempts         INTEGER NOT NULL DEFAULT 0,
  layers_total     INTEGER NOT NULL DEFAULT 0,
  layers_done      INTEGER NOT NULL DEFAULT 0,
  error_code       TEXT,
  error_message    TEXT,
  created_at       INTEGER NOT NULL,
  started_at       INTEGER,
  finished_at      INTEGER
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_model ON jobs (model_id);

-- One row per layer the engine reported as done (decomposed or skipped).
CREATE TABLE job_layers (
  job_id      TEXT NOT NULL,
  idx         INTEGER NOT NULL,
  name        TEXT NOT NULL,
  rank        INTEGER NOT NULL,
  max_rank    INTEGER NOT NULL,
  seconds     REAL NOT NULL,
  skip_reason TEXT,
  PRIMARY KEY (job_id, idx)
);

CREATE TABLE artifacts (
  job_id     TEXT NOT NULL,
  name       TEXT NOT NULL,   -- decomposed_weights.pth, …
  digest     TEXT NOT NULL,
  size       INTEGER NOT NULL,
  media_type TEXT NOT NULL,
  PRIMARY KEY (job_id, name)
);
CREATE INDEX artifacts_by_digest ON artifacts (digest);

CREATE TABLE tokens (
  id         TEXT PRIMARY KEY,           -- "t_" + 8 hex
  name       TEXT NOT NULL UNIQUE,
  role       TEXT NOT NULL CHECK (role IN ('read', 'submit', 'admin')),
  hash       TEXT NOT NULL UNIQUE,       -- sha256 hex of the token
  created_at INTEGER NOT NULL
);
