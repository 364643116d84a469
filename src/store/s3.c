/* s3.c — one bucket of an S3-compatible object store through libcurl: the
 * requests (path-style URLs, libcurl's SigV4 signing), the streaming of
 * bodies between the service and file descriptors, what S3's answers mean
 * (their XML is read by s3_xml.c), and the pool of easy handles that lets
 * many threads use one bucket. The only file of the store that includes
 * curl.h.
 *
 * What libcurl 7.88 (Debian 12) signs and what it leaves to us (seen with
 * its curl(1) against tests/s3/sigv4_check.py: an unsorted query, "uploads"
 * without '=', or a '/' left unencoded in a value all fail SigV4):
 * - it signs every header we add, x-amz-content-sha256 included, and uses
 *   that header's value as the payload hash; so every request carries one
 *   (the empty body's hash, the real hash of an XML body, the expected
 *   digest of a single PUT, or UNSIGNED-PAYLOAD for a streamed part);
 * - it signs the URL's path and query exactly as they are written: it
 *   neither sorts nor re-encodes the query (later versions do). So every
 *   URL here is already canonical: keys percent-encoded with S3's rules
 *   ('/' kept), query parameters sorted by name, each with its '=' even
 *   when empty ("uploads="), values encoded, hex in upper case. */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "digest.h"
#include "s3.h"
#include "s3_xml.h"
#include "store_int.h"

#define S3_KEY_MAX   1024
#define S3_PARTS_MAX 10000
/* Idle easy handles (each with its open connections) a bucket keeps. */
#define S3_POOL_MAX 16
/* The largest answer held in memory: a page of a listing. */
#define S3_XML_MAX (16 << 20)
/* Of an error answer, only this much is kept (it only feeds a message). */
#define S3_ERRBODY_MAX (64 << 10)
#define S3_EMPTY_SHA256                                                        \
  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define S3_UNSIGNED "UNSIGNED-PAYLOAD"

struct s3_bucket {
  char *endpoint; /* scheme://authority[/path], no trailing '/' */
  char *bucket;
  char *prefix; /* "" or "a/b": no leading or trailing '/' */
  char *access;
  char *secret;
  const char *cred_from; /* where the credentials came from, for messages */
  char *sigv4;           /* "aws:amz:REGION:s3" */
  char *where;           /* "ENDPOINT bucket NAME" */
  int64_t part_size;
  int list_page;
  CURLSH *share; /* DNS cache and TLS sessions: never connections, which
                    libcurl cannot share safely between threads */
  pthread_mutex_t share_lock[CURL_LOCK_DATA_LAST];
  pthread_mutex_t pool_lock;
  CURL *pool[S3_POOL_MAX];
  int npool;
};

/* ---- growable strings ---------------------------------------------------- */

typedef struct s3_buf {
  char *p; /* NUL-terminated when not NULL */
  size_t len, cap;
} s3_buf;

static bool buf_add(s3_buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
      return false;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
  return true;
}

static bool buf_str(s3_buf *b, const char *s) {
  return buf_add(b, s, strlen(s));
}

static bool buf_printf(s3_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static bool buf_printf(s3_buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  return n >= 0 && (size_t)n < sizeof tmp && buf_add(b, tmp, (size_t)n);
}

static void buf_free(s3_buf *b) {
  free(b->p);
  *b = (s3_buf){0};
}

/* S3's URI encoding: unreserved characters as they are, '/' too when
 * `keep_slash` (a key in a path), every other byte as %XX in upper case. */
static bool buf_uri(s3_buf *b, const char *s, bool keep_slash) {
  static const char hx[] = "0123456789ABCDEF";
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    bool plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                 (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' ||
                 *p == '.' || *p == '~' || (keep_slash && *p == '/');
    char e[3] = {'%', hx[*p >> 4], hx[*p & 15]};
    if (!(plain ? buf_add(b, (const char *)p, 1) : buf_add(b, e, 3)))
      return false;
  }
  return true;
}

/* ---- the bucket handle: curl's global state, the share, the pool --------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) {
  global_rc = curl_global_init(CURL_GLOBAL_ALL);
}

static void share_lock(CURL *c, curl_lock_data data, curl_lock_access access,
                       void *user) {
  (void)c;
  (void)access;
  s3_bucket *b = user;
  pthread_mutex_lock(&b->share_lock[data]);
}

static void share_unlock(CURL *c, curl_lock_data data, void *user) {
  (void)c;
  s3_bucket *b = user;
  pthread_mutex_unlock(&b->share_lock[data]);
}

static CURL *pool_get(s3_bucket *b) {
  CURL *c = NULL;
  pthread_mutex_lock(&b->pool_lock);
  if (b->npool > 0)
    c = b->pool[--b->npool];
  pthread_mutex_unlock(&b->pool_lock);
  if (c)
    curl_easy_reset(c); /* keeps its live connections */
  else
    c = curl_easy_init();
  return c;
}

static void pool_put(s3_bucket *b, CURL *c) {
  pthread_mutex_lock(&b->pool_lock);
  if (b->npool < S3_POOL_MAX) {
    b->pool[b->npool++] = c;
    c = NULL;
  }
  pthread_mutex_unlock(&b->pool_lock);
  curl_easy_cleanup(c);
}

const char *s3_where(const s3_bucket *b) {
  return b->where;
}

/* ---- one request --------------------------------------------------------- */

