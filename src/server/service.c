/* service.c — what the API does (service.h): models, their layer specs and
 * attachments, and job submission, between the routes and the store.
 *
 * A call may open a weight file, a calibration or a latency profile to
 * check it (the engine's readers map it and check every size and offset;
 * decomp_calibration_check reads each Gram once; decomp_profile_check reads
 * the profile's JSON): no decomposition. The SVD work is the workers'
 * alone, and so is loading a TorchScript archive (it runs the archive's
 * code, in a sandboxed reader process: worker.c). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "decomp/decomp.h"
#include "decomp/torchscript.h"
#include "log.h"
#include "service.h"
#include "shards.h"

struct service {
  store *s;
  const config *c;
};

int service_new(store *s, const config *c, service **out) {
  service *sv = calloc(1, sizeof *sv);
  if (!sv)
    return DECOMP_ERR_NOMEM;
  sv->s = s;
  sv->c = c;
  *out = sv;
  return DECOMP_OK;
}

void service_free(service *sv) { free(sv); }

store *service_store(const service *sv) { return sv->s; }

const config *service_config(const service *sv) { return sv->c; }

int svc_fail(svc_problem *p, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->detail, sizeof p->detail, fmt, ap);
  va_end(ap);
  p->code = code;
  return code;
}

/* Refuse with a store failure: its code and this thread's detail. */
static int store_failed(svc_problem *p, int rc) {
  return svc_fail(p, rc, "%s", store_errmsg());
}

/* Refuse with the engine's detail of `rc` in `ctx`. */
static int engine_failed(svc_problem *p, decomp_ctx *ctx, int rc) {
  const char *m = decomp_errmsg(ctx);
  return svc_fail(p, rc, "%s", m[0] ? m : decomp_strerror(rc));
}

static bool is_torchscript(const store_model *m) {
  return strcmp(m->format, "torchscript") == 0;
}

/* ---- models ------------------------------------------------------------ */

int svc_model_create(service *sv, store_upload *u, const char *digest,
                     const char *name, store_model *m, bool *created,
                     const char *rid, svc_problem *p) {
  if (store_upload_size(u) == 0)
    return svc_fail(p, DECOMP_ERR_UNKNOWN_FORMAT, "the body is empty");
  decomp_ctx *ctx = decomp_ctx_new();
  if (!ctx)
    return svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
  /* Validate before accepting: the reader maps the file and checks every
   * structure; nothing in it is executed. */
  decomp_weights *w = NULL;
  int rc = decomp_weights_open(ctx, store_upload_path(u), &w);
  /* A TorchScript archive (a zip whose directory parses and holds
   * constants.pkl) is accepted on that alone when this build can read
   * TorchScript: loading it runs the archive's code and may take up to the
   * reader's time limit, so a job's worker does it, in the sandboxed reader
   * process (worker.c). */
  bool ts = false;
  if (rc == DECOMP_ERR_TORCHSCRIPT && decomp_torchscript_supported()) {
    const char *reader = worker_ts_reader();
    if (access(reader, X_OK) != 0) {
      LOG(LOG_ERROR, "models", rid, "event=torchscript_reader_missing reader=%s",
          log_q(reader));
      decomp_ctx_free(ctx);
      return svc_fail(p, DECOMP_ERR_TORCHSCRIPT,
                  "a TorchScript archive: this server's TorchScript reader "
                  "is not installed");
    }
    ts = true;
    rc = DECOMP_OK;
  }
  if (rc != DECOMP_OK) {
    const char *msg = decomp_errmsg(ctx);
    const char *tmp = store_upload_path(u);
    /* The message names our temp file; say "upload" instead. */
    if (strncmp(msg, tmp, strlen(tmp)) == 0)
      svc_fail(p, rc, "upload%s", msg + strlen(tmp));
    else
      engine_failed(p, ctx, rc);
    decomp_ctx_free(ctx);
    return rc;
  }
  memset(m, 0, sizeof *m);
  snprintf(m->digest, sizeof m->digest, "%s", digest);
  snprintf(m->name, sizeof m->name, "%s", name);
  snprintf(m->format, sizeof m->format, "%s",
           decomp_format_name(ts ? DECOMP_FORMAT_TORCHSCRIPT
                                 : decomp_weights_format(w)));
  m->size = store_upload_size(u);
  /* A TorchScript archive's tensors are counted only by loading it. */
  m->tensors = ts ? 0 : (int64_t)decomp_weights_count(w);
  decomp_weights_free(w); /* unmapped before its file is renamed */
  decomp_ctx_free(ctx);
  if ((rc = store_model_put(sv->s, u, m, created)) != DECOMP_OK)
    return store_failed(p, rc);
  LOG(LOG_INFO, "models", rid,
      "event=model_%s id=%s digest=%s format=%s size=%lld tensors=%lld",
      *created ? "stored" : "deduplicated", m->id, m->digest, m->format,
      (long long)m->size, (long long)m->tensors);
  return DECOMP_OK;
}

