/* pg_int.h — what the files of the PostgreSQL index share and no one
 * outside sees: the handle's layout, the libpq helpers (db.c) and the
 * column lists that several files read.
 *
 * The rules this backend keeps, several daemons ("nodes") sharing one
 * database and one DATA_DIR:
 * - libpq connections are not thread-safe: each call takes a connection
 *   from the handle's pool for its statement or its transaction and gives
 *   it back; a connection found dead is replaced (once per call) and a
 *   broken one is never pooled again.
 * - Transactions run at READ COMMITTED; the invariants the embedded index
 *   gets from its single writer come from row locks here: a job's row is
 *   locked (FOR UPDATE) by whatever changes its state, a model's by its
 *   delete and by the attachments (FOR UPDATE) and the submits and retries
 *   that need it to stay (FOR SHARE).
 * - "Blob exists + a row names it" against collection (store_blob_lock) is
 *   a session advisory lock (PG_LOCK_BLOBS) held on a connection of its
 *   own, so it serialises every node's writers and collectors; a node that
 *   dies releases it with its connection.
 * - A claim is a lease: the claiming node's id and an expiry on
 *   PostgreSQL's clock, renewed by the handle's heartbeat thread every
 *   lease/3; a running job whose lease has lapsed is claimed again by any
 *   node (attempts + 1, as a requeue and a claim count in the embedded
 *   index). Every write of a running job's progress or end names the node:
 *   a node that lost its lease cannot write over the new claim, and its
 *   worker is told to stop (store_job_cancel_requested).
 * - A submit or a retry NOTIFYs PG_CHANNEL in its transaction; every
 *   node's listener thread (a connection of its own, LISTENing) calls the
 *   handle's wake-up (store_set_wake) when one arrives, so idle workers on
 *   all nodes claim at once instead of at their next poll.
 * - Each node has its own temp folder, DATA_DIR/tmp/NODE, held by a lock
 *   file (DATA_DIR/nodes/NODE.lock) so that two live daemons cannot share a
 *   node id; a starting owner empties only its own folder and requeues only
 *   its own (dead) jobs and lapsed leases.
 * The files under pg/ are the only ones that include libpq-fe.h. */
#ifndef DECOMPD_STORE_PG_INT_H
#define DECOMPD_STORE_PG_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "backend.h"
#include "queue.h"
#include "store_int.h"

#define PG_POOL_MAX 16
#define PG_NODE_ID_MAX 64

/* Advisory lock keys ("decompd" and a number). */
#define PG_LOCK_BLOBS 0x6465636f6d706401LL   /* store_blob_lock */
#define PG_LOCK_MIGRATE 0x6465636f6d706402LL /* schema migrations */

/* The channel that announces claimable jobs. */
#define PG_CHANNEL "decompd_jobs"

/* PostgreSQL's clock in Unix ms: leases go by one clock for every node. */
#define PG_NOW_MS "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"

struct store {
  store_common c; /* first: the table and the folders */
  char *conninfo; /* the URI as configured (never logged: it may hold a
                     password) */
  char where[256]; /* "HOST:PORT/DB" for messages */
  char node[PG_NODE_ID_MAX + 1];
  int lease_ms;
  int version;
  bool owner;
  int node_fd; /* the node's lock file (owner) */

  pthread_mutex_t pool_mu; /* guards idle[] */
  PGconn *idle[PG_POOL_MAX];
  int nidle;

  pthread_mutex_t blob_mu; /* this process's half of store_blob_lock */
  PGconn *blob_conn;       /* holds PG_LOCK_BLOBS while it is taken */

  /* the heartbeat and the listener (owner only) */
  pthread_t beat, listener;
  bool beating, listening;
  pthread_mutex_t beat_mu;
  pthread_cond_t beat_cv;
  bool stopping; /* guarded by beat_mu */

  store_wake wake; /* store_set_wake: on a submit or retry on any node */
};

