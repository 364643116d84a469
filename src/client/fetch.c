/* fetch.c — decomp_client_fetch(_with): a succeeded job's artifacts into
 * the content-addressed cache (layout in decomp/client.h), each through a
 * unique partial file that is resumed with Range when one is left over,
 * hashed as it arrives, and renamed onto its blob path only once its
 * SHA-256 matches; then the copies into DEST, then the job record. Offline
 * mode answers from the record and the blobs.
 *
 * Several artifacts move at once: a small pool of threads, each with a
 * handle of its own (its own connection and error message: a handle is not
 * thread-safe), takes the artifacts in the order the job lists them. The
 * calling thread only supervises: it relays progress to the caller's
 * callback (so the callback never runs on a pool thread). After the first
 * failure no new transfer starts, and those under way finish (their work
 * is not lost: a failure elsewhere says nothing about them); the caller's
 * cancel stops them too (they keep their partial files). The HTTP work is
 * the transport's (transport.c). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "client_internal.h"
#include "client_json.h"

/* One download into a partial file: the transport's sink. */
struct dl {
  decomp_client *c;
  const char *name;
  const char *tmp_path;
  int fd;
  client_sha *sha;
  int64_t from;    /* bytes already in the file when the request went out */
  int64_t size;    /* the artifact's size */
  int64_t written; /* bytes written by this request */
  bool restarted;  /* the server sent it all (200): the file starts over */
};

static int dl_begin(void *user, long status, const char *content_range) {
  struct dl *d = user;
  client_answer a = d->from > 0
                        ? client_resume_answer(status, content_range, d->from,
                                               d->size)
                        : (status == 200 ? CLIENT_ANSWER_RESTART
                                         : CLIENT_ANSWER_BAD);
  if (a == CLIENT_ANSWER_BAD)
    return client_fail(d->c, DECOMP_ERR_SERVER,
                       "fetch %s: asked for bytes %lld- of %lld, the server "
                       "answered %ld with Content-Range '%s'",
                       d->name, (long long)d->from, (long long)d->size, status,
                       content_range);
  if (a == CLIENT_ANSWER_RESTART) {
    if (d->from > 0) {
      d->restarted = true;
      client_sha_reset(d->sha);
    }
    if (ftruncate(d->fd, 0) != 0 || lseek(d->fd, 0, SEEK_SET) != 0)
      return client_fail(d->c, DECOMP_ERR_IO, "%s: %s", d->tmp_path,
                         strerror(errno));
  }
  return DECOMP_OK;
}

static int dl_data(void *user, const void *buf, size_t len) {
  struct dl *d = user;
  int64_t start = d->restarted ? 0 : d->from;
  if (start + d->written + (int64_t)len > d->size)
    return client_fail(d->c, DECOMP_ERR_DIGEST_MISMATCH,
                       "fetch %s: the server sent more than the %lld bytes "
                       "the job lists",
                       d->name, (long long)d->size);
  const char *p = buf;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(d->fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      return client_fail(d->c, client_errno_code(e),
                         "fetch %s: writing %s: %s (%lld of %lld bytes "
                         "written)",
                         d->name, d->tmp_path, strerror(e),
                         (long long)(start + d->written),
                         (long long)d->size);
    }
    p += n;
    left -= (size_t)n;
    d->written += n;
  }
  client_sha_update(d->sha, buf, len);
  return DECOMP_OK;
}

/* Is the file at path exactly the blob <hex>? 0 yes, 1 no, -1 unreadable. */
static int blob_ok(const char *path, const char *hex, client_sha *sha) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  client_sha_reset(sha);
  int err = client_sha_fd(sha, fd, -1);
  close(fd);
  if (err)
    return -1;
  char got[65];
  client_sha_final(sha, got);
  return strcmp(got, hex) == 0 ? 0 : 1;
}

