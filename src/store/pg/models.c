/* models.c — model rows in the PostgreSQL index: put, get, list, delete,
 * the attached layer spec and the TorchScript archive's own spec, and the
 * attached calibration and latency profile (blobs named by the row), with
 * the semantics of sqlite/models.c. A model's row is locked FOR UPDATE by
 * its delete and its attachments, so that a submit (FOR SHARE) sees it
 * whole or not at all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_int.h"

void pg_model_row(const PGresult *r, int row, store_model *m) {
  pg_col_copy(r, row, 0, m->id, sizeof m->id);
  pg_col_copy(r, row, 1, m->digest, sizeof m->digest);
  pg_col_copy(r, row, 2, m->name, sizeof m->name);
  pg_col_copy(r, row, 3, m->format, sizeof m->format);
  m->size = pg_col_i64(r, row, 4);
  m->tensors = pg_col_i64(r, row, 5);
  m->created_at = pg_col_i64(r, row, 6);
  m->has_spec = pg_col_bool(r, row, 7);
  pg_col_copy(r, row, 8, m->calibration, sizeof m->calibration);
  m->calibration_layers = pg_col_i64(r, row, 9);
  m->calibration_size = pg_col_i64(r, row, 10);
  pg_col_copy(r, row, 11, m->profile, sizeof m->profile);
  m->profile_layers = pg_col_i64(r, row, 12);
  m->profile_size = pg_col_i64(r, row, 13);
}

int pg_model_by_digest(PGconn *c, store_model *m) {
  PGresult *r = NULL;
  int rc = pg_execf(c, &r, NULL,
                    "SELECT " PG_MODEL_READ_COLS " FROM models WHERE digest=$1",
                    "s", m->digest);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    pg_model_row(r, 0, m);
  else
    rc = store_fail(DECOMP_ERR_STORE, "model row of %s: not found", m->digest);
  PQclear(r);
  return rc;
}

static int model_put_row(store *s, store_model *m, bool *created) {
  char id[24];
  if (!store_random_id("m_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  PGconn *c = NULL;
  int rc = pg_begin(s, &c), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = pg_execf(c, NULL, &n,
                "INSERT INTO models (" PG_MODEL_COLS ") VALUES "
                "($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (digest) DO NOTHING",
                "ssssiii", id, m->digest, m->name, m->format, m->size,
                m->tensors, store_now_ms());
  if (rc == DECOMP_OK)
    rc = pg_model_by_digest(c, m);
  rc = pg_end(s, c, rc);
  if (rc == DECOMP_OK)
    *created = n > 0;
  return rc;
}

/* The blob and the row under the blob lock, so that no collection (on
 * any node) runs between the two. */
int pg_model_put(store *s, store_upload *u, store_model *m, bool *created) {
  pg_blob_lock(s);
  int rc = store_upload_commit(u);
  if (rc == DECOMP_OK)
    rc = model_put_row(s, m, created);
  pg_blob_unlock(s);
  return rc;
}

int pg_model_get(store *s, const char *id, store_model *out) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT " PG_MODEL_READ_COLS " FROM models WHERE id=$1",
                     "s", id);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    pg_model_row(r, 0, out);
  else
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  PQclear(r);
  return rc;
}

int pg_model_list(store *s, store_model **out, size_t *n) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT " PG_MODEL_READ_COLS
                     " FROM models ORDER BY created_at DESC, id",
                     "");
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_model *v = calloc(rows > 0 ? (size_t)rows : 1, sizeof *v);
  if (!v) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++)
    pg_model_row(r, i, &v[i]);
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}

int pg_model_shards(store *s, const char *id, store_shard **out, size_t *n) {
  *out = NULL;
  *n = 0;
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT name, digest, size FROM model_shards WHERE "
                     "model_id=$1 ORDER BY idx",
                     "s", id);
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  if (rows > 0) {
    store_shard *v = calloc((size_t)rows, sizeof *v);
    if (!v) {
      PQclear(r);
      return store_fail(DECOMP_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < rows; i++) {
      pg_col_copy(r, i, 0, v[i].name, sizeof v[i].name);
      pg_col_copy(r, i, 1, v[i].digest, sizeof v[i].digest);
      v[i].size = pg_col_i64(r, i, 2);
    }
    *out = v;
    *n = (size_t)rows;
  }
  PQclear(r);
  return DECOMP_OK;
}

static int model_delete_rows(store *s, const char *id,
                             char digest[STORE_DIGEST_LEN],
                             char calibration[STORE_DIGEST_LEN],
                             char profile[STORE_DIGEST_LEN]) {
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  PGresult *r = NULL;
  /* The row locked first: a submit waiting on it (FOR SHARE) finds the
   * model gone; one that got it first has its job counted below. */
  rc = pg_execf(c, &r, NULL,
                "SELECT digest, calibration, profile FROM models WHERE id=$1 "
                "FOR UPDATE",
                "s", id);
  if (rc == DECOMP_OK) {
    if (PQntuples(r) == 1) {
      pg_col_copy(r, 0, 0, digest, STORE_DIGEST_LEN);
      pg_col_copy(r, 0, 1, calibration, STORE_DIGEST_LEN);
      pg_col_copy(r, 0, 2, profile, STORE_DIGEST_LEN);
    } else {
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
    }
    PQclear(r);
  }
  if (rc == DECOMP_OK) {
    rc = pg_execf(c, &r, NULL,
                  "SELECT COUNT(*) FROM jobs WHERE model_id=$1 AND state IN "
                  "('queued','running')",
                  "s", id);
    if (rc == DECOMP_OK) {
      if (pg_col_i64(r, 0, 0) > 0)
        rc = store_fail(DECOMP_ERR_CONFLICT,
                        "model %s is used by a queued or running job", id);
      PQclear(r);
    }
  }
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "DELETE FROM model_shards WHERE model_id=$1",
                  "s", id);
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "DELETE FROM models WHERE id=$1", "s", id);
  return pg_end(s, c, rc);
}

