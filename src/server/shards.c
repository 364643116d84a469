/* shards.c — sharded safetensors checkpoints through the service (see
 * shards.h): the resumable shard upload's handler, the binding of an index
 * and its shards' digests into one model, and opening such a model.
 *
 * A sharded model's blob (models.digest) is its binding document in
 * canonical form — {"format": "decompd.sharded_model", "version": 1,
 * "index": INDEX, "shards": {name: digest}}, keys sorted, compact — so two
 * uploads of the same checkpoint are one model, and the document is all a
 * worker needs to find its shards. Shard names are only ever keys: the
 * blob a shard is read from is found by its digest (store_blob_path), and
 * decomp_weights_open_sharded checks the names are plain file names. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "shards.h"
#include "text.h"

#define JSON_TYPE "application/json"
/* Shards one model may have; the Hub's largest checkpoints have a few
 * hundred. */
#define MAX_SHARDS 10000
/* The binding document a worker reads back whole. */
#define MAX_DOC_BYTES ((int64_t)64 << 20)
/* PUT /v1/blobs sweeps abandoned uploads at most this often. */
#define SWEEP_EVERY_MS 60000

static void reply(http_req *r, int status, json_t *o) {
  char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  if (!text) {
    http_reply_problem(r, DECOMP_ERR_ENCODE, "could not encode the answer");
    return;
  }
  http_reply(r, status, JSON_TYPE, text, strlen(text));
}

bool shards_model_is_sharded(const store_model *m) {
  return strcmp(m->format, SHARDS_FORMAT) == 0;
}

/* ---- PUT /v1/blobs/{digest} -------------------------------------------- */

static _Atomic int64_t last_sweep_ms;

/* Abandoned partial uploads and unbound shards over upload_ttl go, at
 * most once a minute, from the request that notices. */
static void maybe_sweep(http_req *r) {
  int64_t now = store_now_ms(), last = atomic_load(&last_sweep_ms);
  if (now - last < SWEEP_EVERY_MS ||
      !atomic_compare_exchange_strong(&last_sweep_ms, &last, now))
    return;
  int np = 0, nb = 0;
  int ttl = http_req_config(r)->upload_ttl;
  if (store_uploads_sweep(http_req_store(r), (int64_t)ttl * 1000, &np, &nb) !=
      DECOMP_OK)
    LOG(LOG_WARN, "blobs", http_req_id(r), "event=upload_sweep_failed error=%s",
        log_q(store_errmsg()));
  else if (np || nb)
    LOG(LOG_INFO, "blobs", http_req_id(r),
        "event=upload_sweep partials=%d blobs=%d ttl=%d", np, nb, ttl);
}

static json_t *blob_json(const char *digest, int64_t size, json_t *tensors) {
  char url[96];
  snprintf(url, sizeof url, "/v1/blobs/%s", digest);
  return json_pack("{s:s, s:I, s:o, s:s}", "digest", digest, "size",
                   (json_int_t)size, "tensors", tensors ? tensors : json_null(),
                   "url", url);
}

static void offset_header(http_req *r, int64_t n) {
  char off[32];
  snprintf(off, sizeof off, "%lld", (long long)n);
  http_reply_header(r, "Upload-Offset", off);
}

/* Read the completed upload at `path` as a safetensors file: DECOMP_OK
 * with its tensor count, or the problem answered. */
static int shard_check(http_req *r, const char *path, size_t *tensors) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w = NULL;
  if (!ctx) {
    http_reply_problem(r, DECOMP_ERR_NOMEM, "out of memory");
    return DECOMP_ERR_NOMEM;
  }
  int rc = decomp_weights_open(ctx, path, &w);
  if (rc != DECOMP_OK) {
    const char *m = decomp_errmsg(ctx);
    /* The reader's message starts with our file's path. */
    if (strncmp(m, path, strlen(path)) == 0)
      m += strlen(path);
    while (*m == ':' || *m == ' ')
      m++;
    if (rc == DECOMP_ERR_TORCHSCRIPT)
      rc = DECOMP_ERR_BAD_SAFETENSORS;
    http_reply_problem(r, rc, "shard %s is not a safetensors file: %s",
                       http_req_blob_digest(r), m[0] ? m : decomp_strerror(rc));
  } else if (decomp_weights_format(w) != DECOMP_FORMAT_SAFETENSORS) {
    rc = DECOMP_ERR_BAD_SAFETENSORS;
    http_reply_problem(r, rc,
                       "shard %s is a %s file, not safetensors: a sharded "
                       "checkpoint's shards are safetensors files",
                       http_req_blob_digest(r),
                       decomp_format_name(decomp_weights_format(w)));
  } else {
    *tensors = decomp_weights_count(w);
  }
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  return rc;
}