static int fetch_one(decomp_client *c, const char *job_id,
                     const decomp_client_artifact *a, client_sha *sha,
                     decomp_client_file *f) {
  char hex[65], blob[DECOMP_CLIENT_PATH_LEN], dir[DECOMP_CLIENT_PATH_LEN];
  char part[DECOMP_CLIENT_PATH_LEN], path[512], etag[80];
  int rc = DECOMP_OK, fd = -1;
  bool keep_partial = false;
  memset(f, 0, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", a->name);
  snprintf(f->digest, sizeof f->digest, "%s", a->digest);
  f->size = a->size;
  if (!client_digest_hex(a->digest, hex) ||
      decomp_client_cache_blob_path(c->cache, a->digest, blob, sizeof blob) !=
          DECOMP_OK)
    return client_fail(c, DECOMP_ERR_SERVER,
                       "job %s: artifact %s has no usable digest ('%s')",
                       job_id, a->name, a->digest);
  snprintf(f->path, sizeof f->path, "%s", blob);

  bool corrupt = false;
  int ok = blob_ok(blob, hex, sha);
  if (ok == 0) {
    f->from_cache = true;
    return DECOMP_OK;
  }
  if (ok == 1) {
    corrupt = true;
    if (!c->offline)
      unlink(blob); /* fetched again below */
  }
  if (c->offline) {
    if (corrupt)
      return client_fail(c, DECOMP_ERR_DIGEST_MISMATCH,
                         "%s (%s of job %s) is corrupt: its SHA-256 is not "
                         "%s; offline mode cannot fetch it again",
                         blob, a->name, job_id, a->digest);
    return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                       "%s of job %s (%s) is not in the cache %s", a->name,
                       job_id, a->digest, c->cache);
  }

  snprintf(dir, sizeof dir, "%s/tmp", c->cache);
  int err = client_mkdirs(dir, 0755);
  if (err)
    return client_fail(c, client_errno_code(err), "cache %s: %s", dir,
                       strerror(err));
  snprintf(dir, sizeof dir, "%s", blob);
  *strrchr(dir, '/') = '\0';
  if ((err = client_mkdirs(dir, 0755)))
    return client_fail(c, client_errno_code(err), "cache %s: %s", dir,
                       strerror(err));
  snprintf(dir, sizeof dir, "%s/tmp", c->cache);
  int64_t have = 0;
  fd = client_partial_claim(dir, hex, part, sizeof part, &have);
  if (fd < 0)
    return client_fail(c, client_errno_code(errno), "cache %s: %s", dir,
                       strerror(errno));
  char *ename = ct_escape(c, a->name);
  if (!ename) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  snprintf(path, sizeof path, "/v1/jobs/%s/artifacts/%s", job_id, ename);
  free(ename);
  snprintf(etag, sizeof etag, "\"sha256:%s\"", hex);

  for (int attempt = 0; attempt < 2; attempt++) {
    client_sha_reset(sha);
    if (have == a->size) {
      /* A complete partial (cut just before the rename): check it. */
      if (client_sha_fd(sha, fd, have) == 0) {
        char got[65];
        client_sha_final(sha, got);
        if (strcmp(got, hex) == 0) {
          f->resumed_from = have;
          goto verified;
        }
      }
      client_sha_reset(sha);
    }
    int64_t from = client_resume_from(have, a->size);
    if (from > 0 && (err = client_sha_fd(sha, fd, from)) != 0) {
      client_sha_reset(sha);
      from = 0;
    }
    if (from == 0 && ftruncate(fd, 0) != 0) {
      rc = client_fail(c, DECOMP_ERR_IO, "%s: %s", part, strerror(errno));
      goto done;
    }
    if (lseek(fd, (off_t)from, SEEK_SET) < 0) {
      rc = client_fail(c, DECOMP_ERR_IO, "%s: %s", part, strerror(errno));
      goto done;
    }
    struct dl d = {c, a->name, part, fd, sha, from, a->size, 0, false};
    ct_sink sink = {dl_begin, dl_data, &d};
    ct_request rq = {.method = "GET", .path = path, .body_fd = -1,
                     .range_from = from, .if_range = etag, .sink = &sink,
                     .progress_name = a->name,
                     .direction = DECOMP_CLIENT_DOWNLOAD,
                     .progress_base = from, .progress_total = a->size};
    ct_response rs;
    rc = ct_perform(c, &rq, &rs);
    f->downloaded += d.written;
    int64_t have_now = (d.restarted ? 0 : from) + d.written;
    long status = rs.status;
    if (rc == DECOMP_OK && status / 100 != 2 && status != 416)
      rc = client_http_error(c, "GET", path, &rs);
    ct_response_clear(&rs);
    if (rc != DECOMP_OK) {
      if (rc == DECOMP_ERR_TRANSFER || rc == DECOMP_ERR_CANCELLED ||
          rc == DECOMP_ERR_CONNECT) {
        keep_partial = have_now > 0;
        if (keep_partial) {
          char m[256];
          snprintf(m, sizeof m,
                   "; %lld of %lld bytes of %s are kept and the next fetch "
                   "resumes from there",
                   (long long)have_now, (long long)a->size, a->name);
          client_errmsg_wrap(c, NULL, m);
        }
      }
      goto done;
    }
    if (status == 416) { /* our partial is not a prefix of theirs */
      have = 0;
      continue;
    }
    f->resumed_from = d.restarted ? 0 : from;
    char got[65];
    client_sha_final(sha, got);
    if (have_now == a->size && strcmp(got, hex) == 0)
      goto verified;
    if (from > 0 && !d.restarted && attempt == 0) {
      have = 0; /* the kept prefix may be what is wrong: once more, whole */
      continue;
    }
    rc = client_fail(c, DECOMP_ERR_DIGEST_MISMATCH,
                     "fetch %s of job %s: the %lld bytes received hash to "
                     "sha256:%s, the job lists %s (%lld bytes); the download "
                     "was discarded",
                     a->name, job_id, (long long)have_now, got, a->digest,
                     (long long)a->size);
    goto done;
  }
  rc = client_fail(c, DECOMP_ERR_SERVER, "fetch %s of job %s: the server "
                   "refused every range", a->name, job_id);
  goto done;

verified:
  if (fsync(fd) != 0) {
    int e = errno;
    rc = client_fail(c, client_errno_code(e), "%s: %s", part, strerror(e));
    goto done;
  }
  if (rename(part, blob) != 0) {
    int e = errno;
    rc = client_fail(c, client_errno_code(e), "%s: %s", blob, strerror(e));
    goto done;
  }
  part[0] = '\0';
done:
  if (fd >= 0)
    close(fd);
  if (part[0] && !keep_partial)
    unlink(part);
  return rc;
}

