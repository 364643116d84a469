/* transport.c — libdecompclient's HTTP transport: the one file that includes
 * curl.h. It turns a ct_request into one libcurl transfer on the handle's
 * reusable easy handle (keep-alive across calls), streams request bodies from
 * a file descriptor, hands 2xx response bodies to a sink (the fetcher's
 * hashing writer) or keeps them in memory, reports progress, and maps
 * libcurl's failures onto decompd's codes (CONNECT, TRANSFER, CANCELLED). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "client_internal.h"

/* Answers we keep in memory (JSON, problem+json) are small; a larger one is
 * cut (its start still says what went wrong). */
#define CT_MAX_BODY (16u << 20)

struct ct_conn {
  CURL *easy;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_ALL); }

void ct_conn_free(struct ct_conn *conn) {
  if (!conn)
    return;
  if (conn->easy)
    curl_easy_cleanup(conn->easy);
  free(conn);
}

struct xfer {
  decomp_client *c;
  const ct_request *rq;
  ct_response *rs;
  bool started;   /* first body byte seen */
  bool to_sink;   /* this answer's body goes to the sink */
  int sink_rc;    /* a sink's refusal */
  bool cancelled; /* the progress callback said stop */
  char content_range[128];
  size_t cap;
  double last_report;
  bool reported_end; /* the 100% report went out */
  int fd;
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void copy_header_value(char *dst, size_t cap, const char *v,
                              size_t n) {
  while (n > 0 && (*v == ' ' || *v == '\t')) {
    v++;
    n--;
  }
  while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
    n--;
  if (n >= cap)
    n = cap - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *user) {
  struct xfer *x = user;
  size_t n = size * nitems;
  /* A new status line (after a 100 Continue, or a redirect) starts over. */
  if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
    x->content_range[0] = '\0';
    x->rs->content_type[0] = '\0';
    x->rs->upload_offset = x->rs->content_length = 0;
    return n;
  }
  const char *colon = memchr(buf, ':', n);
  if (!colon)
    return n;
  size_t klen = (size_t)(colon - buf);
  const char *v = colon + 1;
  size_t vlen = n - klen - 1;
  if (klen == 13 && strncasecmp(buf, "Content-Range", 13) == 0)
    copy_header_value(x->content_range, sizeof x->content_range, v, vlen);
  else if (klen == 12 && strncasecmp(buf, "Content-Type", 12) == 0)
    copy_header_value(x->rs->content_type, sizeof x->rs->content_type, v,
                      vlen);
  else if ((klen == 13 && strncasecmp(buf, "Upload-Offset", 13) == 0) ||
           (klen == 14 && strncasecmp(buf, "Content-Length", 14) == 0)) {
    char num[32], *end;
    copy_header_value(num, sizeof num, v, vlen);
    long long k = strtoll(num, &end, 10);
    if (end != num && !*end && k >= 0)
      *(klen == 13 ? &x->rs->upload_offset : &x->rs->content_length) =
          (int64_t)k + 1;
  }
  return n;
}

