/* index.c — the store's index and job queue in SQLite: the only file that
 * includes sqlite3.h.
 *
 * SQLite 3.40 rules we follow (DESIGN.md, "Known pitfalls"): WAL with
 * synchronous=FULL; one writer connection, every write serialised through
 * it in BEGIN IMMEDIATE; a reader connection per thread (made on first use,
 * closed when the thread exits or the store closes); a job is claimed with
 * UPDATE … RETURNING; `running` rows left by a dead process are requeued at
 * start-up. The schema comes from migrations/ embedded at build time,
 * applied in order under PRAGMA user_version. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "migrations.h"
#include "queue.h"
#include "store_int.h"

#define READER_CACHE 48

/* A thread's reader connection with its prepared statements, keyed by the
 * SQL text's address (every query is a string literal), so a status request
 * costs binds and steps, not parses. */
struct reader {
  sqlite3 *db;
  store *s;
  struct reader *next;
  struct {
    const char *sql;
    sqlite3_stmt *st;
  } cache[READER_CACHE];
  int ncache;
};

struct store {
  store_paths paths;
  sqlite3 *w;               /* the one writer connection */
  pthread_mutex_t wmu;      /* serialises every write through `w` */
  pthread_mutex_t blob_mu;  /* blob presence vs. rows (store_blob_lock) */
  pthread_key_t rkey;       /* this thread's struct reader */
  pthread_mutex_t rmu;      /* guards `readers` */
  struct reader *readers;
  int lock_fd;              /* owner's lock on DATA_DIR/decompd.lock */
  int version;
  bool owner;               /* keeps the reserve (store_reserve_fill) */
  pthread_mutex_t reserve_mu; /* one fill or release at a time */
};

const store_paths *store_paths_of(const store *s) { return &s->paths; }

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

static int db_fail(sqlite3 *db, const char *what) {
  int code = db_code(db);
  if (code == DECOMP_ERR_DISK_FULL)
    return store_fail(code, "%s: no space left on device for the index (%s)",
                      what, sqlite3_errmsg(db));
  return store_fail(code, "%s: %s", what, sqlite3_errmsg(db));
}

static int db_exec(sqlite3 *db, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int code = db_code(db);
    int rc = code == DECOMP_ERR_DISK_FULL
                 ? store_fail(code, "no space left on device for the index "
                                    "(%s)", msg ? msg : "sqlite error")
                 : store_fail(code, "%s", msg ? msg : "sqlite error");
    sqlite3_free(msg);
    return rc;
  }
  return DECOMP_OK;
}

static int db_open(const char *path, sqlite3 **out) {
  sqlite3 *db = NULL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
              SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
    int rc = store_fail(DECOMP_ERR_STORE, "%s: %s", path,
                        db ? sqlite3_errmsg(db) : "cannot open");
    sqlite3_close(db);
    return rc;
  }
  sqlite3_busy_timeout(db, 10000);
  int rc = db_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
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
    return db_fail(db, "prepare");
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
    int e = db_fail(db, "bind");
    sqlite3_finalize(*st);
    *st = NULL;
    return e;
  }
  return DECOMP_OK;
}

static int prepf(sqlite3 *db, sqlite3_stmt **st, const char *sql,
                 const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = vprepf(db, st, sql, fmt, ap);
  va_end(ap);
  return rc;
}

static void col_copy(sqlite3_stmt *st, int i, char *dst, size_t len) {
  const unsigned char *t = sqlite3_column_text(st, i);
  snprintf(dst, len, "%s", t ? (const char *)t : "");
}

static char *col_dup(sqlite3_stmt *st, int i) {
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? strdup((const char *)t) : NULL;
}

/* ---- connections ------------------------------------------------------ */

static void reader_close(struct reader *r) {
  for (int i = 0; i < r->ncache; i++)
    sqlite3_finalize(r->cache[i].st);
  sqlite3_close(r->db);
  free(r);
}

static void reader_drop(void *p) {
  struct reader *r = p;
  store *s = r->s;
  pthread_mutex_lock(&s->rmu);
  for (struct reader **pp = &s->readers; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  pthread_mutex_unlock(&s->rmu);
  reader_close(r);
}

/* This thread's reader connection. */
static int rdb_reader(store *s, struct reader **out) {
  struct reader *r = pthread_getspecific(s->rkey);
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r)
      return store_fail(DECOMP_ERR_NOMEM, "out of memory");
    int rc = db_open(s->paths.db, &r->db);
    if (rc == DECOMP_OK)
      rc = db_exec(r->db, "PRAGMA query_only=1;");
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
 * bind as prepf. Release with sdone(). */
static int sprep(store *s, sqlite3 *db, sqlite3_stmt **st, const char *sql,
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
      return db_fail(db, "prepare");
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
    return db_fail(db, "bind");
  }
  *st = c;
  return DECOMP_OK;
}

/* Release a statement from sprep: a cached one is reset (ending its read
 * transaction, so checkpoints are never held back), others finalized. */
