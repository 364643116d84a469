/* db.c — the embedded store's SQLite plumbing: error codes from SQLite's,
 * statements prepared and bound from a format string, the one writer
 * connection's transactions and each thread's reader connection with its
 * cache of prepared statements. Every other file of the embedded index
 * reaches SQLite through these (sqlite_int.h). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sqlite_int.h"

int64_t store_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The code for the last failure on `db`: a full disk is DISK_FULL, as it
 * is for blobs (SQLITE_FULL, which SQLite gives for ENOSPC on a write, or
 * an I/O error whose errno is ENOSPC or EDQUOT: growing the -shm file,
 * fsync), anything else STORE. */
static int db_code(sqlite3 *db) {
  int x = sqlite3_extended_errcode(db);
  if ((x & 0xff) == SQLITE_FULL)
    return DECOMP_ERR_DISK_FULL;
  if ((x & 0xff) == SQLITE_IOERR) {
    int e = sqlite3_system_errno(db);
    if (e == ENOSPC || e == EDQUOT)
      return DECOMP_ERR_DISK_FULL;
  }
  return DECOMP_ERR_STORE;
}

int sq_fail(sqlite3 *db, const char *what) {
  int code = db_code(db);
  if (code == DECOMP_ERR_DISK_FULL)
    return store_fail(code, "%s: no space left on device for the index (%s)",
                      what, sqlite3_errmsg(db));
  return store_fail(code, "%s: %s", what, sqlite3_errmsg(db));
}

int sq_exec_sql(sqlite3 *db, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int code = db_code(db);
    int rc = code == DECOMP_ERR_DISK_FULL
                 ? store_fail(code,
                              "no space left on device for the index "
                              "(%s)",
                              msg ? msg : "sqlite error")
                 : store_fail(code, "%s", msg ? msg : "sqlite error");
    sqlite3_free(msg);
    return rc;
  }
  return DECOMP_OK;
}

int sq_connect(const char *path, sqlite3 **out) {
  sqlite3 *db = NULL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
              SQLITE_OPEN_EXRESCODE;
  if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
    int rc = store_fail(DECOMP_ERR_STORE, "%s: %s", path,
                        db ? sqlite3_errmsg(db) : "cannot open");
    sqlite3_close(db);
    return rc;
  }
  sqlite3_busy_timeout(db, 10000);
  int rc = sq_exec_sql(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                           "PRAGMA foreign_keys=OFF;");
  if (rc != DECOMP_OK) {
    sqlite3_close(db);
    return rc;
  }
  *out = db;
  return DECOMP_OK;
}

/* ---- statements ------------------------------------------------------- */

/* Prepare `sql` and bind arguments described by `fmt`: 's' text (NULL binds
 * NULL), 'i' int64, 'd' double, 'n' int (C int). */
static int vprepf(sqlite3 *db, sqlite3_stmt **st, const char *sql,
                  const char *fmt, va_list ap) {
  if (sqlite3_prepare_v2(db, sql, -1, st, NULL) != SQLITE_OK)
    return sq_fail(db, "prepare");
  int i = 1, rc = SQLITE_OK;
  for (const char *f = fmt; *f && rc == SQLITE_OK; f++, i++) {
    switch (*f) {
    case 's': {
      const char *v = va_arg(ap, const char *);
      rc = v ? sqlite3_bind_text(*st, i, v, -1, SQLITE_TRANSIENT)
             : sqlite3_bind_null(*st, i);
      break;
    }
    case 'i':
      rc = sqlite3_bind_int64(*st, i, va_arg(ap, int64_t));
      break;
    case 'n':
      rc = sqlite3_bind_int(*st, i, va_arg(ap, int));
      break;
    case 'd':
      rc = sqlite3_bind_double(*st, i, va_arg(ap, double));
      break;
    }
  }
  if (rc != SQLITE_OK) {
    int e = sq_fail(db, "bind");
    sqlite3_finalize(*st);
    *st = NULL;
    return e;
  }
  return DECOMP_OK;
}

int sq_prepf(sqlite3 *db, sqlite3_stmt **st, const char *sql, const char *fmt,
             ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = vprepf(db, st, sql, fmt, ap);
  va_end(ap);
  return rc;
}

void sq_col_copy(sqlite3_stmt *st, int i, char *dst, size_t len) {
  const unsigned char *t = sqlite3_column_text(st, i);
  snprintf(dst, len, "%s", t ? (const char *)t : "");
}

char *sq_col_dup(sqlite3_stmt *st, int i) {
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? strdup((const char *)t) : NULL;
}

/* ---- connections ------------------------------------------------------ */

void sq_reader_close(struct reader *r) {
  for (int i = 0; i < r->ncache; i++)
    sqlite3_finalize(r->cache[i].st);
  sqlite3_close(r->db);
  free(r);
}

void sq_reader_drop(void *p) {
  struct reader *r = p;
  store *s = r->s;
  pthread_mutex_lock(&s->rmu);
  for (struct reader **pp = &s->readers; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  pthread_mutex_unlock(&s->rmu);
  sq_reader_close(r);
}

/* This thread's reader connection. */
static int rdb_reader(store *s, struct reader **out) {
  struct reader *r = pthread_getspecific(s->rkey);
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return store_fail(DECOMP_ERR_NOMEM, "out of memory");
    int rc = sq_connect(s->c.paths.db, &r->db);
    if (rc == DECOMP_OK)
      rc = sq_exec_sql(r->db, "PRAGMA query_only=1;");
    if (rc != DECOMP_OK) {
      sqlite3_close(r->db);
      free(r);
      return rc;
    }
    r->s = s;
    pthread_mutex_lock(&s->rmu);
    r->next = s->readers;
    s->readers = r;
    pthread_mutex_unlock(&s->rmu);
    pthread_setspecific(s->rkey, r);
  }
  *out = r;
  return DECOMP_OK;
}

