/* http.c — the HTTP server on libmicrohttpd: the only file that includes
 * microhttpd.h.
 *
 * One MHD daemon with its own polling threads (epoll, a thread pool).
 * Per request: refuse a target holding %00 (on_uri), match the route
 * table, check the token, refuse a declared body over the limit before
 * reading it (413) and a chunked one once it passes it (413 too, written
 * by reply_over_limit), consume every upload_data chunk (MHD answers 500
 * otherwise) into a JSON buffer or a store upload,
 * then call the handler once with the whole request and queue its one
 * reply. File replies go out with sendfile (MHD_create_response_from_fd_*;
 * no TLS here, so zero-copy holds). Streamed replies (server-sent events)
 * park their connection (MHD_suspend_connection) when they have nothing to
 * send; a pump thread resumes every parked one about every 250 ms so that
 * it can look again, and at shutdown resumes them all, after which they
 * end, before MHD_stop_daemon. Each finished request is logged and counted
 * in the metrics. */
#include <errno.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "auth.h"
#include "http.h"
#include "service.h"
#include "log.h"
#include "metrics.h"
#include "text.h"

#define MAX_PARAMS 4
#define MAX_HEADERS 12

struct stream;

struct http_server {
  struct MHD_Daemon *d;
  service *sv;
  store *s; /* the service's */
  const config *cfg;
  /* streamed replies */
  pthread_mutex_t smu;
  pthread_cond_t scond;
  struct stream *streams; /* every live one (guarded by smu) */
  bool stopping;          /* guarded by smu */
  bool pump_running;
  pthread_t pump;
};

/* One streamed reply. `suspended` and the list links are guarded by the
 * server's smu. */
struct stream {
  http_server *srv;
  struct MHD_Connection *c;
  http_stream_fn next;
  void *cls;
  void (*free_cls)(void *);
  bool suspended;
  struct stream *prev, *nextl;
};

struct http_req {
  http_server *srv;
  struct MHD_Connection *c;
  const http_route *route;
  char id[48];
  char method[16];
  char *path;
  char params[MAX_PARAMS][256];
  int nparams;
  char principal[256];
  int64_t t0_ns;
  bool started;       /* on_request has seen it (see on_uri) */
  bool nul_in_target; /* the raw target holds %00 */
  bool responded;
  /* body */
  char *body;
  size_t body_len, body_cap;
  store_upload *upload;
  /* a partial-body route (HTTP_BODY_PARTIAL) */
  store_partial *partial;
  bool blob_present; /* already stored: the body is dropped */
  bool has_range;
  int64_t range_start, range_end, range_total;
  char blob_digest[STORE_DIGEST_LEN];
  int body_err;          /* a failure while reading the body */
  char body_errmsg[512];
  uint64_t bytes_in;
  /* reply */
  int status;
  char ctype[96];
  char *rbody;
  size_t rlen;
  int rfd;
  uint64_t roff, rfdlen;
  struct {
    char *name, *value;
  } hdrs[MAX_HEADERS];
  int nhdrs;
  uint64_t bytes_out;
  /* a streamed reply, before it is queued */
  http_stream_fn snext;
  void *scls;
  void (*sfree)(void *);
};

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- route matching --------------------------------------------------- */

/* Match `path` against `pat`, capturing {params}. */
static bool route_match(const char *pat, const char *path, http_req *r) {
  int np = 0;
  while (*pat && *path) {
    if (*pat == '{') {
      const char *close = strchr(pat, '}');
      size_t n = strcspn(path, "/");
      if (!close || n == 0 || n >= sizeof r->params[0] || np >= MAX_PARAMS)
        return false;
      if (r) {
        memcpy(r->params[np], path, n);
        r->params[np][n] = '\0';
      }
      np++;
      pat = close + 1;
      path += n;
    } else if (*pat++ != *path++) {
      return false;
    }
  }
  if (*pat || *path)
    return false;
  if (r)
    r->nparams = np;
  return true;
}

static bool method_is(const char *route_method, const char *m) {
  return strcmp(route_method, m) == 0 ||
         (strcmp(m, "HEAD") == 0 && strcmp(route_method, "GET") == 0);
}

