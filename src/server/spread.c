/* spread.c — one job over many nodes (queue.h's tasks, DESIGN "Across
 * machines"): the worker that claims a job becomes its coordinator and
 * cuts it into the engine's task stages (decomp_task_*), each task a row
 * that any node's idle worker claims:
 *
 *   1. spectra: the layers the job may decompose, a big layer alone and
 *      small ones grouped (by the engine's cost, m·n·min(m, n));
 *   2. plan: the ranks for the whole model from every stage-1 record;
 *   3. factors: the layers the plan decomposes, grouped the same way;
 *
 * then assembles the artifacts from the stage-3 records, the bytes a
 * single run writes. Each record is a blob (the store's, so every node
 * reads it), one per task. While its tasks run elsewhere the coordinator
 * runs its own job's tasks too, so a node alone (or every worker a
 * coordinator) still gets through. A task's node dying loses only that
 * task (its lease lapses and another node claims it); a coordinator dying
 * leaves its job to be claimed again, and the next coordinator goes on
 * from the records there are. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"
#include "node.h"
#include "worker_int.h"

/* Tasks per stage for each worker alive in the cluster: enough that the
 * costliest layers do not leave workers idle at the end, few enough that
 * a task's fixed cost (its inputs mapped, its record stored) stays
 * small. */
#define TASKS_PER_WORKER 2

/* The largest record read whole (a stage-1 record or the plan: spectra,
 * float64; stage-3 records are mapped from their files). */
#define RECORD_MAX ((int64_t)1 << 32)

/* A job whose layers cost less than this in all (Σ m·n·min(m, n) over
 * their candidates: a few hundred ms of one core's SVD) runs whole: its
 * tasks' fixed costs (rows claimed, records stored and read, the inputs
 * mapped once per task) would outweigh what spreading saves. bench/
 * bench_cluster.py: 30 two-conv jobs spread took 5x a whole run's time. */
#define SPREAD_MIN_COST 1e9

/* The engine's cost of the layers in `layers` (decomp_task_layers'
 * list), summed. */
static double layers_cost(const char *layers) {
  double total = 0;
  json_t *a = json_loads(layers, 0, NULL);
  size_t i;
  json_t *e;
  json_array_foreach(a, i, e) total +=
      json_number_value(json_object_get(e, "cost"));
  json_decref(a);
  return total;
}

