/* client_json.h — libdecompclient internals that speak jansson: job objects,
 * error answers and the cache's job records. Not installed. */
#ifndef DECOMP_CLIENT_JSON_H
#define DECOMP_CLIENT_JSON_H

#include <jansson.h>

#include "client_internal.h"

/* Fill `j` (cleared first) from a server job object. */
int client_job_from_json(decomp_client *c, json_t *o, decomp_client_job *j);

/* The code for an error answer (401/403/404/409 by status, otherwise the
 * problem+json code when known, else SERVER), its message on c. */
int client_http_error(decomp_client *c, const char *method, const char *path,
                      const ct_response *rs);

decomp_job_state client_state_from_name(const char *s);

/* Load CACHE/jobs/<id>.json (OFFLINE_MISS when absent, BAD_JSON when
 * unreadable). *out is the whole record. */
int client_job_record_load(decomp_client *c, const char *id, json_t **out);

#endif
