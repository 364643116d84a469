/* routes.c — the API: the route table and its handlers (api/openapi.yaml is
 * the contract; `decompd --routes` prints this table and a test compares
 * the two).
 *
 * A handler parses the request, calls the store (to read) or the service
 * (service.h: to check and change — models, their specs and attachments,
 * jobs) and answers; the checks against the engine, the store's one-step
 * changes and the workers' wake-ups are the service's. Bodies are JSON;
 * errors application/problem+json with the code from decomp/errors.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "decomp/decomp.h"
#include "decomp/torchscript.h"
#include "dashboard.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "queue.h"
#include "service.h"
#include "shards.h"
#include "text.h"
#include "worker.h"

#define JSON_TYPE "application/json"

/* Answer `o` (taken; NULL when building it failed). Stored text goes in
 * through text_json, so a failure here is memory or a bug, not input: it is
 * called what it is, encode_failed. */
static void reply_json(http_req *r, int status, json_t *o) {
  char *text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
  json_decref(o);
  if (!text) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode the %s answer",
                       http_req_method(r));
    return;
  }
  http_reply(r, status, JSON_TYPE, text, strlen(text));
}

static json_t *time_json(int64_t ms) {
  if (ms <= 0)
    return json_null();
  time_t sec = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  char buf[64];
  snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
           tm.tm_sec, (int)(ms % 1000));
  return json_string(buf);
}

/* Problem from a store failure (its code and this thread's detail). */
static void store_problem(http_req *r, int rc) {
  http_reply_problem(r, rc, "%s", store_errmsg());
}

/* ---- health, metrics -------------------------------------------------- */

static void h_healthz(http_req *r) {
  reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* GET /readyz, open to anyone: why the store is not ready goes to the log
 * (it may name the database server), not into the answer. */
static void h_readyz(http_req *r) {
  int rc = store_ping(http_req_store(r));
  if (rc != DECOMP_OK) {
    LOG(LOG_WARN, "main", http_req_id(r), "event=not_ready code=%s error=%s",
        decomp_error_code(rc), log_q(store_errmsg()));
    http_reply_problem(r, DECOMP_ERR_UNAVAILABLE,
                       "the store is not reachable (the daemon's log says why)");
    return;
  }
  reply_json(r, 200,
             json_pack("{s:s, s:i}", "status", "ready", "schema_version",
                       store_schema_version(http_req_store(r))));
}

static void h_metrics(http_req *r) {
  size_t len = 0;
  char *text = metrics_render(http_req_store(r), &len);
  if (!text) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "metrics");
    return;
  }
  http_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* ---- models ----------------------------------------------------------- */

/* A model's attachments — its calibration and its latency profile: one
 * blob each, named on the model by its digest with the layers it covers
 * and its size; attached, fetched and detached the same way. */
typedef struct attachment {
  const char *what; /* "calibration", "profile": the route's last part */
  const char *file; /* the download's name after the model's id */
  const char *type; /* its content type */
  store_attachment kind;
  size_t digest, layers, size; /* offsets of the fields in store_model */
} attachment;

static const attachment CALIBRATION = {
    "calibration", "calibration.safetensors", "application/octet-stream",
    STORE_ATTACH_CALIBRATION, offsetof(store_model, calibration),
    offsetof(store_model, calibration_layers),
    offsetof(store_model, calibration_size)};
static const attachment PROFILE = {
    "profile", "profile.json", JSON_TYPE, STORE_ATTACH_PROFILE,
    offsetof(store_model, profile), offsetof(store_model, profile_layers),
    offsetof(store_model, profile_size)};

static char *att_digest(store_model *m, const attachment *a) {
  return (char *)m + a->digest;
}
static int64_t *att_field(store_model *m, size_t off) {
  return (int64_t *)(void *)((char *)m + off);
}

/* The attachment as the API shows it: null, or its digest, the layers it
 * covers, its size and where to fetch it. */
static json_t *attachment_json(const store_model *cm, const attachment *a) {
  store_model *m = (store_model *)cm;
  if (!att_digest(m, a)[0])
    return json_null();
  char url[96];
  snprintf(url, sizeof url, "/v1/models/%s/%s", m->id, a->what);
  return json_pack("{s:s, s:I, s:I, s:s}", "digest", att_digest(m, a),
                   "layers", (json_int_t)*att_field(m, a->layers), "size",
                   (json_int_t)*att_field(m, a->size), "url", url);
}

/* The answer to a call of the service that refused. */
static void svc_problem_reply(http_req *r, const svc_problem *p) {
  http_reply_problem(r, p->code, "%s", p->detail);
}

/* The answer to an attach: the attachment as it is now, and where. */
static void attached(http_req *r, store_model *m, const attachment *a) {
  char loc[96];
  snprintf(loc, sizeof loc, "/v1/models/%s/%s", m->id, a->what);
  http_reply_header(r, "Location", loc);
  reply_json(r, 200, attachment_json(m, a));
}

static void serve_blob(http_req *r, const char *digest, const char *media_type,
                       const char *filename);

/* GET /v1/models/{id}/{what}: the attached blob as it was sent. */
static void attachment_get(http_req *r, const attachment *a) {
  store_model m;
  int rc = store_model_get(http_req_store(r), http_req_param(r, 0), &m);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  if (!att_digest(&m, a)[0]) {
    http_reply_problem(r, DECOMP_ERR_NOT_FOUND,
                       "model %s has no %s (PUT /v1/models/%s/%s)", m.id,
                       a->what, m.id, a->what);
    return;
  }
  char fn[96];
  snprintf(fn, sizeof fn, "%s.%s", m.id, a->file);
  serve_blob(r, att_digest(&m, a), a->type, fn);
}

/* DELETE /v1/models/{id}/{what}: detached; jobs submitted with it keep it
 * (and its blob) as they are. */