static void sdone(store *s, sqlite3_stmt *st) {
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

static int rdb(store *s, sqlite3 **out) {
  struct reader *r = NULL;
  int rc = rdb_reader(s, &r);
  if (rc == DECOMP_OK)
    *out = r->db;
  return rc;
}

/* Take the writer and open a write transaction. */
static int wbegin(store *s) {
  pthread_mutex_lock(&s->wmu);
  int rc = db_exec(s->w, "BEGIN IMMEDIATE");
  if (rc != DECOMP_OK)
    pthread_mutex_unlock(&s->wmu);
  return rc;
}

/* Commit when rc is OK, else roll back; release the writer. Returns rc (or
 * the commit's failure). */
static int wend(store *s, int rc) {
  if (rc == DECOMP_OK)
    rc = db_exec(s->w, "COMMIT");
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
    rc = db_fail(db, "step");
  if (changes)
    *changes = sqlite3_changes(db);
  sqlite3_finalize(st);
  return rc;
}

/* Prepare, bind (as prepf) and run one statement that returns no rows;
 * *changes (may be NULL) gets the rows it changed. */
static int execf(sqlite3 *db, int *changes, const char *sql, const char *fmt,
                 ...) {
  sqlite3_stmt *st = NULL;
  va_list ap;
  va_start(ap, fmt);
  int rc = vprepf(db, &st, sql, fmt, ap);
  va_end(ap);
  return rc == DECOMP_OK ? step_done(db, st, changes) : rc;
}

#define EXEC execf

/* ---- open / close ----------------------------------------------------- */

static int migrate(store *s) {
  sqlite3_stmt *st = NULL;
  int rc = prepf(s->w, &st, "PRAGMA user_version", "");
  if (rc != DECOMP_OK)
    return rc;
  int version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
  sdone(s, st);
  if (version > STORE_MIGRATION_COUNT)
    return store_fail(DECOMP_ERR_DB_TOO_NEW,
                      "%s: schema version %d, this decompd knows up to %d",
                      s->paths.db, version, STORE_MIGRATION_COUNT);
  for (int i = version; i < STORE_MIGRATION_COUNT; i++) {
    const store_migration *m = &STORE_MIGRATIONS[i];
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA user_version=%d", m->version);
    if ((rc = wbegin(s)) != DECOMP_OK)
      return rc;
    rc = db_exec(s->w, m->sql);
    if (rc == DECOMP_OK)
      rc = db_exec(s->w, pragma);
    if ((rc = wend(s, rc)) != DECOMP_OK)
      return store_fail(rc, "migration %04d_%s: %s", m->version, m->name,
                        store_errmsg());
  }
  s->version = STORE_MIGRATION_COUNT;
  return DECOMP_OK;
}

int store_open(const char *data_dir, bool owner, store **out, int *requeued) {
  store *s = calloc(1, sizeof *s);
  if (!s)
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  s->lock_fd = -1;
  pthread_mutex_init(&s->wmu, NULL);
  pthread_mutex_init(&s->blob_mu, NULL);
  pthread_mutex_init(&s->rmu, NULL);
  pthread_mutex_init(&s->reserve_mu, NULL);
  pthread_key_create(&s->rkey, reader_drop);
  int rc = store_blob_init(data_dir, false, &s->paths);
  if (rc != DECOMP_OK)
    goto fail;
  if (owner) {
    char lock[STORE_PATH_MAX + 16];
    snprintf(lock, sizeof lock, "%s/decompd.lock", s->paths.root);
    s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (s->lock_fd < 0) {
      rc = store_fail(DECOMP_ERR_IO, "%s: %s", lock, strerror(errno));
      goto fail;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
      rc = store_fail(DECOMP_ERR_UNAVAILABLE,
                      "%s: another decompd serves this data dir", lock);
      goto fail;
    }
    if ((rc = store_blob_init(data_dir, true, &s->paths)) != DECOMP_OK)
      goto fail;
    /* On a full disk it is not there yet: the next collected blob makes
     * it (store_blob_gc). */
    s->owner = true;
    store_reserve_fill(&s->paths);
  }
  if ((rc = db_open(s->paths.db, &s->w)) != DECOMP_OK)
    goto fail;
  if ((rc = migrate(s)) != DECOMP_OK)
    goto fail;
  if (owner) {
    int n = 0, m = 0;
    if ((rc = wbegin(s)) != DECOMP_OK)
      goto fail;
    int64_t now = store_now_ms();
    rc = EXEC(s->w, &m,
              "UPDATE jobs SET state='cancelled', finished_at=?1 "
              "WHERE state='running' AND cancel_requested=1",
              "i", now);
    if (rc == DECOMP_OK)
      rc = EXEC(s->w, &n,
                "UPDATE jobs SET state='queued' WHERE state='running'", "");
    if ((rc = wend(s, rc)) != DECOMP_OK)
      goto fail;
    if (requeued)
      *requeued = n;
  }
  *out = s;
  return DECOMP_OK;
fail:
  store_close(s);
  return rc;
}

void store_close(store *s) {
  if (!s)
    return;
  /* This thread's reader (and any left by threads that did not exit). */
  while (s->readers) {
    struct reader *r = s->readers;
    s->readers = r->next;
    reader_close(r);
  }
  pthread_setspecific(s->rkey, NULL);
  pthread_key_delete(s->rkey);
  if (s->w) {
    /* A clean close checkpoints the WAL into the database file. */
    sqlite3_close(s->w);
  }
  if (s->lock_fd >= 0)
    close(s->lock_fd);
  pthread_mutex_destroy(&s->wmu);
  pthread_mutex_destroy(&s->blob_mu);
  pthread_mutex_destroy(&s->rmu);
  pthread_mutex_destroy(&s->reserve_mu);
  free(s);
}

int store_schema_version(store *s) { return s->version; }

int store_ping(store *s) {
  sqlite3 *db;
  int rc = rdb(s, &db);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  if ((rc = sprep(s, db, &st, "SELECT 1", "")) != DECOMP_OK)
    return rc;
  rc = sqlite3_step(st) == SQLITE_ROW ? DECOMP_OK : db_fail(db, "ping");
  sdone(s, st);
  return rc;
}

void store_blob_lock(store *s) { pthread_mutex_lock(&s->blob_mu); }
void store_blob_unlock(store *s) { pthread_mutex_unlock(&s->blob_mu); }

int store_blob_gc(store *s, const char *digest) {
  sqlite3 *db = s->w;
  pthread_mutex_lock(&s->wmu);
  sqlite3_stmt *st = NULL;
  int rc = prepf(db, &st,
                 "SELECT EXISTS(SELECT 1 FROM models WHERE digest=?1) OR "
                 "EXISTS(SELECT 1 FROM models WHERE calibration=?1) OR "
                 "EXISTS(SELECT 1 FROM jobs WHERE calibration=?1) OR "
                 "EXISTS(SELECT 1 FROM models WHERE profile=?1) OR "
                 "EXISTS(SELECT 1 FROM jobs WHERE profile=?1) OR "
                 "EXISTS(SELECT 1 FROM artifacts WHERE digest=?1) OR "
                 "EXISTS(SELECT 1 FROM model_shards WHERE digest=?1) OR "
                 "EXISTS(SELECT 1 FROM loose_blobs WHERE digest=?1)",
                 "s", digest);
  int used = 1;
  if (rc == DECOMP_OK) {
    used = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 1;
    sdone(s, st);
  }
  pthread_mutex_unlock(&s->wmu);
  if (rc != DECOMP_OK || used)
    return rc;
  char path[STORE_PATH_MAX + 80];
  if ((rc = store_blob_path(s, digest, path, sizeof path)) != DECOMP_OK)
    return rc;
  if (unlink(path) != 0 && errno != ENOENT)
    return store_fail(DECOMP_ERR_IO, "unlink %s: %s", path, strerror(errno));
  /* Space came free: the reserve first, if a delete used it. */
  if (s->owner) {
    pthread_mutex_lock(&s->reserve_mu);
    store_reserve_fill(&s->paths);
    pthread_mutex_unlock(&s->reserve_mu);
  }
  return DECOMP_OK;
}

bool store_reserve_ok(store *s) {
  struct stat st;
  return s->owner && stat(s->paths.reserve, &st) == 0 &&
         (int64_t)st.st_blocks * 512 >= (int64_t)STORE_RESERVE_BYTES;
}

/* Run `tx`; when it fails for want of space, free the reserve and run it
 * once more. For the few writes that must get through on a full disk: a
 * delete (how space comes back: it needs a few pages of the index to say
 * so) and the end of a running job. */
static int write_with_reserve(store *s, int (*tx)(store *, void *),
                              void *arg) {
  int rc = tx(s, arg);
  if (rc == DECOMP_ERR_DISK_FULL && s->owner) {
    pthread_mutex_lock(&s->reserve_mu);
    bool freed = store_reserve_release(&s->paths);
    pthread_mutex_unlock(&s->reserve_mu);
    if (freed)
      rc = tx(s, arg);
  }
  return rc;
}

/* ---- models ----------------------------------------------------------- */

#define MODEL_COLS "id, digest, name, format, size, tensors, created_at"
#define MODEL_READ_COLS                                                        \
  MODEL_COLS                                                                   \
      ", spec IS NOT NULL, calibration, "                                      \
      "COALESCE(calibration_layers, 0), COALESCE(calibration_size, 0), "       \
      "profile, COALESCE(profile_layers, 0), COALESCE(profile_size, 0)"

static void model_row(sqlite3_stmt *st, store_model *m) {
  col_copy(st, 0, m->id, sizeof m->id);
  col_copy(st, 1, m->digest, sizeof m->digest);
  col_copy(st, 2, m->name, sizeof m->name);
  col_copy(st, 3, m->format, sizeof m->format);
  m->size = sqlite3_column_int64(st, 4);
  m->tensors = sqlite3_column_int64(st, 5);
  m->created_at = sqlite3_column_int64(st, 6);
  m->has_spec = sqlite3_column_int(st, 7) != 0;
  col_copy(st, 8, m->calibration, sizeof m->calibration);
  m->calibration_layers = sqlite3_column_int64(st, 9);
  m->calibration_size = sqlite3_column_int64(st, 10);
  col_copy(st, 11, m->profile, sizeof m->profile);
  m->profile_layers = sqlite3_column_int64(st, 12);
  m->profile_size = sqlite3_column_int64(st, 13);
}

int store_model_put(store *s, store_model *m, bool *created) {
  char id[24];
  if (!store_random_id("m_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  int n = 0;
  rc = EXEC(s->w, &n,
            "INSERT INTO models (" MODEL_COLS ") VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT (digest) DO NOTHING",
            "ssssiii", id, m->digest, m->name, m->format, m->size, m->tensors,
            store_now_ms());
  if (rc == DECOMP_OK) {
    sqlite3_stmt *st = NULL;
    rc = prepf(s->w, &st, "SELECT " MODEL_READ_COLS " FROM models WHERE digest=?",
               "s", m->digest);
    if (rc == DECOMP_OK) {
      if (sqlite3_step(st) == SQLITE_ROW)
        model_row(st, m);
      else
        rc = db_fail(s->w, "model row");
      sdone(s, st);
    }
  }
  rc = wend(s, rc);
  if (rc == DECOMP_OK)
    *created = n > 0;
  return rc;
}

int store_model_get(store *s, const char *id, store_model *out) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st, "SELECT " MODEL_READ_COLS " FROM models WHERE id=?",
               "s", id);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    model_row(st, out);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  else
    rc = db_fail(db, "model get");
  sdone(s, st);
  return rc;
}

int store_model_list(store *s, store_model **out, size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
               "SELECT " MODEL_READ_COLS
               " FROM models ORDER BY created_at DESC, id",
               "");
  if (rc != DECOMP_OK)
    return rc;
  store_model *v = NULL;
  size_t cnt = 0, cap = 0;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 16;
      store_model *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    model_row(st, &v[cnt++]);
  }
  if (rc == DECOMP_OK && r != SQLITE_DONE)
    rc = db_fail(db, "model list");
  sdone(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

struct model_delete {
  const char *id;
  char *digest, *calibration, *profile;
};

static int model_delete_tx(store *s, void *arg) {
  const char *id = ((struct model_delete *)arg)->id;
  char *digest = ((struct model_delete *)arg)->digest;
  char *calibration = ((struct model_delete *)arg)->calibration;
  char *profile = ((struct model_delete *)arg)->profile;
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  rc = prepf(s->w, &st,
             "SELECT digest, (SELECT COUNT(*) FROM jobs WHERE model_id=?1 AND "
             "state IN ('queued','running')), calibration, profile FROM "
             "models WHERE id=?1",
             "s", id);
  if (rc == DECOMP_OK) {
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
      col_copy(st, 0, digest, STORE_DIGEST_LEN);
      col_copy(st, 2, calibration, STORE_DIGEST_LEN);
      col_copy(st, 3, profile, STORE_DIGEST_LEN);
      if (sqlite3_column_int64(st, 1) > 0)
        rc = store_fail(DECOMP_ERR_CONFLICT,
                        "model %s is used by a queued or running job", id);
    } else if (r == SQLITE_DONE) {
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
    } else {
      rc = db_fail(s->w, "model delete");
    }
    sdone(s, st);
  }
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM model_shards WHERE model_id=?", "s",
              id);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM models WHERE id=?", "s", id);
  return wend(s, rc);
}

