/* store.c — the store's and the queue's functions, dispatched through the
 * table of the backend the handle was opened with (backend.h). Opening
 * checks the table's version; everything else is one call through it, so
 * this file holds no policy of its own. */
#include <stddef.h>

#include "backend.h"
#include "store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every backend's handle begins with a store_common (store_int.h): the
 * table it dispatches through, then the folder layout. */
#define COMMON(s) ((const store_common *)(const void *)(s))
#define BACKEND(s) (COMMON(s)->backend)

const store_paths *store_paths_of(const store *s) {
  return &COMMON(s)->paths;
}

const store_backend *store_backend_for_index(const char *index) {
  if (!index || !index[0] || strcmp(index, "sqlite") == 0)
    return &store_backend_sqlite;
  if (strncmp(index, "postgresql://", 13) == 0 ||
      strncmp(index, "postgres://", 11) == 0)
    return &store_backend_pg;
  return NULL;
}

int store_open_backend(const store_backend *be, const store_options *o,
                       store **out, int *requeued) {
  *out = NULL;
  if (!be)
    return store_fail(DECOMP_ERR_STORE, "no store backend");
  if (be->version != STORE_BACKEND_VERSION)
    return store_fail(DECOMP_ERR_STORE,
                      "store backend %s: interface version %d, this decompd "
                      "speaks version %d",
                      be->name ? be->name : "(unnamed)", be->version,
                      STORE_BACKEND_VERSION);
  return be->open(be, o, out, requeued);
}

int store_open_with(const store_options *o, store **out, int *requeued) {
  const store_backend *be = store_backend_for_index(o->index);
  if (!be) {
    *out = NULL;
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "index = %s: expected sqlite or a PostgreSQL URI "
                      "(postgresql://…)",
                      o->index);
  }
  return store_open_backend(be, o, out, requeued);
}

int store_open(const char *data_dir, bool owner, store **out, int *requeued) {
  const store_options o = {.data_dir = data_dir, .owner = owner};
  return store_open_with(&o, out, requeued);
}

const store_backend *store_backend_of(const store *s) {
  return BACKEND(s);
}

void store_close(store *s) {
  if (s)
    BACKEND(s)->close(s);
}

void store_scrub(store *s, const char *in, char *out, size_t outlen) {
  BACKEND(s)->scrub(s, in, out, outlen);
}

bool store_reserve_ok(store *s) {
  return BACKEND(s)->reserve_ok(s);
}

int store_schema_version(store *s) {
  return BACKEND(s)->schema_version(s);
}

int store_ping(store *s) {
  return BACKEND(s)->ping(s);
}

int store_upload_begin(store *s, store_upload **out) {
  return BACKEND(s)->upload_begin(s, out);
}

int store_blob_open(store *s, const char *digest, int *fd, int64_t *size) {
  return BACKEND(s)->blob_open(s, digest, fd, size);
}

int store_blob_read(store *s, const char *digest, int64_t max, char **out,
                    size_t *len) {
  return BACKEND(s)->blob_read(s, digest, max, out, len);
}

int store_blob_path(store *s, const char *digest, char *buf, size_t len) {
  return BACKEND(s)->blob_path(s, digest, buf, len);
}

int store_blob_drop_copy(store *s, const char *digest) {
  return blobs_blob_drop_copy(s, digest);
}

int store_blob_gc(store *s, const char *digest) {
  return BACKEND(s)->blob_gc(s, digest);
}

void store_blob_lock(store *s) {
  BACKEND(s)->blob_lock(s);
}

void store_blob_unlock(store *s) {
  BACKEND(s)->blob_unlock(s);
}

int store_partial_open(store *s, const char *digest, int64_t offset,
                       store_partial **out, int64_t *have) {
  return BACKEND(s)->partial_open(s, digest, offset, out, have);
}

int store_partial_offset(store *s, const char *digest, int64_t *size) {
  return BACKEND(s)->partial_offset(s, digest, size);
}

int store_loose_blob_touch(store *s, const char *digest, int64_t size) {
  return BACKEND(s)->loose_blob_touch(s, digest, size);
}

/* The blob's presence and the row under the blob lock: no sweep collects
 * the blob between the two, on any backend. */
int store_loose_blob_refresh(store *s, const char *digest, int64_t *size) {
  store_blob_lock(s);
  int rc = blobs_blob_stat(s, digest, size);
  if (rc == DECOMP_OK)
    rc = store_loose_blob_touch(s, digest, *size);
  store_blob_unlock(s);
  return rc;
}

int store_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs) {
  return BACKEND(s)->uploads_sweep(s, ttl_ms, partials, blobs);
}

