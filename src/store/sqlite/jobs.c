/* jobs.c — the job queue in the embedded index: submit (idempotent by
 * request key), claim with UPDATE … RETURNING, progress, the end of a
 * running job (with its artifacts), cancel, retry and delete. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_int.h"

static const char *const STATE_NAMES[STORE_JOB_STATE_COUNT] = {
    "queued", "running", "succeeded", "failed", "cancelled"};

const char *store_job_state_name(int state) {
  return state >= 0 && state < STORE_JOB_STATE_COUNT ? STATE_NAMES[state]
                                                     : "unknown";
}

int store_job_state_from_name(const char *name) {
  for (int i = 0; i < STORE_JOB_STATE_COUNT; i++)
    if (name && strcmp(name, STATE_NAMES[i]) == 0)
      return i;
  return -1;
}

void store_job_clear(store_job *j) {
  if (!j)
    return;
  free(j->error_message);
  free(j->spec);
  free(j->policy);
  j->error_message = j->spec = j->policy = NULL;
}

#define JOB_COLS                                                               \
  "seq, id, model_id, state, cancel_requested, attempts, layers_total, "       \
  "layers_done, error_code, error_message, created_at, "                       \
  "COALESCE(started_at, 0), COALESCE(finished_at, 0), current_layer, "         \
  "current_step, COALESCE(current_fraction, 0), calibration, profile, "        \
  "COALESCE(shard_bytes, 0), COALESCE(peak_rss_bytes, 0), node"
#define JOB_COLS_SPEC JOB_COLS ", spec, policy"

static void job_row(sqlite3_stmt *st, store_job *j, bool with_spec) {
  memset(j, 0, sizeof *j);
  j->seq = sqlite3_column_int64(st, 0);
  sq_col_copy(st, 1, j->id, sizeof j->id);
  sq_col_copy(st, 2, j->model_id, sizeof j->model_id);
  j->state =
      store_job_state_from_name((const char *)sqlite3_column_text(st, 3));
  j->cancel_requested = sqlite3_column_int(st, 4) != 0;
  j->attempts = sqlite3_column_int(st, 5);
  j->layers_total = sqlite3_column_int64(st, 6);
  j->layers_done = sqlite3_column_int64(st, 7);
  sq_col_copy(st, 8, j->error_code, sizeof j->error_code);
  j->error_message = sq_col_dup(st, 9);
  j->created_at = sqlite3_column_int64(st, 10);
  j->started_at = sqlite3_column_int64(st, 11);
  j->finished_at = sqlite3_column_int64(st, 12);
  sq_col_copy(st, 13, j->current_layer, sizeof j->current_layer);
  sq_col_copy(st, 14, j->current_step, sizeof j->current_step);
  j->current_fraction = sqlite3_column_double(st, 15);
  sq_col_copy(st, 16, j->calibration, sizeof j->calibration);
  sq_col_copy(st, 17, j->profile, sizeof j->profile);
  j->shard_bytes = sqlite3_column_int64(st, 18);
  j->peak_rss_bytes = sqlite3_column_int64(st, 19);
  sq_col_copy(st, 20, j->node, sizeof j->node);
  if (with_spec) {
    j->spec = sq_col_dup(st, 21);
    j->policy = sq_col_dup(st, 22);
  }
}

/* Read one job through `db` (reader or the writer inside a transaction). */
static int job_read(store *s, sqlite3 *db, const char *sql, const char *key,
                    bool with_spec, store_job *out) {
  sqlite3_stmt *st = NULL;
  int rc = sq_prep(s, db, &st, sql, "s", key);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    job_row(st, out, with_spec);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no job %s", key);
  else
    rc = sq_fail(db, "job");
  sq_done(s, st);
  return rc;
}

/* Inside store_job_submit's transaction: unless a job with `request_key`
 * exists, `digest` must be the model's attached one of kind `q`. */