int svc_model_bind_sharded(service *sv, store_upload *u, const char *name,
                           store_model *m, bool *created, const char *rid,
                           svc_problem *p) {
  return shards_model_bind(sv->s, sv->c->max_json_bytes, u, name, m, created,
                           rid, p);
}

/* Parse `spec_text` and check it against the model's weights. A
 * TorchScript model's weights are known only once a job has loaded the
 * archive: its spec is parsed here and checked against them when the job
 * runs. */
static int spec_validate(service *sv, decomp_ctx *ctx, const store_model *m,
                         const char *spec_text, decomp_spec **out,
                         svc_problem *p) {
  decomp_weights *w = NULL;
  decomp_spec *spec = NULL;
  char path[4200], msg[1024] = "";
  int rc = decomp_spec_parse(ctx, spec_text, strlen(spec_text), &spec);
  if (rc != DECOMP_OK)
    return engine_failed(p, ctx, rc);
  if (is_torchscript(m)) {
    *out = spec;
    return DECOMP_OK;
  }
  /* The spec must fit the weights: fail now, not in the queue. */
  store_model now;
  rc = store_blob_path(sv->s, m->digest, path, sizeof path);
  if (rc != DECOMP_OK) {
    store_failed(p, rc);
  } else if ((rc = shards_model_is_sharded(m)
                       ? shards_weights_open(sv->s, ctx, m, &w, msg, sizeof msg)
                       : decomp_weights_open(ctx, path, &w)) != DECOMP_OK &&
             store_model_get(sv->s, m->id, &now) == DECOMP_ERR_NOT_FOUND) {
    /* deleted (and its blob collected) since it was read */
    rc = svc_fail(p, DECOMP_ERR_NOT_FOUND, "model '%s': no such model", m->id);
  } else if (rc != DECOMP_OK && msg[0]) {
    svc_fail(p, rc, "%s", msg);
  } else if (rc != DECOMP_OK ||
             (rc = decomp_spec_check(ctx, spec, w)) != DECOMP_OK) {
    engine_failed(p, ctx, rc);
  }
  decomp_weights_free(w);
  if (rc != DECOMP_OK) {
    decomp_spec_free(spec);
    return rc;
  }
  *out = spec;
  return DECOMP_OK;
}

int svc_model_set_spec(service *sv, const char *id, const char *spec_json,
                       char **canon, svc_problem *p) {
  *canon = NULL;
  store_model m;
  int rc = store_model_get(sv->s, id, &m);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  decomp_ctx *ctx = decomp_ctx_new();
  if (!ctx)
    return svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
  decomp_spec *spec = NULL;
  if ((rc = spec_validate(sv, ctx, &m, spec_json, &spec, p)) == DECOMP_OK) {
    if (!(*canon = decomp_spec_to_json(spec)))
      rc = svc_fail(p, DECOMP_ERR_ENCODE,
                "could not encode the canonical layer spec");
    else if ((rc = store_model_set_spec(sv->s, m.id, *canon)) != DECOMP_OK)
      store_failed(p, rc);
    decomp_spec_free(spec);
  }
  decomp_ctx_free(ctx);
  if (rc != DECOMP_OK) {
    decomp_free(*canon);
    *canon = NULL;
  }
  return rc;
}

