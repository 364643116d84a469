/* decomp/client.h — libdecompclient: talk to a decompd service.
 *
 * Upload weight files, calibrations and latency profiles, submit
 * decomposition jobs, follow them, and fetch their artifacts (decomposed
 * weights, decompose_info.json) into a local, content-addressed cache that
 * the Python package (decompd.client) shares.
 *
 *   decomp_client *c;
 *   decomp_client_new(NULL, NULL, &c);            // DECOMPD_URL, DECOMPD_TOKEN
 *   decomp_client_model m;
 *   decomp_client_upload(c, "resnet.pth", "resnet", &m, NULL, NULL);
 *   decomp_client_job j = {0};
 *   decomp_client_submit(c, m.id, spec_json, "budget", &j, NULL);
 *   // or, to keep the layers' outputs on data: attach its calibration
 *   // (the model needs its layer spec first) and submit with it
 *   //   decomp_client_calibration_attach(c, m.id, "cal.safetensors", NULL,
 *   //                                    NULL);
 *   //   decomp_client_submit_calibrated(c, m.id, NULL, policy,
 *   //       DECOMP_CLIENT_CALIBRATION_ATTACHED, &j, NULL);
 *   // or, to aim at a latency measured on the target device: attach its
 *   // latency profile and submit with it (and a calibration, if any)
 *   //   decomp_client_profile_attach(c, m.id, "profile.json", NULL, NULL);
 *   //   decomp_client_submit_options o = {.profile = DECOMP_CLIENT_ATTACHED};
 *   //   decomp_client_submit_with(c, m.id, NULL,
 *   //       "{\"name\": \"budget\", \"latency_reduction\": 1.3}", &o,
 *   //       &j, NULL);
 *   decomp_client_wait(c, j.id, 0, NULL, NULL, &j);
 *   decomp_client_file files[DECOMP_CLIENT_MAX_ARTIFACTS];
 *   size_t n;
 *   decomp_client_fetch(c, j.id, NULL, NULL, files, &n);
 *   decomp_client_job_clear(&j);
 *   decomp_client_free(c);
 *
 * Conventions (as in decomp.h): every fallible function returns a code from
 * decomp/errors.h (DECOMP_OK on success) and passes results through out_
 * parameters; after a failure decomp_client_errmsg() says what and where
 * ("GET /v1/jobs/j_…: 404 not_found: no such job"). A handle is not
 * thread-safe: use one per thread. The library never prints.
 *
 * Errors a caller will want to tell apart:
 *   DECOMP_ERR_CONNECT          the server could not be reached (refused,
 *                               unknown host, timeout while connecting)
 *   DECOMP_ERR_TRANSFER         the connection broke in the middle of a
 *                               transfer (a fetch keeps its partial file and
 *                               the next fetch resumes it)
 *   DECOMP_ERR_UNAUTHORIZED     401: no token, or an unknown one
 *   DECOMP_ERR_FORBIDDEN        403: the token's role is too low
 *   DECOMP_ERR_NOT_FOUND        404: no such model, job or artifact
 *   DECOMP_ERR_DIGEST_MISMATCH  downloaded bytes failed their SHA-256
 *   DECOMP_ERR_DISK_FULL        ENOSPC (or EDQUOT) writing the cache or DEST
 *   DECOMP_ERR_OFFLINE_MISS     offline mode and the cache lacks it
 *   DECOMP_ERR_TIMEOUT          decomp_client_wait() ran out of time
 *   DECOMP_ERR_CANCELLED        a progress or wait callback asked to stop
 *   DECOMP_ERR_SERVER           any other error answer (5xx, unexpected)
 * and the server's own codes (bad_spec, bad_policy, unknown_format, …)
 * when its problem+json names one.
 *
 * The cache (DECOMPD_CACHE, default $XDG_CACHE_HOME/decompd, else
 * ~/.cache/decompd), shared with python/decompd/client.py:
 *
 *   CACHE/blobs/sha256/<hex[0:2]>/<hex>   a verified file whose SHA-256 is
 *                                         <hex> (64 lower-case hex digits)
 *   CACHE/tmp/<hex>.<unique>.part         a partial download of <hex>; a
 *                                         fetch claims one by renaming it
 *                                         to its own unique name (so two
 *                                         fetchers never share one), resumes
 *                                         it with Range, and renames it onto
 *                                         the blob path once verified
 *   CACHE/jobs/<job-id>.json              written (atomically) after a
 *                                         job's artifacts were all fetched:
 *     {"format": "decompd.cache.job", "version": 1, "server": URL,
 *      "job": {…the server's job object…},
 *      "artifacts": {"decompose_info.json": {"digest": "sha256:<hex>",
 *                    "size": N, "media_type": "application/json"}, …}}
 *
 * A blob is re-hashed every time it is served from the cache: a corrupt one
 * is removed and fetched again (online) or reported as a digest mismatch
 * (offline). Offline mode (DECOMPD_OFFLINE=1, or decomp_client_set_offline)
 * never opens a connection: job_get/wait/fetch answer from CACHE/jobs and the
 * blobs, anything else fails with DECOMP_ERR_OFFLINE_MISS.
 *
 * Live job events: decomp_client_wait() follows a job's event stream
 * (GET /v1/jobs/{id}/events), polling GET /v1/jobs/{id} where there is none.
 */