int store_model_delete(store *s, const char *id, char digest[STORE_DIGEST_LEN],
                       char calibration[STORE_DIGEST_LEN],
                       char profile[STORE_DIGEST_LEN]) {
  digest[0] = calibration[0] = profile[0] = '\0';
  struct model_delete a = {id, digest, calibration, profile};
  return write_with_reserve(s, model_delete_tx, &a);
}

int store_model_set_spec(store *s, const char *id, const char *spec) {
  int rc = wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &n, "UPDATE models SET spec=? WHERE id=?", "ss", spec, id);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  return wend(s, rc);
}

/* One text column of a model row (`sql` selects it by id). */
static int model_text(store *s, const char *sql, const char *id, char **out) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st, sql, "s", id);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    *out = col_dup(st, 0);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  else
    rc = db_fail(db, "model spec");
  sdone(s, st);
  return rc;
}

int store_model_get_spec(store *s, const char *id, char **spec) {
  return model_text(s, "SELECT spec FROM models WHERE id=?", id, spec);
}

int store_model_get_archive_spec(store *s, const char *id, char **spec) {
  return model_text(s, "SELECT archive_spec FROM models WHERE id=?", id, spec);
}

int store_model_set_archive_spec(store *s, const char *id, const char *spec) {
  int rc = wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &n, "UPDATE models SET archive_spec=? WHERE id=?", "ss", spec,
            id);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
  return wend(s, rc);
}