int client_job_record_load(decomp_client *c, const char *id, json_t **out) {
  char path[DECOMP_CLIENT_PATH_LEN];
  *out = NULL;
  if (decomp_client_cache_job_path(c->cache, id, path, sizeof path) !=
      DECOMP_OK)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", id);
  json_error_t err;
  json_t *rec = json_load_file(path, 0, &err);
  if (!rec) {
    if (access(path, F_OK) != 0)
      return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                         "job %s is not in the cache %s (fetch it once "
                         "online first)",
                         id, c->cache);
    return client_fail(c, DECOMP_ERR_BAD_JSON, "%s: %s", path, err.text);
  }
  if (!json_is_object(json_object_get(rec, "job"))) {
    json_decref(rec);
    return client_fail(c, DECOMP_ERR_BAD_JSON, "%s: no job object", path);
  }
  *out = rec;
  return DECOMP_OK;
}

static int record_save(decomp_client *c, const decomp_client_job *j,
                       const decomp_client_artifact *as, size_t n) {
  char path[DECOMP_CLIENT_PATH_LEN], dir[DECOMP_CLIENT_PATH_LEN];
  if (decomp_client_cache_job_path(c->cache, j->id, path, sizeof path) !=
      DECOMP_OK)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", j->id);
  snprintf(dir, sizeof dir, "%s/jobs", c->cache);
  int err = client_mkdirs(dir, 0755);
  if (err)
    return client_fail(c, client_errno_code(err), "cache %s: %s", dir,
                       strerror(err));
  json_t *job = json_loads(j->json ? j->json : "{}", 0, NULL);
  json_t *arts = json_object();
  for (size_t i = 0; arts && i < n; i++)
    json_object_set_new(arts, as[i].name,
                        json_pack("{s:s, s:I, s:s}", "digest", as[i].digest,
                                  "size", (json_int_t)as[i].size,
                                  "media_type", as[i].media_type));
  json_t *rec = json_pack("{s:s, s:i, s:s, s:o, s:o}", "format",
                          "decompd.cache.job", "version", 1, "server", c->url,
                          "job", job ? job : json_object(), "artifacts",
                          arts ? arts : json_object());
  char *text = rec ? json_dumps(rec, JSON_INDENT(1) | JSON_PRESERVE_ORDER)
                   : NULL;
  json_decref(rec);
  if (!text)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  int rc = client_write_atomic(c, path, text, strlen(text));
  free(text);
  return rc;
}