#ifndef DECOMP_CLIENT_H
#define DECOMP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decomp/errors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The server used when neither the url argument nor DECOMPD_URL gives one. */
#define DECOMP_CLIENT_DEFAULT_URL "http://127.0.0.1:8080"

/* Artifacts decomp_client_job and decomp_client_fetch describe
 * (decomposed_weights.pth, .safetensors, decompose_info.json, with room to
 * spare). A job can list more (a sharded output: an index and one file per
 * shard): its json holds them all, and decomp_client_fetch_with fetches
 * them all. */
#define DECOMP_CLIENT_MAX_ARTIFACTS 8

/* Transfers decomp_client_fetch runs at once. */
#define DECOMP_CLIENT_DEFAULT_PARALLEL 4
/* The most decomp_client_fetch_options.parallel may ask for. */
#define DECOMP_CLIENT_MAX_PARALLEL 32

/* Sizes of the fixed string fields below, terminator included. */
#define DECOMP_CLIENT_ID_LEN 40
#define DECOMP_CLIENT_DIGEST_LEN 72 /* "sha256:" + 64 hex + NUL */
#define DECOMP_CLIENT_PATH_LEN 4096

typedef struct decomp_client decomp_client;

/* ---- the handle ---------------------------------------------------------- */

/* Make a client for the server at `url` (NULL: $DECOMPD_URL, else
 * DECOMP_CLIENT_DEFAULT_URL; a trailing '/' is dropped) with bearer `token`
 * (NULL: $DECOMPD_TOKEN; NULL or "" there too: no Authorization header).
 * The cache folder comes from $DECOMPD_CACHE (default above) and offline
 * mode from $DECOMPD_OFFLINE ("1", "true", "yes"). Nothing is connected or
 * created yet. INVALID_ARGUMENT for a URL that is not http:// or https://,
 * NOMEM. *out is NULL on failure. */
int decomp_client_new(const char *url, const char *token, decomp_client **out);

/* Free the handle and close its connections. NULL is a no-op. */
void decomp_client_free(decomp_client *c);

/* The last failure's message (what and where); "" when none. Borrowed,
 * valid until the next call on `c`. */
const char *decomp_client_errmsg(const decomp_client *c);

/* The HTTP status of the last answer received (0 when none, e.g. after a
 * connection failure or in offline mode). */
int decomp_client_http_status(const decomp_client *c);

/* The server's base URL and the cache folder in use (borrowed, valid for
 * the handle's life or until the matching setter). */
const char *decomp_client_url(const decomp_client *c);
const char *decomp_client_cache_dir(const decomp_client *c);

