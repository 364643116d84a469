/* client.c — libdecompclient's handle and the REST calls of
 * api/openapi.yaml: upload, attach and detach specs, calibrations and
 * latency profiles, submit, get/list/cancel/retry jobs and wait. It builds
 * requests for the transport (transport.c), reads the JSON answers
 * (jansson) and turns error answers (problem+json) into decompd's codes
 * with the server's detail. Fetching lives in fetch.c. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "client_internal.h"
#include "client_json.h"

int client_fail(decomp_client *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

void client_errmsg_wrap(decomp_client *c, const char *prefix,
                        const char *suffix) {
  char m[sizeof c->errmsg];
  size_t k = 0, cap = sizeof m - 1;
  const char *parts[3] = {prefix, c->errmsg, suffix};
  for (int i = 0; i < 3; i++)
    for (const char *p = parts[i]; p && *p && k < cap; p++)
      m[k++] = *p;
  m[k] = '\0';
  memcpy(c->errmsg, m, k + 1);
}

static bool env_true(const char *name) {
  const char *v = getenv(name);
  return v && (!strcmp(v, "1") || !strcasecmp(v, "true") ||
               !strcasecmp(v, "yes") || !strcasecmp(v, "on"));
}

int decomp_client_new(const char *url, const char *token, decomp_client **out) {
  *out = NULL;
  if (!url || !url[0])
    url = getenv("DECOMPD_URL");
  if (!url || !url[0])
    url = DECOMP_CLIENT_DEFAULT_URL;
  if (strncasecmp(url, "http://", 7) != 0 &&
      strncasecmp(url, "https://", 8) != 0)
    return DECOMP_ERR_INVALID_ARGUMENT;
  if (!token)
    token = getenv("DECOMPD_TOKEN");
  decomp_client *c = calloc(1, sizeof *c);
  if (!c)
    return DECOMP_ERR_NOMEM;
  c->url = strdup(url);
  c->token = token && token[0] ? strdup(token) : NULL;
  char cache[DECOMP_CLIENT_PATH_LEN];
  if (decomp_client_default_cache_dir(cache, sizeof cache) != DECOMP_OK)
    snprintf(cache, sizeof cache, "%s", ".decompd-cache");
  c->cache = strdup(cache);
  c->offline = env_true("DECOMPD_OFFLINE");
  if (!c->url || !c->cache || (token && token[0] && !c->token)) {
    decomp_client_free(c);
    return DECOMP_ERR_NOMEM;
  }
  size_t n = strlen(c->url);
  while (n > 0 && c->url[n - 1] == '/')
    c->url[--n] = '\0';
  *out = c;
  return DECOMP_OK;
}

void decomp_client_free(decomp_client *c) {
  if (!c)
    return;
  ct_conn_free(c->conn);
  if (c->token) {
    /* Do not leave the secret in freed memory. */
    volatile char *p = c->token;
    while (*p)
      *p++ = 0;
  }
  free(c->token);
  free(c->url);
  free(c->cache);
  free(c);
}

const char *decomp_client_errmsg(const decomp_client *c) {
  return c ? c->errmsg : "";
}
int decomp_client_http_status(const decomp_client *c) { return c->http_status; }
const char *decomp_client_url(const decomp_client *c) { return c->url; }
const char *decomp_client_cache_dir(const decomp_client *c) { return c->cache; }
void decomp_client_set_offline(decomp_client *c, bool offline) {
  c->offline = offline;
}
bool decomp_client_offline(const decomp_client *c) { return c->offline; }

int decomp_client_set_cache_dir(decomp_client *c, const char *dir) {
  if (!dir || !dir[0] || strlen(dir) > DECOMP_CLIENT_PATH_LEN - 200)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "cache folder: empty or too long");
  char *d = strdup(dir);
  if (!d)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  free(c->cache);
  c->cache = d;
  return DECOMP_OK;
}

void decomp_client_set_progress(decomp_client *c, decomp_client_progress_fn fn,
                                void *user) {
  c->progress = fn;
  c->progress_user = user;
}

void decomp_client_string_free(char *s) { free(s); }

/* ---- answers -------------------------------------------------------------- */