/* ---- replies ---------------------------------------------------------- */

static void reply_reset(http_req *r) {
  free(r->rbody);
  r->rbody = NULL;
  r->rlen = 0;
  if (r->rfd >= 0)
    close(r->rfd);
  r->rfd = -1;
  if (r->sfree && r->scls)
    r->sfree(r->scls);
  r->snext = NULL;
  r->scls = NULL;
  r->sfree = NULL;
}

void http_reply(http_req *r, int status, const char *content_type, char *body,
                size_t len) {
  reply_reset(r);
  r->status = status;
  snprintf(r->ctype, sizeof r->ctype, "%s", content_type ? content_type : "");
  r->rbody = body;
  r->rlen = body ? len : 0;
}

void http_reply_text(http_req *r, int status, const char *content_type,
                     const char *text) {
  size_t n = strlen(text);
  char *b = malloc(n + 1);
  if (b)
    memcpy(b, text, n + 1);
  http_reply(r, b ? status : 500, content_type, b, b ? n : 0);
}

void http_reply_problem(http_req *r, int err, const char *fmt, ...) {
  char raw[1024], scrubbed[1024], detail[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(raw, sizeof raw, fmt, ap);
  va_end(ap);
  /* The client hears what failed, not where on this server (the log line
   * below keeps the paths); and the detail may echo what the client sent
   * (an id, a header, a name from its file): any bytes, which JSON cannot
   * carry, so they go out escaped. */
  store_scrub(r->srv->s, raw, scrubbed, sizeof scrubbed);
  text_escape(scrubbed, detail, sizeof detail);
  int status = decomp_error_http_status(err);
  char type[128];
  snprintf(type, sizeof type, "urn:decompd:problem:%s", decomp_error_code(err));
  json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "type", type,
                        "title", decomp_strerror(err), "status", status,
                        "detail", detail, "code", decomp_error_code(err),
                        "request_id", r->id);
  char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  /* Never an empty problem: every field but the detail is ASCII we made. */
  if (!body &&
      asprintf(&body,
               "{\"type\":\"%s\",\"title\":\"%s\",\"status\":%d,"
               "\"detail\":\"the detail could not be encoded\",\"code\":"
               "\"%s\",\"request_id\":\"%s\"}",
               type, decomp_strerror(err), status, decomp_error_code(err),
               r->id) < 0)
    body = NULL;
  http_reply(r, status, "application/problem+json", body,
             body ? strlen(body) : 0);
  if (status == 401)
    http_reply_header(r, "WWW-Authenticate", "Bearer realm=\"decompd\"");
  LOG(status >= 500 ? LOG_ERROR : LOG_INFO, "http", r->id,
      "event=problem status=%d code=%s detail=%s", status,
      decomp_error_code(err), log_q(raw));
}

void http_reply_fd(http_req *r, int status, const char *content_type, int fd,
                   uint64_t offset, uint64_t len) {
  reply_reset(r);
  r->status = status;
  snprintf(r->ctype, sizeof r->ctype, "%s", content_type);
  r->rfd = fd;
  r->roff = offset;
  r->rfdlen = len;
}

void http_reply_stream(http_req *r, int status, const char *content_type,
                       http_stream_fn next, void *cls,
                       void (*free_cls)(void *cls)) {
  reply_reset(r);
  r->status = status;
  snprintf(r->ctype, sizeof r->ctype, "%s", content_type);
  r->snext = next;
  r->scls = cls;
  r->sfree = free_cls;
}