/* The SQL of one kind of model attachment (a blob with its layers and
 * size, in columns named after it); `what` names it in messages. */
struct attachment_sql {
  const char *what, *select, *set, *clear;
  const char *submit; /* (model id, request key) → (attached digest or '',
                         whether that job exists) */
};

static const struct attachment_sql CALIBRATION_SQL = {
    "calibration", "SELECT calibration FROM models WHERE id=?",
    "UPDATE models SET calibration=?, calibration_layers=?, "
    "calibration_size=? WHERE id=?",
    "UPDATE models SET calibration=NULL, calibration_layers=NULL, "
    "calibration_size=NULL WHERE id=?",
    "SELECT COALESCE((SELECT calibration FROM models WHERE id=?1), ''), "
    "EXISTS(SELECT 1 FROM jobs WHERE request_key=?2)"};

static const struct attachment_sql PROFILE_SQL = {
    "profile", "SELECT profile FROM models WHERE id=?",
    "UPDATE models SET profile=?, profile_layers=?, profile_size=? WHERE id=?",
    "UPDATE models SET profile=NULL, profile_layers=NULL, profile_size=NULL "
    "WHERE id=?",
    "SELECT COALESCE((SELECT profile FROM models WHERE id=?1), ''), "
    "EXISTS(SELECT 1 FROM jobs WHERE request_key=?2)"};

static int model_set_attachment(store *s, const struct attachment_sql *q,
                                const char *id, const char *digest,
                                int64_t layers, int64_t size,
                                char old[STORE_DIGEST_LEN]) {
  old[0] = '\0';
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  rc = prepf(s->w, &st, q->select, "s", id);
  if (rc == DECOMP_OK) {
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
      col_copy(st, 0, old, STORE_DIGEST_LEN);
    else if (r == SQLITE_DONE)
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", id);
    else
      rc = db_fail(s->w, q->what);
    sdone(s, st);
  }
  if (rc == DECOMP_OK && !digest && !old[0])
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "model %s has no %s", id, q->what);
  if (rc == DECOMP_OK)
    rc = digest ? EXEC(s->w, NULL, q->set, "siis", digest, layers, size, id)
                : EXEC(s->w, NULL, q->clear, "s", id);
  rc = wend(s, rc);
  if (rc != DECOMP_OK)
    old[0] = '\0';
  return rc;
}

int store_model_set_calibration(store *s, const char *id, const char *digest,
                                int64_t layers, int64_t size,
                                char old[STORE_DIGEST_LEN]) {
  return model_set_attachment(s, &CALIBRATION_SQL, id, digest, layers, size,
                              old);
}

int store_model_set_profile(store *s, const char *id, const char *digest,
                            int64_t layers, int64_t size,
                            char old[STORE_DIGEST_LEN]) {
  return model_set_attachment(s, &PROFILE_SQL, id, digest, layers, size, old);
}

/* ---- sharded models, loose blobs --------------------------------------- */

int store_model_put_sharded(store *s, store_model *m, const store_shard *sh,
                            size_t n, bool *created) {
  char id[24];
  if (!store_random_id("m_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = wbegin(s);
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
  if (rc == DECOMP_OK) {
    sqlite3_stmt *st = NULL;
    rc = prepf(s->w, &st,
               "SELECT " MODEL_READ_COLS " FROM models WHERE digest=?", "s",
               m->digest);
    if (rc == DECOMP_OK) {
      if (sqlite3_step(st) == SQLITE_ROW)
        model_row(st, m);
      else
        rc = db_fail(s->w, "model row");
      sdone(s, st);
    }
  }
  rc = wend(s, rc);
  if (rc == DECOMP_OK)
    *created = ins > 0;
  return rc;
}

int store_model_shards(store *s, const char *id, store_shard **out,
                       size_t *n) {
  *out = NULL;
  *n = 0;
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
               "SELECT name, digest, size FROM model_shards WHERE model_id=? "
               "ORDER BY idx",
               "s", id);
  if (rc != DECOMP_OK)
    return rc;
  store_shard *v = NULL;
  size_t cnt = 0, cap = 0;
  int r;
  while ((r = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 8;
      store_shard *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    col_copy(st, 0, v[cnt].name, sizeof v[cnt].name);
    col_copy(st, 1, v[cnt].digest, sizeof v[cnt].digest);
    v[cnt].size = sqlite3_column_int64(st, 2);
    cnt++;
  }
  if (rc == DECOMP_OK && r != SQLITE_DONE)
    rc = db_fail(db, "model shards");
  sdone(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int store_loose_blob_touch(store *s, const char *digest, int64_t size) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT INTO loose_blobs (digest, size, uploaded_at) "
            "VALUES (?1,?2,?3) ON CONFLICT (digest) DO UPDATE SET "
            "uploaded_at=?3",
            "sii", digest, size, store_now_ms());
  return wend(s, rc);
}

int store_uploads_sweep(store *s, int64_t ttl_ms, int *partials, int *blobs) {
  int64_t cutoff = store_now_ms() - ttl_ms;
  int np = store_partials_sweep(&s->paths, cutoff), nb = 0;
  char(*v)[STORE_DIGEST_LEN] = NULL;
  size_t cnt = 0, cap = 0;
  store_blob_lock(s);
  int rc = wbegin(s);
  if (rc == DECOMP_OK) {
    sqlite3_stmt *st = NULL;
    rc = prepf(s->w, &st,
               "DELETE FROM loose_blobs WHERE uploaded_at < ? RETURNING digest",
               "i", cutoff);
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
      col_copy(st, 0, v[cnt++], STORE_DIGEST_LEN);
    }
    if (rc == DECOMP_OK && r != SQLITE_DONE)
      rc = db_fail(s->w, "loose blobs");
    if (st)
      sqlite3_finalize(st);
    rc = wend(s, rc);
  }
  /* Each is collected unless a model's shard (or anything else) names it. */
  for (size_t i = 0; rc == DECOMP_OK && i < cnt; i++) {
    char path[STORE_PATH_MAX + 80];
    struct stat st;
    if (store_blob_path(s, v[i], path, sizeof path) == DECOMP_OK &&
        store_blob_gc(s, v[i]) == DECOMP_OK && stat(path, &st) != 0)
      nb++;
  }
  store_blob_unlock(s);
  free(v);
  if (partials)
    *partials = np;
  if (blobs)
    *blobs = nb;
  return rc;
}

/* ---- artifacts -------------------------------------------------------- */

static void artifact_row(sqlite3_stmt *st, store_artifact *a) {
  col_copy(st, 0, a->name, sizeof a->name);
  col_copy(st, 1, a->digest, sizeof a->digest);
  a->size = sqlite3_column_int64(st, 2);
  col_copy(st, 3, a->media_type, sizeof a->media_type);
}

int store_artifact_get(store *s, const char *job_id, const char *name,
                       store_artifact *out) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
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
    rc = db_fail(db, "artifact get");
  sdone(s, st);
  return rc;
}

