/* migrate.c — `decompd store migrate`: an embedded store copied into
 * another, blob by blob (each hashed again on its way in) and row by row
 * (each through the destination's idempotent import), so that a run cut
 * short and run again ends as one uninterrupted run. migrate.h says what
 * is copied and how. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate.h"
#include "queue.h"
#include "store_int.h"

#define COPY_CHUNK   (1 << 20)
#define REPORT_BYTES ((int64_t)64 << 20)

int store_migrate_open_source(const char *data_dir, const char *blobs,
                              store **out, int *lock_fd) {
  *out = NULL;
  *lock_fd = -1;
  struct stat st;
  char path[STORE_PATH_MAX + 32];
  if (!data_dir || !data_dir[0])
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "no source: --from DATA_DIR names the embedded store "
                      "to copy");
  if (stat(data_dir, &st) != 0 || !S_ISDIR(st.st_mode))
    return store_fail(DECOMP_ERR_NOT_FOUND, "source %s: %s", data_dir,
                      errno == 0 || S_ISDIR(st.st_mode) ? "not a folder"
                                                        : strerror(errno));
  snprintf(path, sizeof path, "%s/decompd.db", data_dir);
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
    return store_fail(DECOMP_ERR_NOT_FOUND,
                      "source %s: not an embedded decompd store (no "
                      "decompd.db in it)",
                      data_dir);
  /* The owner's lock: held by a daemon serving the source, and held here
   * so that none starts serving it while it is copied. */
  snprintf(path, sizeof path, "%s/decompd.lock", data_dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0)
    return store_fail(DECOMP_ERR_IO, "%s: %s", path, strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return store_fail(DECOMP_ERR_UNAVAILABLE,
                      "source %s: a decompd serves it (it holds %s); stop "
                      "it before migrating",
                      data_dir, path);
  }
  const store_options o = {
      .data_dir = data_dir, .index = "sqlite", .blobs = blobs};
  int rc = store_open_with(&o, out, NULL);
  if (rc != DECOMP_OK) {
    close(fd);
    return rc;
  }
  *lock_fd = fd;
  return DECOMP_OK;
}

void store_migrate_close_source(store *s, int lock_fd) {
  store_close(s);
  if (lock_fd >= 0)
    close(lock_fd);
}

struct plan_blob {
  char digest[STORE_DIGEST_LEN];
  int64_t size; /* -1: not given by the rows */
  bool handled;
};

struct mig {
  store *src, *dst;
  store_migrate_report report;
  void *arg;
  store_migrate_stats st;
  int64_t reported_bytes;
  char *buf;
  /* every distinct blob the rows name, sorted by digest, with whether it
   * was handled (a blob several rows name is copied or found once) */
  struct plan_blob *plan;
  size_t nplan, capplan;
};

static void report(struct mig *g) {
  if (g->report)
    g->report(&g->st, false, g->arg);
  g->reported_bytes = g->st.bytes_copied;
}

static int plan_cmp(const void *a, const void *b) {
  return strcmp(((const struct plan_blob *)a)->digest,
                ((const struct plan_blob *)b)->digest);
}

static struct plan_blob *plan_find(struct mig *g, const char *digest) {
  struct plan_blob key;
  snprintf(key.digest, sizeof key.digest, "%s", digest);
  return bsearch(&key, g->plan, g->nplan, sizeof *g->plan, plan_cmp);
}

static int plan_add(struct mig *g, const char *digest, int64_t size) {
  if (!digest || !digest[0])
    return DECOMP_OK;
  if (g->nplan == g->capplan) {
    size_t cap = g->capplan ? 2 * g->capplan : 64;
    struct plan_blob *nv = realloc(g->plan, cap * sizeof *nv);
    if (!nv)
      return store_fail(DECOMP_ERR_NOMEM, "out of memory");
    g->plan = nv;
    g->capplan = cap;
  }
  struct plan_blob *b = &g->plan[g->nplan++];
  snprintf(b->digest, sizeof b->digest, "%s", digest);
  b->size = size;
  b->handled = false;
  return DECOMP_OK;
}

/* Every blob the source's rows name, once, with the bytes they add up to
 * (for the progress lines' totals). */