static int job_attachment_check(store *s, const struct attachment_sql *q,
                                const char *model_id, const char *request_key,
                                const char *digest) {
  sqlite3_stmt *st = NULL;
  int rc = sq_prepf(s->w, &st, q->submit, "ss", model_id, request_key);
  if (rc != DECOMP_OK)
    return rc;
  if (sqlite3_step(st) != SQLITE_ROW) {
    rc = sq_fail(s->w, q->what);
  } else if (sqlite3_column_int(st, 1) == 0) {
    const char *now = (const char *)sqlite3_column_text(st, 0);
    if (!now || !now[0])
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "model %s has no %s attached, not %s %s", model_id,
                      q->what, q->what, digest);
    else if (strcmp(now, digest) != 0)
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "model %s has %s %s attached, not %s %s", model_id,
                      q->what, now, q->what, digest);
  }
  sq_done(s, st);
  return rc;
}

int sq_job_submit(store *s, const char *request_key, store_job *j,
                  bool *created) {
  char id[24];
  if (!store_random_id("j_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = sq_wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* The model must exist in the transaction that queues the job: checked
   * before it, a DELETE of the model could land in between and both
   * succeed, leaving a queued job on a model that is gone. */
  sqlite3_stmt *st = NULL;
  rc = sq_prepf(s->w, &st, "SELECT EXISTS(SELECT 1 FROM models WHERE id=?)",
                "s", j->model_id);
  if (rc == DECOMP_OK) {
    if (sqlite3_step(st) != SQLITE_ROW)
      rc = sq_fail(s->w, "job model");
    else if (sqlite3_column_int(st, 0) == 0)
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", j->model_id);
    sq_done(s, st);
  }
  /* So must its calibration and its profile, for a new job: attached to
   * the model now (a replacement landing just before would have collected
   * its blob; once the row is in, the row keeps it). An existing job is
   * returned as it is, whatever the model has attached since. */
  if (rc == DECOMP_OK && j->calibration[0])
    rc = job_attachment_check(s, &SQ_CALIBRATION_SQL, j->model_id, request_key,
                              j->calibration);
  if (rc == DECOMP_OK && j->profile[0])
    rc = job_attachment_check(s, &SQ_PROFILE_SQL, j->model_id, request_key,
                              j->profile);
  if (rc == DECOMP_OK)
    rc =
        EXEC(s->w, &n,
             "INSERT INTO jobs (id, model_id, request_key, spec, policy, "
             "calibration, profile, state, created_at, shard_bytes) "
             "VALUES (?,?,?,?,?,?,?,'queued',?,NULLIF(?,0)) "
             "ON CONFLICT (request_key) DO NOTHING",
             "sssssssii", id, j->model_id, request_key, j->spec, j->policy,
             j->calibration[0] ? j->calibration : NULL,
             j->profile[0] ? j->profile : NULL, store_now_ms(), j->shard_bytes);
  store_job row;
  if (rc == DECOMP_OK)
    rc = job_read(s, s->w,
                  "SELECT " JOB_COLS_SPEC " FROM jobs WHERE request_key=?",
                  request_key, true, &row);
  rc = sq_wend(s, rc);
  if (rc != DECOMP_OK)
    return rc;
  *j = row;
  *created = n > 0;
  if (*created)
    store_wake_call(&s->wake);
  return DECOMP_OK;
}

int sq_job_get(store *s, const char *id, bool with_spec, store_job *out) {
  sqlite3 *db;
  int rc = sq_reader_db(s, &db);
  if (rc != DECOMP_OK)
    return rc;
  return job_read(s, db,
                  with_spec ? "SELECT " JOB_COLS_SPEC " FROM jobs WHERE id=?"
                            : "SELECT " JOB_COLS " FROM jobs WHERE id=?",
                  id, with_spec, out);
}

int sq_job_list(store *s, int state, int64_t before, int limit, store_job **out,
                size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT " JOB_COLS " FROM jobs WHERE (?1 < 0 OR state=?2) "
                 "AND (?3 = 0 OR seq < ?3) ORDER BY seq DESC LIMIT ?4",
                 "nsin", state, store_job_state_name(state), before, limit);
  if (rc != DECOMP_OK)
    return rc;
  store_job *v = calloc(limit > 0 ? (size_t)limit : 1, sizeof *v);
  size_t cnt = 0;
  if (!v)
    rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
  int r = SQLITE_DONE;
  while (rc == DECOMP_OK && cnt < (size_t)limit &&
         (r = sqlite3_step(st)) == SQLITE_ROW)
    job_row(st, &v[cnt++], false);
  if (rc == DECOMP_OK && r != SQLITE_DONE && r != SQLITE_ROW)
    rc = sq_fail(db, "job list");
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    for (size_t i = 0; i < cnt; i++)
      store_job_clear(&v[i]);
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int sq_job_layers(store *s, const char *job_id, store_job_layer **out,
                  size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT idx, name, rank, max_rank, seconds, "
                 "COALESCE(skip_reason, '') FROM job_layers WHERE job_id=? "
                 "ORDER BY idx",
                 "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  store_job_layer *v = NULL;
  size_t cnt = 0, cap = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 32;
      store_job_layer *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    store_job_layer *l = &v[cnt++];
    l->index = sqlite3_column_int64(st, 0);
    sq_col_copy(st, 1, l->name, sizeof l->name);
    l->rank = sqlite3_column_int64(st, 2);
    l->max_rank = sqlite3_column_int64(st, 3);
    l->seconds = sqlite3_column_double(st, 4);
    sq_col_copy(st, 5, l->skip_reason, sizeof l->skip_reason);
  }
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int sq_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st, "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                 "");
  if (rc != DECOMP_OK)
    return rc;
  for (int i = 0; i < STORE_JOB_STATE_COUNT; i++)
    counts[i] = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    int k = store_job_state_from_name((const char *)sqlite3_column_text(st, 0));
    if (k >= 0)
      counts[k] = sqlite3_column_int64(st, 1);
  }
  sq_done(s, st);
  return DECOMP_OK;
}