/* Use `dir` as the cache folder (created on first use). INVALID_ARGUMENT
 * for NULL, "" or a path too long, NOMEM. */
int decomp_client_set_cache_dir(decomp_client *c, const char *dir);

/* Turn offline mode on or off (see the file comment). */
void decomp_client_set_offline(decomp_client *c, bool offline);
bool decomp_client_offline(const decomp_client *c);

/* ---- progress ------------------------------------------------------------ */

typedef enum decomp_client_direction {
  DECOMP_CLIENT_UPLOAD = 0,
  DECOMP_CLIENT_DOWNLOAD = 1,
} decomp_client_direction;

typedef struct decomp_client_progress {
  decomp_client_direction direction;
  const char *name; /* the file uploaded or the artifact fetched (borrowed) */
  int64_t done;     /* bytes so far; a resumed download counts the bytes it
                       already had */
  int64_t total;    /* bytes in all, -1 when not known yet */
  /* A fetch's whole call (every artifact it fetches, whether downloaded,
   * resumed or already in the cache); 0 for uploads. */
  int64_t all_done;    /* bytes of every artifact so far */
  int64_t all_total;   /* bytes of every artifact in all */
  size_t files_done;   /* files verified so far */
  size_t files_total;  /* files the call fetches (artifacts with the same
                          digest are one file) */
} decomp_client_progress;

/* Called as bytes move (at most a few times a second, and once at the end
 * of each transfer). Return 0 to go on, non-zero to stop: the call then
 * fails with DECOMP_ERR_CANCELLED (a fetch keeps its partial files). A
 * fetch calls it on the calling thread, whatever threads move the bytes;
 * `name`, `done` and `total` are then the artifact that moved last. */
typedef int (*decomp_client_progress_fn)(void *user,
                                         const decomp_client_progress *p);

/* Install (or, with fn NULL, remove) the progress callback for uploads and
 * fetches made through `c`. */
void decomp_client_set_progress(decomp_client *c, decomp_client_progress_fn fn,
                                void *user);

/* ---- models -------------------------------------------------------------- */

typedef struct decomp_client_model {
  char id[DECOMP_CLIENT_ID_LEN];         /* "m_<16 hex>" */
  char name[256];                        /* the label given at upload */
  char digest[DECOMP_CLIENT_DIGEST_LEN]; /* "sha256:<hex>" of the file */
  char format[32];                       /* "pth", "safetensors",
                                            "torchscript",
                                            "safetensors-sharded" */
  int64_t size;                          /* bytes (a sharded model: the
                                            sum of its shards) */
  int64_t tensors;                       /* tensors in the file */
} decomp_client_model;

/* Upload the weight file at `path` (.pth, safetensors, or a TorchScript
 * archive where the daemon reads them), streamed from disk, under the label
 * `name` (NULL or "": none). The server validates it before accepting it and
 * deduplicates by digest: *out_created (optional) tells a new model (201)
 * from the same bytes uploaded before (200). *out_json (optional) gets the
 * server's answer; free it with decomp_client_string_free(). The progress
 * callback sees DECOMP_CLIENT_UPLOAD. IO when the file cannot be read,
 * OFFLINE_MISS in offline mode, the server's code when it refuses the file
 * (unknown_format, forbidden_global, payload_too_large, …). */
int decomp_client_upload(decomp_client *c, const char *path, const char *name,
                         decomp_client_model *out, bool *out_created,
                         char **out_json);

/* What decomp_client_upload_sharded did with each shard. */
typedef struct decomp_client_shard_stats {
  size_t shards;   /* shards the index names */
  size_t skipped;  /* the server had them already (HEAD: 200) */
  size_t resumed;  /* sent from the offset of the server's partial upload */
  size_t sent;     /* sent whole */
  int64_t bytes;   /* bytes sent */
} decomp_client_shard_stats;