const char *store_tmp_dir(store *s) {
  return BACKEND(s)->tmp_dir(s);
}

int store_model_put(store *s, store_upload *u, store_model *m,
                    bool *created) {
  return BACKEND(s)->model_put(s, u, m, created);
}

int store_model_get(store *s, const char *id, store_model *out) {
  return BACKEND(s)->model_get(s, id, out);
}

int store_model_list(store *s, store_model **out, size_t *n) {
  return BACKEND(s)->model_list(s, out, n);
}

int store_model_delete(store *s, const char *id) {
  return BACKEND(s)->model_delete(s, id);
}

int store_model_set_spec(store *s, const char *id, const char *spec) {
  return BACKEND(s)->model_set_spec(s, id, spec);
}

int store_model_get_spec(store *s, const char *id, char **spec) {
  return BACKEND(s)->model_get_spec(s, id, spec);
}

int store_model_set_archive_spec(store *s, const char *id, const char *spec) {
  return BACKEND(s)->model_set_archive_spec(s, id, spec);
}

int store_model_get_archive_spec(store *s, const char *id, char **spec) {
  return BACKEND(s)->model_get_archive_spec(s, id, spec);
}

int store_model_set_attachment(store *s, const char *id, store_attachment kind,
                               const char *digest, int64_t layers,
                               int64_t size, char old[STORE_DIGEST_LEN]) {
  return BACKEND(s)->model_set_attachment(s, id, kind, digest, layers, size,
                                          old);
}

/* The upload's blob, the row and the collection of what it replaced (or,
 * on a failure, of the upload's own blob) under the blob lock, so that no
 * collection runs between them: the same steps on every backend. */
int store_model_attach(store *s, const char *id, store_attachment kind,
                       store_upload *u, int64_t layers, int64_t size,
                       char old[STORE_DIGEST_LEN]) {
  char digest[STORE_DIGEST_LEN] = "";
  old[0] = '\0';
  store_blob_lock(s);
  int rc = DECOMP_OK;
  if (u && (rc = store_upload_finish(u, digest)) == DECOMP_OK)
    rc = store_upload_commit(u);
  if (rc == DECOMP_OK)
    rc = store_model_set_attachment(s, id, kind, u ? digest : NULL, layers,
                                    size, old);
  if (rc == DECOMP_OK && old[0] && strcmp(old, digest) != 0) {
    store_blob_gc(s, old);
  } else if (rc != DECOMP_OK && digest[0]) {
    char why[1024]; /* the failure's message, past the collection's */
    snprintf(why, sizeof why, "%s", store_errmsg());
    store_blob_gc(s, digest);
    store_fail(rc, "%s", why);
  }
  store_blob_unlock(s);
  return rc;
}

/* Under the blob lock no blob is collected: each shard still there now
 * stays until the model's rows name it; the same steps on every backend. */
int store_model_put_sharded(store *s, store_upload *doc, store_model *m,
                            const store_shard *sh, size_t n, bool *created) {
  int rc = DECOMP_OK;
  store_blob_lock(s);
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    int64_t size;
    if (blobs_blob_stat(s, sh[i].digest, &size) != DECOMP_OK)
      rc = store_fail(DECOMP_ERR_BAD_SHARD_INDEX,
                      "shard %s: blob %s was removed meanwhile (upload it "
                      "again)",
                      sh[i].name, sh[i].digest);
  }
  if (rc == DECOMP_OK)
    rc = store_upload_commit(doc);
  if (rc == DECOMP_OK) {
    rc = BACKEND(s)->model_put_sharded_rows(s, m, sh, n, created);
    if (rc != DECOMP_OK) { /* the document's blob, unless a model names it */
      char why[1024];
      snprintf(why, sizeof why, "%s", store_errmsg());
      store_blob_gc(s, m->digest);
      store_fail(rc, "%s", why);
    }
  }
  store_blob_unlock(s);
  return rc;
}

void store_node_name(const store_options *o, char *buf, size_t len) {
  if (o->node_id && o->node_id[0]) {
    snprintf(buf, len, "%s", o->node_id);
    return;
  }
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  size_t k = 0;
  for (const char *p = host; *p && k + 1 < len; p++)
    buf[k++] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')
                   ? *p
                   : '_';
  buf[k] = '\0';
}

int store_node_beat(store *s, const store_node *n) {
  return BACKEND(s)->node_beat(s, n);
}

int store_node_list(store *s, store_node **out, size_t *n) {
  return BACKEND(s)->node_list(s, out, n);
}

