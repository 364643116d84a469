/* db.c — the PostgreSQL index's libpq plumbing: connecting (errors that
 * name the server, never the password), the handle's pool of connections,
 * statements bound from a format string, transactions, and reading
 * columns. Every other file under pg/ reaches libpq through these. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_int.h"

#define MAX_PARAMS 16

/* libpq's messages end with a newline; messages here do not. */
static void chomp(char *m) {
  size_t n = strlen(m);
  while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' '))
    m[--n] = '\0';
}

int pg_connect(store *s, PGconn **out) {
  /* The URI's own settings come last and win; these are defaults. */
  const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
  const char *vals[] = {"decompd", "10", s->conninfo, NULL};
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  if (!c)
    return store_fail(DECOMP_ERR_NOMEM, "PostgreSQL: out of memory");
  if (PQstatus(c) != CONNECTION_OK) {
    char msg[768];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
    chomp(msg);
    PQfinish(c);
    return store_fail(DECOMP_ERR_UNAVAILABLE,
                      "PostgreSQL at %s is unreachable: %s", s->where, msg);
  }
  /* Times and numbers as text in one fixed form, whatever the server's
   * defaults. */
  PGresult *r = PQexec(c, "SET extra_float_digits = 3; SET TIME ZONE 'UTC'");
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) {
    int rc = store_fail(DECOMP_ERR_STORE, "PostgreSQL at %s: %s", s->where,
                        PQerrorMessage(c));
    PQfinish(c);
    return rc;
  }
  *out = c;
  return DECOMP_OK;
}

int pg_take(store *s, PGconn **out) {
  PGconn *c = NULL;
  pthread_mutex_lock(&s->pool_mu);
  if (s->nidle > 0)
    c = s->idle[--s->nidle];
  pthread_mutex_unlock(&s->pool_mu);
  if (c && PQstatus(c) != CONNECTION_OK) {
    PQfinish(c);
    c = NULL;
  }
  if (c) {
    *out = c;
    return DECOMP_OK;
  }
  return pg_connect(s, out);
}

void pg_give(store *s, PGconn *c) {
  if (!c)
    return;
  if (PQstatus(c) != CONNECTION_OK ||
      PQtransactionStatus(c) != PQTRANS_IDLE) {
    PQfinish(c);
    return;
  }
  pthread_mutex_lock(&s->pool_mu);
  if (s->nidle < PG_POOL_MAX) {
    s->idle[s->nidle++] = c;
    c = NULL;
  }
  pthread_mutex_unlock(&s->pool_mu);
  if (c)
    PQfinish(c);
}

/* The code of a failed result: SQLSTATE 23xxx (a constraint) is CONFLICT,
 * 53100 (disk full) DISK_FULL, a lost connection UNAVAILABLE. */
static int result_code(PGconn *c, const PGresult *r) {
  const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  if (st && strncmp(st, "23", 2) == 0)
    return DECOMP_ERR_CONFLICT;
  if (st && strcmp(st, "53100") == 0)
    return DECOMP_ERR_DISK_FULL;
  if (PQstatus(c) != CONNECTION_OK)
    return DECOMP_ERR_UNAVAILABLE;
  return DECOMP_ERR_STORE;
}

