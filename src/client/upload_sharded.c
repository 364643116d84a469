/* upload_sharded.c — decomp_client_upload_sharded (decomp/client.h): a
 * sharded safetensors checkpoint up to decompd shard by shard, each a
 * content-addressed blob (PUT /v1/blobs/{digest}) that is skipped when the
 * server has it and resumed from the server's offset when it holds part of
 * it, then bound by its index (POST /v1/models, JSON).
 *
 * Shard names come from the index, a file from elsewhere: only plain file
 * names in the index's folder are opened. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "client_internal.h"
#include "client_json.h"

#define INDEX_NAME "model.safetensors.index.json"
/* An index a client reads whole (the Hub's largest are a few hundred kB). */
#define MAX_INDEX_BYTES ((off_t)64 << 20)

static void copy_str(char *dst, size_t cap, json_t *v) {
  const char *s = json_string_value(v);
  snprintf(dst, cap, "%s", s ? s : "");
}

/* A shard name an index may give: a plain file name ending in
 * ".safetensors" (the server refuses anything else too). */
static bool shard_name_ok(const char *n) {
  size_t len = strlen(n);
  return len > 12 && len < 256 && !strchr(n, '/') && !strchr(n, '\\') &&
         n[0] != '.' && strcmp(n + len - 12, ".safetensors") == 0;
}

/* The index at `path` (a folder or the index file): its JSON, and the
 * folder its shards are in (`dir`, dirlen bytes). */
static int index_read(decomp_client *c, const char *path, char *dir,
                      size_t dirlen, json_t **out) {
  char ipath[DECOMP_CLIENT_PATH_LEN];
  struct stat st;
  *out = NULL;
  if (stat(path, &st) != 0)
    return client_fail(c, DECOMP_ERR_IO, "%s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) {
    snprintf(dir, dirlen, "%s", path);
    if (snprintf(ipath, sizeof ipath, "%s/%s", path, INDEX_NAME) >=
        (int)sizeof ipath)
      return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "%s: path too long",
                         path);
  } else {
    snprintf(ipath, sizeof ipath, "%s", path);
    const char *slash = strrchr(path, '/');
    if (slash)
      snprintf(dir, dirlen, "%.*s", (int)(slash - path), path);
    else
      snprintf(dir, dirlen, ".");
    if (!dir[0])
      snprintf(dir, dirlen, "/");
  }
  FILE *f = fopen(ipath, "rb");
  if (!f)
    return client_fail(c, DECOMP_ERR_IO, "%s: %s", ipath, strerror(errno));
  if (fstat(fileno(f), &st) == 0 && st.st_size > MAX_INDEX_BYTES) {
    fclose(f);
    return client_fail(c, DECOMP_ERR_BAD_SHARD_INDEX,
                       "%s: %lld bytes is too large for an index", ipath,
                       (long long)st.st_size);
  }
  json_error_t err;
  json_t *idx = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
  fclose(f);
  if (!json_is_object(idx) ||
      !json_is_object(json_object_get(idx, "weight_map"))) {
    json_decref(idx);
    return client_fail(c, DECOMP_ERR_BAD_SHARD_INDEX,
                       "%s: not a safetensors index (%s)", ipath,
                       idx ? "no weight_map object" : err.text);
  }
  *out = idx;
  return DECOMP_OK;
}

/* PUT the shard in `fd` (`size` bytes, digest `hex`) from byte `from`. */
static int shard_put(decomp_client *c, const char *shard, int fd,
                     int64_t size, int64_t from, const char *hex,
                     ct_response *rs) {
  char rpath[128], range[128];
  snprintf(rpath, sizeof rpath, "/v1/blobs/sha256:%s", hex);
  if (lseek(fd, (off_t)from, SEEK_SET) != (off_t)from)
    return client_fail(c, DECOMP_ERR_IO, "%s: %s", shard, strerror(errno));
  snprintf(range, sizeof range, "Content-Range: bytes %lld-%lld/%lld",
           (long long)from, (long long)size - 1, (long long)size);
  ct_request rq = {.method = "PUT",
                   .path = rpath,
                   .content_type = "application/octet-stream",
                   .body_fd = fd,
                   .body_size = size - from,
                   .progress_name = shard,
                   .direction = DECOMP_CLIENT_UPLOAD,
                   .progress_base = from,
                   .progress_total = size,
                   .extra_header = from > 0 ? range : NULL};
  return ct_perform(c, &rq, rs);
}

