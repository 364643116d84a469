/* config.h — the daemon's settings and where they come from, lowest to
 * highest precedence: built-in defaults, the config file (--config FILE or
 * DECOMPD_CONFIG; `key = value` lines, `#` comments), DECOMPD_* environment
 * variables (DECOMPD_DATA_DIR for data_dir, …), command-line flags
 * (--data-dir for data_dir, …). */
#ifndef DECOMPD_SERVER_CONFIG_H
#define DECOMPD_SERVER_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct config {
  char data_dir[2048];      /* data_dir: blobs, database (default ./var) */
  char blobs[2048];         /* blobs: where blobs live: "" (DATA_DIR/blobs),
                               file:PATH or s3://BUCKET/PREFIX */
  char s3_endpoint[512];    /* s3_endpoint: the object store's URL ("":
                               https://s3.REGION.amazonaws.com) */
  char s3_region[64];       /* s3_region: its signing region (us-east-1) */
  char s3_access_key_id[256];     /* s3_access_key_id, s3_secret_access_key:
                                     credentials ("": $AWS_ACCESS_KEY_ID,
                                     $AWS_SECRET_ACCESS_KEY) */
  char s3_secret_access_key[256];
  char listen_host[256];    /* listen: HOST:PORT (default 127.0.0.1:8080;
                               port 0 picks a free one, logged at start) */
  int listen_port;
  int64_t max_upload_bytes; /* max_upload_bytes: upload size limit (4 GiB);
                               for PUT /v1/blobs, each shard's */
  int64_t max_json_bytes;   /* max_json_bytes: JSON body limit (16 MiB) */
  int workers;              /* workers: decomposition threads (0 = cores) */
  int blas_threads;         /* blas_threads: cores each job may use, passed
                               to the engine as decomp_options.threads
                               (0 = cores/workers) */
  int http_threads;         /* http_threads: HTTP thread pool (0 = 4) */
  int max_connections;      /* max_connections: open connections (1024) */
  int connection_timeout;   /* connection_timeout: idle seconds (60) */
  int log_level;            /* log_level: error|warn|info|debug (info) */
  int torchscript_timeout;  /* torchscript_timeout: seconds (wall clock and
                               CPU) a job's TorchScript reader may run (120) */
  int64_t torchscript_memory; /* torchscript_memory: the reader's address-
                               space limit, bytes (0: decomp_torchscript_read's
                               default, 2 GiB + 4 × archive, at least 4 GiB) */
  int upload_ttl;           /* upload_ttl: seconds a partial blob upload is
                               kept untouched, and an uploaded shard blob
                               that no model binds (86400) */
  int64_t shard_bytes;      /* shard_bytes: output shard size of jobs on
                               sharded models that give none (5 GB) */
  char index[2048];         /* index: where the index and the queue are:
                               "sqlite" (embedded in data_dir, the
                               default) or a libpq URI postgresql://… /
                               postgres://… (several daemons may share it
                               and one data_dir) */
  char node_id[65];         /* node_id: this daemon's name among those
                               sharing a PostgreSQL index ("": the host
                               name) */
  int lease_seconds;        /* lease_seconds: how long a claimed job stays
                               a node's without its heartbeat (30;
                               PostgreSQL) */
  bool spread_jobs;         /* spread_jobs: a job's layers as tasks over the
                               nodes (a PostgreSQL index only) */
} config;

/* One settable key: name, what it means (for --help). */
typedef struct config_key {
  const char *name;
  const char *help;
} config_key;
extern const config_key CONFIG_KEYS[];

void config_defaults(config *c);
/* Set `key` (config-file spelling) to `value`; on failure a message in err. */
int config_set(config *c, const char *key, const char *value, char *err,
               size_t errlen);
/* Read a key = value file. */
int config_load_file(config *c, const char *path, char *err, size_t errlen);
/* Apply DECOMPD_<KEY> variables. */
int config_load_env(config *c, char *err, size_t errlen);

#endif
