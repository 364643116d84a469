/* worker.h — the pool of decomposition workers.
 *
 * Each worker claims the oldest queued job, runs the engine on it, records
 * each finished layer, and stores the artifacts. Workers × BLAS threads
 * never exceed the cores. Cancellation and shutdown take effect at the next
 * layer boundary (the engine's progress callback answers "stop"): a
 * cancelled job ends `cancelled`, a job interrupted by shutdown goes back to
 * the queue and runs again at the next start.
 *
 * A job on a TorchScript model reads the archive first, in the sandboxed
 * reader process (decomp/torchscript.h); cancellation and shutdown kill the
 * reader within about 250 ms. Its layer spec is the archive's unless the
 * job carries one. */
#ifndef DECOMPD_SERVER_WORKER_H
#define DECOMPD_SERVER_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

typedef struct worker_pool worker_pool;

/* Limits of a job's TorchScript reader (decomp_ts_limits). */
typedef struct worker_ts_limits {
  double time_seconds;   /* wall clock and CPU; <= 0: 120 */
  uint64_t memory_bytes; /* address space; 0: the library's default */
} worker_ts_limits;

/* Start `workers` threads (0: one per core) with `blas_threads` BLAS threads
 * each (0: cores / workers, at least 1). `ts` may be NULL (defaults). Idle
 * workers poll the queue every second, and the store wakes them at once
 * when a job is queued (store_set_wake: the pool is the handle's one
 * wake-up until worker_pool_stop). */
int worker_pool_start(store *s, int workers, int blas_threads,
                      const worker_ts_limits *ts, worker_pool **out);
/* The output shard size of jobs on sharded models that were submitted
 * without one (config shard_bytes); the engine's default until set. */
void worker_pool_set_shard_bytes(worker_pool *p, uint64_t bytes);
/* Whether jobs are spread over tasks that every node's workers claim
 * (config spread_jobs; true until set): only where the store has tasks
 * (a PostgreSQL index), and never for a TorchScript model. */
void worker_pool_set_spread(worker_pool *p, bool spread);
/* Stop: running jobs are requeued at their next layer boundary; joins the
 * threads. NULL is fine. */
void worker_pool_stop(worker_pool *p);
/* The TorchScript reader program jobs run: $DECOMPD_TS_READER, else the
 * installed one (decomp_torchscript_reader_path()). */
const char *worker_ts_reader(void);
/* Workers in the pool. */
int worker_pool_size(const worker_pool *p);
/* The pool's workers busy now, each with a job (or coordinating a spread
 * one) or a task. */
int worker_pool_running(worker_pool *p);

#endif
