/* jobs.c — the job queue in the PostgreSQL index, shared by every node:
 * submit (idempotent by request key), claim with FOR UPDATE SKIP LOCKED as
 * a lease (this node's id and an expiry, renewed by the heartbeat),
 * progress and the end of a running job (only by the node holding its
 * lease), cancel, retry and delete; with the semantics of sqlite/jobs.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_int.h"

#define JOB_COLS                                                               \
  "seq, id, model_id, state, cancel_requested, attempts, layers_total, "       \
  "layers_done, error_code, error_message, created_at, "                       \
  "COALESCE(started_at, 0), COALESCE(finished_at, 0), current_layer, "         \
  "current_step, COALESCE(current_fraction, 0), calibration, profile, "        \
  "COALESCE(shard_bytes, 0), COALESCE(peak_rss_bytes, 0), node"
#define JOB_COLS_SPEC JOB_COLS ", spec, policy"

/* A running job this node holds: its row names this node. */
#define MINE "state='running' AND lease_node=$2"
/* ... or one of whose tasks this node runs (its progress is the job's). */
#define MINE_OR_TASK                                                           \
  "state='running' AND (lease_node=$2 OR EXISTS(SELECT 1 FROM job_tasks t "    \
  "WHERE t.job_id=jobs.id AND t.state='running' AND t.lease_node=$2))"

static void job_row(const PGresult *r, int i, store_job *j, bool with_spec) {
  memset(j, 0, sizeof *j);
  j->seq = pg_col_i64(r, i, 0);
  pg_col_copy(r, i, 1, j->id, sizeof j->id);
  pg_col_copy(r, i, 2, j->model_id, sizeof j->model_id);
  j->state = store_job_state_from_name(PQgetvalue(r, i, 3));
  j->cancel_requested = pg_col_i64(r, i, 4) != 0;
  j->attempts = (int)pg_col_i64(r, i, 5);
  j->layers_total = pg_col_i64(r, i, 6);
  j->layers_done = pg_col_i64(r, i, 7);
  pg_col_copy(r, i, 8, j->error_code, sizeof j->error_code);
  j->error_message = pg_col_dup(r, i, 9);
  j->created_at = pg_col_i64(r, i, 10);
  j->started_at = pg_col_i64(r, i, 11);
  j->finished_at = pg_col_i64(r, i, 12);
  pg_col_copy(r, i, 13, j->current_layer, sizeof j->current_layer);
  pg_col_copy(r, i, 14, j->current_step, sizeof j->current_step);
  j->current_fraction = pg_col_f64(r, i, 15);
  pg_col_copy(r, i, 16, j->calibration, sizeof j->calibration);
  pg_col_copy(r, i, 17, j->profile, sizeof j->profile);
  j->shard_bytes = pg_col_i64(r, i, 18);
  j->peak_rss_bytes = pg_col_i64(r, i, 19);
  pg_col_copy(r, i, 20, j->node, sizeof j->node);
  if (with_spec) {
    j->spec = pg_col_dup(r, i, 21);
    j->policy = pg_col_dup(r, i, 22);
  }
}

/* One job by `sql` (one text parameter) on `c`. */
static int job_read(PGconn *c, const char *sql, const char *key,
                    bool with_spec, store_job *out) {
  PGresult *r = NULL;
  int rc = pg_execf(c, &r, NULL, sql, "s", key);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    job_row(r, 0, out, with_spec);
  else
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no job %s", key);
  PQclear(r);
  return rc;
}

/* Inside a transaction: the model's row, locked against its delete and a
 * change of its attachments until the transaction ends; its calibration
 * and profile digests ("" when none). DECOMP_ERR_NOT_FOUND when gone. */
static int model_hold(PGconn *c, const char *model_id,
                      char calibration[STORE_DIGEST_LEN],
                      char profile[STORE_DIGEST_LEN]) {
  PGresult *r = NULL;
  int rc = pg_execf(c, &r, NULL,
                    "SELECT calibration, profile FROM models WHERE id=$1 FOR "
                    "SHARE",
                    "s", model_id);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1) {
    pg_col_copy(r, 0, 0, calibration, STORE_DIGEST_LEN);
    pg_col_copy(r, 0, 1, profile, STORE_DIGEST_LEN);
  } else {
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", model_id);
  }
  PQclear(r);
  return rc;
}