/* One shard: hashed, asked for, sent as needed. */
static int shard_upload(decomp_client *c, const char *dir, const char *shard,
                        char digest[DECOMP_CLIENT_DIGEST_LEN],
                        decomp_client_shard_stats *st) {
  char path[DECOMP_CLIENT_PATH_LEN], hex[65], rpath[128];
  ct_response rs = {0};
  int rc = DECOMP_OK;
  if (snprintf(path, sizeof path, "%s/%s", dir, shard) >= (int)sizeof path)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "%s/%s: path too long",
                       dir, shard);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat sb;
  if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    rc = client_fail(c, DECOMP_ERR_IO, "shard %s: %s", path,
                     fd < 0 ? strerror(errno) : "not a regular file");
    goto done;
  }
  int64_t size = (int64_t)sb.st_size;
  client_sha *h = client_sha_new();
  int e = h ? client_sha_fd(h, fd, -1) : ENOMEM;
  if (h && !e)
    client_sha_final(h, hex);
  client_sha_free(h);
  if (e) {
    rc = client_fail(c, client_errno_code(e), "shard %s: %s", path,
                     strerror(e));
    goto done;
  }
  snprintf(digest, DECOMP_CLIENT_DIGEST_LEN, "sha256:%s", hex);
  snprintf(rpath, sizeof rpath, "/v1/blobs/sha256:%s", hex);
  ct_request head = {.method = "HEAD", .path = rpath, .body_fd = -1,
                     .progress_total = -1};
  if ((rc = ct_perform(c, &head, &rs)) != DECOMP_OK)
    goto done;
  if (rs.status == 200) {
    st->skipped++;
    goto done;
  }
  if (rs.status != 404) {
    rc = client_http_error(c, "HEAD", rpath, &rs);
    goto done;
  }
  /* A partial upload the server holds: on from there, unless it is no
   * prefix of this file (then the server refuses it at the end and the
   * upload starts over from 0, below). */
  int64_t from = rs.upload_offset > 0 ? rs.upload_offset - 1 : 0;
  if (from >= size)
    from = 0;
  for (int attempt = 0; attempt < 3; attempt++) {
    ct_response_clear(&rs);
    if ((rc = shard_put(c, shard, fd, size, from, hex, &rs)) != DECOMP_OK)
      goto done;
    if (rs.status == 200 || rs.status == 201) {
      if (from > 0)
        st->resumed++;
      else if (rs.status == 201)
        st->sent++;
      else
        st->skipped++;
      st->bytes += size - from;
      goto done;
    }
    if (rs.status == 409 && rs.upload_offset > 0) {
      /* the server holds another offset (a concurrent upload moved it) */
      from = rs.upload_offset - 1 < size ? rs.upload_offset - 1 : 0;
      continue;
    }
    if (rs.status == 422 && from > 0) {
      /* what the server held was not this file's start: once more, whole */
      from = 0;
      continue;
    }
    break;
  }
  rc = client_http_error(c, "PUT", rpath, &rs);
  char pre[DECOMP_CLIENT_PATH_LEN + 16];
  snprintf(pre, sizeof pre, "shard %s: ", path);
  client_errmsg_wrap(c, pre, NULL);
done:
  ct_response_clear(&rs);
  if (fd >= 0)
    close(fd);
  return rc;
}

