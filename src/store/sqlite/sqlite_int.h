/* sqlite_int.h — what the files of the embedded store's index share and
 * no one outside sees: the handle's layout, the SQLite helpers (db.c), the
 * model columns and the attachment SQL that models.c and jobs.c both use.
 *
 * SQLite 3.40 rules we follow (DESIGN.md, "Known pitfalls"): WAL with
 * synchronous=FULL; one writer connection, every write serialised through
 * it in BEGIN IMMEDIATE; a reader connection per thread (made on first use,
 * closed when the thread exits or the store closes); a job is claimed with
 * UPDATE … RETURNING; `running` rows left by a dead process are requeued at
 * start-up. The schema comes from migrations/ embedded at build time,
 * applied in order under PRAGMA user_version. The files under sqlite/ are
 * the only ones that include sqlite3.h. */
#ifndef DECOMPD_STORE_SQLITE_INT_H
#define DECOMPD_STORE_SQLITE_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "backend.h"
#include "queue.h"
#include "store_int.h"

#define READER_CACHE 48

/* A thread's reader connection with its prepared statements, keyed by the
 * SQL text's address (every query is a string literal), so a status request
 * costs binds and steps, not parses. */
struct reader {
  sqlite3 *db;
  store *s;
  struct reader *next;
  struct {
    const char *sql;
    sqlite3_stmt *st;
  } cache[READER_CACHE];
  int ncache;
};

struct store {
  store_common c;          /* first: the table and the folders */
  sqlite3 *w;              /* the one writer connection */
  pthread_mutex_t wmu;     /* serialises every write through `w` */
  pthread_mutex_t blob_mu; /* blob presence vs. rows (store_blob_lock) */
  pthread_key_t rkey;      /* this thread's struct reader */
  pthread_mutex_t rmu;     /* guards `readers` */
  struct reader *readers;
  int lock_fd; /* owner's lock on DATA_DIR/decompd.lock */
  int version;
  bool owner;                 /* keeps the reserve (store_reserve_fill) */
  pthread_mutex_t reserve_mu; /* one fill or release at a time */
  store_wake wake;            /* store_set_wake: called on submit, retry */
  char node[128];             /* this daemon's node id (store_node_name):
                                 what a claim records as the job's node */
};

/* ---- db.c: statements and connections ---------------------------------- */

/* Record the failure of `what` on `db` (DISK_FULL for a full disk, else
 * STORE) and return its code. */
int sq_fail(sqlite3 *db, const char *what);
/* Run SQL that returns no rows (several statements allowed). */
int sq_exec_sql(sqlite3 *db, const char *sql);
/* Open a connection in WAL with synchronous=FULL. */
int sq_connect(const char *path, sqlite3 **out);
/* Prepare `sql` and bind arguments described by `fmt`: 's' text (NULL binds
 * NULL), 'i' int64, 'd' double, 'n' int (C int). */
int sq_prepf(sqlite3 *db, sqlite3_stmt **st, const char *sql, const char *fmt,
             ...);
void sq_col_copy(sqlite3_stmt *st, int i, char *dst, size_t len);
char *sq_col_dup(sqlite3_stmt *st, int i);
/* A reader connection: closed with its cached statements; dropped (the
 * thread-exit destructor of the handle's key) from the handle's list. */
void sq_reader_close(struct reader *r);
void sq_reader_drop(void *p);
/* Prepare (or take from this thread's cache when `db` is its reader) and
 * bind as sq_prepf. Release with sq_done(). */
int sq_prep(store *s, sqlite3 *db, sqlite3_stmt **st, const char *sql,
            const char *fmt, ...);
void sq_done(store *s, sqlite3_stmt *st);
/* This thread's reader connection. */
int sq_reader_db(store *s, sqlite3 **out);
/* Take the writer and open a write transaction; end it (commit when rc is
 * OK, else roll back) and release the writer, returning rc or the commit's
 * failure. */
int sq_wbegin(store *s);
int sq_wend(store *s, int rc);
/* Prepare, bind (as sq_prepf) and run one statement that returns no rows;
 * *changes (may be NULL) gets the rows it changed. */
int sq_execf(sqlite3 *db, int *changes, const char *sql, const char *fmt, ...);
#define EXEC sq_execf

/* ---- open.c ------------------------------------------------------------- */

/* Run `tx`; when it fails for want of space, free the reserve and run it
 * once more (a delete, the end of a running job). */
int sq_write_with_reserve(store *s, int (*tx)(store *, void *), void *arg);

/* ---- models.c (shards.c and jobs.c use them too) ------------------------ */

#define MODEL_COLS "id, digest, name, format, size, tensors, created_at"
#define MODEL_READ_COLS                                                        \
  MODEL_COLS                                                                   \
  ", spec IS NOT NULL, calibration, "                                          \
  "COALESCE(calibration_layers, 0), COALESCE(calibration_size, 0), "           \
  "profile, COALESCE(profile_layers, 0), COALESCE(profile_size, 0)"

