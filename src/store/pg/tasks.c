/* tasks.c — one job's tasks in the PostgreSQL index (queue.h's "one job
 * over many nodes"): added by the job's coordinator, claimed by any node's
 * workers with FOR UPDATE SKIP LOCKED on a lease of their own (renewed
 * with the node's job leases, jobs.c), finished only by the node holding
 * the lease; every change that may let someone go on NOTIFYs the channel
 * the nodes listen on. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_int.h"

#define TASK_COLS                                                              \
  "job_id, stage, idx, layers, cost, state, attempts, COALESCE(node, ''), "    \
  "COALESCE(result, ''), COALESCE(result_size, 0), "                           \
  "COALESCE(error_code, ''), error_message, COALESCE(started_at, 0), "         \
  "COALESCE(finished_at, 0)"

/* A claimed task this node holds. */
#define TASK_MINE                                                              \
  "job_id=$1 AND stage=$2::int AND idx=$3::int AND state='running' AND "       \
  "lease_node=$4"

static int state_from_name(const char *s) {
  if (strcmp(s, "queued") == 0)
    return STORE_TASK_QUEUED;
  if (strcmp(s, "running") == 0)
    return STORE_TASK_RUNNING;
  if (strcmp(s, "done") == 0)
    return STORE_TASK_DONE;
  return STORE_TASK_FAILED;
}

static void task_row(const PGresult *r, int i, store_task *t) {
  memset(t, 0, sizeof *t);
  pg_col_copy(r, i, 0, t->job_id, sizeof t->job_id);
  t->stage = (int)pg_col_i64(r, i, 1);
  t->index = (int)pg_col_i64(r, i, 2);
  t->layers = pg_col_dup(r, i, 3);
  t->cost = pg_col_i64(r, i, 4);
  t->state = state_from_name(PQgetvalue(r, i, 5));
  t->attempts = (int)pg_col_i64(r, i, 6);
  pg_col_copy(r, i, 7, t->node, sizeof t->node);
  pg_col_copy(r, i, 8, t->result, sizeof t->result);
  t->result_size = pg_col_i64(r, i, 9);
  pg_col_copy(r, i, 10, t->error_code, sizeof t->error_code);
  t->error_message = pg_col_dup(r, i, 11);
  t->started_at = pg_col_i64(r, i, 12);
  t->finished_at = pg_col_i64(r, i, 13);
}

/* End the transaction on `c` that let someone go on (a task to claim, a
 * stage further): NOTIFYed to every node's listener with the commit, and
 * this process's workers woken. */
static int end_notify(store *s, PGconn *c, int rc) {
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "NOTIFY " PG_CHANNEL, "");
  rc = pg_end(s, c, rc);
  if (rc == DECOMP_OK)
    store_wake_call(&s->wake);
  return rc;
}

int pg_job_tasks_begin(store *s, const char *job_id) {
  return pg_queryf(s, NULL, NULL,
                   "UPDATE job_tasks SET state='queued', lease_node=NULL, "
                   "lease_expires=NULL, error_code=NULL, error_message=NULL "
                   "WHERE job_id=$1 AND result IS NULL AND state IN "
                   "('done', 'failed')",
                   "s", job_id);
}

int pg_job_tasks_add(store *s, const char *job_id, const store_task *t,
                     size_t n) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c), held = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* Only the job's coordinator, holding its row against a change of
   * state until this commits. */
  rc = pg_execf(c, NULL, &held,
                "SELECT 1 FROM jobs WHERE id=$1 AND state='running' AND "
                "lease_node=$2 FOR UPDATE",
                "ss", job_id, s->node);
  if (rc == DECOMP_OK && held == 0)
    rc = store_fail(DECOMP_ERR_CONFLICT,
                    "job %s is no longer running on node %s", job_id,
                    s->node);
  /* A stage is added once, whole: an earlier coordinator's tasks (perhaps
   * grouped otherwise, for another count of workers) stay as they are. */
  int had = 0;
  if (rc == DECOMP_OK && n > 0)
    rc = pg_execf(c, NULL, &had,
                  "SELECT 1 FROM job_tasks WHERE job_id=$1 AND stage=$2::int "
                  "LIMIT 1",
                  "sn", job_id, t[0].stage);
  for (size_t i = 0; i < n && had == 0 && rc == DECOMP_OK; i++)
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO job_tasks (job_id, stage, idx, layers, cost) "
                  "VALUES ($1,$2,$3,$4,$5)",
                  "snnsi", job_id, t[i].stage, t[i].index, t[i].layers,
                  t[i].cost);
  return end_notify(s, c, rc);
}

int pg_job_tasks(store *s, const char *job_id, store_task **out, size_t *n) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT " TASK_COLS " FROM job_tasks WHERE job_id=$1 "
                     "ORDER BY stage, idx",
                     "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_task *v = NULL;
  if (rows > 0 && !(v = calloc((size_t)rows, sizeof *v))) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++)
    task_row(r, i, &v[i]);
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}