/* The layer spec an attachment of `m` is checked against: the attached
 * spec, else (TorchScript) the one its archive gave the first job that
 * loaded it. *out NULL (and DECOMP_OK) when the model has none yet. */
static int model_layer_spec(store *s, const store_model *m, char **out) {
  int rc = store_model_get_spec(s, m->id, out);
  if (rc == DECOMP_OK && !*out && is_torchscript(m))
    rc = store_model_get_archive_spec(s, m->id, out);
  return rc;
}

/* The layer spec an attachment (`what`) of model m is checked against,
 * parsed in `ctx`; no spec yet is 409. */
static int attachment_spec(service *sv, decomp_ctx *ctx, const store_model *m,
                           const char *what, decomp_spec **spec,
                           svc_problem *p) {
  char *text = NULL;
  int rc = model_layer_spec(sv->s, m, &text);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  if (!text)
    /* A TorchScript model's spec is in its archive, which is read when a
     * job runs (never while answering a request). */
    return svc_fail(p, DECOMP_ERR_CONFLICT,
                "model %s has no layer spec to check a %s against yet: "
                "attach one first (PUT /v1/models/%s/spec)%s",
                m->id, what, m->id,
                is_torchscript(m)
                    ? ", or run a job on it (the spec of its TorchScript "
                      "archive is recorded when a job reads it)"
                    : "");
  rc = decomp_spec_parse(ctx, text, strlen(text), spec);
  free(text);
  if (rc != DECOMP_OK)
    return svc_fail(p, DECOMP_ERR_STORE, "model %s's stored spec: %s", m->id,
                decomp_errmsg(ctx));
  return DECOMP_OK;
}

/* Open the calibration file at `path` (a weight set: safetensors with the
 * decompd.calibration metadata); anything that is not a weight file is
 * refused as bad_calibration, as a weight file that is not a calibration
 * is by decomp_calibration_check. `what` names it. */
static int calibration_open(decomp_ctx *ctx, const char *path,
                            const char *what, decomp_weights **out,
                            svc_problem *p) {
  int rc = decomp_weights_open(ctx, path, out);
  if (rc == DECOMP_OK)
    return DECOMP_OK;
  const char *m = decomp_errmsg(ctx);
  /* The reader's message starts with the path: say what it is instead. */
  if (strncmp(m, path, strlen(path)) == 0)
    m += strlen(path);
  while (*m == ':' || *m == ' ')
    m++;
  return svc_fail(p, DECOMP_ERR_BAD_CALIBRATION,
              "calibration: %s is not a decompd calibration (a safetensors "
              "file of Gram matrices): %s",
              what, m[0] ? m : decomp_strerror(rc));
}

/* Attach the checked upload `u` to model m as its `kind` (the blob's
 * digest, the layers it covers, its size) and set those fields of *m. */
static int attach(service *sv, store_model *m, store_attachment kind,
                  store_upload *u, size_t layers, int64_t size,
                  char old[STORE_DIGEST_LEN], const char *rid,
                  svc_problem *p) {
  char digest[STORE_DIGEST_LEN];
  int rc = store_upload_finish(u, digest);
  if (rc == DECOMP_OK)
    rc = store_model_attach(sv->s, m->id, kind, u, (int64_t)layers, size, old);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  bool cal = kind == STORE_ATTACH_CALIBRATION;
  LOG(LOG_INFO, "models", rid,
      "event=%s_attached model=%s digest=%s layers=%zu size=%lld "
      "replaced=%s",
      cal ? "calibration" : "profile", m->id, digest, layers, (long long)size,
      old[0] ? old : "none");
  snprintf(cal ? m->calibration : m->profile, STORE_DIGEST_LEN, "%s", digest);
  *(cal ? &m->calibration_layers : &m->profile_layers) = (int64_t)layers;
  *(cal ? &m->calibration_size : &m->profile_size) = size;
  return DECOMP_OK;
}