int store_artifact_list(store *s, const char *job_id, store_artifact **out,
                        size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
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
    rc = db_fail(db, "artifact list");
  sdone(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

/* ---- tokens ----------------------------------------------------------- */

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

int store_token_put(store *s, const char *name, int role, const char *hash_hex,
                    char id[24]) {
  if (!store_random_id("t_", 4, id, 24))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT INTO tokens (id, name, role, hash, created_at) "
            "VALUES (?,?,?,?,?)",
            "ssssi", id, name, store_role_name(role), hash_hex,
            store_now_ms());
  if (rc == DECOMP_ERR_CONFLICT)
    store_fail(rc, "a token named '%s' exists", name);
  return wend(s, rc);
}

int store_token_any(store *s, bool *any) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st, "SELECT EXISTS(SELECT 1 FROM tokens)", "");
  if (rc != DECOMP_OK)
    return rc;
  if (sqlite3_step(st) == SQLITE_ROW)
    *any = sqlite3_column_int(st, 0) != 0;
  else
    rc = db_fail(db, "tokens");
  sdone(s, st);
  return rc;
}

int store_token_role(store *s, const char *hash_hex, int *role,
                     char name[256]) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st, "SELECT role, name FROM tokens WHERE hash=?", "s",
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
      col_copy(st, 1, name, 256);
  } else if (r != SQLITE_DONE) {
    rc = db_fail(db, "token");
  }
  sdone(s, st);
  return rc;
}

int store_token_delete(store *s, const char *name) {
  int rc = wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, &n, "DELETE FROM tokens WHERE name=?", "s", name);
  if (rc == DECOMP_OK && n == 0)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no token named '%s'", name);
  return wend(s, rc);
}

int store_token_list(store *s, store_token **out, size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
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
    col_copy(st, 0, t->id, sizeof t->id);
    col_copy(st, 1, t->name, sizeof t->name);
    t->role = store_role_from_name((const char *)sqlite3_column_text(st, 2));
    t->created_at = sqlite3_column_int64(st, 3);
  }
  sdone(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

/* ---- jobs ------------------------------------------------------------- */

static const char *const STATE_NAMES[STORE_JOB_STATE_COUNT] = {
    "queued", "running", "succeeded", "failed", "cancelled"};

const char *store_job_state_name(int state) {
  return state >= 0 && state < STORE_JOB_STATE_COUNT ? STATE_NAMES[state]
                                                     : "unknown";
}

int store_job_state_from_name(const char *name) {
  for (int i = 0; i < STORE_JOB_STATE_COUNT; i++)
    if (name && strcmp(name, STATE_NAMES[i]) == 0)
      return i;
  return -1;
}

void store_job_clear(store_job *j) {
  if (!j)
    return;
  free(j->error_message);
  free(j->spec);
  free(j->policy);
  j->error_message = j->spec = j->policy = NULL;
}

#define JOB_COLS                                                               \
  "seq, id, model_id, state, cancel_requested, attempts, layers_total, "       \
  "layers_done, error_code, error_message, created_at, "                       \
  "COALESCE(started_at, 0), COALESCE(finished_at, 0), current_layer, "         \
  "current_step, COALESCE(current_fraction, 0), calibration, profile, "      \
  "COALESCE(shard_bytes, 0), COALESCE(peak_rss_bytes, 0)"
#define JOB_COLS_SPEC JOB_COLS ", spec, policy"

static void job_row(sqlite3_stmt *st, store_job *j, bool with_spec) {
  memset(j, 0, sizeof *j);
  j->seq = sqlite3_column_int64(st, 0);
  col_copy(st, 1, j->id, sizeof j->id);
  col_copy(st, 2, j->model_id, sizeof j->model_id);
  j->state = store_job_state_from_name((const char *)sqlite3_column_text(st, 3));
  j->cancel_requested = sqlite3_column_int(st, 4) != 0;
  j->attempts = sqlite3_column_int(st, 5);
  j->layers_total = sqlite3_column_int64(st, 6);
  j->layers_done = sqlite3_column_int64(st, 7);
  col_copy(st, 8, j->error_code, sizeof j->error_code);
  j->error_message = col_dup(st, 9);
  j->created_at = sqlite3_column_int64(st, 10);
  j->started_at = sqlite3_column_int64(st, 11);
  j->finished_at = sqlite3_column_int64(st, 12);
  col_copy(st, 13, j->current_layer, sizeof j->current_layer);
  col_copy(st, 14, j->current_step, sizeof j->current_step);
  j->current_fraction = sqlite3_column_double(st, 15);
  col_copy(st, 16, j->calibration, sizeof j->calibration);
  col_copy(st, 17, j->profile, sizeof j->profile);
  j->shard_bytes = sqlite3_column_int64(st, 18);
  j->peak_rss_bytes = sqlite3_column_int64(st, 19);
  if (with_spec) {
    j->spec = col_dup(st, 20);
    j->policy = col_dup(st, 21);
  }
}

/* Read one job through `db` (reader or the writer inside a transaction). */
static int job_read(store *s, sqlite3 *db, const char *sql, const char *key,
                    bool with_spec, store_job *out) {
  sqlite3_stmt *st = NULL;
  int rc = sprep(s, db, &st, sql, "s", key);
  if (rc != DECOMP_OK)
    return rc;
  int r = sqlite3_step(st);
  if (r == SQLITE_ROW)
    job_row(st, out, with_spec);
  else if (r == SQLITE_DONE)
    rc = store_fail(DECOMP_ERR_NOT_FOUND, "no job %s", key);
  else
    rc = db_fail(db, "job");
  sdone(s, st);
  return rc;
}

/* Inside store_job_submit's transaction: unless a job with `request_key`
 * exists, `digest` must be the model's attached one of kind `q`. */
static int job_attachment_check(store *s, const struct attachment_sql *q,
                                const char *model_id, const char *request_key,
                                const char *digest) {
  sqlite3_stmt *st = NULL;
  int rc = prepf(s->w, &st, q->submit, "ss", model_id, request_key);
  if (rc != DECOMP_OK)
    return rc;
  if (sqlite3_step(st) != SQLITE_ROW) {
    rc = db_fail(s->w, q->what);
  } else if (sqlite3_column_int(st, 1) == 0) {
    const char *now = (const char *)sqlite3_column_text(st, 0);
    if (!now || !now[0])
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "model %s has no %s attached, not %s %s", model_id,
                      q->what, q->what, digest);
    else if (strcmp(now, digest) != 0)
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "model %s has %s %s attached, not %s %s", model_id,
                      q->what, now, q->what, digest);
  }
  sdone(s, st);
  return rc;
}

