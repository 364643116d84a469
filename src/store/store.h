/* store.h — decompd's artifact store: content-addressed blobs plus the index
 * of models, job artifacts and API tokens.
 *
 * This is the narrow interface the server codes against. Each function
 * that takes the handle dispatches (store.c) through the table of functions
 * of the backend the handle was opened with (backend.h). The embedded
 * backend, the one store_open() opens, keeps blobs under
 * DATA_DIR/blobs/sha256/ab/abcd… (blob.c) and the index in SQLite (the
 * files under sqlite/); the cluster backend (store_backend_pg, the config
 * key `index` = a postgresql:// URI) keeps the index in PostgreSQL (the
 * files under pg/) and the blobs in the same folder, shared by the nodes.
 * The job queue lives in queue.h on the same handle.
 *
 * Fallible functions return a decomp_error code (DECOMP_OK on success); the
 * detail of the last failure on the calling thread is store_errmsg(). The
 * handle is thread-safe: writes go through one writer connection, each
 * thread reads through its own connection.
 */
#ifndef DECOMPD_STORE_STORE_H
#define DECOMPD_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decomp/errors.h"
#include "digest.h"

typedef struct store store;

/* Open (creating when needed) the store under `data_dir`: the folders, the
 * database, the migrations in order (DECOMP_ERR_DB_TOO_NEW for a schema newer
 * than this binary). An `owner` (the serving daemon; one per DATA_DIR, held
 * by a lock file, DECOMP_ERR_UNAVAILABLE if another has it) also empties
 * DATA_DIR/tmp of what a killed daemon left there (uploads cut short, job
 * outputs and the engine's dot-named temp files behind them, TorchScript
 * work folders) and puts jobs a dead process left `running` back in the
 * queue (`requeued` says how many; may be NULL). Tools such as
 * `decompd token` open without owning. This opens the embedded backend;
 * store_open_backend (backend.h) opens another. */
int store_open(const char *data_dir, bool owner, store **out, int *requeued);

/* What a store is opened on, beyond its data dir. */
typedef struct store_options {
  const char *data_dir; /* DATA_DIR: the embedded index, temp files, partial
                           uploads, the blob folder by default; may be a
                           mount several nodes share */
  bool owner;           /* the serving daemon (see store_open) */
  const char *index;    /* where the index and the queue are (config key
                           `index`): NULL, "" or "sqlite" for the embedded
                           one in DATA_DIR, a libpq URI (postgresql://… or
                           postgres://…) for PostgreSQL */
  const char *node_id;  /* this daemon's name among the nodes sharing a
                           PostgreSQL index and DATA_DIR (its temp folder
                           and its jobs' leases go by it); NULL or "": the
                           host name. Unused by the embedded backend. */
  int lease_seconds;    /* how long a claimed job stays this node's without
                           a heartbeat (PostgreSQL); <= 0: 30 */
  /* Where blobs live (config key `blobs`): NULL or "" for DATA_DIR/blobs,
   * "file:PATH" for the folder PATH (a shared mount for several nodes;
   * blobs under PATH/sha256/ab/abcd…), "s3://BUCKET/PREFIX" for an
   * S3-compatible object store (keys PREFIX/sha256/<hex>; DATA_DIR/blobs
   * then holds this node's copies of the blobs it wrote or read, each
   * checked against its digest when fetched). Anything else is refused at
   * open, naming what is accepted; an object store that does not answer,
   * or refuses the credentials, is refused naming its endpoint. */
  const char *blobs;
  /* For s3://: the endpoint ("https://s3.REGION.amazonaws.com" when NULL
   * or ""), the signing region ("us-east-1"), and the credentials
   * ($AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY when NULL or ""). */
  const char *s3_endpoint, *s3_region, *s3_access_key, *s3_secret_key;
} store_options;

