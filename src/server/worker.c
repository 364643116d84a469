/* worker.c — the decomposition workers (see worker.h): claim, decompose,
 * store, repeat. The only server file that calls the engine's decomposition;
 * it tells the engine how many cores each run may use
 * (decomp_options.threads), and the engine sets BLAS to match, and hands it
 * the job's calibration (the blob its digest names, mapped) and latency
 * profile (its JSON text, read whole).
 *
 * A TorchScript model is read here, never in a request handler: loading it
 * runs code the archive carries, so decomp_torchscript_read runs the
 * sandboxed reader process (its private folder under the data dir's tmp/,
 * the torchscript_timeout / torchscript_memory limits, killed when the job
 * is cancelled or the daemon stops). It waits for its child by pid: the
 * daemon never sets SIGCHLD to SIG_IGN. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "decomp/decomp.h"
#include "decomp/torchscript.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "shards.h"
#include "worker.h"
#include "worker_int.h"

#include <dirent.h>
#include <jansson.h>
#include <sys/resource.h>
#include <sys/stat.h>

static void pool_wake(void *arg) {
  worker_pool *p = arg;
  pthread_mutex_lock(&p->wake_mu);
  p->wake_gen++;
  pthread_cond_broadcast(&p->wake_cv);
  pthread_mutex_unlock(&p->wake_mu);
}

unsigned long worker_wake_gen(worker_pool *p) {
  pthread_mutex_lock(&p->wake_mu);
  unsigned long g = p->wake_gen;
  pthread_mutex_unlock(&p->wake_mu);
  return g;
}

void worker_wait(worker_pool *p, unsigned long seen, int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&p->wake_mu);
  while (p->wake_gen == seen) {
    if (pthread_cond_timedwait(&p->wake_cv, &p->wake_mu, &ts) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&p->wake_mu);
}

static void engine_log(void *user, int level, const char *topic,
                       const char *msg) {
  struct run *r = user;
  LOG(level, "engine", r->job->id, "part=%s msg=%s", topic, log_q(msg));
}

static int on_progress(void *user, const decomp_progress *pr) {
  struct run *r = user;
  store *s = r->p->s;
  if (pr->phase != DECOMP_PHASE_DONE && pr->layer) {
    /* Where the job is: the layer under way and its step's share done. */
    bool factors = pr->phase == DECOMP_PHASE_START ||
                   (pr->phase == DECOMP_PHASE_WORKING && pr->rank > 0);
    if (store_job_current(s, r->job->id, (int64_t)pr->total, pr->layer,
                          factors ? "factors" : "spectrum",
                          pr->phase == DECOMP_PHASE_WORKING ? pr->fraction
                                                            : 0.0) !=
        DECOMP_OK)
      LOG(LOG_WARN, "worker", r->job->id, "event=current_not_saved error=%s",
          log_q(store_errmsg()));
  }
  if (pr->phase == DECOMP_PHASE_DONE) {
    store_job_layer l = {0};
    l.index = (int64_t)pr->index;
    snprintf(l.name, sizeof l.name, "%s", pr->layer ? pr->layer : "");
    l.rank = pr->rank;
    l.max_rank = pr->max_rank;
    l.seconds = pr->seconds;
    snprintf(l.skip_reason, sizeof l.skip_reason, "%s",
             pr->skip_reason ? pr->skip_reason : "");
    if (store_job_progress(s, r->job->id, (int64_t)pr->total, &l) !=
        DECOMP_OK)
      LOG(LOG_WARN, "worker", r->job->id, "event=progress_not_saved error=%s",
          log_q(store_errmsg()));
    metrics_layer(pr->seconds);
    LOG(LOG_DEBUG, "worker", r->job->id,
        "event=layer index=%zu total=%zu layer=%s rank=%lld seconds=%.3f",
        pr->index, pr->total, log_q(l.name), (long long)pr->rank, pr->seconds);
  }
  if (atomic_load(&r->p->stopping))
    return 1;
  /* Every event is a layer boundary or, inside a long layer, a progress
   * report at most every 0.5 s (an indexed read of one row). */
  bool yes = false;
  int rc = r->task ? store_task_cancel_requested(s, r->task, &yes)
                   : store_job_cancel_requested(s, r->job->id, &yes);
  if (rc == DECOMP_OK && yes) {
    r->cancelled = true;
    return 1;
  }
  return 0;
}

