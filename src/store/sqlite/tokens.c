/* tokens.c — API tokens in the embedded index: stored by their SHA-256,
 * never in the clear, with a role. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqlite_int.h"

static const char *const ROLE_NAMES[] = {"none", "read", "submit", "admin"};

const char *store_role_name(int role) {
  return role >= 0 && role <= STORE_ROLE_ADMIN ? ROLE_NAMES[role] : "none";
}

int store_role_from_name(const char *name) {
  for (int i = STORE_ROLE_READ; i <= STORE_ROLE_ADMIN; i++)
    if (name && strcmp(name, ROLE_NAMES[i]) == 0)
      return i;
  return -1;
}

int sq_token_put(store *s, const char *name, int role, const char *hash_hex,
                 char id[24]) {
  if (!store_random_id("t_", 4, id, 24))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = sq_wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT INTO tokens (id, name, role, hash, created_at) "
            "VALUES (?,?,?,?,?)",
            "ssssi", id, name, store_role_name(role), hash_hex, store_now_ms());
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "a token named '%s' exists", name);
  return sq_wend(s, rc);
}

int sq_token_any(store *s, bool *any) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st, "SELECT EXISTS(SELECT 1 FROM tokens)", "");
  if (rc != DECOMP_OK)
    return rc;
  if (sqlite3_step(st) == SQLITE_ROW)
    *any = sqlite3_column_int(st, 0) != 0;
  else
    rc = sq_fail(db, "tokens");
  sq_done(s, st);
  return rc;
}

int sq_token_role(store *s, const char *hash_hex, int *role, char name[256]) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st, "SELECT role, name FROM tokens WHERE hash=?", "s",
                 hash_hex);
  if (rc != DECOMP_OK)
    return rc;
  *role = STORE_ROLE_NONE;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW) {
    *role = store_role_from_name((const char *)sqlite3_column_text(st, 0));
    if (*role < 0)
      *role = STORE_ROLE_NONE;
    if (name)
      sq_col_copy(st, 1, name, 256);
  } else if (r != SQLITE_DONE) {
    rc = sq_fail(db, "token");
  }
  sq_done(s, st);
  return rc;
}

int sq_token_delete(store *s, const char *name) {
  int rc = sq_wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &n, "DELETE FROM tokens WHERE name=?", "s", name);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no token named '%s'", name);
  return sq_wend(s, rc);
}

int sq_token_list(store *s, store_token **out, size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = sq_reader_db(s, &db);
  if (rc == DECOMP_OK)
    rc = sq_prep(s, db, &st,
                 "SELECT id, name, role, created_at FROM tokens ORDER BY name",
                 "");
  if (rc != DECOMP_OK)
    return rc;
  store_token *v = NULL;
  size_t cnt = 0, cap = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 8;
      store_token *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    store_token *t = &v[cnt++];
    sq_col_copy(st, 0, t->id, sizeof t->id);
    sq_col_copy(st, 1, t->name, sizeof t->name);
    t->role = store_role_from_name((const char *)sqlite3_column_text(st, 2));
    t->created_at = sqlite3_column_int64(st, 3);
  }
  sq_done(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}