int svc_model_attach_calibration(service *sv, const char *id, store_upload *u,
                                 store_model *m, char old[STORE_DIGEST_LEN],
                                 const char *rid, svc_problem *p) {
  old[0] = '\0';
  int rc = store_model_get(sv->s, id, m);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  char digest[STORE_DIGEST_LEN];
  if ((rc = store_upload_finish(u, digest)) != DECOMP_OK)
    return store_failed(p, rc);
  if (store_upload_size(u) == 0)
    return svc_fail(p, DECOMP_ERR_BAD_CALIBRATION, "calibration: the body is empty");
  decomp_ctx *ctx = decomp_ctx_new();
  if (!ctx)
    return svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
  decomp_spec *spec = NULL;
  decomp_weights *cal = NULL;
  size_t layers = 0;
  if ((rc = attachment_spec(sv, ctx, m, "calibration", &spec, p)) ==
          DECOMP_OK &&
      (rc = calibration_open(ctx, store_upload_path(u), "the body", &cal, p)) ==
          DECOMP_OK &&
      (rc = decomp_calibration_check(ctx, cal, spec, &layers)) != DECOMP_OK)
    engine_failed(p, ctx, rc);
  decomp_weights_free(cal); /* unmapped before its file is renamed */
  if (spec)
    decomp_spec_free(spec);
  decomp_ctx_free(ctx);
  if (rc != DECOMP_OK)
    return rc;
  return attach(sv, m, STORE_ATTACH_CALIBRATION, u, layers,
                store_upload_size(u), old, rid, p);
}

int svc_model_attach_profile(service *sv, const char *id, const char *body,
                             size_t len, store_model *m,
                             char old[STORE_DIGEST_LEN], const char *rid,
                             svc_problem *p) {
  old[0] = '\0';
  int rc = store_model_get(sv->s, id, m);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  if (len == 0)
    return svc_fail(p, DECOMP_ERR_BAD_PROFILE, "profile: the body is empty");
  /* Valid JSON holds no NUL byte: the text the engine reads (up to the
   * first NUL) is then the whole body that is stored. */
  json_error_t jerr;
  json_t *in = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!in)
    return svc_fail(p, DECOMP_ERR_BAD_JSON, "line %d column %d: %s", jerr.line,
                jerr.column, jerr.text);
  json_decref(in);
  decomp_ctx *ctx = decomp_ctx_new();
  char *text = strndup(body, len);
  decomp_spec *spec = NULL;
  size_t layers = 0;
  if (!ctx || !text)
    rc = svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
  else if ((rc = attachment_spec(sv, ctx, m, "profile", &spec, p)) ==
               DECOMP_OK &&
           (rc = decomp_profile_check(ctx, text, spec, &layers)) != DECOMP_OK)
    engine_failed(p, ctx, rc);
  if (spec)
    decomp_spec_free(spec);
  free(text);
  decomp_ctx_free(ctx);
  if (rc != DECOMP_OK)
    return rc;
  store_upload *u = NULL;
  if ((rc = store_upload_begin(sv->s, &u)) == DECOMP_OK &&
      (rc = store_upload_write(u, body, len)) == DECOMP_OK)
    rc = attach(sv, m, STORE_ATTACH_PROFILE, u, layers, (int64_t)len, old,
                rid, p);
  else
    store_failed(p, rc);
  store_upload_free(u);
  return rc;
}

int svc_model_detach(service *sv, const char *id, store_attachment kind,
                     char old[STORE_DIGEST_LEN], const char *rid,
                     svc_problem *p) {
  int rc = store_model_attach(sv->s, id, kind, NULL, 0, 0, old);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  LOG(LOG_INFO, "models", rid, "event=%s_detached model=%s digest=%s",
      kind == STORE_ATTACH_CALIBRATION ? "calibration" : "profile", id, old);
  return DECOMP_OK;
}

/* ---- jobs -------------------------------------------------------------- */

/* The spec an attachment of a job with no spec of its own is checked
 * against: a TorchScript archive's, recorded when a job read it (NULL when
 * none yet: the engine checks it when the job runs). */