int client_http_error(decomp_client *c, const char *method, const char *path,
                      const ct_response *rs) {
  int code = DECOMP_ERR_SERVER;
  switch (rs->status) {
  case 401:
    code = DECOMP_ERR_UNAUTHORIZED;
    break;
  case 403:
    code = DECOMP_ERR_FORBIDDEN;
    break;
  case 404:
    code = DECOMP_ERR_NOT_FOUND;
    break;
  case 409:
    code = DECOMP_ERR_CONFLICT;
    break;
  default:
    break;
  }
  const char *name = NULL, *detail = NULL;
  json_t *doc = rs->body ? json_loadb(rs->body, rs->body_len, 0, NULL) : NULL;
  if (json_is_object(doc)) {
    name = json_string_value(json_object_get(doc, "code"));
    detail = json_string_value(json_object_get(doc, "detail"));
    int k = name ? decomp_error_from_code(name) : -1;
    /* The server's own code when it names one we know, except that the
     * status classes above stay what they are. */
    if (k > 0 && rs->status != 401 && rs->status != 403 && rs->status != 404)
      code = k;
  }
  const char *hint = "";
  if (rs->status == 401)
    hint = c->token ? " (the token in DECOMPD_TOKEN was not accepted)"
                    : " (set DECOMPD_TOKEN)";
  else if (rs->status == 403)
    hint = " (the token's role does not allow this)";
  client_fail(c, code, "%s %s: %ld %s: %s%s", method, path, rs->status,
              name ? name : decomp_error_code(code),
              detail ? detail : decomp_strerror(code), hint);
  json_decref(doc);
  return code;
}

static json_t *answer_json(decomp_client *c, const char *method,
                           const char *path, const ct_response *rs) {
  json_error_t err;
  json_t *doc = rs->body ? json_loadb(rs->body, rs->body_len, 0, &err) : NULL;
  if (!json_is_object(doc)) {
    json_decref(doc);
    client_fail(c, DECOMP_ERR_SERVER,
                "%s %s: %ld: the answer is not a JSON object", method, path,
                rs->status);
    return NULL;
  }
  return doc;
}

/* One JSON request; *out gets the answer object on a 2xx. */
static int call_json(decomp_client *c, const char *method, const char *path,
                     const char *body, json_t **out) {
  *out = NULL;
  if (c->offline)
    return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                       "%s %s: offline mode (DECOMPD_OFFLINE) makes no "
                       "requests",
                       method, path);
  ct_request rq = {.method = method, .path = path, .body_fd = -1,
                   .progress_total = -1};
  if (body) {
    rq.body = body;
    rq.body_len = strlen(body);
    rq.content_type = "application/json";
  }
  ct_response rs;
  int rc = ct_perform(c, &rq, &rs);
  if (rc == DECOMP_OK) {
    if (rs.status / 100 != 2)
      rc = client_http_error(c, method, path, &rs);
    else if (rs.status != 204 && !(*out = answer_json(c, method, path, &rs)))
      rc = DECOMP_ERR_SERVER;
  }
  ct_response_clear(&rs);
  return rc;
}

static void copy_str(char *dst, size_t cap, json_t *v) {
  const char *s = json_string_value(v);
  snprintf(dst, cap, "%s", s ? s : "");
}

decomp_job_state client_state_from_name(const char *s) {
  static const char *const names[] = {"queued", "running", "succeeded",
                                      "failed", "cancelled"};
  for (int i = 0; s && i < 5; i++)
    if (!strcmp(s, names[i]))
      return (decomp_job_state)(i + 1);
  return DECOMP_JOB_UNKNOWN;
}

const char *decomp_job_state_name(decomp_job_state s) {
  switch (s) {
  case DECOMP_JOB_QUEUED:
    return "queued";
  case DECOMP_JOB_RUNNING:
    return "running";
  case DECOMP_JOB_SUCCEEDED:
    return "succeeded";
  case DECOMP_JOB_FAILED:
    return "failed";
  case DECOMP_JOB_CANCELLED:
    return "cancelled";
  default:
    return "unknown";
  }
}

bool decomp_job_state_final(decomp_job_state s) {
  return s == DECOMP_JOB_SUCCEEDED || s == DECOMP_JOB_FAILED ||
         s == DECOMP_JOB_CANCELLED;
}

void decomp_client_job_clear(decomp_client_job *j) {
  if (!j)
    return;
  free(j->json);
  memset(j, 0, sizeof *j);
}

