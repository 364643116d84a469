/* dashboard.c — serves the embedded dashboard files (see dashboard.h).
 *
 * Every reply carries the file's build-time ETag and `Cache-Control:
 * no-cache`, so a browser keeps its copy but revalidates it (a 304, no body)
 * and picks up a new daemon's files at once; URLs carry no version. The
 * Content-Security-Policy allows nothing but this origin: the page loads no
 * script, style, font or image from anywhere else, and none inline. */
#include <stdlib.h>
#include <string.h>

#include "decomp/decomp.h"
#include "dashboard.h"
#include "http.h"

#define CSP                                                                  \
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " \
  "connect-src 'self'; form-action 'none'; base-uri 'none'; "                \
  "frame-ancestors 'none'"

static const dashboard_asset *asset_find(const char *name) {
  for (const dashboard_asset *a = DASHBOARD_ASSETS; name && a->name; a++)
    if (strcmp(a->name, name) == 0)
      return a;
  return NULL;
}

/* Does the If-None-Match list name `etag` (or `*`)? */
static bool etag_matches(const char *list, const char *etag) {
  if (!list)
    return false;
  if (strstr(list, etag))
    return true;
  while (*list == ' ')
    list++;
  return strcmp(list, "*") == 0;
}

static void serve(http_req *r, const dashboard_asset *a) {
  http_reply_header(r, "ETag", a->etag);
  http_reply_header(r, "Cache-Control", "no-cache");
  http_reply_header(r, "X-Content-Type-Options", "nosniff");
  http_reply_header(r, "Referrer-Policy", "no-referrer");
  if (strncmp(a->content_type, "text/html", 9) == 0) {
    http_reply_header(r, "Content-Security-Policy", CSP);
    http_reply_header(r, "X-Frame-Options", "DENY");
  }
  if (etag_matches(http_req_header(r, "If-None-Match"), a->etag)) {
    http_reply(r, 304, NULL, NULL, 0);
    return;
  }
  char *body = malloc(a->len ? a->len : 1);
  if (!body) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    return;
  }
  memcpy(body, a->data, a->len);
  http_reply(r, 200, a->content_type, body, a->len);
}

void dashboard_index(http_req *r) {
  const dashboard_asset *a = asset_find("index.html");
  if (!a) {
    http_reply_problem(r, DECOMP_ERR_INTERNAL, "dashboard not built in");
    return;
  }
  serve(r, a);
}

void dashboard_file(http_req *r) {
  const char *path = http_req_path(r);
  const char *name = strncmp(path, "/ui/", 4) == 0 ? path + 4 : NULL;
  const dashboard_asset *a = asset_find(name);
  if (!a) {
    http_reply_problem(r, DECOMP_ERR_NOT_FOUND, "no dashboard file '%s'",
                       name ? name : "");
    return;
  }
  serve(r, a);
}