typedef struct s3_req {
  const char *method; /* GET HEAD PUT POST DELETE */
  const char *key;    /* the full key (prefix included), or NULL: the bucket */
  const char *query;  /* canonical (see the top of the file), or NULL */
  const char *payload_hash; /* x-amz-content-sha256; NULL: the empty body's */
  const char *range;        /* "bytes=A-B", or NULL */
  /* request body: `body` in memory (POST), or `in_len` bytes read from
   * `in_fd` (PUT), hashed into `in_hash` when given */
  const char *body;
  size_t body_len;
  int in_fd;
  int64_t in_len, in_done;
  store_sha256 *in_hash;
  int in_errno; /* read(2)'s errno, or -1 when the fd ended early */
  /* answer body: a 2xx one goes to `out_fd` when >= 0 (skipping what a
   * service that ignored `range_from` sent before it) and into `out_hash`;
   * any other into `resp` */
  int out_fd;
  int64_t range_from, out_skip, out_done;
  int64_t out_max; /* bytes to write at most (-1: all): after a skip, a
                      service that ignored the range sends more */
  bool out_started;
  store_sha256 *out_hash;
  int out_errno;
  bool resp_too_big;
  s3_buf resp;
  /* the answer */
  CURL *easy;
  long status;
  char etag[256];
  int64_t content_range_from;  /* -1 when the answer had no Content-Range */
  int64_t content_range_total; /* its "/SIZE", -1 when absent or '*' */
  int64_t content_length;      /* -1 when the answer had no Content-Length */
  char err[CURL_ERROR_SIZE];
} s3_req;

static s3_req req_new(const char *method, const char *key, const char *query) {
  return (s3_req){.method = method,
                  .key = key,
                  .query = query,
                  .in_fd = -1,
                  .out_fd = -1,
                  .out_max = -1,
                  .content_range_from = -1,
                  .content_range_total = -1,
                  .content_length = -1};
}

static size_t on_read(char *p, size_t size, size_t n, void *user) {
  s3_req *r = user;
  size_t want = size * n;
  if ((int64_t)want > r->in_len - r->in_done)
    want = (size_t)(r->in_len - r->in_done);
  if (want == 0)
    return 0;
  ssize_t got;
  do
    got = read(r->in_fd, p, want);
  while (got < 0 && errno == EINTR);
  if (got <= 0) {
    r->in_errno = got < 0 ? errno : -1;
    return CURL_READFUNC_ABORT;
  }
  if (r->in_hash && !store_sha256_update(r->in_hash, p, (size_t)got)) {
    r->in_errno = ENOMEM;
    return CURL_READFUNC_ABORT;
  }
  r->in_done += got;
  return (size_t)got;
}

/* libcurl rewinds an upload when it retries a request on a fresh
 * connection; the fd may be a pipe, and the hash has seen the bytes, so
 * only a rewind before the first byte is possible. */
static int on_seek(void *user, curl_off_t offset, int origin) {
  s3_req *r = user;
  return origin == SEEK_SET && offset == 0 && r->in_done == 0
             ? CURL_SEEKFUNC_OK
             : CURL_SEEKFUNC_CANTSEEK;
}

static size_t on_header(char *p, size_t size, size_t n, void *user) {
  s3_req *r = user;
  size_t len = size * n;
  if (len >= 5 && !memcmp(p, "HTTP/", 5)) { /* a new answer (after 100) */
    r->etag[0] = '\0';
    r->content_range_from = -1;
    r->content_range_total = -1;
    r->content_length = -1;
  } else if (len > 15 && !strncasecmp(p, "Content-Length:", 15)) {
    char tmp[32];
    size_t tl = len - 15 < sizeof tmp - 1 ? len - 15 : sizeof tmp - 1;
    memcpy(tmp, p + 15, tl);
    tmp[tl] = '\0';
    long long v;
    if (sscanf(tmp, " %lld", &v) == 1 && v >= 0)
      r->content_length = v;
  } else if (len > 5 && !strncasecmp(p, "ETag:", 5)) {
    const char *v = p + 5;
    size_t vl = len - 5;
    while (vl && (*v == ' ' || *v == '\t'))
      v++, vl--;
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
      vl--;
    if (vl < sizeof r->etag) {
      memcpy(r->etag, v, vl);
      r->etag[vl] = '\0';
    }
  } else if (len > 14 && !strncasecmp(p, "Content-Range:", 14)) {
    char tmp[128];
    size_t tl = len - 14 < sizeof tmp - 1 ? len - 14 : sizeof tmp - 1;
    memcpy(tmp, p + 14, tl);
    tmp[tl] = '\0';
    long long from, total;
    if (sscanf(tmp, " bytes %lld-", &from) == 1)
      r->content_range_from = from;
    const char *slash = strchr(tmp, '/');
    if (slash && sscanf(slash + 1, "%lld", &total) == 1)
      r->content_range_total = total;
  }
  return len;
}

static bool write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    p += w;
    n -= (size_t)w;
  }
  return true;
}

static size_t on_body(char *p, size_t size, size_t n, void *user) {
  s3_req *r = user;
  size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  if (r->out_fd >= 0 && status >= 200 && status < 300) {
    if (!r->out_started) {
      r->out_started = true;
      /* a plain 200 to a Range request: the whole object */
      r->out_skip = status == 200 ? r->range_from : 0;
    }
    size_t skip = (int64_t)len < r->out_skip ? len : (size_t)r->out_skip;
    r->out_skip -= (int64_t)skip;
    size_t n = len - skip;
    if (r->out_max >= 0 && (int64_t)n > r->out_max - r->out_done)
      n = (size_t)(r->out_max - r->out_done);
    if (r->out_hash && !store_sha256_update(r->out_hash, p + skip, n)) {
      r->out_errno = ENOMEM;
      return 0;
    }
    if (!write_all(r->out_fd, p + skip, n)) {
      r->out_errno = errno ? errno : EIO;
      return 0;
    }
    r->out_done += (int64_t)n;
    return len;
  }
  size_t limit = r->out_fd >= 0 ? S3_ERRBODY_MAX : S3_XML_MAX;
  if (r->resp.len + len > limit) {
    if (r->out_fd >= 0) /* an error answer: its head is enough */
      return len;
    r->resp_too_big = true;
    return 0;
  }
  if (!buf_add(&r->resp, p, len)) {
    r->out_errno = ENOMEM;
    return 0;
  }
  return len;
}