/* MHD's reader for a streamed reply: what `next` has, else park. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  struct stream *st = cls;
  bool done = false;
  size_t n = st->next(st->cls, buf, max, &done);
  if (n > 0)
    return (ssize_t)n;
  pthread_mutex_lock(&st->srv->smu);
  if (done || st->srv->stopping) {
    pthread_mutex_unlock(&st->srv->smu);
    return MHD_CONTENT_READER_END_OF_STREAM;
  }
  st->suspended = true;
  MHD_suspend_connection(st->c);
  pthread_mutex_unlock(&st->srv->smu);
  return 0;
}

static void stream_free(void *cls) {
  struct stream *st = cls;
  http_server *h = st->srv;
  pthread_mutex_lock(&h->smu);
  if (st->prev)
    st->prev->nextl = st->nextl;
  else
    h->streams = st->nextl;
  if (st->nextl)
    st->nextl->prev = st->prev;
  pthread_mutex_unlock(&h->smu);
  if (st->free_cls)
    st->free_cls(st->cls);
  free(st);
}

/* Resume every parked stream (they look again, or end when stopping). */
static void resume_all(http_server *h) {
  for (struct stream *st = h->streams; st; st = st->nextl)
    if (st->suspended) {
      st->suspended = false;
      MHD_resume_connection(st->c);
    }
}

static void *pump_main(void *arg) {
  http_server *h = arg;
  pthread_mutex_lock(&h->smu);
  while (!h->stopping) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += 250 * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
      t.tv_sec++;
      t.tv_nsec -= 1000000000L;
    }
    int rc = pthread_cond_timedwait(&h->scond, &h->smu, &t);
    if (rc != 0 && rc != ETIMEDOUT)
      break;
    resume_all(h);
  }
  pthread_mutex_unlock(&h->smu);
  return NULL;
}

void http_reply_header(http_req *r, const char *name, const char *value) {
  if (r->nhdrs >= MAX_HEADERS)
    return;
  char *n = strdup(name), *v = strdup(value);
  if (!n || !v) {
    free(n);
    free(v);
    return;
  }
  r->hdrs[r->nhdrs].name = n;
  r->hdrs[r->nhdrs].value = v;
  r->nhdrs++;
}

/* ---- request accessors ------------------------------------------------ */

store *http_req_store(const http_req *r) { return r->srv->s; }
service *http_req_service(const http_req *r) { return r->srv->sv; }
const config *http_req_config(const http_req *r) { return r->srv->cfg; }
const char *http_req_id(const http_req *r) { return r->id; }
const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }
const char *http_req_principal(const http_req *r) { return r->principal; }

const char *http_req_param(const http_req *r, int i) {
  return i >= 0 && i < r->nparams ? r->params[i] : NULL;
}

const char *http_req_query(const http_req *r, const char *key) {
  return MHD_lookup_connection_value(r->c, MHD_GET_ARGUMENT_KIND, key);
}

const char *http_req_header(const http_req *r, const char *name) {
  return MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, name);
}

store_partial *http_req_take_partial(http_req *r) {
  store_partial *p = r->partial;
  r->partial = NULL;
  return p;
}

const char *http_req_blob_digest(const http_req *r) { return r->blob_digest; }

bool http_req_upload_range(const http_req *r, int64_t *start, int64_t *end,
                           int64_t *total) {
  *start = r->range_start;
  *end = r->range_end;
  *total = r->range_total;
  return r->has_range;
}

const char *http_req_body(const http_req *r, size_t *len) {
  if (len)
    *len = r->body_len;
  return r->body ? r->body : "";
}

store_upload *http_req_take_upload(http_req *r) {
  store_upload *u = r->upload;
  r->upload = NULL;
  return u;
}

/* ---- the MHD callbacks ------------------------------------------------ */

static void make_request_id(http_req *r, struct MHD_Connection *c) {
  const char *given =
      MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
  if (given) {
    size_t n = strlen(given);
    bool ok = n > 0 && n < sizeof r->id;
    for (size_t i = 0; ok && i < n; i++)
      ok = (given[i] >= 'a' && given[i] <= 'z') ||
           (given[i] >= 'A' && given[i] <= 'Z') ||
           (given[i] >= '0' && given[i] <= '9') || given[i] == '-' ||
           given[i] == '_' || given[i] == '.';
    if (ok) {
      memcpy(r->id, given, n + 1);
      return;
    }
  }
  if (!store_random_id("", 8, r->id, sizeof r->id))
    snprintf(r->id, sizeof r->id, "%llx", (unsigned long long)mono_ns());
}

