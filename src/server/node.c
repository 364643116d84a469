/* node.c — this daemon's row in the nodes table, beaten by a thread of
 * its own (node.h). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "decomp/decomp.h"
#include "log.h"
#include "node.h"

struct node_beat {
  store *s;
  worker_pool *pool;
  store_node row;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stopping; /* guarded by mu */
};

/* Write the row with the pool's figures as they are now. */
static void beat(node_beat *b, int running) {
  b->row.heartbeat_at = store_now_ms();
  b->row.running = running;
  if (store_node_beat(b->s, &b->row) != DECOMP_OK)
    LOG(LOG_WARN, "node", NULL, "event=heartbeat_failed node=%s error=%s",
        log_q(b->row.id), log_q(store_errmsg()));
}

static void *beat_main(void *arg) {
  node_beat *b = arg;
  pthread_mutex_lock(&b->mu);
  while (!b->stopping) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += NODE_BEAT_MS / 1000;
    while (!b->stopping &&
           pthread_cond_timedwait(&b->cv, &b->mu, &ts) != ETIMEDOUT)
      ;
    if (b->stopping)
      break;
    pthread_mutex_unlock(&b->mu);
    beat(b, worker_pool_running(b->pool));
    pthread_mutex_lock(&b->mu);
  }
  pthread_mutex_unlock(&b->mu);
  return NULL;
}

int node_start(store *s, const char *id, const char *address,
               worker_pool *pool, node_beat **out) {
  node_beat *b = calloc(1, sizeof *b);
  if (!b)
    return DECOMP_ERR_NOMEM;
  b->s = s;
  b->pool = pool;
  snprintf(b->row.id, sizeof b->row.id, "%s", id);
  snprintf(b->row.version, sizeof b->row.version, "%s", DECOMP_VERSION);
  snprintf(b->row.address, sizeof b->row.address, "%s", address);
  b->row.started_at = store_now_ms();
  b->row.workers = worker_pool_size(pool);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  beat(b, worker_pool_running(pool));
  if (pthread_create(&b->thread, NULL, beat_main, b) != 0) {
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
    return DECOMP_ERR_INTERNAL;
  }
  LOG(LOG_INFO, "node", NULL, "event=node_started node=%s address=%s "
      "workers=%d beat_ms=%d", log_q(id), log_q(address), b->row.workers,
      NODE_BEAT_MS);
  *out = b;
  return DECOMP_OK;
}

void node_stop(node_beat *b) {
  if (!b)
    return;
  pthread_mutex_lock(&b->mu);
  b->stopping = true;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(b->thread, NULL);
  /* the daemon is stopping: its workers are putting their jobs back */
  beat(b, 0);
  pthread_cond_destroy(&b->cv);
  pthread_mutex_destroy(&b->mu);
  free(b);
}