int decomp_client_upload_sharded(decomp_client *c, const char *path,
                                 const char *name, decomp_client_model *out,
                                 bool *out_created,
                                 decomp_client_shard_stats *stats,
                                 char **out_json) {
  char dir[DECOMP_CLIENT_PATH_LEN];
  json_t *idx = NULL, *shards = NULL, *body = NULL, *doc = NULL;
  char *text = NULL, *rpath = NULL;
  decomp_client_shard_stats st = {0};
  ct_response rs = {0};
  if (out_json)
    *out_json = NULL;
  if (c->offline)
    return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                       "upload %s: offline mode (DECOMPD_OFFLINE) makes no "
                       "requests",
                       path);
  int rc = index_read(c, path, dir, sizeof dir, &idx);
  if (rc != DECOMP_OK)
    goto done;
  if (!(shards = json_object())) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  /* Every shard the map names, once, in the order it first names them. */
  const char *tensor;
  json_t *v;
  json_object_foreach(json_object_get(idx, "weight_map"), tensor, v) {
    const char *shard = json_string_value(v);
    if (!shard || !shard_name_ok(shard)) {
      rc = client_fail(c, DECOMP_ERR_BAD_SHARD_INDEX,
                       "%s: tensor %s: shard '%s' is not a plain file name "
                       "ending in .safetensors",
                       path, tensor, shard ? shard : "(not a string)");
      goto done;
    }
    if (json_object_get(shards, shard))
      continue;
    char digest[DECOMP_CLIENT_DIGEST_LEN];
    if ((rc = shard_upload(c, dir, shard, digest, &st)) != DECOMP_OK)
      goto done;
    st.shards++;
    if (json_object_set_new(shards, shard, json_string(digest)) != 0) {
      rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
      goto done;
    }
  }
  if (st.shards == 0) {
    rc = client_fail(c, DECOMP_ERR_BAD_SHARD_INDEX,
                     "%s: the index names no shard", path);
    goto done;
  }
  if (!(body = json_pack("{s:O, s:O}", "index", idx, "shards", shards)) ||
      !(text = json_dumps(body, JSON_COMPACT))) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if (!(rpath = client_models_path(c, name))) {
    rc = DECOMP_ERR_NOMEM;
    goto done;
  }
  ct_request rq = {.method = "POST", .path = rpath,
                   .content_type = "application/json", .body = text,
                   .body_len = strlen(text), .body_fd = -1,
                   .progress_total = -1};
  if ((rc = ct_perform(c, &rq, &rs)) != DECOMP_OK)
    goto done;
  if (rs.status != 200 && rs.status != 201) {
    rc = client_http_error(c, "POST", rpath, &rs);
    goto done;
  }
  doc = rs.body ? json_loadb(rs.body, rs.body_len, 0, NULL) : NULL;
  if (!json_is_object(doc)) {
    rc = client_fail(c, DECOMP_ERR_SERVER,
                     "POST %s: %ld: the answer is not a JSON object", rpath,
                     rs.status);
    goto done;
  }
  if (out) {
    memset(out, 0, sizeof *out);
    copy_str(out->id, sizeof out->id, json_object_get(doc, "id"));
    copy_str(out->name, sizeof out->name, json_object_get(doc, "name"));
    copy_str(out->digest, sizeof out->digest, json_object_get(doc, "digest"));
    copy_str(out->format, sizeof out->format, json_object_get(doc, "format"));
    out->size = (int64_t)json_integer_value(json_object_get(doc, "size"));
    out->tensors =
        (int64_t)json_integer_value(json_object_get(doc, "tensors"));
  }
  if (out_created)
    *out_created = rs.status == 201;
  if (out_json &&
      !(*out_json = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER)))
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
done:
  if (stats)
    *stats = st;
  ct_response_clear(&rs);
  json_decref(doc);
  json_decref(body);
  json_decref(shards);
  json_decref(idx);
  free(text);
  free(rpath);
  return rc;
}