/* Queue r's reply on its connection. */
static enum MHD_Result send_reply(http_req *r) {
  struct MHD_Response *resp;
  if (r->status == 0)
    http_reply_problem(r, DECOMP_ERR_INTERNAL, "the handler gave no answer");
  if (r->snext) {
    struct stream *st = calloc(1, sizeof *st);
    resp = st ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                  stream_read, st,
                                                  stream_free)
              : NULL;
    if (!resp) {
      free(st);
      return MHD_NO;
    }
    http_server *h = r->srv;
    /* The stream owns cls now and may outlive the request by a moment (MHD
     * frees the response on its own schedule): it keeps nothing of r, and
     * its bytes are not counted in the request's log line. */
    *st = (struct stream){.srv = h, .c = r->c, .next = r->snext,
                          .cls = r->scls, .free_cls = r->sfree};
    r->snext = NULL;
    r->scls = NULL;
    r->sfree = NULL;
    pthread_mutex_lock(&h->smu);
    st->nextl = h->streams;
    if (h->streams)
      h->streams->prev = st;
    h->streams = st;
    pthread_mutex_unlock(&h->smu);
  } else if (r->rfd >= 0) {
    resp = MHD_create_response_from_fd_at_offset64(r->rfdlen, r->rfd,
                                                   r->roff);
    if (resp)
      r->rfd = -1; /* MHD closes it */
    r->bytes_out = r->rfdlen;
  } else {
    resp = MHD_create_response_from_buffer(r->rlen, r->rbody,
                                           MHD_RESPMEM_MUST_FREE);
    if (resp)
      r->rbody = NULL;
    r->bytes_out = r->rlen;
  }
  if (!resp)
    return MHD_NO;
  if (r->ctype[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype);
  MHD_add_response_header(resp, "X-Request-Id", r->id);
  for (int i = 0; i < r->nhdrs; i++)
    MHD_add_response_header(resp, r->hdrs[i].name, r->hdrs[i].value);
  enum MHD_Result ret =
      MHD_queue_response(r->c, (unsigned int)r->status, resp);
  MHD_destroy_response(resp);
  r->responded = true;
  if (strcmp(r->method, "HEAD") == 0)
    r->bytes_out = 0;
  return ret;
}

/* A non-negative decimal that fits int64 ("" and signs refused); the end
 * of it in *end. */
static bool parse_i64(const char *p, const char **end, int64_t *out) {
  int64_t v = 0;
  const char *q = p;
  for (; *q >= '0' && *q <= '9'; q++) {
    if (v > (INT64_MAX - (*q - '0')) / 10)
      return false;
    v = v * 10 + (*q - '0');
  }
  *end = q;
  *out = v;
  return q != p;
}

/* Content-Range "bytes START-END/TOTAL" (TOTAL may be '*') or
 * Upload-Offset "N" into r->range_*; false (the problem answered) when
 * malformed or when they disagree. */
static bool parse_upload_range(http_req *r) {
  const char *cr = http_req_header(r, "Content-Range");
  const char *uo = http_req_header(r, "Upload-Offset");
  const char *e;
  r->range_start = 0;
  r->range_end = r->range_total = -1;
  if (cr) {
    int64_t a, b, t = -1;
    if (strncmp(cr, "bytes ", 6) != 0 || !parse_i64(cr + 6, &e, &a) ||
        *e != '-' || !parse_i64(e + 1, &e, &b) || *e != '/' || b < a ||
        (strcmp(e + 1, "*") != 0 &&
         (!parse_i64(e + 1, &e, &t) || *e || t <= b))) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "Content-Range must be 'bytes START-END/TOTAL' "
                         "(TOTAL may be '*'), not '%s'",
                         cr);
      return false;
    }
    r->has_range = true;
    r->range_start = a;
    r->range_end = b;
    r->range_total = t;
  }
  if (uo) {
    int64_t o;
    if (!parse_i64(uo, &e, &o) || *e) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "Upload-Offset must be a byte count, not '%s'", uo);
      return false;
    }
    if (cr && o != r->range_start) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "Upload-Offset %lld and Content-Range '%s' disagree",
                         (long long)o, cr);
      return false;
    }
    r->range_start = o;
  }
  return true;
}

