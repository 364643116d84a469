/* open.c — opening and closing the PostgreSQL index: where it is (for
 * messages, never the password), the node's id, lock and temp folder, the
 * migrations in order under the schema_version table (one node at a time),
 * requeueing what this node's dead incarnation and lapsed leases left, the
 * heartbeat thread that keeps this node's leases; and what needs the whole
 * handle: the blob lock across nodes and blob collection. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "migrations.h"
#include "pg_int.h"

/* "HOST:PORT/DB" from the URI, for messages: never its password. */
static void describe(const char *conninfo, char *out, size_t len) {
  char *err = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
  const char *host = NULL, *hostaddr = NULL, *port = NULL, *db = NULL;
  for (PQconninfoOption *o = opts; o && o->keyword; o++) {
    if (!o->val || !o->val[0])
      continue;
    if (strcmp(o->keyword, "host") == 0)
      host = o->val;
    else if (strcmp(o->keyword, "hostaddr") == 0)
      hostaddr = o->val;
    else if (strcmp(o->keyword, "port") == 0)
      port = o->val;
    else if (strcmp(o->keyword, "dbname") == 0)
      db = o->val;
  }
  if (!opts)
    snprintf(out, len, "(unparsable URI: %s)", err ? err : "?");
  else
    snprintf(out, len, "%s:%s/%s",
             host ? host : hostaddr ? hostaddr : "localhost",
             port ? port : "5432", db ? db : "(default database)");
  for (char *p = out; *p; p++)
    if (*p == '\n')
      *p = ' ';
  PQconninfoFree(opts);
  PQfreemem(err);
}

/* A node id names a folder: letters, digits, '.', '_', '-'; not "." or
 * "..". */
static bool node_id_ok(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > PG_NODE_ID_MAX || strcmp(id, ".") == 0 ||
      strcmp(id, "..") == 0)
    return false;
  for (const char *p = id; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
      return false;
  return true;
}

static int node_init(store *s, const store_options *o) {
  store_node_name(o, s->node, sizeof s->node);
  if (!node_id_ok(s->node))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "node id '%s': use 1 to %d letters, digits, '.', '_' "
                      "or '-'",
                      s->node, PG_NODE_ID_MAX);
  /* Its own temp folder under the shared one. */
  store_paths *p = &s->c.paths;
  char tmp[STORE_PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s/%s", p->tmp, s->node) >= (int)sizeof tmp)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "%s: path too long",
                      p->tmp);
  memcpy(p->tmp, tmp, sizeof tmp);
  if (mkdir(p->tmp, 0750) != 0 && errno != EEXIST)
    return store_fail(DECOMP_ERR_IO, "mkdir %s: %s", p->tmp, strerror(errno));
  if (!o->owner)
    return DECOMP_OK;
  /* One live daemon per node id: what it empties and requeues at start is
   * its own. */
  char nodes[STORE_PATH_MAX + 8], lock[STORE_PATH_MAX + 96];
  snprintf(nodes, sizeof nodes, "%s/nodes", p->root);
  if (mkdir(nodes, 0750) != 0 && errno != EEXIST)
    return store_fail(DECOMP_ERR_IO, "mkdir %s: %s", nodes, strerror(errno));
  snprintf(lock, sizeof lock, "%s/%s.lock", nodes, s->node);
  s->node_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (s->node_fd < 0)
    return store_fail(DECOMP_ERR_IO, "%s: %s", lock, strerror(errno));
  if (flock(s->node_fd, LOCK_EX | LOCK_NB) != 0)
    return store_fail(DECOMP_ERR_UNAVAILABLE,
                      "another decompd serves this data dir as node '%s' "
                      "(give each node its own node_id)",
                      s->node);
  return store_tmp_empty(p->tmp);
}

/* The migrations not applied yet, in order, one node at a time (the
 * first to start applies them; the others wait on the lock, then find
 * nothing to do). */