static void attachment_delete(http_req *r, const attachment *a) {
  char old[STORE_DIGEST_LEN];
  svc_problem p;
  if (svc_model_detach(http_req_service(r), http_req_param(r, 0), a->kind, old,
                       http_req_id(r), &p) != DECOMP_OK)
    svc_problem_reply(r, &p);
  else
    http_reply(r, 204, NULL, NULL, 0);
}

static json_t *model_json(const store_model *m) {
  char self[64];
  snprintf(self, sizeof self, "/v1/models/%s", m->id);
  return json_pack(
      "{s:s, s:o, s:s, s:s, s:I, s:I, s:b, s:o, s:o, s:o, s:s}", "id", m->id,
      "name", text_json(m->name), "digest", m->digest, "format", m->format,
      "size", (json_int_t)m->size, "tensors", (json_int_t)m->tensors,
      "has_spec", m->has_spec, "calibration", attachment_json(m, &CALIBRATION),
      "profile", attachment_json(m, &PROFILE), "created_at", time_json(m->created_at), "url", self);
}

/* model_json with a sharded model's shards (GET /v1/models/{id}, and the
 * answer to binding one). */
static json_t *model_json_full(store *s, const store_model *m) {
  json_t *o = model_json(m);
  if (o && shards_model_is_sharded(m) &&
      json_object_set_new(o, "shards", shards_model_json(s, m)) != 0) {
    json_decref(o);
    o = NULL;
  }
  return o;
}

/* Whether the request's Content-Type is application/json (parameters
 * such as "; charset=utf-8" allowed). */