/* A new job's attachment must be the model's attached one of its kind. */
static int attachment_check(const char *what, const char *model_id,
                            const char *now, const char *digest) {
  if (!digest[0])
    return DECOMP_OK;
  if (!now[0])
    return store_fail(DECOMP_ERR_CONFLICT,
                      "model %s has no %s attached, not %s %s", model_id, what,
                      what, digest);
  if (strcmp(now, digest) != 0)
    return store_fail(DECOMP_ERR_CONFLICT,
                      "model %s has %s %s attached, not %s %s", model_id, what,
                      now, what, digest);
  return DECOMP_OK;
}

int pg_job_submit(store *s, const char *request_key, store_job *j,
                  bool *created) {
  char id[24];
  if (!store_random_id("j_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  PGconn *c = NULL;
  int rc = pg_begin(s, &c), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* The model must exist in the transaction that queues the job, and stay
   * (FOR SHARE) until it commits: a delete waits for it, then sees the
   * job. */
  char calibration[STORE_DIGEST_LEN] = "", profile[STORE_DIGEST_LEN] = "";
  rc = model_hold(c, j->model_id, calibration, profile);
  /* So must its calibration and its profile, for a new job; an existing
   * job is returned as it is. */
  bool exists = false;
  if (rc == DECOMP_OK && (j->calibration[0] || j->profile[0])) {
    PGresult *r = NULL;
    rc = pg_execf(c, &r, NULL,
                  "SELECT EXISTS(SELECT 1 FROM jobs WHERE request_key=$1)", "s",
                  request_key);
    if (rc == DECOMP_OK) {
      exists = pg_col_bool(r, 0, 0);
      PQclear(r);
    }
  }
  if (rc == DECOMP_OK && !exists)
    rc = attachment_check("calibration", j->model_id, calibration,
                          j->calibration);
  if (rc == DECOMP_OK && !exists)
    rc = attachment_check("profile", j->model_id, profile, j->profile);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, &n,
                  "INSERT INTO jobs (id, model_id, request_key, spec, policy, "
                  "calibration, profile, state, created_at, shard_bytes) "
                  "VALUES ($1,$2,$3,$4,$5,$6,$7,'queued',$8,"
                  "NULLIF($9::bigint, 0)) ON CONFLICT (request_key) DO NOTHING",
                  "sssssssii", id, j->model_id, request_key, j->spec,
                  j->policy, j->calibration[0] ? j->calibration : NULL,
                  j->profile[0] ? j->profile : NULL, store_now_ms(),
                  j->shard_bytes);
  /* Every node hears of it when this commits (their listeners). */
  if (rc == DECOMP_OK && n > 0)
    rc = pg_execf(c, NULL, NULL, "NOTIFY " PG_CHANNEL, "");
  store_job row;
  if (rc == DECOMP_OK)
    rc = job_read(c, "SELECT " JOB_COLS_SPEC " FROM jobs WHERE request_key=$1",
                  request_key, true, &row);
  bool filled = rc == DECOMP_OK;
  rc = pg_end(s, c, rc);
  if (rc != DECOMP_OK) {
    if (filled)
      store_job_clear(&row);
    return rc;
  }
  *j = row;
  *created = n > 0;
  if (*created)
    store_wake_call(&s->wake);
  return DECOMP_OK;
}

int pg_job_get(store *s, const char *id, bool with_spec, store_job *out) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     with_spec ? "SELECT " JOB_COLS_SPEC " FROM jobs WHERE id=$1"
                               : "SELECT " JOB_COLS " FROM jobs WHERE id=$1",
                     "s", id);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    job_row(r, 0, out, with_spec);
  else
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no job %s", id);
  PQclear(r);
  return rc;
}

int pg_job_list(store *s, int state, int64_t before, int limit, store_job **out,
                size_t *n) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT " JOB_COLS " FROM jobs WHERE ($1::int < 0 OR "
                     "state=$2) AND ($3::bigint = 0 OR seq < $3::bigint) "
                     "ORDER BY seq DESC LIMIT $4::int",
                     "nsin", state, store_job_state_name(state), before,
                     limit > 0 ? limit : 0);
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_job *v = calloc(limit > 0 ? (size_t)limit : 1, sizeof *v);
  if (!v) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++)
    job_row(r, i, &v[i], false);
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}