static int migrate(store *s) {
  PGconn *c = NULL;
  int rc = pg_take(s, &c);
  if (rc != DECOMP_OK)
    return rc;
  rc = pg_execf(c, NULL, NULL, "SELECT pg_advisory_lock($1)", "i",
                (int64_t)PG_LOCK_MIGRATE);
  if (rc != DECOMP_OK) {
    pg_give(s, c);
    return rc;
  }
  PGresult *r = NULL;
  rc = pg_execf(c, NULL, NULL,
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER "
                "NOT NULL)",
                "");
  if (rc == DECOMP_OK)
    rc = pg_execf(c, &r, NULL,
                  "SELECT COALESCE(MAX(version), 0) FROM schema_version", "");
  int version = 0;
  if (rc == DECOMP_OK) {
    version = (int)pg_col_i64(r, 0, 0);
    PQclear(r);
  }
  if (rc == DECOMP_OK && version > STORE_PG_MIGRATION_COUNT)
    rc = store_fail(DECOMP_ERR_DB_TOO_NEW,
                    "PostgreSQL at %s: schema version %d, this decompd knows "
                    "up to %d",
                    s->where, version, STORE_PG_MIGRATION_COUNT);
  for (int i = version; rc == DECOMP_OK && i < STORE_PG_MIGRATION_COUNT; i++) {
    const store_migration *m = &STORE_PG_MIGRATIONS[i];
    rc = pg_execf(c, NULL, NULL, "BEGIN", "");
    if (rc == DECOMP_OK) {
      /* Several statements: the simple query protocol. */
      PGresult *x = PQexec(c, m->sql);
      if (PQresultStatus(x) != PGRES_COMMAND_OK &&
          PQresultStatus(x) != PGRES_TUPLES_OK)
        rc = store_fail(DECOMP_ERR_STORE, "%s", PQerrorMessage(c));
      PQclear(x);
    }
    if (rc == DECOMP_OK)
      rc = pg_execf(c, NULL, NULL, "DELETE FROM schema_version", "");
    if (rc == DECOMP_OK)
      rc = pg_execf(c, NULL, NULL,
                    "INSERT INTO schema_version (version) VALUES ($1)", "n",
                    m->version);
    if (rc != DECOMP_OK) {
      if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        PGresult *x = PQexec(c, "ROLLBACK");
        PQclear(x);
      }
      rc = store_fail(rc, "migration %04d_%s (PostgreSQL): %s", m->version,
                      m->name, store_errmsg());
      break;
    }
    if ((rc = pg_execf(c, NULL, NULL, "COMMIT", "")) != DECOMP_OK)
      rc = store_fail(rc, "migration %04d_%s (PostgreSQL): %s", m->version,
                      m->name, store_errmsg());
  }
  PGresult *u = PQexecParams(c, "SELECT pg_advisory_unlock_all()", 0, NULL,
                             NULL, NULL, NULL, 0);
  PQclear(u);
  pg_give(s, c);
  if (rc == DECOMP_OK)
    s->version = STORE_PG_MIGRATION_COUNT;
  return rc;
}

/* Every lease/3: this node's running jobs stay its own. */
static void *heartbeat_main(void *arg) {
  store *s = arg;
  int every = s->lease_ms / 3 > 100 ? s->lease_ms / 3 : 100;
  pthread_mutex_lock(&s->beat_mu);
  while (!s->stopping) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += every / 1000;
    ts.tv_nsec += (long)(every % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&s->beat_cv, &s->beat_mu, &ts);
    if (s->stopping)
      break;
    pthread_mutex_unlock(&s->beat_mu);
    /* A failure (the server away) is retried at the next beat; the lease
     * is three beats long. */
    pg_jobs_renew_leases(s);
    pthread_mutex_lock(&s->beat_mu);
  }
  pthread_mutex_unlock(&s->beat_mu);
  return NULL;
}