/* store_open with options, on the backend `o->index` names
 * (DECOMP_ERR_INVALID_ARGUMENT, naming what is accepted, for another);
 * store_open is this with only a data dir and `owner`. */
int store_open_with(const store_options *o, store **out, int *requeued);
/* Close everything (every thread's reader connection too); NULL is fine.
 * Call after every thread using the store has stopped. */
void store_close(store *s);

/* The detail of the last failure on this thread ("" when none). It may
 * name the store's files; see store_scrub before showing it to a client. */
const char *store_errmsg(void);

/* Copy the message `in` into `out` (`outlen` > 0, always NUL-terminated)
 * with every path into this store's data dir (as configured or resolved)
 * replaced by what it is: "the upload", "a temp file", "blob sha256:…",
 * "the database", "the data dir"…: answers never show server paths. */
void store_scrub(store *s, const char *in, char *out, size_t outlen);

/* Whether the owner's reserve is in place (it is made at start-up, and
 * again when a blob is collected after a delete used it). */
bool store_reserve_ok(store *s);

/* Schema version of the open database. */
int store_schema_version(store *s);
/* Cheap liveness check of the index (for /readyz). */
int store_ping(store *s);

/* Unix time in milliseconds. */
int64_t store_now_ms(void);

/* ---- blobs ------------------------------------------------------------ */

/* An upload in progress: a temp file under DATA_DIR/tmp, hashed on the fly. */
typedef struct store_upload store_upload;

int store_upload_begin(store *s, store_upload **out);
/* Append bytes (hashing them). */
int store_upload_write(store_upload *u, const void *buf, size_t len);
int64_t store_upload_size(const store_upload *u);
/* fsync the temp file and compute the digest; the file can then be read at
 * store_upload_path() (to validate it) before it is committed. */
int store_upload_finish(store_upload *u, char digest[STORE_DIGEST_LEN]);
const char *store_upload_path(const store_upload *u);
/* Drop the temp file and free; accepts NULL and committed uploads. */
void store_upload_free(store_upload *u);

/* Hash an existing file (written by a worker under store_tmp_dir()) and
 * fsync it, for store_job_succeed; no lock needed. */
int store_blob_hash_file(const char *path, char digest[STORE_DIGEST_LEN],
                         int64_t *size);

/* Open a blob read-only (O_CLOEXEC); *size its length. */
int store_blob_open(store *s, const char *digest, int *fd, int64_t *size);
/* Read a whole blob of at most `max` bytes into memory (*out malloc'd,
 * NUL-terminated, *len its length; `len` may be NULL), for small blobs the
 * server reads itself (a latency profile). DECOMP_ERR_NOT_FOUND when there
 * is no such blob, DECOMP_ERR_TOO_LARGE when it is longer than `max`. */
int store_blob_read(store *s, const char *digest, int64_t max, char **out,
                    size_t *len);
/* The blob's path (for readers that map it). */
int store_blob_path(store *s, const char *digest, char *buf, size_t len);
/* With an object store (blobs = s3://…): remove this node's copy of the
 * blob, which stays in the object store (read again, it is fetched
 * again), for blobs read once here — a task's record. Nothing to do when
 * there is no copy, or when blobs live in a folder (the file is the
 * blob). The caller knows no one on this node is about to open it. */
int store_blob_drop_copy(store *s, const char *digest);
/* ---- resumable blob uploads (PUT /v1/blobs/{digest}) ------------------ */

/* A partial upload of the blob a client named by its digest: the bytes
 * received so far in DATA_DIR/partial/<64 hex> (the validated digest is
 * the only thing from the request that makes the name), kept across
 * requests and restarts so that an upload cut short resumes where it
 * stopped. One request at a time appends to it (an exclusive lock on the
 * file; a second gets DECOMP_ERR_CONFLICT). Removed when it completes,
 * when it fails its digest, or by store_uploads_sweep once untouched for
 * the daemon's upload_ttl. */
typedef struct store_partial store_partial;

