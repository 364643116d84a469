/* worker_int.h — what the pool (worker.c) and its spreading of one job
 * over many nodes (spread.c) share, and no one else sees. */
#ifndef DECOMPD_SERVER_WORKER_INT_H
#define DECOMPD_SERVER_WORKER_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "decomp/decomp.h"
#include "queue.h"
#include "worker.h"

struct worker_pool {
  store *s;
  int n;
  int blas_threads; /* cores each decomposition may use */
  double ts_seconds;     /* TorchScript reader's time limit */
  uint64_t ts_memory;    /* its address-space limit; 0: the default */
  /* Absolute paths: the reader runs in its work folder, so a relative
   * data dir or DECOMPD_TS_READER would not resolve there. */
  char ts_tmpdir[PATH_MAX];
  char ts_reader[PATH_MAX];
  uint64_t shard_bytes; /* sharded outputs' shard size (0: the engine's) */
  atomic_bool spread;   /* spread jobs over tasks (worker_pool_set_spread) */
  pthread_t *threads;
  atomic_bool stopping;
  atomic_int running; /* workers busy now (a job or a task each) */
  /* Woken through the store (store_set_wake) when a job or a task is
   * queued or a task ends, here or on another node sharing the queue, and
   * by worker_pool_stop. */
  pthread_mutex_t wake_mu;
  pthread_cond_t wake_cv;
  unsigned long wake_gen; /* guarded by wake_mu */
};

/* The wake-up generation now; wait until it moves on or `ms` pass. */
unsigned long worker_wake_gen(worker_pool *p);
void worker_wait(worker_pool *p, unsigned long seen, int ms);

/* A worker's current work: a job (the whole of it, or as its spreading's
 * coordinator) or one task of a job. */
struct run {
  worker_pool *p;
  store_job *job;         /* with spec and policy */
  const store_task *task; /* the task being run, or NULL */
  bool cancelled;         /* by the user, not by shutdown */
  unsigned polls;         /* cancel polls while the TorchScript reader runs */
};

/* What the engine needs for a job: its model's weights (mapped), spec,
 * policy, calibration and profile, and the options every run of it gets
 * (progress reported through `r`). */
typedef struct job_inputs {
  decomp_ctx *ctx;
  store_model m;
  bool ts, sharded;       /* a TorchScript archive; a sharded checkpoint */
  decomp_weights *w, *cal;
  decomp_spec *spec;
  decomp_policy *pol;
  char *profile;
  decomp_options opts;
} job_inputs;

/* Open them for r->job; on failure *msg says what (and what is open is
 * closed). */
int job_inputs_open(struct run *r, job_inputs *in, char *msg, size_t msglen);
void job_inputs_close(job_inputs *in);

/* Write `len` bytes to `path` and fsync it. */
int worker_write_file(const char *path, const void *buf, size_t len);
/* Remove the folder `dir` and the files in it. */
void worker_rm_folder(const char *dir);
/* `in` without server paths. */
void worker_scrub(const worker_pool *p, const char *in, char *out,
                  size_t outlen);
/* Hash, place and commit as the job's artifacts the files `names` (a JSON
 * array the engine gave, in `dir`) and decompose_info.json (written there
 * from `info`); the job's peak RSS from the info. */
int worker_commit_outputs(worker_pool *p, const store_job *job,
                          const char *dir, const char *names,
                          const char *info, char *msg, size_t msglen);

/* ---- spread.c ---- */

/* Whether the job is spread over tasks: the store has them, the pool
 * spreads, the model is not a TorchScript archive (whose reader would run
 * again for every task), and its layers are worth it (the engine's cost
 * model, the same on every node and every attempt). When it is, *layers
 * gets the engine's list of the stage-1 layers (decomp_task_layers), for
 * spread_job, which frees it. */
bool spread_wanted(const worker_pool *p, job_inputs *in, char **layers);
/* Run r->job as its coordinator: its tasks added stage by stage, run here
 * and on every node, the artifacts assembled from their records and
 * committed (the job succeeded). The caller ends the job otherwise. */
int spread_job(struct run *r, job_inputs *in, char *layers, char *msg,
               size_t msglen);
/* Claim and run one task of any job: DECOMP_ERR_NOT_FOUND when there is
 * none (DECOMP_OK once one ran, whatever its end). `busy`: the calling
 * worker counts in the pool's running already (a coordinator). */
int spread_task_next(worker_pool *p, bool busy);

#endif
