/* models.c — model rows in the embedded index: put, get, list, delete,
 * the attached layer spec and the TorchScript archive's own spec, and the
 * attached calibration and latency profile (blobs named by the row), and
 * a sharded model's list of shards. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_int.h"

void sq_model_row(sqlite3_stmt *st, store_model *m) {
  sq_col_copy(st, 0, m->id, sizeof m->id);
  sq_col_copy(st, 1, m->digest, sizeof m->digest);
  sq_col_copy(st, 2, m->name, sizeof m->name);
  sq_col_copy(st, 3, m->format, sizeof m->format);
  m->size = sqlite3_column_int64(st, 4);
  m->tensors = sqlite3_column_int64(st, 5);
  m->created_at = sqlite3_column_int64(st, 6);
  m->has_spec = sqlite3_column_int(st, 7) != 0;
  sq_col_copy(st, 8, m->calibration, sizeof m->calibration);
  m->calibration_layers = sqlite3_column_int64(st, 9);
  m->calibration_size = sqlite3_column_int64(st, 10);
  sq_col_copy(st, 11, m->profile, sizeof m->profile);
  m->profile_layers = sqlite3_column_int64(st, 12);
  m->profile_size = sqlite3_column_int64(st, 13);
}

static int model_put_row(store *s, store_model *m, bool *created) {
  char id[24];
  if (!store_random_id("m_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  int n = 0;
  rc = EXEC(s->w, &n,
            "INSERT INTO models (" MODEL_COLS ") VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (digest) DO NOTHING",
            "ssssiii", id, m->digest, m->name, m->format, m->size, m->tensors,
            store_now_ms());
  if (rc == DECOMP_OK)
    rc = sq_model_by_digest(s, m);
  rc = sq_wend(s, rc);
  if (rc == DECOMP_OK)
    *created = n > 0;
  return rc;
}

/* The blob and the row under the blob lock, so that no collection runs
 * between the two. */
int sq_model_put(store *s, store_upload *u, store_model *m, bool *created) {
  sq_blob_lock(s);
  int rc = store_upload_commit(u);
  if (rc == DECOMP_OK)
    rc = model_put_row(s, m, created);
  sq_blob_unlock(s);
  return rc;
}

int sq_model_get(store *s, const char *id, store_model *out) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT " MODEL_READ_COLS " FROM models WHERE id=?", "s", id);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    sq_model_row(st, out);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  else
    rc = sq_fail(db, "model get");
  sq_done(s, st);
  return rc;
}

int sq_model_list(store *s, store_model **out, size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT " MODEL_READ_COLS
                 " FROM models ORDER BY created_at DESC, id",
                 "");
  if (rc != DECOMP_OK)
    return rc;
  store_model *v = NULL;
  size_t cnt = 0, cap = 0;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 16;
      store_model *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    sq_model_row(st, &v[cnt++]);
  }
  if (rc == DECOMP_OK && r != SQLITE_DONE)
    rc = sq_fail(db, "model list");
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

struct model_delete {
  const char *id;
  char *digest, *calibration, *profile;
};

static int model_delete_tx(store *s, void *arg) {
  const char *id = ((struct model_delete *)arg)->id;
  char *digest = ((struct model_delete *)arg)->digest;
  char *calibration = ((struct model_delete *)arg)->calibration;
  char *profile = ((struct model_delete *)arg)->profile;
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  rc = sq_prepf(
      s->w, &st,
      "SELECT digest, (SELECT COUNT(*) FROM jobs WHERE model_id=?1 AND "
      "state IN ('queued','running')), calibration, profile FROM "
      "models WHERE id=?1",
      "s", id);
  if (rc == DECOMP_OK) {
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
      sq_col_copy(st, 0, digest, STORE_DIGEST_LEN);
      sq_col_copy(st, 2, calibration, STORE_DIGEST_LEN);
      sq_col_copy(st, 3, profile, STORE_DIGEST_LEN);
      if (sqlite3_column_int64(st, 1) > 0)
        rc = store_fail(DECOMP_ERR_CONFLICT,
                        "model %s is used by a queued or running job", id);
    } else if (r == SQLITE_DONE) {
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
    } else {
      rc = sq_fail(s->w, "model delete");
    }
    sq_done(s, st);
  }
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM model_shards WHERE model_id=?", "s", id);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM models WHERE id=?", "s", id);
  return sq_wend(s, rc);
}