int sq_job_claim(store *s, store_job *out) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  rc = sq_prepf(s->w, &st,
                "UPDATE jobs SET state='running', attempts=attempts+1, "
                "started_at=?1, layers_done=0, error_code=NULL, "
                "error_message=NULL, current_layer=NULL, current_step=NULL, "
                "current_fraction=NULL, node=?2 WHERE seq = (SELECT seq FROM "
                "jobs WHERE state='queued' ORDER BY seq LIMIT 1) RETURNING "
                JOB_COLS_SPEC,
                "is", store_now_ms(), s->node);
  if (rc == DECOMP_OK) {
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
      job_row(st, out, true);
      /* Drain RETURNING so the UPDATE completes before the finalize. */
      while (sqlite3_step(st) == SQLITE_ROW)
        ;
    } else if (r == SQLITE_DONE) {
      rc = DECOMP_ERR_NOT_FOUND;
    } else {
      rc = sq_fail(s->w, "claim");
    }
    sq_done(s, st);
  }
  if (rc == DECOMP_OK)
    rc =
        EXEC(s->w, NULL, "DELETE FROM job_layers WHERE job_id=?", "s", out->id);
  if (rc == DECOMP_ERR_NOT_FOUND) {
    sq_wend(s, DECOMP_OK);
    return DECOMP_ERR_NOT_FOUND;
  }
  rc = sq_wend(s, rc);
  if (rc != DECOMP_OK)
    store_job_clear(out);
  return rc;
}

int sq_job_progress(store *s, const char *job_id, int64_t total,
                    const store_job_layer *l) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT OR REPLACE INTO job_layers (job_id, idx, name, rank, "
            "max_rank, seconds, skip_reason) VALUES (?,?,?,?,?,?,?)",
            "sisiids", job_id, l->index, l->name, l->rank, l->max_rank,
            l->seconds, l->skip_reason[0] ? l->skip_reason : NULL);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET layers_total=?2, layers_done=(SELECT COUNT(*) "
              "FROM job_layers WHERE job_id=?1), current_layer=NULL, "
              "current_step=NULL, current_fraction=NULL WHERE id=?1",
              "si", job_id, total);
  return sq_wend(s, rc);
}

int sq_job_current(store *s, const char *job_id, int64_t total,
                   const char *layer, const char *step, double fraction) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "UPDATE jobs SET layers_total=?2, current_layer=?3, "
            "current_step=?4, current_fraction=?5 WHERE id=?1 AND "
            "state='running'",
            "sissd", job_id, total, layer, step, fraction);
  return sq_wend(s, rc);
}

