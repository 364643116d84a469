/* backend.h — the store and the queue as a table of functions, one
 * implementation per backend, as SQLite's VFS (sqlite3_vfs) or curl's TLS
 * backends (struct Curl_ssl) are.
 *
 * store.h and queue.h stay the interface the server codes against: each of
 * their functions that takes a handle dispatches (store.c) through the
 * table the handle was opened with, and nothing outside a backend's own
 * files names a backend's functions. A backend fills a store_backend in a
 * file of its own; its handle (struct store, defined in its files) begins
 * with the `const store_backend *` it was opened through. The embedded
 * backend — the index and queue in SQLite (sqlite/), blobs in DATA_DIR
 * (blob.c) — is store_backend_sqlite, the default.
 *
 * Each entry has the contract of the store.h, queue.h or (for the store's
 * own bookkeeping: blob_gc, blob_lock, blob_unlock, loose_blob_touch)
 * store_int.h function of its name without the `store_` prefix
 * (`model_put` is store_model_put); every entry is required but the
 * tasks' (NULL on a backend that runs each job whole: the embedded one). The invariants (locks, transactions, the order of
 * writes) are the backend's to keep. */
#ifndef DECOMPD_STORE_BACKEND_H
#define DECOMPD_STORE_BACKEND_H

#include "queue.h"
#include "store.h"

/* The version of the table below. A table built for another version is
 * refused at open (its entries would not be where this decompd calls
 * them); bump it whenever an entry is added, removed or changes. */
#define STORE_BACKEND_VERSION 14

typedef struct store_backend store_backend;


struct store_backend {
  int version;      /* STORE_BACKEND_VERSION the table was built for: first,
                       so that any version can read it */
  const char *name; /* "sqlite": in messages and logs */

  /* store_open on this backend. `self` is the table the handle was opened
   * through (a copy of this one, for a wrapper): the handle keeps it as its
   * first member, so every later call dispatches through it. */
  int (*open)(const store_backend *self, const store_options *o,
              store **out, int *requeued);

  /* ---- the handle ---- */
  void (*close)(store *s);
  void (*scrub)(store *s, const char *in, char *out, size_t outlen);
  bool (*reserve_ok)(store *s);
  int (*schema_version)(store *s);
  int (*ping)(store *s);

  /* ---- blobs ---- */
  int (*upload_begin)(store *s, store_upload **out);
  int (*blob_open)(store *s, const char *digest, int *fd, int64_t *size);
  int (*blob_read)(store *s, const char *digest, int64_t max, char **out,
                   size_t *len);
  int (*blob_path)(store *s, const char *digest, char *buf, size_t len);
  int (*blob_gc)(store *s, const char *digest);
  void (*blob_lock)(store *s);
  void (*blob_unlock)(store *s);
  int (*partial_open)(store *s, const char *digest, int64_t offset,
                      store_partial **out, int64_t *have);
  int (*partial_offset)(store *s, const char *digest, int64_t *size);
  int (*loose_blob_touch)(store *s, const char *digest, int64_t size);
  int (*uploads_sweep)(store *s, int64_t ttl_ms, int *partials, int *blobs);
  const char *(*tmp_dir)(store *s);

  /* ---- models ---- */
  int (*model_put)(store *s, store_upload *u, store_model *m,
                   bool *created);
  int (*model_get)(store *s, const char *id, store_model *out);
  int (*model_list)(store *s, store_model **out, size_t *n);
  int (*model_delete)(store *s, const char *id);
  int (*model_set_spec)(store *s, const char *id, const char *spec);
  int (*model_get_spec)(store *s, const char *id, char **spec);
  int (*model_set_archive_spec)(store *s, const char *id, const char *spec);
  int (*model_get_archive_spec)(store *s, const char *id, char **spec);
  /* the row of store_model_attach, whose blob steps store.c takes (as
   * store_int.h's store_model_set_attachment says) */
  int (*model_set_attachment)(store *s, const char *id, store_attachment kind,
                              const char *digest, int64_t layers,
                              int64_t size, char old[STORE_DIGEST_LEN]);

  /* ---- sharded models ---- */
  /* the rows of store_model_put_sharded (the model and its shards, in
   * one transaction; *m re-read), whose blob steps store.c takes */
  int (*model_put_sharded_rows)(store *s, store_model *m,
                                const store_shard *sh, size_t n,
                                bool *created);
  int (*model_shards)(store *s, const char *id, store_shard **out, size_t *n);

  /* ---- artifacts ---- */
  int (*artifact_get)(store *s, const char *job_id, const char *name,
                      store_artifact *out);
  int (*artifact_list)(store *s, const char *job_id, store_artifact **out,
                       size_t *n);

  /* ---- nodes ---- */
  int (*node_beat)(store *s, const store_node *n);
  int (*node_list)(store *s, store_node **out, size_t *n);

