/* shards.c — sharded models in the PostgreSQL index (a binding document's
 * row with the rows of its shards, in one transaction) and loose blobs
 * (uploaded by digest, kept upload_ttl for an index to bind them, then
 * swept), with the semantics of sqlite/shards.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pg_int.h"

int pg_model_put_sharded_rows(store *s, store_model *m,
                              const store_shard *sh, size_t n,
                              bool *created) {
  char id[24];
  if (!store_random_id("m_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  PGconn *c = NULL;
  int rc = pg_begin(s, &c), ins = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = pg_execf(c, NULL, &ins,
                "INSERT INTO models (" PG_MODEL_COLS ") VALUES "
                "($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (digest) DO NOTHING",
                "ssssiii", id, m->digest, m->name, m->format, m->size,
                m->tensors, store_now_ms());
  /* The shards go in with the model, in one transaction: a model is never
   * seen without the rows that keep its blobs. */
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < n; i++)
    rc = pg_execf(c, NULL, NULL,
                  "INSERT INTO model_shards (model_id, idx, name, digest, "
                  "size) VALUES ($1,$2,$3,$4,$5)",
                  "sissi", id, (int64_t)i, sh[i].name, sh[i].digest,
                  sh[i].size);
  if (rc == DECOMP_OK)
    rc = pg_model_by_digest(c, m);
  rc = pg_end(s, c, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

int pg_loose_blob_touch(store *s, const char *digest, int64_t size) {
  return pg_queryf(s, NULL, NULL,
                   "INSERT INTO loose_blobs (digest, size, uploaded_at) "
                   "VALUES ($1,$2,$3) ON CONFLICT (digest) DO UPDATE SET "
                   "uploaded_at=EXCLUDED.uploaded_at",
                   "sii", digest, size, store_now_ms());
}

int pg_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs) {
  int64_t cutoff = store_now_ms() - ttl_ms;
  int np = store_partials_sweep(store_paths_of(s), cutoff), nb = 0;
  pg_blob_lock(s);
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "DELETE FROM loose_blobs WHERE uploaded_at < $1 "
                     "RETURNING digest",
                     "i", cutoff);
  /* Each is collected unless a model's shard (or anything else) names it. */
  for (int i = 0; rc == DECOMP_OK && i < PQntuples(r); i++) {
    char digest[STORE_DIGEST_LEN];
    int64_t size;
    pg_col_copy(r, i, 0, digest, sizeof digest);
    if (pg_blob_gc(s, digest) == DECOMP_OK &&
        blobs_blob_stat(s, digest, &size) == DECOMP_ERR_NOT_FOUND)
      nb++;
  }
  if (rc == DECOMP_OK)
    PQclear(r);
  pg_blob_unlock(s);
  if (partials)
    *partials = np;
  if (blobs)
    *blobs = nb;
  return rc;
}
