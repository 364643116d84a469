/* artifacts.c — a job's artifact rows in the PostgreSQL index (written
 * when the job succeeds, jobs.c). */
#include <stdlib.h>

#include "pg_int.h"

static void artifact_row(const PGresult *r, int i, store_artifact *a) {
  pg_col_copy(r, i, 0, a->name, sizeof a->name);
  pg_col_copy(r, i, 1, a->digest, sizeof a->digest);
  a->size = pg_col_i64(r, i, 2);
  pg_col_copy(r, i, 3, a->media_type, sizeof a->media_type);
}

int pg_artifact_get(store *s, const char *job_id, const char *name,
                    store_artifact *out) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT name, digest, size, media_type FROM artifacts "
                     "WHERE job_id=$1 AND name=$2",
                     "ss", job_id, name);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1)
    artifact_row(r, 0, out);
  else
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "job %s has no artifact %s", job_id,
                    name);
  PQclear(r);
  return rc;
}

int pg_artifact_list(store *s, const char *job_id, store_artifact **out,
                     size_t *n) {
  PGresult *r = NULL;
  /* COLLATE "C": the order SQLite gives (bytes), whatever the database's
   * locale. */
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT name, digest, size, media_type FROM artifacts "
                     "WHERE job_id=$1 ORDER BY name COLLATE \"C\"",
                     "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_artifact *v = calloc(rows > 0 ? (size_t)rows : 1, sizeof *v);
  if (!v) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++)
    artifact_row(r, i, &v[i]);
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}