static bool body_is_json(http_req *r) {
  const char *ct = http_req_header(r, "Content-Type");
  size_t n = strlen(JSON_TYPE);
  return ct && strncasecmp(ct, JSON_TYPE, n) == 0 &&
         (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static void h_model_upload(http_req *r) {
  store *s = http_req_store(r);
  store_upload *u = http_req_take_upload(r);
  const char *name = http_req_query(r, "name");
  char digest[STORE_DIGEST_LEN];
  const char *why = NULL;
  if (!name)
    name = "";
  /* Checked before anything is stored: the name goes out in JSON. */
  if (!text_label_ok(name, &why)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "name %s: it must be at most 255 bytes of UTF-8 "
                       "without control characters",
                       why);
    goto done;
  }
  int rc = store_upload_finish(u, digest);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  if (body_is_json(r)) { /* a sharded checkpoint: its index and shards */
    store_model m;
    bool created = false;
    svc_problem p;
    store_upload *taken = u;
    u = NULL;
    if (svc_model_bind_sharded(http_req_service(r), taken, name, &m, &created,
                               http_req_id(r), &p) != DECOMP_OK) {
      svc_problem_reply(r, &p);
    } else {
      char loc[64];
      snprintf(loc, sizeof loc, "/v1/models/%s", m.id);
      http_reply_header(r, "Location", loc);
      reply_json(r, created ? 201 : 200, model_json_full(s, &m));
    }
    goto done;
  }
  store_model m;
  bool created = false;
  svc_problem p;
  if (svc_model_create(http_req_service(r), u, digest, name, &m, &created,
                       http_req_id(r), &p) != DECOMP_OK) {
    svc_problem_reply(r, &p);
    goto done;
  }
  char loc[64];
  snprintf(loc, sizeof loc, "/v1/models/%s", m.id);
  http_reply_header(r, "Location", loc);
  reply_json(r, created ? 201 : 200, model_json(&m));
done:
  store_upload_free(u);
}

static void h_models_list(http_req *r) {
  store_model *v = NULL;
  size_t n = 0;
  int rc = store_model_list(http_req_store(r), &v, &n);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  json_t *a = json_array();
  bool ok = a != NULL;
  for (size_t i = 0; i < n && ok; i++)
    ok = json_array_append_new(a, model_json(&v[i])) == 0;
  free(v);
  if (!ok) {
    json_decref(a);
    a = NULL;
  }
  reply_json(r, 200, a ? json_pack("{s:o}", "models", a) : NULL);
}

static void h_model_get(http_req *r) {
  store_model m;
  int rc = store_model_get(http_req_store(r), http_req_param(r, 0), &m);
  if (rc != DECOMP_OK)
    store_problem(r, rc);
  else
    reply_json(r, 200, model_json_full(http_req_store(r), &m));
}

static void h_model_delete(http_req *r) {
  store *s = http_req_store(r);
  /* Its blobs (weights, shards, calibration, profile) are collected by the
   * store with the row, unless something else still names them. */
  int rc = store_model_delete(s, http_req_param(r, 0));
  if (rc != DECOMP_OK)
    store_problem(r, rc);
  else
    http_reply(r, 204, NULL, NULL, 0);
}

static void h_model_spec_put(http_req *r) {
  size_t len = 0;
  const char *body = http_req_body(r, &len);
  json_error_t jerr;
  json_t *in = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  char *text = NULL, *canon = NULL;
  svc_problem p;
  if (!in) {
    http_reply_problem(r, DECOMP_ERR_BAD_JSON, "line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
  } else if (!json_is_object(in) && !json_is_array(in)) {
    http_reply_problem(r, DECOMP_ERR_BAD_SPEC,
                       "a layer spec is {\"layers\": [...]} or a list");
  } else if (!(text = json_dumps(in, JSON_COMPACT))) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode the layer spec");
  } else if (svc_model_set_spec(http_req_service(r), http_req_param(r, 0), text,
                                &canon, &p) != DECOMP_OK) {
    svc_problem_reply(r, &p);
  } else {
    http_reply_text(r, 200, JSON_TYPE, canon);
  }
  json_decref(in);
  free(text);
  decomp_free(canon);
}

static void h_model_spec_get(http_req *r) {
  char *spec = NULL;
  int rc = store_model_get_spec(http_req_store(r), http_req_param(r, 0), &spec);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  if (!spec) {
    http_reply_problem(r, DECOMP_ERR_NOT_FOUND, "model %s has no layer spec",
                       http_req_param(r, 0));
    return;
  }
  http_reply(r, 200, JSON_TYPE, spec, strlen(spec));
}

/* ---- blobs: ETag, If-None-Match, Range, sendfile ----------------------- */

/* 0: serve it all (no Range, or one we ignore), 1: [*a, *b], -1: 416. */
static int parse_range(const char *h, int64_t size, int64_t *a, int64_t *b) {
  if (!h || strncmp(h, "bytes=", 6) != 0 || strchr(h, ','))
    return 0;
  const char *p = h + 6;
  char *end;
  if (*p == '-') {
    if (!isdigit((unsigned char)p[1]))
      return 0;
    long long n = strtoll(p + 1, &end, 10);
    if (*end)
      return 0;
    if (n == 0 || size == 0)
      return -1;
    *a = n >= size ? 0 : size - n;
    *b = size - 1;
    return 1;
  }
  if (!isdigit((unsigned char)*p))
    return 0;
  long long first = strtoll(p, &end, 10);
  if (*end != '-')
    return 0;
  long long last = size - 1;
  if (end[1]) {
    if (!isdigit((unsigned char)end[1]))
      return 0;
    last = strtoll(end + 1, &end, 10);
    if (*end || last < first)
      return 0;
  }
  if (first >= size)
    return -1;
  if (last >= size)
    last = size - 1;
  *a = first;
  *b = last;
  return 1;
}

/* Does an If-None-Match list hold `etag` (or `*`)? */
static bool etag_listed(const char *list, const char *etag) {
  if (!list)
    return false;
  if (strstr(list, etag))
    return true;
  while (*list == ' ')
    list++;
  return strcmp(list, "*") == 0;
}

static void serve_blob(http_req *r, const char *digest, const char *media_type,
                       const char *filename) {
  char etag[STORE_DIGEST_LEN + 4];
  snprintf(etag, sizeof etag, "\"%s\"", digest);
  http_reply_header(r, "ETag", etag);
  http_reply_header(r, "Accept-Ranges", "bytes");
  http_reply_header(r, "Cache-Control", "private, max-age=31536000, immutable");
  char disp[160];
  snprintf(disp, sizeof disp, "attachment; filename=\"%s\"", filename);
  http_reply_header(r, "Content-Disposition", disp);
  if (etag_listed(http_req_header(r, "If-None-Match"), etag)) {
    http_reply(r, 304, NULL, NULL, 0);
    return;
  }
  int fd = -1;
  int64_t size = 0;
  int rc = store_blob_open(http_req_store(r), digest, &fd, &size);
  if (rc != DECOMP_OK) {
    store_problem(r, rc == DECOMP_ERR_NOT_FOUND ? DECOMP_ERR_STORE : rc);
    return;
  }
  const char *range = http_req_header(r, "Range");
  const char *if_range = http_req_header(r, "If-Range");
  if (range && if_range && strcmp(if_range, etag) != 0)
    range = NULL; /* the client's copy is another version: send it all */
  int64_t a = 0, b = size - 1;
  int k = parse_range(range, size, &a, &b);
  if (k < 0) {
    close(fd);
    char cr[64];
    snprintf(cr, sizeof cr, "bytes */%lld", (long long)size);
    http_reply_problem(r, DECOMP_ERR_RANGE_NOT_SATISFIABLE,
                       "range %s is outside the %lld bytes", range,
                       (long long)size);
    http_reply_header(r, "Content-Range", cr);
    return;
  }
  if (k > 0) {
    char cr[96];
    snprintf(cr, sizeof cr, "bytes %lld-%lld/%lld", (long long)a, (long long)b,
             (long long)size);
    http_reply_fd(r, 206, media_type, fd, (uint64_t)a, (uint64_t)(b - a + 1));
    http_reply_header(r, "Content-Range", cr);
    return;
  }
  http_reply_fd(r, 200, media_type, fd, 0, (uint64_t)size);
}

static void h_model_content(http_req *r) {
  store_model m;
  int rc = store_model_get(http_req_store(r), http_req_param(r, 0), &m);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  char fn[64];
  /* a sharded model's content is its binding document (index + shard
   * digests); each shard is GET /v1/blobs/{digest} */
  if (shards_model_is_sharded(&m)) {
    snprintf(fn, sizeof fn, "%s.sharded.json", m.id);
    serve_blob(r, m.digest, JSON_TYPE, fn);
    return;
  }
  snprintf(fn, sizeof fn, "%s.%s", m.id, m.format);
  serve_blob(r, m.digest, "application/octet-stream", fn);
}

/* GET /v1/blobs/{digest} (and HEAD: is it stored, how large, or how far
 * did its partial upload get). */
static void h_blob_get(http_req *r) {
  char digest[STORE_DIGEST_LEN];
  const char *d = http_req_param(r, 0);
  if (strlen(d) == 64)
    snprintf(digest, sizeof digest, "sha256:%s", d);
  else
    snprintf(digest, sizeof digest, "%s", d);
  if (!store_digest_valid(digest)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "a blob is named by its digest: sha256:<64 lowercase "
                       "hex> (or the bare hex)");
    return;
  }
  char path[4200];
  if (store_blob_path(http_req_store(r), digest, path, sizeof path) !=
          DECOMP_OK ||
      access(path, F_OK) != 0) {
    shards_blob_missing(r, digest);
    return;
  }
  char fn[80];
  snprintf(fn, sizeof fn, "%.64s", digest + 7);
  serve_blob(r, digest, "application/octet-stream", fn);
}

/* ---- calibrations ------------------------------------------------------ */

