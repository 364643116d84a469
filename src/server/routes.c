/* routes.c — the API: the route table and its handlers (api/openapi.yaml is
 * the contract; `decompd --routes` prints this table and a test compares
 * the two).
 *
 * Handlers read the request, talk to the store and queue, and answer. They
 * may open a weight file, a calibration or a latency profile to validate it
 * (the engine's readers map it and check every size and offset,
 * decomp_calibration_check reads each Gram once, decomp_profile_check reads
 * the profile's JSON: no decomposition); the SVD work
 * is the workers' alone, and so is loading a TorchScript archive (it runs
 * the archive's code, in a sandboxed reader process: worker.c). Bodies are
 * JSON; errors application/problem+json with the code from decomp/errors.h. */
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
#include "queue.h"
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

static void h_readyz(http_req *r) {
  int rc = store_ping(http_req_store(r));
  if (rc != DECOMP_OK) {
    http_reply_problem(r, DECOMP_ERR_UNAVAILABLE, "store: %s", store_errmsg());
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
  int (*set)(store *s, const char *id, const char *digest, int64_t layers,
             int64_t size, char old[STORE_DIGEST_LEN]);
  size_t digest, layers, size; /* offsets of the fields in store_model */
} attachment;

static const attachment CALIBRATION = {
    "calibration", "calibration.safetensors", "application/octet-stream",
    store_model_set_calibration, offsetof(store_model, calibration),
    offsetof(store_model, calibration_layers),
    offsetof(store_model, calibration_size)};
static const attachment PROFILE = {
    "profile", "profile.json", JSON_TYPE, store_model_set_profile,
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

/* Attach the checked upload `u` (its blob `digest`) to model m in place of
 * the one before (whose blob is collected), and answer with it; a model
 * deleted meanwhile leaves the blob to no one (collected too). */
static void attach(http_req *r, store_model *m, const attachment *a,
                   store_upload *u, const char *digest, size_t layers,
                   int64_t size) {
  store *s = http_req_store(r);
  char old[STORE_DIGEST_LEN] = "";
  store_blob_lock(s);
  int rc = store_upload_commit(u);
  if (rc == DECOMP_OK)
    rc = a->set(s, m->id, digest, (int64_t)layers, size, old);
  if (rc == DECOMP_OK && old[0] && strcmp(old, digest) != 0)
    store_blob_gc(s, old);
  else if (rc != DECOMP_OK)
    store_blob_gc(s, digest);
  store_blob_unlock(s);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  LOG(LOG_INFO, "models", http_req_id(r),
      "event=%s_attached model=%s digest=%s layers=%zu size=%lld "
      "replaced=%s",
      a->what, m->id, digest, layers, (long long)size, old[0] ? old : "none");
  snprintf(att_digest(m, a), STORE_DIGEST_LEN, "%s", digest);
  *att_field(m, a->layers) = (int64_t)layers;
  *att_field(m, a->size) = size;
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
  store *s = http_req_store(r);
  char old[STORE_DIGEST_LEN];
  store_blob_lock(s);
  int rc = a->set(s, http_req_param(r, 0), NULL, 0, 0, old);
  if (rc == DECOMP_OK)
    store_blob_gc(s, old);
  store_blob_unlock(s);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  LOG(LOG_INFO, "models", http_req_id(r), "event=%s_detached model=%s digest=%s",
      a->what, http_req_param(r, 0), old);
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
  decomp_ctx *ctx = NULL;
  decomp_weights *w = NULL;
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
    store_upload *taken = u;
    u = NULL;
    if (shards_model_bind(r, taken, name, &m, &created)) {
      char loc[64];
      snprintf(loc, sizeof loc, "/v1/models/%s", m.id);
      http_reply_header(r, "Location", loc);
      reply_json(r, created ? 201 : 200, model_json_full(s, &m));
    }
    goto done;
  }
  if (store_upload_size(u) == 0) {
    http_reply_problem(r, DECOMP_ERR_UNKNOWN_FORMAT, "the body is empty");
    goto done;
  }
  /* Validate before accepting: the reader maps the file and checks every
   * structure; nothing in it is executed. */
  ctx = decomp_ctx_new();
  if (!ctx) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  rc = decomp_weights_open(ctx, store_upload_path(u), &w);
  /* A TorchScript archive (a zip whose directory parses and holds
   * constants.pkl) is accepted on that alone when this build can read
   * TorchScript: loading it runs the archive's code and may take up to the
   * reader's time limit, so a job's worker does it, in the sandboxed reader
   * process (worker.c). */
  bool ts = false;
  if (rc == DECOMP_ERR_TORCHSCRIPT && decomp_torchscript_supported()) {
    const char *reader = worker_ts_reader();
    if (access(reader, X_OK) != 0) {
      http_reply_problem(r, DECOMP_ERR_TORCHSCRIPT,
                         "a TorchScript archive: this server's TorchScript "
                         "reader is not installed");
      LOG(LOG_ERROR, "models", http_req_id(r),
          "event=torchscript_reader_missing reader=%s", log_q(reader));
      goto done;
    }
    ts = true;
    rc = DECOMP_OK;
  }
  if (rc != DECOMP_OK) {
    const char *m = decomp_errmsg(ctx);
    const char *tmp = store_upload_path(u);
    /* The message names our temp file; say "upload" instead. */
    if (strncmp(m, tmp, strlen(tmp)) == 0)
      http_reply_problem(r, rc, "upload%s", m + strlen(tmp));
    else
      http_reply_problem(r, rc, "%s", m[0] ? m : decomp_strerror(rc));
    goto done;
  }
  store_model m = {0};
  snprintf(m.digest, sizeof m.digest, "%s", digest);
  snprintf(m.name, sizeof m.name, "%s", name);
  snprintf(m.format, sizeof m.format, "%s",
           decomp_format_name(ts ? DECOMP_FORMAT_TORCHSCRIPT
                                 : decomp_weights_format(w)));
  m.size = store_upload_size(u);
  /* A TorchScript archive's tensors are counted only by loading it. */
  m.tensors = ts ? 0 : (int64_t)decomp_weights_count(w);
  decomp_weights_free(w);
  w = NULL;
  bool created = false;
  rc = store_model_put(s, u, &m, &created);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  LOG(LOG_INFO, "models", http_req_id(r),
      "event=model_%s id=%s digest=%s format=%s size=%lld tensors=%lld",
      created ? "stored" : "deduplicated", m.id, m.digest, m.format,
      (long long)m.size, (long long)m.tensors);
  char loc[64];
  snprintf(loc, sizeof loc, "/v1/models/%s", m.id);
  http_reply_header(r, "Location", loc);
  reply_json(r, created ? 201 : 200, model_json(&m));
done:
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
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

static bool is_torchscript(const store_model *m) {
  return strcmp(m->format, "torchscript") == 0;
}

/* Parse `spec_text` and check it against the model's weights; on failure
 * the reply is a problem and the result is not DECOMP_OK. A TorchScript
 * model's weights are known only once a job has loaded the archive: its
 * spec is parsed here and checked against them when the job runs. */
static int spec_validate(http_req *r, decomp_ctx *ctx, const store_model *m,
                         const char *spec_text, decomp_spec **out) {
  decomp_weights *w = NULL;
  decomp_spec *spec = NULL;
  char path[4200], msg[1024] = "";
  int rc = decomp_spec_parse(ctx, spec_text, strlen(spec_text), &spec);
  if (rc != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
    return rc;
  }
  if (is_torchscript(m)) {
    *out = spec;
    return DECOMP_OK;
  }
  /* The spec must fit the weights: fail now, not in the queue. */
  store_model now;
  rc = store_blob_path(http_req_store(r), m->digest, path, sizeof path);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
  } else if ((rc = shards_model_is_sharded(m)
                      ? shards_weights_open(http_req_store(r), ctx, m, &w,
                                            msg, sizeof msg)
                      : decomp_weights_open(ctx, path, &w)) != DECOMP_OK &&
             store_model_get(http_req_store(r), m->id, &now) ==
                 DECOMP_ERR_NOT_FOUND) {
    /* deleted (and its blob collected) since it was read */
    rc = DECOMP_ERR_NOT_FOUND;
    http_reply_problem(r, rc, "model '%s': no such model", m->id);
  } else if (rc != DECOMP_OK && msg[0]) {
    http_reply_problem(r, rc, "%s", msg);
  } else if (rc != DECOMP_OK ||
             (rc = decomp_spec_check(ctx, spec, w)) != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
  }
  decomp_weights_free(w);
  if (rc != DECOMP_OK) {
    decomp_spec_free(spec);
    return rc;
  }
  *out = spec;
  return DECOMP_OK;
}

static void h_model_spec_put(http_req *r) {
  size_t len = 0;
  const char *body = http_req_body(r, &len);
  json_error_t jerr;
  json_t *in = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  decomp_ctx *ctx = NULL;
  decomp_spec *spec = NULL;
  char *text = NULL, *canon = NULL;
  store_model m;
  if (!in) {
    http_reply_problem(r, DECOMP_ERR_BAD_JSON, "line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
    goto done;
  }
  if (!json_is_object(in) && !json_is_array(in)) {
    http_reply_problem(r, DECOMP_ERR_BAD_SPEC,
                       "a layer spec is {\"layers\": [...]} or a list");
    goto done;
  }
  int rc = store_model_get(http_req_store(r), http_req_param(r, 0), &m);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  ctx = decomp_ctx_new();
  if (!ctx) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if (!(text = json_dumps(in, JSON_COMPACT))) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode the layer spec");
    goto done;
  }
  if (spec_validate(r, ctx, &m, text, &spec) != DECOMP_OK)
    goto done;
  canon = decomp_spec_to_json(spec);
  if (!canon) {
    http_reply_problem(r, DECOMP_ERR_ENCODE,
                       "could not encode the canonical layer spec");
    goto done;
  }
  if ((rc = store_model_set_spec(http_req_store(r), m.id, canon)) !=
      DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  http_reply_text(r, 200, JSON_TYPE, canon);
done:
  json_decref(in);
  free(text);
  decomp_free(canon);
  if (spec)
    decomp_spec_free(spec);
  decomp_ctx_free(ctx);
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

/* Open the calibration file at `path` (a weight set: safetensors with the
 * decompd.calibration metadata); anything that is not a weight file is
 * answered 422 bad_calibration, as a weight file that is not a
 * calibration is by decomp_calibration_check. `what` names it. */
static int calibration_open(http_req *r, decomp_ctx *ctx, const char *path,
                            const char *what, decomp_weights **out) {
  int rc = decomp_weights_open(ctx, path, out);
  if (rc != DECOMP_OK) {
    const char *m = decomp_errmsg(ctx);
    /* The reader's message starts with the path: say what it is instead. */
    if (strncmp(m, path, strlen(path)) == 0)
      m += strlen(path);
    while (*m == ':' || *m == ' ')
      m++;
    http_reply_problem(r, DECOMP_ERR_BAD_CALIBRATION,
                       "calibration: %s is not a decompd calibration (a "
                       "safetensors file of Gram matrices): %s",
                       what, m[0] ? m : decomp_strerror(rc));
    return DECOMP_ERR_BAD_CALIBRATION;
  }
  return DECOMP_OK;
}

/* The layer spec a calibration attached to `m` is checked against: the
 * attached spec, else (TorchScript) the one its archive gave the first job
 * that loaded it. *out NULL (and DECOMP_OK) when the model has none yet. */
static int model_layer_spec(store *s, const store_model *m, char **out) {
  int rc = store_model_get_spec(s, m->id, out);
  if (rc == DECOMP_OK && !*out && is_torchscript(m))
    rc = store_model_get_archive_spec(s, m->id, out);
  return rc;
}

/* The 409 of an attachment PUT on a model with no layer spec to check it
 * against yet. */
static void no_spec_yet(http_req *r, const store_model *m, const char *what) {
  /* A TorchScript model's spec is in its archive, which is read when a job
   * runs (never in a request handler). */
  http_reply_problem(r, DECOMP_ERR_CONFLICT,
                     "model %s has no layer spec to check a %s against yet: "
                     "attach one first (PUT /v1/models/%s/spec)%s",
                     m->id, what, m->id,
                     is_torchscript(m)
                         ? ", or run a job on it (the spec of its TorchScript "
                           "archive is recorded when a job reads it)"
                         : "");
}

/* The layer spec an attachment (`what`) of model m is checked against,
 * parsed in a new context: DECOMP_OK, or the problem answered (no spec yet
 * is 409). */
static int attachment_spec(http_req *r, const store_model *m,
                           const char *what, decomp_ctx **ctx,
                           decomp_spec **spec) {
  char *text = NULL;
  int rc = model_layer_spec(http_req_store(r), m, &text);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return rc;
  }
  if (!text) {
    no_spec_yet(r, m, what);
    return DECOMP_ERR_CONFLICT;
  }
  if (!(*ctx = decomp_ctx_new())) {
    free(text);
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    return DECOMP_ERR_NOMEM;
  }
  rc = decomp_spec_parse(*ctx, text, strlen(text), spec);
  free(text);
  if (rc != DECOMP_OK)
    http_reply_problem(r, DECOMP_ERR_STORE, "model %s's stored spec: %s",
                       m->id, decomp_errmsg(*ctx));
  return rc;
}

/* PUT /v1/models/{id}/calibration: the body (streamed to a temp file and
 * hashed on the way, as uploads are) is checked against the model's layer
 * spec before it is stored, content-addressed, and attached in place of
 * any calibration before. */
static void h_model_calibration_put(http_req *r) {
  store *s = http_req_store(r);
  store_upload *u = http_req_take_upload(r);
  decomp_ctx *ctx = NULL;
  decomp_weights *cal = NULL;
  decomp_spec *spec = NULL;
  char digest[STORE_DIGEST_LEN];
  size_t layers = 0;
  store_model m;
  int rc = store_model_get(s, http_req_param(r, 0), &m);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  if ((rc = store_upload_finish(u, digest)) != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  if (store_upload_size(u) == 0) {
    http_reply_problem(r, DECOMP_ERR_BAD_CALIBRATION,
                       "calibration: the body is empty");
    goto done;
  }
  if (attachment_spec(r, &m, "calibration", &ctx, &spec) != DECOMP_OK)
    goto done;
  if (calibration_open(r, ctx, store_upload_path(u), "the body", &cal) !=
      DECOMP_OK)
    goto done;
  if ((rc = decomp_calibration_check(ctx, cal, spec, &layers)) != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
    goto done;
  }
  decomp_weights_free(cal); /* unmapped before its file is renamed */
  cal = NULL;
  attach(r, &m, &CALIBRATION, u, digest, layers, store_upload_size(u));
done:
  decomp_weights_free(cal);
  if (spec)
    decomp_spec_free(spec);
  decomp_ctx_free(ctx);
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
  store *s = http_req_store(r);
  size_t len = 0;
  const char *body = http_req_body(r, &len);
  json_error_t jerr;
  json_t *in = NULL;
  decomp_ctx *ctx = NULL;
  decomp_spec *spec = NULL;
  store_upload *u = NULL;
  char *text = NULL;
  char digest[STORE_DIGEST_LEN];
  size_t layers = 0;
  store_model m;
  int rc = store_model_get(s, http_req_param(r, 0), &m);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  if (len == 0) {
    http_reply_problem(r, DECOMP_ERR_BAD_PROFILE, "profile: the body is empty");
    goto done;
  }
  /* Valid JSON holds no NUL byte: the text the engine reads (up to the
   * first NUL) is then the whole body that is stored. */
  if (!(in = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr))) {
    http_reply_problem(r, DECOMP_ERR_BAD_JSON, "line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
    goto done;
  }
  if (attachment_spec(r, &m, "profile", &ctx, &spec) != DECOMP_OK)
    goto done;
  if (!(text = strndup(body, len))) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if ((rc = decomp_profile_check(ctx, text, spec, &layers)) != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
    goto done;
  }
  if ((rc = store_upload_begin(s, &u)) != DECOMP_OK ||
      (rc = store_upload_write(u, body, len)) != DECOMP_OK ||
      (rc = store_upload_finish(u, digest)) != DECOMP_OK) {
    store_problem(r, rc);
    goto done;
  }
  attach(r, &m, &PROFILE, u, digest, layers, (int64_t)len);
done:
  json_decref(in);
  if (spec)
    decomp_spec_free(spec);
  free(text);
  decomp_ctx_free(ctx);
  store_upload_free(u);
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

/* A job's calibration (`digest`) checked against the layer spec it will
 * run with (`spec`; NULL for a TorchScript model whose spec comes from its
 * archive: the one recorded from it, when a job has read it, else the
 * engine checks it when the job runs). A digest that is not the model's
 * attached calibration is looked for among the blobs (an identical job
 * submitted before keeps it); when it is gone, 409. */
static int job_calibration_check(http_req *r, decomp_ctx *ctx,
                                 const store_model *m, const char *digest,
                                 const decomp_spec *spec) {
  store *s = http_req_store(r);
  decomp_weights *cal = NULL;
  decomp_spec *archive = NULL;
  char *archive_text = NULL;
  char path[4200];
  int rc = store_blob_path(s, digest, path, sizeof path);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return rc;
  }
  if (access(path, R_OK) != 0) {
    rc = DECOMP_ERR_CONFLICT;
    http_reply_problem(r, rc,
                       "calibration %s is not attached to model %s (it has "
                       "%s%s; attach it with PUT /v1/models/%s/calibration)",
                       digest, m->id, m->calibration[0] ? "" : "none",
                       m->calibration, m->id);
    return rc;
  }
  if ((rc = calibration_open(r, ctx, path, digest, &cal)) != DECOMP_OK)
    return rc;
  if (!spec) {
    rc = store_model_get_archive_spec(s, m->id, &archive_text);
    if (rc == DECOMP_OK && archive_text &&
        decomp_spec_parse(ctx, archive_text, strlen(archive_text), &archive) ==
            DECOMP_OK)
      spec = archive;
    rc = DECOMP_OK;
  }
  if (spec &&
      (rc = decomp_calibration_check(ctx, cal, spec, NULL)) != DECOMP_OK)
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
  decomp_weights_free(cal);
  if (archive)
    decomp_spec_free(archive);
  free(archive_text);
  return rc;
}

/* A job's profile (`digest`) checked against the layer spec it will run
 * with, as job_calibration_check does for a calibration: read whole (it
 * was accepted under max_json_bytes; a larger blob is not a profile). */
static int job_profile_check(http_req *r, decomp_ctx *ctx, const store_model *m,
                             const char *digest, const decomp_spec *spec) {
  store *s = http_req_store(r);
  decomp_spec *archive = NULL;
  char *archive_text = NULL, *text = NULL;
  int rc = store_blob_read(s, digest, http_req_config(r)->max_json_bytes, &text,
                           NULL);
  if (rc == DECOMP_ERR_NOT_FOUND) {
    http_reply_problem(r, DECOMP_ERR_CONFLICT,
                       "profile %s is not attached to model %s (it has "
                       "%s%s; attach it with PUT /v1/models/%s/profile)",
                       digest, m->id, m->profile[0] ? "" : "none", m->profile,
                       m->id);
    return DECOMP_ERR_CONFLICT;
  }
  if (rc == DECOMP_ERR_TOO_LARGE) {
    http_reply_problem(r, DECOMP_ERR_BAD_PROFILE,
                       "profile: %s is not a decompd profile", digest);
    return DECOMP_ERR_BAD_PROFILE;
  }
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return rc;
  }
  if (!spec) {
    rc = store_model_get_archive_spec(s, m->id, &archive_text);
    if (rc == DECOMP_OK && archive_text &&
        decomp_spec_parse(ctx, archive_text, strlen(archive_text), &archive) ==
            DECOMP_OK)
      spec = archive;
    rc = DECOMP_OK;
  }
  if (spec && (rc = decomp_profile_check(ctx, text, spec, NULL)) != DECOMP_OK)
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
  free(text);
  if (archive)
    decomp_spec_free(archive);
  free(archive_text);
  return rc;
}

/* A job's "calibration" or "profile" field `v` into `out` (its digest, ""
 * for none): true takes the model's attached one (`attached`; 409 when
 * there is none), a digest names it (and must be the attached one for a
 * new job: store_job_submit checks that where no replacement can slip in),
 * false or null: none. */
static bool job_attachment(http_req *r, const store_model *m, const char *what,
                           const json_t *v, const char *attached,
                           char out[STORE_DIGEST_LEN]) {
  out[0] = '\0';
  if (json_is_true(v)) {
    if (!attached[0]) {
      http_reply_problem(r, DECOMP_ERR_CONFLICT,
                         "'%s': true, but model %s has no %s attached (PUT "
                         "/v1/models/%s/%s)",
                         what, m->id, what, m->id, what);
      return false;
    }
    snprintf(out, STORE_DIGEST_LEN, "%s", attached);
  } else if (json_is_string(v)) {
    if (!store_digest_valid(json_string_value(v))) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "'%s' must be true or a digest "
                         "\"sha256:<64 lowercase hex>\"",
                         what);
      return false;
    }
    snprintf(out, STORE_DIGEST_LEN, "%s", json_string_value(v));
  } else if (v && !json_is_false(v) && !json_is_null(v)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "'%s' must be true, false or a digest \"sha256:…\"",
                       what);
    return false;
  }
  return true;
}

