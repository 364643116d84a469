/* nodes.c — the nodes table in PostgreSQL: every daemon sharing the
 * database writes its row at start and at every heartbeat. */
#include <stdlib.h>

#include "pg_int.h"

int pg_node_beat(store *s, const store_node *n) {
  return pg_queryf(s, NULL, NULL,
                   "INSERT INTO nodes (id, version, address, started_at, "
                   "heartbeat_at, workers, running) VALUES "
                   "($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (id) DO UPDATE SET "
                   "version=EXCLUDED.version, address=EXCLUDED.address, "
                   "started_at=EXCLUDED.started_at, "
                   "heartbeat_at=EXCLUDED.heartbeat_at, "
                   "workers=EXCLUDED.workers, running=EXCLUDED.running",
                   "sssiinn", n->id, n->version, n->address, n->started_at,
                   n->heartbeat_at, n->workers, n->running);
}

int pg_node_list(store *s, store_node **out, size_t *n) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT id, version, address, started_at, heartbeat_at, "
                     "workers, running FROM nodes ORDER BY id COLLATE \"C\"",
                     "");
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_node *v = calloc(rows > 0 ? (size_t)rows : 1, sizeof *v);
  if (!v) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++) {
    pg_col_copy(r, i, 0, v[i].id, sizeof v[i].id);
    pg_col_copy(r, i, 1, v[i].version, sizeof v[i].version);
    pg_col_copy(r, i, 2, v[i].address, sizeof v[i].address);
    v[i].started_at = pg_col_i64(r, i, 3);
    v[i].heartbeat_at = pg_col_i64(r, i, 4);
    v[i].workers = (int)pg_col_i64(r, i, 5);
    v[i].running = (int)pg_col_i64(r, i, 6);
  }
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}