/* The artifacts the job object lists (all of them, unlike j->artifacts),
 * each checked: a plain file name, once, with a digest and a size. *out
 * (malloc'd, NULL when none) holds *out_n. */
static int job_artifacts(decomp_client *c, const decomp_client_job *j,
                         decomp_client_artifact **out, size_t *out_n) {
  *out = NULL;
  *out_n = 0;
  json_t *o = json_loads(j->json ? j->json : "{}", 0, NULL);
  if (!o)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  json_t *list = json_object_get(o, "artifacts");
  size_t n = json_is_array(list) ? json_array_size(list) : 0;
  decomp_client_artifact *as = n ? calloc(n, sizeof *as) : NULL;
  int rc = DECOMP_OK;
  if (n && !as) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *a = json_array_get(list, i);
    const char *name = json_string_value(json_object_get(a, "name"));
    const char *digest = json_string_value(json_object_get(a, "digest"));
    const char *media = json_string_value(json_object_get(a, "media_type"));
    json_t *size = json_object_get(a, "size");
    const char *why;
    char hex[65];
    if (!client_artifact_name_ok(name, sizeof as[i].name, &why)) {
      rc = client_fail(c, DECOMP_ERR_SERVER,
                       "job %s lists an artifact named '%.200s', which %s: "
                       "refused",
                       j->id, name ? name : "(none)", why);
      goto done;
    }
    for (size_t k = 0; k < i; k++)
      if (strcmp(as[k].name, name) == 0) {
        rc = client_fail(c, DECOMP_ERR_SERVER,
                         "job %s lists the artifact %s twice", j->id, name);
        goto done;
      }
    if (!client_digest_hex(digest, hex) || !json_is_integer(size) ||
        json_integer_value(size) < 0) {
      rc = client_fail(c, DECOMP_ERR_SERVER,
                       "job %s: artifact %s has no usable digest and size "
                       "('%s')",
                       j->id, name, digest ? digest : "");
      goto done;
    }
    snprintf(as[i].name, sizeof as[i].name, "%s", name);
    snprintf(as[i].digest, sizeof as[i].digest, "sha256:%s", hex);
    snprintf(as[i].media_type, sizeof as[i].media_type, "%s",
             media ? media : "");
    as[i].size = (int64_t)json_integer_value(size);
  }
  *out = as;
  *out_n = n;
  as = NULL;
done:
  free(as);
  json_decref(o);
  return rc;
}

/* ---- the pool ------------------------------------------------------------ */

/* One distinct blob to fetch: the first artifact with its digest. */
struct task {
  const decomp_client_artifact *a;
  decomp_client_file file; /* what fetch_one found */
  int64_t done, total;     /* progress, under the pool's lock */
  bool started, finished, reported_end;
  int rc;
  int http_status;
  char errmsg[1024];
};

struct pool {
  decomp_client *c; /* the caller's handle: only the calling thread uses it */
  const char *job_id;
  struct task *tasks;
  size_t n;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t next;     /* the next task to start */
  size_t finished; /* tasks finished (any outcome) */
  size_t workers;  /* pool threads still running */
  bool drain;      /* a failure: start nothing more */
  bool stop;       /* the caller's cancel: stop the transfers too */
  bool changed;    /* progress to relay */
  struct task *last; /* the task whose bytes moved last */
  struct task *failed; /* the first failure */
};

/* A pool thread's context: its own handle, the task it runs. */
struct worker {
  struct pool *p;
  decomp_client *c;
  struct task *t;
  pthread_t th;
  bool joinable;
};

/* The pool thread's handle's progress callback: note the bytes, wake the
 * supervisor, and say stop once the pool stops. */
static int worker_progress(void *user, const decomp_client_progress *pr) {
  struct worker *w = user;
  struct pool *p = w->p;
  pthread_mutex_lock(&p->mu);
  if (w->t) {
    w->t->done = pr->done;
    if (pr->total >= 0)
      w->t->total = pr->total;
    p->last = w->t;
    p->changed = true;
    pthread_cond_signal(&p->cv);
  }
  bool stop = p->stop;
  pthread_mutex_unlock(&p->mu);
  return stop ? 1 : 0;
}