/* decomp_ts_limits.cancel: polled about every 50 ms while the reader runs;
 * shutdown is seen at once, a user's cancel within about 250 ms. */
static int ts_cancel(void *user) {
  struct run *r = user;
  if (atomic_load(&r->p->stopping))
    return 1;
  if (r->polls++ % 5 != 0)
    return 0;
  bool yes = false;
  if (store_job_cancel_requested(r->p->s, r->job->id, &yes) == DECOMP_OK &&
      yes) {
    r->cancelled = true;
    return 1;
  }
  return 0;
}

/* Weights and spec of a TorchScript model: both from the archive, or the
 * job's spec (given at submit or attached to the model) checked against the
 * archive's weights. */
static int read_torchscript(struct run *r, decomp_ctx *ctx, const char *path,
                            decomp_weights **w, decomp_spec **spec) {
  worker_pool *p = r->p;
  decomp_ts_limits lim = {0};
  lim.time_seconds = p->ts_seconds;
  lim.memory_bytes = p->ts_memory;
  lim.tmpdir = p->ts_tmpdir;
  lim.reader_path = p->ts_reader;
  lim.cancel = ts_cancel;
  lim.cancel_user = r;
  decomp_spec *ts_spec = NULL;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = decomp_torchscript_read(ctx, path, &lim, w, &ts_spec);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (rc != DECOMP_OK) {
    LOG(LOG_INFO, "worker", r->job->id,
        "event=torchscript_read ok=no seconds=%.3f code=%s", secs,
        decomp_error_code(rc));
    return rc;
  }
  LOG(LOG_INFO, "worker", r->job->id,
      "event=torchscript_read ok=yes seconds=%.3f tensors=%zu layers=%zu "
      "spec=%s",
      secs, decomp_weights_count(*w), decomp_spec_count(ts_spec),
      r->job->spec[0] ? "job" : "archive");
  /* The archive's spec, recorded on the model: a calibration attached to
   * it later is checked against it (routes.c). */
  char *canon = decomp_spec_to_json(ts_spec);
  if (!canon ||
      store_model_set_archive_spec(p->s, r->job->model_id, canon) != DECOMP_OK)
    LOG(LOG_WARN, "worker", r->job->id, "event=archive_spec_not_saved error=%s",
        log_q(canon ? store_errmsg() : "out of memory"));
  decomp_free(canon);
  if (!r->job->spec[0]) {
    *spec = ts_spec;
    return DECOMP_OK;
  }
  decomp_spec_free(ts_spec);
  rc = decomp_spec_parse(ctx, r->job->spec, strlen(r->job->spec), spec);
  if (rc == DECOMP_OK)
    rc = decomp_spec_check(ctx, *spec, *w);
  return rc;
}

int worker_write_file(const char *path, const void *buf, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0)
    return DECOMP_ERR_IO;
  size_t left = len;
  const char *p = buf;
  int rc = DECOMP_OK;
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = errno == ENOSPC ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO;
      break;
    }
    p += n;
    left -= (size_t)n;
  }
  if (rc == DECOMP_OK && fsync(fd) != 0)
    rc = DECOMP_ERR_IO;
  close(fd);
  return rc;
}

static const struct {
  const char *name;
  const char *media_type;
  int format;
} OUTPUTS[] = {
    {DECOMP_ARTIFACT_WEIGHTS_PTH, "application/octet-stream",
     DECOMP_FORMAT_PTH},
    {DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS, "application/octet-stream",
     DECOMP_FORMAT_SAFETENSORS},
    {DECOMP_ARTIFACT_INFO, "application/json", DECOMP_FORMAT_UNKNOWN},
};
#define NOUTPUTS 3

/* Save the result's files under tmp and commit them as the job's artifacts.
 * They are written under their artifact names, in a folder of the job's:
 * a .pth archive's entries are named after its file (torch.save's
 * STEM/data.pkl), so the bytes are those decompctl writes, whichever job
 * or node made them. */