int store_job_submit(store *s, const char *request_key, store_job *j,
                     bool *created) {
  char id[24];
  if (!store_random_id("j_", 8, id, sizeof id))
    return store_fail(DECOMP_ERR_INTERNAL, "random source failed");
  int rc = wbegin(s), n = 0;
  if (rc != DECOMP_OK)
    return rc;
  /* The model must exist in the transaction that queues the job: checked
   * before it, a DELETE of the model could land in between and both
   * succeed, leaving a queued job on a model that is gone. */
  sqlite3_stmt *st = NULL;
  rc = prepf(s->w, &st, "SELECT EXISTS(SELECT 1 FROM models WHERE id=?)", "s",
             j->model_id);
  if (rc == DECOMP_OK) {
    if (sqlite3_step(st) != SQLITE_ROW)
      rc = db_fail(s->w, "job model");
    else if (sqlite3_column_int(st, 0) == 0)
      rc = store_fail(DECOMP_ERR_NOT_FOUND, "no model %s", j->model_id);
    sdone(s, st);
  }
  /* So must its calibration and its profile, for a new job: attached to
   * the model now (a replacement landing just before would have collected
   * its blob; once the row is in, the row keeps it). An existing job is
   * returned as it is, whatever the model has attached since. */
  if (rc == DECOMP_OK && j->calibration[0])
    rc = job_attachment_check(s, &CALIBRATION_SQL, j->model_id, request_key,
                              j->calibration);
  if (rc == DECOMP_OK && j->profile[0])
    rc = job_attachment_check(s, &PROFILE_SQL, j->model_id, request_key,
                              j->profile);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, &n,
              "INSERT INTO jobs (id, model_id, request_key, spec, policy, "
              "calibration, profile, state, created_at, shard_bytes) "
              "VALUES (?,?,?,?,?,?,?,'queued',?,NULLIF(?,0)) "
              "ON CONFLICT (request_key) DO NOTHING",
              "sssssssii", id, j->model_id, request_key, j->spec, j->policy,
              j->calibration[0] ? j->calibration : NULL,
              j->profile[0] ? j->profile : NULL, store_now_ms(),
              j->shard_bytes);
  store_job row;
  if (rc == DECOMP_OK)
    rc = job_read(s, s->w, "SELECT " JOB_COLS_SPEC " FROM jobs WHERE request_key=?",
                  request_key, true, &row);
  rc = wend(s, rc);
  if (rc != DECOMP_OK)
    return rc;
  *j = row;
  *created = n > 0;
  return DECOMP_OK;
}

int store_job_get(store *s, const char *id, bool with_spec, store_job *out) {
  sqlite3 *db;
  int rc = rdb(s, &db);
  if (rc != DECOMP_OK)
    return rc;
  return job_read(s, db,
                  with_spec ? "SELECT " JOB_COLS_SPEC " FROM jobs WHERE id=?"
                            : "SELECT " JOB_COLS " FROM jobs WHERE id=?",
                  id, with_spec, out);
}