int client_job_from_json(decomp_client *c, json_t *o, decomp_client_job *j) {
  decomp_client_job_clear(j);
  copy_str(j->id, sizeof j->id, json_object_get(o, "id"));
  if (!j->id[0])
    return client_fail(c, DECOMP_ERR_SERVER, "a job without an id");
  copy_str(j->model, sizeof j->model, json_object_get(o, "model"));
  j->state = client_state_from_name(
      json_string_value(json_object_get(o, "state")));
  j->cancel_requested = json_is_true(json_object_get(o, "cancel_requested"));
  j->attempts = (int)json_integer_value(json_object_get(o, "attempts"));
  json_t *p = json_object_get(o, "progress");
  j->layers_done = (int64_t)json_integer_value(json_object_get(p, "layers_done"));
  j->layers_total =
      (int64_t)json_integer_value(json_object_get(p, "layers_total"));
  json_t *cur = json_object_get(p, "current");
  if (json_is_object(cur)) {
    copy_str(j->current_layer, sizeof j->current_layer,
             json_object_get(cur, "layer"));
    copy_str(j->current_step, sizeof j->current_step,
             json_object_get(cur, "step"));
    j->current_fraction = json_number_value(json_object_get(cur, "fraction"));
  }
  j->seconds = json_number_value(json_object_get(o, "seconds"));
  json_t *e = json_object_get(o, "error");
  if (json_is_object(e)) {
    copy_str(j->error_code, sizeof j->error_code, json_object_get(e, "code"));
    copy_str(j->error_message, sizeof j->error_message,
             json_object_get(e, "message"));
  }
  json_t *as = json_object_get(o, "artifacts");
  size_t i;
  json_t *a;
  json_array_foreach(as, i, a) {
    if (j->n_artifacts >= DECOMP_CLIENT_MAX_ARTIFACTS)
      break;
    decomp_client_artifact *d = &j->artifacts[j->n_artifacts++];
    copy_str(d->name, sizeof d->name, json_object_get(a, "name"));
    copy_str(d->digest, sizeof d->digest, json_object_get(a, "digest"));
    copy_str(d->media_type, sizeof d->media_type,
             json_object_get(a, "media_type"));
    d->size = (int64_t)json_integer_value(json_object_get(a, "size"));
  }
  j->json = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!j->json)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  return DECOMP_OK;
}

static bool id_ok(const char *id) {
  if (!id || !id[0] || strlen(id) > 64)
    return false;
  for (const char *p = id; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
          (*p >= 'A' && *p <= 'Z') || *p == '_' || *p == '-'))
      return false;
  return true;
}

/* ---- models --------------------------------------------------------------- */

static void model_from_json(json_t *doc, decomp_client_model *out) {
  memset(out, 0, sizeof *out);
  copy_str(out->id, sizeof out->id, json_object_get(doc, "id"));
  copy_str(out->name, sizeof out->name, json_object_get(doc, "name"));
  copy_str(out->digest, sizeof out->digest, json_object_get(doc, "digest"));
  copy_str(out->format, sizeof out->format, json_object_get(doc, "format"));
  out->size = (int64_t)json_integer_value(json_object_get(doc, "size"));
  out->tensors = (int64_t)json_integer_value(json_object_get(doc, "tensors"));
}

/* Send the file at `path` as the raw body (`type`) of `method` `rpath`,
 * streamed from disk (progress as an upload). On a 200 or 201 *doc gets the
 * answer (a JSON object) and *status its status; an error answer, or a file
 * that cannot be read, fails with the message naming the file (`what` PATH). */
static int send_file(decomp_client *c, const char *what, const char *method,
                     const char *rpath, const char *type, const char *path,
                     json_t **doc, long *status) {
  int rc = DECOMP_OK;
  ct_response rs = {0};
  *doc = NULL;
  if (c->offline)
    return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                       "%s %s: offline mode (DECOMPD_OFFLINE) makes no "
                       "requests",
                       what, path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = client_fail(c, DECOMP_ERR_IO, "%s: %s", path,
                     fd < 0 ? strerror(errno) : "not a regular file");
    goto done;
  }
  const char *base = strrchr(path, '/');
  ct_request rq = {.method = method,
                   .path = rpath,
                   .content_type = type,
                   .body_fd = fd,
                   .body_size = (int64_t)st.st_size,
                   .progress_name = base ? base + 1 : path,
                   .direction = DECOMP_CLIENT_UPLOAD,
                   .progress_total = (int64_t)st.st_size};
  rc = ct_perform(c, &rq, &rs);
  if (rc != DECOMP_OK)
    goto done;
  if (rs.status != 200 && rs.status != 201) {
    rc = client_http_error(c, method, rpath, &rs);
    /* Say which file. */
    char pre[DECOMP_CLIENT_PATH_LEN + 32];
    snprintf(pre, sizeof pre, "%s %s: ", what, path);
    client_errmsg_wrap(c, pre, NULL);
    goto done;
  }
  if (!(*doc = answer_json(c, method, rpath, &rs)))
    rc = DECOMP_ERR_SERVER;
  *status = rs.status;