/* The length of the valid UTF-8 sequence at `p` (1 to 4), or 0. */
static size_t utf8_seq(const unsigned char *p) {
  if (p[0] < 0x80)
    return 1;
  size_t n = p[0] >= 0xf0 && p[0] <= 0xf4   ? 4
             : p[0] >= 0xe0                ? 3
             : p[0] >= 0xc2 && p[0] < 0xe0 ? 2
                                           : 0;
  if (n == 0)
    return 0;
  for (size_t i = 1; i < n; i++)
    if ((p[i] & 0xc0) != 0x80)
      return 0;
  unsigned cp = n == 2 ? (p[0] & 0x1fu) << 6 | (p[1] & 0x3fu)
                : n == 3 ? (p[0] & 0x0fu) << 12 | (p[1] & 0x3fu) << 6 |
                               (p[2] & 0x3fu)
                         : (p[0] & 0x07u) << 18 | (p[1] & 0x3fu) << 12 |
                               (p[2] & 0x3fu) << 6 | (p[3] & 0x3fu);
  if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
      (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return n;
}

/* PostgreSQL's text is UTF-8 and refuses anything else, where SQLite
 * stores (and compares) bytes. A parameter that is not valid UTF-8 (an id
 * from a request path, a layer name from a weight file in an error
 * message) has each bad byte replaced by U+FFFD: a lookup by it then finds
 * nothing, as it would in SQLite, and a message is stored readable.
 * NULL when `v` is valid (use it as it is) or on no memory. */
static char *utf8_fixed(const char *v) {
  const unsigned char *p = (const unsigned char *)v;
  size_t bad = 0, len = 0;
  for (size_t i = 0; p[i];) {
    size_t k = utf8_seq(p + i);
    bad += k == 0;
    i += k ? k : 1;
    len = i;
  }
  if (!bad)
    return NULL;
  char *out = malloc(len + 2 * bad + 1), *o = out;
  if (!out)
    return NULL;
  for (size_t i = 0; p[i];) {
    size_t k = utf8_seq(p + i);
    if (k) {
      memcpy(o, p + i, k);
      o += k;
      i += k;
    } else {
      memcpy(o, "\xef\xbf\xbd", 3);
      o += 3;
      i++;
    }
  }
  *o = '\0';
  return out;
}

static int vexecf(PGconn *c, PGresult **res, int *changes, const char *sql,
                  const char *fmt, va_list ap) {
  char buf[MAX_PARAMS][32];
  char *fixed[MAX_PARAMS] = {0};
  const char *vals[MAX_PARAMS] = {0};
  int n = 0;
  for (const char *f = fmt; *f; f++, n++) {
    if (n == MAX_PARAMS) {
      for (int i = 0; i < n; i++)
        free(fixed[i]);
      return store_fail(DECOMP_ERR_INTERNAL, "too many parameters");
    }
    switch (*f) {
    case 's':
      vals[n] = va_arg(ap, const char *);
      if (vals[n] && (fixed[n] = utf8_fixed(vals[n])) != NULL)
        vals[n] = fixed[n];
      break;
    case 'i':
      snprintf(buf[n], sizeof buf[n], "%lld", (long long)va_arg(ap, int64_t));
      vals[n] = buf[n];
      break;
    case 'n':
      snprintf(buf[n], sizeof buf[n], "%d", va_arg(ap, int));
      vals[n] = buf[n];
      break;
    case 'd':
      snprintf(buf[n], sizeof buf[n], "%.17g", va_arg(ap, double));
      vals[n] = buf[n];
      break;
    default:
      for (int i = 0; i < n; i++)
        free(fixed[i]);
      return store_fail(DECOMP_ERR_INTERNAL, "bad parameter kind %c", *f);
    }
  }
  PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
  for (int i = 0; i < n; i++)
    free(fixed[i]);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    int code = result_code(c, r);
    char msg[768];
    snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
    chomp(msg);
    PQclear(r);
    if (code == DECOMP_ERR_DISK_FULL)
      return store_fail(code, "no space left on device for the index (%s)",
                        msg);
    return store_fail(code, "PostgreSQL: %s", msg);
  }
  if (changes) {
    const char *t = PQcmdTuples(r);
    *changes = t && *t ? atoi(t) : 0;
  }
  if (res)
    *res = r;
  else
    PQclear(r);
  return DECOMP_OK;
}

int pg_execf(PGconn *c, PGresult **res, int *changes, const char *sql,
             const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = vexecf(c, res, changes, sql, fmt, ap);
  va_end(ap);
  return rc;
}

int pg_queryf(store *s, PGresult **res, int *changes, const char *sql,
              const char *fmt, ...) {
  int rc = DECOMP_OK;
  for (int attempt = 0; attempt < 2; attempt++) {
    PGconn *c = NULL;
    if ((rc = pg_take(s, &c)) != DECOMP_OK)
      return rc;
    va_list ap;
    va_start(ap, fmt);
    rc = vexecf(c, res, changes, sql, fmt, ap);
    va_end(ap);
    /* A pooled connection the server dropped (a restart): once more on a
     * new one. A statement that failed on a live connection is not
     * retried. */
    bool lost = rc != DECOMP_OK && PQstatus(c) != CONNECTION_OK;
    pg_give(s, c);
    if (!lost)
      break;
  }
  return rc;
}

int pg_begin(store *s, PGconn **out) {
  int rc = DECOMP_OK;
  for (int attempt = 0; attempt < 2; attempt++) {
    PGconn *c = NULL;
    if ((rc = pg_take(s, &c)) != DECOMP_OK)
      return rc;
    rc = pg_execf(c, NULL, NULL, "BEGIN", "");
    if (rc == DECOMP_OK) {
      *out = c;
      return DECOMP_OK;
    }
    bool lost = PQstatus(c) != CONNECTION_OK;
    pg_give(s, c);
    if (!lost)
      break;
  }
  return rc;
}

int pg_end(store *s, PGconn *c, int rc) {
  if (rc == DECOMP_OK)
    rc = pg_execf(c, NULL, NULL, "COMMIT", "");
  if (rc != DECOMP_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
    PGresult *r = PQexec(c, "ROLLBACK");
    PQclear(r);
  }
  pg_give(s, c);
  return rc;
}

void pg_col_copy(const PGresult *r, int row, int col, char *dst, size_t len) {
  const char *t = PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col);
  snprintf(dst, len, "%s", t);
}

char *pg_col_dup(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

int64_t pg_col_i64(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col)
             ? 0
             : (int64_t)strtoll(PQgetvalue(r, row, col), NULL, 10);
}

double pg_col_f64(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0.0
                                  : strtod(PQgetvalue(r, row, col), NULL);
}

bool pg_col_bool(const PGresult *r, int row, int col) {
  if (PQgetisnull(r, row, col))
    return false;
  const char *v = PQgetvalue(r, row, col);
  return v[0] == 't' || (v[0] >= '1' && v[0] <= '9');
}