int store_job_list(store *s, int state, int64_t before, int limit,
                   store_job **out, size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
               "SELECT " JOB_COLS " FROM jobs WHERE (?1 < 0 OR state=?2) "
               "AND (?3 = 0 OR seq < ?3) ORDER BY seq DESC LIMIT ?4",
               "nsin", state, store_job_state_name(state), before, limit);
  if (rc != DECOMP_OK)
    return rc;
  store_job *v = calloc(limit > 0 ? (size_t)limit : 1, sizeof *v);
  size_t cnt = 0;
  if (!v)
    rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
  int r = SQLITE_DONE;
  while (rc == DECOMP_OK && cnt < (size_t)limit &&
         (r = sqlite3_step(st)) == SQLITE_ROW)
    job_row(st, &v[cnt++], false);
  if (rc == DECOMP_OK && r != SQLITE_DONE && r != SQLITE_ROW)
    rc = db_fail(db, "job list");
  sdone(s, st);
  if (rc != DECOMP_OK) {
    for (size_t i = 0; i < cnt; i++)
      store_job_clear(&v[i]);
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int store_job_layers(store *s, const char *job_id, store_job_layer **out,
                     size_t *n) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st,
               "SELECT idx, name, rank, max_rank, seconds, "
               "COALESCE(skip_reason, '') FROM job_layers WHERE job_id=? "
               "ORDER BY idx",
               "s", job_id);
  if (rc != DECOMP_OK)
    return rc;
  store_job_layer *v = NULL;
  size_t cnt = 0, cap = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    if (cnt == cap) {
      cap = cap ? 2 * cap : 32;
      store_job_layer *nv = realloc(v, cap * sizeof *v);
      if (!nv) {
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        break;
      }
      v = nv;
    }
    store_job_layer *l = &v[cnt++];
    l->index = sqlite3_column_int64(st, 0);
    col_copy(st, 1, l->name, sizeof l->name);
    l->rank = sqlite3_column_int64(st, 2);
    l->max_rank = sqlite3_column_int64(st, 3);
    l->seconds = sqlite3_column_double(st, 4);
    col_copy(st, 5, l->skip_reason, sizeof l->skip_reason);
  }
  sdone(s, st);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int store_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st, "SELECT state, COUNT(*) FROM jobs GROUP BY state", "");
  if (rc != DECOMP_OK)
    return rc;
  for (int i = 0; i < STORE_JOB_STATE_COUNT; i++)
    counts[i] = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    int k = store_job_state_from_name((const char *)sqlite3_column_text(st, 0));
    if (k >= 0)
      counts[k] = sqlite3_column_int64(st, 1);
  }
  sdone(s, st);
  return DECOMP_OK;
}

int store_job_claim(store *s, store_job *out) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  rc = prepf(s->w, &st,
             "UPDATE jobs SET state='running', attempts=attempts+1, "
             "started_at=?1, layers_done=0, error_code=NULL, "
             "error_message=NULL, current_layer=NULL, current_step=NULL, "
             "current_fraction=NULL WHERE seq = (SELECT seq FROM jobs WHERE "
             "state='queued' ORDER BY seq LIMIT 1) RETURNING " JOB_COLS_SPEC,
             "i", store_now_ms());
  if (rc == DECOMP_OK) {
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
      job_row(st, out, true);
      /* Drain RETURNING so the UPDATE completes before the finalize. */
      while (sqlite3_step(st) == SQLITE_ROW)
        ;
    } else if (r == SQLITE_DONE) {
      rc = DECOMP_ERR_NOT_FOUND;
    } else {
      rc = db_fail(s->w, "claim");
    }
    sdone(s, st);
  }
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM job_layers WHERE job_id=?", "s",
              out->id);
  if (rc == DECOMP_ERR_NOT_FOUND) {
    wend(s, DECOMP_OK);
    return DECOMP_ERR_NOT_FOUND;
  }
  rc = wend(s, rc);
  if (rc != DECOMP_OK)
    store_job_clear(out);
  return rc;
}

int store_job_progress(store *s, const char *job_id, int64_t total,
                    const store_job_layer *l) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "INSERT OR REPLACE INTO job_layers (job_id, idx, name, rank, "
            "max_rank, seconds, skip_reason) VALUES (?,?,?,?,?,?,?)",
            "sisiids", job_id, l->index, l->name, l->rank, l->max_rank,
            l->seconds, l->skip_reason[0] ? l->skip_reason : NULL);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET layers_total=?2, layers_done=(SELECT COUNT(*) "
              "FROM job_layers WHERE job_id=?1), current_layer=NULL, "
              "current_step=NULL, current_fraction=NULL WHERE id=?1",
              "si", job_id, total);
  return wend(s, rc);
}

int store_job_current(store *s, const char *job_id, int64_t total,
                      const char *layer, const char *step, double fraction) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL,
            "UPDATE jobs SET layers_total=?2, current_layer=?3, "
            "current_step=?4, current_fraction=?5 WHERE id=?1 AND "
            "state='running'",
            "sissd", job_id, total, layer, step, fraction);
  return wend(s, rc);
}

int store_job_cancel_requested(store *s, const char *job_id, bool *yes) {
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  int rc = rdb(s, &db);
  if (rc == DECOMP_OK)
    rc = sprep(s, db, &st, "SELECT cancel_requested FROM jobs WHERE id=?", "s",
               job_id);
  if (rc != DECOMP_OK)
    return rc;
  /* A deleted row counts as cancelled. */
  *yes = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) != 0 : true;
  sdone(s, st);
  return DECOMP_OK;
}

int store_job_set_peak_rss(store *s, const char *job_id, int64_t bytes) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  rc = EXEC(s->w, NULL, "UPDATE jobs SET peak_rss_bytes=? WHERE id=?", "is",
            bytes, job_id);
  return wend(s, rc);
}

int store_job_succeed(store *s, const char *job_id, const store_artifact *a,
                      size_t n) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++)
    rc = EXEC(s->w, NULL,
              "INSERT OR REPLACE INTO artifacts (job_id, name, digest, size, "
              "media_type) VALUES (?,?,?,?,?)",
              "sssis", job_id, a[i].name, a[i].digest, a[i].size,
              a[i].media_type);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET state='succeeded', finished_at=? WHERE id=? "
              "AND state='running'",
              "is", store_now_ms(), job_id);
  return wend(s, rc);
}

/* A running job's end: failed or cancelled (finished now) or back in the
 * queue. */
struct job_end {
  const char *id;
  const char *state;
  const char *code, *message; /* failed only */
};

static int job_end_tx(store *s, void *arg) {
  const struct job_end *e = arg;
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  if (strcmp(e->state, "queued") == 0)
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET state='queued' WHERE id=? AND state='running'",
              "s", e->id);
  else
    rc = EXEC(s->w, NULL,
              "UPDATE jobs SET state=?1, finished_at=?2, error_code=?3, "
              "error_message=?4 WHERE id=?5 AND state='running'",
              "sisss", e->state, store_now_ms(), e->code, e->message, e->id);
  return wend(s, rc);
}

/* Ending a job may use the reserve too: on a full disk a job left
 * `running` would hold its model (store_model_delete refuses) until the
 * daemon restarts. */
int store_job_fail(store *s, const char *job_id, int err, const char *message) {
  struct job_end e = {job_id, "failed", decomp_error_code(err), message};
  return write_with_reserve(s, job_end_tx, &e);
}

int store_job_cancelled(store *s, const char *job_id) {
  struct job_end e = {job_id, "cancelled", NULL, NULL};
  return write_with_reserve(s, job_end_tx, &e);
}