static int plan_blobs(struct mig *g, const store_model *models, size_t nm,
                      char (*jobs)[24], size_t nj) {
  int rc = DECOMP_OK;
  for (size_t i = 0; rc == DECOMP_OK && i < nm; i++) {
    const store_model *m = &models[i];
    store_shard *sh = NULL;
    size_t nsh = 0;
    rc = store_model_shards(g->src, m->id, &sh, &nsh);
    if (rc == DECOMP_OK)
      rc = plan_add(g, m->digest, nsh > 0 ? -1 : m->size);
    for (size_t k = 0; rc == DECOMP_OK && k < nsh; k++)
      rc = plan_add(g, sh[k].digest, sh[k].size);
    if (rc == DECOMP_OK)
      rc = plan_add(g, m->calibration, m->calibration_size);
    if (rc == DECOMP_OK)
      rc = plan_add(g, m->profile, m->profile_size);
    free(sh);
  }
  for (size_t i = 0; rc == DECOMP_OK && i < nj; i++) {
    store_job j;
    store_artifact *a = NULL;
    size_t na = 0;
    if ((rc = store_job_get(g->src, jobs[i], false, &j)) != DECOMP_OK)
      break;
    rc = store_artifact_list(g->src, jobs[i], &a, &na);
    for (size_t k = 0; rc == DECOMP_OK && k < na; k++)
      rc = plan_add(g, a[k].digest, a[k].size);
    if (rc == DECOMP_OK)
      rc = plan_add(g, j.calibration, -1);
    if (rc == DECOMP_OK)
      rc = plan_add(g, j.profile, -1);
    free(a);
    store_job_clear(&j);
  }
  if (rc != DECOMP_OK)
    return rc;
  if (g->nplan > 0)
    qsort(g->plan, g->nplan, sizeof *g->plan, plan_cmp);
  size_t k = 0; /* drop repeats, keeping a size the rows gave */
  for (size_t i = 0; i < g->nplan; i++) {
    if (k > 0 && strcmp(g->plan[k - 1].digest, g->plan[i].digest) == 0) {
      if (g->plan[k - 1].size < 0)
        g->plan[k - 1].size = g->plan[i].size;
      continue;
    }
    g->plan[k++] = g->plan[i];
  }
  g->nplan = k;
  g->st.blobs_total = k;
  for (size_t i = 0; i < k; i++)
    g->st.bytes_total += g->plan[i].size > 0 ? g->plan[i].size : 0;
  return DECOMP_OK;
}

/* Copy the source's blob `digest` of `size` bytes (-1: unknown) into the
 * destination unless it is there, hashing it on the way: `what` names
 * what refers to it ("model m_…, its weights"). */
static int copy_blob(struct mig *g, const char *digest, int64_t size,
                     const char *what) {
  if (!digest || !digest[0])
    return DECOMP_OK;
  struct plan_blob *pb = plan_find(g, digest);
  int64_t have = 0;
  int rc = store_loose_blob_refresh(g->dst, digest, &have);
  if (rc == DECOMP_OK) {
    if (size >= 0 && have != size)
      return store_fail(DECOMP_ERR_DIGEST_MISMATCH,
                        "blob %s (%s): the destination holds %lld bytes of "
                        "it, the source %lld",
                        digest, what, (long long)have, (long long)size);
    if (pb && !pb->handled) {
      pb->handled = true;
      g->st.blobs_present++;
      g->st.blobs_done++;
      report(g);
    }
    return DECOMP_OK;
  }
  if (rc != DECOMP_ERR_NOT_FOUND)
    return rc;

  int fd = -1;
  int64_t len = 0;
  store_upload *u = NULL;
  rc = store_blob_open(g->src, digest, &fd, &len);
  if (rc != DECOMP_OK) {
    char why[768];
    snprintf(why, sizeof why, "%s", store_errmsg());
    return store_fail(rc, "blob %s (%s): cannot read it from the source: %s",
                      digest, what, why);
  }
  if ((rc = store_upload_begin(g->dst, &u)) != DECOMP_OK)
    goto done;
  for (;;) {
    ssize_t n = read(fd, g->buf, COPY_CHUNK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = store_fail(DECOMP_ERR_IO, "blob %s (%s): reading the source: %s",
                      digest, what, strerror(errno));
      goto done;
    }
    if (n == 0)
      break;
    if ((rc = store_upload_write(u, g->buf, (size_t)n)) != DECOMP_OK)
      goto done;
    g->st.bytes_copied += n;
    if (g->st.bytes_copied - g->reported_bytes >= REPORT_BYTES)
      report(g);
  }
  char got[STORE_DIGEST_LEN];
  if ((rc = store_upload_finish(u, got)) != DECOMP_OK)
    goto done;
  if (strcmp(got, digest) != 0) {
    rc = store_fail(DECOMP_ERR_DIGEST_MISMATCH,
                    "blob %s (%s): the source's bytes hash to %s, not to "
                    "their digest: the source is damaged; nothing of it was "
                    "written",
                    digest, what, got);
    goto done;
  }
  /* In the blob store and recorded as a loose blob (kept upload_ttl), in
   * one step against collection, until the row that names it goes in. */
  store_blob_lock(g->dst);
  rc = store_upload_commit(u);
  if (rc == DECOMP_OK)
    rc = store_loose_blob_touch(g->dst, digest, store_upload_size(u));
  store_blob_unlock(g->dst);
  if (rc != DECOMP_OK)
    goto done;
  if (pb && !pb->handled) {
    pb->handled = true;
    g->st.blobs_copied++;
    g->st.blobs_done++;
  }
  report(g);
done:
  store_upload_free(u);
  close(fd);
  return rc;
}

