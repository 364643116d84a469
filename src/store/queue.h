/* queue.h — the persisted job queue, on the same handle as the store.
 *
 * A job moves queued → running → succeeded | failed | cancelled, and a
 * failed or cancelled one back to queued when retried. Workers
 * claim the oldest queued job atomically (store_job_claim), report each layer
 * (store_job_progress), and finish it (store_job_succeed/fail/cancelled) or put
 * it back (store_job_requeue) when the daemon stops. store_open() requeues
 * jobs a dead process left running. Same conventions as store.h.
 */
#ifndef DECOMPD_STORE_QUEUE_H
#define DECOMPD_STORE_QUEUE_H

#include "store.h"

enum store_job_state {
  STORE_JOB_QUEUED = 0,
  STORE_JOB_RUNNING = 1,
  STORE_JOB_SUCCEEDED = 2,
  STORE_JOB_FAILED = 3,
  STORE_JOB_CANCELLED = 4,
};
#define STORE_JOB_STATE_COUNT 5
const char *store_job_state_name(int state);
int store_job_state_from_name(const char *name); /* -1 when unknown */

typedef struct store_job {
  int64_t seq;              /* queue order; the list cursor */
  char id[24];              /* "j_" + 16 hex */
  char model_id[24];
  int state;                /* STORE_JOB_* */
  bool cancel_requested;
  int attempts;             /* times a worker claimed it */
  int64_t layers_total, layers_done;
  char error_code[48];      /* decomp_error_code() of a failure, or "" */
  char *error_message;      /* owned; NULL when none */
  char *spec;               /* owned; canonical spec JSON (with spec) */
  char *policy;             /* owned; canonical policy JSON (with spec) */
  char calibration[STORE_DIGEST_LEN]; /* the calibration's digest, "" none */
  char profile[STORE_DIGEST_LEN];     /* the latency profile's, "" none */
  int64_t created_at, started_at, finished_at; /* Unix ms; 0 = not yet */
  char current_layer[256];  /* the layer under way, or "" (running jobs) */
  char current_step[16];    /* "spectrum" or "factors" */
  double current_fraction;  /* the engine's estimate of that step done */
  int64_t shard_bytes;      /* output shard size asked for at submit (a
                               sharded model's job); 0: the daemon's */
  int64_t peak_rss_bytes;   /* the daemon's peak RSS when it finished (a
                               process-wide high-water mark); 0: unknown */
  char node[128];           /* the node that last claimed it (node_id), ""
                               when none has */
} store_job;

/* Free the owned strings of `j` (not `j` itself). */
void store_job_clear(store_job *j);

typedef struct store_job_layer {
  int64_t index;
  char name[256];
  int64_t rank, max_rank;   /* rank 0: left alone */
  double seconds;
  char skip_reason[256];    /* "" when decomposed */
} store_job_layer;

/* Queue a job unless one with the same `request_key` exists: *created says
 * which; `j` is filled with the stored row (id made here). `j->spec` and
 * `j->policy` are borrowed on input and replaced by owned copies. For a new
 * job, checked in the same transaction (so that no delete or replacement
 * slips in between): DECOMP_ERR_NOT_FOUND when model `j->model_id` does not
 * exist, DECOMP_ERR_CONFLICT when `j->calibration` (or `j->profile`) is
 * set and is not the model's attached calibration (profile); the job's row
 * then keeps those blobs. */
int store_job_submit(store *s, const char *request_key, store_job *j,
                     bool *created);
/* `with_spec`: also load spec and policy texts. */
int store_job_get(store *s, const char *id, bool with_spec, store_job *out);
/* Jobs newest first, `state` < 0 for all, seq < `before` (0: from the top),
 * at most `limit`; *out (free each with store_job_clear, then free()). */
int store_job_list(store *s, int state, int64_t before, int limit,
                   store_job **out, size_t *n);
int store_job_layers(store *s, const char *job_id, store_job_layer **out,
                     size_t *n);
/* Counts of jobs by state (for metrics). */
int store_job_counts(store *s, int64_t counts[STORE_JOB_STATE_COUNT]);

/* Claim the oldest queued job: it becomes running (attempts + 1, its old
 * layer rows dropped). DECOMP_ERR_NOT_FOUND when the queue is empty. */
int store_job_claim(store *s, store_job *out);
/* Record a finished layer and bump layers_done; sets layers_total. */
int store_job_progress(store *s, const char *job_id, int64_t total,
                    const store_job_layer *l);
/* Where a running job is inside a layer (`step` "spectrum" or "factors",
 * `fraction` of it done), with its layer count; a no-op unless the job is
 * running. A finished layer (store_job_progress) or a new claim resets
 * it. */