static size_t on_write(char *buf, size_t size, size_t nmemb, void *user) {
  struct xfer *x = user;
  size_t n = size * nmemb;
  if (!x->started) {
    x->started = true;
    long status = 0;
    curl_easy_getinfo(x->c->conn->easy, CURLINFO_RESPONSE_CODE, &status);
    x->rs->status = status;
    x->to_sink = x->rq->sink && (status == 200 || status == 206);
    if (x->to_sink) {
      int rc = x->rq->sink->begin(x->rq->sink->user, status, x->content_range);
      if (rc != DECOMP_OK) {
        x->sink_rc = rc;
        return CURL_WRITEFUNC_ERROR;
      }
    }
  }
  if (x->to_sink) {
    int rc = x->rq->sink->data(x->rq->sink->user, buf, n);
    if (rc != DECOMP_OK) {
      x->sink_rc = rc;
      return CURL_WRITEFUNC_ERROR;
    }
    x->rs->sunk += (int64_t)n;
    return n;
  }
  if (x->rs->body_len + n > CT_MAX_BODY)
    return n; /* keep the start only */
  if (x->rs->body_len + n + 1 > x->cap) {
    size_t cap = x->cap ? x->cap : 4096;
    while (cap < x->rs->body_len + n + 1)
      cap *= 2;
    char *nb = realloc(x->rs->body, cap);
    if (!nb) {
      x->sink_rc = DECOMP_ERR_NOMEM;
      return CURL_WRITEFUNC_ERROR;
    }
    x->rs->body = nb;
    x->cap = cap;
  }
  memcpy(x->rs->body + x->rs->body_len, buf, n);
  x->rs->body_len += n;
  x->rs->body[x->rs->body_len] = '\0';
  return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *user) {
  struct xfer *x = user;
  size_t want = size * nitems;
  for (;;) {
    ssize_t n = read(x->fd, buf, want);
    if (n >= 0)
      return (size_t)n;
    if (errno != EINTR)
      return CURL_READFUNC_ABORT;
  }
}

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow) {
  struct xfer *x = user;
  decomp_client *c = x->c;
  if (x->rq->tick && x->rq->tick(x->rq->tick_user) != 0) {
    x->cancelled = true;
    return 1;
  }
  if (!c->progress || !x->rq->progress_name)
    return 0;
  bool up = x->rq->direction == DECOMP_CLIENT_UPLOAD;
  int64_t done = (int64_t)(up ? ulnow : dlnow);
  int64_t total = (int64_t)(up ? ultotal : dltotal);
  if (x->rq->progress_total >= 0)
    total = x->rq->progress_total;
  else if (total <= 0)
    total = -1;
  else
    total += x->rq->progress_base;
  /* A 200 after a resume restarts from 0: count from 0 then. */
  if (!(x->to_sink && x->rs->status == 200))
    done += x->rq->progress_base;
  double t = now_s();
  bool last = total > 0 && done >= total;
  if (last ? x->reported_end : t - x->last_report < 0.2)
    return 0;
  x->reported_end = last;
  x->last_report = t;
  decomp_client_progress p = {.direction = x->rq->direction,
                              .name = x->rq->progress_name,
                              .done = done,
                              .total = total};
  if (c->progress(c->progress_user, &p) != 0) {
    x->cancelled = true;
    return 1;
  }
  return 0;
}

void ct_response_clear(ct_response *rs) {
  if (!rs)
    return;
  free(rs->body);
  memset(rs, 0, sizeof *rs);
}

char *ct_escape(decomp_client *c, const char *s) {
  (void)c;
  char *e = curl_easy_escape(NULL, s, 0);
  if (!e)
    return NULL;
  char *out = strdup(e);
  curl_free(e);
  return out;
}

static int conn_get(decomp_client *c) {
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return client_fail(c, DECOMP_ERR_INTERNAL, "curl_global_init: %s",
                       curl_easy_strerror(global_rc));
  if (!c->conn) {
    c->conn = calloc(1, sizeof *c->conn);
    if (!c->conn)
      return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  }
  if (!c->conn->easy) {
    c->conn->easy = curl_easy_init();
    if (!c->conn->easy)
      return client_fail(c, DECOMP_ERR_NOMEM, "curl_easy_init failed");
  } else {
    curl_easy_reset(c->conn->easy); /* keeps the connection cache */
  }
  return DECOMP_OK;
}

