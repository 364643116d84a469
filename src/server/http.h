/* http.h — the HTTP layer as the route handlers see it: a request (method,
 * path parameters, query, headers, its body either buffered (JSON) or
 * already streamed into a store upload) and one reply (a buffer, a file
 * range sent zero-copy, or a stream produced as it goes). The library
 * behind it lives in http.c only.
 *
 * Handlers run on the HTTP thread pool once the whole request is in; they
 * answer from the store and queue and never do decomposition work. */
#ifndef DECOMPD_SERVER_HTTP_H
#define DECOMPD_SERVER_HTTP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "store.h"

typedef struct http_req http_req;
typedef struct http_server http_server;
typedef struct service service; /* service.h */

/* Every body has a limit: a declared Content-Length over it is answered
 * 413 before the body is read; a chunked body gets the 413 as soon as it
 * passes it, and the connection is closed. */
typedef enum http_body {
  HTTP_BODY_NONE = 0,   /* a body is read and dropped, up to max_json_bytes */
  HTTP_BODY_JSON = 1,   /* buffered, up to max_json_bytes */
  HTTP_BODY_STREAM = 2, /* streamed into a store upload, up to
                           max_upload_bytes */
  HTTP_BODY_PARTIAL = 3, /* appended to the resumable upload of the blob
                            whose digest is the route's first {param}
                            ("sha256:<hex>" or the bare hex), from the
                            offset Content-Range ("bytes START-END/TOTAL",
                            TOTAL may be '*') or Upload-Offset gives (0
                            without them), the whole blob up to
                            max_upload_bytes; 409 with Upload-Offset when
                            the offset is not what the server holds. When
                            the blob exists already the body is read and
                            dropped. */
} http_body;

typedef struct http_route {
  const char *method;     /* "GET", "POST", "DELETE" (HEAD matches GET) */
  const char *pattern;    /* "/v1/jobs/{id}": {x} matches one segment */
  int role;               /* least STORE_ROLE_* needed (NONE: open) */
  http_body body;
  void (*handle)(http_req *r);
  const char *summary;    /* one line, for `decompd --routes` */
} http_route;

/* The route table (routes.c), ended by a NULL method. */
extern const http_route HTTP_ROUTES[];

/* Start serving on cfg->listen_host:listen_port with the route table, the
 * handlers calling `sv` (and its store); *port gets the bound port. */
int http_start(const config *cfg, service *sv, http_server **out, int *port);
/* Stop accepting, close connections, join the threads; NULL is fine. */
void http_stop(http_server *h);

/* ---- requests --------------------------------------------------------- */

store *http_req_store(const http_req *r);
service *http_req_service(const http_req *r);
const config *http_req_config(const http_req *r);
const char *http_req_id(const http_req *r);         /* request id */
const char *http_req_method(const http_req *r);
const char *http_req_path(const http_req *r);
/* The i-th {param} of the matched pattern (NULL past the last). */
const char *http_req_param(const http_req *r, int i);
/* A query argument or a header (case-insensitive), NULL when absent. */
const char *http_req_query(const http_req *r, const char *key);
const char *http_req_header(const http_req *r, const char *name);
/* A JSON route's body (NUL-terminated; "" when none). */
const char *http_req_body(const http_req *r, size_t *len);
/* A streaming route's upload; the handler takes ownership. */
store_upload *http_req_take_upload(http_req *r);
/* A partial-body route's upload (the handler takes ownership); NULL when
 * the blob was already stored (the body was dropped). */
store_partial *http_req_take_partial(http_req *r);
/* A partial-body route's blob digest ("sha256:<hex>", checked) and the
 * range the request gave: *start its offset, *end its last byte (-1 when
 * not given), *total the whole blob's size (-1 when not given or '*').
 * Returns whether a Content-Range was given. */
const char *http_req_blob_digest(const http_req *r);
bool http_req_upload_range(const http_req *r, int64_t *start, int64_t *end,
                           int64_t *total);
/* The caller's token name, "" when auth is off. */
const char *http_req_principal(const http_req *r);

/* ---- replies (one per request; the last call wins) --------------------- */

/* Takes ownership of `body` (malloc'd; may be NULL when len is 0). */
void http_reply(http_req *r, int status, const char *content_type, char *body,
                size_t len);
/* A copy of the NUL-terminated `text`. */
void http_reply_text(http_req *r, int status, const char *content_type,
                     const char *text);
/* application/problem+json for `err` (decomp_error), status from the
 * error list, `detail` formatted. */
void http_reply_problem(http_req *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* `len` bytes of `fd` from `offset`, sent with sendfile; takes ownership of
 * `fd` (closed after sending, or on failure). */
void http_reply_fd(http_req *r, int status, const char *content_type, int fd,
                   uint64_t offset, uint64_t len);
/* An extra response header (copied). */
void http_reply_header(http_req *r, const char *name, const char *value);

/* A reply streamed while it is produced (server-sent events): `next` is
 * called on an HTTP thread whenever the client can take more and returns
 * up to `max` bytes now, 0 when it has none yet (the connection is then
 * parked, and `next` asked again about every 250 ms), and sets *done when
 * nothing will follow. `free_cls` releases `cls` when the reply ends
 * (finished, client gone, or server stopping). */
typedef size_t (*http_stream_fn)(void *cls, char *buf, size_t max,
                                 bool *done);
void http_reply_stream(http_req *r, int status, const char *content_type,
                       http_stream_fn next, void *cls,
                       void (*free_cls)(void *cls));

#endif