int pg_job_layers(store *s, const char *job_id, store_job_layer **out,
                  size_t *n) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT idx, name, rank, max_rank, seconds, "
                     "COALESCE(skip_reason, '') FROM job_layers WHERE "
                     "job_id=$1 ORDER BY idx",
                     "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_job_layer *v = NULL;
  if (rows > 0 && !(v = calloc((size_t)rows, sizeof *v))) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++) {
    store_job_layer *l = &v[i];
    l->index = pg_col_i64(r, i, 0);
    pg_col_copy(r, i, 1, l->name, sizeof l->name);
    l->rank = pg_col_i64(r, i, 2);
    l->max_rank = pg_col_i64(r, i, 3);
    l->seconds = pg_col_f64(r, i, 4);
    pg_col_copy(r, i, 5, l->skip_reason, sizeof l->skip_reason);
  }
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}

int pg_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT state, COUNT(*) FROM jobs GROUP BY state", "");
  if (rc != DECOMP_OK)
    return rc;
  for (int i = 0; i < STORE_JOB_STATE_COUNT; i++)
    counts[i] = 0;
  for (int i = 0; i < PQntuples(r); i++) {
    int k = store_job_state_from_name(PQgetvalue(r, i, 0));
    if (k >= 0)
      counts[k] = pg_col_i64(r, i, 1);
  }
  PQclear(r);
  return DECOMP_OK;
}

/* A running job whose lease has lapsed and whose cancellation was asked
 * for ends cancelled (its node died before it could stop it), as the
 * embedded index does at start-up; `node` (start-up) adds that node's own
 * running jobs, whatever their lease says. */
static int end_lapsed_cancels(PGconn *c, const char *node) {
  if (node)
    return pg_execf(c, NULL, NULL,
                    "UPDATE jobs SET state='cancelled', finished_at=$1, "
                    "lease_node=NULL, lease_expires=NULL WHERE "
                    "state='running' AND cancel_requested<>0 AND "
                    "(lease_node=$2 OR lease_node IS NULL OR "
                    "lease_expires < " PG_NOW_MS ")",
                    "is", store_now_ms(), node);
  return pg_execf(c, NULL, NULL,
                  "UPDATE jobs SET state='cancelled', finished_at=$1, "
                  "lease_node=NULL, lease_expires=NULL WHERE "
                  "state='running' AND cancel_requested<>0 AND "
                  "lease_expires < " PG_NOW_MS,
                  "i", store_now_ms());
}

int pg_jobs_requeue_dead(store *s, int *n) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  rc = end_lapsed_cancels(c, s->node);
  /* This node's own (a dead incarnation: the node lock says no live
   * daemon is this node) and any lapsed lease; a live node's job, its
   * lease renewed, is left alone. */
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, n,
                  "UPDATE jobs SET state='queued', lease_node=NULL, "
                  "lease_expires=NULL WHERE state='running' AND "
                  "(lease_node=$1 OR lease_node IS NULL OR lease_expires < "
                  PG_NOW_MS ")",
                  "s", s->node);
  /* So are the tasks it held (others' lapsed ones are claimed as they
   * are). */
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL,
                  "UPDATE job_tasks SET state='queued', lease_node=NULL, "
                  "lease_expires=NULL WHERE state='running' AND "
                  "lease_node=$1",
                  "s", s->node);
  return pg_end(s, c, rc);
}

int pg_jobs_renew_leases(store *s) {
  int rc = pg_queryf(s, NULL, NULL,
                     "UPDATE jobs SET lease_expires=" PG_NOW_MS " + $1 WHERE "
                     "state='running' AND lease_node=$2",
                     "is", (int64_t)s->lease_ms, s->node);
  if (rc == DECOMP_OK)
    rc = pg_queryf(s, NULL, NULL,
                   "UPDATE job_tasks SET lease_expires=" PG_NOW_MS " + $1 "
                   "WHERE state='running' AND lease_node=$2",
                   "is", (int64_t)s->lease_ms, s->node);
  return rc;
}