void shards_blob_put(http_req *r) {
  store *s = http_req_store(r);
  store_partial *p = http_req_take_partial(r);
  const char *digest = http_req_blob_digest(r);
  int64_t start, end, total;
  bool ranged = http_req_upload_range(r, &start, &end, &total);
  int rc;
  maybe_sweep(r);
  if (!p) { /* stored already: the body was dropped */
    int64_t size = 0;
    rc = store_loose_blob_refresh(s, digest, &size);
    if (rc == DECOMP_ERR_NOT_FOUND) /* collected meanwhile: send it again */
      http_reply_problem(r, DECOMP_ERR_CONFLICT,
                         "blob %s was removed while this upload was read; "
                         "upload it again",
                         digest);
    else if (rc != DECOMP_OK)
      http_reply_problem(r, rc, "%s", store_errmsg());
    else {
      offset_header(r, size);
      reply(r, 200, blob_json(digest, size, NULL));
    }
    return;
  }
  int64_t size = store_partial_size(p);
  if (ranged && end >= 0 && store_partial_appended(p) != end - start + 1 &&
      total >= 0 && size >= total) {
    /* more or fewer bytes than the range said, ending the blob: a client
     * that miscounts is told so, and starts over */
    store_partial_drop(p);
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "Content-Range bytes %lld-%lld but %lld bytes came; "
                       "the partial upload is discarded",
                       (long long)start, (long long)end,
                       (long long)store_partial_appended(p));
    goto done;
  }
  if (ranged && total >= 0 && size > total) {
    store_partial_drop(p);
    http_reply_problem(r, DECOMP_ERR_BAD_REQUEST,
                       "%lld bytes came for a blob of %lld (Content-Range); "
                       "the partial upload is discarded",
                       (long long)size, (long long)total);
    goto done;
  }
  if (ranged && (total < 0 || size < total)) { /* more to come */
    if ((rc = store_partial_sync(p)) != DECOMP_OK) {
      http_reply_problem(r, rc, "%s", store_errmsg());
      goto done;
    }
    LOG(LOG_INFO, "blobs", http_req_id(r),
        "event=blob_partial digest=%s offset=%lld total=%lld", digest,
        (long long)size, (long long)total);
    offset_header(r, size);
    reply(r, 202,
          json_pack("{s:s, s:I, s:o}", "digest", digest, "offset",
                    (json_int_t)size, "size",
                    total >= 0 ? json_integer(total) : json_null()));
    goto done;
  }
  if (size == 0) {
    store_partial_drop(p);
    http_reply_problem(r, DECOMP_ERR_BAD_SAFETENSORS,
                       "shard %s: the upload is empty", digest);
    goto done;
  }
  if ((rc = store_partial_verify(p)) != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", store_errmsg());
    goto done;
  }
  size_t tensors = 0;
  if (shard_check(r, store_partial_path(p), &tensors) != DECOMP_OK) {
    store_partial_drop(p);
    goto done;
  }
  rc = store_partial_commit(p);
  if (rc != DECOMP_OK) {
    http_reply_problem(r, rc, "%s", store_errmsg());
    goto done;
  }
  LOG(LOG_INFO, "blobs", http_req_id(r),
      "event=blob_stored digest=%s size=%lld tensors=%zu resumed=%s", digest,
      (long long)size, tensors, start > 0 ? "yes" : "no");
  char loc[96];
  snprintf(loc, sizeof loc, "/v1/blobs/%s", digest);
  http_reply_header(r, "Location", loc);
  offset_header(r, size);
  reply(r, 201, blob_json(digest, size, json_integer((json_int_t)tensors)));
done:
  store_partial_free(p);
}