/* Upload a sharded safetensors checkpoint (the Hugging Face layout) at
 * `path` — a folder holding model.safetensors.index.json, or that index
 * file — and bind it into one model under the label `name` (NULL or "":
 * none). Each shard the index names (a plain file name in the index's
 * folder; anything else is DECOMP_ERR_BAD_SHARD_INDEX before a byte is
 * sent) is hashed, then asked for with HEAD /v1/blobs/{digest}: skipped
 * when the server has it, resumed from the server's Upload-Offset when it
 * holds a partial upload of it, else sent whole (PUT, streamed from disk;
 * the server checks its digest and reads it as safetensors). Then the
 * index and the shards' digests go to POST /v1/models, where the server
 * checks the whole checkpoint. *out, *out_created, *out_json as
 * decomp_client_upload; *stats (optional) counts what happened to the
 * shards. The progress callback sees DECOMP_CLIENT_UPLOAD per shard, named
 * by the shard. A run cut short is run again: what the server holds is not
 * sent twice. */
int decomp_client_upload_sharded(decomp_client *c, const char *path,
                                 const char *name, decomp_client_model *out,
                                 bool *out_created,
                                 decomp_client_shard_stats *stats,
                                 char **out_json);

/* Get model `model_id` (GET /v1/models/{id}): `out` (optional) and
 * *out_json (optional; the server's answer, with has_spec and its
 * calibration, freed with decomp_client_string_free()). NOT_FOUND. */
int decomp_client_model_get(decomp_client *c, const char *model_id,
                            decomp_client_model *out, char **out_json);

/* ---- layer specs, calibrations and latency profiles ---------------------- */

/* Attach the layer spec `spec_json` (a JSON object {"layers": [...]} or a
 * list) to model `model_id` (PUT /v1/models/{id}/spec), replacing any:
 * jobs may then omit theirs, and a calibration is checked against it. The
 * server checks it against the weights (bad_spec, spec_mismatch);
 * NOT_FOUND. *out_json (optional) gets the canonical spec as stored, freed
 * with decomp_client_string_free(). */
int decomp_client_spec_attach(decomp_client *c, const char *model_id,
                              const char *spec_json, char **out_json);

/* A calibration attached to a model: a decompd.calibration safetensors file
 * of the Gram matrices of layers' inputs (decompd's Python package writes
 * it; its format: README.md, decompctl decompose --calibration). A job
 * submitted with it (decomp_client_submit_calibrated) decomposes the
 * layers it covers to keep their outputs on that data. */
typedef struct decomp_client_calibration {
  char model[DECOMP_CLIENT_ID_LEN];      /* the model it is attached to */
  char digest[DECOMP_CLIENT_DIGEST_LEN]; /* "sha256:<hex>" of the file */
  int64_t layers;                        /* layers it covers */
  int64_t size;                          /* bytes */
} decomp_client_calibration;

/* Attach the calibration file at `path` to model `model_id` (PUT
 * /v1/models/{id}/calibration), streamed from disk, replacing any attached
 * before (jobs submitted with that one keep it). The server checks it
 * against the model's layer spec before it keeps it: BAD_CALIBRATION when
 * it is not a calibration file, or a Gram does not fit its layer, is not
 * finite or symmetric, or names a layer the model lacks (the message names
 * the layer); CONFLICT when the model has no layer spec yet (attach one, or
 * submit it with the job first); NOT_FOUND; PAYLOAD_TOO_LARGE; IO when the
 * file cannot be read; OFFLINE_MISS in offline mode. `out` (optional) gets
 * what was attached; *out_json (optional) the server's answer, freed with
 * decomp_client_string_free(). The progress callback sees
 * DECOMP_CLIENT_UPLOAD. */
int decomp_client_calibration_attach(decomp_client *c, const char *model_id,
                                     const char *path,
                                     decomp_client_calibration *out,
                                     char **out_json);

/* Detach model `model_id`'s calibration (DELETE
 * /v1/models/{id}/calibration); jobs submitted with it keep it. NOT_FOUND
 * when the model has none (or there is no such model). */
int decomp_client_calibration_detach(decomp_client *c, const char *model_id);