int pg_job_claim(store *s, store_job *out) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  rc = end_lapsed_cancels(c, NULL);
  /* The oldest job that is queued, or running on a lease that lapsed (its
   * node died): rows another node is claiming are skipped, not waited
   * for. */
  PGresult *r = NULL;
  if (rc == DECOMP_OK)
    rc = pg_execf(
        c, &r, NULL,
        "UPDATE jobs SET state='running', attempts=attempts+1, "
        "started_at=$1, layers_done=0, error_code=NULL, error_message=NULL, "
        "current_layer=NULL, current_step=NULL, current_fraction=NULL, "
        "lease_node=$2, node=$2, lease_expires=" PG_NOW_MS " + $3 WHERE seq = (SELECT "
        "seq FROM jobs WHERE state='queued' OR (state='running' AND "
        "lease_expires < " PG_NOW_MS ") ORDER BY seq LIMIT 1 FOR UPDATE SKIP "
        "LOCKED) RETURNING " JOB_COLS_SPEC,
        "isi", store_now_ms(), s->node, (int64_t)s->lease_ms);
  bool filled = false;
  if (rc == DECOMP_OK) {
    if (PQntuples(r) == 1) {
      job_row(r, 0, out, true);
      filled = true;
    } else {
      rc = DECOMP_ERR_NOT_FOUND;
    }
    PQclear(r);
  }
  /* A fresh start, unless an earlier claim's tasks have records this one
   * goes on from: their layers stay reported. */
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL,
                  "DELETE FROM job_layers WHERE job_id=$1 AND NOT EXISTS("
                  "SELECT 1 FROM job_tasks WHERE job_id=$1 AND result IS NOT "
                  "NULL)",
                  "s", out->id);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL,
                  "UPDATE jobs SET layers_done=(SELECT COUNT(*) FROM "
                  "job_layers WHERE job_id=$1) WHERE id=$1",
                  "s", out->id);
  if (rc == DECOMP_ERR_NOT_FOUND) {
    pg_end(s, c, DECOMP_OK); /* the lapsed cancels, if any */
    return DECOMP_ERR_NOT_FOUND;
  }
  rc = pg_end(s, c, rc);
  if (rc != DECOMP_OK && filled)
    store_job_clear(out);
  return rc;
}

int pg_job_progress(store *s, const char *job_id, int64_t total,
                    const store_job_layer *l) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* Only while this node holds the job or a task of it (and the job's
   * row, locked here). */
  rc = pg_execf(c, NULL, &n,
                "UPDATE jobs SET layers_total=$3 WHERE id=$1 AND " MINE_OR_TASK,
                "ssi",
                job_id, s->node, total);
  if (rc == DECOMP_OK && n > 0)
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO job_layers (job_id, idx, name, rank, max_rank, "
                  "seconds, skip_reason) VALUES ($1,$2,$3,$4,$5,$6,$7) ON "
                  "CONFLICT (job_id, idx) DO UPDATE SET name=EXCLUDED.name, "
                  "rank=EXCLUDED.rank, max_rank=EXCLUDED.max_rank, "
                  "seconds=EXCLUDED.seconds, skip_reason=EXCLUDED.skip_reason",
                  "sisiids", job_id, l->index, l->name, l->rank, l->max_rank,
                  l->seconds, l->skip_reason[0] ? l->skip_reason : NULL);
  if (rc == DECOMP_OK && n > 0)
    rc = pg_execf(c, NULL, NULL,
                  "UPDATE jobs SET layers_done=(SELECT COUNT(*) FROM "
                  "job_layers WHERE job_id=$1), current_layer=NULL, "
                  "current_step=NULL, current_fraction=NULL WHERE id=$1",
                  "s", job_id);
  return pg_end(s, c, rc);
}

int pg_job_current(store *s, const char *job_id, int64_t total,
                   const char *layer, const char *step, double fraction) {
  return pg_queryf(s, NULL, NULL,
                   "UPDATE jobs SET layers_total=$3, current_layer=$4, "
                   "current_step=$5, current_fraction=$6 WHERE id=$1 AND "
                   MINE_OR_TASK,
                   "ssissd", job_id, s->node, total, layer, step, fraction);
}

int pg_job_cancel_requested(store *s, const char *job_id, bool *yes) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT cancel_requested, state='running' AND "
                     "lease_node IS NOT DISTINCT FROM $2 FROM jobs WHERE id=$1",
                     "ss", job_id, s->node);
  if (rc != DECOMP_OK)
    return rc;
  /* A deleted row counts as cancelled; so does a job this node no longer
   * holds (its lease lapsed and another node claimed it): its worker must
   * stop, and can write nothing more. */
  *yes = PQntuples(r) != 1 || pg_col_i64(r, 0, 0) != 0 || !pg_col_bool(r, 0, 1);
  PQclear(r);
  return DECOMP_OK;
}

int pg_job_set_peak_rss(store *s, const char *job_id, int64_t bytes) {
  /* Recorded by the node that ran it: while it holds the job, or once it
   * has ended it (no lease), never over another node's run. */
  return pg_queryf(s, NULL, NULL,
                   "UPDATE jobs SET peak_rss_bytes=$1 WHERE id=$2 AND "
                   "(lease_node IS NULL OR lease_node=$3)",
                   "iss", bytes, job_id, s->node);
}