static void *worker_run(void *arg) {
  struct worker *w = arg;
  struct pool *p = w->p;
  client_sha *sha = client_sha_new();
  pthread_mutex_lock(&p->mu);
  for (;;) {
    if (p->stop || p->drain || p->next == p->n)
      break;
    struct task *t = &p->tasks[p->next++];
    w->t = t;
    t->started = true;
    t->total = t->a->size;
    pthread_mutex_unlock(&p->mu);
    int rc = sha ? fetch_one(w->c, p->job_id, t->a, sha, &t->file)
                 : client_fail(w->c, DECOMP_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&p->mu);
    t->rc = rc;
    t->http_status = w->c->http_status;
    snprintf(t->errmsg, sizeof t->errmsg, "%s", w->c->errmsg);
    t->finished = true;
    if (rc == DECOMP_OK) {
      t->done = t->total = t->a->size;
    } else if (!p->stop && !p->drain) {
      p->drain = true;
      p->failed = t;
    }
    w->t = NULL;
    p->finished++;
    p->changed = true;
    pthread_cond_signal(&p->cv);
  }
  p->workers--;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
  client_sha_free(sha);
  return NULL;
}

/* A pool thread's handle: the caller's server, token, cache and mode. */
static int worker_client(decomp_client *c, struct worker *w) {
  int rc = decomp_client_new(c->url, c->token ? c->token : "", &w->c);
  if (rc != DECOMP_OK)
    return client_fail(c, rc, "out of memory");
  if ((rc = decomp_client_set_cache_dir(w->c, c->cache)) != DECOMP_OK)
    return client_fail(c, rc, "%s", w->c->errmsg);
  w->c->offline = c->offline;
  decomp_client_set_progress(w->c, worker_progress, w);
  return DECOMP_OK;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Call the caller's progress callback with `t` and the pool's totals
 * (taken under the lock, which the caller holds; released for the call).
 * Non-zero: the caller asked to stop. */
static int relay(struct pool *p, struct task *t) {
  decomp_client *c = p->c;
  decomp_client_progress pr = {DECOMP_CLIENT_DOWNLOAD, t->a->name, t->done,
                               t->total, 0, 0, 0, p->n};
  for (size_t i = 0; i < p->n; i++) {
    const struct task *u = &p->tasks[i];
    pr.all_total += u->a->size;
    pr.all_done += u->finished && u->rc == DECOMP_OK ? u->a->size : u->done;
    pr.files_done += u->finished && u->rc == DECOMP_OK;
  }
  pthread_mutex_unlock(&p->mu);
  int stop = c->progress(c->progress_user, &pr);
  pthread_mutex_lock(&p->mu);
  return stop;
}

/* Fetch p->tasks with up to `parallel` threads; the calling thread relays
 * progress until every thread is done. The first failure's code and
 * message (on p->c), or DECOMP_OK. */
static int pool_run(struct pool *p, int parallel) {
  decomp_client *c = p->c;
  size_t nw = (size_t)parallel < p->n ? (size_t)parallel : p->n;
  struct worker *ws = calloc(nw ? nw : 1, sizeof *ws);
  int rc = DECOMP_OK;
  bool cancelled = false;
  if (!ws)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < nw; i++) {
    ws[i].p = p;
    if ((rc = worker_client(c, &ws[i])) != DECOMP_OK)
      goto done;
  }
  pthread_mutex_lock(&p->mu);
  for (size_t i = 0; i < nw; i++) {
    int e = pthread_create(&ws[i].th, NULL, worker_run, &ws[i]);
    if (e != 0) {
      if (i == 0) {
        pthread_mutex_unlock(&p->mu);
        rc = client_fail(c, DECOMP_ERR_NOMEM, "cannot start a fetch "
                         "thread: %s", strerror(e));
        goto done;
      }
      break; /* fewer threads will do */
    }
    ws[i].joinable = true;
    p->workers++;
  }
  double last = 0;
  /* Until every thread is done and every change relayed (a change made
   * while the lock is released for the callback comes round again). */
  while (p->workers > 0 || p->changed) {
    if (!p->changed) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 200 * 1000 * 1000;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    if (!p->changed)
      continue;
    p->changed = false;
    if (!c->progress)
      continue;
    /* Every artifact's end once (those downloaded: a cached one moved no
     * bytes), the rest at most five times a second. */
    bool stop = false;
    for (size_t i = 0; i < p->n && !stop; i++) {
      struct task *t = &p->tasks[i];
      if (t->finished && t->rc == DECOMP_OK && !t->reported_end &&
          !t->file.from_cache) {
        t->reported_end = true;
        stop = relay(p, t) != 0;
      }
    }
    double now = now_s();
    /* A transfer at 100% is being verified: its end is reported once it
     * is (above). */
    if (!stop && p->last && !p->last->finished &&
        p->last->done < p->last->total && now - last >= 0.2) {
      last = now;
      stop = relay(p, p->last) != 0;
    }
    if (stop && !p->stop) {
      p->stop = true;
      cancelled = true;
    }
  }
  pthread_mutex_unlock(&p->mu);
done:
  for (size_t i = 0; i < nw; i++) {
    if (ws[i].joinable)
      pthread_join(ws[i].th, NULL);
    decomp_client_free(ws[i].c);
  }
  free(ws);
  if (rc != DECOMP_OK)
    return rc;
  if (p->failed) {
    struct task *t = p->failed;
    size_t stopped = 0;
    for (size_t i = 0; i < p->n; i++)
      stopped += &p->tasks[i] != t && p->tasks[i].finished &&
                 p->tasks[i].rc == DECOMP_ERR_CANCELLED;
    snprintf(c->errmsg, sizeof c->errmsg, "%s", t->errmsg);
    if (!strstr(c->errmsg, t->a->name)) {
      char pre[128];
      snprintf(pre, sizeof pre, "fetch %s: ", t->a->name);
      client_errmsg_wrap(c, pre, NULL);
    }
    if (stopped) {
      char m[160];
      snprintf(m, sizeof m, " (%zu other download%s stopped; what %s got is "
               "kept for the next fetch)", stopped, stopped == 1 ? "" : "s",
               stopped == 1 ? "it" : "they");
      client_errmsg_wrap(c, NULL, m);
    }
    c->http_status = t->http_status;
    return t->rc;
  }
  if (cancelled)
    return client_fail(c, DECOMP_ERR_CANCELLED,
                       "fetch of job %s: stopped; partial downloads are kept "
                       "and the next fetch resumes them",
                       p->job_id);
  return DECOMP_OK;
}