void sq_model_row(sqlite3_stmt *st, store_model *m);
/* *m re-read from the models row of m->digest, on the writer connection. */
int sq_model_by_digest(store *s, store_model *m);

/* The SQL of one kind of model attachment (a blob with its layers and
 * size, in columns named after it); `what` names it in messages. */
struct attachment_sql {
  const char *what, *select, *set, *clear;
  const char *submit; /* (model id, request key) → (attached digest or '',
                         whether that job exists) */
};

extern const struct attachment_sql SQ_CALIBRATION_SQL;
extern const struct attachment_sql SQ_PROFILE_SQL;

/* ---- the embedded backend's entries (sqlite/backend.c), each with the
 * contract of the store.h or queue.h function of its name ---------------- */

int sq_store_open(const store_backend *self, const store_options *o,
                  store **out, int *requeued);
void sq_close(store *s);
bool sq_reserve_ok(store *s);
int sq_schema_version(store *s);
int sq_ping(store *s);
int sq_blob_gc(store *s, const char *digest);
void sq_blob_lock(store *s);
void sq_blob_unlock(store *s);
int sq_loose_blob_touch(store *s, const char *digest, int64_t size);
int sq_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs);
int sq_node_beat(store *s, const store_node *n);
int sq_node_list(store *s, store_node **out, size_t *n);
int sq_model_put(store *s, store_upload *u, store_model *m, bool *created);
int sq_model_get(store *s, const char *id, store_model *out);
int sq_model_list(store *s, store_model **out, size_t *n);
int sq_model_delete(store *s, const char *id);
int sq_model_set_spec(store *s, const char *id, const char *spec);
int sq_model_get_spec(store *s, const char *id, char **spec);
int sq_model_set_archive_spec(store *s, const char *id, const char *spec);
int sq_model_get_archive_spec(store *s, const char *id, char **spec);
int sq_model_set_attachment(store *s, const char *id, store_attachment kind,
                            const char *digest, int64_t layers, int64_t size,
                            char old[STORE_DIGEST_LEN]);
int sq_model_put_sharded_rows(store *s, store_model *m,
                              const store_shard *sh, size_t n, bool *created);
int sq_model_shards(store *s, const char *id, store_shard **out, size_t *n);
int sq_artifact_get(store *s, const char *job_id, const char *name,
                    store_artifact *out);
int sq_artifact_list(store *s, const char *job_id, store_artifact **out,
                     size_t *n);
int sq_token_put(store *s, const char *name, int role, const char *hash_hex,
                 char id[24]);
int sq_token_any(store *s, bool *any);
int sq_token_role(store *s, const char *hash_hex, int *role, char name[256]);
int sq_token_delete(store *s, const char *name);
int sq_token_list(store *s, store_token **out, size_t *n);
int sq_job_submit(store *s, const char *request_key, store_job *j,
                  bool *created);
int sq_job_get(store *s, const char *id, bool with_spec, store_job *out);
int sq_job_list(store *s, int state, int64_t before, int limit, store_job **out,
                size_t *n);
int sq_job_layers(store *s, const char *job_id, store_job_layer **out,
                  size_t *n);
int sq_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]);
int sq_job_claim(store *s, store_job *out);
int sq_job_progress(store *s, const char *job_id, int64_t total,
                    const store_job_layer *l);
int sq_job_current(store *s, const char *job_id, int64_t total,
                   const char *layer, const char *step, double fraction);
int sq_job_cancel_requested(store *s, const char *job_id, bool *yes);
int sq_job_set_peak_rss(store *s, const char *job_id, int64_t bytes);
int sq_job_succeed_rows(store *s, const char *job_id,
                         const store_artifact *a, size_t n);
int sq_job_fail(store *s, const char *job_id, int err, const char *message);
int sq_job_cancelled(store *s, const char *job_id);
int sq_job_requeue(store *s, const char *job_id);
int sq_job_cancel(store *s, const char *id, store_job *out);
int sq_job_retry(store *s, const char *id, store_job *out, bool *requeued);
int sq_job_delete(store *s, const char *id);
void sq_set_wake(store *s, void (*fn)(void *arg), void *arg);

/* import.c: copying a store into another (store.h, queue.h). */
int sq_model_import(store *s, const store_model_record *r, bool *created);
int sq_job_import(store *s, const store_job_record *r, bool *created);
int sq_job_request_key(store *s, const char *id, char key[65]);
int sq_token_import(store *s, const store_token *t, const char *hash_hex,
                      bool *created);
int sq_token_hash(store *s, const char *id, char hash_hex[65]);

#endif
