/* metrics.c — in-memory counters for /metrics. Request counters are keyed by
 * (route pattern, method, status): route patterns, never raw paths, so the
 * label set stays bounded whatever clients send. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "node.h"
#include "queue.h"

#define MAX_SERIES 256

struct series {
  const char *route; /* static strings (the route table's patterns) */
  char method[8];
  int status;
  uint64_t count;
};

static const double BUCKETS[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,   2,
                                  5,    10,   30,  60,   120, 300, 900};
#define NBUCKETS (sizeof BUCKETS / sizeof BUCKETS[0])

static struct {
  pthread_mutex_t mu;
  struct series req[MAX_SERIES];
  size_t nreq;
  uint64_t bytes_in, bytes_out;
  uint64_t layer_buckets[NBUCKETS];
  uint64_t layer_count;
  double layer_sum;
  uint64_t finished[3]; /* succeeded, failed, cancelled */
} M = {.mu = PTHREAD_MUTEX_INITIALIZER};

void metrics_request(const char *route, const char *method, int status,
                     uint64_t bytes_in, uint64_t bytes_out) {
  pthread_mutex_lock(&M.mu);
  M.bytes_in += bytes_in;
  M.bytes_out += bytes_out;
  size_t i;
  for (i = 0; i < M.nreq; i++)
    if (M.req[i].route == route && M.req[i].status == status &&
        strcmp(M.req[i].method, method) == 0)
      break;
  if (i == M.nreq && M.nreq < MAX_SERIES) {
    M.req[i].route = route;
    snprintf(M.req[i].method, sizeof M.req[i].method, "%s", method);
    M.req[i].status = status;
    M.req[i].count = 0;
    M.nreq++;
  }
  if (i < M.nreq)
    M.req[i].count++;
  pthread_mutex_unlock(&M.mu);
}

void metrics_layer(double seconds) {
  pthread_mutex_lock(&M.mu);
  for (size_t i = 0; i < NBUCKETS; i++)
    if (seconds <= BUCKETS[i])
      M.layer_buckets[i]++;
  M.layer_count++;
  M.layer_sum += seconds;
  pthread_mutex_unlock(&M.mu);
}

void metrics_job_finished(const char *state) {
  static const char *const names[] = {"succeeded", "failed", "cancelled"};
  pthread_mutex_lock(&M.mu);
  for (int i = 0; i < 3; i++)
    if (strcmp(state, names[i]) == 0)
      M.finished[i]++;
  pthread_mutex_unlock(&M.mu);
}

struct buf {
  char *p;
  size_t len, cap;
  int oom;
};