int store_model_shards(store *s, const char *id, store_shard **out, size_t *n) {
  return BACKEND(s)->model_shards(s, id, out, n);
}

int store_artifact_get(store *s, const char *job_id, const char *name,
                       store_artifact *out) {
  return BACKEND(s)->artifact_get(s, job_id, name, out);
}

int store_artifact_list(store *s, const char *job_id, store_artifact **out,
                        size_t *n) {
  return BACKEND(s)->artifact_list(s, job_id, out, n);
}

int store_token_put(store *s, const char *name, int role, const char *hash_hex,
                    char id[24]) {
  return BACKEND(s)->token_put(s, name, role, hash_hex, id);
}

int store_token_any(store *s, bool *any) {
  return BACKEND(s)->token_any(s, any);
}

int store_token_role(store *s, const char *hash_hex, int *role,
                     char name[256]) {
  return BACKEND(s)->token_role(s, hash_hex, role, name);
}

int store_token_delete(store *s, const char *name) {
  return BACKEND(s)->token_delete(s, name);
}

int store_token_list(store *s, store_token **out, size_t *n) {
  return BACKEND(s)->token_list(s, out, n);
}

int store_job_submit(store *s, const char *request_key, store_job *j,
                     bool *created) {
  return BACKEND(s)->job_submit(s, request_key, j, created);
}

int store_job_get(store *s, const char *id, bool with_spec, store_job *out) {
  return BACKEND(s)->job_get(s, id, with_spec, out);
}

int store_job_list(store *s, int state, int64_t before, int limit,
                   store_job **out, size_t *n) {
  return BACKEND(s)->job_list(s, state, before, limit, out, n);
}

int store_job_layers(store *s, const char *job_id, store_job_layer **out,
                     size_t *n) {
  return BACKEND(s)->job_layers(s, job_id, out, n);
}

int store_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]) {
  return BACKEND(s)->job_counts(s, counts);
}

int store_job_claim(store *s, store_job *out) {
  return BACKEND(s)->job_claim(s, out);
}

int store_job_progress(store *s, const char *job_id, int64_t total,
                       const store_job_layer *l) {
  return BACKEND(s)->job_progress(s, job_id, total, l);
}

int store_job_current(store *s, const char *job_id, int64_t total,
                      const char *layer, const char *step, double fraction) {
  return BACKEND(s)->job_current(s, job_id, total, layer, step, fraction);
}

int store_job_cancel_requested(store *s, const char *job_id, bool *yes) {
  return BACKEND(s)->job_cancel_requested(s, job_id, yes);
}

int store_job_set_peak_rss(store *s, const char *job_id, int64_t bytes) {
  return BACKEND(s)->job_set_peak_rss(s, job_id, bytes);
}

/* The files go into the blob store and the rows that name them into the
 * index under the blob lock, so that no collection runs between the two:
 * the same steps on every backend. */
/* Under the blob lock: the job's task records dropped and collected. */
static int tasks_clear_locked(store *s, const char *job_id) {
  if (!BACKEND(s)->job_tasks_clear_rows)
    return DECOMP_OK; /* no tasks on this backend */
  char(*digests)[STORE_DIGEST_LEN] = NULL;
  size_t n = 0;
  int rc = BACKEND(s)->job_tasks_clear_rows(s, job_id, &digests, &n);
  for (size_t i = 0; rc == DECOMP_OK && i < n; i++)
    store_blob_gc(s, digests[i]);
  free(digests);
  return rc;
}

int store_job_succeed(store *s, const char *job_id, const store_artifact *a,
                      const char *const *paths, size_t n) {
  char why[1024];
  int rc = DECOMP_OK;
  store_blob_lock(s);
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    rc = blobs_blob_place_file(s, paths[i], a[i].digest);
    if (rc != DECOMP_OK) {
      snprintf(why, sizeof why, "%s", store_errmsg());
      store_fail(rc, "storing %s: %s", a[i].name, why);
    }
  }
  /* A spread job's task records go first: a job seen succeeded has none
   * left (a crash between the two leaves a running job whose next
   * attempt runs its tasks again). */
  if (rc == DECOMP_OK)
    rc = tasks_clear_locked(s, job_id);
  if (rc == DECOMP_OK) {
    rc = BACKEND(s)->job_succeed_rows(s, job_id, a, n);
    if (rc != DECOMP_OK) {
      snprintf(why, sizeof why, "%s", store_errmsg());
      store_fail(rc, "index: %s", why);
    }
  }
  store_blob_unlock(s);
  return rc;
}