/* PUT /v1/models/{id}/calibration: the body (streamed to a temp file and
 * hashed on the way, as uploads are) is checked against the model's layer
 * spec before it is stored, content-addressed, and attached in place of
 * any calibration before. */
static void h_model_calibration_put(http_req *r) {
  store_upload *u = http_req_take_upload(r);
  store_model m;
  char old[STORE_DIGEST_LEN];
  svc_problem p;
  if (svc_model_attach_calibration(http_req_service(r), http_req_param(r, 0), u,
                                   &m, old, http_req_id(r), &p) != DECOMP_OK)
    svc_problem_reply(r, &p);
  else
    attached(r, &m, &CALIBRATION);
  store_upload_free(u);
}

static void h_model_calibration_get(http_req *r) {
  attachment_get(r, &CALIBRATION);
}

static void h_model_calibration_delete(http_req *r) {
  attachment_delete(r, &CALIBRATION);
}

/* ---- latency profiles ------------------------------------------------- */

/* PUT /v1/models/{id}/profile: the body, a decompd.profile JSON document
 * (buffered up to max_json_bytes), is checked against the model's layer
 * spec with decomp_profile_check before it is stored as it came, content-
 * addressed, and attached in place of any profile before. */
static void h_model_profile_put(http_req *r) {
  size_t len = 0;
  const char *body = http_req_body(r, &len);
  store_model m;
  char old[STORE_DIGEST_LEN];
  svc_problem p;
  if (svc_model_attach_profile(http_req_service(r), http_req_param(r, 0), body,
                               len, &m, old, http_req_id(r), &p) != DECOMP_OK)
    svc_problem_reply(r, &p);
  else
    attached(r, &m, &PROFILE);
}

static void h_model_profile_get(http_req *r) {
  attachment_get(r, &PROFILE);
}

static void h_model_profile_delete(http_req *r) {
  attachment_delete(r, &PROFILE);
}

/* ---- jobs ------------------------------------------------------------- */

/* The job as the API shows it; NULL when a part could not be built (every
 * part counts: a job is never answered with a piece silently missing). */
static json_t *job_json(store *s, const store_job *j, bool detail) {
  char self[64];
  snprintf(self, sizeof self, "/v1/jobs/%s", j->id);
  json_t *o = json_pack(
      "{s:s, s:s, s:s, s:b, s:i, s:{s:I, s:I}, s:o, s:o, s:o, s:s}", "id",
      j->id, "model", j->model_id, "state", store_job_state_name(j->state),
      "cancel_requested", j->cancel_requested, "attempts", j->attempts,
      "progress", "layers_done", (json_int_t)j->layers_done, "layers_total",
      (json_int_t)j->layers_total, "created_at", time_json(j->created_at),
      "started_at", time_json(j->started_at), "finished_at",
      time_json(j->finished_at), "url", self);
  if (!o)
    return NULL;
  bool ok = true; /* json_object_set_new() fails (-1) on a NULL value */
  ok &= json_object_set_new(o, "calibration",
                            j->calibration[0] ? json_string(j->calibration)
                                              : json_null()) == 0;
  ok &= json_object_set_new(o, "profile",
                            j->profile[0] ? json_string(j->profile)
                                          : json_null()) == 0;
  json_t *prog = json_object_get(o, "progress");
  if (j->state == STORE_JOB_RUNNING && j->current_layer[0])
    ok &= json_object_set_new(prog, "current",
                              json_pack("{s:o, s:s, s:f}", "layer",
                                        text_json(j->current_layer), "step",
                                        j->current_step, "fraction",
                                        j->current_fraction)) == 0;
  else
    ok &= json_object_set_new(prog, "current", json_null()) == 0;
  if (j->started_at > 0) {
    int64_t end = j->finished_at > 0 ? j->finished_at : store_now_ms();
    ok &= json_object_set_new(
              o, "seconds",
              json_real((double)(end - j->started_at) / 1000.0)) == 0;
  }
  ok &= json_object_set_new(o, "shard_bytes",
                            j->shard_bytes > 0 ? json_integer(j->shard_bytes)
                                               : json_null()) == 0;
  ok &= json_object_set_new(o, "node",
                            j->node[0] ? text_json(j->node) : json_null()) == 0;
  ok &= json_object_set_new(o, "peak_rss_bytes",
                            j->peak_rss_bytes > 0
                                ? json_integer(j->peak_rss_bytes)
                                : json_null()) == 0;
  if (j->error_code[0])
    ok &= json_object_set_new(o, "error",
                              json_pack("{s:s, s:o}", "code", j->error_code,
                                        "message",
                                        text_json(j->error_message))) == 0;
  else
    ok &= json_object_set_new(o, "error", json_null()) == 0;
  if (!detail || !ok)
    goto out;
  if (j->policy) {
    json_t *p = json_loads(j->policy, 0, NULL);
    ok &= json_object_set_new(o, "policy", p ? p : text_json(j->policy)) == 0;
  }
  store_job_layer *ls = NULL;
  size_t nl = 0;
  json_t *layers = json_array();
  if (store_job_layers(s, j->id, &ls, &nl) == DECOMP_OK) {
    for (size_t i = 0; i < nl && layers; i++) {
      json_t *l = json_pack("{s:I, s:o, s:I, s:I, s:f}", "index",
                            (json_int_t)ls[i].index, "name",
                            text_json(ls[i].name), "rank",
                            (json_int_t)ls[i].rank, "max_rank",
                            (json_int_t)ls[i].max_rank, "seconds",
                            ls[i].seconds);
      if (l && ls[i].skip_reason[0] &&
          json_object_set_new(l, "skip_reason",
                              text_json(ls[i].skip_reason)) != 0) {
        json_decref(l);
        l = NULL;
      }
      ok &= json_array_append_new(layers, l) == 0;
    }
    free(ls);
  }
  ok &= json_object_set_new(o, "layers", layers) == 0;
  store_artifact *as = NULL;
  size_t na = 0;
  json_t *arts = json_array();
  if (store_artifact_list(s, j->id, &as, &na) == DECOMP_OK) {
    for (size_t i = 0; i < na && arts; i++) {
      char url[160];
      snprintf(url, sizeof url, "/v1/jobs/%s/artifacts/%s", j->id, as[i].name);
      ok &= json_array_append_new(
                arts, json_pack("{s:s, s:s, s:I, s:s, s:s}", "name",
                                as[i].name, "digest", as[i].digest, "size",
                                (json_int_t)as[i].size, "media_type",
                                as[i].media_type, "url", url)) == 0;
    }
    free(as);
  }
  ok &= json_object_set_new(o, "artifacts", arts) == 0;
out:
  if (!ok) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* A job's "calibration" or "profile" field `v`: true takes the model's
 * attached one, a digest names one, false or null: none. False (the
 * problem answered) for anything else. */
static bool job_attachment(http_req *r, const char *what, const json_t *v,
                           svc_attach_choice *choice,
                           char digest[STORE_DIGEST_LEN]) {
  *choice = SVC_ATTACH_NONE;
  digest[0] = '\0';
  if (json_is_true(v)) {
    *choice = SVC_ATTACH_MODELS;
  } else if (json_is_string(v)) {
    if (!store_digest_valid(json_string_value(v))) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "'%s' must be true or a digest "
                         "\"sha256:<64 lowercase hex>\"",
                         what);
      return false;
    }
    *choice = SVC_ATTACH_DIGEST;
    snprintf(digest, STORE_DIGEST_LEN, "%s", json_string_value(v));
  } else if (v && !json_is_false(v) && !json_is_null(v)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "'%s' must be true, false or a digest \"sha256:…\"",
                       what);
    return false;
  }
  return true;
}