static int store_outputs(store *s, decomp_ctx *ctx, const store_job *job,
                         const decomp_result *res, char *msg, size_t msglen) {
  char dir[4096], paths[NOUTPUTS][4200];
  store_artifact arts[NOUTPUTS];
  int rc = DECOMP_OK;
  int made = 0;
  snprintf(dir, sizeof dir, "%s/%s-out", store_tmp_dir(s), job->id);
  if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
    snprintf(msg, msglen, "saving the outputs: mkdir: %s", strerror(errno));
    return DECOMP_ERR_IO;
  }
  for (int i = 0; i < NOUTPUTS && rc == DECOMP_OK; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/%s", dir, OUTPUTS[i].name);
    made = i + 1;
    if (OUTPUTS[i].format == DECOMP_FORMAT_UNKNOWN)
      rc = worker_write_file(paths[i], decomp_result_info(res),
                             strlen(decomp_result_info(res)));
    else
      rc = decomp_weights_save(ctx, decomp_result_weights(res), paths[i],
                               (decomp_format)OUTPUTS[i].format);
    if (rc != DECOMP_OK)
      snprintf(msg, msglen, "saving %s: %s", OUTPUTS[i].name,
               decomp_errmsg(ctx)[0] ? decomp_errmsg(ctx) : decomp_strerror(rc));
  }
  /* Hash first (it may take seconds); the store places and indexes them. */
  for (int i = 0; i < NOUTPUTS && rc == DECOMP_OK; i++) {
    memset(&arts[i], 0, sizeof arts[i]);
    snprintf(arts[i].name, sizeof arts[i].name, "%s", OUTPUTS[i].name);
    snprintf(arts[i].media_type, sizeof arts[i].media_type, "%s",
             OUTPUTS[i].media_type);
    rc = store_blob_hash_file(paths[i], arts[i].digest, &arts[i].size);
    if (rc != DECOMP_OK)
      snprintf(msg, msglen, "hashing %s: %s", OUTPUTS[i].name, store_errmsg());
  }
  if (rc == DECOMP_OK) {
    const char *pv[NOUTPUTS];
    for (int i = 0; i < NOUTPUTS; i++)
      pv[i] = paths[i];
    rc = store_job_succeed(s, job->id, arts, pv, NOUTPUTS);
    if (rc != DECOMP_OK)
      snprintf(msg, msglen, "%s", store_errmsg());
  }
  for (int i = 0; i < made; i++)
    unlink(paths[i]); /* already renamed away on success */
  rmdir(dir);
  return rc;
}

/* The info summary's peak_rss_bytes (0 when it has none). */
static int64_t info_peak_rss(const char *info) {
  json_t *o = json_loads(info, 0, NULL);
  json_t *v = json_object_get(json_object_get(o, "summary"), "peak_rss_bytes");
  int64_t n = json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
  json_decref(o);
  return n;
}

/* Remove the folder `dir` and what is in it (one level: what the engine
 * and store_sharded_outputs write there). */
void worker_rm_folder(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
  }
  rmdir(dir);
}

int worker_commit_outputs(worker_pool *p, const store_job *job,
                          const char *dir, const char *files,
                          const char *info, char *msg, size_t msglen) {
  store *s = p->s;
  char path[4400];
  json_t *names = json_loads(files, 0, NULL);
  size_t n = json_array_size(names) + 1; /* and decompose_info.json */
  store_artifact *arts = NULL;
  char(*pbuf)[4400] = NULL;
  const char **pv = NULL;
  int rc = DECOMP_OK;
  if (!json_is_array(names) || !(arts = calloc(n, sizeof *arts)) ||
      !(pbuf = calloc(n, sizeof *pbuf)) || !(pv = calloc(n, sizeof *pv))) {
    rc = DECOMP_ERR_NOMEM;
    snprintf(msg, msglen, "out of memory");
    goto done;
  }
  snprintf(path, sizeof path, "%s/%s", dir, DECOMP_ARTIFACT_INFO);
  if ((rc = worker_write_file(path, info, strlen(info))) != DECOMP_OK) {
    snprintf(msg, msglen, "saving %s: %s", DECOMP_ARTIFACT_INFO,
             decomp_strerror(rc));
    goto done;
  }
  /* Hash first (shards are large); the store places and indexes them. */
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    const char *name = i + 1 < n
                           ? json_string_value(json_array_get(names, i))
                           : DECOMP_ARTIFACT_INFO;
    if (!name || strlen(name) >= sizeof arts[i].name) {
      rc = DECOMP_ERR_INTERNAL;
      snprintf(msg, msglen, "the engine named an output file oddly");
      break;
    }
    size_t len = strlen(name);
    bool json = len > 5 && strcmp(name + len - 5, ".json") == 0;
    snprintf(arts[i].name, sizeof arts[i].name, "%s", name);
    snprintf(arts[i].media_type, sizeof arts[i].media_type, "%s",
             json ? "application/json" : "application/octet-stream");
    snprintf(pbuf[i], sizeof pbuf[i], "%s/%s", dir, name);
    pv[i] = pbuf[i];
    rc = store_blob_hash_file(pv[i], arts[i].digest, &arts[i].size);
    if (rc != DECOMP_OK)
      snprintf(msg, msglen, "hashing %s: %s", name, store_errmsg());
  }
  if (rc == DECOMP_OK) {
    int64_t rss = info_peak_rss(info);
    if (rss > 0 && store_job_set_peak_rss(s, job->id, rss) != DECOMP_OK)
      LOG(LOG_WARN, "worker", job->id, "event=peak_rss_not_saved error=%s",
          log_q(store_errmsg()));
  }
  if (rc == DECOMP_OK) {
    rc = store_job_succeed(s, job->id, arts, pv, n);
    if (rc != DECOMP_OK)
      snprintf(msg, msglen, "%s", store_errmsg());
  }
  if (rc == DECOMP_OK)
    LOG(LOG_INFO, "worker", job->id, "event=outputs files=%zu", n);