static decomp_spec *archive_spec(service *sv, decomp_ctx *ctx,
                                 const store_model *m) {
  char *text = NULL;
  decomp_spec *spec = NULL;
  if (store_model_get_archive_spec(sv->s, m->id, &text) == DECOMP_OK && text &&
      decomp_spec_parse(ctx, text, strlen(text), &spec) != DECOMP_OK)
    spec = NULL;
  free(text);
  return spec;
}

/* A job's calibration (`digest`) checked against the layer spec it will
 * run with (`spec`, or the archive's). A digest that is not the model's
 * attached calibration is looked for among the blobs (an identical job
 * submitted before keeps it); when it is gone, 409. */
static int job_calibration_check(service *sv, decomp_ctx *ctx,
                                 const store_model *m, const char *digest,
                                 const decomp_spec *spec, svc_problem *p) {
  char path[4200];
  int rc = store_blob_path(sv->s, digest, path, sizeof path);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  if (access(path, R_OK) != 0)
    return svc_fail(p, DECOMP_ERR_CONFLICT,
                "calibration %s is not attached to model %s (it has %s%s; "
                "attach it with PUT /v1/models/%s/calibration)",
                digest, m->id, m->calibration[0] ? "" : "none",
                m->calibration, m->id);
  decomp_weights *cal = NULL;
  if ((rc = calibration_open(ctx, path, digest, &cal, p)) != DECOMP_OK)
    return rc;
  decomp_spec *archive = spec ? NULL : archive_spec(sv, ctx, m);
  if (archive)
    spec = archive;
  if (spec &&
      (rc = decomp_calibration_check(ctx, cal, spec, NULL)) != DECOMP_OK)
    engine_failed(p, ctx, rc);
  decomp_weights_free(cal);
  if (archive)
    decomp_spec_free(archive);
  return rc;
}

/* A job's profile (`digest`) checked as job_calibration_check does a
 * calibration: read whole (it was accepted under max_json_bytes; a larger
 * blob is not a profile). */
static int job_profile_check(service *sv, decomp_ctx *ctx,
                             const store_model *m, const char *digest,
                             const decomp_spec *spec, svc_problem *p) {
  char *text = NULL;
  int rc = store_blob_read(sv->s, digest, sv->c->max_json_bytes, &text, NULL);
  if (rc == DECOMP_ERR_NOT_FOUND)
    return svc_fail(p, DECOMP_ERR_CONFLICT,
                "profile %s is not attached to model %s (it has %s%s; attach "
                "it with PUT /v1/models/%s/profile)",
                digest, m->id, m->profile[0] ? "" : "none", m->profile, m->id);
  if (rc == DECOMP_ERR_TOO_LARGE)
    return svc_fail(p, DECOMP_ERR_BAD_PROFILE,
                "profile: %s is not a decompd profile", digest);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  decomp_spec *archive = spec ? NULL : archive_spec(sv, ctx, m);
  if (archive)
    spec = archive;
  if (spec && (rc = decomp_profile_check(ctx, text, spec, NULL)) != DECOMP_OK)
    engine_failed(p, ctx, rc);
  free(text);
  if (archive)
    decomp_spec_free(archive);
  return rc;
}

/* The digest a job runs with for an attachment (`what`) chosen by `choice`
 * into `out` ("" for none). */
static int job_attachment(const store_model *m, const char *what,
                          svc_attach_choice choice, const char *digest,
                          const char *attached, char out[STORE_DIGEST_LEN],
                          svc_problem *p) {
  out[0] = '\0';
  if (choice == SVC_ATTACH_MODELS) {
    if (!attached[0])
      return svc_fail(p, DECOMP_ERR_CONFLICT,
                  "'%s': true, but model %s has no %s attached (PUT "
                  "/v1/models/%s/%s)",
                  what, m->id, what, m->id, what);
    snprintf(out, STORE_DIGEST_LEN, "%s", attached);
  } else if (choice == SVC_ATTACH_DIGEST) {
    snprintf(out, STORE_DIGEST_LEN, "%s", digest);
  }
  return DECOMP_OK;
}