static void h_job_submit(http_req *r) {
  size_t len = 0;
  const char *body = http_req_body(r, &len);
  json_error_t jerr;
  char *spec_text = NULL, *pol_text = NULL;
  svc_job_request rq = {0};
  json_t *in = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!in) {
    http_reply_problem(r, DECOMP_ERR_BAD_JSON, "line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
    goto done;
  }
  if (!json_is_object(in)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST, "expected a JSON object");
    goto done;
  }
  const char *key;
  json_t *val;
  json_object_foreach(in, key, val) {
    if (strcmp(key, "model") && strcmp(key, "spec") && strcmp(key, "policy") &&
        strcmp(key, "calibration") && strcmp(key, "profile") &&
        strcmp(key, "shard_bytes")) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "unknown field '%s' (expected model, spec, policy, "
                         "calibration, profile, shard_bytes)",
                         key);
      goto done;
    }
  }
  json_t *jm = json_object_get(in, "model");
  json_t *js = json_object_get(in, "spec");
  json_t *jp = json_object_get(in, "policy");
  json_t *jb = json_object_get(in, "shard_bytes");
  if (!json_is_string(jm)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "'model' must be a model id string");
    goto done;
  }
  rq.model_id = json_string_value(jm);
  if (jb && !json_is_null(jb)) {
    if (!json_is_integer(jb) || json_integer_value(jb) < 1) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "'shard_bytes' must be a positive integer (bytes)");
      goto done;
    }
    rq.shard_bytes = (int64_t)json_integer_value(jb);
  }
  if (js && !(json_is_object(js) || json_is_array(js))) {
    http_reply_problem(r, DECOMP_ERR_BAD_SPEC,
                       "'spec' must be a layer spec: {\"layers\": [...]} or a "
                       "list of layers");
    goto done;
  }
  if (jp && !json_is_string(jp) && !json_is_object(jp)) {
    http_reply_problem(r, DECOMP_ERR_BAD_POLICY,
                       "'policy' must be a policy name or object");
    goto done;
  }
  if (!job_attachment(r, "calibration", json_object_get(in, "calibration"),
                      &rq.calibration, rq.calibration_digest) ||
      !job_attachment(r, "profile", json_object_get(in, "profile"),
                      &rq.profile, rq.profile_digest))
    goto done;
  if (js && !(spec_text = json_dumps(js, JSON_COMPACT))) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode 'spec'");
    goto done;
  }
  if (jp && json_is_object(jp) && !(pol_text = json_dumps(jp, JSON_COMPACT))) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode 'policy'");
    goto done;
  }
  rq.spec = spec_text;
  rq.policy = pol_text ? pol_text : jp ? json_string_value(jp) : NULL;
  store_job job;
  bool created = false;
  svc_problem p;
  if (svc_job_submit(http_req_service(r), &rq, &job, &created, http_req_id(r),
                     &p) != DECOMP_OK) {
    svc_problem_reply(r, &p);
    goto done;
  }
  char loc[64];
  snprintf(loc, sizeof loc, "/v1/jobs/%s", job.id);
  http_reply_header(r, "Location", loc);
  reply_json(r, created ? 201 : 200, job_json(http_req_store(r), &job, true));
  store_job_clear(&job);
done:
  json_decref(in);
  free(spec_text);
  free(pol_text);
}