done:
  ct_response_clear(&rs);
  if (fd >= 0)
    close(fd);
  return rc;
}

char *client_models_path(decomp_client *c, const char *name) {
  char *ename = name && name[0] ? ct_escape(c, name) : NULL;
  size_t plen = 64 + (ename ? strlen(ename) : 0);
  char *rpath = (!name || !name[0] || ename) ? malloc(plen) : NULL;
  if (rpath)
    snprintf(rpath, plen, "/v1/models%s%s", ename ? "?name=" : "",
             ename ? ename : "");
  else
    client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  free(ename);
  return rpath;
}

int decomp_client_upload(decomp_client *c, const char *path, const char *name,
                         decomp_client_model *out, bool *out_created,
                         char **out_json) {
  int rc = DECOMP_OK;
  char *rpath = NULL;
  json_t *doc = NULL;
  long status = 0;
  if (out_json)
    *out_json = NULL;
  if (!(rpath = client_models_path(c, name))) {
    rc = DECOMP_ERR_NOMEM;
    goto done;
  }
  if ((rc = send_file(c, "upload", "POST", rpath, "application/octet-stream",
                      path, &doc, &status)) != DECOMP_OK)
    goto done;
  if (out)
    model_from_json(doc, out);
  if (out_created)
    *out_created = status == 201;
  if (out_json && !(*out_json = json_dumps(doc, JSON_COMPACT |
                                                     JSON_PRESERVE_ORDER)))
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
done:
  json_decref(doc);
  free(rpath);
  return rc;
}

int decomp_client_model_get(decomp_client *c, const char *model_id,
                            decomp_client_model *out, char **out_json) {
  if (out_json)
    *out_json = NULL;
  if (!id_ok(model_id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "model id '%s' is not valid", model_id ? model_id : "");
  char rpath[128];
  snprintf(rpath, sizeof rpath, "/v1/models/%s", model_id);
  json_t *doc = NULL;
  int rc = call_json(c, "GET", rpath, NULL, &doc);
  if (rc == DECOMP_OK && out)
    model_from_json(doc, out);
  if (rc == DECOMP_OK && out_json &&
      !(*out_json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER)))
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  json_decref(doc);
  return rc;
}

/* ---- layer specs and calibrations ---------------------------------------- */

int decomp_client_spec_attach(decomp_client *c, const char *model_id,
                              const char *spec_json, char **out_json) {
  if (out_json)
    *out_json = NULL;
  if (!id_ok(model_id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "model id '%s' is not valid", model_id ? model_id : "");
  json_error_t err;
  json_t *spec = spec_json ? json_loads(spec_json, 0, &err) : NULL;
  if (!spec)
    return client_fail(c, DECOMP_ERR_BAD_SPEC,
                       "layer spec: line %d column %d: %s",
                       spec_json ? err.line : 0, spec_json ? err.column : 0,
                       spec_json ? err.text : "none given");
  char *body = json_dumps(spec, JSON_COMPACT);
  json_decref(spec);
  if (!body)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  char rpath[128];
  snprintf(rpath, sizeof rpath, "/v1/models/%s/spec", model_id);
  json_t *doc = NULL;
  int rc = call_json(c, "PUT", rpath, body, &doc);
  free(body);
  if (rc == DECOMP_OK && out_json &&
      !(*out_json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER)))
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  json_decref(doc);
  return rc;
}

/* PUT the file at `path` (`type`) to model `model_id`'s attachment `kind`
 * ("calibration", "profile"): the digest, layers and size the server
 * answers go to the out parameters (each may be NULL). */