/* A latency profile attached to a model: a decompd.profile JSON document
 * (decompd's Python package measures it with decompd.profile on the
 * device the model will run on: per layer its time and each candidate
 * pair's over a grid of ranks; the format is in README.md, decompctl
 * decompose --profile). A job submitted with it (decomp_client_submit_with)
 * can aim its budget at a latency_reduction, leaves alone the layers it
 * says would get slower, and its info file records predicted latencies. */
typedef struct decomp_client_profile {
  char model[DECOMP_CLIENT_ID_LEN];      /* the model it is attached to */
  char digest[DECOMP_CLIENT_DIGEST_LEN]; /* "sha256:<hex>" of the file */
  int64_t layers;                        /* layers it times */
  int64_t size;                          /* bytes */
} decomp_client_profile;

/* Attach the profile file at `path` to model `model_id` (PUT
 * /v1/models/{id}/profile, the file sent as it is), replacing any attached
 * before (jobs submitted with that one keep it). The server checks it
 * against the model's layer spec before it keeps it: BAD_PROFILE when a
 * layer it names is not in the model or has another type or weight shape,
 * a candidate's method does not apply or its ranks or times are wrong, or
 * a grid is empty (the message names the layer); BAD_JSON when it is not
 * JSON; CONFLICT when the model has no layer spec yet; NOT_FOUND;
 * PAYLOAD_TOO_LARGE (over the server's max_json_bytes); IO when the file
 * cannot be read; OFFLINE_MISS in offline mode. `out` (optional) gets what
 * was attached; *out_json (optional) the server's answer, freed with
 * decomp_client_string_free(). */
int decomp_client_profile_attach(decomp_client *c, const char *model_id,
                                 const char *path, decomp_client_profile *out,
                                 char **out_json);

/* Detach model `model_id`'s profile (DELETE /v1/models/{id}/profile); jobs
 * submitted with it keep it. NOT_FOUND when the model has none (or there
 * is no such model). */
int decomp_client_profile_detach(decomp_client *c, const char *model_id);

/* ---- jobs ---------------------------------------------------------------- */

typedef enum decomp_job_state {
  DECOMP_JOB_UNKNOWN = 0, /* a state this version does not know */
  DECOMP_JOB_QUEUED,
  DECOMP_JOB_RUNNING,
  DECOMP_JOB_SUCCEEDED,
  DECOMP_JOB_FAILED,
  DECOMP_JOB_CANCELLED,
} decomp_job_state;

/* "queued", "running", …, "unknown". Static. */
const char *decomp_job_state_name(decomp_job_state s);

/* Whether `s` is final (succeeded, failed, cancelled). */
bool decomp_job_state_final(decomp_job_state s);

typedef struct decomp_client_artifact {
  char name[64];                         /* "decomposed_weights.pth", … */
  char digest[DECOMP_CLIENT_DIGEST_LEN]; /* "sha256:<hex>" */
  int64_t size;                          /* bytes */
  char media_type[64];
} decomp_client_artifact;

typedef struct decomp_client_job {
  char id[DECOMP_CLIENT_ID_LEN];    /* "j_<16 hex>" */
  char model[DECOMP_CLIENT_ID_LEN]; /* the model id */
  decomp_job_state state;
  bool cancel_requested; /* a running job will stop at its next progress
                            report (a layer boundary, or inside a long
                            layer within about a second) */
  int attempts;          /* times a worker started it */
  int64_t layers_done;   /* per-layer progress */
  int64_t layers_total;  /* 0 until a worker has read the spec */
  double seconds;        /* running time so far or in all; 0 if not started */
  char error_code[64];   /* failed jobs: the engine's code ("svd_failed") */
  char error_message[512];
  size_t n_artifacts; /* succeeded jobs: the first DECOMP_CLIENT_MAX_ARTIFACTS
                         artifacts the server lists (json has them all) */
  decomp_client_artifact artifacts[DECOMP_CLIENT_MAX_ARTIFACTS];
  char *json; /* the server's JSON object for the job (owned; see clear) */
  /* Running jobs: the layer the engine last reported, its step ("spectrum"
   * or "factors") and the share of that step done; current_layer is ""
   * otherwise. */
  char current_layer[256];
  char current_step[16];
  double current_fraction;
} decomp_client_job;