int pg_model_delete(store *s, const char *id) {
  char digest[STORE_DIGEST_LEN] = "", calibration[STORE_DIGEST_LEN] = "",
       profile[STORE_DIGEST_LEN] = "";
  store_shard *sh = NULL;
  size_t nsh = 0;
  int rc = pg_model_shards(s, id, &sh, &nsh);
  if (rc != DECOMP_OK)
    return rc;
  pg_blob_lock(s);
  rc = model_delete_rows(s, id, digest, calibration, profile);
  for (size_t i = 0; rc == DECOMP_OK && i < nsh; i++)
    pg_blob_gc(s, sh[i].digest);
  if (rc == DECOMP_OK)
    pg_blob_gc(s, digest);
  if (rc == DECOMP_OK && calibration[0])
    pg_blob_gc(s, calibration);
  if (rc == DECOMP_OK && profile[0])
    pg_blob_gc(s, profile);
  pg_blob_unlock(s);
  free(sh);
  return rc;
}

static int model_set_text(store *s, const char *sql, const char *id,
                          const char *text) {
  int n = 0;
  int rc = pg_queryf(s, NULL, &n, sql, "ss", text, id);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  return rc;
}

static int model_text(store *s, const char *sql, const char *id, char **out) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL, sql, "s", id);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    *out = pg_col_dup(r, 0, 0);
  else
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  PQclear(r);
  return rc;
}

int pg_model_set_spec(store *s, const char *id, const char *spec) {
  return model_set_text(s, "UPDATE models SET spec=$1 WHERE id=$2", id, spec);
}

int pg_model_get_spec(store *s, const char *id, char **spec) {
  return model_text(s, "SELECT spec FROM models WHERE id=$1", id, spec);
}

int pg_model_set_archive_spec(store *s, const char *id, const char *spec) {
  return model_set_text(s, "UPDATE models SET archive_spec=$1 WHERE id=$2", id,
                        spec);
}

int pg_model_get_archive_spec(store *s, const char *id, char **spec) {
  return model_text(s, "SELECT archive_spec FROM models WHERE id=$1", id,
                    spec);
}

/* The SQL of one kind of attachment, as in sqlite/models.c. */
struct attachment {
  const char *what, *select, *set, *clear;
};

static const struct attachment CALIBRATION = {
    "calibration", "SELECT calibration FROM models WHERE id=$1 FOR UPDATE",
    "UPDATE models SET calibration=$1, calibration_layers=$2, "
    "calibration_size=$3 WHERE id=$4",
    "UPDATE models SET calibration=NULL, calibration_layers=NULL, "
    "calibration_size=NULL WHERE id=$1"};

static const struct attachment PROFILE = {
    "profile", "SELECT profile FROM models WHERE id=$1 FOR UPDATE",
    "UPDATE models SET profile=$1, profile_layers=$2, profile_size=$3 WHERE "
    "id=$4",
    "UPDATE models SET profile=NULL, profile_layers=NULL, profile_size=NULL "
    "WHERE id=$1"};

static int model_set_attachment(store *s, const struct attachment *q,
                                const char *id, const char *digest,
                                int64_t layers, int64_t size,
                                char old[STORE_DIGEST_LEN]) {
  old[0] = '\0';
  PGconn *c = NULL;
  int rc = pg_begin(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  PGresult *r = NULL;
  rc = pg_execf(c, &r, NULL, q->select, "s", id);
  if (rc == DECOMP_OK) {
    if (PQntuples(r) == 1)
      pg_col_copy(r, 0, 0, old, STORE_DIGEST_LEN);
    else
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
    PQclear(r);
  }
  if (rc == DECOMP_OK && !digest && !old[0])
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "model %s has no %s", id, q->what);
  if (rc == DECOMP_OK)
    rc = digest ? pg_execf(c, NULL, NULL, q->set, "siis", digest, layers, size,
                           id)
                : pg_execf(c, NULL, NULL, q->clear, "s", id);
  rc = pg_end(s, c, rc);
  if (rc != DECOMP_OK)
    old[0] = '\0';
  return rc;
}

int pg_model_set_attachment(store *s, const char *id, store_attachment kind,
                            const char *digest, int64_t layers, int64_t size,
                            char old[STORE_DIGEST_LEN]) {
  return model_set_attachment(s, kind == STORE_ATTACH_PROFILE ? &PROFILE
                                                              : &CALIBRATION,
                              id, digest, layers, size, old);
}