void shards_blob_missing(http_req *r, const char *digest) {
  int64_t have = 0;
  if (store_partial_offset(http_req_store(r), digest, &have) == DECOMP_OK) {
    http_reply_problem(r, DECOMP_ERR_NOT_FOUND,
                       "blob %s is not stored; a partial upload holds its "
                       "first %lld bytes (resume with PUT and Content-Range "
                       "from there)",
                       digest, (long long)have);
    offset_header(r, have);
  } else {
    http_reply_problem(r, DECOMP_ERR_NOT_FOUND, "no blob %s", digest);
  }
}

/* ---- binding an index into a model --------------------------------------- */

/* A shard's name as an index may give it: a plain file name ending in
 * ".safetensors" (the engine checks it too; said here before any blob is
 * looked at). */
static bool shard_name_ok(const char *n) {
  size_t len = strlen(n);
  const char *why = NULL;
  return len > 12 && len < 256 && strchr(n, '/') == NULL &&
         strchr(n, '\\') == NULL && n[0] != '.' &&
         strcmp(n + len - 12, ".safetensors") == 0 && text_label_ok(n, &why);
}

/* The canonical binding document of `index` and `shards` (both borrowed);
 * NULL when out of memory. */
static char *binding_text(json_t *index, json_t *shards) {
  json_t *doc = json_pack("{s:s, s:i, s:O, s:O}", "format",
                          "decompd.sharded_model", "version", 1, "index",
                          index, "shards", shards);
  char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS |
                                         JSON_REAL_PRECISION(17))
                   : NULL;
  json_decref(doc);
  return text;
}

/* Read the upload `u` (at most `max` bytes) as JSON. */
static json_t *upload_json(store_upload *u, int64_t max, json_error_t *err,
                           bool *too_large) {
  *too_large = store_upload_size(u) > max;
  if (*too_large)
    return NULL;
  FILE *f = fopen(store_upload_path(u), "rb");
  if (!f) {
    snprintf(err->text, sizeof err->text, "the upload could not be read");
    err->line = err->column = 0;
    return NULL;
  }
  json_t *o = json_loadf(f, JSON_REJECT_DUPLICATES, err);
  fclose(f);
  return o;
}

/* Open the shards named in `shards` ({name: digest}, checked) with the
 * index text: the engine's every check. *size gets the shards' bytes, and
 * `sh` (n entries) their names, digests and sizes. */
static int bind_open(store *s, decomp_ctx *ctx, const char *index_text,
                     json_t *shards, store_shard *sh, size_t n,
                     decomp_weights **w, int64_t *size, svc_problem *p) {
  const char **names = calloc(n, sizeof *names);
  char **pp = calloc(n, sizeof *pp);
  int rc = DECOMP_OK;
  size_t i = 0;
  const char *name;
  json_t *v;
  *size = 0;
  if (!names || !pp) {
    rc = DECOMP_ERR_NOMEM;
    rc = svc_fail(p, rc, "out of memory");
    goto done;
  }
  json_object_foreach(shards, name, v) {
    const char *digest = json_string_value(v);
    int fd = -1;
    int64_t bytes = 0;
    rc = store_blob_open(s, digest, &fd, &bytes);
    if (fd >= 0)
      close(fd);
    if (rc == DECOMP_ERR_NOT_FOUND) {
      rc = DECOMP_ERR_BAD_SHARD_INDEX;
      rc = svc_fail(p, rc,
                         "shard %s: no blob %s on this server (upload it "
                         "first: PUT /v1/blobs/%s)",
                         name, digest, digest);
      goto done;
    }
    char path[4200];
    if (rc == DECOMP_OK)
      rc = store_blob_path(s, digest, path, sizeof path);
    if (rc != DECOMP_OK) {
      rc = svc_fail(p, rc, "%s", store_errmsg());
      goto done;
    }
    if (!(pp[i] = strdup(path))) {
      rc = DECOMP_ERR_NOMEM;
      rc = svc_fail(p, rc, "out of memory");
      goto done;
    }
    snprintf(sh[i].name, sizeof sh[i].name, "%s", name);
    snprintf(sh[i].digest, sizeof sh[i].digest, "%s", digest);
    sh[i].size = bytes;
    *size += bytes;
    names[i] = sh[i].name;
    i++;
  }
  rc = decomp_weights_open_sharded(ctx, index_text, strlen(index_text), n,
                                   names, (const char *const *)pp, w);
  if (rc != DECOMP_OK)
    rc = svc_fail(p, rc, "%s", decomp_errmsg(ctx));
done:
  for (size_t k = 0; pp && k < n; k++)
    free(pp[k]);
  free(names);
  free(pp);
  return rc;
}

