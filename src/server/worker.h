/* worker.h — the pool of decomposition workers.
 *
 * Each worker claims the oldest queued job, runs the engine on it, records
 * each finished layer, and stores the artifacts. Workers × BLAS threads
 * never exceed the cores. Cancellation and shutdown take effect at the next
 * layer boundary (the engine's progress callback answers "stop"): a
 * cancelled job ends `cancelled`, a job interrupted by shutdown goes back to
 * the queue and runs again at the next start. */
#ifndef DECOMPD_SERVER_WORKER_H
#define DECOMPD_SERVER_WORKER_H

#include "store.h"

typedef struct worker_pool worker_pool;

/* Start `workers` threads (0: one per core) with `blas_threads` BLAS threads
 * each (0: cores / workers, at least 1). */
int worker_pool_start(store *s, int workers, int blas_threads,
                      worker_pool **out);
/* A job was queued: wake an idle worker (of the running pool, if any). */
void worker_pool_wake(void);
/* Stop: running jobs are requeued at their next layer boundary; joins the
 * threads. NULL is fine. */
void worker_pool_stop(worker_pool *p);
/* Workers in the pool. */
int worker_pool_size(const worker_pool *p);

#endif