/* Send the request and read its answer, any HTTP status. Returns
 * DECOMP_OK when an answer came (r->status), else the transport's failure
 * with its detail in r->err; records no message (see req_fail). */
static int req_run(s3_bucket *b, s3_req *r) {
  s3_buf url = {0};
  struct curl_slist *hdrs = NULL;
  int rc = DECOMP_ERR_NOMEM;
  char line[128];
  r->easy = pool_get(b);
  if (!r->easy)
    goto done;
  bool ok = buf_str(&url, b->endpoint) && buf_str(&url, "/") &&
            buf_uri(&url, b->bucket, false);
  if (ok && r->key)
    ok = buf_str(&url, "/") && buf_uri(&url, r->key, true);
  if (ok && r->query)
    ok = buf_str(&url, "?") && buf_str(&url, r->query);
  if (!ok)
    goto done;

  snprintf(line, sizeof line, "x-amz-content-sha256: %s",
           r->payload_hash ? r->payload_hash : S3_EMPTY_SHA256);
  struct curl_slist *h = curl_slist_append(hdrs, line);
  if (!h)
    goto done;
  hdrs = h;
  if (r->range) {
    snprintf(line, sizeof line, "Range: %s", r->range);
    if (!(h = curl_slist_append(hdrs, line)))
      goto done;
    hdrs = h;
  }
  if (r->body) {
    if (!(h = curl_slist_append(hdrs, "Content-Type: application/xml")))
      goto done;
    hdrs = h;
  }

  CURL *c = r->easy;
  curl_easy_setopt(c, CURLOPT_URL, url.p);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_SHARE, b->share);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->err);
  curl_easy_setopt(c, CURLOPT_AWS_SIGV4, b->sigv4);
  curl_easy_setopt(c, CURLOPT_USERNAME, b->access);
  curl_easy_setopt(c, CURLOPT_PASSWORD, b->secret);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 15L);
  /* a stalled service: under 1 byte/s for a minute */
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
  if (!strcmp(r->method, "HEAD"))
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  else if (!strcmp(r->method, "PUT")) {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->in_len);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c, CURLOPT_READDATA, r);
    curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(c, CURLOPT_SEEKDATA, r);
  } else if (!strcmp(r->method, "POST")) {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body ? r->body : "");
  } else if (strcmp(r->method, "GET"))
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, r->method);

  CURLcode cc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
  if (cc == CURLE_OK)
    rc = DECOMP_OK;
  else {
    if (!r->err[0])
      snprintf(r->err, sizeof r->err, "%s", curl_easy_strerror(cc));
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
      rc = DECOMP_ERR_CONNECT;
      break;
    case CURLE_OPERATION_TIMEDOUT:
      rc = DECOMP_ERR_TIMEOUT;
      break;
    case CURLE_WRITE_ERROR:
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_READ_ERROR:
      rc = r->out_errno == ENOMEM || r->in_errno == ENOMEM ? DECOMP_ERR_NOMEM
           : r->resp_too_big                               ? DECOMP_ERR_STORE
                                                           : DECOMP_ERR_IO;
      break;
    case CURLE_OUT_OF_MEMORY:
      rc = DECOMP_ERR_NOMEM;
      break;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_FAIL_REWIND:
      rc = DECOMP_ERR_TRANSFER;
      break;
    default:
      rc = DECOMP_ERR_STORE;
    }
  }
done:
  if (r->easy) {
    /* the handle goes back to the pool without our list, URL or buffers */
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, NULL);
    pool_put(b, r->easy);
    r->easy = NULL;
  }
  curl_slist_free_all(hdrs);
  buf_free(&url);
  return rc;
}

/* Copy printable ASCII of `s` into `out` (control characters and the
 * rest of a long text dropped), for a service's text inside a message. */
static void clean(const char *s, char *out, size_t outlen) {
  size_t j = 0;
  for (; s && *s && j + 1 < outlen; s++)
    if ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f)
      out[j++] = *s;
  out[j] = '\0';
}

/* The S3 error Code of an answer's XML body (into `code`, "" when none). */
static void resp_code(const s3_req *r, char *code, size_t len) {
  code[0] = '\0';
  if (!r->resp.p)
    return;
  char *c = s3_xml_text(r->resp.p, r->resp.p + r->resp.len, "Code");
  clean(c, code, len);
  free(c);
}

/* Record why `r` (about `what`: "PUT key 'a/b'") failed and return the
 * code: the transport's failure `rc`, or else an HTTP answer the caller
 * did not expect, with S3's Code and Message from its body. */