static int migrate_model(struct mig *g, const store_model *m) {
  store_model_record r = {.m = *m};
  store_shard *sh = NULL;
  size_t nsh = 0;
  char *spec = NULL, *aspec = NULL, what[96];
  int rc = store_model_get_spec(g->src, m->id, &spec);
  if (rc == DECOMP_OK)
    rc = store_model_get_archive_spec(g->src, m->id, &aspec);
  if (rc == DECOMP_OK)
    rc = store_model_shards(g->src, m->id, &sh, &nsh);
  if (rc != DECOMP_OK)
    goto done;
  snprintf(what, sizeof what, "model %s, its %s", m->id,
           nsh > 0 ? "shard index" : "weights");
  /* A sharded model's size is its shards' (the document's blob is not
   * that size): its document is copied whatever its size. */
  rc = copy_blob(g, m->digest, nsh > 0 ? -1 : m->size, what);
  for (size_t i = 0; rc == DECOMP_OK && i < nsh; i++) {
    snprintf(what, sizeof what, "model %s, its shard %.40s", m->id, sh[i].name);
    rc = copy_blob(g, sh[i].digest, sh[i].size, what);
  }
  if (rc == DECOMP_OK) {
    snprintf(what, sizeof what, "model %s, its calibration", m->id);
    rc = copy_blob(g, m->calibration, m->calibration_size, what);
  }
  if (rc == DECOMP_OK) {
    snprintf(what, sizeof what, "model %s, its profile", m->id);
    rc = copy_blob(g, m->profile, m->profile_size, what);
  }
  if (rc != DECOMP_OK)
    goto done;
  r.spec = spec;
  r.archive_spec = aspec;
  r.shards = sh;
  r.nshards = nsh;
  bool created = false;
  if ((rc = store_model_import(g->dst, &r, &created)) != DECOMP_OK)
    goto done;
  if (!created) { /* the id was there: it must be this model */
    store_model d;
    if ((rc = store_model_get(g->dst, m->id, &d)) != DECOMP_OK)
      goto done;
    if (strcmp(d.digest, m->digest) != 0) {
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "model %s: the destination has another model with "
                      "this id (%s, not %s)",
                      m->id, d.digest, m->digest);
      goto done;
    }
  }
  g->st.models_done++;
  g->st.models_new += created;
  report(g);
done:
  free(spec);
  free(aspec);
  free(sh);
  return rc;
}

static int migrate_job(struct mig *g, const char *id) {
  store_job j;
  store_job_layer *l = NULL;
  store_artifact *a = NULL;
  size_t nl = 0, na = 0;
  char key[65], what[128];
  int rc = store_job_get(g->src, id, true, &j);
  if (rc != DECOMP_OK)
    return rc;
  if ((rc = store_job_request_key(g->src, id, key)) != DECOMP_OK ||
      (rc = store_job_layers(g->src, id, &l, &nl)) != DECOMP_OK ||
      (rc = store_artifact_list(g->src, id, &a, &na)) != DECOMP_OK)
    goto done;
  for (size_t i = 0; rc == DECOMP_OK && i < na; i++) {
    snprintf(what, sizeof what, "job %s, its artifact %.60s", id, a[i].name);
    rc = copy_blob(g, a[i].digest, a[i].size, what);
  }
  if (rc == DECOMP_OK) {
    snprintf(what, sizeof what, "job %s, its calibration", id);
    rc = copy_blob(g, j.calibration, -1, what);
  }
  if (rc == DECOMP_OK) {
    snprintf(what, sizeof what, "job %s, its profile", id);
    rc = copy_blob(g, j.profile, -1, what);
  }
  if (rc != DECOMP_OK)
    goto done;
  /* The source is not served while it is copied: a job it had running
   * is put back in the queue, as a daemon starting on it would. */
  if (j.state == STORE_JOB_RUNNING) {
    j.state = STORE_JOB_QUEUED;
    j.current_layer[0] = j.current_step[0] = '\0';
    j.current_fraction = 0;
  }
  store_job_record r = {.j = j,
                        .request_key = key,
                        .layers = l,
                        .nlayers = nl,
                        .artifacts = a,
                        .nartifacts = na};
  bool created = false;
  if ((rc = store_job_import(g->dst, &r, &created)) != DECOMP_OK)
    goto done;
  if (!created) {
    char have[65];
    if ((rc = store_job_request_key(g->dst, id, have)) != DECOMP_OK)
      goto done;
    if (strcmp(have, key) != 0) {
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "job %s: the destination has another job with this "
                      "id",
                      id);
      goto done;
    }
  }
  g->st.jobs_done++;
  g->st.jobs_new += created;
  report(g);