int sq_model_shards(store *s, const char *id, store_shard **out, size_t *n) {
  *out = NULL;
  *n = 0;
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT name, digest, size FROM model_shards WHERE model_id=? "
                 "ORDER BY idx",
                 "s", id);
  if (rc != DECOMP_OK)
    return rc;
  store_shard *v = NULL;
  size_t cnt = 0, cap = 0;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 8;
      store_shard *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    sq_col_copy(st, 0, v[cnt].name, sizeof v[cnt].name);
    sq_col_copy(st, 1, v[cnt].digest, sizeof v[cnt].digest);
    v[cnt].size = sqlite3_column_int64(st, 2);
    cnt++;
  }
  if (rc == DECOMP_OK && r != SQLITE_DONE)
    rc = sq_fail(db, "model shards");
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int sq_model_delete(store *s, const char *id) {
  char digest[STORE_DIGEST_LEN] = "", calibration[STORE_DIGEST_LEN] = "",
       profile[STORE_DIGEST_LEN] = "";
  /* A sharded model's shards: their rows go with the model, and each blob
   * is collected unless something else (another model, a recent upload)
   * still names it. */
  store_shard *sh = NULL;
  size_t nsh = 0;
  int rc = sq_model_shards(s, id, &sh, &nsh);
  if (rc != DECOMP_OK)
    return rc;
  struct model_delete a = {id, digest, calibration, profile};
  sq_blob_lock(s);
  rc = sq_write_with_reserve(s, model_delete_tx, &a);
  for (size_t i = 0; rc == DECOMP_OK && i < nsh; i++)
    sq_blob_gc(s, sh[i].digest);
  if (rc == DECOMP_OK)
    sq_blob_gc(s, digest);
  if (rc == DECOMP_OK && calibration[0])
    sq_blob_gc(s, calibration);
  if (rc == DECOMP_OK && profile[0])
    sq_blob_gc(s, profile);
  sq_blob_unlock(s);
  free(sh);
  return rc;
}

int sq_model_set_spec(store *s, const char *id, const char *spec) {
  int rc = sq_wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &n, "UPDATE models SET spec=? WHERE id=?", "ss", spec, id);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  return sq_wend(s, rc);
}

/* One text column of a model row (`sql` selects it by id). */
static int model_text(store *s, const char *sql, const char *id, char **out) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st, sql, "s", id);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    *out = sq_col_dup(st, 0);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  else
    rc = sq_fail(db, "model spec");
  sq_done(s, st);
  return rc;
}

int sq_model_get_spec(store *s, const char *id, char **spec) {
  return model_text(s, "SELECT spec FROM models WHERE id=?", id, spec);
}

int sq_model_get_archive_spec(store *s, const char *id, char **spec) {
  return model_text(s, "SELECT archive_spec FROM models WHERE id=?", id, spec);
}

int sq_model_set_archive_spec(store *s, const char *id, const char *spec) {
  int rc = sq_wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &n, "UPDATE models SET archive_spec=? WHERE id=?", "ss", spec,
            id);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  return sq_wend(s, rc);
}

const struct attachment_sql SQ_CALIBRATION_SQL = {
    "calibration", "SELECT calibration FROM models WHERE id=?",
    "UPDATE models SET calibration=?, calibration_layers=?, "
    "calibration_size=? WHERE id=?",
    "UPDATE models SET calibration=NULL, calibration_layers=NULL, "
    "calibration_size=NULL WHERE id=?",
    "SELECT COALESCE((SELECT calibration FROM models WHERE id=?1), ''), "
    "EXISTS(SELECT 1 FROM jobs WHERE request_key=?2)"};

const struct attachment_sql SQ_PROFILE_SQL = {
    "profile", "SELECT profile FROM models WHERE id=?",
    "UPDATE models SET profile=?, profile_layers=?, profile_size=? WHERE id=?",
    "UPDATE models SET profile=NULL, profile_layers=NULL, profile_size=NULL "
    "WHERE id=?",
    "SELECT COALESCE((SELECT profile FROM models WHERE id=?1), ''), "
    "EXISTS(SELECT 1 FROM jobs WHERE request_key=?2)"};

static int model_set_attachment(store *s, const struct attachment_sql *q,
                                const char *id, const char *digest,
                                int64_t layers, int64_t size,
                                char old[STORE_DIGEST_LEN]) {
  old[0] = '\0';
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  rc = sq_prepf(s->w, &st, q->select, "s", id);
  if (rc == DECOMP_OK) {
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
      sq_col_copy(st, 0, old, STORE_DIGEST_LEN);
    else if (r == SQLITE_DONE)
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
    else
      rc = sq_fail(s->w, q->what);
    sq_done(s, st);
  }
  if (rc == DECOMP_OK && !digest && !old[0])
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "model %s has no %s", id, q->what);
  if (rc == DECOMP_OK)
    rc = digest ? EXEC(s->w, NULL, q->set, "siis", digest, layers, size, id)
                : EXEC(s->w, NULL, q->clear, "s", id);
  rc = sq_wend(s, rc);
  if (rc != DECOMP_OK)
    old[0] = '\0';
  return rc;
}

int sq_model_set_attachment(store *s, const char *id, store_attachment kind,
                            const char *digest, int64_t layers, int64_t size,
                            char old[STORE_DIGEST_LEN]) {
  return model_set_attachment(
      s, kind == STORE_ATTACH_PROFILE ? &SQ_PROFILE_SQL : &SQ_CALIBRATION_SQL,
      id, digest, layers, size, old);
}

/* *m re-read (on the writer connection, inside its transaction) from the
 * models row whose digest is m->digest. */
int sq_model_by_digest(store *s, store_model *m) {
  sqlite3_stmt *st = NULL;
  int rc = sq_prepf(s->w, &st,
                    "SELECT " MODEL_READ_COLS " FROM models WHERE digest=?",
                    "s", m->digest);
  if (rc != DECOMP_OK)
    return rc;
  if (sqlite3_step(st) == SQLITE_ROW)
    sq_model_row(st, m);
  else
    rc = sq_fail(s->w, "model row");
  sq_done(s, st);
  return rc;
}