/* ---- the calls ----------------------------------------------------------- */

static bool is_index(const char *name) {
  size_t n = strlen(name), k = strlen(".index.json");
  return n > k && strcmp(name + n - k, ".index.json") == 0;
}

/* decomp_client_fetch_with, refusing (before any transfer) a job with more
 * than `max` artifacts to fetch (0: no limit). */
static int fetch_impl(decomp_client *c, const char *id,
                      const decomp_client_fetch_options *opts, size_t max,
                      decomp_client_file **out, size_t *out_n) {
  decomp_client_job j = {0};
  decomp_client_artifact *as = NULL;
  decomp_client_file *files = NULL;
  struct task *tasks = NULL;
  struct want { size_t art, task; } *want = NULL; /* per file */
  size_t na = 0, nf = 0, nt = 0;
  const char *only = opts ? opts->only : NULL;
  const char *dest_dir = opts ? opts->dest_dir : NULL;
  int parallel = opts ? opts->parallel : 0;
  bool pool_init = false;
  struct pool p;
  *out = NULL;
  *out_n = 0;
  if (parallel == 0)
    parallel = DECOMP_CLIENT_DEFAULT_PARALLEL;
  if (parallel < 1 || parallel > DECOMP_CLIENT_MAX_PARALLEL)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "fetch: %d transfers at once: give 1 to %d",
                       parallel, DECOMP_CLIENT_MAX_PARALLEL);
  int rc = decomp_client_job_get(c, id, &j);
  if (rc != DECOMP_OK)
    goto done;
  if (j.state != DECOMP_JOB_SUCCEEDED) {
    rc = client_fail(c, DECOMP_ERR_CONFLICT,
                     "job %s is %s: artifacts exist once it has succeeded%s%s",
                     id, decomp_job_state_name(j.state),
                     j.error_message[0] ? ": " : "", j.error_message);
    goto done;
  }
  if ((rc = job_artifacts(c, &j, &as, &na)) != DECOMP_OK)
    goto done;
  files = calloc(na ? na : 1, sizeof *files);
  tasks = calloc(na ? na : 1, sizeof *tasks);
  want = calloc(na ? na : 1, sizeof *want);
  if (!files || !tasks || !want) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  /* The files asked for, and one task per distinct digest among them. */
  for (size_t i = 0; i < na; i++) {
    if (only && strcmp(only, as[i].name) != 0)
      continue;
    size_t k = 0;
    while (k < nt && strcmp(tasks[k].a->digest, as[i].digest) != 0)
      k++;
    if (k == nt)
      tasks[nt++].a = &as[i];
    want[nf].art = i;
    want[nf++].task = k;
  }
  if (only && nf == 0) {
    rc = client_fail(c, DECOMP_ERR_NOT_FOUND, "job %s has no artifact '%s'",
                     id, only);
    goto done;
  }
  if (max && nf > max) {
    rc = client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                     "job %s has %zu artifacts, more than the %zu "
                     "decomp_client_fetch can describe: nothing was "
                     "fetched (decomp_client_fetch_with fetches them all)",
                     id, nf, max);
    goto done;
  }

  memset(&p, 0, sizeof p);
  p.c = c;
  p.job_id = id;
  p.tasks = tasks;
  p.n = nt;
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.cv, NULL);
  pool_init = true;
  if ((rc = pool_run(&p, parallel)) != DECOMP_OK)
    goto done;
  for (size_t i = 0; i < nf; i++) {
    const decomp_client_artifact *a = &as[want[i].art];
    const struct task *t = &tasks[want[i].task];
    files[i] = t->file;
    if (t->a != a) { /* the same bytes under another name */
      snprintf(files[i].name, sizeof files[i].name, "%s", a->name);
      files[i].from_cache = true;
      files[i].resumed_from = files[i].downloaded = 0;
    }
  }
  if (!c->offline && (rc = record_save(c, &j, as, na)) != DECOMP_OK)
    goto done;
  if (dest_dir) {
    int err = client_mkdirs(dest_dir, 0755);
    if (err) {
      rc = client_fail(c, client_errno_code(err), "%s: %s", dest_dir,
                       strerror(err));
      goto done;
    }
    /* Index files last: a folder with an index has all its shards. */
    for (int pass = 0; pass < 2; pass++)
      for (size_t i = 0; i < nf; i++) {
        if (is_index(files[i].name) != (pass == 1))
          continue;
        char dst[DECOMP_CLIENT_PATH_LEN];
        int k = snprintf(dst, sizeof dst, "%s/%s", dest_dir, files[i].name);
        if (k < 0 || (size_t)k >= sizeof dst) {
          rc = client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "%s: path too long",
                           dest_dir);
          goto done;
        }
        if ((rc = client_copy_atomic(c, files[i].path, dst)) != DECOMP_OK)
          goto done;
        snprintf(files[i].path, sizeof files[i].path, "%s", dst);
      }
  }
  *out = files;
  *out_n = nf;
  files = NULL;
done:
  if (pool_init) {
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv);
  }
  free(want);
  free(files);
  free(tasks);
  free(as);
  decomp_client_job_clear(&j);
  return rc;
}

int decomp_client_fetch_with(decomp_client *c, const char *id,
                             const decomp_client_fetch_options *opts,
                             decomp_client_file **out, size_t *out_n) {
  return fetch_impl(c, id, opts, 0, out, out_n);
}

void decomp_client_file_list_free(decomp_client_file *files) { free(files); }

int decomp_client_fetch(decomp_client *c, const char *id, const char *only,
                        const char *dest_dir, decomp_client_file *out,
                        size_t *out_n) {
  decomp_client_fetch_options o = {only, dest_dir, 0};
  decomp_client_file *files = NULL;
  size_t n = 0;
  *out_n = 0;
  int rc = fetch_impl(c, id, &o, DECOMP_CLIENT_MAX_ARTIFACTS, &files, &n);
  if (rc == DECOMP_OK) {
    memcpy(out, files, n * sizeof *files);
    *out_n = n;
  }
  free(files);
  return rc;
}
