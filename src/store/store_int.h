/* store_int.h — what blob.c and the index (sqlite/) share inside the store
 * and no one outside sees: the folder layout, the thread's error message
 * and the blob folder's entries of the embedded backend's table. */
#ifndef DECOMPD_STORE_INT_H
#define DECOMPD_STORE_INT_H

#include <pthread.h>

#include "queue.h"
#include "store.h"

#define STORE_PATH_MAX 4096

typedef struct store_paths {
  char root[STORE_PATH_MAX];  /* DATA_DIR */
  char real[STORE_PATH_MAX];  /* DATA_DIR resolved (realpath), or "" */
  char blobs[STORE_PATH_MAX]; /* DATA_DIR/blobs/sha256, or PATH/sha256 for
                                 blobs = file:PATH */
  char tmp[STORE_PATH_MAX];   /* DATA_DIR/tmp: uploads and job outputs */
  char partial[STORE_PATH_MAX]; /* DATA_DIR/partial: resumable blob uploads,
                                   kept across restarts */
  char db[STORE_PATH_MAX];    /* DATA_DIR/decompd.db */
  char reserve[STORE_PATH_MAX]; /* DATA_DIR/decompd.reserve */
  /* blobs = s3://…: the object store blobs live in (`blobs` is then this
   * node's copies); NULL for a folder. */
  struct s3_bucket *s3;
} store_paths;

/* Bytes the reserve file holds (see store_reserve_fill). */
#define STORE_RESERVE_BYTES (4 << 20)

/* What every backend's handle (struct store, defined by the backend)
 * begins with: store.c dispatches through `backend`, blob.c finds its
 * folders in `paths`. */
struct store_backend;
typedef struct store_common {
  const struct store_backend *backend; /* the table it was opened through */
  store_paths paths;
} store_common;

/* A handle's wake-up callback (store_set_wake), shared by the backends
 * (store.c): set and call under its mutex, so that removing it waits for
 * a call under way. */
typedef struct store_wake {
  pthread_mutex_t mu;
  void (*fn)(void *arg);
  void *arg;
} store_wake;
void store_wake_init(store_wake *w);
void store_wake_destroy(store_wake *w);
void store_wake_set(store_wake *w, void (*fn)(void *arg), void *arg);
void store_wake_call(store_wake *w);

/* The folders of any backend's handle (store.c). */
const store_paths *store_paths_of(const store *s);

/* Remove partial uploads (DATA_DIR/partial) whose file was last written
 * before `cutoff_ms` (Unix ms) and that no request holds; returns how many
 * (blob.c, for store_uploads_sweep). */
int store_partials_sweep(const store_paths *p, int64_t cutoff_ms);

/* Record the thread's failure detail and return `err`. */
int store_fail(int err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Make the folders; with `clean`, empty the temp folder: every file and
 * folder in it, dot-names included (a daemon killed while writing leaves
 * uploads, job outputs, the engine's ".NAME.tmp-XXXXXX" files and
 * TorchScript work folders there; nothing else is kept there). */
int store_blob_init(const store_options *o, bool clean, store_paths *p);
/* Release what store_blob_init opened (the object store's handle). */
void store_blob_fini(store_paths *p);
/* Empty the temp folder `tmp` that way (a backend whose nodes share
 * DATA_DIR gives each its own, and empties only its own). */
int store_tmp_empty(const char *tmp);

/* The reserve: STORE_RESERVE_BYTES of allocated blocks in p->reserve, kept
 * by the owner so that on a full disk a delete (the way out) still finds
 * room for its few database pages. Fill allocates it (DECOMP_ERR_DISK_FULL
 * when the disk has not the room yet; what was allocated stays); release
 * removes it, returning whether it held anything. The index
 * (sqlite/open.c) calls them one at a time (at start-up, then under the
 * store's reserve lock). */
int store_reserve_fill(const store_paths *p);
bool store_reserve_release(const store_paths *p);

/* The store's own blob bookkeeping, called by blob.c and the backends
 * through the handle's table, never from outside the store (whose callers
 * use the one-step calls of store.h instead).
 *
 * Move the finished temp file into the blob folder (rename + fsync of the
 * folder); if the blob exists already the temp file is dropped. Call with
 * store_blob_lock() held, together with the row that references it. */
int store_upload_commit(store_upload *u);
/* Remove the blob when no model (its weights, calibration, profile or
 * shards), job (its calibration or profile), artifact or loose-blob row
 * refers to it any more (and then remake the reserve, if a delete used
 * it). Call with store_blob_lock() held. */
int store_blob_gc(store *s, const char *digest);
/* Serialises "blob exists + row refers to it" against garbage collection. */
void store_blob_lock(store *s);
void store_blob_unlock(store *s);
/* Set (digest non-NULL) or clear model `id`'s attachment `kind` in the
 * index, with the layers it covers and its size; `old` gets the digest it
 * had ("" when none). DECOMP_ERR_NOT_FOUND when there is no such model, or
 * nothing to clear. The row alone: store_model_attach commits the blob and
 * collects around it, under the blob lock. */
int store_model_set_attachment(store *s, const char *id, store_attachment kind,
                               const char *digest, int64_t layers,
                               int64_t size, char old[STORE_DIGEST_LEN]);
/* Record (or refresh) `digest`, an existing blob of `size` bytes, as a
 * loose blob uploaded now. Call with store_blob_lock() held. */
int store_loose_blob_touch(store *s, const char *digest, int64_t size);

/* store_job_retry's rules, the same on every backend, for job `j` as its
 * transaction read it: *requeue for a failed or cancelled job (a new
 * attempt), nothing to do for a queued or running one (it is going to
 * run), DECOMP_ERR_CONFLICT (its message set) for a succeeded job or one
 * being cancelled. */
int store_job_retry_rule(const store_job *j, bool *requeue);
/* DECOMP_ERR_CONFLICT, its message set: the job's model has been deleted
 * (a retry needs it, as a submit does). */
int store_job_retry_model_gone(const store_job *j);

/* The blob folder's entries of the embedded backend (blob.c), each with the
 * contract of the store.h function of its name. */
void blobs_scrub(store *s, const char *in, char *out, size_t outlen);
int blobs_upload_begin(store *s, store_upload **out);
int blobs_blob_place_file(store *s, const char *path, const char *digest);
int blobs_blob_open(store *s, const char *digest, int *fd, int64_t *size);
int blobs_blob_read(store *s, const char *digest, int64_t max, char **out,
                    size_t *len);
int blobs_blob_path(store *s, const char *digest, char *buf, size_t len);
/* Whether the blob is stored (in the folder, or the object store), *size
 * its length, reading none of it: DECOMP_ERR_NOT_FOUND when it is not. */
int blobs_blob_stat(store *s, const char *digest, int64_t *size);
/* Remove the blob wherever it is (the folder; the object store too). */
int blobs_blob_remove(store *s, const char *digest);
/* With an object store, remove the folder's copy only (store.h's
 * store_blob_drop_copy); nothing without one. */
int blobs_blob_drop_copy(store *s, const char *digest);
int blobs_partial_open(store *s, const char *digest, int64_t offset,
                       store_partial **out, int64_t *have);
int blobs_partial_offset(store *s, const char *digest, int64_t *size);
const char *blobs_tmp_dir(store *s);

#endif