int store_job_fail(store *s, const char *job_id, int err, const char *message) {
  return BACKEND(s)->job_fail(s, job_id, err, message);
}

int store_job_cancelled(store *s, const char *job_id) {
  return BACKEND(s)->job_cancelled(s, job_id);
}

int store_job_requeue(store *s, const char *job_id) {
  return BACKEND(s)->job_requeue(s, job_id);
}

int store_job_cancel(store *s, const char *id, store_job *out) {
  return BACKEND(s)->job_cancel(s, id, out);
}

int store_job_retry_rule(const store_job *j, bool *requeue) {
  *requeue = j->state == STORE_JOB_FAILED || j->state == STORE_JOB_CANCELLED;
  if (j->state == STORE_JOB_SUCCEEDED)
    return store_fail(DECOMP_ERR_CONFLICT,
                      "job %s has succeeded: there is nothing to retry "
                      "(delete it to run it again)",
                      j->id);
  if (!*requeue && j->cancel_requested)
    return store_fail(DECOMP_ERR_CONFLICT,
                      "job %s is being cancelled; retry it once it has "
                      "stopped",
                      j->id);
  return DECOMP_OK;
}

int store_job_retry_model_gone(const store_job *j) {
  return store_fail(DECOMP_ERR_CONFLICT, "job %s: its model %s has been deleted",
                    j->id, j->model_id);
}

int store_job_retry(store *s, const char *id, store_job *out, bool *requeued) {
  return BACKEND(s)->job_retry(s, id, out, requeued);
}

int store_job_delete(store *s, const char *id) {
  return BACKEND(s)->job_delete(s, id);
}

/* Under the blob lock: the blob `digest` that `what` names is stored. */
static int import_need_blob(store *s, const char *digest, const char *what) {
  int64_t size;
  if (!digest || !digest[0] || blobs_blob_stat(s, digest, &size) == DECOMP_OK)
    return DECOMP_OK;
  return store_fail(DECOMP_ERR_NOT_FOUND, "%s: blob %s is not in the store",
                    what, digest);
}

/* The blobs the rows name are checked and the rows written under the blob
 * lock, so that no collection runs between them: the same steps on every
 * backend, which writes the rows. */
int store_model_import(store *s, const store_model_record *r, bool *created) {
  char what[64];
  snprintf(what, sizeof what, "model %s", r->m.id);
  store_blob_lock(s);
  int rc = import_need_blob(s, r->m.digest, what);
  for (size_t i = 0; rc == DECOMP_OK && i < r->nshards; i++)
    rc = import_need_blob(s, r->shards[i].digest, what);
  if (rc == DECOMP_OK)
    rc = import_need_blob(s, r->m.calibration, what);
  if (rc == DECOMP_OK)
    rc = import_need_blob(s, r->m.profile, what);
  if (rc == DECOMP_OK)
    rc = BACKEND(s)->model_import(s, r, created);
  store_blob_unlock(s);
  return rc;
}

int store_job_import(store *s, const store_job_record *r, bool *created) {
  char what[64];
  snprintf(what, sizeof what, "job %s", r->j.id);
  store_blob_lock(s);
  int rc = import_need_blob(s, r->j.calibration, what);
  if (rc == DECOMP_OK)
    rc = import_need_blob(s, r->j.profile, what);
  for (size_t i = 0; rc == DECOMP_OK && i < r->nartifacts; i++)
    rc = import_need_blob(s, r->artifacts[i].digest, what);
  if (rc == DECOMP_OK)
    rc = BACKEND(s)->job_import(s, r, created);
  store_blob_unlock(s);
  return rc;
}

int store_job_request_key(store *s, const char *id, char key[65]) {
  return BACKEND(s)->job_request_key(s, id, key);
}

int store_token_import(store *s, const store_token *t, const char *hash_hex,
                       bool *created) {
  return BACKEND(s)->token_import(s, t, hash_hex, created);
}

int store_token_hash(store *s, const char *id, char hash_hex[65]) {
  return BACKEND(s)->token_hash(s, id, hash_hex);
}

void store_set_wake(store *s, void (*fn)(void *arg), void *arg) {
  BACKEND(s)->set_wake(s, fn, arg);
}

void store_wake_init(store_wake *w) {
  pthread_mutex_init(&w->mu, NULL);
  w->fn = NULL;
  w->arg = NULL;
}

void store_wake_destroy(store_wake *w) { pthread_mutex_destroy(&w->mu); }

void store_wake_set(store_wake *w, void (*fn)(void *arg), void *arg) {
  pthread_mutex_lock(&w->mu);
  w->fn = fn;
  w->arg = arg;
  pthread_mutex_unlock(&w->mu);
}