static int req_fail(s3_bucket *b, const s3_req *r, int rc, const char *what) {
  if (rc != DECOMP_OK) {
    const char *io = "";
    char detail[256];
    clean(r->err, detail, sizeof detail);
    if (rc == DECOMP_ERR_IO && r->in_errno == -1)
      return store_fail(DECOMP_ERR_IO,
                        "s3 %s: %s: the file descriptor ended after %" PRId64
                        " of %" PRId64 " bytes",
                        b->where, what, r->in_done, r->in_len);
    if (rc == DECOMP_ERR_IO && r->in_errno > 0)
      return store_fail(DECOMP_ERR_IO,
                        "s3 %s: %s: reading the file descriptor: %s", b->where,
                        what, strerror(r->in_errno));
    if (rc == DECOMP_ERR_IO && r->out_errno > 0)
      return store_fail(DECOMP_ERR_IO,
                        "s3 %s: %s: writing the file descriptor: %s", b->where,
                        what, strerror(r->out_errno));
    if (r->resp_too_big)
      io = " (answer over 16 MiB)";
    if (rc == DECOMP_ERR_CONNECT)
      return store_fail(rc, "s3 %s: %s: could not connect: %s", b->where, what,
                        detail);
    return store_fail(rc, "s3 %s: %s: %s%s", b->where, what, detail, io);
  }
  char code[64], msg[256] = "";
  resp_code(r, code, sizeof code);
  if (r->resp.p) {
    char *m = s3_xml_text(r->resp.p, r->resp.p + r->resp.len, "Message");
    clean(m, msg, sizeof msg);
    free(m);
  }
  int err = DECOMP_ERR_STORE;
  const char *hint = "";
  if (r->status == 404 && strcmp(code, "NoSuchBucket") != 0 &&
      strcmp(code, "NoSuchUpload") != 0)
    err = DECOMP_ERR_NOT_FOUND;
  else if (r->status == 416)
    err = DECOMP_ERR_RANGE_NOT_SATISFIABLE;
  if (r->status == 403 || r->status == 401)
    hint = b->cred_from;
  if (!code[0] && !strcmp(r->method, "HEAD"))
    snprintf(code, sizeof code, "(HEAD answers carry no error code)");
  return store_fail(err, "s3 %s: %s: HTTP %ld %s%s%s%s%s%s", b->where, what,
                    r->status, code, msg[0] ? ": " : "", msg,
                    hint[0] ? " (credentials from " : "", hint,
                    hint[0] ? ")" : "");
}

/* ---- keys ---------------------------------------------------------------- */

/* The full key of `key` (prefix joined) into `out`, or
 * DECOMP_ERR_INVALID_ARGUMENT for a key that the contract above refuses:
 * such names would not survive URL normalisation or an XML listing. */
static int full_key(s3_bucket *b, const char *key, s3_buf *out) {
  if (!key || !*key || strlen(key) > S3_KEY_MAX || key[0] == '/')
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: key '%.64s': empty, too long or starting "
                      "with '/'",
                      b->where, key ? key : "");
  for (const char *p = key; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                        "s3 %s: a key holds a control character", b->where);
  for (const char *seg = key; seg;) {
    const char *slash = strchr(seg, '/');
    size_t n = slash ? (size_t)(slash - seg) : strlen(seg);
    if (n == 0 || (n == 1 && seg[0] == '.') ||
        (n == 2 && seg[0] == '.' && seg[1] == '.'))
      return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                        "s3 %s: key '%s': empty, '.' or '..' segment", b->where,
                        key);
    seg = slash ? slash + 1 : NULL;
  }
  bool ok = true;
  if (b->prefix[0])
    ok = buf_str(out, b->prefix) && buf_str(out, "/");
  if (!ok || !buf_str(out, key)) {
    buf_free(out);
    return store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
  }
  if (out->len > S3_KEY_MAX) { /* S3's limit is on the whole key */
    buf_free(out);
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: key '%.64s...': over %d bytes with the prefix",
                      b->where, key, S3_KEY_MAX);
  }
  return DECOMP_OK;
}

static bool hex64(const char *s) {
  if (!s || strlen(s) != 64)
    return false;
  for (; *s; s++)
    if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
      return false;
  return true;
}

/* ---- open and close ------------------------------------------------------ */

