/* dashboard.h — the job dashboard's static files (src/server/dashboard/:
 * index.html, app.js, style.css, …), embedded in the binary at build time by
 * dashboard/embed_dashboard.py, and the two handlers that serve them.
 *
 * The files are a static shell: they need no token (the page asks for one
 * when the API answers 401) and hold no data; everything the page shows it
 * fetches from the API with the user's token. */
#ifndef DECOMPD_SERVER_DASHBOARD_H
#define DECOMPD_SERVER_DASHBOARD_H

#include <stddef.h>

typedef struct dashboard_asset {
  const char *name;         /* "app.js", served at /ui/app.js */
  const char *content_type; /* "text/javascript; charset=utf-8" */
  const unsigned char *data;
  size_t len;
  const char *etag;         /* "\"<sha256 prefix>\"", made at build time */
} dashboard_asset;

/* The embedded files (dashboard_assets.c, generated), ended by a NULL
 * name. */
extern const dashboard_asset DASHBOARD_ASSETS[];

typedef struct http_req http_req;

/* GET / — index.html. */
void dashboard_index(http_req *r);
/* GET /ui/NAME — the embedded file NAME (each has its own route, so the
 * route table and api/openapi.yaml list every one); 404 for any other. */
void dashboard_file(http_req *r);

#endif