static void h_jobs_list(http_req *r) {
  const char *st = http_req_query(r, "state");
  const char *lim = http_req_query(r, "limit");
  const char *cur = http_req_query(r, "cursor");
  int state = -1, limit = 50;
  long long before = 0;
  char *end;
  if (st && (state = store_job_state_from_name(st)) < 0) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "state must be queued, running, succeeded, failed or "
                       "cancelled");
    return;
  }
  if (lim) {
    long v = strtol(lim, &end, 10);
    if (*end || end == lim || v < 1 || v > 500) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "limit must be 1 to 500");
      return;
    }
    limit = (int)v;
  }
  if (cur) {
    before = strtoll(cur, &end, 10);
    if (*end || end == cur || before < 1) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST, "bad cursor");
      return;
    }
  }
  store_job *v = NULL;
  size_t n = 0;
  int rc = store_job_list(http_req_store(r), state, before, limit, &v, &n);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  json_t *a = json_array();
  bool ok = a != NULL;
  for (size_t i = 0; i < n && ok; i++)
    ok = json_array_append_new(a, job_json(http_req_store(r), &v[i],
                                           false)) == 0;
  if (!ok) {
    json_decref(a);
    a = NULL;
  }
  json_t *next = json_null();
  if (n == (size_t)limit && n > 0) {
    char c[32];
    snprintf(c, sizeof c, "%lld", (long long)v[n - 1].seq);
    json_decref(next);
    next = json_string(c);
  }
  for (size_t i = 0; i < n; i++)
    store_job_clear(&v[i]);
  free(v);
  if (!a)
    json_decref(next);
  reply_json(r, 200,
             a ? json_pack("{s:o, s:o}", "jobs", a, "next_cursor", next)
               : NULL);
}

static void h_job_get(http_req *r) {
  store_job j;
  int rc = store_job_get(http_req_store(r), http_req_param(r, 0), true, &j);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  reply_json(r, 200, job_json(http_req_store(r), &j, true));
  store_job_clear(&j);
}

/* ---- a job's tasks (one job over many nodes) --------------------------- */

/* A task as the API shows it: who ran what, when, and how it ended. Its
 * record's digest stays inside (records are the coordinator's, dropped at
 * the job's end). NULL when a part could not be built, the layers
 * included: they are the JSON array the coordinator wrote, so one that
 * does not read back is a bug to see, not a list to leave out. */