int store_job_current(store *s, const char *job_id, int64_t total,
                      const char *layer, const char *step, double fraction);
/* Whether cancellation was asked for. */
int store_job_cancel_requested(store *s, const char *job_id, bool *yes);
/* Record the peak RSS the engine reported for a job (its info summary's
 * peak_rss_bytes: the process's high-water mark so far). */
int store_job_set_peak_rss(store *s, const char *job_id, int64_t bytes);
/* Finish a running job with its artifacts: each file paths[i] (under
 * store_tmp_dir(), hashed by store_blob_hash_file into a[i].digest) moves
 * into the blob folder (dropped when the blob exists), the records of its
 * tasks (a spread job's) are collected, and the rows go into the index,
 * in one step under the store's own blob lock. A failure names its stage ("storing NAME: …",
 * "index: …"); the files not yet moved stay for the caller to remove. */
int store_job_succeed(store *s, const char *job_id, const store_artifact *a,
                      const char *const *paths, size_t n);
/* These three (a running job's end) get through on a full disk too, as
 * store_model_delete does: a job left running would hold its model. */
int store_job_fail(store *s, const char *job_id, int err, const char *message);
int store_job_cancelled(store *s, const char *job_id);
/* Put a running job back in the queue (the daemon is stopping). */
int store_job_requeue(store *s, const char *job_id);

/* Ask to cancel: a queued job becomes cancelled at once, a running one is
 * flagged for its worker. DECOMP_ERR_CONFLICT for a finished job. `out` gets
 * the row after the change. */
int store_job_cancel(store *s, const char *id, store_job *out);
/* Run a failed or cancelled job again: it goes back to the queue, behind
 * the jobs queued now, as a new attempt (its error, times and layer rows
 * cleared; `attempts` keeps counting) and *requeued is set.
 * DECOMP_ERR_CONFLICT for a succeeded job, a running one being cancelled,
 * or one whose model has been deleted (checked in the same transaction); a
 * queued or running job is left as it is (it is going to run). `out` gets
 * the row after the change. */
int store_job_retry(store *s, const char *id, store_job *out, bool *requeued);
/* Delete a finished job with its layers and artifact rows, and collect the
 * blobs it named (its artifacts, its calibration and profile) as
 * store_model_delete does, under the store's own blob lock; DECOMP_ERR_CONFLICT while queued or running. Works on
 * a full disk, as store_model_delete does. */
int store_job_delete(store *s, const char *id);

/* Have `fn(arg)` called whenever a job may have become claimable: a job
 * queued by store_job_submit or store_job_retry on this handle, and, where
 * several daemons share the queue (PostgreSQL), on any of them (their
 * commits are announced to every node). It is called from the thread that
 * queued the job or from the store's own listener thread, with a lock of
 * the store held: it must be quick and must not call the store (a worker
 * pool signals its condition variable). One callback per handle, replaced
 * by the next call; `fn` NULL removes it, and returns once no call of the
 * old one is under way. Jobs that come back by other ways (a lapsed lease)
 * are found by the workers' own polling. */
void store_set_wake(store *s, void (*fn)(void *arg), void *arg);


/* ---- one job over many nodes: its tasks ---------------------------------
 *
 * On a backend whose queue several nodes share (PostgreSQL), the worker
 * that claims a job (its coordinator, holding the job's lease) cuts it into
 * tasks that any node's workers claim: stage 1, a group of layers'
 * spectra; stage 2, the plan (every layer's rank, from all stage-1
 * records); stage 3, a group of layers' factors at the plan's ranks. Each
 * task is claimed on a lease of its own (renewed by the claiming node's
 * heartbeat, reclaimed by any node when it lapses: a node killed mid-task
 * loses only that task's work), and its record — the engine's
 * decomp_task_* output — is stored as a blob: one result per task, which a
 * re-run replaces. The coordinator assembles the artifacts from the
 * records once the last stage-3 task is done; a coordinator that dies
 * leaves its job to be claimed again, and the next one goes on from the
 * tasks done. The embedded backend runs a job whole (store_tasks_supported
 * is false, and the task calls answer DECOMP_ERR_INVALID_ARGUMENT, but
 * store_job_tasks: an empty list). */

enum store_task_stage {
  STORE_TASK_SPECTRA = 1,
  STORE_TASK_PLAN = 2,
  STORE_TASK_FACTORS = 3,
};
enum store_task_state {
  STORE_TASK_QUEUED = 0,
  STORE_TASK_RUNNING = 1,
  STORE_TASK_DONE = 2,
  STORE_TASK_FAILED = 3,
};
const char *store_task_stage_name(int stage); /* "spectra", "plan", "factors" */
const char *store_task_state_name(int state);