/* ---- db.c: connections and statements ------------------------------------ */

/* A connection from the pool, or a new one. */
int pg_take(store *s, PGconn **out);
/* Back to the pool (closed when broken, inside a transaction or the pool
 * is full); NULL is fine. */
void pg_give(store *s, PGconn *c);
/* Run `sql` with parameters described by `fmt` ('s' text, NULL binds NULL;
 * 'i' int64; 'n' int; 'd' double): *res (may be NULL) gets the result
 * (PQclear it), *changes (may be NULL) the rows it changed. A unique
 * violation is DECOMP_ERR_CONFLICT, a full disk DECOMP_ERR_DISK_FULL, the
 * rest DECOMP_ERR_STORE, each naming `sql`'s purpose poorly but the
 * server's message well. */
int pg_execf(PGconn *c, PGresult **res, int *changes, const char *sql,
             const char *fmt, ...);
/* One statement outside a transaction on a pooled connection (retried once
 * on a fresh connection when the pooled one had died). */
int pg_queryf(store *s, PGresult **res, int *changes, const char *sql,
              const char *fmt, ...);
/* Take a connection and BEGIN (a dead pooled connection replaced once);
 * end it: COMMIT when rc is OK (its failure returned), else ROLLBACK; the
 * connection goes back either way. */
int pg_begin(store *s, PGconn **out);
int pg_end(store *s, PGconn *c, int rc);
/* Connect to the configured database (a clear error naming where). */
int pg_connect(store *s, PGconn **out);

/* Column readers (NULL reads as "", 0, NULL). */
void pg_col_copy(const PGresult *r, int row, int col, char *dst, size_t len);
char *pg_col_dup(const PGresult *r, int row, int col);
int64_t pg_col_i64(const PGresult *r, int row, int col);
double pg_col_f64(const PGresult *r, int row, int col);
bool pg_col_bool(const PGresult *r, int row, int col); /* 't' or non-zero */

/* ---- models.c (shards.c and jobs.c use them too) ------------------------ */

#define PG_MODEL_COLS "id, digest, name, format, size, tensors, created_at"
#define PG_MODEL_READ_COLS                                                     \
  PG_MODEL_COLS                                                                \
  ", spec IS NOT NULL, calibration, "                                          \
  "COALESCE(calibration_layers, 0), COALESCE(calibration_size, 0), "           \
  "profile, COALESCE(profile_layers, 0), COALESCE(profile_size, 0)"

void pg_model_row(const PGresult *r, int row, store_model *m);
/* *m re-read from the models row of m->digest, on `c`. */
int pg_model_by_digest(PGconn *c, store_model *m);

/* ---- the backend's entries (pg/backend.c), each with the contract of the
 * store.h or queue.h function of its name --------------------------------- */

int pg_store_open(const store_backend *self, const store_options *o,
                  store **out, int *requeued);
void pg_close(store *s);
bool pg_reserve_ok(store *s);
int pg_schema_version(store *s);
int pg_ping(store *s);
int pg_blob_gc(store *s, const char *digest);
void pg_blob_lock(store *s);
void pg_blob_unlock(store *s);
int pg_loose_blob_touch(store *s, const char *digest, int64_t size);
int pg_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs);
int pg_node_beat(store *s, const store_node *n);
int pg_node_list(store *s, store_node **out, size_t *n);
int pg_model_put(store *s, store_upload *u, store_model *m, bool *created);
int pg_model_get(store *s, const char *id, store_model *out);
int pg_model_list(store *s, store_model **out, size_t *n);
int pg_model_delete(store *s, const char *id);
int pg_model_set_spec(store *s, const char *id, const char *spec);
int pg_model_get_spec(store *s, const char *id, char **spec);
int pg_model_set_archive_spec(store *s, const char *id, const char *spec);
int pg_model_get_archive_spec(store *s, const char *id, char **spec);
int pg_model_set_attachment(store *s, const char *id, store_attachment kind,
                            const char *digest, int64_t layers, int64_t size,
                            char old[STORE_DIGEST_LEN]);