  /* ---- tokens ---- */
  int (*token_put)(store *s, const char *name, int role, const char *hash_hex,
                   char id[24]);
  int (*token_any)(store *s, bool *any);
  int (*token_role)(store *s, const char *hash_hex, int *role, char name[256]);
  int (*token_delete)(store *s, const char *name);
  int (*token_list)(store *s, store_token **out, size_t *n);

  /* ---- the job queue (queue.h) ---- */
  int (*job_submit)(store *s, const char *request_key, store_job *j,
                    bool *created);
  int (*job_get)(store *s, const char *id, bool with_spec, store_job *out);
  int (*job_list)(store *s, int state, int64_t before, int limit,
                  store_job **out, size_t *n);
  int (*job_layers)(store *s, const char *job_id, store_job_layer **out,
                    size_t *n);
  int (*job_counts)(store *s, int64_t counts[STORE_JOB_STATE_COUNT]);
  int (*job_claim)(store *s, store_job *out);
  int (*job_progress)(store *s, const char *job_id, int64_t total,
                      const store_job_layer *l);
  int (*job_current)(store *s, const char *job_id, int64_t total,
                     const char *layer, const char *step, double fraction);
  int (*job_cancel_requested)(store *s, const char *job_id, bool *yes);
  int (*job_set_peak_rss)(store *s, const char *job_id, int64_t bytes);
  /* the rows of store_job_succeed (artifacts, the job succeeded), whose
   * blob steps store.c takes */
  int (*job_succeed_rows)(store *s, const char *job_id,
                          const store_artifact *a, size_t n);
  int (*job_fail)(store *s, const char *job_id, int err, const char *message);
  int (*job_cancelled)(store *s, const char *job_id);
  int (*job_requeue)(store *s, const char *job_id);
  int (*job_cancel)(store *s, const char *id, store_job *out);
  int (*job_retry)(store *s, const char *id, store_job *out, bool *requeued);
  int (*job_delete)(store *s, const char *id);

  /* ---- copying a store into another (store.h, queue.h; version 11):
   * model_import and job_import write the rows, in one transaction each;
   * store.c checks the blobs they name, under the blob lock ---- */
  int (*model_import)(store *s, const store_model_record *r, bool *created);
  int (*job_import)(store *s, const store_job_record *r, bool *created);
  int (*job_request_key)(store *s, const char *id, char key[65]);
  int (*token_import)(store *s, const store_token *t, const char *hash_hex,
                      bool *created);
  int (*token_hash)(store *s, const char *id, char hash_hex[65]);

  /* ---- one job over many nodes (queue.h's tasks; version 14): NULL
   * where jobs run whole. task_finish_row and job_tasks_clear_rows are
   * the rows of store_task_finish and store_job_tasks_clear, whose blob
   * steps store.c takes: the first names the record it replaced (old, ""
   * when none), the second the records it dropped (*digests, free()). */
  int (*job_tasks_begin)(store *s, const char *job_id);
  int (*job_tasks_add)(store *s, const char *job_id, const store_task *t,
                       size_t n);
  int (*job_tasks)(store *s, const char *job_id, store_task **out, size_t *n);
  int (*task_claim)(store *s, const char *job_id, store_task *out);
  int (*task_finish_row)(store *s, const store_task *t, const char *digest,
                         int64_t size, char old[STORE_DIGEST_LEN]);
  int (*task_fail)(store *s, const store_task *t, int err,
                   const char *message);
  int (*task_release)(store *s, const store_task *t);
  int (*task_cancel_requested)(store *s, const store_task *t, bool *yes);
  int (*job_tasks_clear_rows)(store *s, const char *job_id,
                              char (**digests)[STORE_DIGEST_LEN], size_t *n);

  /* ---- waking the workers (queue.h: store_set_wake) ---- */
  void (*set_wake)(store *s, void (*fn)(void *arg), void *arg);
};

/* The embedded backend: SQLite in DATA_DIR/decompd.db, blobs in
 * DATA_DIR/blobs. store_open() opens it. */
extern const store_backend store_backend_sqlite;

/* The cluster backend: the index and the queue in PostgreSQL (libpq, the
 * files under pg/), blobs in DATA_DIR (blob.c) as for the embedded one: a
 * folder every node mounts. Claims are leases kept alive by a heartbeat;
 * several daemons may share one database and one DATA_DIR. */
extern const store_backend store_backend_pg;

/* The backend for the config key `index` (store_options.index): the
 * embedded one for NULL, "" or "sqlite", PostgreSQL for a
 * postgresql:// or postgres:// URI; NULL for anything else. */
const store_backend *store_backend_for_index(const char *index);

/* store_open() on the backend `be`: DECOMP_ERR_STORE, naming the versions,
 * when `be` was built for another STORE_BACKEND_VERSION (*out is then
 * NULL). */
int store_open_backend(const store_backend *be, const store_options *o,
                       store **out, int *requeued);

/* The table `s` dispatches through. */
const store_backend *store_backend_of(const store *s);

#endif