/* Open the partial upload of `digest` to append at `offset`: 0 starts it
 * (over any earlier partial), anything else must equal the bytes it holds
 * (DECOMP_ERR_CONFLICT otherwise, *have — may be NULL — set to them; -1
 * when there is none). */
int store_partial_open(store *s, const char *digest, int64_t offset,
                       store_partial **out, int64_t *have);
int store_partial_write(store_partial *p, const void *buf, size_t len);
/* Bytes it holds (earlier requests' and this one's). */
int64_t store_partial_size(const store_partial *p);
/* Bytes this request appended. */
int64_t store_partial_appended(const store_partial *p);
const char *store_partial_path(const store_partial *p);
/* fsync what it holds (kept for a later request). */
int store_partial_sync(store_partial *p);
/* Complete: fsync and hash the whole file; DECOMP_ERR_UPLOAD_DIGEST (the
 * partial removed) when its SHA-256 is not the digest it was opened for.
 * The file can then be read at store_partial_path() to validate it. */
int store_partial_verify(store_partial *p);
/* Move the verified file into the blob folder and record it as a loose
 * blob (kept upload_ttl for an index to bind it), in one step under the
 * store's blob lock. */
int store_partial_commit(store_partial *p);
/* Remove the partial (a bad upload). */
void store_partial_drop(store_partial *p);
/* Close (the file stays unless committed or dropped); NULL is fine. */
void store_partial_free(store_partial *p);
/* Bytes held for `digest`'s partial upload; DECOMP_ERR_NOT_FOUND when
 * there is none. */
int store_partial_offset(store *s, const char *digest, int64_t *size);

/* Record the blob `digest`, stored already, as a loose blob uploaded now
 * (kept upload_ttl for an index to bind it), *size its length: one step
 * against collection. DECOMP_ERR_NOT_FOUND when there is no such blob (a
 * sweep collected it: upload it again). */
int store_loose_blob_refresh(store *s, const char *digest, int64_t *size);
/* Remove what abandoned uploads left: partials not written for `ttl_ms`
 * (unless a request is appending to one), and loose blobs uploaded longer
 * ago than that (their rows dropped, each blob collected unless something
 * else names it), under the store's own blob lock. *partials and *blobs
 * (may be NULL) get how many were removed. */
int store_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs);

/* A folder for temp files on the same file system as the blobs. */
const char *store_tmp_dir(store *s);

/* ---- models ----------------------------------------------------------- */

typedef struct store_model {
  char id[24];                    /* "m_" + 16 hex */
  char digest[STORE_DIGEST_LEN];  /* blob of the weight file */
  char name[256];                 /* given at upload; may be "" */
  char format[24];                /* "pth", "safetensors", "torchscript",
                                     "safetensors-sharded" */
  int64_t size;                   /* bytes */
  int64_t tensors;                /* tensors in the state dict */
  int64_t created_at;             /* Unix ms */
  bool has_spec;                  /* a layer spec is attached */
  /* The attached calibration (store_model_attach): its blob's
   * digest ("" when none), the layers it covers and its size in bytes. */
  char calibration[STORE_DIGEST_LEN];
  int64_t calibration_layers;
  int64_t calibration_size;
  /* The attached latency profile (store_model_attach), the same way. */
  char profile[STORE_DIGEST_LEN];
  int64_t profile_layers;
  int64_t profile_size;
} store_model;

/* Commit the finished upload `u` of the weights (`m->digest` its digest)
 * into the blob folder and insert a model for it unless one exists, in one
 * step under the store's own blob lock:
 * *created says which; `m` is filled with the stored row either way (its id
 * made here). `u` stays the caller's to free. */