int pg_model_put_sharded_rows(store *s, store_model *m,
                              const store_shard *sh, size_t n, bool *created);
int pg_model_shards(store *s, const char *id, store_shard **out, size_t *n);
int pg_artifact_get(store *s, const char *job_id, const char *name,
                    store_artifact *out);
int pg_artifact_list(store *s, const char *job_id, store_artifact **out,
                     size_t *n);
int pg_token_put(store *s, const char *name, int role, const char *hash_hex,
                 char id[24]);
int pg_token_any(store *s, bool *any);
int pg_token_role(store *s, const char *hash_hex, int *role, char name[256]);
int pg_token_delete(store *s, const char *name);
int pg_token_list(store *s, store_token **out, size_t *n);
int pg_job_submit(store *s, const char *request_key, store_job *j,
                  bool *created);
int pg_job_get(store *s, const char *id, bool with_spec, store_job *out);
int pg_job_list(store *s, int state, int64_t before, int limit, store_job **out,
                size_t *n);
int pg_job_layers(store *s, const char *job_id, store_job_layer **out,
                  size_t *n);
int pg_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]);
int pg_job_claim(store *s, store_job *out);
int pg_job_progress(store *s, const char *job_id, int64_t total,
                    const store_job_layer *l);
int pg_job_current(store *s, const char *job_id, int64_t total,
                   const char *layer, const char *step, double fraction);
int pg_job_cancel_requested(store *s, const char *job_id, bool *yes);
int pg_job_set_peak_rss(store *s, const char *job_id, int64_t bytes);
int pg_job_succeed_rows(store *s, const char *job_id,
                         const store_artifact *a, size_t n);
int pg_job_fail(store *s, const char *job_id, int err, const char *message);
int pg_job_cancelled(store *s, const char *job_id);
int pg_job_requeue(store *s, const char *job_id);
int pg_job_cancel(store *s, const char *id, store_job *out);
int pg_job_retry(store *s, const char *id, store_job *out, bool *requeued);
int pg_job_delete(store *s, const char *id);
int pg_job_tasks_begin(store *s, const char *job_id);
int pg_job_tasks_add(store *s, const char *job_id, const store_task *t,
                     size_t n);
int pg_job_tasks(store *s, const char *job_id, store_task **out, size_t *n);
int pg_task_claim(store *s, const char *job_id, store_task *out);
int pg_task_finish_row(store *s, const store_task *t, const char *digest,
                       int64_t size, char old[STORE_DIGEST_LEN]);
int pg_task_fail(store *s, const store_task *t, int err, const char *message);
int pg_task_release(store *s, const store_task *t);
int pg_task_cancel_requested(store *s, const store_task *t, bool *yes);
int pg_job_tasks_clear_rows(store *s, const char *job_id,
                            char (**digests)[STORE_DIGEST_LEN], size_t *n);
void pg_set_wake(store *s, void (*fn)(void *arg), void *arg);

/* jobs.c, for open.c: put this node's running jobs (a dead incarnation's)
 * and every lapsed lease back in the queue, cancelling those whose
 * cancellation was asked for; *n gets how many were requeued. */
int pg_jobs_requeue_dead(store *s, int *n);
/* jobs.c, for the heartbeat: push this node's leases forward. */
int pg_jobs_renew_leases(store *s);

/* import.c: copying a store into another (store.h, queue.h). */
int pg_model_import(store *s, const store_model_record *r, bool *created);
int pg_job_import(store *s, const store_job_record *r, bool *created);
int pg_job_request_key(store *s, const char *id, char key[65]);
int pg_token_import(store *s, const store_token *t, const char *hash_hex,
                      bool *created);
int pg_token_hash(store *s, const char *id, char hash_hex[65]);

#endif