static json_t *task_json(const store_task *t) {
  json_t *layers = json_loads(t->layers ? t->layers : "[]", 0, NULL);
  if (!json_is_array(layers)) {
    json_decref(layers);
    return NULL;
  }
  json_t *o = json_pack(
      "{s:s, s:i, s:o, s:I, s:s, s:i, s:o, s:o, s:o}", "stage",
      store_task_stage_name(t->stage), "index", t->index, "layers", layers,
      "cost", (json_int_t)t->cost, "state", store_task_state_name(t->state),
      "attempts", t->attempts, "node",
      t->node[0] ? text_json(t->node) : json_null(), "started_at",
      time_json(t->started_at), "finished_at", time_json(t->finished_at));
  if (!o)
    return NULL;
  json_t *err = t->error_code[0]
                    ? json_pack("{s:s, s:o}", "code", t->error_code, "message",
                                text_json(t->error_message))
                    : json_null();
  if (json_object_set_new(o, "error", err) != 0) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* GET /v1/jobs/{id}/tasks: the tasks a job was spread over, by stage and
 * index; none on a store that runs each job whole (embedded). */
static void h_job_tasks(http_req *r) {
  store *s = http_req_store(r);
  const char *id = http_req_param(r, 0);
  store_job j;
  int rc = store_job_get(s, id, false, &j);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  store_job_clear(&j);
  store_task *v = NULL;
  size_t n = 0;
  if ((rc = store_job_tasks(s, id, &v, &n)) != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  json_t *a = json_array();
  bool ok = a != NULL;
  for (size_t i = 0; i < n && ok; i++)
    ok = json_array_append_new(a, task_json(&v[i])) == 0;
  store_tasks_free(v, n);
  if (!ok) {
    json_decref(a);
    a = NULL;
  }
  reply_json(r, 200, a ? json_pack("{s:o}", "tasks", a) : NULL);
}

/* ---- live job events (server-sent events) ------------------------------ */

#define EVENTS_KEEPALIVE_S 15.0

struct job_events {
  store *s;
  char id[32];
  char last[512];  /* what the last event said (state, progress, current) */
  char *pending;   /* the event being sent */
  size_t len, off;
  double sent_at;  /* CLOCK_MONOTONIC seconds of the last bytes */
  bool final;      /* the job ended: close after `pending` */
};

static double mono_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void job_events_free(void *cls) {
  struct job_events *ev = cls;
  free(ev->pending);
  free(ev);
}

/* The next event, when there is one to send: the job whenever its state,
 * progress or place inside a layer changed (`event: job`), `event:
 * deleted` when it is gone, a comment every 15 s otherwise. */
static void job_events_poll(struct job_events *ev) {
  store_job j;
  int rc = store_job_get(ev->s, ev->id, false, &j);
  char *text = NULL;
  if (rc == DECOMP_ERR_NOT_FOUND) {
    if (asprintf(&text, "event: deleted\ndata: {\"id\":\"%s\"}\n\n",
                 ev->id) < 0)
      text = NULL;
    ev->final = true;
  } else if (rc == DECOMP_OK) {
    char sig[512];
    snprintf(sig, sizeof sig, "%d %d %d %lld %lld %s %s %.2f", j.state,
             j.cancel_requested, j.attempts, (long long)j.layers_done,
             (long long)j.layers_total, j.current_layer, j.current_step,
             j.current_fraction);
    bool ended = j.state != STORE_JOB_QUEUED && j.state != STORE_JOB_RUNNING;
    if (strcmp(sig, ev->last) != 0 || ended) {
      snprintf(ev->last, sizeof ev->last, "%s", sig);
      json_t *o = job_json(ev->s, &j, false);
      char *data = o ? json_dumps(o, JSON_COMPACT) : NULL;
      json_decref(o);
      if (data && asprintf(&text, "event: job\ndata: %s\n\n", data) < 0)
        text = NULL;
      free(data);
      ev->final = ended;
    }
    store_job_clear(&j);
  }
  if (!text && mono_s() - ev->sent_at >= EVENTS_KEEPALIVE_S)
    text = strdup(": keepalive\n\n");
  if (text) {
    ev->pending = text;
    ev->len = strlen(text);
    ev->off = 0;
  }
}

static size_t job_events_next(void *cls, char *buf, size_t max, bool *done) {
  struct job_events *ev = cls;
  if (!ev->pending && !ev->final)
    job_events_poll(ev);
  if (!ev->pending) {
    *done = ev->final;
    return 0;
  }
  size_t n = ev->len - ev->off < max ? ev->len - ev->off : max;
  memcpy(buf, ev->pending + ev->off, n);
  ev->off += n;
  ev->sent_at = mono_s();
  if (ev->off == ev->len) {
    free(ev->pending);
    ev->pending = NULL;
  }
  return n;
}

static void h_job_events(http_req *r) {
  store_job j;
  int rc = store_job_get(http_req_store(r), http_req_param(r, 0), false, &j);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  store_job_clear(&j);
  struct job_events *ev = calloc(1, sizeof *ev);
  if (!ev) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    return;
  }
  ev->s = http_req_store(r);
  snprintf(ev->id, sizeof ev->id, "%s", http_req_param(r, 0));
  ev->sent_at = mono_s();
  http_reply_stream(r, 200, "text/event-stream", job_events_next, ev,
                    job_events_free);
  http_reply_header(r, "Cache-Control", "no-cache");
}

static void h_job_cancel(http_req *r) {
  store_job j;
  int rc = store_job_cancel(http_req_store(r), http_req_param(r, 0), &j);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  if (j.state == STORE_JOB_CANCELLED)
    metrics_job_finished("cancelled");
  reply_json(r, j.state == STORE_JOB_RUNNING ? 202 : 200,
             job_json(http_req_store(r), &j, false));
  store_job_clear(&j);
}

/* A failed or cancelled job runs again; submits are idempotent by content,
 * so resubmitting it would only return it as it is. */
static void h_job_retry(http_req *r) {
  store_job j;
  bool requeued = false;
  svc_problem p;
  if (svc_job_retry(http_req_service(r), http_req_param(r, 0), &j, &requeued,
                    http_req_id(r), &p) != DECOMP_OK) {
    svc_problem_reply(r, &p);
    return;
  }
  reply_json(r, 200, job_json(http_req_store(r), &j, false));
  store_job_clear(&j);
}

static void h_job_delete(http_req *r) {
  store *s = http_req_store(r);
  int rc = store_job_delete(s, http_req_param(r, 0));
  if (rc != DECOMP_OK)
    store_problem(r, rc);
  else
    http_reply(r, 204, NULL, NULL, 0);
}

static const char *const ARTIFACT_NAMES[] = {
    DECOMP_ARTIFACT_WEIGHTS_PTH, DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS,
    DECOMP_ARTIFACT_INFO, DECOMP_ARTIFACT_INDEX, NULL};

/* Whether `name` is one an artifact may have: the fixed names, or a shard
 * of a sharded output, model-NNNNN-of-NNNNN.safetensors. It is only ever
 * looked up in the job's artifact rows, never used as a path. */
static bool artifact_name_ok(const char *name) {
  for (int i = 0; ARTIFACT_NAMES[i]; i++)
    if (strcmp(name, ARTIFACT_NAMES[i]) == 0)
      return true;
  static const char SHAPE[] = "model-#####-of-#####.safetensors";
  if (strlen(name) != sizeof SHAPE - 1)
    return false;
  for (size_t i = 0; SHAPE[i]; i++)
    if (SHAPE[i] == '#' ? !isdigit((unsigned char)name[i])
                        : name[i] != SHAPE[i])
      return false;
  return true;
}

static void h_artifact_get(http_req *r) {
  const char *job = http_req_param(r, 0), *name = http_req_param(r, 1);
  if (!artifact_name_ok(name)) {
    http_reply_problem(r, DECOMP_ERR_NOT_FOUND,
                       "no artifact '%s' (decomposed_weights.pth, "
                       "decomposed_weights.safetensors, decompose_info.json; "
                       "a sharded model's job: model.safetensors.index.json "
                       "and model-NNNNN-of-NNNNN.safetensors)",
                       name);
    return;
  }
  store_job j;
  int rc = store_job_get(http_req_store(r), job, false, &j);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  int state = j.state;
  store_job_clear(&j);
  if (state != STORE_JOB_SUCCEEDED) {
    http_reply_problem(r, DECOMP_ERR_CONFLICT,
                       "job %s is %s; artifacts exist once it has succeeded",
                       job, store_job_state_name(state));
    return;
  }
  store_artifact a;
  if ((rc = store_artifact_get(http_req_store(r), job, name, &a)) !=
      DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  serve_blob(r, a.digest, a.media_type, a.name);
}

/* ---- nodes ------------------------------------------------------------ */

/* GET /v1/nodes: every node serving this index as its last heartbeat left
 * it, whether it is alive (beat within NODE_ALIVE_MS), and which one
 * answered. */
static void h_nodes(http_req *r) {
  store_node *v = NULL;
  size_t n = 0;
  int rc = store_node_list(http_req_store(r), &v, &n);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  const store_options o = {.node_id = http_req_config(r)->node_id};
  char self[128];
  store_node_name(&o, self, sizeof self);
  int64_t now = store_now_ms();
  json_t *a = json_array();
  bool ok = a != NULL;
  for (size_t i = 0; i < n && ok; i++)
    ok = json_array_append_new(
             a, json_pack("{s:o, s:s, s:o, s:o, s:o, s:b, s:i, s:i}", "id",
                          text_json(v[i].id), "version", v[i].version,
                          "address", text_json(v[i].address), "started_at",
                          time_json(v[i].started_at), "heartbeat_at",
                          time_json(v[i].heartbeat_at), "alive",
                          now - v[i].heartbeat_at <= NODE_ALIVE_MS, "workers",
                          v[i].workers, "running", v[i].running)) == 0;
  free(v);
  if (!ok) {
    json_decref(a);
    a = NULL;
  }
  reply_json(r, 200,
             a ? json_pack("{s:o, s:o}", "nodes", a, "self", text_json(self))
               : NULL);
}

/* ---- the table -------------------------------------------------------- */

const http_route HTTP_ROUTES[] = {
    {"GET", "/healthz", STORE_ROLE_NONE, HTTP_BODY_NONE, h_healthz,
     "liveness"},
    {"GET", "/readyz", STORE_ROLE_NONE, HTTP_BODY_NONE, h_readyz,
     "readiness (store reachable)"},
    {"GET", "/metrics", STORE_ROLE_READ, HTTP_BODY_NONE, h_metrics,
     "Prometheus metrics"},
    {"GET", "/v1/nodes", STORE_ROLE_READ, HTTP_BODY_NONE, h_nodes,
     "the nodes serving this index, with their last heartbeats"},
    {"POST", "/v1/models", STORE_ROLE_SUBMIT, HTTP_BODY_STREAM,
     h_model_upload,
     "upload a weight file (raw body; ?name=), or bind a sharded "
     "checkpoint (JSON: index + shard digests)"},
    {"PUT", "/v1/blobs/{digest}", STORE_ROLE_SUBMIT, HTTP_BODY_PARTIAL,
     shards_blob_put,
     "upload a shard by its digest, resumable (Content-Range)"},
    {"GET", "/v1/blobs/{digest}", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_blob_get, "download a blob; HEAD: stored, or a partial's offset"},
    {"GET", "/v1/models", STORE_ROLE_READ, HTTP_BODY_NONE, h_models_list,
     "list models"},
    {"GET", "/v1/models/{id}", STORE_ROLE_READ, HTTP_BODY_NONE, h_model_get,
     "get a model"},
    {"DELETE", "/v1/models/{id}", STORE_ROLE_ADMIN, HTTP_BODY_NONE,
     h_model_delete, "delete a model"},
    {"GET", "/v1/models/{id}/content", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_model_content, "download a model's weight file"},
    {"PUT", "/v1/models/{id}/spec", STORE_ROLE_SUBMIT, HTTP_BODY_JSON,
     h_model_spec_put, "attach a layer spec to a model"},
    {"GET", "/v1/models/{id}/spec", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_model_spec_get, "get a model's layer spec"},
    {"PUT", "/v1/models/{id}/calibration", STORE_ROLE_SUBMIT,
     HTTP_BODY_STREAM, h_model_calibration_put,
     "attach a calibration to a model (raw body: its safetensors file)"},
    {"GET", "/v1/models/{id}/calibration", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_model_calibration_get, "download a model's calibration"},
    {"DELETE", "/v1/models/{id}/calibration", STORE_ROLE_SUBMIT,
     HTTP_BODY_NONE, h_model_calibration_delete,
     "detach a model's calibration"},
    {"PUT", "/v1/models/{id}/profile", STORE_ROLE_SUBMIT, HTTP_BODY_JSON,
     h_model_profile_put,
     "attach a latency profile to a model (body: its JSON document)"},
    {"GET", "/v1/models/{id}/profile", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_model_profile_get, "get a model's latency profile"},
    {"DELETE", "/v1/models/{id}/profile", STORE_ROLE_SUBMIT, HTTP_BODY_NONE,
     h_model_profile_delete, "detach a model's latency profile"},
    {"POST", "/v1/jobs", STORE_ROLE_SUBMIT, HTTP_BODY_JSON, h_job_submit,
     "submit a job {model, spec, policy, calibration, profile}"},
    {"GET", "/v1/jobs", STORE_ROLE_READ, HTTP_BODY_NONE, h_jobs_list,
     "list jobs (?state=&limit=&cursor=)"},
    {"GET", "/v1/jobs/{id}", STORE_ROLE_READ, HTTP_BODY_NONE, h_job_get,
     "get a job with per-layer progress"},
    {"GET", "/v1/jobs/{id}/events", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_job_events, "live job events (text/event-stream) until it ends"},
    {"GET", "/v1/jobs/{id}/tasks", STORE_ROLE_READ, HTTP_BODY_NONE, h_job_tasks,
     "the tasks a job was spread over, and which node ran each"},
    {"DELETE", "/v1/jobs/{id}", STORE_ROLE_ADMIN, HTTP_BODY_NONE,
     h_job_delete, "delete a finished job and its artifacts"},
    {"POST", "/v1/jobs/{id}/cancel", STORE_ROLE_SUBMIT, HTTP_BODY_NONE,
     h_job_cancel, "cancel a job"},
    {"POST", "/v1/jobs/{id}/retry", STORE_ROLE_SUBMIT, HTTP_BODY_NONE,
     h_job_retry, "run a failed or cancelled job again"},
    {"GET", "/v1/jobs/{id}/artifacts/{name}", STORE_ROLE_READ, HTTP_BODY_NONE,
     h_artifact_get, "download an artifact (ETag, Range)"},
    /* the dashboard: a static shell, open so it can ask for a token */
    {"GET", "/", STORE_ROLE_NONE, HTTP_BODY_NONE, dashboard_index,
     "the job dashboard (HTML)"},
    {"GET", "/ui/app.js", STORE_ROLE_NONE, HTTP_BODY_NONE, dashboard_file,
     "dashboard script"},
    {"GET", "/ui/style.css", STORE_ROLE_NONE, HTTP_BODY_NONE, dashboard_file,
     "dashboard stylesheet"},
    {"GET", "/ui/favicon.svg", STORE_ROLE_NONE, HTTP_BODY_NONE,
     dashboard_file, "dashboard icon"},
    {NULL, NULL, 0, 0, NULL, NULL},
};
