/* nodes.c — the nodes table of the embedded index: the one daemon that
 * serves a data dir writes its row at start and at every heartbeat. */
#include <stdlib.h>

#include "sqlite_int.h"

int sq_node_beat(store *s, const store_node *n) {
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT INTO nodes (id, version, address, started_at, "
            "heartbeat_at, workers, running) VALUES (?1,?2,?3,?4,?5,?6,?7) "
            "ON CONFLICT (id) DO UPDATE SET version=?2, address=?3, "
            "started_at=?4, heartbeat_at=?5, workers=?6, running=?7",
            "sssiinn", n->id, n->version, n->address, n->started_at,
            n->heartbeat_at, n->workers, n->running);
  return sq_wend(s, rc);
}

int sq_node_list(store *s, store_node **out, size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT id, version, address, started_at, heartbeat_at, "
                 "workers, running FROM nodes ORDER BY id",
                 "");
  if (rc != DECOMP_OK)
    return rc;
  store_node *v = NULL;
  size_t cnt = 0, cap = 0;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 4;
      store_node *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    store_node *x = &v[cnt++];
    sq_col_copy(st, 0, x->id, sizeof x->id);
    sq_col_copy(st, 1, x->version, sizeof x->version);
    sq_col_copy(st, 2, x->address, sizeof x->address);
    x->started_at = sqlite3_column_int64(st, 3);
    x->heartbeat_at = sqlite3_column_int64(st, 4);
    x->workers = sqlite3_column_int(st, 5);
    x->running = sqlite3_column_int(st, 6);
  }
  if (rc == DECOMP_OK && r != SQLITE_DONE)
    rc = sq_fail(db, "nodes");
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}
