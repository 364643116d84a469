/* service.h — what the API does, between the HTTP routes and the store.
 *
 * A route handler parses a request into the arguments of one call here
 * and answers with what it gives back; the work — checking uploads, specs,
 * policies and attachments with the engine, the store's one-step calls,
 * waking the workers, the events logged — is done here. A call that
 * refuses says why in a svc_problem: the decomp_error code the answer
 * carries (its HTTP status comes from the error list) and a detail that
 * names no server path.
 *
 * `rid` is the request's id, for the log lines; NULL is fine. */
#ifndef DECOMPD_SERVER_SERVICE_H
#define DECOMPD_SERVER_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "queue.h"
#include "store.h"
#include "worker.h"

typedef struct service service;

/* Why a call refused: the code and the detail of the answer. */
typedef struct svc_problem {
  int code;
  char detail[2048];
} svc_problem;

/* Set *p to `code` and the formatted detail; returns `code`. */
int svc_fail(svc_problem *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The service over the store `s` (whose queue wakes the workers: a worker
 * pool registers with store_set_wake), with the daemon's settings `c`
 * (kept, not copied). */
int service_new(store *s, const config *c, service **out);
void service_free(service *sv); /* NULL is fine */
store *service_store(const service *sv);
const config *service_config(const service *sv);

/* ---- models ------------------------------------------------------------ */

/* The uploaded weights `u` (finished, `digest` its digest), named `name`
 * (checked: at most 255 bytes of UTF-8 without control characters), read
 * and checked whole (nothing in them is executed; a TorchScript archive is
 * only checked to be one, and only when this build and install can read
 * it), stored as a model unless the same bytes are one: *created says
 * which, *m the model. */
int svc_model_create(service *sv, store_upload *u, const char *digest,
                     const char *name, store_model *m, bool *created,
                     const char *rid, svc_problem *p);

/* Bind a sharded checkpoint: the upload `u` (finished; taken) holds
 * {"index": INDEX, "shards": {name: digest}} (at most max_json_bytes), each
 * shard a blob uploaded before (PUT /v1/blobs); the index and the shards
 * get every check of decomp_weights_open_sharded, then the model named
 * `name` is stored with its shards (*created: new, or the same checkpoint
 * bound before). */
int svc_model_bind_sharded(service *sv, store_upload *u, const char *name,
                           store_model *m, bool *created, const char *rid,
                           svc_problem *p);

/* Attach the layer spec `spec_json` (the request's JSON text) to model
 * `id` once it fits its weights; *canon (decomp_free) gets the canonical
 * spec stored. */
int svc_model_set_spec(service *sv, const char *id, const char *spec_json,
                       char **canon, svc_problem *p);

/* Attach the uploaded calibration `u` (finished) to model `id`, checked
 * against the model's layer spec first; *m gets the model as it is now
 * and *old the calibration it replaced ("" when none). */
int svc_model_attach_calibration(service *sv, const char *id, store_upload *u,
                                 store_model *m, char old[STORE_DIGEST_LEN],
                                 const char *rid, svc_problem *p);

/* Attach the latency profile `body` (`len` bytes of JSON) to model `id`,
 * checked against the model's layer spec first; as above. */
int svc_model_attach_profile(service *sv, const char *id, const char *body,
                             size_t len, store_model *m,
                             char old[STORE_DIGEST_LEN], const char *rid,
                             svc_problem *p);

/* Detach model `id`'s attachment `kind`; *old gets its digest. */
int svc_model_detach(service *sv, const char *id, store_attachment kind,
                     char old[STORE_DIGEST_LEN], const char *rid,
                     svc_problem *p);

/* ---- jobs -------------------------------------------------------------- */

/* Which calibration or profile a job runs with. */
typedef enum svc_attach_choice {
  SVC_ATTACH_NONE,     /* none */
  SVC_ATTACH_MODELS,   /* the one attached to the model now (409 if none) */
  SVC_ATTACH_DIGEST,   /* the one named by digest: the model's attached one
                          for a new job; an identical job keeps its own */
} svc_attach_choice;

typedef struct svc_job_request {
  const char *model_id;
  const char *spec;   /* the layer spec's JSON text; NULL: the model's (a
                         TorchScript model's archive's when it has none) */
  const char *policy; /* a policy name, or a policy object's JSON text;
                         NULL: "budget" */
  svc_attach_choice calibration, profile;
  char calibration_digest[STORE_DIGEST_LEN]; /* for SVC_ATTACH_DIGEST */
  char profile_digest[STORE_DIGEST_LEN];
  int64_t shard_bytes; /* a sharded model's output shard size; 0: the
                          daemon's */
} svc_job_request;

/* Check a submission against the model, the engine and its attachments,
 * and queue it unless identical input is a job already (*created says
 * which; *job that job, store_job_clear it). */
int svc_job_submit(service *sv, const svc_job_request *rq, store_job *job,
                   bool *created, const char *rid, svc_problem *p);

/* Retry a failed or cancelled job (*requeued: it was put back). *job as
 * store_job_retry gives it. */
int svc_job_retry(service *sv, const char *id, store_job *job, bool *requeued,
                  const char *rid, svc_problem *p);

#endif