static void h_job_submit(http_req *r) {
  store *s = http_req_store(r);
  size_t len = 0;
  const char *body = http_req_body(r, &len);
  json_error_t jerr;
  json_t *in = NULL;
  decomp_ctx *ctx = NULL;
  decomp_spec *spec = NULL;
  decomp_policy *pol = NULL;
  char *spec_text = NULL, *spec_canon = NULL, *pol_canon = NULL;
  char *pol_text = NULL;
  store_job job = {0};

  in = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
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
  json_t *jc = json_object_get(in, "calibration");
  json_t *jl = json_object_get(in, "profile");
  if (!json_is_string(jm)) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "'model' must be a model id string");
    goto done;
  }
  store_model m;
  int rc = store_model_get(s, json_string_value(jm), &m);
  if (rc != DECOMP_OK) {
    http_reply_problem(r, rc, "model '%s': %s", json_string_value(jm),
                       rc == DECOMP_ERR_NOT_FOUND ? "no such model"
                                                  : store_errmsg());
    goto done;
  }
  /* The output shard size of a sharded model's job (its outputs are
   * sharded safetensors); the daemon's shard_bytes when not given. */
  json_t *jb = json_object_get(in, "shard_bytes");
  if (jb && !json_is_null(jb)) {
    if (!json_is_integer(jb) || json_integer_value(jb) < 1) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "'shard_bytes' must be a positive integer (bytes)");
      goto done;
    }
    if (!shards_model_is_sharded(&m)) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "'shard_bytes' is for a sharded model's job; model "
                         "%s is a %s file",
                         m.id, m.format);
      goto done;
    }
    job.shard_bytes = (int64_t)json_integer_value(jb);
  }
  if (js && !(json_is_object(js) || json_is_array(js))) {
    http_reply_problem(r, DECOMP_ERR_BAD_SPEC,
                       "'spec' must be a layer spec: {\"layers\": [...]} or a "
                       "list of layers");
    goto done;
  }
  if (!js) { /* the model's own spec, if it has one */
    if ((rc = store_model_get_spec(s, m.id, &spec_text)) != DECOMP_OK) {
      store_problem(r, rc);
      goto done;
    }
    if (!spec_text && !is_torchscript(&m)) {
      http_reply_problem(r, DECOMP_ERR_BAD_SPEC,
                         "no 'spec' given and model %s has none (PUT "
                         "/v1/models/%s/spec)",
                         m.id, m.id);
      goto done;
    }
  }
  if (jp && !json_is_string(jp) && !json_is_object(jp)) {
    http_reply_problem(r, DECOMP_ERR_BAD_POLICY,
                       "'policy' must be a policy name or object");
    goto done;
  }
  if (!job_attachment(r, &m, "calibration", jc, m.calibration,
                      job.calibration) ||
      !job_attachment(r, &m, "profile", jl, m.profile, job.profile))
    goto done;
  /* A TorchScript model with no spec given nor attached: the worker takes
   * the layer spec from the archive (the job's spec is stored empty). */
  bool spec_from_archive = !js && !spec_text;
  ctx = decomp_ctx_new();
  if (!ctx) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if (js && !(spec_text = json_dumps(js, JSON_COMPACT))) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode 'spec'");
    goto done;
  }
  pol_text = !jp ? strdup("budget")
             : json_is_string(jp) ? strdup(json_string_value(jp))
                                  : json_dumps(jp, JSON_COMPACT);
  if (!pol_text) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode 'policy'");
    goto done;
  }
  if (!spec_from_archive &&
      spec_validate(r, ctx, &m, spec_text, &spec) != DECOMP_OK)
    goto done;
  if ((rc = decomp_policy_parse(ctx, pol_text, &pol)) != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", decomp_errmsg(ctx));
    goto done;
  }
  if (job.calibration[0] &&
      job_calibration_check(r, ctx, &m, job.calibration, spec) != DECOMP_OK)
    goto done;
  if (job.profile[0] &&
      job_profile_check(r, ctx, &m, job.profile, spec) != DECOMP_OK)
    goto done;
  static char no_spec[1] = "";
  spec_canon = spec ? decomp_spec_to_json(spec) : NULL;
  pol_canon = decomp_policy_to_json(pol);
  if ((!spec_canon && !spec_from_archive) || !pol_canon) {
    http_reply_problem(r, DECOMP_ERR_ENCODE,
                       "could not encode the canonical spec and policy");
    goto done;
  }
  /* A latency target needs the times it is measured in: said now rather
   * than by a job that fails when it runs. */
  if (!job.profile[0]) {
    json_t *pc = json_loads(pol_canon, 0, NULL);
    bool by_latency = json_object_get(pc, "latency_reduction") != NULL;
    json_decref(pc);
    if (by_latency) {
      http_reply_problem(r, DECOMP_ERR_BAD_POLICY,
                         "policy: latency_reduction needs a latency profile "
                         "(PUT /v1/models/%s/profile, then submit with "
                         "\"profile\": true)",
                         m.id);
      goto done;
    }
  }
  /* Identical input (model, canonical spec, canonical policy, the
   * calibration's and the profile's digests) is one job; without them the
   * key is what it was before calibrations and profiles existed. A profile
   * is its own "profile "-tagged line: a calibration line is a bare
   * digest. */
  const char *spec_key = spec_canon ? spec_canon : no_spec;
  size_t klen = strlen(m.id) + strlen(spec_key) + strlen(pol_canon) +
                strlen(job.calibration) + strlen(job.profile) + 64;
  char *kin = malloc(klen);
  char key_hex[65];
  if (!kin) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  int kn = snprintf(kin, klen, "%s\n%s\n%s%s%s%s%s", m.id, spec_key,
                    pol_canon, job.calibration[0] ? "\n" : "",
                    job.calibration, job.profile[0] ? "\nprofile " : "",
                    job.profile);
  /* a shard size given is its own tagged line, as a profile is */
  if (job.shard_bytes > 0 && kn > 0 && (size_t)kn < klen)
    snprintf(kin + kn, klen - (size_t)kn, "\nshard_bytes %lld",
             (long long)job.shard_bytes);
  bool hashed = store_sha256_hex(kin, strlen(kin), key_hex);
  free(kin);
  if (!hashed) {
    http_reply_problem(r, DECOMP_ERR_INTERNAL, "sha256 failed");
    goto done;
  }
  snprintf(job.model_id, sizeof job.model_id, "%s", m.id);
  job.spec = spec_canon ? spec_canon : no_spec;
  job.policy = pol_canon;
  bool created = false;
  rc = store_job_submit(s, key_hex, &job, &created);
  if (rc != DECOMP_OK) {
    job.spec = job.policy = NULL; /* still ours: freed below */
    if (rc == DECOMP_ERR_NOT_FOUND) /* deleted since it was read above */
      http_reply_problem(r, rc, "model '%s': no such model", m.id);
    else if (rc == DECOMP_ERR_CONFLICT) {
      /* the store's message names which: "… not calibration sha256:…" */
      const char *what =
          strstr(store_errmsg(), "not profile ") ? "profile" : "calibration";
      http_reply_problem(r, rc,
                         "%s (attach it again with PUT /v1/models/%s/%s, or "
                         "submit with \"%s\": true)",
                         store_errmsg(), m.id, what, what);
    } else
      store_problem(r, rc);
    goto done;
  }
  LOG(LOG_INFO, "jobs", http_req_id(r),
      "event=job_%s id=%s model=%s policy=%s calibration=%s profile=%s",
      created ? "queued" : "existing", job.id, m.id,
      log_q(decomp_policy_name(pol)),
      job.calibration[0] ? job.calibration : "none",
      job.profile[0] ? job.profile : "none");
  char loc[64];
  snprintf(loc, sizeof loc, "/v1/jobs/%s", job.id);
  http_reply_header(r, "Location", loc);
  reply_json(r, created ? 201 : 200, job_json(s, &job, true));
  store_job_clear(&job);
done:
  json_decref(in);
  free(spec_text);
  free(pol_text);
  decomp_free(spec_canon);
  decomp_free(pol_canon);
  if (pol)
    decomp_policy_free(pol);
  if (spec)
    decomp_spec_free(spec);
  decomp_ctx_free(ctx);
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
  int rc = store_job_retry(http_req_store(r), http_req_param(r, 0), &j,
                           &requeued);
  if (rc != DECOMP_OK) {
    store_problem(r, rc);
    return;
  }
  if (requeued) {
    LOG(LOG_INFO, "jobs", http_req_id(r), "event=job_retried id=%s model=%s "
        "attempts=%d", j.id, j.model_id, j.attempts);
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

/* ---- the table -------------------------------------------------------- */

const http_route HTTP_ROUTES[] = {
    {"GET", "/healthz", STORE_ROLE_NONE, HTTP_BODY_NONE, h_healthz,
     "liveness"},
    {"GET", "/readyz", STORE_ROLE_NONE, HTTP_BODY_NONE, h_readyz,
     "readiness (store reachable)"},
    {"GET", "/metrics", STORE_ROLE_READ, HTTP_BODY_NONE, h_metrics,
     "Prometheus metrics"},
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
