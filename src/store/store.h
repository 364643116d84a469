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
/* Move the finished temp file into the blob folder (rename + fsync of the
 * folder); if the blob exists already the temp file is dropped. Call with
 * store_blob_lock() held, together with the row that references it. */
int store_upload_commit(store_upload *u);
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
/* Remove the blob when no model (its weights, calibration, profile or
 * shards), job (its calibration or profile), artifact or loose-blob row
 * refers to it any more (and
 * then remake the reserve, if a delete used it). Call with store_blob_lock()
 * held. */
int store_blob_gc(store *s, const char *digest);
/* Serialises "blob exists + row refers to it" against garbage collection. */
void store_blob_lock(store *s);
void store_blob_unlock(store *s);

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
 * store's blob lock (do not hold store_blob_lock()). */
int store_partial_commit(store_partial *p);
/* Remove the partial (a bad upload). */
void store_partial_drop(store_partial *p);
/* Close (the file stays unless committed or dropped); NULL is fine. */
void store_partial_free(store_partial *p);
/* Bytes held for `digest`'s partial upload; DECOMP_ERR_NOT_FOUND when
 * there is none. */
int store_partial_offset(store *s, const char *digest, int64_t *size);

/* Record (or refresh) `digest`, an existing blob of `size` bytes, as a
 * loose blob uploaded now. Call with store_blob_lock() held. */
int store_loose_blob_touch(store *s, const char *digest, int64_t size);
/* Remove what abandoned uploads left: partials not written for `ttl_ms`
 * (unless a request is appending to one), and loose blobs uploaded longer
 * ago than that (their rows dropped, each blob collected unless something
 * else names it). Takes store_blob_lock() itself. *partials and *blobs
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
  /* The attached calibration (store_model_set_calibration): its blob's
   * digest ("" when none), the layers it covers and its size in bytes. */
  char calibration[STORE_DIGEST_LEN];
  int64_t calibration_layers;
  int64_t calibration_size;
  /* The attached latency profile (store_model_set_profile), the same way. */
  char profile[STORE_DIGEST_LEN];
  int64_t profile_layers;
  int64_t profile_size;
} store_model;

/* Commit the finished upload `u` of the weights (`m->digest` its digest)
 * into the blob folder and insert a model for it unless one exists, in one
 * step under the store's own blob lock (do not hold store_blob_lock()):
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
 * store's own blob lock: do not hold store_blob_lock() when calling it.
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

/* Attach the calibration whose blob is `digest` (committed, with
 * store_blob_lock() held as for any row naming a blob) to a model, with
 * the layers it covers and its size, replacing any; `digest` NULL detaches
 * it (DECOMP_ERR_NOT_FOUND when none is attached). `old` gets the digest
 * it replaced ("" when none): collect it with store_blob_gc() under the
 * same lock (a job that runs with it keeps it). DECOMP_ERR_NOT_FOUND when
 * there is no such model. */
int store_model_set_calibration(store *s, const char *id, const char *digest,
                                int64_t layers, int64_t size,
                                char old[STORE_DIGEST_LEN]);
/* The same for a latency profile (a JSON blob): attach `digest` with the
 * layers it covers and its size, or detach it (`digest` NULL). */
int store_model_set_profile(store *s, const char *id, const char *digest,
                            int64_t layers, int64_t size,
                            char old[STORE_DIGEST_LEN]);

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
 * lock (do not hold store_blob_lock()): *created says which; `m` is filled
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

#endif