int shards_model_bind(store *s, int64_t max_json_bytes, store_upload *u,
                      const char *name, store_model *out, bool *out_created,
                      const char *rid, svc_problem *p) {
  int rc = DECOMP_ERR_INTERNAL;
  json_error_t jerr;
  bool too_large = false;
  json_t *in = upload_json(u, max_json_bytes, &jerr, &too_large);
  char *index_text = NULL, *doc = NULL;
  store_shard *sh = NULL;
  decomp_ctx *ctx = NULL;
  decomp_weights *w = NULL;
  store_upload *du = NULL;
  if (too_large) {
    rc = svc_fail(p, DECOMP_ERR_PAYLOAD_TOO_LARGE,
                       "a JSON model (an index and its shards) is at most "
                       "max_json_bytes, %lld bytes",
                       (long long)max_json_bytes);
    goto done;
  }
  if (!in) {
    rc = svc_fail(p, DECOMP_ERR_BAD_JSON, "line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
    goto done;
  }
  json_t *index = json_object_get(in, "index");
  json_t *shards = json_object_get(in, "shards");
  const char *key;
  json_t *v;
  if (!json_is_object(in) || !json_is_object(index) ||
      !json_is_object(shards)) {
    rc = svc_fail(p, DECOMP_ERR_BAD_REQUEST,
                       "a sharded model is {\"index\": the text of "
                       "model.safetensors.index.json, \"shards\": {shard "
                       "file name: \"sha256:…\" of its blob}}");
    goto done;
  }
  json_object_foreach(in, key, v) {
    if (strcmp(key, "index") && strcmp(key, "shards")) {
      rc = svc_fail(p, DECOMP_ERR_BAD_REQUEST,
                         "unknown field '%s' (expected index, shards)", key);
      goto done;
    }
  }
  size_t n = json_object_size(shards);
  if (n == 0 || n > MAX_SHARDS) {
    rc = svc_fail(p, DECOMP_ERR_BAD_SHARD_INDEX,
                       "'shards' names %zu shards (1 to %d)", n, MAX_SHARDS);
    goto done;
  }
  json_object_foreach(shards, key, v) {
    if (!shard_name_ok(key)) {
      rc = svc_fail(p, DECOMP_ERR_BAD_SHARD_INDEX,
                         "shard name '%s': a shard is named by a plain file "
                         "name ending in .safetensors (no '/', no leading "
                         "'.')",
                         key);
      goto done;
    }
    if (!json_is_string(v) || !store_digest_valid(json_string_value(v))) {
      rc = svc_fail(p, DECOMP_ERR_BAD_SHARD_INDEX,
                         "shard %s: its digest must be \"sha256:<64 "
                         "lowercase hex>\"",
                         key);
      goto done;
    }
  }
  if (!(index_text = json_dumps(index, JSON_COMPACT | JSON_REAL_PRECISION(17))) ||
      !(doc = binding_text(index, shards)) || !(ctx = decomp_ctx_new()) ||
      !(sh = calloc(n, sizeof *sh))) {
    rc = svc_fail(p, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  store_model m = {0};
  rc = bind_open(s, ctx, index_text, shards, sh, n, &w, &m.size, p);
  if (rc != DECOMP_OK)
    goto done;
  m.tensors = (int64_t)decomp_weights_count(w);
  decomp_weights_free(w);
  w = NULL;
  snprintf(m.name, sizeof m.name, "%s", name);
  snprintf(m.format, sizeof m.format, "%s", SHARDS_FORMAT);
  /* the document is the model's blob: its digest is the model's */
  if ((rc = store_upload_begin(s, &du)) != DECOMP_OK ||
      (rc = store_upload_write(du, doc, strlen(doc))) != DECOMP_OK ||
      (rc = store_upload_finish(du, m.digest)) != DECOMP_OK) {
    rc = svc_fail(p, rc, "%s", store_errmsg());
    goto done;
  }
  bool created = false;
  /* A shard collected since its upload is refused (bad_shard_index, naming
   * it); the store checks under its lock, with the rows. */
  rc = store_model_put_sharded(s, du, &m, sh, n, &created);
  if (rc != DECOMP_OK) {
    rc = svc_fail(p, rc, "%s", store_errmsg());
    goto done;
  }
  LOG(LOG_INFO, "models", rid,
      "event=model_%s id=%s digest=%s format=%s size=%lld tensors=%lld "
      "shards=%zu",
      created ? "stored" : "deduplicated", m.id, m.digest, m.format,
      (long long)m.size, (long long)m.tensors, n);
  *out = m;
  *out_created = created;
done:
  json_decref(in);
  free(index_text);
  free(doc);
  free(sh);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  store_upload_free(du);
  store_upload_free(u);
  return rc;
}

json_t *shards_model_json(store *s, const store_model *m) {
  store_shard *sh = NULL;
  size_t n = 0;
  if (store_model_shards(s, m->id, &sh, &n) != DECOMP_OK)
    return NULL;
  json_t *a = json_array();
  bool ok = a != NULL;
  for (size_t i = 0; i < n && ok; i++)
    ok = json_array_append_new(
             a, json_pack("{s:o, s:s, s:I}", "name", text_json(sh[i].name),
                          "digest", sh[i].digest, "size",
                          (json_int_t)sh[i].size)) == 0;
  free(sh);
  if (!ok) {
    json_decref(a);
    return NULL;
  }
  return a;
}

/* ---- opening a sharded model ------------------------------------------- */

int shards_weights_open(store *s, decomp_ctx *ctx, const store_model *m,
                        decomp_weights **out, char *msg, size_t msglen) {
  char *text = NULL, *index_text = NULL;
  const char **names = NULL;
  char **pp = NULL;
  json_t *doc = NULL;
  msg[0] = '\0';
  int rc = store_blob_read(s, m->digest, MAX_DOC_BYTES, &text, NULL);
  if (rc != DECOMP_OK) {
    snprintf(msg, msglen, "model %s: %s", m->id, store_errmsg());
    return rc;
  }
  doc = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
  json_t *index = json_object_get(doc, "index");
  json_t *shards = json_object_get(doc, "shards");
  size_t n = json_object_size(shards);
  if (!json_is_object(index) || !json_is_object(shards) || n == 0) {
    rc = DECOMP_ERR_STORE;
    snprintf(msg, msglen, "model %s: its binding document %s is not one",
             m->id, m->digest);
    goto done;
  }
  names = calloc(n, sizeof *names);
  pp = calloc(n, sizeof *pp);
  index_text = json_dumps(index, JSON_COMPACT | JSON_REAL_PRECISION(17));
  if (!names || !pp || !index_text) {
    rc = DECOMP_ERR_NOMEM;
    snprintf(msg, msglen, "out of memory");
    goto done;
  }
  size_t i = 0;
  const char *name;
  json_t *v;
  json_object_foreach(shards, name, v) {
    char path[4200];
    if ((rc = store_blob_path(s, json_string_value(v), path, sizeof path)) !=
        DECOMP_OK) {
      snprintf(msg, msglen, "model %s: shard %s: %s", m->id, name,
               store_errmsg());
      goto done;
    }
    if (!(pp[i] = strdup(path))) {
      rc = DECOMP_ERR_NOMEM;
      snprintf(msg, msglen, "out of memory");
      goto done;
    }
    names[i] = name;
    i++;
  }
  rc = decomp_weights_open_sharded(ctx, index_text, strlen(index_text), n,
                                   names, (const char *const *)pp, out);
  if (rc != DECOMP_OK)
    snprintf(msg, msglen, "%s", decomp_errmsg(ctx));
done:
  json_decref(doc);
  free(text);
  free(index_text);
  for (size_t k = 0; pp && k < n; k++)
    free(pp[k]);
  free(names);
  free(pp);
  return rc;
}