/* Free what `j` owns (its json) and zero it. NULL is a no-op. Every
 * function filling a decomp_client_job clears it first, so one struct can
 * be reused across calls as long as it starts zeroed. */
void decomp_client_job_clear(decomp_client_job *j);

/* Submit a job: the model `model_id`, the layer spec `spec_json` (a JSON
 * object {"layers": [...]} or a list, as the Python package writes it; NULL
 * to use the spec the server has for the model, where it has one) and
 * the rank policy `policy` (NULL: the server's default, budget; a name such
 * as "amct"; or a JSON object text such as {"name":"energy","energy":0.95}).
 * The server checks the spec against the weights and parses the policy
 * before queueing (bad_spec, spec_mismatch, bad_policy). Identical input
 * returns the existing job: *out_created (optional) is then false. */
int decomp_client_submit(decomp_client *c, const char *model_id,
                         const char *spec_json, const char *policy,
                         decomp_client_job *out, bool *out_created);

/* For decomp_client_submit_calibrated and decomp_client_submit_options:
 * the calibration (profile) attached to the model when the job is
 * submitted. */
#define DECOMP_CLIENT_ATTACHED             "attached"
#define DECOMP_CLIENT_CALIBRATION_ATTACHED DECOMP_CLIENT_ATTACHED
#define DECOMP_CLIENT_PROFILE_ATTACHED     DECOMP_CLIENT_ATTACHED

/* decomp_client_submit with a calibration: NULL none (exactly
 * decomp_client_submit), DECOMP_CLIENT_CALIBRATION_ATTACHED the one
 * attached to the model now, or its digest "sha256:<hex>" (as
 * decomp_client_calibration_attach gave it; it must still be the model's
 * for a new job, so that a calibration replaced meanwhile is not used
 * unknowingly). The calibration is part of the job's identity: the same
 * input with another calibration, or none, is another job. The server
 * checks it against the job's layer spec before queueing
 * (BAD_CALIBRATION); CONFLICT when the model has no calibration attached,
 * or another one than the digest given; INVALID_ARGUMENT for a
 * `calibration` that is neither. The job's JSON (out->json) says which
 * calibration it runs with ("calibration": digest or null). */
int decomp_client_submit_calibrated(decomp_client *c, const char *model_id,
                                    const char *spec_json, const char *policy,
                                    const char *calibration,
                                    decomp_client_job *out, bool *out_created);

/* What a job runs with beside its spec and policy, for
 * decomp_client_submit_with. Each is NULL (none), DECOMP_CLIENT_ATTACHED
 * (the one attached to the model now) or a digest "sha256:<hex>" (which
 * must still be the model's for a new job). Zero it before use: fields may
 * be appended. */
typedef struct decomp_client_submit_options {
  const char *calibration; /* see decomp_client_submit_calibrated */
  const char *profile;     /* the latency profile (decomp_client_profile) */
} decomp_client_submit_options;

/* decomp_client_submit with a calibration and/or a latency profile (`opts`
 * NULL: exactly decomp_client_submit). Each is part of the job's identity:
 * the same input with another profile, or none, is another job. The
 * server checks the profile against the job's layer spec before queueing
 * (BAD_PROFILE naming the layer); CONFLICT when the model has no profile
 * attached, or another one than the digest given; BAD_POLICY for a
 * latency_reduction budget without a profile; INVALID_ARGUMENT for a
 * field that is neither "attached" nor a digest. The job's JSON
 * (out->json) says which it runs with ("profile": digest or null). */
int decomp_client_submit_with(decomp_client *c, const char *model_id,
                              const char *spec_json, const char *policy,
                              const decomp_client_submit_options *opts,
                              decomp_client_job *out, bool *out_created);