typedef struct store_task {
  char job_id[24];
  int stage;                 /* STORE_TASK_SPECTRA … */
  int index;                 /* within its stage, from 0 */
  char *layers;              /* owned: a JSON array of layer names ("[]"
                                for the plan) */
  int64_t cost;              /* Σ m·n·min(m,n) of its layers (balance) */
  int state;                 /* STORE_TASK_QUEUED … */
  int attempts;              /* times a worker claimed it */
  char node[128];            /* the node that last claimed it, "" none */
  char result[STORE_DIGEST_LEN]; /* its record's blob; "" until done, and
                                    again once the job has ended */
  int64_t result_size;
  char error_code[48];       /* a failed task's decomp_error_code() */
  char *error_message;       /* owned; NULL when none */
  int64_t started_at, finished_at; /* Unix ms; 0: not yet */
} store_task;

/* Free the owned strings of `t` (not `t`); of an array of n, and it. */
void store_task_clear(store_task *t);
void store_tasks_free(store_task *v, size_t n);

/* Whether this store spreads a job's work over tasks. */
bool store_tasks_supported(store *s);
/* The coordinator (holding the running job's lease) at its start: tasks a
 * finished attempt left (done once, their records dropped; failed) go back
 * to the queue, so that this attempt runs them again. */
int store_job_tasks_begin(store *s, const char *job_id);
/* The coordinator adds a stage's tasks (t[i].stage — one stage —, index,
 * layers, cost; the rest ignored), unless the stage has tasks already (an
 * earlier coordinator of this job added them): those are kept as they
 * are, whatever this call's grouping. DECOMP_ERR_CONFLICT when this node
 * no longer holds the job. Every node's idle workers are woken. */
int store_job_tasks_add(store *s, const char *job_id, const store_task *t,
                        size_t n);
/* A job's tasks by stage and index (*out NULL when none). */
int store_job_tasks(store *s, const char *job_id, store_task **out,
                    size_t *n);
/* Claim the next task (of the job `job_id`, or of any job when NULL): of
 * the oldest running job not being cancelled, the lowest stage, the
 * costliest first; a task whose lease has lapsed counts as queued.
 * DECOMP_ERR_NOT_FOUND when there is none. */
int store_task_claim(store *s, const char *job_id, store_task *out);
/* Finish a claimed task with its record: the file `path` (under
 * store_tmp_dir(), hashed into `digest`, `size` bytes) moves into the blob
 * store and the row names it, in one step under the blob lock; the record
 * it replaces, if any, is collected. DECOMP_ERR_CONFLICT (the new blob
 * collected) when this node no longer holds the task: its lease lapsed
 * and another node has it. Wakes the job's coordinator. */
int store_task_finish(store *s, const store_task *t, const char *path,
                      const char *digest, int64_t size);
/* A claimed task failed (the job's coordinator fails the job with it). */
int store_task_fail(store *s, const store_task *t, int err,
                    const char *message);
/* Give a claimed task back to the queue (this node is stopping, or its job
 * is being cancelled). */
int store_task_release(store *s, const store_task *t);
/* Whether a claimed task's worker must stop: its job is being cancelled
 * or has ended, or the task is no longer this node's. */
int store_task_cancel_requested(store *s, const store_task *t, bool *yes);
/* A job has ended: its tasks' records are dropped and collected (the rows
 * stay, naming who ran what, until the job is deleted). Nothing is dropped
 * while the job is queued, or running on another node's claim (a node
 * that lost its claim on it calls this too). store_job_succeed does it
 * before the job is marked succeeded. */
int store_job_tasks_clear(store *s, const char *job_id);

/* ---- copying a store into another (decompd store migrate; store.h says
 * how an import writes) ---- */

/* A job with what belongs to it. */
typedef struct store_job_record {
  store_job j;             /* the row, with spec and policy, as it is
                              written (state, attempts, error, times,
                              progress, calibration, profile, shard_bytes,
                              peak_rss_bytes; seq is the store's own) */
  const char *request_key; /* its request key (store_job_request_key) */
  const store_job_layer *layers;
  size_t nlayers;
  const store_artifact *artifacts; /* their blobs in the store already */
  size_t nartifacts;
} store_job_record;

/* DECOMP_ERR_NOT_FOUND when it is queued or running and its model is not
 * in the store (a finished job may have outlived its model), or a blob it
 * names is not; DECOMP_ERR_CONFLICT when another job (another id) has its
 * request key. A job imported queued may be claimed at once (the workers
 * are woken as for a submit). */
int store_job_import(store *s, const store_job_record *r, bool *created);
/* The request key of job `id` (64 hex); DECOMP_ERR_NOT_FOUND when there
 * is no such job. */
int store_job_request_key(store *s, const char *id, char key[65]);

#endif