done:
  store_job_clear(&j);
  free(l);
  free(a);
  return rc;
}

static int migrate_tokens(struct mig *g, store_token *t, size_t n) {
  int rc = DECOMP_OK;
  for (size_t i = 0; rc == DECOMP_OK && i < n; i++) {
    char hash[65];
    bool created = false;
    rc = store_token_hash(g->src, t[i].id, hash);
    if (rc == DECOMP_OK)
      rc = store_token_import(g->dst, &t[i], hash, &created);
    if (rc == DECOMP_OK && !created) {
      char have[65];
      rc = store_token_hash(g->dst, t[i].id, have);
      if (rc == DECOMP_OK && strcmp(have, hash) != 0)
        rc = store_fail(DECOMP_ERR_CONFLICT,
                        "token %s ('%s'): the destination has another token "
                        "with this id",
                        t[i].id, t[i].name);
    }
    if (rc == DECOMP_OK) {
      g->st.tokens_done++;
      g->st.tokens_new += created;
      report(g);
    }
  }
  return rc;
}

/* Every job id of the source, oldest first (the destination numbers them
 * in that order, so its list keeps the source's). */
static int job_ids(store *s, char (**out)[24], size_t *n) {
  char(*v)[24] = NULL;
  size_t cnt = 0, cap = 0;
  int64_t before = 0;
  int rc = DECOMP_OK;
  for (;;) {
    store_job *page = NULL;
    size_t k = 0;
    if ((rc = store_job_list(s, -1, before, 500, &page, &k)) != DECOMP_OK)
      break;
    for (size_t i = 0; i < k; i++) {
      if (rc == DECOMP_OK && cnt == cap) {
        cap = cap ? 2 * cap : 64;
        char(*nv)[24] = realloc(v, cap * sizeof *v);
        if (!nv)
          rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
        else
          v = nv;
      }
      if (rc == DECOMP_OK)
        snprintf(v[cnt++], 24, "%s", page[i].id);
      before = page[i].seq;
      store_job_clear(&page[i]);
    }
    free(page);
    if (rc != DECOMP_OK || k == 0)
      break;
  }
  if (rc != DECOMP_OK) {
    free(v);
    return rc;
  }
  for (size_t i = 0; i < cnt / 2; i++) { /* newest first → oldest first */
    char tmp[24];
    memcpy(tmp, v[i], 24);
    memcpy(v[i], v[cnt - 1 - i], 24);
    memcpy(v[cnt - 1 - i], tmp, 24);
  }
  *out = v;
  *n = cnt;
  return DECOMP_OK;
}

int store_migrate(store *src, store *dst, store_migrate_report rep, void *arg,
                  store_migrate_stats *out) {
  struct mig g = {.src = src, .dst = dst, .report = rep, .arg = arg};
  store_model *models = NULL;
  store_token *tokens = NULL;
  char(*jobs)[24] = NULL;
  size_t nm = 0, nt = 0, nj = 0;
  int rc = DECOMP_OK;
  if (!(g.buf = malloc(COPY_CHUNK))) {
    rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if ((rc = store_model_list(src, &models, &nm)) != DECOMP_OK ||
      (rc = job_ids(src, &jobs, &nj)) != DECOMP_OK ||
      (rc = store_token_list(src, &tokens, &nt)) != DECOMP_OK)
    goto done;
  g.st.models_total = nm;
  g.st.jobs_total = nj;
  g.st.tokens_total = nt;
  if ((rc = plan_blobs(&g, models, nm, jobs, nj)) != DECOMP_OK)
    goto done;
  report(&g);
  /* Models first, oldest first: the jobs to run need theirs. */
  for (size_t i = nm; rc == DECOMP_OK && i > 0; i--)
    rc = migrate_model(&g, &models[i - 1]);
  for (size_t i = 0; rc == DECOMP_OK && i < nj; i++)
    rc = migrate_job(&g, jobs[i]);
  if (rc == DECOMP_OK)
    rc = migrate_tokens(&g, tokens, nt);
  if (rc == DECOMP_OK && rep)
    rep(&g.st, true, arg);
done:
  if (out)
    *out = g.st;
  free(g.buf);
  free(g.plan);
  free(models);
  free(tokens);
  free(jobs);
  return rc;
}