/* A partial-body route's headers are in: the digest, the range, the limit,
 * then the upload opened at its offset (or the body marked to be dropped
 * when the blob is stored already). True when a reply is ready. */
static bool partial_begin(http_req *r, long long declared) {
  http_server *srv = r->srv;
  const char *d = http_req_param(r, 0);
  if (d && strlen(d) == 64)
    snprintf(r->blob_digest, sizeof r->blob_digest, "sha256:%s", d);
  else
    snprintf(r->blob_digest, sizeof r->blob_digest, "%s", d ? d : "");
  if (!store_digest_valid(r->blob_digest)) {
    r->blob_digest[0] = '\0';
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "a blob is named by its digest: sha256:<64 lowercase "
                       "hex> (or the bare hex)");
    return true;
  }
  if (!parse_upload_range(r))
    return true;
  int64_t limit = srv->cfg->max_upload_bytes;
  int64_t end = r->range_start + (declared > 0 ? declared : 0);
  if (r->range_total > limit || end > limit) {
    http_reply_problem(r, DECOMP_ERR_PAYLOAD_TOO_LARGE,
                       "the blob would be %lld bytes, over the limit of %lld",
                       (long long)(r->range_total > end ? r->range_total : end),
                       (long long)limit);
    return true;
  }
  if (r->range_end >= 0 && declared >= 0 &&
      declared != r->range_end - r->range_start + 1) {
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "Content-Range covers %lld bytes, Content-Length is "
                       "%lld",
                       (long long)(r->range_end - r->range_start + 1),
                       declared);
    return true;
  }
  char path[4200];
  if (store_blob_path(srv->s, r->blob_digest, path, sizeof path) ==
          DECOMP_OK &&
      access(path, F_OK) == 0) {
    r->blob_present = true;
    return false;
  }
  int64_t have = -1;
  int rc = store_partial_open(srv->s, r->blob_digest, r->range_start,
                              &r->partial, &have);
  if (rc != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", store_errmsg());
    if (have >= 0) {
      char off[32];
      snprintf(off, sizeof off, "%lld", (long long)have);
      http_reply_header(r, "Upload-Offset", off);
    }
    return true;
  }
  return false;
}

/* Headers are in: route, auth, limits. Returns true when a reply is ready
 * (an error) and the body must not be read. */
static bool on_headers(http_req *r, const char *url) {
  http_server *srv = r->srv;
  const http_route *rt = NULL;
  char allow[64] = "";
  for (const http_route *x = HTTP_ROUTES; x->method; x++) {
    if (!route_match(x->pattern, url, NULL))
      continue;
    if (method_is(x->method, r->method)) {
      rt = x;
      break;
    }
    if (strlen(allow) + strlen(x->method) + 3 < sizeof allow) {
      if (allow[0])
        strcat(allow, ", ");
      strcat(allow, x->method);
    }
  }
  if (!rt) {
    if (allow[0]) {
      http_reply_problem(r, DECOMP_ERR_METHOD_NOT_ALLOWED,
                         "%s is not allowed on %s", r->method, url);
      http_reply_header(r, "Allow", allow);
    } else {
      http_reply_problem(r, DECOMP_ERR_NOT_FOUND, "no route %s", url);
    }
    return true;
  }
  route_match(rt->pattern, url, r);
  r->route = rt;

  char detail[256];
  int rc = auth_check(srv->s,
                      MHD_lookup_connection_value(r->c, MHD_HEADER_KIND,
                                                  "Authorization"),
                      rt->role, r->principal, detail, sizeof detail);
  if (rc != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", detail);
    return true;
  }

  const char *cl =
      MHD_lookup_connection_value(r->c, MHD_HEADER_KIND, "Content-Length");
  long long declared = cl ? strtoll(cl, NULL, 10) : -1;
  if (rt->body == HTTP_BODY_PARTIAL)
    return partial_begin(r, declared);
  int64_t limit = rt->body == HTTP_BODY_STREAM ? srv->cfg->max_upload_bytes
                                               : srv->cfg->max_json_bytes;
  if (declared > limit) {
    http_reply_problem(r, DECOMP_ERR_PAYLOAD_TOO_LARGE,
                       "Content-Length %lld is over the limit of %lld bytes",
                       declared, (long long)limit);
    return true;
  }
  if (rt->body == HTTP_BODY_STREAM) {
    rc = store_upload_begin(srv->s, &r->upload);
    if (rc != DECOMP_OK) {
      http_reply_problem(r, rc, "upload: %s", store_errmsg());
      return true;
    }
  }
  return false;
}

