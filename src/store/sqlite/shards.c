/* shards.c — sharded models (a binding document's row with the rows of
 * its shards, in one transaction) and loose blobs (uploaded by digest,
 * kept upload_ttl for an index to bind them, then swept). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sqlite_int.h"

int sq_model_put_sharded_rows(store *s, store_model *m,
                              const store_shard *sh, size_t n,
                              bool *created) {
  char id[24];
  if (!store_random_id("m_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  int ins = 0;
  rc = EXEC(s->w, &ins,
            "INSERT INTO models (" MODEL_COLS ") VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (digest) DO NOTHING",
            "ssssiii", id, m->digest, m->name, m->format, m->size, m->tensors,
            store_now_ms());
  /* The shards go in with the model, in one transaction: a model is never
   * seen without the rows that keep its blobs. */
  for (size_t i = 0; rc == DECOMP_OK && ins > 0 && i < n; i++)
    rc = EXEC(s->w, NULL,
              "INSERT INTO model_shards (model_id, idx, name, digest, size) "
              "VALUES (?,?,?,?,?)",
              "sissi", id, (int64_t)i, sh[i].name, sh[i].digest, sh[i].size);
  if (rc == DECOMP_OK)
    rc = sq_model_by_digest(s, m);
  rc = sq_wend(s, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

int sq_loose_blob_touch(store *s, const char *digest, int64_t size) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT INTO loose_blobs (digest, size, uploaded_at) "
            "VALUES (?1,?2,?3) ON CONFLICT (digest) DO UPDATE SET "
            "uploaded_at=?3",
            "sii", digest, size, store_now_ms());
  return sq_wend(s, rc);
}

int sq_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs) {
  int64_t cutoff = store_now_ms() - ttl_ms;
  int np = store_partials_sweep(&s->c.paths, cutoff), nb = 0;
  char(*v)[STORE_DIGEST_LEN] = NULL;
  size_t cnt = 0, cap = 0;
  sq_blob_lock(s);
  int rc = sq_wbegin(s);
  if (rc == DECOMP_OK) {
    sqlite3_stmt *st = NULL;
    rc = sq_prepf(
        s->w, &st,
        "DELETE FROM loose_blobs WHERE uploaded_at < ? RETURNING digest", "i",
        cutoff);
    int r = SQLITE_DONE;
    while (rc == DECOMP_OK && (r = sqlite3_step(st)) == SQLITE_ROW) {
      if (cnt == cap) {
        cap = cap ? 2 * cap : 16;
        char(*nv)[STORE_DIGEST_LEN] = realloc(v, cap * sizeof *v);
        if (!nv) {
          rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
          break;
        }
        v = nv;
      }
      sq_col_copy(st, 0, v[cnt++], STORE_DIGEST_LEN);
    }
    if (rc == DECOMP_OK && r != SQLITE_DONE)
      rc = sq_fail(s->w, "loose blobs");
    if (st)
      sqlite3_finalize(st);
    rc = sq_wend(s, rc);
  }
  /* Each is collected unless a model's shard (or anything else) names it. */
  for (size_t i = 0; rc == DECOMP_OK && i < cnt; i++) {
    int64_t size;
    if (sq_blob_gc(s, v[i]) == DECOMP_OK &&
        blobs_blob_stat(s, v[i], &size) == DECOMP_ERR_NOT_FOUND)
      nb++;
  }
  sq_blob_unlock(s);
  free(v);
  if (partials)
    *partials = np;
  if (blobs)
    *blobs = nb;
  return rc;
}