int ct_perform(decomp_client *c, const ct_request *rq, ct_response *rs) {
  memset(rs, 0, sizeof *rs);
  int rc = conn_get(c);
  if (rc != DECOMP_OK)
    return rc;
  CURL *e = c->conn->easy;
  struct xfer x = {.c = c, .rq = rq, .rs = rs, .fd = rq->body_fd};
  struct curl_slist *hdrs = NULL;
  char *url = NULL, line[512];
  size_t ulen = strlen(c->url) + strlen(rq->path) + 1;
  c->http_status = 0;
  if (!(url = malloc(ulen))) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  snprintf(url, ulen, "%s%s", c->url, rq->path);

  if (c->token && c->token[0]) {
    /* The token is not copied into our error messages or logs. */
    size_t hl = strlen(c->token) + 32;
    char *h = malloc(hl);
    if (!h) {
      rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
      goto done;
    }
    snprintf(h, hl, "Authorization: Bearer %s", c->token);
    struct curl_slist *n = curl_slist_append(hdrs, h);
    free(h);
    if (!n)
      goto nomem;
    hdrs = n;
  }
  if (rq->content_type) {
    snprintf(line, sizeof line, "Content-Type: %s", rq->content_type);
    struct curl_slist *n = curl_slist_append(hdrs, line);
    if (!n)
      goto nomem;
    hdrs = n;
  }
  if (rq->range_from > 0) {
    snprintf(line, sizeof line, "Range: bytes=%lld-",
             (long long)rq->range_from);
    struct curl_slist *n = curl_slist_append(hdrs, line);
    if (!n)
      goto nomem;
    hdrs = n;
    if (rq->if_range) {
      snprintf(line, sizeof line, "If-Range: %s", rq->if_range);
      if (!(n = curl_slist_append(hdrs, line)))
        goto nomem;
      hdrs = n;
    }
  }
  {
    struct curl_slist *n = curl_slist_append(hdrs, "Accept: application/json, */*");
    if (!n)
      goto nomem;
    hdrs = n;
  }
  if (rq->extra_header) {
    struct curl_slist *n = curl_slist_append(hdrs, rq->extra_header);
    if (!n)
      goto nomem;
    hdrs = n;
  }
  if (rq->body_fd >= 0) {
    /* Ask before sending a file: decompd answers 401/403/413 from the
     * headers alone, and with 100-continue that answer arrives instead of a
     * broken pipe half-way through the body (curl adds the header itself
     * only above 1 MiB). */
    struct curl_slist *n = curl_slist_append(hdrs, "Expect: 100-continue");
    if (!n)
      goto nomem;
    hdrs = n;
  }

  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  /* A stalled transfer (under 1 byte/s for 60 s) is a broken one; an
   * event stream is quiet between events and ends on its own. */
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, rq->stream ? 0L : 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, rq->stream ? 0L : 60L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, rq->timeout_ms);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "libdecompclient/0.1.0");
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
  if (rq->sink) /* large bodies to disk: fewer, larger writes and hashes */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, &x);

  if (strcmp(rq->method, "POST") == 0 || strcmp(rq->method, "PUT") == 0) {
    /* A PUT is sent as a POST is (a body, its size), under its own name. */
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    if (strcmp(rq->method, "PUT") == 0)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
    if (rq->body_fd >= 0) {
      curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(e, CURLOPT_READDATA, &x);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       (curl_off_t)rq->body_size);
    } else {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       (curl_off_t)(rq->body ? rq->body_len : 0));
    }
  } else if (strcmp(rq->method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(rq->method, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq->method);
  }

  CURLcode cc = curl_easy_perform(e);
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  rs->status = status;
  c->http_status = (int)status;
  if (cc == CURLE_OK ||
      ((cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR) && status >= 400 &&
       x.sink_rc == DECOMP_OK)) {
    /* An early error answer (the server stopped reading the body) is still
     * the server's answer: the caller reports its status. */
    rc = DECOMP_OK;
  } else if (x.sink_rc != DECOMP_OK) {
    rc = x.sink_rc; /* the sink left its message on c */
  } else if (x.cancelled || cc == CURLE_ABORTED_BY_CALLBACK) {
    rc = client_fail(c, DECOMP_ERR_CANCELLED, "%s %s: stopped", rq->method,
                     rq->path);
  } else if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
             cc == CURLE_COULDNT_RESOLVE_PROXY ||
             (cc == CURLE_OPERATION_TIMEDOUT && status == 0 && !x.started)) {
    rc = client_fail(c, DECOMP_ERR_CONNECT,
                     "cannot connect to %s: %s (is decompd running? set "
                     "DECOMPD_URL)",
                     c->url, curl_easy_strerror(cc));
  } else if (cc == CURLE_OUT_OF_MEMORY) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  } else if (cc == CURLE_READ_ERROR) {
    rc = client_fail(c, DECOMP_ERR_IO, "%s %s: reading the request body: %s",
                     rq->method, rq->path, curl_easy_strerror(cc));
  } else {
    rc = client_fail(c, DECOMP_ERR_TRANSFER,
                     "%s %s%s: the connection broke after %lld bytes: %s",
                     rq->method, c->url, rq->path,
                     (long long)(rs->sunk + (int64_t)rs->body_len),
                     curl_easy_strerror(cc));
  }
  goto done;
nomem:
  rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
done:
  /* Headers and URL are ours, not the easy handle's: detach them. */
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
  curl_slist_free_all(hdrs);
  free(url);
  return rc;
}