static char *dup_trim(const char *s, bool slashes) {
  if (!s)
    s = "";
  while (slashes && *s == '/')
    s++;
  size_t n = strlen(s);
  while (n && s[n - 1] == '/')
    n--;
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

void s3_close(s3_bucket *b) {
  if (!b)
    return;
  for (int i = 0; i < b->npool; i++)
    curl_easy_cleanup(b->pool[i]);
  if (b->share)
    curl_share_cleanup(b->share);
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
    pthread_mutex_destroy(&b->share_lock[i]);
  pthread_mutex_destroy(&b->pool_lock);
  if (b->secret) /* not left behind in freed memory */
    memset(b->secret, 0, strlen(b->secret));
  free(b->endpoint);
  free(b->bucket);
  free(b->prefix);
  free(b->access);
  free(b->secret);
  free(b->sigv4);
  free(b->where);
  free(b);
}

int s3_open(const s3_config *cfg, s3_bucket **out) {
  *out = NULL;
  pthread_once(&global_once, global_init);
  if (global_rc != CURLE_OK)
    return store_fail(DECOMP_ERR_INTERNAL, "s3: curl_global_init: %s",
                      curl_easy_strerror(global_rc));
  if (!cfg || !cfg->endpoint ||
      (strncmp(cfg->endpoint, "http://", 7) &&
       strncmp(cfg->endpoint, "https://", 8)))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3: the endpoint must be an http:// or https:// URL");
  const char *auth = strstr(cfg->endpoint, "://") + 3;
  size_t auth_len = strcspn(auth, "/?#");
  if (memchr(auth, '@', auth_len) || strpbrk(cfg->endpoint, "?#"))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3: the endpoint must be scheme://host[:port][/path], "
                      "with credentials in the access and secret keys");
  const char *bucket = cfg->bucket ? cfg->bucket : "";
  size_t bl = strlen(bucket);
  bool bucket_ok = bl >= 1 && bl <= 255;
  for (const char *p = bucket; bucket_ok && *p; p++)
    bucket_ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_';
  if (!bucket_ok)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: bucket '%.64s': not a bucket name (letters, "
                      "digits, '.', '-', '_')",
                      cfg->endpoint, bucket);

  const char *cred_from = "the configuration";
  const char *ak = cfg->access_key, *sk = cfg->secret_key;
  if (!ak || !*ak || !sk || !*sk) {
    ak = getenv("AWS_ACCESS_KEY_ID");
    sk = getenv("AWS_SECRET_ACCESS_KEY");
    cred_from = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";
  }
  if (!ak || !*ak || !sk || !*sk)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s bucket %s: no credentials: neither the "
                      "configuration nor AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY give both keys",
                      cfg->endpoint, bucket);
  int64_t part = cfg->part_size ? cfg->part_size : S3_PART_DEFAULT;
  if (part < S3_PART_MIN || part > ((int64_t)5 << 30))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s bucket %s: part size %" PRId64
                      " outside S3's 5 MiB to 5 GiB",
                      cfg->endpoint, bucket, part);

  s3_bucket *b = calloc(1, sizeof *b);
  if (!b)
    return store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
  for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
    pthread_mutex_init(&b->share_lock[i], NULL);
  pthread_mutex_init(&b->pool_lock, NULL);
  const char *region = cfg->region && *cfg->region ? cfg->region : "us-east-1";
  b->endpoint = dup_trim(cfg->endpoint, false);
  b->bucket = strdup(bucket);
  b->prefix = dup_trim(cfg->prefix, true);
  b->access = strdup(ak);
  b->secret = strdup(sk);
  b->cred_from = cred_from;
  b->part_size = part;
  b->list_page =
      cfg->list_page > 0 && cfg->list_page <= 1000 ? cfg->list_page : 1000;
  s3_buf s = {0}, w = {0};
  if (buf_printf(&s, "aws:amz:%s:s3", region))
    b->sigv4 = s.p;
  if (b->endpoint && buf_str(&w, b->endpoint) && buf_str(&w, " bucket ") &&
      buf_str(&w, bucket))
    b->where = w.p;
  else
    buf_free(&w);
  b->share = curl_share_init();
  if (!b->endpoint || !b->bucket || !b->prefix || !b->access || !b->secret ||
      !b->sigv4 || !b->where || !b->share) {
    s3_close(b);
    return store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
  }
  curl_share_setopt(b->share, CURLSHOPT_LOCKFUNC, share_lock);
  curl_share_setopt(b->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
  curl_share_setopt(b->share, CURLSHOPT_USERDATA, b);
  curl_share_setopt(b->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  curl_share_setopt(b->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);

  /* the bucket answers, to these credentials */
  s3_req r = req_new("GET", NULL, "list-type=2&max-keys=1");
  int rc = req_run(b, &r);
  if (rc == DECOMP_OK && r.status != 200)
    rc = req_fail(b, &r, DECOMP_OK, "checking the bucket");
  else if (rc != DECOMP_OK)
    rc = req_fail(b, &r, rc, "checking the bucket");
  buf_free(&r.resp);
  if (rc != DECOMP_OK) {
    s3_close(b);
    return rc;
  }
  *out = b;
  return DECOMP_OK;
}

/* ---- objects ------------------------------------------------------------- */

int s3_head(s3_bucket *b, const char *key, bool *exists, int64_t *size) {
  if (exists)
    *exists = false;
  if (size)
    *size = -1;
  s3_buf k = {0};
  int rc = full_key(b, key, &k);
  if (rc != DECOMP_OK)
    return rc;
  char what[S3_KEY_MAX + 32];
  snprintf(what, sizeof what, "HEAD key '%s'", key);
  s3_req r = req_new("HEAD", k.p, NULL);
  rc = req_run(b, &r);
  if (rc != DECOMP_OK)
    rc = req_fail(b, &r, rc, what);
  else if (r.status == 200) {
    if (exists)
      *exists = true;
    if (size)
      *size = r.content_length;
  } else if (r.status != 404)
    rc = req_fail(b, &r, DECOMP_OK, what);
  buf_free(&k);
  buf_free(&r.resp);
  return rc;
}

/* DELETE the full key `k`; 404 counts as done. */
static int delete_full(s3_bucket *b, const char *k, const char *key) {
  char what[S3_KEY_MAX + 32];
  snprintf(what, sizeof what, "DELETE key '%s'", key);
  s3_req r = req_new("DELETE", k, NULL);
  int rc = req_run(b, &r);
  if (rc != DECOMP_OK)
    rc = req_fail(b, &r, rc, what);
  else if (r.status != 200 && r.status != 204 && r.status != 404)
    rc = req_fail(b, &r, DECOMP_OK, what);
  buf_free(&r.resp);
  return rc;
}

int s3_delete(s3_bucket *b, const char *key) {
  s3_buf k = {0};
  int rc = full_key(b, key, &k);
  if (rc == DECOMP_OK)
    rc = delete_full(b, k.p, key);
  buf_free(&k);
  return rc;
}

/* ---- put ----------------------------------------------------------------- */

/* The bytes sent (`got`) are not the ones expected: say so, after the
 * caller made sure no object stays. */
static int put_mismatch(s3_bucket *b, const char *key, const char *got,
                        const char *expect, const char *fate) {
  return store_fail(DECOMP_ERR_UPLOAD_DIGEST,
                    "s3 %s: PUT key '%s': the bytes sent have sha256 %s, not "
                    "the expected %s; %s",
                    b->where, key, got, expect, fate);
}

static int put_single(s3_bucket *b, const char *k, const char *key, int fd,
                      int64_t size, const char *expect, store_sha256 *h,
                      char hex[65]) {
  char what[S3_KEY_MAX + 32];
  snprintf(what, sizeof what, "PUT key '%s'", key);
  s3_req r = req_new("PUT", k, NULL);
  r.in_fd = fd;
  r.in_len = size;
  r.in_hash = h;
  /* the expected digest as the signed payload hash: a service that checks
   * it (AWS, MinIO, Ceph) refuses other bytes before storing them */
  r.payload_hash = expect ? expect : S3_UNSIGNED;
  int rc = req_run(b, &r);
  char digest[STORE_DIGEST_LEN];
  if (rc != DECOMP_OK)
    rc = req_fail(b, &r, rc, what);
  else if (r.status != 200) {
    char code[64];
    resp_code(&r, code, sizeof code);
    bool refused = !strcmp(code, "XAmzContentSHA256Mismatch") ||
                   !strcmp(code, "BadDigest");
    if (refused && expect && r.in_done == size &&
        store_sha256_final(h, digest)) {
      memcpy(hex, digest + 7, 65);
      rc = put_mismatch(b, key, hex, expect, "the service refused them");
    } else
      rc = req_fail(b, &r, DECOMP_OK, what);
  } else if (!store_sha256_final(h, digest))
    rc = store_fail(DECOMP_ERR_NOMEM, "s3: hashing failed");
  else {
    memcpy(hex, digest + 7, 65);
    if (expect && strcmp(hex, expect)) {
      /* a service that did not check the payload hash stored them */
      int drc = delete_full(b, k, key);
      rc = put_mismatch(b, key, hex, expect,
                        drc == DECOMP_OK ? "the object was deleted"
                                         : "deleting the object failed too");
    }
  }
  buf_free(&r.resp);
  return rc;
}

/* AbortMultipartUpload, best effort: the failure being reported matters
 * more, and the service's lifecycle rules collect what an abort missed. */
static void multipart_abort(s3_bucket *b, const char *k, const char *upid) {
  s3_buf q = {0};
  if (buf_str(&q, "uploadId=") && buf_uri(&q, upid, false)) {
    s3_req r = req_new("DELETE", k, q.p);
    (void)req_run(b, &r);
    buf_free(&r.resp);
  }
  buf_free(&q);
}

static int put_multipart(s3_bucket *b, const char *k, const char *key, int fd,
                         int64_t size, const char *expect, store_sha256 *h,
                         char hex[65]) {
  char what[S3_KEY_MAX + 64];
  int64_t part = b->part_size;
  if ((size + part - 1) / part > S3_PARTS_MAX)
    part = (size + S3_PARTS_MAX - 1) / S3_PARTS_MAX;
  int nparts = (int)((size + part - 1) / part);
  char **etags = calloc((size_t)nparts, sizeof *etags);
  char *upid = NULL;
  s3_buf q = {0}, body = {0};
  int rc = DECOMP_OK;
  if (!etags)
    return store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");

  snprintf(what, sizeof what, "starting a multipart upload of key '%s'", key);
  s3_req r = req_new("POST", k, "uploads=");
  rc = req_run(b, &r);
  if (rc != DECOMP_OK)
    rc = req_fail(b, &r, rc, what);
  else if (r.status != 200)
    rc = req_fail(b, &r, DECOMP_OK, what);
  else if (!r.resp.p ||
           !(upid = s3_xml_text(r.resp.p, r.resp.p + r.resp.len, "UploadId")) ||
           !*upid)
    rc = store_fail(DECOMP_ERR_STORE, "s3 %s: %s: no UploadId in the answer",
                    b->where, what);
  buf_free(&r.resp);
  if (rc != DECOMP_OK)
    goto fail;

  for (int i = 0; i < nparts; i++) {
    int64_t len = i + 1 < nparts ? part : size - part * i;
    q.len = 0;
    if (!buf_printf(&q, "partNumber=%d&uploadId=", i + 1) ||
        !buf_uri(&q, upid, false)) {
      rc = store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
      goto fail;
    }
    snprintf(what, sizeof what, "PUT key '%s' part %d of %d", key, i + 1,
             nparts);
    r = req_new("PUT", k, q.p);
    r.in_fd = fd;
    r.in_len = len;
    r.in_hash = h;
    r.payload_hash = S3_UNSIGNED; /* the part's own hash is not known */
    rc = req_run(b, &r);
    if (rc != DECOMP_OK)
      rc = req_fail(b, &r, rc, what);
    else if (r.status != 200)
      rc = req_fail(b, &r, DECOMP_OK, what);
    else if (!r.etag[0])
      rc = store_fail(DECOMP_ERR_STORE, "s3 %s: %s: no ETag in the answer",
                      b->where, what);
    else if (!(etags[i] = strdup(r.etag)))
      rc = store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
    buf_free(&r.resp);
    if (rc != DECOMP_OK)
      goto fail;
  }

  char digest[STORE_DIGEST_LEN];
  if (!store_sha256_final(h, digest)) {
    rc = store_fail(DECOMP_ERR_NOMEM, "s3: hashing failed");
    goto fail;
  }
  memcpy(hex, digest + 7, 65);
  if (expect && strcmp(hex, expect)) {
    multipart_abort(b, k, upid);
    rc = put_mismatch(b, key, hex, expect,
                      "the multipart upload was aborted, not completed");
    goto done;
  }

  bool ok = buf_str(&body, "<CompleteMultipartUpload>");
  for (int i = 0; ok && i < nparts; i++) {
    char *etag = s3_xml_escape(etags[i]);
    ok = etag &&
         buf_printf(&body, "<Part><PartNumber>%d</PartNumber><ETag>", i + 1) &&
         buf_str(&body, etag) && buf_str(&body, "</ETag></Part>");
    free(etag);
  }

  ok = ok && buf_str(&body, "</CompleteMultipartUpload>");
  char body_hash[65];
  q.len = 0;
  if (!ok || !store_sha256_hex(body.p, body.len, body_hash) ||
      !buf_str(&q, "uploadId=") || !buf_uri(&q, upid, false)) {
    rc = store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
    goto fail;
  }
  snprintf(what, sizeof what, "completing the multipart upload of key '%s'",
           key);
  r = req_new("POST", k, q.p);
  r.body = body.p;
  r.body_len = body.len;
  r.payload_hash = body_hash;
  rc = req_run(b, &r);
  if (rc != DECOMP_OK)
    rc = req_fail(b, &r, rc, what);
  else if (r.status != 200 ||
           (r.resp.p && strstr(r.resp.p, "<Error>"))) /* S3 may answer 200
                                                         and fail after */
    rc = req_fail(b, &r, DECOMP_OK, what);
  buf_free(&r.resp);
  if (rc != DECOMP_OK)
    goto fail;
  goto done;

fail:
  if (upid)
    multipart_abort(b, k, upid);
done:
  for (int i = 0; i < nparts; i++)
    free(etags[i]);
  free(etags);
  free(upid);
  buf_free(&q);
  buf_free(&body);
  return rc;
}

int s3_put_fd(s3_bucket *b, const char *key, int fd, int64_t size,
              const char *expect_sha256_hex, char *out_sha256_hex) {
  if (out_sha256_hex)
    out_sha256_hex[0] = '\0';
  if (fd < 0 || size < 0)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: PUT: a negative fd or size", b->where);
  if (expect_sha256_hex && !hex64(expect_sha256_hex))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: PUT: the expected digest is not 64 lowercase "
                      "hex digits",
                      b->where);
  s3_buf k = {0};
  int rc = full_key(b, key, &k);
  if (rc != DECOMP_OK)
    return rc;
  store_sha256 *h = store_sha256_new();
  char hex[65] = "";
  if (!h)
    rc = store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
  else if (size <= b->part_size)
    rc = put_single(b, k.p, key, fd, size, expect_sha256_hex, h, hex);
  else
    rc = put_multipart(b, k.p, key, fd, size, expect_sha256_hex, h, hex);
  if (out_sha256_hex && hex[0])
    memcpy(out_sha256_hex, hex, 65);
  store_sha256_free(h);
  buf_free(&k);
  return rc;
}