int sq_job_cancel_requested(store *s, const char *job_id, bool *yes) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st, "SELECT cancel_requested FROM jobs WHERE id=?",
                 "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  /* A deleted row counts as cancelled. */
  *yes = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) != 0 : true;
  sq_done(s, st);
  return DECOMP_OK;
}

int sq_job_set_peak_rss(store *s, const char *job_id, int64_t bytes) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL, "UPDATE jobs SET peak_rss_bytes=? WHERE id=?", "is",
            bytes, job_id);
  return sq_wend(s, rc);
}

int sq_job_succeed_rows(store *s, const char *job_id,
                         const store_artifact *a, size_t n) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++)
    rc = EXEC(s->w, NULL,
              "INSERT OR REPLACE INTO artifacts (job_id, name, digest, size, "
              "media_type) VALUES (?,?,?,?,?)",
              "sssis", job_id, a[i].name, a[i].digest, a[i].size,
              a[i].media_type);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET state='succeeded', finished_at=? WHERE id=? "
              "AND state='running'",
              "is", store_now_ms(), job_id);
  return sq_wend(s, rc);
}

/* A running job's end: failed or cancelled (finished now) or back in the
 * queue. */
struct job_end {
  const char *id;
  const char *state;
  const char *code, *message; /* failed only */
};

static int job_end_tx(store *s, void *arg) {
  const struct job_end *e = arg;
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  if (strcmp(e->state, "queued") == 0)
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET state='queued' WHERE id=? AND state='running'",
              "s", e->id);
  else
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET state=?1, finished_at=?2, error_code=?3, "
              "error_message=?4 WHERE id=?5 AND state='running'",
              "sisss", e->state, store_now_ms(), e->code, e->message, e->id);
  return sq_wend(s, rc);
}

/* Ending a job may use the reserve too: on a full disk a job left
 * `running` would hold its model (store_model_delete refuses) until the
 * daemon restarts. */
int sq_job_fail(store *s, const char *job_id, int err, const char *message) {
  struct job_end e = {job_id, "failed", decomp_error_code(err), message};
  return sq_write_with_reserve(s, job_end_tx, &e);
}

int sq_job_cancelled(store *s, const char *job_id) {
  struct job_end e = {job_id, "cancelled", NULL, NULL};
  return sq_write_with_reserve(s, job_end_tx, &e);
}

int sq_job_requeue(store *s, const char *job_id) {
  struct job_end e = {job_id, "queued", NULL, NULL};
  return sq_write_with_reserve(s, job_end_tx, &e);
}

int sq_job_cancel(store *s, const char *id, store_job *out) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_QUEUED)
      rc = EXEC(s->w, NULL,
                "UPDATE jobs SET state='cancelled', cancel_requested=1, "
                "finished_at=? WHERE id=?",
                "is", store_now_ms(), id);
    else if (j.state == STORE_JOB_RUNNING)
      rc = EXEC(s->w, NULL, "UPDATE jobs SET cancel_requested=1 WHERE id=?",
                "s", id);
    else if (j.state != STORE_JOB_CANCELLED)
      rc = store_fail(DECOMP_ERR_CONFLICT, "job %s has already %s", id,
                      store_job_state_name(j.state));
    store_job_clear(&j);
  }
  if (rc == DECOMP_OK)
    rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id,
                  false, out);
  return sq_wend(s, rc);
}