done:
  json_decref(names);
  free(arts);
  free(pbuf);
  free(pv);
  return rc;
}

/* A sharded model's job: decomposed straight into sharded safetensors in
 * a work folder under tmp (decomp_decompose_save: the input stays mapped,
 * each layer's factors are written when done, memory is the layers in
 * flight), then every file written, with decompose_info.json, is hashed,
 * placed and committed as the job's artifacts. */
static int run_sharded(worker_pool *p, const store_job *job, job_inputs *in,
                       char *msg, size_t msglen) {
  char dir[4200];
  char *info = NULL, *files = NULL;
  snprintf(dir, sizeof dir, "%s/%s-out", store_tmp_dir(p->s), job->id);
  worker_rm_folder(dir); /* what an attempt before a crash left */
  if (mkdir(dir, 0750) != 0) {
    snprintf(msg, msglen, "work folder: %s", strerror(errno));
    return DECOMP_ERR_IO;
  }
  decomp_save_options save = {0};
  save.sharded = true;
  save.shard_bytes = job->shard_bytes > 0 ? (uint64_t)job->shard_bytes
                                          : p->shard_bytes;
  int rc = decomp_decompose_save(in->ctx, in->w, in->spec, in->pol,
                                 &in->opts, dir, &save, &info, &files);
  if (rc != DECOMP_OK)
    snprintf(msg, msglen, "%s", decomp_errmsg(in->ctx));
  else
    rc = worker_commit_outputs(p, job, dir, files, info, msg, msglen);
  worker_rm_folder(dir); /* what was placed is gone from it already */
  decomp_free(info);
  decomp_free(files);
  return rc;
}

/* `in` without server paths: the data dir's (store_scrub) and the
 * TorchScript reader's. */
void worker_scrub(const worker_pool *p, const char *in, char *out,
                         size_t outlen) {
  char tmp[1200];
  size_t n = strlen(p->ts_reader), o = 0;
  for (const char *q = in; *q && o + 1 < sizeof tmp;) {
    if (n > 0 && strncmp(q, p->ts_reader, n) == 0) {
      o += (size_t)snprintf(tmp + o, sizeof tmp - o, "%s",
                            "the TorchScript reader");
      if (o >= sizeof tmp)
        o = sizeof tmp - 1;
      q += n;
    } else {
      tmp[o++] = *q++;
    }
  }
  tmp[o] = '\0';
  store_scrub(p->s, tmp, out, outlen);
}