/* Get job `id` with its progress, error and artifacts. Offline: from the
 * cache's job record, OFFLINE_MISS when there is none. */
int decomp_client_job_get(decomp_client *c, const char *id,
                          decomp_client_job *out);

/* Cancel job `id`: a queued job at once, a running one at its next layer
 * boundary (out->cancel_requested, state still running). CONFLICT for a job
 * already finished otherwise. `out` may be NULL. */
int decomp_client_job_cancel(decomp_client *c, const char *id,
                             decomp_client_job *out);

/* Run failed or cancelled job `id` again (POST /v1/jobs/{id}/retry): it
 * goes back to the server's queue as a new attempt (out->state queued,
 * attempts kept counting). Submitting the same input again would only
 * return the failed job: submits are idempotent by content. A queued or
 * running job is left as it is (DECOMP_OK); CONFLICT for a succeeded job,
 * a running one being cancelled, or one whose model was deleted.
 * OFFLINE_MISS in offline mode. `out` may be NULL. */
int decomp_client_job_retry(decomp_client *c, const char *id,
                            decomp_client_job *out);

/* One page of jobs, newest first: `state` (NULL: any) filters, `limit` 1 to
 * 500 (0: the server's 50), `cursor` (NULL: the first page) continues from
 * a previous *out_next_cursor. *out_jobs (free with
 * decomp_client_job_list_free) holds *out_n jobs, without artifacts;
 * *out_next_cursor (optional; NULL at the end; free with
 * decomp_client_string_free) names the next page. */
int decomp_client_job_list(decomp_client *c, const char *state, int limit,
                           const char *cursor, decomp_client_job **out_jobs,
                           size_t *out_n, char **out_next_cursor);

/* Free a list from decomp_client_job_list. NULL is a no-op. */
void decomp_client_job_list_free(decomp_client_job *jobs, size_t n);

/* Called by decomp_client_wait with each state seen (and, between events,
 * about every second with the last one). Return 0 to go on, non-zero to
 * stop waiting (DECOMP_ERR_CANCELLED). */
typedef int (*decomp_client_wait_fn)(void *user, const decomp_client_job *j);

/* Wait until job `id` is final (succeeded, failed or cancelled) and put it
 * in `out` (as decomp_client_job_get gives it); DECOMP_OK means it is
 * final, not that it succeeded: look at out->state. It follows the job's
 * event stream (GET /v1/jobs/{id}/events) and polls (0.1 s backing off to
 * 2 s) where the server has none or the stream breaks. `timeout_s` <= 0
 * waits for ever; when it runs out, TIMEOUT (out holds the last state
 * polled). `fn` (optional) sees every state. A connection failure while
 * polling is retried for as long as the timeout allows (a daemon restart
 * requeues running jobs), then reported. */
int decomp_client_wait(decomp_client *c, const char *id, double timeout_s,
                       decomp_client_wait_fn fn, void *user,
                       decomp_client_job *out);

/* ---- artifacts and the cache --------------------------------------------- */

typedef struct decomp_client_file {
  char name[64];                         /* the artifact's name: a plain file
                                            name (no '/', no leading '.', no
                                            control character, under 64
                                            bytes); a job listing another
                                            is refused (SERVER) */
  char digest[DECOMP_CLIENT_DIGEST_LEN]; /* "sha256:<hex>", verified */
  int64_t size;
  char path[DECOMP_CLIENT_PATH_LEN]; /* where it is: DEST/name, or the cache
                                        blob when no DEST was given */
  bool from_cache;        /* no byte was downloaded */
  int64_t resumed_from;   /* > 0: a partial download was resumed there */
  int64_t downloaded;     /* bytes received this time */
} decomp_client_file;

/* How decomp_client_fetch_with fetches. Zero it before use: fields may be
 * appended. */
typedef struct decomp_client_fetch_options {
  const char *only;     /* NULL: every artifact; else the one so named */
  const char *dest_dir; /* NULL: leave the files in the cache; else copy
                           them to DEST/<name> (made if missing) */
  int parallel;         /* transfers at once: 0 DECOMP_CLIENT_DEFAULT_PARALLEL,
                           1 one after another, at most
                           DECOMP_CLIENT_MAX_PARALLEL */
} decomp_client_fetch_options;

