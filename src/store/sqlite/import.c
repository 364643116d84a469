/* import.c — rows copied in from another store (decompd store migrate):
 * a model with its shards, a job with its layers and artifacts, a token by
 * its hash, each written verbatim (ids, times) in one transaction unless
 * its id is here already (the rows: store.c checks the blobs they name
 * under the blob lock); and the two things an export needs that the
 * rest of the API does not give (a job's request key, a token's hash). */
#include <stdio.h>
#include <string.h>

#include "sqlite_int.h"

static const char *nz(const char *v) {
  return v && v[0] ? v : NULL;
}

int sq_model_import(store *s, const store_model_record *r, bool *created) {
  const store_model *m = &r->m;
  int rc = sq_wbegin(s), ins = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &ins,
            "INSERT INTO models (id, digest, name, format, size, tensors, "
            "created_at, spec, archive_spec, calibration, calibration_layers, "
            "calibration_size, profile, profile_layers, profile_size) VALUES "
            "(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,"
            "CASE WHEN ?10 IS NULL THEN NULL ELSE ?11 END,"
            "CASE WHEN ?10 IS NULL THEN NULL ELSE ?12 END,?13,"
            "CASE WHEN ?13 IS NULL THEN NULL ELSE ?14 END,"
            "CASE WHEN ?13 IS NULL THEN NULL ELSE ?15 END) "
            "ON CONFLICT (id) DO NOTHING",
            "ssssiiisssiisii", m->id, m->digest, m->name, m->format, m->size,
            m->tensors, m->created_at, r->spec, r->archive_spec,
            nz(m->calibration), m->calibration_layers, m->calibration_size,
            nz(m->profile), m->profile_layers, m->profile_size);
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "model %s: another model has its digest %s", m->id,
               m->digest);
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < r->nshards; i++)
    rc = EXEC(s->w, NULL,
              "INSERT INTO model_shards (model_id, idx, name, digest, size) "
              "VALUES (?,?,?,?,?)",
              "sissi", m->id, (int64_t)i, r->shards[i].name,
              r->shards[i].digest, r->shards[i].size);
  rc = sq_wend(s, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

int sq_job_import(store *s, const store_job_record *r, bool *created) {
  const store_job *j = &r->j;
  int rc = sq_wbegin(s), ins = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* A job that is to run needs its model; a finished one may have
   * outlived it (a model is deleted once no job is queued or running). */
  bool to_run = j->state == STORE_JOB_QUEUED || j->state == STORE_JOB_RUNNING;
  sqlite3_stmt *st = NULL;
  if (to_run)
    rc = sq_prepf(s->w, &st, "SELECT EXISTS(SELECT 1 FROM models WHERE id=?)",
                  "s", j->model_id);
  if (rc == DECOMP_OK && to_run) {
    if (sqlite3_step(st) != SQLITE_ROW)
      rc = sq_fail(s->w, "job model");
    else if (sqlite3_column_int(st, 0) == 0)
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "job %s: no model %s", j->id,
                      j->model_id);
    sqlite3_finalize(st);
  }
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, &ins,
              "INSERT INTO jobs (id, model_id, request_key, spec, policy, "
              "state, cancel_requested, attempts, layers_total, layers_done, "
              "error_code, error_message, created_at, started_at, "
              "finished_at, current_layer, current_step, current_fraction, "
              "calibration, profile, shard_bytes, peak_rss_bytes, node) "
              "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,NULLIF(?,0),NULLIF(?,0),?,?,"
              "?,?,?,NULLIF(?,0),NULLIF(?,0),NULLIF(?,'')) ON CONFLICT (id) "
              "DO NOTHING",
              "ssssssnniissiiissdssiis", j->id, j->model_id, r->request_key,
              j->spec ? j->spec : "", j->policy ? j->policy : "",
              store_job_state_name(j->state), (int)j->cancel_requested,
              j->attempts, j->layers_total, j->layers_done, nz(j->error_code),
              j->error_message, j->created_at, j->started_at, j->finished_at,
              nz(j->current_layer), nz(j->current_step), j->current_fraction,
              nz(j->calibration), nz(j->profile), j->shard_bytes,
              j->peak_rss_bytes, j->node);
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "job %s: another job has its request key %s", j->id,
               r->request_key);
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < r->nlayers; i++) {
    const store_job_layer *l = &r->layers[i];
    rc = EXEC(s->w, NULL,
              "INSERT INTO job_layers (job_id, idx, name, rank, max_rank, "
              "seconds, skip_reason) VALUES (?,?,?,?,?,?,?)",
              "sisiids", j->id, l->index, l->name, l->rank, l->max_rank,
              l->seconds, nz(l->skip_reason));
  }
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < r->nartifacts; i++) {
    const store_artifact *a = &r->artifacts[i];
    rc = EXEC(s->w, NULL,
              "INSERT INTO artifacts (job_id, name, digest, size, media_type) "
              "VALUES (?,?,?,?,?)",
              "sssis", j->id, a->name, a->digest, a->size, a->media_type);
  }
  rc = sq_wend(s, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  if (rc == DECOMP_OK && ins > 0 && j->state == STORE_JOB_QUEUED)
    store_wake_call(&s->wake);
  return rc;
}

int sq_token_import(store *s, const store_token *t, const char *hash_hex,
                    bool *created) {
  int rc = sq_wbegin(s), ins = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &ins,
            "INSERT INTO tokens (id, name, role, hash, created_at) "
            "VALUES (?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            "ssssi", t->id, t->name, store_role_name(t->role), hash_hex,
            t->created_at);
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "token %s: another token has its name '%s' or its hash",
               t->id, t->name);
  rc = sq_wend(s, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

/* One text column of the row `id` names, on this thread's reader. */
static int read_one(store *s, const char *sql, const char *id, const char *what,
                    char *out, size_t len) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st, sql, "s", id);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    sq_col_copy(st, 0, out, len);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no %s %s", what, id);
  else
    rc = sq_fail(db, what);
  sq_done(s, st);
  return rc;
}

int sq_job_request_key(store *s, const char *id, char key[65]) {
  return read_one(s, "SELECT request_key FROM jobs WHERE id=?", id, "job", key,
                  65);
}

int sq_token_hash(store *s, const char *id, char hash_hex[65]) {
  return read_one(s, "SELECT hash FROM tokens WHERE id=?", id, "token",
                  hash_hex, 65);
}
