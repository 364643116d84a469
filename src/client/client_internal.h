/* client_internal.h — what libdecompclient's files share: the handle, the
 * transport interface (transport.c, the one file that includes curl.h), the
 * cache (cache.c) and the pure resume rules (resume.c). Not installed. */
#ifndef DECOMP_CLIENT_INTERNAL_H
#define DECOMP_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decomp/client.h"

struct ct_conn; /* transport state (a curl easy handle) */

struct decomp_client {
  char *url;   /* base, without a trailing '/' */
  char *token; /* NULL: no Authorization header */
  char *cache; /* cache folder */
  bool offline;
  decomp_client_progress_fn progress;
  void *progress_user;
  int http_status;
  char errmsg[1024];
  struct ct_conn *conn;
};

/* Record a failure's message on `c` and return `code`. */
int client_fail(decomp_client *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Put `prefix` before and `suffix` after the message on c (truncated to
 * fit). */
void client_errmsg_wrap(decomp_client *c, const char *prefix,
                        const char *suffix);

/* ---- transport (transport.c) --------------------------------------------- */

/* Where a 200/206 answer's body goes when the request has a sink. `begin`
 * is called once, before the first byte, with the status and the
 * Content-Range header ("" when absent); it returns DECOMP_OK to take the
 * body, or an error code to abort the transfer (returned by ct_perform).
 * `data` gets the body's bytes; an error code aborts likewise. */
typedef struct ct_sink {
  int (*begin)(void *user, long status, const char *content_range);
  int (*data)(void *user, const void *buf, size_t len);
  void *user;
} ct_sink;

typedef struct ct_request {
  const char *method; /* "GET", "POST", "PUT", "DELETE" */
  const char *path;   /* appended to the base URL ("/v1/jobs?limit=5") */
  const char *content_type;
  const char *body; /* in-memory body, body_len bytes */
  size_t body_len;
  int body_fd;         /* >= 0: stream the body from this fd instead */
  int64_t body_size;   /* its size */
  int64_t range_from;  /* > 0: send "Range: bytes=N-" */
  const char *if_range; /* with range_from: send If-Range */
  const ct_sink *sink; /* NULL: 2xx bodies are kept in the response */
  const char *progress_name; /* non-NULL: report progress under it */
  decomp_client_direction direction;
  int64_t progress_base;  /* added to the bytes reported (resumed bytes) */
  int64_t progress_total; /* -1: let the transport guess */
  /* A long-lived answer (an event stream): no stall limit, at most
   * timeout_ms in all (0: none), and `tick` asked about every second
   * whether to stop (non-zero: CANCELLED). */
  bool stream;
  long timeout_ms;
  int (*tick)(void *user);
  void *tick_user;
  /* One more request header line ("Content-Range: bytes 0-9/10"), or
   * NULL. A "HEAD" method asks for the headers alone. */
  const char *extra_header;
} ct_request;

typedef struct ct_response {
  long status;        /* 0: no answer */
  char *body;         /* the body when it was not sunk (NUL-terminated) */
  size_t body_len;
  char content_type[128];
  int64_t sunk;       /* bytes handed to the sink */
  int64_t upload_offset; /* the Upload-Offset header + 1 (0: absent) */
  int64_t content_length; /* the Content-Length header + 1 (0: absent) */
} ct_response;

/* Perform one request. DECOMP_OK when an answer came (whatever its status;
 * rs->status says which); CONNECT when no connection could be made,
 * TRANSFER when it broke mid-way, CANCELLED when the progress callback
 * said stop, a sink's code when the sink aborted, NOMEM. The message is on
 * `c`. Free rs with ct_response_clear. */
int ct_perform(decomp_client *c, const ct_request *rq, ct_response *rs);
void ct_response_clear(ct_response *rs);
void ct_conn_free(struct ct_conn *conn);

/* URL-encode `s` into a new string (NULL on NOMEM). */
char *ct_escape(decomp_client *c, const char *s);
/* "/v1/models", with "?name=NAME" (escaped) when `name` is set; malloc'd,
 * NULL (and the client's error set) when out of memory. */
char *client_models_path(decomp_client *c, const char *name);

/* ---- SHA-256 and the cache (cache.c) ------------------------------------- */

typedef struct client_sha client_sha;
client_sha *client_sha_new(void);
void client_sha_update(client_sha *h, const void *buf, size_t len);
/* Finish into 64 hex digits + NUL and reset for reuse. */
void client_sha_final(client_sha *h, char hex[65]);
void client_sha_reset(client_sha *h);
void client_sha_free(client_sha *h);

/* Hash the first `len` bytes of fd (from offset 0; len < 0: to the end)
 * into h. 0, or an errno. */
int client_sha_fd(client_sha *h, int fd, int64_t len);

/* The 64 hex digits of a digest ("sha256:<hex>" or "<hex>") into hex;
 * false when malformed. */
bool client_digest_hex(const char *digest, char hex[65]);

/* Whether `name` may be an artifact's name, i.e. a file name in DEST: not
 * empty, under `cap` bytes, no '/' or '\\', not starting with '.' (so not
 * "." or "..", nor one of our temporaries), no control character. *why
 * says what is wrong when it is not. Pure. */
bool client_artifact_name_ok(const char *name, size_t cap, const char **why);

/* mkdir -p. 0 or an errno. */
int client_mkdirs(const char *path, int mode);

/* Map an errno from writing to a decomp code (ENOSPC/EDQUOT: DISK_FULL). */
int client_errno_code(int err);

/* Claim a partial download of <hex> in tmp_dir: the largest
 * "<hex>.*.part" is renamed to a new unique name (written to path, len
 * bytes) and its size put in *have; when none exists (or every rename
 * lost a race) a new empty unique file is made and *have = 0. Other
 * partials of the same blob are left alone (another fetch may own them).
 * Returns an open O_RDWR fd, or -1 with errno. */
int client_partial_claim(const char *tmp_dir, const char *hex, char *path,
                         size_t len, int64_t *have);

/* Write `text` to `path` through a unique temporary file in its folder,
 * fsync, rename. DECOMP_OK, DISK_FULL or IO (message on c). */
int client_write_atomic(decomp_client *c, const char *path, const char *text,
                        size_t len);

/* Copy `src` to `dst` through a unique temporary file beside dst and a
 * rename. DECOMP_OK, DISK_FULL, IO. */
int client_copy_atomic(decomp_client *c, const char *src, const char *dst);

/* ---- resume rules (resume.c, pure) --------------------------------------- */

/* Parse "bytes A-B/TOTAL" (TOTAL may be "*": -1). false when malformed. */
bool client_parse_content_range(const char *h, int64_t *a, int64_t *b,
                                int64_t *total);

/* How much of a partial file of `have` bytes to keep for a blob of `size`
 * bytes: `have` when 0 < have < size, else 0 (nothing, or too much: start
 * over; a complete-looking file is hashed by the caller before this). */
int64_t client_resume_from(int64_t have, int64_t size);

typedef enum client_answer {
  CLIENT_ANSWER_APPEND,  /* 206 from where we asked: append */
  CLIENT_ANSWER_RESTART, /* 200: the whole file: truncate, write from 0 */
  CLIENT_ANSWER_BAD,     /* anything else: refuse this body */
} client_answer;

/* What to do with a 2xx answer to a GET that asked for bytes from `from`
 * (0: no Range sent) of a blob of `size` bytes. */
client_answer client_resume_answer(long status, const char *content_range,
                                   int64_t from, int64_t size);

#endif