/* ---- get ----------------------------------------------------------------- */

/* Hash the first `n` bytes of `fd` (pread from 0) into `h`. */
static int hash_head(s3_bucket *b, const char *key, int fd, int64_t n,
                     store_sha256 *h) {
  char *buf = malloc(1 << 20);
  if (!buf)
    return store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
  int rc = DECOMP_OK;
  for (int64_t at = 0; at < n;) {
    size_t want = n - at < (1 << 20) ? (size_t)(n - at) : (1 << 20);
    ssize_t got = pread(fd, buf, want, (off_t)at);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0) {
      rc = store_fail(DECOMP_ERR_IO,
                      "s3 %s: GET key '%s': reading back the %" PRId64
                      " bytes to resume after: %s",
                      b->where, key, n,
                      got < 0 ? strerror(errno) : "the file is shorter");
      break;
    }
    if (!store_sha256_update(h, buf, (size_t)got)) {
      rc = store_fail(DECOMP_ERR_NOMEM, "s3: hashing failed");
      break;
    }
    at += got;
  }
  free(buf);
  return rc;
}

int s3_get_fd(s3_bucket *b, const char *key, int64_t offset, int64_t len,
              int fd, const char *expect_sha256_hex, int64_t *out_written) {
  if (out_written)
    *out_written = 0;
  if (fd < 0 || offset < 0 || (expect_sha256_hex && len >= 0))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: GET: a negative fd or offset, or a digest to "
                      "check on a part of an object",
                      b->where);
  if (expect_sha256_hex && !hex64(expect_sha256_hex))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "s3 %s: GET: the expected digest is not 64 lowercase "
                      "hex digits",
                      b->where);
  if (len == 0)
    return DECOMP_OK;
  s3_buf k = {0};
  int rc = full_key(b, key, &k);
  if (rc != DECOMP_OK)
    return rc;
  char what[S3_KEY_MAX + 64], range[64] = "";
  snprintf(what, sizeof what, "GET key '%s'", key);
  if (len > 0)
    snprintf(range, sizeof range, "bytes=%" PRId64 "-%" PRId64, offset,
             offset + len - 1);
  else if (offset > 0)
    snprintf(range, sizeof range, "bytes=%" PRId64 "-", offset);
  store_sha256 *h = NULL;
  if (expect_sha256_hex) {
    if (!(h = store_sha256_new()))
      rc = store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
    else if (offset > 0)
      rc = hash_head(b, key, fd, offset, h);
  }
  s3_req r = req_new("GET", k.p, NULL);
  if (rc != DECOMP_OK)
    goto done;
  r.range = range[0] ? range : NULL;
  r.range_from = offset;
  r.out_max = len;
  r.out_fd = fd;
  r.out_hash = h;
  rc = req_run(b, &r);
  if (out_written)
    *out_written = r.out_done;
  if (rc != DECOMP_OK) {
    rc = req_fail(b, &r, rc, what);
    goto done;
  }
  if (r.status == 404) {
    char code[64];
    resp_code(&r, code, sizeof code);
    rc = !strcmp(code, "NoSuchBucket")
             ? req_fail(b, &r, DECOMP_OK, what)
             : store_fail(DECOMP_ERR_NOT_FOUND, "s3 %s: %s: no such key",
                          b->where, what);
    goto done;
  }
  char digest[STORE_DIGEST_LEN];
  bool whole = false;
  int64_t size = -1;
  if (r.status == 416 && h && offset > 0)
    /* a resume of a file that may be complete: the total size in the
     * answer's Content-Range or, when it has none (s3rver), a HEAD says */
    whole = r.content_range_total == offset ||
            (r.content_range_total < 0 &&
             s3_head(b, key, NULL, &size) == DECOMP_OK && size == offset);
  if (whole) {
    /* no byte to fetch: the file's own bytes are the whole object */
    if (!store_sha256_final(h, digest))
      rc = store_fail(DECOMP_ERR_NOMEM, "s3: hashing failed");
    else if (strcmp(digest + 7, expect_sha256_hex))
      rc = store_fail(DECOMP_ERR_DIGEST_MISMATCH,
                      "s3 %s: %s: the object's bytes have sha256 %s, not "
                      "the expected %s",
                      b->where, what, digest + 7, expect_sha256_hex);
    goto done;
  }
  if (r.status == 416 || (r.status == 200 && r.out_skip > 0)) {
    rc = store_fail(DECOMP_ERR_RANGE_NOT_SATISFIABLE,
                    "s3 %s: %s: offset %" PRId64 " is past the object's end",
                    b->where, what, offset);
    goto done;
  }
  if (r.status != 200 && r.status != 206) {
    rc = req_fail(b, &r, DECOMP_OK, what);
    goto done;
  }
  if (r.status == 206 && r.content_range_from != offset) {
    rc = store_fail(DECOMP_ERR_STORE,
                    "s3 %s: %s: asked for bytes from %" PRId64
                    ", the answer starts at %" PRId64,
                    b->where, what, offset, r.content_range_from);
    goto done;
  }
  if (h && !store_sha256_final(h, digest))
    rc = store_fail(DECOMP_ERR_NOMEM, "s3: hashing failed");
  else if (h && strcmp(digest + 7, expect_sha256_hex))
    rc = store_fail(DECOMP_ERR_DIGEST_MISMATCH,
                    "s3 %s: %s: the object's bytes have sha256 %s, not the "
                    "expected %s",
                    b->where, what, digest + 7, expect_sha256_hex);