/* Prepare (or take from this thread's cache when `db` is its reader) and
 * bind as sq_prepf. Release with sq_done(). */
int sq_prep(store *s, sqlite3 *db, sqlite3_stmt **st, const char *sql,
            const char *fmt, ...) {
  va_list ap;
  int rc;
  struct reader *r = db == s->w ? NULL : pthread_getspecific(s->rkey);
  if (!r || r->db != db) {
    va_start(ap, fmt);
    rc = vprepf(db, st, sql, fmt, ap);
    va_end(ap);
    return rc;
  }
  sqlite3_stmt *c = NULL;
  for (int i = 0; i < r->ncache && !c; i++)
    if (r->cache[i].sql == sql)
      c = r->cache[i].st;
  if (!c) {
    if (r->ncache == READER_CACHE) { /* not expected: start over */
      for (int i = 0; i < r->ncache; i++)
        sqlite3_finalize(r->cache[i].st);
      r->ncache = 0;
    }
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &c, NULL) !=
        SQLITE_OK)
      return sq_fail(db, "prepare");
    r->cache[r->ncache].sql = sql;
    r->cache[r->ncache].st = c;
    r->ncache++;
  }
  int i = 1;
  rc = SQLITE_OK;
  va_start(ap, fmt);
  for (const char *f = fmt; *f && rc == SQLITE_OK; f++, i++) {
    switch (*f) {
    case 's': {
      const char *v = va_arg(ap, const char *);
      rc = v ? sqlite3_bind_text(c, i, v, -1, SQLITE_TRANSIENT)
             : sqlite3_bind_null(c, i);
      break;
    }
    case 'i':
      rc = sqlite3_bind_int64(c, i, va_arg(ap, int64_t));
      break;
    case 'n':
      rc = sqlite3_bind_int(c, i, va_arg(ap, int));
      break;
    case 'd':
      rc = sqlite3_bind_double(c, i, va_arg(ap, double));
      break;
    }
  }
  va_end(ap);
  if (rc != SQLITE_OK) {
    sqlite3_reset(c);
    sqlite3_clear_bindings(c);
    return sq_fail(db, "bind");
  }
  *st = c;
  return DECOMP_OK;
}

/* Release a statement from sq_prep: a cached one is reset (ending its read
 * transaction, so checkpoints are never held back), others finalized. */
void sq_done(store *s, sqlite3_stmt *st) {
  if (!st)
    return;
  sqlite3 *db = sqlite3_db_handle(st);
  struct reader *r = db == s->w ? NULL : pthread_getspecific(s->rkey);
  if (r && r->db == db) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  } else {
    sqlite3_finalize(st);
  }
}

int sq_reader_db(store *s, sqlite3 **out) {
  struct reader *r = NULL;
  int rc = rdb_reader(s, &r);
  if (rc == DECOMP_OK)
    *out = r->db;
  return rc;
}

/* Take the writer and open a write transaction. */
int sq_wbegin(store *s) {
  pthread_mutex_lock(&s->wmu);
  int rc = sq_exec_sql(s->w, "BEGIN IMMEDIATE");
  if (rc != DECOMP_OK)
    pthread_mutex_unlock(&s->wmu);
  return rc;
}

/* Commit when rc is OK, else roll back; release the writer. Returns rc (or
 * the commit's failure). */
int sq_wend(store *s, int rc) {
  if (rc == DECOMP_OK)
    rc = sq_exec_sql(s->w, "COMMIT");
  if (rc != DECOMP_OK)
    sqlite3_exec(s->w, "ROLLBACK", NULL, NULL, NULL);
  pthread_mutex_unlock(&s->wmu);
  return rc;
}

/* Step a prepared statement that returns no rows; finalize it. */
static int step_done(sqlite3 *db, sqlite3_stmt *st, int *changes) {
  int r = sqlite3_step(st);
  int rc = DECOMP_OK;
  if (r == SQLITE_CONSTRAINT || (r & 0xff) == SQLITE_CONSTRAINT)
    rc = store_fail(DECOMP_ERR_CONFLICT, "%s", sqlite3_errmsg(db));
  else if (r != SQLITE_DONE && r != SQLITE_ROW)
    rc = sq_fail(db, "step");
  if (changes)
    *changes = sqlite3_changes(db);
  sqlite3_finalize(st);
  return rc;
}

/* Prepare, bind (as sq_prepf) and run one statement that returns no rows;
 * *changes (may be NULL) gets the rows it changed. */
int sq_execf(sqlite3 *db, int *changes, const char *sql, const char *fmt, ...) {
  sqlite3_stmt *st = NULL;
  va_list ap;
  va_start(ap, fmt);
  int rc = vprepf(db, &st, sql, fmt, ap);
  va_end(ap);
  return rc == DECOMP_OK ? step_done(db, st, changes) : rc;
}