static void bprintf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...) {
  if (b->oom)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap * 2 + (size_t)n;
    char *np = realloc(b->p, cap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
}

char *metrics_render(store *s, size_t *len) {
  struct buf b = {malloc(8192), 0, 8192, 0};
  if (!b.p)
    return NULL;
  b.p[0] = '\0';
  int64_t counts[STORE_JOB_STATE_COUNT];
  int have_counts = s && store_job_counts(s, counts) == DECOMP_OK;

  pthread_mutex_lock(&M.mu);
  bprintf(&b, "# HELP decompd_http_requests_total HTTP requests answered.\n"
              "# TYPE decompd_http_requests_total counter\n");
  for (size_t i = 0; i < M.nreq; i++)
    bprintf(&b,
            "decompd_http_requests_total{route=\"%s\",method=\"%s\","
            "status=\"%d\"} %llu\n",
            M.req[i].route, M.req[i].method, M.req[i].status,
            (unsigned long long)M.req[i].count);
  bprintf(&b,
          "# HELP decompd_http_received_bytes_total Request body bytes read.\n"
          "# TYPE decompd_http_received_bytes_total counter\n"
          "decompd_http_received_bytes_total %llu\n"
          "# HELP decompd_http_sent_bytes_total Response body bytes sent.\n"
          "# TYPE decompd_http_sent_bytes_total counter\n"
          "decompd_http_sent_bytes_total %llu\n",
          (unsigned long long)M.bytes_in, (unsigned long long)M.bytes_out);
  bprintf(&b, "# HELP decompd_layer_seconds Time to decompose one layer.\n"
              "# TYPE decompd_layer_seconds histogram\n");
  for (size_t i = 0; i < NBUCKETS; i++)
    bprintf(&b, "decompd_layer_seconds_bucket{le=\"%g\"} %llu\n", BUCKETS[i],
            (unsigned long long)M.layer_buckets[i]);
  bprintf(&b,
          "decompd_layer_seconds_bucket{le=\"+Inf\"} %llu\n"
          "decompd_layer_seconds_sum %.6f\n"
          "decompd_layer_seconds_count %llu\n",
          (unsigned long long)M.layer_count, M.layer_sum,
          (unsigned long long)M.layer_count);
  bprintf(&b,
          "# HELP decompd_jobs_finished_total Jobs finished by this process.\n"
          "# TYPE decompd_jobs_finished_total counter\n"
          "decompd_jobs_finished_total{state=\"succeeded\"} %llu\n"
          "decompd_jobs_finished_total{state=\"failed\"} %llu\n"
          "decompd_jobs_finished_total{state=\"cancelled\"} %llu\n",
          (unsigned long long)M.finished[0], (unsigned long long)M.finished[1],
          (unsigned long long)M.finished[2]);
  pthread_mutex_unlock(&M.mu);

  if (have_counts) {
    bprintf(&b, "# HELP decompd_jobs Jobs in the index by state.\n"
                "# TYPE decompd_jobs gauge\n");
    for (int i = 0; i < STORE_JOB_STATE_COUNT; i++)
      bprintf(&b, "decompd_jobs{state=\"%s\"} %lld\n", store_job_state_name(i),
              (long long)counts[i]);
    bprintf(&b,
            "# HELP decompd_queue_depth Jobs waiting for a worker.\n"
            "# TYPE decompd_queue_depth gauge\n"
            "decompd_queue_depth %lld\n",
            (long long)counts[STORE_JOB_QUEUED]);
  }
  /* Every node of the index (several on a shared PostgreSQL index), by
   * its last heartbeat (node.c): node ids are letters, digits, '.', '_'
   * and '-', safe in a label. */
  store_node *nodes = NULL;
  size_t nn = 0;
  if (s && store_node_list(s, &nodes, &nn) == DECOMP_OK) {
    int64_t now = store_now_ms();
    bprintf(&b, "# HELP decompd_node_workers Decomposition workers of each "
                "node.\n# TYPE decompd_node_workers gauge\n");
    for (size_t i = 0; i < nn; i++)
      bprintf(&b, "decompd_node_workers{node=\"%s\"} %d\n", nodes[i].id,
              nodes[i].workers);
    bprintf(&b, "# HELP decompd_node_running Jobs each node's workers hold "
                "(leased, on a shared index).\n"
                "# TYPE decompd_node_running gauge\n");
    for (size_t i = 0; i < nn; i++)
      bprintf(&b, "decompd_node_running{node=\"%s\"} %d\n", nodes[i].id,
              nodes[i].running);
    bprintf(&b, "# HELP decompd_node_heartbeat_age_seconds Time since each "
                "node's last heartbeat.\n"
                "# TYPE decompd_node_heartbeat_age_seconds gauge\n");
    for (size_t i = 0; i < nn; i++)
      bprintf(&b, "decompd_node_heartbeat_age_seconds{node=\"%s\"} %.3f\n",
              nodes[i].id, (double)(now - nodes[i].heartbeat_at) / 1000.0);
    bprintf(&b, "# HELP decompd_node_alive 1 while a node's heartbeat is "
                "recent (15 s).\n# TYPE decompd_node_alive gauge\n");
    for (size_t i = 0; i < nn; i++)
      bprintf(&b, "decompd_node_alive{node=\"%s\"} %d\n", nodes[i].id,
              now - nodes[i].heartbeat_at <= NODE_ALIVE_MS);
    free(nodes);
  }
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}