done:
  store_sha256_free(h);
  buf_free(&r.resp);
  buf_free(&k);
  return rc;
}

/* ---- list ---------------------------------------------------------------- */

int s3_list(s3_bucket *b, const char *prefix, s3_list_fn fn, void *user) {
  s3_buf full = {0}, q = {0};
  char *token = NULL;
  int rc = DECOMP_OK;
  if (!prefix)
    prefix = "";
  for (const char *p = prefix; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f)
      return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                        "s3 %s: a list prefix holds a control character",
                        b->where);
  size_t strip = b->prefix[0] ? strlen(b->prefix) + 1 : 0;
  if (!buf_add(&full, "", 0) ||
      (b->prefix[0] && !(buf_str(&full, b->prefix) && buf_str(&full, "/"))) ||
      !buf_str(&full, prefix))
    return store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
  char what[S3_KEY_MAX + 64];
  snprintf(what, sizeof what, "listing keys under '%s'", prefix);
  for (;;) {
    /* parameters in canonical order: continuation-token, list-type,
     * max-keys, prefix */
    q.len = 0;
    bool ok = buf_add(&q, "", 0);
    if (token)
      ok = ok && buf_str(&q, "continuation-token=") &&
           buf_uri(&q, token, false) && buf_str(&q, "&");
    ok = ok && buf_printf(&q, "list-type=2&max-keys=%d", b->list_page);
    if (full.len)
      ok = ok && buf_str(&q, "&prefix=") && buf_uri(&q, full.p, false);
    if (!ok) {
      rc = store_fail(DECOMP_ERR_NOMEM, "s3: out of memory");
      break;
    }
    s3_req r = req_new("GET", NULL, q.p);
    rc = req_run(b, &r);
    if (rc != DECOMP_OK || r.status != 200) {
      rc = req_fail(b, &r, rc, what);
      buf_free(&r.resp);
      break;
    }
    const char *p = r.resp.p ? r.resp.p : "", *end = p + r.resp.len;
    const char *a, *z;
    while (rc == DECOMP_OK && s3_xml_span(p, end, "Contents", &a, &z)) {
      char *key = s3_xml_text(a, z, "Key");
      char *sz = s3_xml_text(a, z, "Size");
      if (!key || !sz)
        rc = store_fail(DECOMP_ERR_STORE,
                        "s3 %s: %s: a listed object without Key or Size",
                        b->where, what);
      else if (strlen(key) >= strip && !strncmp(key, full.p, strip))
        rc = fn(key + strip, strtoll(sz, NULL, 10), user);
      free(key);
      free(sz);
      p = z + strlen("</Contents>");
    }
    char *trunc = s3_xml_text(r.resp.p, end, "IsTruncated");
    bool more = trunc && !strcmp(trunc, "true");
    free(trunc);
    free(token);
    token = NULL;
    if (rc == DECOMP_OK && more) {
      token = s3_xml_text(r.resp.p, end, "NextContinuationToken");
      if (!token || !*token)
        rc = store_fail(DECOMP_ERR_STORE,
                        "s3 %s: %s: a truncated page without a "
                        "NextContinuationToken",
                        b->where, what);
    }
    buf_free(&r.resp);
    if (rc != DECOMP_OK || !more)
      break;
  }
  free(token);
  buf_free(&q);
  buf_free(&full);
  return rc;
}