int sq_job_retry(store *s, const char *id, store_job *out, bool *requeued) {
  *requeued = false;
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                &j);
  bool held = rc == DECOMP_OK, again = false;
  if (rc == DECOMP_OK)
    rc = store_job_retry_rule(&j, &again);
  /* A queued or running job is going to run: nothing to do. */
  if (rc == DECOMP_OK && again) {
    /* As at submit: its model must exist in this transaction. */
    sqlite3_stmt *st = NULL;
    rc = sq_prepf(s->w, &st, "SELECT EXISTS(SELECT 1 FROM models WHERE id=?)",
                  "s", j.model_id);
    if (rc == DECOMP_OK) {
      if (sqlite3_step(st) != SQLITE_ROW)
        rc = sq_fail(s->w, "job model");
      else if (sqlite3_column_int(st, 0) == 0)
        rc = store_job_retry_model_gone(&j);
      sq_done(s, st);
    }
    /* A new attempt at the back of the queue (a new seq: the queue and
     * the list go by it); attempts keep counting. */
    if (rc == DECOMP_OK)
      rc = EXEC(s->w, NULL,
                "UPDATE jobs SET seq=(SELECT MAX(seq) + 1 FROM jobs), "
                "state='queued', cancel_requested=0, layers_done=0, "
                "layers_total=0, error_code=NULL, error_message=NULL, "
                "started_at=NULL, finished_at=NULL, current_layer=NULL, "
                "current_step=NULL, current_fraction=NULL WHERE id=?",
                "s", id);
    if (rc == DECOMP_OK)
      rc = EXEC(s->w, NULL, "DELETE FROM job_layers WHERE job_id=?", "s", id);
    *requeued = rc == DECOMP_OK;
  }
  if (held)
    store_job_clear(&j);
  bool filled = false;
  if (rc == DECOMP_OK)
    filled = (rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?",
                            id, false, out)) == DECOMP_OK;
  rc = sq_wend(s, rc);
  if (rc != DECOMP_OK) {
    *requeued = false;
    if (filled)
      store_job_clear(out);
  }
  if (*requeued)
    store_wake_call(&s->wake);
  return rc;
}

struct job_delete {
  const char *id;
  char (**digests)[STORE_DIGEST_LEN];
  size_t *n;
};

static int job_delete_tx(store *s, void *arg) {
  const char *id = ((struct job_delete *)arg)->id;
  char(**digests)[STORE_DIGEST_LEN] = ((struct job_delete *)arg)->digests;
  size_t *n = ((struct job_delete *)arg)->n;
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  char(*v)[STORE_DIGEST_LEN] = NULL;
  char calibration[STORE_DIGEST_LEN] = "", profile[STORE_DIGEST_LEN] = "";
  size_t cnt = 0;
  rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_QUEUED || j.state == STORE_JOB_RUNNING)
      rc = store_fail(DECOMP_ERR_CONFLICT, "job %s is %s; cancel it first", id,
                      store_job_state_name(j.state));
    memcpy(calibration, j.calibration, sizeof calibration);
    memcpy(profile, j.profile, sizeof profile);
    store_job_clear(&j);
  }
  if (rc == DECOMP_OK) {
    sqlite3_stmt *st = NULL;
    rc = sq_prepf(s->w, &st, "SELECT digest FROM artifacts WHERE job_id=?", "s",
                  id);
    if (rc == DECOMP_OK) {
      /* the artifacts (a sharded output has one per shard), then the
       * calibration and the profile */
      size_t cap = 16;
      v = calloc(cap, sizeof *v);
      while (v && sqlite3_step(st) == SQLITE_ROW) {
        if (cnt + 2 >= cap) {
          char(*nv)[STORE_DIGEST_LEN] = realloc(v, 2 * cap * sizeof *v);
          if (!nv) {
            free(v);
            v = NULL;
            break;
          }
          v = nv;
          cap *= 2;
        }
        sq_col_copy(st, 0, v[cnt++], STORE_DIGEST_LEN);
      }
      sq_done(s, st);
      if (!v)
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
      if (v && calibration[0])
        memcpy(v[cnt++], calibration, STORE_DIGEST_LEN);
      if (v && profile[0])
        memcpy(v[cnt++], profile, STORE_DIGEST_LEN);
    }
  }
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM artifacts WHERE job_id=?", "s", id);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM job_layers WHERE job_id=?", "s", id);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM jobs WHERE id=?", "s", id);
  rc = sq_wend(s, rc);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *digests = v;
  *n = cnt;
  return DECOMP_OK;
}

int sq_job_delete(store *s, const char *id) {
  char(*digests)[STORE_DIGEST_LEN] = NULL;
  size_t n = 0;
  struct job_delete a = {id, &digests, &n};
  sq_blob_lock(s);
  int rc = sq_write_with_reserve(s, job_delete_tx, &a);
  for (size_t i = 0; rc == DECOMP_OK && i < n; i++)
    sq_blob_gc(s, digests[i]);
  sq_blob_unlock(s);
  free(digests);
  return rc;
}