static int attach_file(decomp_client *c, const char *kind, const char *type,
                       const char *model_id, const char *path,
                       char digest[DECOMP_CLIENT_DIGEST_LEN], int64_t *layers,
                       int64_t *size, char **out_json) {
  if (out_json)
    *out_json = NULL;
  if (!id_ok(model_id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "model id '%s' is not valid", model_id ? model_id : "");
  char rpath[128];
  snprintf(rpath, sizeof rpath, "/v1/models/%s/%s", model_id, kind);
  json_t *doc = NULL;
  long status = 0;
  int rc = send_file(c, kind, "PUT", rpath, type, path, &doc, &status);
  if (rc == DECOMP_OK) {
    char d[DECOMP_CLIENT_DIGEST_LEN] = "";
    copy_str(d, sizeof d, json_object_get(doc, "digest"));
    if (!d[0])
      rc = client_fail(c, DECOMP_ERR_SERVER,
                       "PUT %s: the answer names no digest", rpath);
    if (digest)
      memcpy(digest, d, sizeof d);
    if (layers)
      *layers = (int64_t)json_integer_value(json_object_get(doc, "layers"));
    if (size)
      *size = (int64_t)json_integer_value(json_object_get(doc, "size"));
  }
  if (rc == DECOMP_OK && out_json &&
      !(*out_json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER)))
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  json_decref(doc);
  return rc;
}

/* DELETE model `model_id`'s attachment `kind`. */
static int detach(decomp_client *c, const char *kind, const char *model_id) {
  if (!id_ok(model_id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "model id '%s' is not valid", model_id ? model_id : "");
  char rpath[128];
  snprintf(rpath, sizeof rpath, "/v1/models/%s/%s", model_id, kind);
  json_t *doc = NULL;
  int rc = call_json(c, "DELETE", rpath, NULL, &doc);
  json_decref(doc);
  return rc;
}

int decomp_client_calibration_attach(decomp_client *c, const char *model_id,
                                     const char *path,
                                     decomp_client_calibration *out,
                                     char **out_json) {
  if (out) {
    memset(out, 0, sizeof *out);
    snprintf(out->model, sizeof out->model, "%s", model_id ? model_id : "");
  }
  return attach_file(c, "calibration", "application/octet-stream", model_id,
                     path, out ? out->digest : NULL, out ? &out->layers : NULL,
                     out ? &out->size : NULL, out_json);
}

int decomp_client_calibration_detach(decomp_client *c, const char *model_id) {
  return detach(c, "calibration", model_id);
}

int decomp_client_profile_attach(decomp_client *c, const char *model_id,
                                 const char *path, decomp_client_profile *out,
                                 char **out_json) {
  if (out) {
    memset(out, 0, sizeof *out);
    snprintf(out->model, sizeof out->model, "%s", model_id ? model_id : "");
  }
  return attach_file(c, "profile", "application/json", model_id, path,
                     out ? out->digest : NULL, out ? &out->layers : NULL,
                     out ? &out->size : NULL, out_json);
}

int decomp_client_profile_detach(decomp_client *c, const char *model_id) {
  return detach(c, "profile", model_id);
}

/* ---- jobs ----------------------------------------------------------------- */

int decomp_client_submit(decomp_client *c, const char *model_id,
                         const char *spec_json, const char *policy,
                         decomp_client_job *out, bool *out_created) {
  return decomp_client_submit_with(c, model_id, spec_json, policy, NULL, out,
                                   out_created);
}

int decomp_client_submit_calibrated(decomp_client *c, const char *model_id,
                                    const char *spec_json, const char *policy,
                                    const char *calibration,
                                    decomp_client_job *out, bool *out_created) {
  decomp_client_submit_options o = {.calibration = calibration};
  return decomp_client_submit_with(c, model_id, spec_json, policy, &o, out,
                                   out_created);
}

/* Set the job request's `field` from `v`: NULL none, "attached" true, a
 * digest itself. */
static int attachment_field(decomp_client *c, json_t *req, const char *field,
                            const char *v) {
  if (!v)
    return DECOMP_OK;
  bool attached = strcmp(v, DECOMP_CLIENT_ATTACHED) == 0;
  if (!attached && strncmp(v, "sha256:", 7) != 0)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "%s '%s': a digest sha256:… or \"" DECOMP_CLIENT_ATTACHED
                       "\"",
                       field, v);
  if (json_object_set_new(req, field,
                          attached ? json_true() : json_string(v)) != 0)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  return DECOMP_OK;
}

