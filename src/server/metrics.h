/* metrics.h — the daemon's counters and histograms, rendered on /metrics in
 * the Prometheus text format (version 0.0.4). Thread-safe. */
#ifndef DECOMPD_SERVER_METRICS_H
#define DECOMPD_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* One finished request: the route's pattern ("/v1/jobs/{id}", or "unmatched"),
 * its method, the status sent, body bytes received and sent. */
void metrics_request(const char *route, const char *method, int status,
                     uint64_t bytes_in, uint64_t bytes_out);
/* One layer finished by a worker in `seconds`. */
void metrics_layer(double seconds);
/* A job finished in `state` ("succeeded", "failed", "cancelled"). */
void metrics_job_finished(const char *state);

/* The whole exposition (malloc'd text), with queue depth and jobs by state
 * read from `s`. NULL when out of memory. */
char *metrics_render(store *s, size_t *len);

#endif
