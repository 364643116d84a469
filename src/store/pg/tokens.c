/* tokens.c — API tokens in the PostgreSQL index: stored by their SHA-256,
 * never in the clear, with a role (the role names are tokens.c's of the
 * embedded index: store_role_name). */
#include <stdio.h>
#include <stdlib.h>

#include "pg_int.h"

int pg_token_put(store *s, const char *name, int role, const char *hash_hex,
                 char id[24]) {
  if (!store_random_id("t_", 4, id, 24))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = pg_queryf(s, NULL, NULL,
                     "INSERT INTO tokens (id, name, role, hash, created_at) "
                     "VALUES ($1,$2,$3,$4,$5)",
                     "ssssi", id, name, store_role_name(role), hash_hex,
                     store_now_ms());
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "a token named '%s' exists", name);
  return rc;
}

int pg_token_any(store *s, bool *any) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL, "SELECT EXISTS(SELECT 1 FROM tokens)", "");
  if (rc != DECOMP_OK)
    return rc;
  *any = pg_col_bool(r, 0, 0);
  PQclear(r);
  return DECOMP_OK;
}

int pg_token_role(store *s, const char *hash_hex, int *role, char name[256]) {
  *role = STORE_ROLE_NONE;
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL, "SELECT role, name FROM tokens WHERE hash=$1",
                     "s", hash_hex);
  if (rc != DECOMP_OK)
    return rc;
  if (PQntuples(r) == 1) {
    *role = store_role_from_name(PQgetvalue(r, 0, 0));
    if (*role < 0)
      *role = STORE_ROLE_NONE;
    if (name)
      pg_col_copy(r, 0, 1, name, 256);
  }
  PQclear(r);
  return DECOMP_OK;
}

int pg_token_delete(store *s, const char *name) {
  int n = 0;
  int rc = pg_queryf(s, NULL, &n, "DELETE FROM tokens WHERE name=$1", "s", name);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no token named '%s'", name);
  return rc;
}

int pg_token_list(store *s, store_token **out, size_t *n) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL,
                     "SELECT id, name, role, created_at FROM tokens ORDER BY "
                     "name COLLATE \"C\"",
                     "");
  if (rc != DECOMP_OK)
    return rc;
  int rows = PQntuples(r);
  store_token *v = calloc(rows > 0 ? (size_t)rows : 1, sizeof *v);
  if (!v) {
    PQclear(r);
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++) {
    pg_col_copy(r, i, 0, v[i].id, sizeof v[i].id);
    pg_col_copy(r, i, 1, v[i].name, sizeof v[i].name);
    v[i].role = store_role_from_name(PQgetvalue(r, i, 2));
    v[i].created_at = pg_col_i64(r, i, 3);
  }
  PQclear(r);
  *out = v;
  *n = (size_t)rows;
  return DECOMP_OK;
}