int job_inputs_open(struct run *r, job_inputs *in, char *msg,
                    size_t msglen) {
  worker_pool *p = r->p;
  store *s = p->s;
  const store_job *job = r->job;
  char path[4200];
  int rc;
  memset(in, 0, sizeof *in);
  if (!(in->ctx = decomp_ctx_new())) {
    snprintf(msg, msglen, "out of memory");
    return DECOMP_ERR_NOMEM;
  }
  decomp_ctx_set_log(in->ctx, engine_log, r,
                     log_enabled(LOG_DEBUG) ? LOG_DEBUG : LOG_INFO);
  decomp_ctx *ctx = in->ctx;
  if ((rc = store_model_get(s, job->model_id, &in->m)) != DECOMP_OK ||
      (rc = store_blob_path(s, in->m.digest, path, sizeof path)) !=
          DECOMP_OK) {
    snprintf(msg, msglen, "model %s: %s", job->model_id, store_errmsg());
    goto fail;
  }
  in->ts = strcmp(in->m.format, "torchscript") == 0;
  in->sharded = shards_model_is_sharded(&in->m);
  if (in->sharded && (rc = shards_weights_open(s, ctx, &in->m, &in->w, msg,
                                               msglen)) != DECOMP_OK)
    goto fail;
  if ((in->ts &&
       (rc = read_torchscript(r, ctx, path, &in->w, &in->spec)) !=
           DECOMP_OK) ||
      (!in->ts && !in->sharded &&
       (rc = decomp_weights_open(ctx, path, &in->w)) != DECOMP_OK) ||
      (!in->ts && (rc = decomp_spec_parse(ctx, job->spec, strlen(job->spec),
                                          &in->spec)) != DECOMP_OK) ||
      (rc = decomp_policy_parse(ctx, job->policy, &in->pol)) != DECOMP_OK) {
    snprintf(msg, msglen, "%s", decomp_errmsg(ctx));
    goto fail;
  }
  /* The job's calibration: its row keeps the blob (store_blob_gc). The
   * engine checks it against the spec before any work. */
  if (job->calibration[0]) {
    char cpath[4200];
    if ((rc = store_blob_path(s, job->calibration, cpath, sizeof cpath)) !=
        DECOMP_OK) {
      snprintf(msg, msglen, "calibration %s: %s", job->calibration,
               store_errmsg());
      goto fail;
    }
    if ((rc = decomp_weights_open(ctx, cpath, &in->cal)) != DECOMP_OK) {
      snprintf(msg, msglen, "calibration %s: %s", job->calibration,
               decomp_errmsg(ctx));
      rc = DECOMP_ERR_BAD_CALIBRATION;
      goto fail;
    }
  }
  /* The job's profile, the same way: the engine checks it against the spec
   * before any work. Accepted by PUT under max_json_bytes (16 MiB by
   * default); this bound only keeps a worker from reading any blob whole. */
  if (job->profile[0] &&
      (rc = store_blob_read(s, job->profile, (int64_t)1 << 30, &in->profile,
                            NULL)) != DECOMP_OK) {
    snprintf(msg, msglen, "profile %s: %s", job->profile, store_errmsg());
    if (rc == DECOMP_ERR_TOO_LARGE)
      rc = DECOMP_ERR_BAD_PROFILE;
    goto fail;
  }
  decomp_options *o = &in->opts;
  o->progress = on_progress;
  o->progress_user = r;
  o->source_digest = in->m.digest;
  o->source_format = in->m.format;
  /* The engine sets OpenBLAS's (process-wide) thread count from this; every
   * worker passes the same value, so workers × threads ≤ cores holds (and
   * every node of a cluster configured alike gives the same bytes). */
  o->threads = p->blas_threads;
  /* Each layer's singular values go into the info file: the dashboard draws
   * retained energy against rank from them. */
  o->record_spectra = true;
  o->calibration = in->cal;
  o->calibration_digest = in->cal ? job->calibration : NULL;
  o->profile = in->profile;
  o->profile_digest = in->profile ? job->profile : NULL;
  return DECOMP_OK;
fail:
  job_inputs_close(in);
  return rc;
}

void job_inputs_close(job_inputs *in) {
  if (in->pol)
    decomp_policy_free(in->pol);
  if (in->spec)
    decomp_spec_free(in->spec);
  decomp_weights_free(in->cal);
  free(in->profile);
  decomp_weights_free(in->w);
  decomp_ctx_free(in->ctx);
  memset(in, 0, sizeof *in);
}