/* Fetch the artifacts of succeeded job `id` into the cache, up to
 * opts->parallel at once (each on a connection of its own), and, with
 * opts->dest_dir, copy each to DEST/<name>. Every file is verified against
 * the digest the server gave for it: a cached blob is re-hashed (a corrupt
 * one is removed and downloaded again), a download is hashed as it
 * arrives into a partial file of its own, resumed with Range from a
 * partial file when there is one (If-Range = the digest; a 200 answer
 * starts over), retried once from the start when a resumed file fails its
 * digest, and renamed onto its blob path only once verified. Artifacts
 * with the same digest are fetched once. The copies to DEST start only
 * when every artifact is verified, each through a temporary file and a
 * rename, index files (*.index.json) last, so DEST never holds a file
 * that is not whole, nor an index whose shards are not all there. Then the
 * job record CACHE/jobs/<id>.json is written. The progress callback sees
 * every artifact and the call's totals, on this thread.
 *
 * After the first failure no new transfer starts; those under way finish
 * (into the cache), and the failure is reported naming its artifact (a cut
 * transfer keeps its partial file, and the next fetch resumes it):
 * DIGEST_MISMATCH, DISK_FULL, TRANSFER (partial file kept), CONNECT,
 * NOT_FOUND (also for an `only` the job lacks), CANCELLED (the progress
 * callback said stop: every transfer stops, partial files kept); CONFLICT when
 * the job has not succeeded; SERVER when the job lists an artifact whose
 * name is not a plain file name, twice, or without a digest;
 * INVALID_ARGUMENT for parallel out of range. *out (free with
 * decomp_client_file_list_free; NULL on failure) holds *out_n files in the
 * order the job lists them. Offline: from the job record and the blobs
 * only. */
int decomp_client_fetch_with(decomp_client *c, const char *id,
                             const decomp_client_fetch_options *opts,
                             decomp_client_file **out, size_t *out_n);

/* Free a list from decomp_client_fetch_with. NULL is a no-op. */
void decomp_client_file_list_free(decomp_client_file *files);

/* decomp_client_fetch_with (DECOMP_CLIENT_DEFAULT_PARALLEL transfers at
 * once) into `out`, room for DECOMP_CLIENT_MAX_ARTIFACTS files. `only`
 * (NULL: all) names one artifact; `dest_dir` (NULL: none) is opts'.
 * INVALID_ARGUMENT, before anything is fetched, for a job with more
 * artifacts than that (use decomp_client_fetch_with). */
int decomp_client_fetch(decomp_client *c, const char *id, const char *only,
                        const char *dest_dir, decomp_client_file *out,
                        size_t *out_n);

/* CACHE/blobs/sha256/<hex[0:2]>/<hex> for `digest` ("sha256:<hex>" or the
 * bare hex) into buf. INVALID_ARGUMENT for a malformed digest or a buffer
 * too small. Pure: touches no file. */
int decomp_client_cache_blob_path(const char *cache_dir, const char *digest,
                                  char *buf, size_t len);

/* CACHE/jobs/<id>.json into buf. INVALID_ARGUMENT for an id that is not
 * [A-Za-z0-9_-]{1,64} or a buffer too small. Pure. */
int decomp_client_cache_job_path(const char *cache_dir, const char *id,
                                 char *buf, size_t len);

/* The default cache folder ($DECOMPD_CACHE, else $XDG_CACHE_HOME/decompd,
 * else $HOME/.cache/decompd) into buf. INVALID_ARGUMENT when none of those
 * variables is set or buf is too small. */
int decomp_client_default_cache_dir(char *buf, size_t len);

/* Free a string returned by this library. NULL is a no-op. */
void decomp_client_string_free(char *s);

#ifdef __cplusplus
}
#endif
#endif