int decomp_client_submit_with(decomp_client *c, const char *model_id,
                              const char *spec_json, const char *policy,
                              const decomp_client_submit_options *opts,
                              decomp_client_job *out, bool *out_created) {
  json_error_t err;
  json_t *req = NULL, *doc = NULL;
  char *body = NULL;
  int rc;
  if (!model_id)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "submit: a model id is needed");
  req = json_pack("{s:s}", "model", model_id);
  if (!req)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  if (spec_json) {
    json_t *spec = json_loads(spec_json, 0, &err);
    if (!spec) {
      json_decref(req);
      return client_fail(c, DECOMP_ERR_BAD_SPEC,
                         "layer spec: line %d column %d: %s", err.line,
                         err.column, err.text);
    }
    json_object_set_new(req, "spec", spec);
  }
  if (policy && policy[0]) {
    const char *p = policy;
    while (*p == ' ' || *p == '\n' || *p == '\t')
      p++;
    json_t *pol = *p == '{' ? json_loads(p, 0, &err) : json_string(policy);
    if (!pol) {
      json_decref(req);
      return client_fail(c, DECOMP_ERR_BAD_POLICY,
                         "policy: line %d column %d: %s", err.line,
                         err.column, err.text);
    }
    json_object_set_new(req, "policy", pol);
  }
  if (opts && ((rc = attachment_field(c, req, "calibration",
                                      opts->calibration)) != DECOMP_OK ||
               (rc = attachment_field(c, req, "profile", opts->profile)) !=
                   DECOMP_OK)) {
    json_decref(req);
    return rc;
  }
  body = json_dumps(req, JSON_COMPACT);
  json_decref(req);
  if (!body)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  if (c->offline) {
    free(body);
    return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                       "submit: offline mode (DECOMPD_OFFLINE) makes no "
                       "requests");
  }
  ct_request rq = {.method = "POST", .path = "/v1/jobs",
                   .content_type = "application/json", .body = body,
                   .body_len = strlen(body), .body_fd = -1,
                   .progress_total = -1};
  ct_response rs;
  rc = ct_perform(c, &rq, &rs);
  free(body);
  if (rc == DECOMP_OK) {
    if (rs.status != 200 && rs.status != 201)
      rc = client_http_error(c, "POST", "/v1/jobs", &rs);
    else if (!(doc = answer_json(c, "POST", "/v1/jobs", &rs)))
      rc = DECOMP_ERR_SERVER;
  }
  if (rc == DECOMP_OK) {
    if (out_created)
      *out_created = rs.status == 201;
    decomp_client_job tmp = {0};
    rc = client_job_from_json(c, doc, out ? out : &tmp);
    decomp_client_job_clear(&tmp);
  }
  json_decref(doc);
  ct_response_clear(&rs);
  return rc;
}