int store_model_put(store *s, store_upload *u, store_model *m, bool *created);
/* DECOMP_ERR_NOT_FOUND when there is no such model. */
int store_model_get(store *s, const char *id, store_model *out);
/* Models newest first; *out (free()) holds *n rows. */
int store_model_list(store *s, store_model **out, size_t *n);
/* Remove a model row (with its shards' rows) and collect the blobs it
 * named — its weights, its shards, its attached calibration and profile —
 * each unless something else still names it (store_blob_gc), under the
 * store's own blob lock.
 * DECOMP_ERR_CONFLICT while a queued or running job uses it. On a full disk
 * it still works: the owner keeps a reserve (DATA_DIR/decompd.reserve,
 * 4 MiB) that a delete frees when it needs the room, and that the next
 * collected blob gives back. */
int store_model_delete(store *s, const char *id);

/* Attach a layer spec (canonical JSON) to a model, replacing any;
 * DECOMP_ERR_NOT_FOUND when there is no such model. */
int store_model_set_spec(store *s, const char *id, const char *spec);
/* The model's spec (*spec malloc'd, NULL when none); DECOMP_ERR_NOT_FOUND
 * when there is no such model. */
int store_model_get_spec(store *s, const char *id, char **spec);

/* A TorchScript model's layer spec as its archive gave it (canonical JSON),
 * recorded by the worker that loaded the archive; kept apart from the
 * attached spec, which jobs use instead of the archive's. Set replaces any;
 * get gives *spec malloc'd, NULL when none was recorded yet.
 * DECOMP_ERR_NOT_FOUND when there is no such model. */
int store_model_set_archive_spec(store *s, const char *id, const char *spec);
int store_model_get_archive_spec(store *s, const char *id, char **spec);

/* A model's attachments: its calibration (safetensors of Gram matrices)
 * and its latency profile (JSON), one blob each. */
typedef enum store_attachment {
  STORE_ATTACH_CALIBRATION,
  STORE_ATTACH_PROFILE,
} store_attachment;

/* Attach the finished upload `u` (store_upload_finish) to model `id` as
 * its attachment `kind`, with the layers it covers and its size, replacing
 * any, in one step: the upload's blob committed, the row written and the
 * replaced blob collected unless something else names it (a job submitted
 * with it keeps it). `u` NULL detaches (DECOMP_ERR_NOT_FOUND when none is
 * attached). `old` gets the digest replaced or detached ("" when none). On
 * a failure nothing changes and the upload's blob is collected unless
 * something names it; DECOMP_ERR_NOT_FOUND when there is no such model. */
int store_model_attach(store *s, const char *id, store_attachment kind,
                       store_upload *u, int64_t layers, int64_t size,
                       char old[STORE_DIGEST_LEN]);

/* ---- nodes ------------------------------------------------------------- */

/* A daemon serving this index, as its last heartbeat left it. */
typedef struct store_node {
  char id[128];        /* its node_id */
  char version[32];    /* decompd's version */
  char address[300];   /* HOST:PORT it listens on */
  int64_t started_at;  /* Unix ms */
  int64_t heartbeat_at;
  int workers;         /* decomposition threads */
  int running;         /* jobs they hold now */
} store_node;

/* The node id of a daemon opened with `o` (buf of `len` > 0 bytes):
 * o->node_id, else the host name with every character a node id may not
 * hold (letters, digits, '.', '_', '-') made '_'. */
void store_node_name(const store_options *o, char *buf, size_t len);

/* Write node n's row (insert, or replace the one with its id). */
int store_node_beat(store *s, const store_node *n);
/* Every node's row, by id; *out (free()) holds *n. */
int store_node_list(store *s, store_node **out, size_t *n);

/* ---- sharded models ---------------------------------------------------- */

/* One shard of a sharded model (format "safetensors-sharded"). */
typedef struct store_shard {
  char name[256];                /* plain file name from the index */
  char digest[STORE_DIGEST_LEN]; /* its blob */
  int64_t size;
} store_shard;