static bool stopping(store *s) {
  pthread_mutex_lock(&s->beat_mu);
  bool stop = s->stopping;
  pthread_mutex_unlock(&s->beat_mu);
  return stop;
}

/* Wait `ms` or until the handle closes. */
static void pause_ms(store *s, int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&s->beat_mu);
  if (!s->stopping)
    pthread_cond_timedwait(&s->beat_cv, &s->beat_mu, &ts);
  pthread_mutex_unlock(&s->beat_mu);
}

/* LISTEN on a connection of its own; each notification (a job queued on
 * some node) wakes this node's workers. A lost connection is made again
 * (every second while the server is away), and the workers are woken once
 * it is back, for what was announced meanwhile. */
static void *listener_main(void *arg) {
  store *s = arg;
  PGconn *c = NULL;
  while (!stopping(s)) {
    if (!c) {
      if (pg_connect(s, &c) != DECOMP_OK ||
          pg_execf(c, NULL, NULL, "LISTEN " PG_CHANNEL, "") != DECOMP_OK) {
        if (c)
          PQfinish(c);
        c = NULL;
        pause_ms(s, 1000);
        continue;
      }
      store_wake_call(&s->wake);
    }
    struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
    if (poll(&p, 1, 250) < 0)
      continue;
    if (!PQconsumeInput(c)) {
      PQfinish(c);
      c = NULL;
      continue;
    }
    bool any = false;
    for (PGnotify *n; (n = PQnotifies(c)) != NULL; PQfreemem(n))
      any = true;
    if (any)
      store_wake_call(&s->wake);
  }
  if (c)
    PQfinish(c);
  return NULL;
}

void pg_set_wake(store *s, void (*fn)(void *arg), void *arg) {
  store_wake_set(&s->wake, fn, arg);
}

int pg_store_open(const store_backend *self, const store_options *o,
                  store **out, int *requeued) {
  store *s = calloc(1, sizeof *s);
  if (!s)
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  s->c.backend = self;
  s->node_fd = -1;
  s->owner = o->owner;
  s->lease_ms = (o->lease_seconds > 0 ? o->lease_seconds : 30) * 1000;
  pthread_mutex_init(&s->pool_mu, NULL);
  pthread_mutex_init(&s->blob_mu, NULL);
  pthread_mutex_init(&s->beat_mu, NULL);
  pthread_cond_init(&s->beat_cv, NULL);
  store_wake_init(&s->wake);
  int rc = DECOMP_OK;
  if (!o->index || !(s->conninfo = strdup(o->index))) {
    rc = store_fail(DECOMP_ERR_INVALID_ARGUMENT, "no PostgreSQL URI");
    goto fail;
  }
  describe(s->conninfo, s->where, sizeof s->where);
  /* No owner's lock on DATA_DIR (other nodes share it), and its temp
   * folder is not emptied: each node empties its own (node_init). */
  if ((rc = store_blob_init(o, false, &s->c.paths)) != DECOMP_OK)
    goto fail;
  if ((rc = node_init(s, o)) != DECOMP_OK)
    goto fail;
  PGconn *c = NULL;
  if ((rc = pg_connect(s, &c)) != DECOMP_OK)
    goto fail;
  pg_give(s, c);
  if ((rc = migrate(s)) != DECOMP_OK)
    goto fail;
  if (o->owner) {
    int n = 0;
    if ((rc = pg_jobs_requeue_dead(s, &n)) != DECOMP_OK)
      goto fail;
    if (requeued)
      *requeued = n;
    if (pthread_create(&s->beat, NULL, heartbeat_main, s) != 0) {
      rc = store_fail(DECOMP_ERR_NOMEM, "cannot start the lease heartbeat");
      goto fail;
    }
    s->beating = true;
    if (pthread_create(&s->listener, NULL, listener_main, s) != 0) {
      rc = store_fail(DECOMP_ERR_NOMEM, "cannot start the job listener");
      goto fail;
    }
    s->listening = true;
  }
  *out = s;
  return DECOMP_OK;
fail:
  pg_close(s);
  return rc;
}