int decomp_client_job_get(decomp_client *c, const char *id,
                          decomp_client_job *out) {
  if (!id_ok(id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", id ? id : "");
  if (c->offline) {
    json_t *rec = NULL;
    int rc = client_job_record_load(c, id, &rec);
    if (rc != DECOMP_OK)
      return rc;
    rc = client_job_from_json(c, json_object_get(rec, "job"), out);
    json_decref(rec);
    return rc;
  }
  char path[128];
  snprintf(path, sizeof path, "/v1/jobs/%s", id);
  json_t *doc;
  int rc = call_json(c, "GET", path, NULL, &doc);
  if (rc == DECOMP_OK)
    rc = client_job_from_json(c, doc, out);
  json_decref(doc);
  return rc;
}

int decomp_client_job_cancel(decomp_client *c, const char *id,
                             decomp_client_job *out) {
  if (!id_ok(id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", id ? id : "");
  char path[128];
  snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
  json_t *doc;
  int rc = call_json(c, "POST", path, NULL, &doc);
  if (rc == DECOMP_OK && out)
    rc = client_job_from_json(c, doc, out);
  json_decref(doc);
  return rc;
}

int decomp_client_job_retry(decomp_client *c, const char *id,
                            decomp_client_job *out) {
  if (!id_ok(id))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", id ? id : "");
  char path[128];
  snprintf(path, sizeof path, "/v1/jobs/%s/retry", id);
  json_t *doc;
  int rc = call_json(c, "POST", path, NULL, &doc);
  if (rc == DECOMP_OK && out)
    rc = client_job_from_json(c, doc, out);
  json_decref(doc);
  return rc;
}

void decomp_client_job_list_free(decomp_client_job *jobs, size_t n) {
  if (!jobs)
    return;
  for (size_t i = 0; i < n; i++)
    decomp_client_job_clear(&jobs[i]);
  free(jobs);
}

int decomp_client_job_list(decomp_client *c, const char *state, int limit,
                           const char *cursor, decomp_client_job **out_jobs,
                           size_t *out_n, char **out_next_cursor) {
  *out_jobs = NULL;
  *out_n = 0;
  if (out_next_cursor)
    *out_next_cursor = NULL;
  if ((state && !id_ok(state)) || (cursor && !id_ok(cursor)))
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT,
                       "jobs: bad state or cursor");
  char path[256];
  int k = snprintf(path, sizeof path, "/v1/jobs?");
  if (state)
    k += snprintf(path + k, sizeof path - (size_t)k, "state=%s&", state);
  if (limit > 0)
    k += snprintf(path + k, sizeof path - (size_t)k, "limit=%d&", limit);
  if (cursor)
    k += snprintf(path + k, sizeof path - (size_t)k, "cursor=%s&", cursor);
  path[k - 1] = '\0';
  json_t *doc;
  int rc = call_json(c, "GET", path, NULL, &doc);
  if (rc != DECOMP_OK)
    return rc;
  json_t *arr = json_object_get(doc, "jobs");
  size_t n = json_array_size(arr);
  decomp_client_job *v = calloc(n ? n : 1, sizeof *v);
  if (!v) {
    json_decref(doc);
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  }
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++)
    rc = client_job_from_json(c, json_array_get(arr, i), &v[i]);
  if (rc == DECOMP_OK && out_next_cursor) {
    const char *nc = json_string_value(json_object_get(doc, "next_cursor"));
    if (nc && !(*out_next_cursor = strdup(nc)))
      rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  }
  json_decref(doc);
  if (rc != DECOMP_OK) {
    decomp_client_job_list_free(v, n);
    return rc;
  }
  *out_jobs = v;
  *out_n = n;
  return DECOMP_OK;
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* ---- following a job's event stream ------------------------------------ */

struct follow {
  decomp_client *c;
  decomp_client_wait_fn fn;
  void *user;
  char line[64 * 1024]; /* the line being read */
  size_t len;
  char event[32];
  char *data; /* the event's data lines, joined */
  size_t dlen;
  decomp_client_job job; /* the last job an event gave */
  bool have, final, stopped;
  double last_tick;
};

/* One complete SSE line: collect `event:`/`data:`, act on the blank line
 * that ends an event. */
static int follow_line(struct follow *f, const char *ln) {
  if (strncmp(ln, "event:", 6) == 0) {
    snprintf(f->event, sizeof f->event, "%s", ln[6] == ' ' ? ln + 7 : ln + 6);
  } else if (strncmp(ln, "data:", 5) == 0) {
    const char *d = ln[5] == ' ' ? ln + 6 : ln + 5;
    size_t n = strlen(d);
    char *nd = realloc(f->data, f->dlen + n + 2);
    if (!nd)
      return client_fail(f->c, DECOMP_ERR_NOMEM, "out of memory");
    f->data = nd;
    if (f->dlen)
      f->data[f->dlen++] = '\n';
    memcpy(f->data + f->dlen, d, n + 1);
    f->dlen += n;
  } else if (!ln[0] && f->event[0]) {
    if (strcmp(f->event, "job") == 0 && f->data) {
      json_error_t je;
      json_t *o = json_loads(f->data, 0, &je);
      int rc = o ? client_job_from_json(f->c, o, &f->job)
                 : client_fail(f->c, DECOMP_ERR_SERVER,
                               "an event that is not JSON: %s", je.text);
      json_decref(o);
      if (rc != DECOMP_OK)
        return rc;
      f->have = true;
      f->final = decomp_job_state_final(f->job.state);
      if (f->fn && f->fn(f->user, &f->job) != 0) {
        f->stopped = true;
        return client_fail(f->c, DECOMP_ERR_CANCELLED, "wait %s: stopped",
                           f->job.id);
      }
    }
    f->event[0] = '\0';
    free(f->data);
    f->data = NULL;
    f->dlen = 0;
  }
  return DECOMP_OK;
}

static int follow_begin(void *user, long status, const char *range) {
  (void)user;
  (void)status;
  (void)range;
  return DECOMP_OK;
}

static int follow_data(void *user, const void *buf, size_t n) {
  struct follow *f = user;
  const char *p = buf;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '\n') {
      if (f->len && f->line[f->len - 1] == '\r')
        f->len--;
      f->line[f->len] = '\0';
      f->len = 0;
      int rc = follow_line(f, f->line);
      if (rc != DECOMP_OK)
        return rc;
    } else if (f->len + 1 < sizeof f->line) {
      f->line[f->len++] = p[i];
    }
  }
  return DECOMP_OK;
}

/* About every second between events: the caller may stop (Ctrl-C). */
static int follow_tick(void *user) {
  struct follow *f = user;
  double now = mono_s();
  if (!f->have || !f->fn || now - f->last_tick < 1.0)
    return 0;
  f->last_tick = now;
  if (f->fn(f->user, &f->job) != 0) {
    f->stopped = true;
    return 1;
  }
  return 0;
}

/* Follow GET /v1/jobs/{id}/events until the job's final state (then *out
 * is the job as GET gives it, with its artifacts): DECOMP_OK. CANCELLED
 * when fn said stop; anything else (no such route, the stream broke or
 * ran out of time) leaves the caller to poll. */
static int wait_events(decomp_client *c, const char *id, double deadline,
                       decomp_client_wait_fn fn, void *user,
                       decomp_client_job *out) {
  char *eid = ct_escape(c, id);
  if (!eid)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  char path[512];
  snprintf(path, sizeof path, "/v1/jobs/%s/events", eid);
  free(eid);
  struct follow *f = calloc(1, sizeof *f);
  if (!f)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  *f = (struct follow){.c = c, .fn = fn, .user = user,
                       .last_tick = mono_s()};
  ct_sink sink = {follow_begin, follow_data, f};
  long ms = 0;
  if (deadline > 0) {
    double left = deadline - mono_s();
    ms = left > 0.001 ? (long)(left * 1000) : 1;
  }
  ct_request rq = {.method = "GET", .path = path, .body_fd = -1,
                   .sink = &sink, .progress_total = -1, .stream = true,
                   .timeout_ms = ms, .tick = follow_tick, .tick_user = f};
  ct_response rs;
  int rc = ct_perform(c, &rq, &rs);
  if (f->stopped)
    rc = DECOMP_ERR_CANCELLED;
  else if (rc == DECOMP_OK && (rs.status != 200 || !f->final))
    rc = DECOMP_ERR_NOT_FOUND; /* no stream here, or it ended early */
  ct_response_clear(&rs);
  decomp_client_job_clear(&f->job);
  free(f->data);
  free(f);
  if (rc == DECOMP_OK)
    rc = decomp_client_job_get(c, id, out);
  return rc;
}

int decomp_client_wait(decomp_client *c, const char *id, double timeout_s,
                       decomp_client_wait_fn fn, void *user,
                       decomp_client_job *out) {
  double deadline = timeout_s > 0 ? mono_s() + timeout_s : 0;
  double delay = 0.1;
  if (!c->offline) {
    int rc = wait_events(c, id, deadline, fn, user, out);
    if (rc == DECOMP_OK || rc == DECOMP_ERR_CANCELLED)
      return rc;
    /* Poll instead: it reports what is wrong (gone, unreachable, late). */
  }
  for (;;) {
    int rc = decomp_client_job_get(c, id, out);
    if (rc == DECOMP_OK) {
      if (fn && fn(user, out) != 0)
        return client_fail(c, DECOMP_ERR_CANCELLED, "wait %s: stopped", id);
      if (decomp_job_state_final(out->state))
        return DECOMP_OK;
      if (c->offline)
        return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                           "wait %s: offline, and the cached job is %s", id,
                           decomp_job_state_name(out->state));
    } else if (rc != DECOMP_ERR_CONNECT && rc != DECOMP_ERR_TRANSFER) {
      return rc;
    } else if (!deadline) {
      /* No timeout: a daemon that is gone stays an error, not a hang. */
      return rc;
    }
    double now = mono_s();
    if (deadline && now + delay > deadline) {
      if (rc != DECOMP_OK)
        return rc;
      return client_fail(c, DECOMP_ERR_TIMEOUT,
                         "wait %s: still %s after %.0f s (%lld/%lld layers)",
                         id, decomp_job_state_name(out->state), timeout_s,
                         (long long)out->layers_done,
                         (long long)out->layers_total);
    }
    sleep_s(delay);
    delay = delay * 1.5 > 2.0 ? 2.0 : delay * 1.5;
  }
}