int pg_job_succeed_rows(store *s, const char *job_id,
                         const store_artifact *a, size_t n) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++)
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO artifacts (job_id, name, digest, size, "
                  "media_type) VALUES ($1,$2,$3,$4,$5) ON CONFLICT (job_id, "
                  "name) DO UPDATE SET digest=EXCLUDED.digest, "
                  "size=EXCLUDED.size, media_type=EXCLUDED.media_type",
                  "sssis", job_id, a[i].name, a[i].digest, a[i].size,
                  a[i].media_type);
  int ended = 0;
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, &ended,
                  "UPDATE jobs SET state='succeeded', finished_at=$3, "
                  "lease_node=NULL, lease_expires=NULL WHERE id=$1 AND " MINE,
                  "ssi", job_id, s->node, store_now_ms());
  /* Not this node's any more (its lease lapsed and another node claimed
   * it, or it was deleted): its artifact rows are not written over the
   * other run's. */
  if (rc == DECOMP_OK && ended == 0)
    rc = store_fail(DECOMP_ERR_CONFLICT,
                    "job %s is no longer running on node %s", job_id,
                    s->node);
  return pg_end(s, c, rc);
}

/* A running job's end (this node's): failed or cancelled, or back in the
 * queue. */
static int job_end(store *s, const char *job_id, const char *state,
                   const char *code, const char *message) {
  if (strcmp(state, "queued") == 0)
    return pg_queryf(s, NULL, NULL,
                     "UPDATE jobs SET state='queued', lease_node=NULL, "
                     "lease_expires=NULL WHERE id=$1 AND " MINE,
                     "ss", job_id, s->node);
  return pg_queryf(s, NULL, NULL,
                   "UPDATE jobs SET state=$3, finished_at=$4, error_code=$5, "
                   "error_message=$6, lease_node=NULL, lease_expires=NULL "
                   "WHERE id=$1 AND " MINE,
                   "sssiss", job_id, s->node, state, store_now_ms(), code,
                   message);
}

int pg_job_fail(store *s, const char *job_id, int err, const char *message) {
  return job_end(s, job_id, "failed", decomp_error_code(err), message);
}

int pg_job_cancelled(store *s, const char *job_id) {
  return job_end(s, job_id, "cancelled", NULL, NULL);
}

int pg_job_requeue(store *s, const char *job_id) {
  return job_end(s, job_id, "queued", NULL, NULL);
}

#define JOB_LOCK "SELECT " JOB_COLS " FROM jobs WHERE id=$1 FOR UPDATE"
#define JOB_BY_ID "SELECT " JOB_COLS " FROM jobs WHERE id=$1"

int pg_job_cancel(store *s, const char *id, store_job *out) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  rc = job_read(c, JOB_LOCK, id, false, &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_QUEUED)
      rc = pg_execf(c, NULL, NULL,
                    "UPDATE jobs SET state='cancelled', cancel_requested=1, "
                    "finished_at=$1 WHERE id=$2",
                    "is", store_now_ms(), id);
    else if (j.state == STORE_JOB_RUNNING)
      rc = pg_execf(c, NULL, NULL,
                    "UPDATE jobs SET cancel_requested=1 WHERE id=$1", "s", id);
    else if (j.state != STORE_JOB_CANCELLED)
      rc = store_fail(DECOMP_ERR_CONFLICT, "job %s has already %s", id,
                      store_job_state_name(j.state));
    store_job_clear(&j);
  }
  bool filled = false;
  if (rc == DECOMP_OK)
    filled = (rc = job_read(c, JOB_BY_ID, id, false, out)) == DECOMP_OK;
  rc = pg_end(s, c, rc);
  if (rc != DECOMP_OK && filled)
    store_job_clear(out);
  return rc;
}