void pg_close(store *s) {
  if (!s)
    return;
  pthread_mutex_lock(&s->beat_mu);
  s->stopping = true;
  pthread_cond_broadcast(&s->beat_cv);
  pthread_mutex_unlock(&s->beat_mu);
  if (s->beating)
    pthread_join(s->beat, NULL);
  if (s->listening)
    pthread_join(s->listener, NULL);
  for (int i = 0; i < s->nidle; i++)
    PQfinish(s->idle[i]);
  if (s->blob_conn)
    PQfinish(s->blob_conn);
  if (s->node_fd >= 0)
    close(s->node_fd);
  store_blob_fini(&s->c.paths);
  pthread_mutex_destroy(&s->pool_mu);
  pthread_mutex_destroy(&s->blob_mu);
  pthread_mutex_destroy(&s->beat_mu);
  pthread_cond_destroy(&s->beat_cv);
  store_wake_destroy(&s->wake);
  free(s->conninfo);
  free(s);
}

int pg_schema_version(store *s) { return s->version; }

int pg_ping(store *s) {
  PGresult *r = NULL;
  int rc = pg_queryf(s, &r, NULL, "SELECT 1", "");
  if (rc == DECOMP_OK)
    PQclear(r);
  return rc;
}

/* The index is not in DATA_DIR: a full DATA_DIR does not stop a delete's
 * rows, so there is no reserve to keep. */
bool pg_reserve_ok(store *s) {
  (void)s;
  return false;
}

/* This process's threads one at a time (the mutex), then every node's
 * (the advisory lock, on a connection kept until the unlock). When the
 * server cannot be reached the in-process half still holds, and the writes
 * that follow fail on their own. */
void pg_blob_lock(store *s) {
  pthread_mutex_lock(&s->blob_mu);
  PGconn *c = NULL;
  if (pg_take(s, &c) == DECOMP_OK &&
      pg_execf(c, NULL, NULL, "SELECT pg_advisory_lock($1)", "i",
               (int64_t)PG_LOCK_BLOBS) == DECOMP_OK) {
    s->blob_conn = c;
  } else {
    pg_give(s, c);
    s->blob_conn = NULL;
  }
}

void pg_blob_unlock(store *s) {
  PGconn *c = s->blob_conn;
  s->blob_conn = NULL;
  if (c && pg_execf(c, NULL, NULL, "SELECT pg_advisory_unlock($1)", "i",
                    (int64_t)PG_LOCK_BLOBS) != DECOMP_OK) {
    PQfinish(c); /* the session's end releases it */
    c = NULL;
  }
  pg_give(s, c);
  pthread_mutex_unlock(&s->blob_mu);
}

int pg_blob_gc(store *s, const char *digest) {
  PGresult *r = NULL;
  int rc = pg_queryf(
      s, &r, NULL,
      "SELECT EXISTS(SELECT 1 FROM models WHERE digest=$1) OR "
      "EXISTS(SELECT 1 FROM models WHERE calibration=$1) OR "
      "EXISTS(SELECT 1 FROM jobs WHERE calibration=$1) OR "
      "EXISTS(SELECT 1 FROM models WHERE profile=$1) OR "
      "EXISTS(SELECT 1 FROM jobs WHERE profile=$1) OR "
      "EXISTS(SELECT 1 FROM artifacts WHERE digest=$1) OR "
      "EXISTS(SELECT 1 FROM model_shards WHERE digest=$1) OR "
      "EXISTS(SELECT 1 FROM loose_blobs WHERE digest=$1) OR "
      "EXISTS(SELECT 1 FROM job_tasks WHERE result=$1)",
      "s", digest);
  if (rc != DECOMP_OK)
    return rc;
  bool used = pg_col_bool(r, 0, 0);
  PQclear(r);
  if (used)
    return DECOMP_OK;
  return blobs_blob_remove(s, digest);
}
