/* open.c — opening and closing the embedded store: the owner's lock on
 * DATA_DIR, the migrations in order under PRAGMA user_version, requeueing
 * what a dead process left running; and what needs the whole handle: blob
 * collection against every row that names a blob, and the reserve that lets
 * a delete through on a full disk. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrations.h"
#include "sqlite_int.h"

static int migrate(store *s) {
  sqlite3_stmt *st = NULL;
  int rc = sq_prepf(s->w, &st, "PRAGMA user_version", "");
  if (rc != DECOMP_OK)
    return rc;
  int version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
  sq_done(s, st);
  if (version > STORE_MIGRATION_COUNT)
    return store_fail(DECOMP_ERR_DB_TOO_NEW,
                      "%s: schema version %d, this decompd knows up to %d",
                      s->c.paths.db, version, STORE_MIGRATION_COUNT);
  for (int i = version; i < STORE_MIGRATION_COUNT; i++) {
    const store_migration *m = &STORE_MIGRATIONS[i];
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA user_version=%d", m->version);
    if ((rc = sq_wbegin(s)) != DECOMP_OK)
      return rc;
    rc = sq_exec_sql(s->w, m->sql);
    if (rc == DECOMP_OK)
      rc = sq_exec_sql(s->w, pragma);
    if ((rc = sq_wend(s, rc)) != DECOMP_OK)
      return store_fail(rc, "migration %04d_%s: %s", m->version, m->name,
                        store_errmsg());
  }
  s->version = STORE_MIGRATION_COUNT;
  return DECOMP_OK;
}

int sq_store_open(const store_backend *self, const store_options *o,
                  store **out, int *requeued) {
  bool owner = o->owner;
  store *s = calloc(1, sizeof *s);
  if (!s)
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  s->c.backend = self;
  store_node_name(o, s->node, sizeof s->node);
  s->lock_fd = -1;
  pthread_mutex_init(&s->wmu, NULL);
  pthread_mutex_init(&s->blob_mu, NULL);
  pthread_mutex_init(&s->rmu, NULL);
  pthread_mutex_init(&s->reserve_mu, NULL);
  store_wake_init(&s->wake);
  pthread_key_create(&s->rkey, sq_reader_drop);
  int rc = store_blob_init(o, false, &s->c.paths);
  if (rc != DECOMP_OK)
    goto fail;
  if (owner) {
    char lock[STORE_PATH_MAX + 16];
    snprintf(lock, sizeof lock, "%s/decompd.lock", s->c.paths.root);
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
    if ((rc = store_blob_init(o, true, &s->c.paths)) != DECOMP_OK)
      goto fail;
    /* On a full disk it is not there yet: the next collected blob makes
     * it (store_blob_gc). */
    s->owner = true;
    store_reserve_fill(&s->c.paths);
  }
  if ((rc = sq_connect(s->c.paths.db, &s->w)) != DECOMP_OK)
    goto fail;
  if ((rc = migrate(s)) != DECOMP_OK)
    goto fail;
  if (owner) {
    int n = 0, m = 0;
    if ((rc = sq_wbegin(s)) != DECOMP_OK)
      goto fail;
    int64_t now = store_now_ms();
    rc = EXEC(s->w, &m,
              "UPDATE jobs SET state='cancelled', finished_at=?1 "
              "WHERE state='running' AND cancel_requested=1",
              "i", now);
    if (rc == DECOMP_OK)
      rc = EXEC(s->w, &n,
                "UPDATE jobs SET state='queued' WHERE state='running'", "");
    if ((rc = sq_wend(s, rc)) != DECOMP_OK)
      goto fail;
    if (requeued)
      *requeued = n;
  }
  *out = s;
  return DECOMP_OK;
fail:
  sq_close(s);
  return rc;
}

void sq_close(store *s) {
  if (!s)
    return;
  /* This thread's reader (and any left by threads that did not exit). */
  while (s->readers) {
    struct reader *r = s->readers;
    s->readers = r->next;
    sq_reader_close(r);
  }
  pthread_setspecific(s->rkey, NULL);
  pthread_key_delete(s->rkey);
  if (s->w) {
    /* A clean close checkpoints the WAL into the database file. */
    sqlite3_close(s->w);
  }
  if (s->lock_fd >= 0)
    close(s->lock_fd);
  store_blob_fini(&s->c.paths);
  pthread_mutex_destroy(&s->wmu);
  pthread_mutex_destroy(&s->blob_mu);
  pthread_mutex_destroy(&s->rmu);
  pthread_mutex_destroy(&s->reserve_mu);
  store_wake_destroy(&s->wake);
  free(s);
}

int sq_schema_version(store *s) {
  return s->version;
}

int sq_ping(store *s) {
  sqlite3 *db;
  int rc = sq_reader_db(s, &db);
  if (rc != DECOMP_OK)
    return rc;
  sqlite3_stmt *st = NULL;
  if ((rc = sq_prep(s, db, &st, "SELECT 1", "")) != DECOMP_OK)
    return rc;
  rc = sqlite3_step(st) == SQLITE_ROW ? DECOMP_OK : sq_fail(db, "ping");
  sq_done(s, st);
  return rc;
}

void sq_blob_lock(store *s) {
  pthread_mutex_lock(&s->blob_mu);
}
void sq_blob_unlock(store *s) {
  pthread_mutex_unlock(&s->blob_mu);
}

int sq_blob_gc(store *s, const char *digest) {
  sqlite3 *db = s->w;
  pthread_mutex_lock(&s->wmu);
  sqlite3_stmt *st = NULL;
  int rc = sq_prepf(db, &st,
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
    sq_done(s, st);
  }
  pthread_mutex_unlock(&s->wmu);
  if (rc != DECOMP_OK || used)
    return rc;
  if ((rc = blobs_blob_remove(s, digest)) != DECOMP_OK)
    return rc;
  /* Space came free: the reserve first, if a delete used it. */
  if (s->owner) {
    pthread_mutex_lock(&s->reserve_mu);
    store_reserve_fill(&s->c.paths);
    pthread_mutex_unlock(&s->reserve_mu);
  }
  return DECOMP_OK;
}

bool sq_reserve_ok(store *s) {
  struct stat st;
  return s->owner && stat(s->c.paths.reserve, &st) == 0 &&
         (int64_t)st.st_blocks * 512 >= (int64_t)STORE_RESERVE_BYTES;
}

/* Run `tx`; when it fails for want of space, free the reserve and run it
 * once more. For the few writes that must get through on a full disk: a
 * delete (how space comes back: it needs a few pages of the index to say
 * so) and the end of a running job. */
int sq_write_with_reserve(store *s, int (*tx)(store *, void *), void *arg) {
  int rc = tx(s, arg);
  if (rc == DECOMP_ERR_DISK_FULL && s->owner) {
    pthread_mutex_lock(&s->reserve_mu);
    bool freed = store_reserve_release(&s->c.paths);
    pthread_mutex_unlock(&s->reserve_mu);
    if (freed)
      rc = tx(s, arg);
  }
  return rc;
}

/* One daemon per data dir: its own submits and retries are all there is
 * to hear of. */
void sq_set_wake(store *s, void (*fn)(void *arg), void *arg) {
  store_wake_set(&s->wake, fn, arg);
}