static void run_job(worker_pool *p, store_job *job) {
  store *s = p->s;
  struct run r = {.p = p, .job = job};
  job_inputs in;
  decomp_result *res = NULL;
  char msg[1200] = "";
  int rc;
  bool spread = false;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  LOG(LOG_INFO, "worker", job->id,
      "event=job_start model=%s attempt=%d calibration=%s profile=%s",
      job->model_id, job->attempts,
      job->calibration[0] ? job->calibration : "none",
      job->profile[0] ? job->profile : "none");
  if ((rc = job_inputs_open(&r, &in, msg, sizeof msg)) != DECOMP_OK)
    goto done;
  char *layers = NULL;
  if ((spread = spread_wanted(p, &in, &layers))) {
    rc = spread_job(&r, &in, layers, msg, sizeof msg);
    goto done;
  }
  if (in.sharded) {
    rc = run_sharded(p, job, &in, msg, sizeof msg);
    goto done;
  }
  rc = decomp_decompose(in.ctx, in.w, in.spec, in.pol, &in.opts, &res);
  if (rc != DECOMP_OK) {
    snprintf(msg, sizeof msg, "%s", decomp_errmsg(in.ctx));
    goto done;
  }
  rc = store_outputs(s, in.ctx, job, res, msg, sizeof msg);
  if (rc == DECOMP_OK) {
    /* The engine records it when it streams its output; otherwise it is
     * the same high-water mark, read here. */
    int64_t rss = info_peak_rss(decomp_result_info(res));
    struct rusage ru;
    if (rss <= 0 && getrusage(RUSAGE_SELF, &ru) == 0)
      rss = (int64_t)ru.ru_maxrss * 1024;
    if (rss > 0 && store_job_set_peak_rss(s, job->id, rss) != DECOMP_OK)
      LOG(LOG_WARN, "worker", job->id, "event=peak_rss_not_saved error=%s",
          log_q(store_errmsg()));
  }
done:
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) +
                (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  const char *state = "succeeded";
  if (rc == DECOMP_OK) {
    /* store_outputs marked it */
  } else if (rc == DECOMP_ERR_CANCELLED && !r.cancelled &&
             atomic_load(&p->stopping)) {
    state = "queued";
    if (store_job_requeue(s, job->id) != DECOMP_OK)
      LOG(LOG_ERROR, "worker", job->id, "event=requeue_failed error=%s",
          log_q(store_errmsg()));
  } else if (rc == DECOMP_ERR_CANCELLED) {
    state = "cancelled";
    store_job_cancelled(s, job->id);
  } else {
    state = "failed";
    if (!msg[0])
      snprintf(msg, sizeof msg, "%s", decomp_strerror(rc));
    /* The job's error is shown to clients: what failed, not where on this
     * server (the log line below keeps the paths). */
    char shown[sizeof msg];
    worker_scrub(p, msg, shown, sizeof shown);
    if (store_job_fail(s, job->id, rc, shown) != DECOMP_OK)
      LOG(LOG_ERROR, "worker", job->id, "event=fail_not_saved error=%s",
          log_q(store_errmsg()));
  }
  if (strcmp(state, "queued") != 0)
    metrics_job_finished(state);
  LOG(rc == DECOMP_OK || rc == DECOMP_ERR_CANCELLED ? LOG_INFO : LOG_WARN,
      "worker", job->id, "event=job_end state=%s seconds=%.3f code=%s%s%s",
      state, secs, decomp_error_code(rc), msg[0] ? " error=" : "",
      msg[0] ? log_q(msg) : "");
  /* An ended job's task records are not needed any more; a requeued one
   * keeps them for the next attempt to go on from. */
  if (spread && strcmp(state, "queued") != 0 &&
      store_job_tasks_clear(s, job->id) != DECOMP_OK)
    LOG(LOG_WARN, "worker", job->id, "event=task_records_not_dropped error=%s",
        log_q(store_errmsg()));
  if (res)
    decomp_result_free(res);
  job_inputs_close(&in);
}