/* One chunk of the body. Returns false when the body has gone over its
 * limit (possible only without a Content-Length: a chunked body). */
static bool on_body(http_req *r, const char *data, size_t n) {
  r->bytes_in += n;
  const config *cfg = r->srv->cfg;
  if (r->body_err)
    return true; /* already failed: consume and drop */
  if (!r->route || r->route->body == HTTP_BODY_NONE) {
    if (r->bytes_in <= (uint64_t)cfg->max_json_bytes)
      return true;
    LOG(LOG_WARN, "http", r->id, "event=body_over_limit limit=%lld",
        (long long)cfg->max_json_bytes);
    return false;
  }
  if (r->route->body == HTTP_BODY_JSON) {
    if (r->body_len + n > (uint64_t)cfg->max_json_bytes) {
      LOG(LOG_WARN, "http", r->id, "event=body_over_limit limit=%lld",
          (long long)cfg->max_json_bytes);
      return false;
    }
    if (r->body_len + n + 1 > r->body_cap) {
      size_t cap = r->body_cap ? r->body_cap : 4096;
      while (cap < r->body_len + n + 1)
        cap *= 2;
      char *nb = realloc(r->body, cap);
      if (!nb) {
        r->body_err = DECOMP_ERR_NOMEM;
        snprintf(r->body_errmsg, sizeof r->body_errmsg, "out of memory");
        return true;
      }
      r->body = nb;
      r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return true;
  }
  if (r->route->body == HTTP_BODY_PARTIAL) {
    /* the whole blob, earlier requests' bytes included, is under the
     * limit */
    if (r->range_start + (int64_t)r->bytes_in > cfg->max_upload_bytes) {
      LOG(LOG_WARN, "http", r->id, "event=upload_over_limit limit=%lld",
          (long long)cfg->max_upload_bytes);
      return false;
    }
    if (r->blob_present || !r->partial)
      return true;
    int rc = store_partial_write(r->partial, data, n);
    if (rc != DECOMP_OK) {
      r->body_err = rc;
      snprintf(r->body_errmsg, sizeof r->body_errmsg, "%s", store_errmsg());
    }
    return true;
  }
  /* streaming upload */
  if ((int64_t)r->bytes_in > cfg->max_upload_bytes) {
    LOG(LOG_WARN, "http", r->id, "event=upload_over_limit limit=%lld",
        (long long)cfg->max_upload_bytes);
    return false;
  }
  int rc = store_upload_write(r->upload, data, n);
  if (rc != DECOMP_OK) {
    r->body_err = rc;
    snprintf(r->body_errmsg, sizeof r->body_errmsg, "%s", store_errmsg());
    store_upload_free(r->upload);
    r->upload = NULL;
  }
  return true;
}

/* Write all of `buf` to the non-blocking socket `fd`, waiting a little
 * for room; false when it could not. */
static bool write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n > 0) {
      buf += n;
      len -= (size_t)n;
    } else if (n < 0 && errno == EAGAIN) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      if (poll(&p, 1, 1000) <= 0)
        return false;
    } else if (n < 0 && errno != EINTR) {
      return false;
    }
  }
  return true;
}

/* The 413 for a body that went over its limit while it was read (a
 * chunked body; a declared Content-Length over it is refused before the
 * body, through MHD). MHD 0.9.75 takes no response once the body has
 * started (MHD_queue_response refuses it in that state, and MHD_NO closes
 * the connection with nothing said), so the answer is written to the
 * socket here: nothing else has gone out on this connection (MHD sends at
 * most a 100 Continue, before the body), and MHD closes it once we return
 * MHD_NO. The client still sending may see the connection reset after
 * the answer. */