/* Commit the finished upload `doc` of a sharded model's binding document
 * (`m->digest` its digest) and insert the model with its `n` shards unless
 * a model with that digest exists, in one step under the store's own blob
 * lock: *created says which; `m` is filled
 * with the stored row either way. DECOMP_ERR_BAD_SHARD_INDEX, naming it,
 * when a shard's blob is not in the store (collected since its upload);
 * when the rows fail, the document's blob is collected again. `doc` stays
 * the caller's to free. */
int store_model_put_sharded(store *s, store_upload *doc, store_model *m,
                            const store_shard *sh, size_t n, bool *created);
/* A model's shards in the index's order (*out free(), NULL and 0 for a
 * model that is not sharded). */
int store_model_shards(store *s, const char *id, store_shard **out,
                       size_t *n);

/* ---- artifacts -------------------------------------------------------- */

typedef struct store_artifact {
  char name[64];                  /* decomposed_weights.pth, … */
  char digest[STORE_DIGEST_LEN];
  int64_t size;
  char media_type[64];
} store_artifact;

int store_artifact_get(store *s, const char *job_id, const char *name,
                       store_artifact *out);
/* A job's artifacts; *out (free()) holds *n rows. */
int store_artifact_list(store *s, const char *job_id, store_artifact **out,
                        size_t *n);

/* ---- tokens ----------------------------------------------------------- */

enum store_role {
  STORE_ROLE_NONE = 0,
  STORE_ROLE_READ = 1,
  STORE_ROLE_SUBMIT = 2,
  STORE_ROLE_ADMIN = 3,
};
const char *store_role_name(int role);
int store_role_from_name(const char *name); /* -1 when unknown */

/* Store a token by its SHA-256 (hex); DECOMP_ERR_CONFLICT if the name is
 * taken. *id gets the token's id. */
int store_token_put(store *s, const char *name, int role, const char *hash_hex,
                    char id[24]);
/* Whether any token exists (then every API route needs one). */
int store_token_any(store *s, bool *any);
/* The role of the token whose SHA-256 is `hash_hex`, or STORE_ROLE_NONE. */
int store_token_role(store *s, const char *hash_hex, int *role,
                     char name[256]);
/* Remove a token by name; DECOMP_ERR_NOT_FOUND when none. */
int store_token_delete(store *s, const char *name);

typedef struct store_token {
  char id[24];
  char name[256];
  int role;
  int64_t created_at;
} store_token;
int store_token_list(store *s, store_token **out, size_t *n);


/* ---- copying a store into another (decompd store migrate) ------------- */

/* Each row goes in verbatim (its id, its times), in one transaction with
 * the rows that belong to it, unless a row with its id is there already:
 * then nothing changes and *created is false, so that an import run twice,
 * or run again after being cut short, writes each row once. The blobs the
 * rows name must be in the store already (committed and recorded as loose
 * blobs by the caller, store_loose_blob_refresh); they are checked under
 * the store's blob lock, DECOMP_ERR_NOT_FOUND naming the first missing. */

/* A model with what belongs to it. */
typedef struct store_model_record {
  store_model m;           /* the row: id, digest, name, format, size,
                              tensors, created_at, the attachments */
  const char *spec;        /* the attached spec, NULL when none */
  const char *archive_spec; /* the archive's spec, NULL when none */
  const store_shard *shards; /* a sharded model's shards, in order */
  size_t nshards;
} store_model_record;

/* DECOMP_ERR_CONFLICT when another model (another id) has its digest. */
int store_model_import(store *s, const store_model_record *r, bool *created);

/* A token by its SHA-256 (the same token keeps working): `t` its id, name,
 * role and creation time. DECOMP_ERR_CONFLICT when another token (another
 * id) has its name or its hash. */
int store_token_import(store *s, const store_token *t, const char *hash_hex,
                       bool *created);
/* The SHA-256 (hex) token `id` is stored by; DECOMP_ERR_NOT_FOUND when
 * there is no such token. */
int store_token_hash(store *s, const char *id, char hash_hex[65]);

#endif