static void *worker_main(void *arg) {
  worker_pool *p = arg;
  while (!atomic_load(&p->stopping)) {
    unsigned long seen = worker_wake_gen(p);
    /* A task of a job under way first (it finishes what has begun), then
     * a new job. */
    if (atomic_load(&p->spread)) {
      int trc = spread_task_next(p, false);
      if (trc == DECOMP_OK)
        continue;
      if (trc != DECOMP_ERR_NOT_FOUND)
        LOG(LOG_ERROR, "worker", NULL, "event=task_claim_failed error=%s",
            log_q(store_errmsg()));
    }
    store_job job;
    int rc = store_job_claim(p->s, &job);
    if (rc == DECOMP_ERR_NOT_FOUND) {
      worker_wait(p, seen, 1000);
      continue;
    }
    if (rc != DECOMP_OK) {
      LOG(LOG_ERROR, "worker", NULL, "event=claim_failed error=%s",
          log_q(store_errmsg()));
      worker_wait(p, seen, 1000);
      continue;
    }
    atomic_fetch_add(&p->running, 1);
    run_job(p, &job);
    atomic_fetch_sub(&p->running, 1);
    store_job_clear(&job);
  }
  return NULL;
}

int worker_pool_start(store *s, int workers, int blas_threads,
                      const worker_ts_limits *ts, worker_pool **out) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1)
    cores = 1;
  if (workers <= 0)
    workers = (int)cores;
  if (blas_threads <= 0)
    blas_threads = (int)(cores / workers) > 0 ? (int)(cores / workers) : 1;
  if ((long)workers * blas_threads > cores)
    LOG(LOG_WARN, "worker", NULL,
        "event=oversubscribed workers=%d blas_threads=%d cores=%ld", workers,
        blas_threads, cores);
  worker_pool *p = calloc(1, sizeof *p);
  if (!p)
    return DECOMP_ERR_NOMEM;
  p->threads = calloc((size_t)workers, sizeof *p->threads);
  if (!p->threads) {
    free(p);
    return DECOMP_ERR_NOMEM;
  }
  p->s = s;
  p->blas_threads = blas_threads;
  p->ts_seconds = ts && ts->time_seconds > 0 ? ts->time_seconds : 120.0;
  p->ts_memory = ts ? ts->memory_bytes : 0;
  if (!realpath(store_tmp_dir(s), p->ts_tmpdir))
    snprintf(p->ts_tmpdir, sizeof p->ts_tmpdir, "%s", store_tmp_dir(s));
  if (!realpath(worker_ts_reader(), p->ts_reader)) /* missing: said later */
    snprintf(p->ts_reader, sizeof p->ts_reader, "%s", worker_ts_reader());
  atomic_init(&p->spread, store_tasks_supported(s));
  atomic_init(&p->stopping, false);
  pthread_mutex_init(&p->wake_mu, NULL);
  pthread_cond_init(&p->wake_cv, NULL);
  store_set_wake(s, pool_wake, p);
  for (int i = 0; i < workers; i++) {
    if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
      break;
    p->n++;
  }
  LOG(LOG_INFO, "worker", NULL, "event=pool_started workers=%d blas_threads=%d "
      "cores=%ld", p->n, blas_threads, cores);
  if (p->n == 0) {
    store_set_wake(s, NULL, NULL);
    pthread_mutex_destroy(&p->wake_mu);
    pthread_cond_destroy(&p->wake_cv);
    free(p->threads);
    free(p);
    return DECOMP_ERR_INTERNAL;
  }
  *out = p;
  return DECOMP_OK;
}

const char *worker_ts_reader(void) {
  const char *env = getenv("DECOMPD_TS_READER");
  return env && env[0] ? env : decomp_torchscript_reader_path();
}

int worker_pool_size(const worker_pool *p) { return p ? p->n : 0; }

int worker_pool_running(worker_pool *p) {
  return p ? atomic_load(&p->running) : 0;
}

void worker_pool_set_shard_bytes(worker_pool *p, uint64_t bytes) {
  if (p)
    p->shard_bytes = bytes;
}

void worker_pool_set_spread(worker_pool *p, bool spread) {
  if (p)
    atomic_store(&p->spread, spread && store_tasks_supported(p->s));
}

void worker_pool_stop(worker_pool *p) {
  if (!p)
    return;
  atomic_store(&p->stopping, true);
  store_set_wake(p->s, NULL, NULL); /* no call of pool_wake is under way */
  pool_wake(p);
  for (int i = 0; i < p->n; i++)
    pthread_join(p->threads[i], NULL);
  pthread_mutex_destroy(&p->wake_mu);
  pthread_cond_destroy(&p->wake_cv);
  free(p->threads);
  free(p);
}