bool spread_wanted(const worker_pool *p, job_inputs *in, char **layers) {
  *layers = NULL;
  if (!atomic_load(&p->spread) || in->ts ||
      decomp_task_layers(in->ctx, in->w, in->spec, in->pol, &in->opts, NULL,
                         0, layers) != DECOMP_OK)
    return false; /* a failure: the whole run says what is wrong */
  if (layers_cost(*layers) >= SPREAD_MIN_COST)
    return true;
  decomp_free(*layers);
  *layers = NULL;
  return false;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The workers of the nodes alive now (at least this pool's). */
static int workers_alive(worker_pool *p) {
  store_node *v = NULL;
  size_t n = 0;
  int w = 0;
  if (store_node_list(p->s, &v, &n) == DECOMP_OK) {
    int64_t now = store_now_ms();
    for (size_t i = 0; i < n; i++)
      if (now - v[i].heartbeat_at < NODE_ALIVE_MS && v[i].workers > 0)
        w += v[i].workers;
  }
  free(v);
  return w > p->n ? w : p->n;
}

/* Close the run of layers `*run` (when there is one) as the next task. */
static int emit(const char *job_id, int stage, store_task *v, size_t *n,
                json_t **run, int64_t *cost) {
  if (!*run)
    return DECOMP_OK;
  store_task *t = &v[*n];
  snprintf(t->job_id, sizeof t->job_id, "%s", job_id);
  t->stage = stage;
  t->index = (int)*n;
  t->cost = *cost;
  t->layers = json_dumps(*run, JSON_COMPACT);
  json_decref(*run);
  *run = NULL;
  *cost = 0;
  if (!t->layers)
    return DECOMP_ERR_NOMEM;
  (*n)++;
  return DECOMP_OK;
}

/* A stage's tasks from the engine's list of its layers ({"name", "cost"}
 * in spec order): a layer costing at least a task's share of the total
 * (total / k) alone, the others in runs of neighbours until a run reaches
 * it. */
static int group_layers(const char *job_id, int stage, const char *layers,
                        int k, store_task **out, size_t *n) {
  json_t *a = json_loads(layers, 0, NULL);
  size_t m = json_array_size(a);
  store_task *v = NULL;
  json_t *run = NULL;
  int64_t run_cost = 0;
  *out = NULL;
  *n = 0;
  if (!json_is_array(a)) {
    json_decref(a);
    return DECOMP_ERR_INTERNAL;
  }
  double total = 0;
  for (size_t i = 0; i < m; i++)
    total += json_number_value(
        json_object_get(json_array_get(a, i), "cost"));
  double share = total / (k > 0 ? k : 1);
  int rc = m > 0 && !(v = calloc(m, sizeof *v)) ? DECOMP_ERR_NOMEM
                                                : DECOMP_OK;
  for (size_t i = 0; i < m && rc == DECOMP_OK; i++) {
    json_t *e = json_array_get(a, i);
    int64_t cost = (int64_t)json_number_value(json_object_get(e, "cost"));
    if ((double)cost >= share &&
        (rc = emit(job_id, stage, v, n, &run, &run_cost)) != DECOMP_OK)
      break;
    if (!run && !(run = json_array())) {
      rc = DECOMP_ERR_NOMEM;
      break;
    }
    json_array_append(run, json_object_get(e, "name"));
    run_cost += cost;
    if ((double)run_cost >= share)
      rc = emit(job_id, stage, v, n, &run, &run_cost);
  }
  if (rc == DECOMP_OK)
    rc = emit(job_id, stage, v, n, &run, &run_cost);
  json_decref(run);
  json_decref(a);
  if (rc != DECOMP_OK) {
    store_tasks_free(v, *n);
    *n = 0;
    return rc;
  }
  *out = v;
  return DECOMP_OK;
}

/* The names of t's layers (in *names, free() the array and the strings'
 * JSON holder with json_decref(*holder)). */
static int task_names(const store_task *t, json_t **holder,
                      const char ***names, size_t *n) {
  json_t *a = json_loads(t->layers ? t->layers : "[]", 0, NULL);
  size_t m = json_array_size(a);
  const char **v = calloc(m + 1, sizeof *v);
  if (!json_is_array(a) || !v) {
    json_decref(a);
    free(v);
    return DECOMP_ERR_INTERNAL;
  }
  for (size_t i = 0; i < m; i++)
    v[i] = json_string_value(json_array_get(a, i));
  *holder = a;
  *names = v;
  *n = m;
  return DECOMP_OK;
}

/* The records of a job's tasks of `stage`, read whole. */
static int read_records(store *s, const store_task *v, size_t n, int stage,
                        void ***bufs, size_t **lens, size_t *count,
                        char *msg, size_t msglen) {
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    m += v[i].stage == stage;
  void **b = calloc(m + 1, sizeof *b);
  size_t *l = calloc(m + 1, sizeof *l);
  int rc = b && l ? DECOMP_OK : DECOMP_ERR_NOMEM;
  size_t k = 0;
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    if (v[i].stage != stage)
      continue;
    if (!v[i].result[0]) {
      rc = DECOMP_ERR_INTERNAL;
      snprintf(msg, msglen, "task %s/%d has no record",
               store_task_stage_name(stage), v[i].index);
      break;
    }
    char *buf = NULL;
    rc = store_blob_read(s, v[i].result, RECORD_MAX, &buf, &l[k]);
    if (rc != DECOMP_OK)
      snprintf(msg, msglen, "the record of task %s/%d: %s",
               store_task_stage_name(stage), v[i].index, store_errmsg());
    else
      b[k++] = buf;
  }
  if (rc != DECOMP_OK) {
    for (size_t i = 0; b && i < k; i++)
      free(b[i]);
    free(b);
    free(l);
    return rc;
  }
  *bufs = b;
  *lens = l;
  *count = k;
  return DECOMP_OK;
}

static void free_records(void **b, size_t *l, size_t n) {
  for (size_t i = 0; b && i < n; i++)
    free(b[i]);
  free(b);
  free(l);
}

/* The plan's record of a job whose tasks are `v`. */
static int read_plan(store *s, const store_task *v, size_t n, void **plan,
                     size_t *len, char *msg, size_t msglen) {
  void **b = NULL;
  size_t *l = NULL, k = 0;
  int rc = read_records(s, v, n, STORE_TASK_PLAN, &b, &l, &k, msg, msglen);
  if (rc == DECOMP_OK && k != 1) {
    rc = DECOMP_ERR_INTERNAL;
    snprintf(msg, msglen, "the job has %zu plans", k);
  }
  if (rc != DECOMP_OK) {
    free_records(b, l, k);
    return rc;
  }
  *plan = b[0];
  *len = l[0];
  free(b);
  free(l);
  return DECOMP_OK;
}

/* The record of task t (the engine's decomp_task_* for its stage). */
static int task_record(store *s, job_inputs *in, const store_task *t,
                       void **out, size_t *len, char *msg, size_t msglen) {
  store_task *v = NULL;
  size_t n = 0;
  json_t *holder = NULL;
  const char **names = NULL;
  size_t nn = 0;
  void **b = NULL;
  size_t *l = NULL, k = 0;
  void *plan = NULL;
  size_t plan_len = 0;
  int rc = DECOMP_OK;
  if (t->stage != STORE_TASK_SPECTRA &&
      (rc = store_job_tasks(s, t->job_id, &v, &n)) != DECOMP_OK) {
    snprintf(msg, msglen, "the job's tasks: %s", store_errmsg());
    return rc;
  }
  if ((rc = task_names(t, &holder, &names, &nn)) != DECOMP_OK) {
    snprintf(msg, msglen, "task %s/%d: its layers are not a list",
             store_task_stage_name(t->stage), t->index);
    goto done;
  }
  switch (t->stage) {
  case STORE_TASK_SPECTRA:
    rc = decomp_task_spectra(in->ctx, in->w, in->spec, in->pol, &in->opts,
                             names, nn, out, len);
    break;
  case STORE_TASK_PLAN:
    if ((rc = read_records(s, v, n, STORE_TASK_SPECTRA, &b, &l, &k, msg,
                           msglen)) != DECOMP_OK)
      goto done;
    rc = decomp_task_plan(in->ctx, in->w, in->spec, in->pol, &in->opts,
                          (const void *const *)b, l, k, out, len);
    /* Read here once, by the one plan task: no copy kept (an object
     * store's; nothing to do for a folder). */
    for (size_t i = 0; i < n; i++)
      if (v[i].stage == STORE_TASK_SPECTRA && v[i].result[0])
        store_blob_drop_copy(s, v[i].result);
    break;
  case STORE_TASK_FACTORS:
    if ((rc = read_plan(s, v, n, &plan, &plan_len, msg, msglen)) !=
        DECOMP_OK)
      goto done;
    rc = decomp_task_factors(in->ctx, in->w, in->spec, in->pol, &in->opts,
                             plan, plan_len, names, nn, out, len);
    break;
  default:
    rc = DECOMP_ERR_INTERNAL;
    snprintf(msg, msglen, "a task of stage %d", t->stage);
    goto done;
  }
  if (rc != DECOMP_OK)
    snprintf(msg, msglen, "%s", decomp_errmsg(in->ctx));
done:
  free(plan);
  free_records(b, l, k);
  free(names);
  json_decref(holder);
  store_tasks_free(v, n);
  return rc;
}

/* Run the claimed task t of r->job with the job's inputs: its record
 * made, stored and the task finished; on failure the task is given back
 * (shutdown, cancel, a lost lease) or failed with *msg. */
static int run_task(struct run *r, job_inputs *in, const store_task *t) {
  worker_pool *p = r->p;
  store *s = p->s;
  char msg[1200] = "", path[4200], digest[STORE_DIGEST_LEN];
  void *rec = NULL;
  size_t len = 0;
  int64_t size = 0;
  double t0 = now_s();
  const store_task *saved = r->task;
  r->task = t;
  LOG(LOG_INFO, "worker", t->job_id,
      "event=task_start stage=%s index=%d attempt=%d layers=%s",
      store_task_stage_name(t->stage), t->index, t->attempts,
      log_q(t->layers ? t->layers : "[]"));
  int rc = task_record(s, in, t, &rec, &len, msg, sizeof msg);
  snprintf(path, sizeof path, "%s/%s-task-%d-%d.rec", store_tmp_dir(s),
           t->job_id, t->stage, t->index);
  if (rc == DECOMP_OK && (rc = worker_write_file(path, rec, len)) !=
                             DECOMP_OK)
    snprintf(msg, sizeof msg, "saving the task's record: %s",
             decomp_strerror(rc));
  if (rc == DECOMP_OK &&
      (rc = store_blob_hash_file(path, digest, &size)) != DECOMP_OK)
    snprintf(msg, sizeof msg, "hashing the task's record: %s",
             store_errmsg());
  if (rc == DECOMP_OK &&
      (rc = store_task_finish(s, t, path, digest, size)) != DECOMP_OK)
    snprintf(msg, sizeof msg, "%s", store_errmsg());
  unlink(path); /* moved away on success */
  decomp_free(rec);
  const char *end = "done";
  if (rc == DECOMP_ERR_CANCELLED || rc == DECOMP_ERR_CONFLICT) {
    /* Stopping, the job cancelled, or the task no longer ours: back to
     * the queue (a no-op when another node holds it now). */
    end = "released";
    if (store_task_release(s, t) != DECOMP_OK)
      LOG(LOG_WARN, "worker", t->job_id, "event=task_release_failed error=%s",
          log_q(store_errmsg()));
  } else if (rc != DECOMP_OK) {
    end = "failed";
    char shown[sizeof msg];
    worker_scrub(p, msg[0] ? msg : decomp_strerror(rc), shown, sizeof shown);
    if (store_task_fail(s, t, rc, shown) != DECOMP_OK)
      LOG(LOG_ERROR, "worker", t->job_id, "event=task_fail_not_saved error=%s",
          log_q(store_errmsg()));
  }
  LOG(rc == DECOMP_OK || rc == DECOMP_ERR_CANCELLED ? LOG_INFO : LOG_WARN,
      "worker", t->job_id,
      "event=task_end stage=%s index=%d state=%s seconds=%.3f bytes=%lld "
      "code=%s%s%s",
      store_task_stage_name(t->stage), t->index, end, now_s() - t0,
      (long long)size, decomp_error_code(rc), msg[0] ? " error=" : "",
      msg[0] ? log_q(msg) : "");
  r->task = saved;
  return rc;
}

int spread_task_next(worker_pool *p, bool busy) {
  store *s = p->s;
  store_task t;
  int rc = store_task_claim(s, NULL, &t);
  if (rc != DECOMP_OK)
    return rc;
  if (!busy)
    atomic_fetch_add(&p->running, 1);
  store_job job;
  job_inputs in;
  char msg[1200] = "";
  struct run r = {.p = p, .job = &job, .task = &t};
  rc = store_job_get(s, t.job_id, true, &job);
  if (rc != DECOMP_OK) {
    /* Deleted since: nothing to run it for. */
    store_task_release(s, &t);
    store_task_clear(&t);
    return DECOMP_OK;
  }
  rc = job_inputs_open(&r, &in, msg, sizeof msg);
  if (rc == DECOMP_OK) {
    run_task(&r, &in, &t);
    job_inputs_close(&in);
  } else {
    char shown[sizeof msg];
    worker_scrub(p, msg, shown, sizeof shown);
    if (store_task_fail(s, &t, rc, shown) != DECOMP_OK)
      LOG(LOG_ERROR, "worker", t.job_id, "event=task_fail_not_saved error=%s",
          log_q(store_errmsg()));
  }
  if (!busy)
    atomic_fetch_sub(&p->running, 1);
  store_job_clear(&job);
  store_task_clear(&t);
  return DECOMP_OK;
}

/* Until every task of `stage` is done: run this job's tasks here while
 * there are some to claim, wait for the others' otherwise. *tasks (free
 * with store_tasks_free) gets the job's tasks then. */
static int drive(struct run *r, job_inputs *in, int stage, store_task **tasks,
                 size_t *ntasks, char *msg, size_t msglen) {
  worker_pool *p = r->p;
  store *s = p->s;
  for (;;) {
    if (atomic_load(&p->stopping))
      return DECOMP_ERR_CANCELLED;
    bool yes = false;
    if (store_job_cancel_requested(s, r->job->id, &yes) == DECOMP_OK && yes) {
      r->cancelled = true;
      return DECOMP_ERR_CANCELLED;
    }
    unsigned long seen = worker_wake_gen(p);
    store_task *v = NULL;
    size_t n = 0, total = 0, done = 0;
    int rc = store_job_tasks(s, r->job->id, &v, &n);
    if (rc != DECOMP_OK) {
      snprintf(msg, msglen, "the job's tasks: %s", store_errmsg());
      return rc;
    }
    for (size_t i = 0; i < n; i++) {
      if (v[i].stage != stage)
        continue;
      total++;
      done += v[i].state == STORE_TASK_DONE;
      if (v[i].state == STORE_TASK_FAILED) {
        int err = decomp_error_from_code(v[i].error_code);
        snprintf(msg, msglen, "task %s/%d (layers %s) on node %s: %s",
                 store_task_stage_name(stage), v[i].index, v[i].layers,
                 v[i].node, v[i].error_message ? v[i].error_message : "");
        store_tasks_free(v, n);
        return err > 0 ? err : DECOMP_ERR_INTERNAL;
      }
    }
    if (done == total) {
      *tasks = v;
      *ntasks = n;
      return DECOMP_OK;
    }
    store_tasks_free(v, n);
    store_task t;
    rc = store_task_claim(s, r->job->id, &t);
    if (rc == DECOMP_OK) {
      run_task(r, in, &t);
      store_task_clear(&t);
      if (r->cancelled)
        return DECOMP_ERR_CANCELLED;
      continue;
    }
    /* None of ours to run: another job's, rather than wait idle. */
    if (rc == DECOMP_ERR_NOT_FOUND &&
        (rc = spread_task_next(p, true)) == DECOMP_OK)
      continue;
    if (rc != DECOMP_ERR_NOT_FOUND)
      LOG(LOG_WARN, "worker", r->job->id, "event=task_claim_failed error=%s",
          log_q(store_errmsg()));
    worker_wait(p, seen, 1000);
  }
}

/* Add a stage's tasks from the engine's list of its layers. */
static int add_stage(struct run *r, int stage, const char *layers,
                     char *msg, size_t msglen) {
  store_task *v = NULL;
  size_t n = 0;
  int rc = group_layers(r->job->id, stage, layers,
                        TASKS_PER_WORKER * workers_alive(r->p), &v, &n);
  if (rc != DECOMP_OK) {
    snprintf(msg, msglen, "grouping the layers into tasks: %s",
             decomp_strerror(rc));
    return rc;
  }
  if (n > 0 && (rc = store_job_tasks_add(r->p->s, r->job->id, v, n)) !=
                   DECOMP_OK)
    snprintf(msg, msglen, "adding the %s tasks: %s",
             store_task_stage_name(stage), store_errmsg());
  if (rc == DECOMP_OK)
    LOG(LOG_INFO, "worker", r->job->id, "event=tasks_added stage=%s tasks=%zu",
        store_task_stage_name(stage), n);
  store_tasks_free(v, n);
  return rc;
}

/* The .pth's `_metadata`: a safetensors file keeps torch's (objects) as
 * their JSON texts; put them back as objects when the input's was torch's,
 * as a single run's result carries it (a safetensors input's map of
 * strings stays as it is). */
static int torch_metadata(decomp_weights *out, const decomp_weights *in) {
  const char *src = decomp_weights_metadata(in);
  const char *got = decomp_weights_metadata(out);
  json_t *a = src ? json_loads(src, 0, NULL) : NULL;
  bool torch = json_is_object(a) && json_object_size(a) > 0;
  const char *key;
  json_t *val;
  json_object_foreach(a, key, val) torch = torch && json_is_object(val);
  json_decref(a);
  if (!torch || !got)
    return DECOMP_OK;
  json_t *m = json_loads(got, 0, NULL), *dst = json_object();
  int rc = json_is_object(m) && dst ? DECOMP_OK : DECOMP_ERR_INTERNAL;
  json_object_foreach(m, key, val) {
    json_t *o = json_is_string(val)
                    ? json_loads(json_string_value(val), 0, NULL)
                    : NULL;
    if (!json_is_object(o) || json_object_set_new(dst, key, o)) {
      json_decref(o);
      rc = DECOMP_ERR_INTERNAL;
      break;
    }
  }
  char *text = rc == DECOMP_OK ? json_dumps(dst, JSON_COMPACT) : NULL;
  if (rc == DECOMP_OK)
    rc = text ? decomp_weights_set_metadata(out, text) : DECOMP_ERR_NOMEM;
  free(text);
  json_decref(dst);
  json_decref(m);
  return rc;
}

/* Write the artifacts from the plan and the stage-3 records into `dir`:
 * the engine's files (a sharded model's shards and index; otherwise the
 * one safetensors file and, from it, the .pth); *files their names. */
static int assemble(struct run *r, job_inputs *in, const store_task *v,
                    size_t n, const char *dir, char **info, char **files,
                    char *msg, size_t msglen) {
  store *s = r->p->s;
  void *plan = NULL;
  size_t plan_len = 0, k = 0;
  char(*pbuf)[4200] = calloc(n + 1, sizeof *pbuf);
  const char **paths = calloc(n + 1, sizeof *paths);
  decomp_weights *out = NULL;
  int rc = pbuf && paths ? DECOMP_OK : DECOMP_ERR_NOMEM;
  if (rc == DECOMP_OK)
    rc = read_plan(s, v, n, &plan, &plan_len, msg, msglen);
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    if (v[i].stage != STORE_TASK_FACTORS)
      continue;
    if ((rc = store_blob_path(s, v[i].result, pbuf[k], sizeof pbuf[k])) !=
        DECOMP_OK)
      snprintf(msg, msglen, "the record of task factors/%d: %s", v[i].index,
               store_errmsg());
    paths[k] = pbuf[k];
    k++;
  }
  decomp_save_options save = {0};
  if (in->sharded) {
    save.sharded = true;
    save.shard_bytes = r->job->shard_bytes > 0 ? (uint64_t)r->job->shard_bytes
                                               : r->p->shard_bytes;
  } else {
    save.single_name = DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS;
    save.shard_bytes = UINT64_MAX; /* one file, as decomp_weights_save */
  }
  if (rc == DECOMP_OK &&
      (rc = decomp_task_assemble_files(in->ctx, in->w, in->spec, in->pol,
                                       &in->opts, plan, plan_len, paths, k,
                                       dir, &save, info, files)) !=
          DECOMP_OK)
    snprintf(msg, msglen, "%s", decomp_errmsg(in->ctx));
  if (rc == DECOMP_OK && !in->sharded) {
    /* The .pth beside it, from the file just written: the same tensors
     * in the same order as a single run's result. */
    char st[4400], pth[4400];
    snprintf(st, sizeof st, "%s/%s", dir, DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS);
    snprintf(pth, sizeof pth, "%s/%s", dir, DECOMP_ARTIFACT_WEIGHTS_PTH);
    if ((rc = decomp_weights_open(in->ctx, st, &out)) != DECOMP_OK ||
        (rc = torch_metadata(out, in->w)) != DECOMP_OK ||
        (rc = decomp_weights_save(in->ctx, out, pth, DECOMP_FORMAT_PTH)) !=
            DECOMP_OK)
      snprintf(msg, msglen, "saving %s: %s", DECOMP_ARTIFACT_WEIGHTS_PTH,
               decomp_errmsg(in->ctx));
    decomp_free(*files);
    *files = NULL;
    json_t *a = json_pack("[ss]", DECOMP_ARTIFACT_WEIGHTS_PTH,
                          DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS);
    if (rc == DECOMP_OK && !(*files = a ? json_dumps(a, JSON_COMPACT) : NULL))
      rc = DECOMP_ERR_NOMEM;
    json_decref(a);
  }
  decomp_weights_free(out);
  free(plan);
  free(pbuf);
  free(paths);
  return rc;
}