int pg_job_retry(store *s, const char *id, store_job *out, bool *requeued) {
  *requeued = false;
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  rc = job_read(c, JOB_LOCK, id, false, &j);
  bool held = rc == DECOMP_OK, again = false;
  if (rc == DECOMP_OK)
    rc = store_job_retry_rule(&j, &again);
  /* A queued or running job is going to run: nothing to do. */
  if (rc == DECOMP_OK && again) {
    /* As at submit: its model must exist, and stay, in this
     * transaction. */
    char cal[STORE_DIGEST_LEN], prof[STORE_DIGEST_LEN];
    rc = model_hold(c, j.model_id, cal, prof);
    if (rc == DECOMP_ERR_NOT_FOUND)
      rc = store_job_retry_model_gone(&j);
    /* A new attempt at the back of the queue (a new seq from the
     * column's own sequence: the queue and the list go by it); attempts
     * keep counting. */
    if (rc == DECOMP_OK)
      rc = pg_execf(c, NULL, NULL,
                    "UPDATE jobs SET seq=nextval(pg_get_serial_sequence("
                    "'jobs', 'seq')), state='queued', cancel_requested=0, "
                    "layers_done=0, layers_total=0, error_code=NULL, "
                    "error_message=NULL, started_at=NULL, finished_at=NULL, "
                    "current_layer=NULL, current_step=NULL, "
                    "current_fraction=NULL, lease_node=NULL, "
                    "lease_expires=NULL WHERE id=$1",
                    "s", id);
    if (rc == DECOMP_OK)
      rc = pg_execf(c, NULL, NULL, "DELETE FROM job_layers WHERE job_id=$1",
                    "s", id);
    if (rc == DECOMP_OK)
      rc = pg_execf(c, NULL, NULL, "NOTIFY " PG_CHANNEL, "");
    *requeued = rc == DECOMP_OK;
  }
  if (held)
    store_job_clear(&j);
  bool filled = false;
  if (rc == DECOMP_OK)
    filled = (rc = job_read(c, JOB_BY_ID, id, false, out)) == DECOMP_OK;
  rc = pg_end(s, c, rc);
  if (rc != DECOMP_OK) {
    *requeued = false;
    if (filled)
      store_job_clear(out);
  }
  if (*requeued)
    store_wake_call(&s->wake);
  return rc;
}

/* The rows of a finished job; *digests (free()) gets the blobs they named:
 * its artifacts, then its calibration and profile. */
static int job_delete_rows(store *s, const char *id,
                           char (**digests)[STORE_DIGEST_LEN], size_t *n) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  char calibration[STORE_DIGEST_LEN] = "", profile[STORE_DIGEST_LEN] = "";
  rc = job_read(c, JOB_LOCK, id, false, &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_QUEUED || j.state == STORE_JOB_RUNNING)
      rc = store_fail(DECOMP_ERR_CONFLICT, "job %s is %s; cancel it first", id,
                      store_job_state_name(j.state));
    memcpy(calibration, j.calibration, sizeof calibration);
    memcpy(profile, j.profile, sizeof profile);
    store_job_clear(&j);
  }
  char(*v)[STORE_DIGEST_LEN] = NULL;
  size_t cnt = 0;
  PGresult *r = NULL;
  /* Its artifacts, and the records its tasks still hold (a job whose
   * coordinator died before it could drop them). */
  if (rc == DECOMP_OK)
    rc = pg_execf(c, &r, NULL,
                  "SELECT digest FROM artifacts WHERE job_id=$1 UNION "
                  "SELECT result FROM job_tasks WHERE job_id=$1 AND result "
                  "IS NOT NULL",
                  "s", id);
  if (rc == DECOMP_OK) {
    int rows = PQntuples(r);
    v = calloc((size_t)rows + 2, sizeof *v);
    if (!v)
      rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
    for (int i = 0; v && i < rows; i++)
      pg_col_copy(r, i, 0, v[cnt++], STORE_DIGEST_LEN);
    if (v && calibration[0])
      memcpy(v[cnt++], calibration, STORE_DIGEST_LEN);
    if (v && profile[0])
      memcpy(v[cnt++], profile, STORE_DIGEST_LEN);
    PQclear(r);
  }
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "DELETE FROM artifacts WHERE job_id=$1", "s",
                  id);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "DELETE FROM job_layers WHERE job_id=$1", "s",
                  id);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "DELETE FROM job_tasks WHERE job_id=$1", "s",
                  id);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "DELETE FROM jobs WHERE id=$1", "s", id);
  rc = pg_end(s, c, rc);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *digests = v;
  *n = cnt;
  return DECOMP_OK;
}

int pg_job_delete(store *s, const char *id) {
  char(*digests)[STORE_DIGEST_LEN] = NULL;
  size_t n = 0;
  pg_blob_lock(s);
  int rc = job_delete_rows(s, id, &digests, &n);
  for (size_t i = 0; rc == DECOMP_OK && i < n; i++)
    pg_blob_gc(s, digests[i]);
  pg_blob_unlock(s);
  free(digests);
  return rc;
}
