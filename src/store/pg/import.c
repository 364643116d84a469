/* import.c — rows copied in from another store (decompd store migrate),
 * with the semantics of sqlite/import.c: a model with its shards, a job
 * with its layers and artifacts, a token by its hash, each written
 * verbatim (ids, times) in one transaction unless its id is here already
 * (the rows: store.c checks the blobs they name under the blob lock);
 * and a job's request key and a token's hash for an export. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_int.h"

static const char *nz(const char *v) {
  return v && v[0] ? v : NULL;
}

int pg_model_import(store *s, const store_model_record *r, bool *created) {
  const store_model *m = &r->m;
  PGconn *c = NULL;
  int rc = pg_begin(s, &c), ins = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = pg_execf(
      c, NULL, &ins,
      "INSERT INTO models (id, digest, name, format, size, tensors, "
      "created_at, spec, archive_spec, calibration, calibration_layers, "
      "calibration_size, profile, profile_layers, profile_size) VALUES "
      "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,"
      "CASE WHEN $10::text IS NULL THEN NULL ELSE $11::bigint END,"
      "CASE WHEN $10::text IS NULL THEN NULL ELSE $12::bigint END,$13,"
      "CASE WHEN $13::text IS NULL THEN NULL ELSE $14::bigint END,"
      "CASE WHEN $13::text IS NULL THEN NULL ELSE $15::bigint END) "
      "ON CONFLICT (id) DO NOTHING",
      "ssssiiisssiisii", m->id, m->digest, m->name, m->format, m->size,
      m->tensors, m->created_at, r->spec, r->archive_spec, nz(m->calibration),
      m->calibration_layers, m->calibration_size, nz(m->profile),
      m->profile_layers, m->profile_size);
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "model %s: another model has its digest %s", m->id,
               m->digest);
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < r->nshards; i++)
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO model_shards (model_id, idx, name, digest, "
                  "size) VALUES ($1,$2,$3,$4,$5)",
                  "sissi", m->id, (int64_t)i, r->shards[i].name,
                  r->shards[i].digest, r->shards[i].size);
  rc = pg_end(s, c, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

int pg_job_import(store *s, const store_job_record *r, bool *created) {
  const store_job *j = &r->j;
  PGconn *c = NULL;
  PGresult *res = NULL;
  int rc = pg_begin(s, &c), ins = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* A job that is to run needs its model, which stays while the job goes
   * in (a delete takes it FOR UPDATE); a finished one may have outlived
   * it (a model is deleted once no job is queued or running). */
  if (j->state == STORE_JOB_QUEUED || j->state == STORE_JOB_RUNNING)
    rc = pg_execf(c, &res, NULL, "SELECT 1 FROM models WHERE id=$1 FOR SHARE",
                  "s", j->model_id);
  if (rc == DECOMP_OK && res && PQntuples(res) == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "job %s: no model %s", j->id,
                    j->model_id);
  PQclear(res);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, &ins,
                  "INSERT INTO jobs (id, model_id, request_key, spec, policy, "
                  "state, cancel_requested, attempts, layers_total, "
                  "layers_done, error_code, error_message, created_at, "
                  "started_at, finished_at) VALUES "
                  "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,"
                  "NULLIF($14::bigint,0),NULLIF($15::bigint,0)) "
                  "ON CONFLICT (id) DO NOTHING",
                  "ssssssnniissiii", j->id, j->model_id, r->request_key,
                  j->spec ? j->spec : "", j->policy ? j->policy : "",
                  store_job_state_name(j->state), (int)j->cancel_requested,
                  j->attempts, j->layers_total, j->layers_done,
                  nz(j->error_code), j->error_message, j->created_at,
                  j->started_at, j->finished_at);
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "job %s: another job has its request key %s", j->id,
               r->request_key);
  /* The rest of the row in the same transaction (a statement takes at most
   * 16 parameters here). */
  if (rc == DECOMP_OK && ins > 0)
    rc = pg_execf(c, NULL, NULL,
                  "UPDATE jobs SET current_layer=$2, current_step=$3, "
                  "current_fraction=$4, calibration=$5, profile=$6, "
                  "shard_bytes=NULLIF($7::bigint,0), "
                  "peak_rss_bytes=NULLIF($8::bigint,0), node=NULLIF($9,'') "
                  "WHERE id=$1",
                  "sssdssiis", j->id, nz(j->current_layer), nz(j->current_step),
                  j->current_fraction, nz(j->calibration), nz(j->profile),
                  j->shard_bytes, j->peak_rss_bytes, j->node);
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < r->nlayers; i++) {
    const store_job_layer *l = &r->layers[i];
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO job_layers (job_id, idx, name, rank, max_rank, "
                  "seconds, skip_reason) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                  "sisiids", j->id, l->index, l->name, l->rank, l->max_rank,
                  l->seconds, nz(l->skip_reason));
  }
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < r->nartifacts; i++) {
    const store_artifact *a = &r->artifacts[i];
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO artifacts (job_id, name, digest, size, "
                  "media_type) VALUES ($1,$2,$3,$4,$5)",
                  "sssis", j->id, a->name, a->digest, a->size, a->media_type);
  }
  /* Every node hears of a queued job when this commits. */
  if (rc == DECOMP_OK && ins > 0 && j->state == STORE_JOB_QUEUED)
    rc = pg_execf(c, NULL, NULL, "NOTIFY " PG_CHANNEL, "");
  rc = pg_end(s, c, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  if (rc == DECOMP_OK && ins > 0 && j->state == STORE_JOB_QUEUED)
    store_wake_call(&s->wake);
  return rc;
}

int pg_token_import(store *s, const store_token *t, const char *hash_hex,
                    bool *created) {
  int ins = 0;
  int rc = pg_queryf(s, NULL, &ins,
                     "INSERT INTO tokens (id, name, role, hash, created_at) "
                     "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (id) DO NOTHING",
                     "ssssi", t->id, t->name, store_role_name(t->role),
                     hash_hex, t->created_at);
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "token %s: another token has its name '%s' or its hash",
               t->id, t->name);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

/* One text column of the row `id` names. */
static int read_one(store *s, const char *sql, const char *id, const char *what,
                    char *out, size_t len) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL, sql, "s", id);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    pg_col_copy(r, 0, 0, out, len);
  else
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no %s %s", what, id);
  PQclear(r);
  return rc;
}

int pg_job_request_key(store *s, const char *id, char key[65]) {
  return read_one(s, "SELECT request_key FROM jobs WHERE id=$1", id, "job", key,
                  65);
}

int pg_token_hash(store *s, const char *id, char hash_hex[65]) {
  return read_one(s, "SELECT hash FROM tokens WHERE id=$1", id, "token",
                  hash_hex, 65);
}