int pg_task_claim(store *s, const char *job_id, store_task *out) {
  PGresult *r = NULL;
  /* Tasks of running jobs not being cancelled, oldest job first, then by
   * stage, the costliest first; a lapsed lease counts as queued. Rows
   * another node is claiming are skipped, not waited for. */
  int rc = pg_queryf(
      s, &r, NULL,
      "UPDATE job_tasks SET state='running', attempts=attempts+1, node=$1, "
      "lease_node=$1, lease_expires=" PG_NOW_MS " + $2, started_at=$3, "
      "finished_at=NULL, error_code=NULL, error_message=NULL WHERE "
      "(job_id, stage, idx) = (SELECT t.job_id, t.stage, t.idx FROM "
      "job_tasks t JOIN jobs j ON j.id=t.job_id WHERE j.state='running' AND "
      "j.cancel_requested=0 AND ($4::text IS NULL OR t.job_id=$4) AND "
      "(t.state='queued' OR (t.state='running' AND t.lease_expires < "
      PG_NOW_MS ")) ORDER BY j.seq, t.stage, t.cost DESC, t.idx LIMIT 1 "
      "FOR UPDATE OF t SKIP LOCKED) RETURNING " TASK_COLS,
      "siis", s->node, (int64_t)s->lease_ms, store_now_ms(), job_id);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    task_row(r, 0, out);
  else
    rc = DECOMP_ERR_NOT_FOUND;
  PQclear(r);
  return rc;
}

int pg_task_finish_row(store *s, const store_task *t, const char *digest,
                       int64_t size, char old[STORE_DIGEST_LEN]) {
  PGconn *c = NULL;
  PGresult *r = NULL;
  int rc = pg_begin(s, &c), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  old[0] = '\0';
  rc = pg_execf(c, &r, NULL,
                "SELECT COALESCE(result, '') FROM job_tasks WHERE " TASK_MINE
                " FOR UPDATE",
                "snns", t->job_id, t->stage, t->index, s->node);
  if (rc == DECOMP_OK) {
    if (PQntuples(r) == 1)
      pg_col_copy(r, 0, 0, old, STORE_DIGEST_LEN);
    else
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "task %s/%s/%d is no longer running on node %s",
                      t->job_id, store_task_stage_name(t->stage), t->index,
                      s->node);
    PQclear(r);
  }
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, &n,
                  "UPDATE job_tasks SET state='done', result=$5, "
                  "result_size=$6, finished_at=$7, lease_node=NULL, "
                  "lease_expires=NULL WHERE " TASK_MINE,
                  "snnssii", t->job_id, t->stage, t->index, s->node, digest,
                  size, store_now_ms());
  return end_notify(s, c, rc);
}

/* A claimed task leaves this node: failed, or back in the queue. */
static int task_end(store *s, const store_task *t, const char *state,
                    const char *code, const char *message) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  rc = pg_execf(c, NULL, NULL,
                "UPDATE job_tasks SET state=$5, error_code=$6, "
                "error_message=$7, finished_at=NULLIF($8::bigint, 0), lease_node=NULL, "
                "lease_expires=NULL WHERE " TASK_MINE,
                "snnssssi", t->job_id, t->stage, t->index, s->node, state,
                code, message, strcmp(state, "failed") == 0 ? store_now_ms()
                                                             : 0);
  return end_notify(s, c, rc);
}

int pg_task_fail(store *s, const store_task *t, int err,
                 const char *message) {
  return task_end(s, t, "failed", decomp_error_code(err), message);
}

int pg_task_release(store *s, const store_task *t) {
  return task_end(s, t, "queued", NULL, NULL);
}

int pg_task_cancel_requested(store *s, const store_task *t, bool *yes) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT j.cancel_requested=0 AND j.state='running' AND "
                     "t.state='running' AND t.lease_node IS NOT DISTINCT FROM "
                     "$4 FROM job_tasks t JOIN jobs j ON j.id=t.job_id WHERE "
                     "t.job_id=$1 AND t.stage=$2::int AND t.idx=$3::int",
                     "snns", t->job_id, t->stage, t->index, s->node);
  if (rc != DECOMP_OK)
    return rc;
  /* Gone (the job deleted), being cancelled, ended, or the task is no
   * longer this node's: stop. */
  *yes = PQntuples(r) != 1 || !pg_col_bool(r, 0, 0);
  PQclear(r);
  return DECOMP_OK;
}

/* Only once the job has ended, or by its coordinator (finishing it): a
 * coordinator that lost its job (frozen past its lease) and stops must
 * not drop the records the next one uses. */
int pg_job_tasks_clear_rows(store *s, const char *job_id,
                            char (**digests)[STORE_DIGEST_LEN], size_t *n) {
  PGresult *r = NULL;
  *digests = NULL;
  *n = 0;
  int rc = pg_queryf(s, &r, NULL,
                     "WITH old AS (SELECT stage, idx, result FROM job_tasks "
                     "WHERE job_id=$1 AND result IS NOT NULL AND EXISTS("
                     "SELECT 1 FROM jobs WHERE id=$1 AND (state IN "
                     "('succeeded', 'failed', 'cancelled') OR (state="
                     "'running' AND lease_node=$2))) FOR UPDATE) "
                     "UPDATE job_tasks t SET result=NULL, result_size=NULL "
                     "FROM old WHERE t.job_id=$1 AND t.stage=old.stage AND "
                     "t.idx=old.idx RETURNING old.result",
                     "ss", job_id, s->node);
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  char(*v)[STORE_DIGEST_LEN] = calloc((size_t)rows + 1, sizeof *v);
  if (!v) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++)
    pg_col_copy(r, i, 0, v[i], STORE_DIGEST_LEN);
  PQclear(r);
  *digests = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}