int spread_job(struct run *r, job_inputs *in, char *layers, char *msg,
               size_t msglen) {
  worker_pool *p = r->p;
  store *s = p->s;
  const char *id = r->job->id;
  char *info = NULL, *files = NULL;
  store_task *v = NULL;
  size_t n = 0;
  void *plan = NULL;
  size_t plan_len = 0;
  char dir[4200];
  bool made = false;
  int rc = store_job_tasks_begin(s, id);
  if (rc != DECOMP_OK) {
    snprintf(msg, msglen, "the job's tasks: %s", store_errmsg());
    goto done;
  }
  /* Stage 1: the spectra. */
  if ((rc = add_stage(r, STORE_TASK_SPECTRA, layers, msg, msglen)) !=
          DECOMP_OK ||
      (rc = drive(r, in, STORE_TASK_SPECTRA, &v, &n, msg, msglen)) !=
          DECOMP_OK)
    goto done;
  store_tasks_free(v, n);
  v = NULL;
  n = 0;
  /* Stage 2: the plan, one task. */
  char none[] = "[]";
  store_task pt = {.stage = STORE_TASK_PLAN, .index = 0, .layers = none};
  snprintf(pt.job_id, sizeof pt.job_id, "%s", id);
  if ((rc = store_job_tasks_add(s, id, &pt, 1)) != DECOMP_OK) {
    snprintf(msg, msglen, "adding the plan task: %s", store_errmsg());
    goto done;
  }
  if ((rc = drive(r, in, STORE_TASK_PLAN, &v, &n, msg, msglen)) != DECOMP_OK)
    goto done;
  /* Stage 3: the factors of the layers the plan decomposes. */
  if ((rc = read_plan(s, v, n, &plan, &plan_len, msg, msglen)) != DECOMP_OK)
    goto done;
  store_tasks_free(v, n);
  v = NULL;
  n = 0;
  decomp_free(layers);
  layers = NULL;
  if ((rc = decomp_task_layers(in->ctx, in->w, in->spec, in->pol, &in->opts,
                               plan, plan_len, &layers)) != DECOMP_OK) {
    snprintf(msg, msglen, "%s", decomp_errmsg(in->ctx));
    goto done;
  }
  if ((rc = add_stage(r, STORE_TASK_FACTORS, layers, msg, msglen)) !=
          DECOMP_OK ||
      (rc = drive(r, in, STORE_TASK_FACTORS, &v, &n, msg, msglen)) !=
          DECOMP_OK)
    goto done;
  /* The artifacts. */
  snprintf(dir, sizeof dir, "%s/%s-out", store_tmp_dir(s), id);
  worker_rm_folder(dir); /* what an attempt before a crash left */
  if (mkdir(dir, 0750) != 0) {
    rc = DECOMP_ERR_IO;
    snprintf(msg, msglen, "work folder: %s", strerror(errno));
    goto done;
  }
  made = true;
  double t0 = now_s();
  if ((rc = assemble(r, in, v, n, dir, &info, &files, msg, msglen)) !=
      DECOMP_OK)
    goto done;
  rc = worker_commit_outputs(p, r->job, dir, files, info, msg, msglen);
  LOG(LOG_INFO, "worker", id, "event=assembled seconds=%.3f ok=%s",
      now_s() - t0, rc == DECOMP_OK ? "yes" : "no");
done:
  if (made)
    worker_rm_folder(dir);
  store_tasks_free(v, n);
  free(plan);
  decomp_free(layers);
  decomp_free(info);
  decomp_free(files);
  return rc;
}