/* Identical input (model, canonical spec, canonical policy, the
 * calibration's and the profile's digests, a shard size given) is one job:
 * its request key, the SHA-256 of those lines. Without the later fields
 * the key is what it was before they existed: a calibration line is a bare
 * digest, a profile and a shard size are tagged lines. */
static int job_key(const store_model *m, const char *spec_key,
                   const char *pol_canon, const store_job *job,
                   char key_hex[65], svc_problem *p) {
  size_t klen = strlen(m->id) + strlen(spec_key) + strlen(pol_canon) +
                strlen(job->calibration) + strlen(job->profile) + 64;
  char *kin = malloc(klen);
  if (!kin)
    return svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
  int kn = snprintf(kin, klen, "%s\n%s\n%s%s%s%s%s", m->id, spec_key,
                    pol_canon, job->calibration[0] ? "\n" : "",
                    job->calibration, job->profile[0] ? "\nprofile " : "",
                    job->profile);
  if (job->shard_bytes > 0 && kn > 0 && (size_t)kn < klen)
    snprintf(kin + kn, klen - (size_t)kn, "\nshard_bytes %lld",
             (long long)job->shard_bytes);
  bool hashed = store_sha256_hex(kin, strlen(kin), key_hex);
  free(kin);
  return hashed ? DECOMP_OK : svc_fail(p, DECOMP_ERR_INTERNAL, "sha256 failed");
}

/* A latency target needs the times it is measured in: said at submission
 * rather than by a job that fails when it runs. */
static int latency_needs_profile(const store_model *m, const char *pol_canon,
                                 svc_problem *p) {
  json_t *pc = json_loads(pol_canon, 0, NULL);
  bool by_latency = json_object_get(pc, "latency_reduction") != NULL;
  json_decref(pc);
  if (!by_latency)
    return DECOMP_OK;
  return svc_fail(p, DECOMP_ERR_BAD_POLICY,
              "policy: latency_reduction needs a latency profile (PUT "
              "/v1/models/%s/profile, then submit with \"profile\": true)",
              m->id);
}