static enum MHD_Result reply_over_limit(http_req *r) {
  int64_t limit = r->route && (r->route->body == HTTP_BODY_STREAM ||
                                r->route->body == HTTP_BODY_PARTIAL)
                      ? r->srv->cfg->max_upload_bytes
                      : r->srv->cfg->max_json_bytes;
  http_reply_problem(r, DECOMP_ERR_PAYLOAD_TOO_LARGE,
                     "the body is over the limit of %lld bytes",
                     (long long)limit);
  store_upload_free(r->upload); /* gone before the client hears of it */
  r->upload = NULL;
  if (r->partial) /* it can never complete under the limit */
    store_partial_drop(r->partial);
  store_partial_free(r->partial);
  r->partial = NULL;
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(r->c, MHD_CONNECTION_INFO_CONNECTION_FD);
  static const char *const DAYS[] = {"Sun", "Mon", "Tue", "Wed",
                                     "Thu", "Fri", "Sat"};
  static const char *const MONTHS[] = {"Jan", "Feb", "Mar", "Apr",
                                       "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"};
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  char head[1024];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nDate: %s, %02d %s %04d %02d:%02d:%02d "
                   "GMT\r\nConnection: close\r\nContent-Type: %s\r\n"
                   "Content-Length: %zu\r\nX-Request-Id: %s\r\n\r\n",
                   r->status, MHD_get_reason_phrase_for((unsigned)r->status),
                   DAYS[tm.tm_wday], tm.tm_mday, MONTHS[tm.tm_mon],
                   tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   r->ctype, r->rlen, r->id);
  if (ci && n > 0 && (size_t)n < sizeof head &&
      write_all(ci->connect_fd, head, (size_t)n) &&
      write_all(ci->connect_fd, r->rbody ? r->rbody : "", r->rlen)) {
    shutdown(ci->connect_fd, SHUT_WR);
    r->responded = true;
    r->bytes_out = (uint64_t)n + r->rlen;
  }
  return MHD_NO;
}

static http_req *req_new(http_server *srv, struct MHD_Connection *c) {
  http_req *r = calloc(1, sizeof *r);
  if (r) {
    r->srv = srv;
    r->c = c;
    r->rfd = -1;
    r->t0_ns = mono_ns();
  }
  return r;
}