void store_wake_call(store_wake *w) {
  pthread_mutex_lock(&w->mu);
  if (w->fn)
    w->fn(w->arg);
  pthread_mutex_unlock(&w->mu);
}

/* ---- one job over many nodes: its tasks (queue.h) ---- */

const char *store_task_stage_name(int stage) {
  switch (stage) {
  case STORE_TASK_SPECTRA: return "spectra";
  case STORE_TASK_PLAN: return "plan";
  case STORE_TASK_FACTORS: return "factors";
  default: return "unknown";
  }
}

const char *store_task_state_name(int state) {
  switch (state) {
  case STORE_TASK_QUEUED: return "queued";
  case STORE_TASK_RUNNING: return "running";
  case STORE_TASK_DONE: return "done";
  case STORE_TASK_FAILED: return "failed";
  default: return "unknown";
  }
}

void store_task_clear(store_task *t) {
  if (!t)
    return;
  free(t->layers);
  free(t->error_message);
  t->layers = t->error_message = NULL;
}

void store_tasks_free(store_task *v, size_t n) {
  for (size_t i = 0; v && i < n; i++)
    store_task_clear(&v[i]);
  free(v);
}

bool store_tasks_supported(store *s) {
  return BACKEND(s)->task_claim != NULL;
}

static int no_tasks(store *s) {
  return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                    "the %s store runs each job whole: it has no tasks",
                    BACKEND(s)->name);
}

int store_job_tasks_begin(store *s, const char *job_id) {
  return BACKEND(s)->job_tasks_begin ? BACKEND(s)->job_tasks_begin(s, job_id)
                                     : no_tasks(s);
}

int store_job_tasks_add(store *s, const char *job_id, const store_task *t,
                        size_t n) {
  return BACKEND(s)->job_tasks_add ? BACKEND(s)->job_tasks_add(s, job_id, t, n)
                                   : no_tasks(s);
}

int store_job_tasks(store *s, const char *job_id, store_task **out,
                    size_t *n) {
  if (!BACKEND(s)->job_tasks) {
    *out = NULL;
    *n = 0;
    return DECOMP_OK;
  }
  return BACKEND(s)->job_tasks(s, job_id, out, n);
}

int store_task_claim(store *s, const char *job_id, store_task *out) {
  return BACKEND(s)->task_claim ? BACKEND(s)->task_claim(s, job_id, out)
                                : no_tasks(s);
}

int store_task_finish(store *s, const store_task *t, const char *path,
                      const char *digest, int64_t size) {
  if (!BACKEND(s)->task_finish_row)
    return no_tasks(s);
  char why[1024], old[STORE_DIGEST_LEN] = "";
  store_blob_lock(s);
  int rc = blobs_blob_place_file(s, path, digest);
  if (rc != DECOMP_OK) {
    snprintf(why, sizeof why, "%s", store_errmsg());
    store_fail(rc, "storing the %s record of task %s/%d: %s",
               store_task_stage_name(t->stage), t->job_id, t->index, why);
  }
  /* The record goes to the node that needs it from the object store: no
   * copy stays here (no one knows its digest before the row names it). */
  if (rc == DECOMP_OK)
    blobs_blob_drop_copy(s, digest);
  if (rc == DECOMP_OK) {
    rc = BACKEND(s)->task_finish_row(s, t, digest, size, old);
    if (rc != DECOMP_OK) {
      snprintf(why, sizeof why, "%s", store_errmsg());
      store_blob_gc(s, digest); /* unless another row names it */
      store_fail(rc, "index: %s", why);
    } else if (old[0] && strcmp(old, digest) != 0) {
      store_blob_gc(s, old);
    }
  }
  store_blob_unlock(s);
  return rc;
}

int store_task_fail(store *s, const store_task *t, int err,
                    const char *message) {
  return BACKEND(s)->task_fail ? BACKEND(s)->task_fail(s, t, err, message)
                               : no_tasks(s);
}

int store_task_release(store *s, const store_task *t) {
  return BACKEND(s)->task_release ? BACKEND(s)->task_release(s, t)
                                  : no_tasks(s);
}

int store_task_cancel_requested(store *s, const store_task *t, bool *yes) {
  return BACKEND(s)->task_cancel_requested
             ? BACKEND(s)->task_cancel_requested(s, t, yes)
             : no_tasks(s);
}

int store_job_tasks_clear(store *s, const char *job_id) {
  store_blob_lock(s);
  int rc = tasks_clear_locked(s, job_id);
  store_blob_unlock(s);
  return rc;
}