int svc_job_submit(service *sv, const svc_job_request *rq, store_job *job,
                   bool *created, const char *rid, svc_problem *p) {
  memset(job, 0, sizeof *job);
  *created = false;
  store_model m;
  int rc = store_model_get(sv->s, rq->model_id, &m);
  if (rc != DECOMP_OK)
    return svc_fail(p, rc, "model '%s': %s", rq->model_id,
                rc == DECOMP_ERR_NOT_FOUND ? "no such model" : store_errmsg());
  /* The output shard size of a sharded model's job (its outputs are
   * sharded safetensors); the daemon's shard_bytes when not given. */
  if (rq->shard_bytes > 0 && !shards_model_is_sharded(&m))
    return svc_fail(p, DECOMP_ERR_BAD_REQUEST,
                "'shard_bytes' is for a sharded model's job; model %s is a "
                "%s file",
                m.id, m.format);
  job->shard_bytes = rq->shard_bytes;
  char *spec_text = NULL;
  if (!rq->spec) { /* the model's own spec, if it has one */
    if ((rc = store_model_get_spec(sv->s, m.id, &spec_text)) != DECOMP_OK)
      return store_failed(p, rc);
    if (!spec_text && !is_torchscript(&m))
      return svc_fail(p, DECOMP_ERR_BAD_SPEC,
                  "no 'spec' given and model %s has none (PUT "
                  "/v1/models/%s/spec)",
                  m.id, m.id);
  }
  if ((rc = job_attachment(&m, "calibration", rq->calibration,
                           rq->calibration_digest, m.calibration,
                           job->calibration, p)) != DECOMP_OK ||
      (rc = job_attachment(&m, "profile", rq->profile, rq->profile_digest,
                           m.profile, job->profile, p)) != DECOMP_OK) {
    free(spec_text);
    return rc;
  }
  /* A TorchScript model with no spec given nor attached: the worker takes
   * the layer spec from the archive (the job's spec is stored empty). */
  bool spec_from_archive = !rq->spec && !spec_text;
  const char *spec_in = rq->spec ? rq->spec : spec_text;
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *spec = NULL;
  decomp_policy *pol = NULL;
  char *spec_canon = NULL, *pol_canon = NULL;
  static char no_spec[1] = "";
  rc = ctx ? DECOMP_OK : svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
  if (rc == DECOMP_OK && !spec_from_archive)
    rc = spec_validate(sv, ctx, &m, spec_in, &spec, p);
  if (rc == DECOMP_OK &&
      (rc = decomp_policy_parse(ctx, rq->policy ? rq->policy : "budget",
                                &pol)) != DECOMP_OK)
    engine_failed(p, ctx, rc);
  if (rc == DECOMP_OK && job->calibration[0])
    rc = job_calibration_check(sv, ctx, &m, job->calibration, spec, p);
  if (rc == DECOMP_OK && job->profile[0])
    rc = job_profile_check(sv, ctx, &m, job->profile, spec, p);
  if (rc == DECOMP_OK) {
    spec_canon = spec ? decomp_spec_to_json(spec) : NULL;
    pol_canon = decomp_policy_to_json(pol);
    if ((!spec_canon && !spec_from_archive) || !pol_canon)
      rc = svc_fail(p, DECOMP_ERR_ENCODE,
                "could not encode the canonical spec and policy");
  }
  if (rc == DECOMP_OK && !job->profile[0])
    rc = latency_needs_profile(&m, pol_canon, p);
  char key_hex[65];
  if (rc == DECOMP_OK &&
      (rc = job_key(&m, spec_canon ? spec_canon : no_spec, pol_canon, job,
                    key_hex, p)) == DECOMP_OK) {
    snprintf(job->model_id, sizeof job->model_id, "%s", m.id);
    job->spec = spec_canon ? spec_canon : no_spec;
    job->policy = pol_canon;
    rc = store_job_submit(sv->s, key_hex, job, created);
    if (rc != DECOMP_OK) {
      job->spec = job->policy = NULL; /* still ours: freed below */
      if (rc == DECOMP_ERR_NOT_FOUND) /* deleted since it was read above */
        svc_fail(p, rc, "model '%s': no such model", m.id);
      else if (rc == DECOMP_ERR_CONFLICT) {
        /* the store's message names which: "… not calibration sha256:…" */
        const char *what =
            strstr(store_errmsg(), "not profile ") ? "profile" : "calibration";
        svc_fail(p, rc,
             "%s (attach it again with PUT /v1/models/%s/%s, or submit with "
             "\"%s\": true)",
             store_errmsg(), m.id, what, what);
      } else
        store_failed(p, rc);
    }
  }
  if (rc == DECOMP_OK) {
    /* a new job wakes the workers through the store (store_set_wake) */
    LOG(LOG_INFO, "jobs", rid,
        "event=job_%s id=%s model=%s policy=%s calibration=%s profile=%s",
        *created ? "queued" : "existing", job->id, m.id,
        log_q(decomp_policy_name(pol)),
        job->calibration[0] ? job->calibration : "none",
        job->profile[0] ? job->profile : "none");
  }
  free(spec_text);
  decomp_free(spec_canon);
  decomp_free(pol_canon);
  if (pol)
    decomp_policy_free(pol);
  if (spec)
    decomp_spec_free(spec);
  decomp_ctx_free(ctx);
  return rc;
}

int svc_job_retry(service *sv, const char *id, store_job *job, bool *requeued,
                  const char *rid, svc_problem *p) {
  int rc = store_job_retry(sv->s, id, job, requeued);
  if (rc != DECOMP_OK)
    return store_failed(p, rc);
  if (*requeued) /* the workers are woken through the store */
    LOG(LOG_INFO, "jobs", rid,
        "event=job_retried id=%s model=%s attempts=%d", job->id, job->model_id,
        job->attempts);
  return DECOMP_OK;
}