int store_job_requeue(store *s, const char *job_id) {
  struct job_end e = {job_id, "queued", NULL, NULL};
  return write_with_reserve(s, job_end_tx, &e);
}

int store_job_cancel(store *s, const char *id, store_job *out) {
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_QUEUED)
      rc = EXEC(s->w, NULL,
                "UPDATE jobs SET state='cancelled', cancel_requested=1, "
                "finished_at=? WHERE id=?",
                "is", store_now_ms(), id);
    else if (j.state == STORE_JOB_RUNNING)
      rc = EXEC(s->w, NULL, "UPDATE jobs SET cancel_requested=1 WHERE id=?",
                "s", id);
    else if (j.state != STORE_JOB_CANCELLED)
      rc = store_fail(DECOMP_ERR_CONFLICT, "job %s has already %s", id,
                      store_job_state_name(j.state));
    store_job_clear(&j);
  }
  if (rc == DECOMP_OK)
    rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                  out);
  return wend(s, rc);
}

int store_job_retry(store *s, const char *id, store_job *out,
                    bool *requeued) {
  *requeued = false;
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_FAILED || j.state == STORE_JOB_CANCELLED) {
      /* As at submit: its model must exist in this transaction. */
      sqlite3_stmt *st = NULL;
      rc = prepf(s->w, &st, "SELECT EXISTS(SELECT 1 FROM models WHERE id=?)",
                 "s", j.model_id);
      if (rc == DECOMP_OK) {
        if (sqlite3_step(st) != SQLITE_ROW)
          rc = db_fail(s->w, "job model");
        else if (sqlite3_column_int(st, 0) == 0)
          rc = store_fail(DECOMP_ERR_CONFLICT,
                          "job %s: its model %s has been deleted", id,
                          j.model_id);
        sdone(s, st);
      }
      /* A new attempt at the back of the queue (a new seq: the queue and
       * the list go by it); attempts keep counting. */
      if (rc == DECOMP_OK)
        rc = EXEC(s->w, NULL,
                  "UPDATE jobs SET seq=(SELECT MAX(seq) + 1 FROM jobs), "
                  "state='queued', cancel_requested=0, layers_done=0, "
                  "layers_total=0, error_code=NULL, error_message=NULL, "
                  "started_at=NULL, finished_at=NULL, current_layer=NULL, "
                  "current_step=NULL, current_fraction=NULL WHERE id=?",
                  "s", id);
      if (rc == DECOMP_OK)
        rc = EXEC(s->w, NULL, "DELETE FROM job_layers WHERE job_id=?", "s",
                  id);
      *requeued = rc == DECOMP_OK;
    } else if (j.state == STORE_JOB_SUCCEEDED) {
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "job %s has succeeded: there is nothing to retry "
                      "(delete it to run it again)",
                      id);
    } else if (j.cancel_requested) {
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "job %s is being cancelled; retry it once it has "
                      "stopped",
                      id);
    } /* queued or running: it is going to run; nothing to do */
    store_job_clear(&j);
  }
  bool filled = false;
  if (rc == DECOMP_OK)
    filled = (rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?",
                            id, false, out)) == DECOMP_OK;
  rc = wend(s, rc);
  if (rc != DECOMP_OK) {
    *requeued = false;
    if (filled)
      store_job_clear(out);
  }
  return rc;
}

struct job_delete {
  const char *id;
  char (**digests)[STORE_DIGEST_LEN];
  size_t *n;
};

static int job_delete_tx(store *s, void *arg) {
  const char *id = ((struct job_delete *)arg)->id;
  char(**digests)[STORE_DIGEST_LEN] = ((struct job_delete *)arg)->digests;
  size_t *n = ((struct job_delete *)arg)->n;
  int rc = wbegin(s);
  if (rc != DECOMP_OK)
    return rc;
  store_job j;
  char(*v)[STORE_DIGEST_LEN] = NULL;
  char calibration[STORE_DIGEST_LEN] = "", profile[STORE_DIGEST_LEN] = "";
  size_t cnt = 0;
  rc = job_read(s, s->w, "SELECT " JOB_COLS " FROM jobs WHERE id=?", id, false,
                &j);
  if (rc == DECOMP_OK) {
    if (j.state == STORE_JOB_QUEUED || j.state == STORE_JOB_RUNNING)
      rc = store_fail(DECOMP_ERR_CONFLICT, "job %s is %s; cancel it first", id,
                      store_job_state_name(j.state));
    memcpy(calibration, j.calibration, sizeof calibration);
    memcpy(profile, j.profile, sizeof profile);
    store_job_clear(&j);
  }
  if (rc == DECOMP_OK) {
    sqlite3_stmt *st = NULL;
    rc = prepf(s->w, &st, "SELECT digest FROM artifacts WHERE job_id=?", "s",
               id);
    if (rc == DECOMP_OK) {
      /* the artifacts (a sharded output has one per shard), then the
       * calibration and the profile */
      size_t cap = 16;
      v = calloc(cap, sizeof *v);
      while (v && sqlite3_step(st) == SQLITE_ROW) {
        if (cnt + 2 >= cap) {
          char(*nv)[STORE_DIGEST_LEN] = realloc(v, 2 * cap * sizeof *v);
          if (!nv) {
            free(v);
            v = NULL;
            break;
          }
          v = nv;
          cap *= 2;
        }
        col_copy(st, 0, v[cnt++], STORE_DIGEST_LEN);
      }
      sdone(s, st);
      if (!v)
        rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
      if (v && calibration[0])
        memcpy(v[cnt++], calibration, STORE_DIGEST_LEN);
      if (v && profile[0])
        memcpy(v[cnt++], profile, STORE_DIGEST_LEN);
    }
  }
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM artifacts WHERE job_id=?", "s", id);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM job_layers WHERE job_id=?", "s", id);
  if (rc == DECOMP_OK)
    rc = EXEC(s->w, NULL, "DELETE FROM jobs WHERE id=?", "s", id);
  rc = wend(s, rc);
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  *digests = v;
  *n = cnt;
  return DECOMP_OK;
}

int store_job_delete(store *s, const char *id,
                     char (**digests)[STORE_DIGEST_LEN], size_t *n) {
  struct job_delete a = {id, digests, n};
  return write_with_reserve(s, job_delete_tx, &a);
}