/* MHD's URI log callback: the request target as it came, before MHD
 * decodes it (the request is made here; MHD hands it to on_request and
 * on_completed as *con_cls). MHD decodes %00 into the C strings it gives
 * the handler, which then end there: "/v1/models/ID%00/content" would be
 * routed as /v1/models/ID and "?name=a%00b" read as "a". So a NUL is looked
 * for here, where it is still "%00" (the only way to send one in a
 * target), and the request refused. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
  http_req *r = req_new(cls, c);
  if (r)
    r->nul_in_target = uri && strstr(uri, "%00") != NULL;
  return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
  (void)version;
  http_req *r = *con_cls;
  if (!r || !r->started) {
    if (!r && !(r = req_new(cls, c)))
      return MHD_NO;
    *con_cls = r;
    r->started = true;
    snprintf(r->method, sizeof r->method, "%s", method);
    r->path = strdup(url);
    make_request_id(r, c);
    if (!r->path)
      return MHD_NO;
    /* An error is answered at once, without reading the body (MHD then
     * closes the connection); anything else waits for MHD's next call, as
     * a reply queued on this first call would also close the connection. */
    if (r->nul_in_target) {
      http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                         "the path or query holds a NUL byte (%%00)");
      return send_reply(r);
    }
    if (on_headers(r, url))
      return send_reply(r);
    return MHD_YES;
  }
  if (r->responded) { /* answered early: drop whatever still comes */
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    bool keep = on_body(r, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return keep ? MHD_YES : reply_over_limit(r);
  }
  /* the whole request is in */
  if (r->body_err)
    http_reply_problem(r, r->body_err, "%s", r->body_errmsg);
  else
    r->route->handle(r);
  return send_reply(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)c;
  http_req *r = *con_cls;
  if (!r)
    return;
  *con_cls = NULL;
  if (!r->started) { /* MHD refused the request before the handler */
    free(r);
    return;
  }
  int status = r->responded ? r->status : 0;
  double ms = (double)(mono_ns() - r->t0_ns) / 1e6;
  const char *route = r->route ? r->route->pattern : "unmatched";
  metrics_request(route, r->method, status, r->bytes_in,
                  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? r->bytes_out
                                                             : 0);
  LOG(LOG_INFO, "http", r->id,
      "event=request method=%s path=%s route=%s status=%d bytes_in=%llu "
      "bytes_out=%llu ms=%.1f principal=%s%s",
      r->method, log_q(r->path), route, status,
      (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, ms,
      r->principal[0] ? log_q(r->principal) : "-",
      toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
  store_upload_free(r->upload); /* an upload cut short leaves nothing */
  store_partial_free(r->partial); /* a resumable one keeps what came */
  reply_reset(r);
  for (int i = 0; i < r->nhdrs; i++) {
    free(r->hdrs[i].name);
    free(r->hdrs[i].value);
  }
  free(r->body);
  free(r->path);
  free(r);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  LOG(LOG_WARN, "mhd", NULL, "msg=%s", log_q(msg));
}

/* ---- start / stop ----------------------------------------------------- */

int http_start(const config *cfg, service *sv, http_server **out, int *port) {
  http_server *h = calloc(1, sizeof *h);
  if (!h)
    return DECOMP_ERR_NOMEM;
  h->sv = sv;
  h->s = service_store(sv);
  h->cfg = cfg;
  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", cfg->listen_port);
  int gai = getaddrinfo(cfg->listen_host, portstr, &hints, &ai);
  if (gai != 0) {
    LOG(LOG_ERROR, "http", NULL, "event=listen_failed host=%s error=%s",
        log_q(cfg->listen_host), log_q(gai_strerror(gai)));
    free(h);
    return DECOMP_ERR_INVALID_ARGUMENT;
  }
  /* ITC lets MHD_quiesce_daemon stop the listening socket at shutdown. */
  unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                       MHD_USE_ITC | MHD_USE_ERROR_LOG |
                       MHD_ALLOW_SUSPEND_RESUME;
  pthread_mutex_init(&h->smu, NULL);
  pthread_cond_init(&h->scond, NULL);
  if (ai->ai_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  unsigned int threads = (unsigned int)(cfg->http_threads > 0
                                            ? cfg->http_threads
                                            : 4);
  h->d = MHD_start_daemon(
      flags, (uint16_t)cfg->listen_port, NULL, NULL, on_request, h,
      MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE, threads,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->connection_timeout,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
      MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_URI_LOG_CALLBACK,
      on_uri, h, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
      MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!h->d) {
    LOG(LOG_ERROR, "http", NULL, "event=listen_failed host=%s port=%d",
        log_q(cfg->listen_host), cfg->listen_port);
    free(h);
    return DECOMP_ERR_UNAVAILABLE;
  }
  h->pump_running = pthread_create(&h->pump, NULL, pump_main, h) == 0;
  if (!h->pump_running)
    LOG(LOG_WARN, "http", NULL, "event=no_stream_pump");
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  *port = info ? info->port : cfg->listen_port;
  *out = h;
  return DECOMP_OK;
}

void http_stop(http_server *h) {
  if (!h)
    return;
  /* Stop accepting first; end the streams (resumed, they see `stopping`
   * and finish); then close what is open and join the threads. */
  MHD_socket fd = MHD_quiesce_daemon(h->d);
  if (fd != MHD_INVALID_SOCKET)
    close(fd);
  pthread_mutex_lock(&h->smu);
  h->stopping = true;
  resume_all(h);
  pthread_cond_broadcast(&h->scond);
  pthread_mutex_unlock(&h->smu);
  if (h->pump_running)
    pthread_join(h->pump, NULL);
  MHD_stop_daemon(h->d);
  pthread_mutex_destroy(&h->smu);
  pthread_cond_destroy(&h->scond);
  free(h);
}
