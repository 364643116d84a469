/* artifacts.c — a job's artifact rows in the embedded index (written
 * when the job succeeds, jobs.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_int.h"

static void artifact_row(sqlite3_stmt *st, store_artifact *a) {
  sq_col_copy(st, 0, a->name, sizeof a->name);
  sq_col_copy(st, 1, a->digest, sizeof a->digest);
  a->size = sqlite3_column_int64(st, 2);
  sq_col_copy(st, 3, a->media_type, sizeof a->media_type);
}

int sq_artifact_get(store *s, const char *job_id, const char *name,
                    store_artifact *out) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT name, digest, size, media_type FROM artifacts "
                 "WHERE job_id=? AND name=?",
                 "ss", job_id, name);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    artifact_row(st, out);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "job %s has no artifact %s", job_id,
                    name);
  else
    rc = sq_fail(db, "artifact get");
  sq_done(s, st);
  return rc;
}

int sq_artifact_list(store *s, const char *job_id, store_artifact **out,
                     size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT name, digest, size, media_type FROM artifacts "
                 "WHERE job_id=? ORDER BY name",
                 "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  /* A sharded output has an artifact per shard: as many as there are. */
  store_artifact *v = NULL;
  size_t cnt = 0, cap = 0;
  int r = SQLITE_DONE;
  while (rc == DECOMP_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 8;
      store_artifact *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    artifact_row(st, &v[cnt++]);
  }
  if (rc == DECOMP_OK && r != SQLITE_DONE)
    rc = sq_fail(db, "artifact list");
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}
