/* fetch.c — decomp_client_fetch: a succeeded job's artifacts into the
 * content-addressed cache (layout in decomp/client.h), each through a unique
 * partial file that is resumed with Range when one is left over, hashed as
 * it arrives, and renamed onto its blob path only once its SHA-256 matches;
 * then the job record, then copies into DEST. Offline mode answers from the
 * record and the blobs. The HTTP work is the transport's (transport.c). */
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

/* One download into a partial file: the transport's sink. */
struct dl {
  decomp_client *c;
  const char *name;
  const char *tmp_path;
  int fd;
  client_sha *sha;
  int64_t from;    /* bytes already in the file when the request went out */
  int64_t size;    /* the artifact's size */
  int64_t written; /* bytes written by this request */
  bool restarted;  /* the server sent it all (200): the file starts over */
};

static int dl_begin(void *user, long status, const char *content_range) {
  struct dl *d = user;
  client_answer a = d->from > 0
                        ? client_resume_answer(status, content_range, d->from,
                                               d->size)
                        : (status == 200 ? CLIENT_ANSWER_RESTART
                                         : CLIENT_ANSWER_BAD);
  if (a == CLIENT_ANSWER_BAD)
    return client_fail(d->c, DECOMP_ERR_SERVER,
                       "fetch %s: asked for bytes %lld- of %lld, the server "
                       "answered %ld with Content-Range '%s'",
                       d->name, (long long)d->from, (long long)d->size, status,
                       content_range);
  if (a == CLIENT_ANSWER_RESTART) {
    if (d->from > 0) {
      d->restarted = true;
      client_sha_reset(d->sha);
    }
    if (ftruncate(d->fd, 0) != 0 || lseek(d->fd, 0, SEEK_SET) != 0)
      return client_fail(d->c, DECOMP_ERR_IO, "%s: %s", d->tmp_path,
                         strerror(errno));
  }
  return DECOMP_OK;
}

static int dl_data(void *user, const void *buf, size_t len) {
  struct dl *d = user;
  int64_t start = d->restarted ? 0 : d->from;
  if (start + d->written + (int64_t)len > d->size)
    return client_fail(d->c, DECOMP_ERR_DIGEST_MISMATCH,
                       "fetch %s: the server sent more than the %lld bytes "
                       "the job lists",
                       d->name, (long long)d->size);
  const char *p = buf;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(d->fd, p, left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int e = errno;
      return client_fail(d->c, client_errno_code(e),
                         "fetch %s: writing %s: %s (%lld of %lld bytes "
                         "written)",
                         d->name, d->tmp_path, strerror(e),
                         (long long)(start + d->written),
                         (long long)d->size);
    }
    p += n;
    left -= (size_t)n;
    d->written += n;
  }
  client_sha_update(d->sha, buf, len);
  return DECOMP_OK;
}

/* Is the file at path exactly the blob <hex>? 0 yes, 1 no, -1 unreadable. */
static int blob_ok(const char *path, const char *hex, client_sha *sha) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  client_sha_reset(sha);
  int err = client_sha_fd(sha, fd, -1);
  close(fd);
  if (err)
    return -1;
  char got[65];
  client_sha_final(sha, got);
  return strcmp(got, hex) == 0 ? 0 : 1;
}

static int fetch_one(decomp_client *c, const char *job_id,
                     const decomp_client_artifact *a, client_sha *sha,
                     decomp_client_file *f) {
  char hex[65], blob[DECOMP_CLIENT_PATH_LEN], dir[DECOMP_CLIENT_PATH_LEN];
  char part[DECOMP_CLIENT_PATH_LEN], path[256], etag[80];
  int rc = DECOMP_OK, fd = -1;
  bool keep_partial = false;
  memset(f, 0, sizeof *f);
  snprintf(f->name, sizeof f->name, "%s", a->name);
  snprintf(f->digest, sizeof f->digest, "%s", a->digest);
  f->size = a->size;
  if (!client_digest_hex(a->digest, hex) ||
      decomp_client_cache_blob_path(c->cache, a->digest, blob, sizeof blob) !=
          DECOMP_OK)
    return client_fail(c, DECOMP_ERR_SERVER,
                       "job %s: artifact %s has no usable digest ('%s')",
                       job_id, a->name, a->digest);
  snprintf(f->path, sizeof f->path, "%s", blob);

  bool corrupt = false;
  int ok = blob_ok(blob, hex, sha);
  if (ok == 0) {
    f->from_cache = true;
    return DECOMP_OK;
  }
  if (ok == 1) {
    corrupt = true;
    if (!c->offline)
      unlink(blob); /* fetched again below */
  }
  if (c->offline) {
    if (corrupt)
      return client_fail(c, DECOMP_ERR_DIGEST_MISMATCH,
                         "%s (%s of job %s) is corrupt: its SHA-256 is not "
                         "%s; offline mode cannot fetch it again",
                         blob, a->name, job_id, a->digest);
    return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                       "%s of job %s (%s) is not in the cache %s", a->name,
                       job_id, a->digest, c->cache);
  }

  snprintf(dir, sizeof dir, "%s/tmp", c->cache);
  int err = client_mkdirs(dir, 0755);
  if (err)
    return client_fail(c, client_errno_code(err), "cache %s: %s", dir,
                       strerror(err));
  snprintf(dir, sizeof dir, "%s", blob);
  *strrchr(dir, '/') = '\0';
  if ((err = client_mkdirs(dir, 0755)))
    return client_fail(c, client_errno_code(err), "cache %s: %s", dir,
                       strerror(err));
  snprintf(dir, sizeof dir, "%s/tmp", c->cache);
  int64_t have = 0;
  fd = client_partial_claim(dir, hex, part, sizeof part, &have);
  if (fd < 0)
    return client_fail(c, client_errno_code(errno), "cache %s: %s", dir,
                       strerror(errno));
  snprintf(path, sizeof path, "/v1/jobs/%s/artifacts/%s", job_id, a->name);
  snprintf(etag, sizeof etag, "\"sha256:%s\"", hex);

  for (int attempt = 0; attempt < 2; attempt++) {
    client_sha_reset(sha);
    if (have == a->size) {
      /* A complete partial (cut just before the rename): check it. */
      if (client_sha_fd(sha, fd, have) == 0) {
        char got[65];
        client_sha_final(sha, got);
        if (strcmp(got, hex) == 0) {
          f->resumed_from = have;
          goto verified;
        }
      }
      client_sha_reset(sha);
    }
    int64_t from = client_resume_from(have, a->size);
    if (from > 0 && (err = client_sha_fd(sha, fd, from)) != 0) {
      client_sha_reset(sha);
      from = 0;
    }
    if (from == 0 && ftruncate(fd, 0) != 0) {
      rc = client_fail(c, DECOMP_ERR_IO, "%s: %s", part, strerror(errno));
      goto done;
    }
    if (lseek(fd, (off_t)from, SEEK_SET) < 0) {
      rc = client_fail(c, DECOMP_ERR_IO, "%s: %s", part, strerror(errno));
      goto done;
    }
    struct dl d = {c, a->name, part, fd, sha, from, a->size, 0, false};
    ct_sink sink = {dl_begin, dl_data, &d};
    ct_request rq = {.method = "GET", .path = path, .body_fd = -1,
                     .range_from = from, .if_range = etag, .sink = &sink,
                     .progress_name = a->name,
                     .direction = DECOMP_CLIENT_DOWNLOAD,
                     .progress_base = from, .progress_total = a->size};
    ct_response rs;
    rc = ct_perform(c, &rq, &rs);
    f->downloaded += d.written;
    int64_t have_now = (d.restarted ? 0 : from) + d.written;
    long status = rs.status;
    if (rc == DECOMP_OK && status / 100 != 2 && status != 416)
      rc = client_http_error(c, "GET", path, &rs);
    ct_response_clear(&rs);
    if (rc != DECOMP_OK) {
      if (rc == DECOMP_ERR_TRANSFER || rc == DECOMP_ERR_CANCELLED ||
          rc == DECOMP_ERR_CONNECT) {
        keep_partial = have_now > 0;
        if (keep_partial) {
          char m[256];
          snprintf(m, sizeof m,
                   "; %lld of %lld bytes of %s are kept and the next fetch "
                   "resumes from there",
                   (long long)have_now, (long long)a->size, a->name);
          client_errmsg_wrap(c, NULL, m);
        }
      }
      goto done;
    }
    if (status == 416) { /* our partial is not a prefix of theirs */
      have = 0;
      continue;
    }
    f->resumed_from = d.restarted ? 0 : from;
    char got[65];
    client_sha_final(sha, got);
    if (have_now == a->size && strcmp(got, hex) == 0)
      goto verified;
    if (from > 0 && !d.restarted && attempt == 0) {
      have = 0; /* the kept prefix may be what is wrong: once more, whole */
      continue;
    }
    rc = client_fail(c, DECOMP_ERR_DIGEST_MISMATCH,
                     "fetch %s of job %s: the %lld bytes received hash to "
                     "sha256:%s, the job lists %s (%lld bytes); the download "
                     "was discarded",
                     a->name, job_id, (long long)have_now, got, a->digest,
                     (long long)a->size);
    goto done;
  }
  rc = client_fail(c, DECOMP_ERR_SERVER, "fetch %s of job %s: the server "
                   "refused every range", a->name, job_id);
  goto done;

verified:
  if (fsync(fd) != 0) {
    int e = errno;
    rc = client_fail(c, client_errno_code(e), "%s: %s", part, strerror(e));
    goto done;
  }
  if (rename(part, blob) != 0) {
    int e = errno;
    rc = client_fail(c, client_errno_code(e), "%s: %s", blob, strerror(e));
    goto done;
  }
  part[0] = '\0';
done:
  if (fd >= 0)
    close(fd);
  if (part[0] && !keep_partial)
    unlink(part);
  return rc;
}

int client_job_record_load(decomp_client *c, const char *id, json_t **out) {
  char path[DECOMP_CLIENT_PATH_LEN];
  *out = NULL;
  if (decomp_client_cache_job_path(c->cache, id, path, sizeof path) !=
      DECOMP_OK)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", id);
  json_error_t err;
  json_t *rec = json_load_file(path, 0, &err);
  if (!rec) {
    if (access(path, F_OK) != 0)
      return client_fail(c, DECOMP_ERR_OFFLINE_MISS,
                         "job %s is not in the cache %s (fetch it once "
                         "online first)",
                         id, c->cache);
    return client_fail(c, DECOMP_ERR_BAD_JSON, "%s: %s", path, err.text);
  }
  if (!json_is_object(json_object_get(rec, "job"))) {
    json_decref(rec);
    return client_fail(c, DECOMP_ERR_BAD_JSON, "%s: no job object", path);
  }
  *out = rec;
  return DECOMP_OK;
}

static int record_save(decomp_client *c, const decomp_client_job *j) {
  char path[DECOMP_CLIENT_PATH_LEN], dir[DECOMP_CLIENT_PATH_LEN];
  if (decomp_client_cache_job_path(c->cache, j->id, path, sizeof path) !=
      DECOMP_OK)
    return client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "job id '%s' is not "
                       "valid", j->id);
  snprintf(dir, sizeof dir, "%s/jobs", c->cache);
  int err = client_mkdirs(dir, 0755);
  if (err)
    return client_fail(c, client_errno_code(err), "cache %s: %s", dir,
                       strerror(err));
  json_t *job = json_loads(j->json ? j->json : "{}", 0, NULL);
  json_t *arts = json_object();
  for (size_t i = 0; i < j->n_artifacts; i++)
    json_object_set_new(arts, j->artifacts[i].name,
                        json_pack("{s:s, s:I, s:s}", "digest",
                                  j->artifacts[i].digest, "size",
                                  (json_int_t)j->artifacts[i].size,
                                  "media_type", j->artifacts[i].media_type));
  json_t *rec = json_pack("{s:s, s:i, s:s, s:o, s:o}", "format",
                          "decompd.cache.job", "version", 1, "server", c->url,
                          "job", job ? job : json_object(), "artifacts", arts);
  char *text = rec ? json_dumps(rec, JSON_INDENT(1) | JSON_PRESERVE_ORDER)
                   : NULL;
  json_decref(rec);
  if (!text)
    return client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
  int rc = client_write_atomic(c, path, text, strlen(text));
  free(text);
  return rc;
}

int decomp_client_fetch(decomp_client *c, const char *id, const char *only,
                        const char *dest_dir, decomp_client_file *out,
                        size_t *out_n) {
  decomp_client_job j = {0};
  client_sha *sha = NULL;
  *out_n = 0;
  int rc = decomp_client_job_get(c, id, &j);
  if (rc != DECOMP_OK)
    goto done;
  if (j.state != DECOMP_JOB_SUCCEEDED) {
    rc = client_fail(c, DECOMP_ERR_CONFLICT,
                     "job %s is %s: artifacts exist once it has succeeded%s%s",
                     id, decomp_job_state_name(j.state),
                     j.error_message[0] ? ": " : "", j.error_message);
    goto done;
  }
  if (!(sha = client_sha_new())) {
    rc = client_fail(c, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  bool found = !only;
  for (size_t i = 0; i < j.n_artifacts; i++) {
    if (only && strcmp(only, j.artifacts[i].name) != 0)
      continue;
    found = true;
    rc = fetch_one(c, id, &j.artifacts[i], sha, &out[*out_n]);
    if (rc != DECOMP_OK)
      goto done;
    (*out_n)++;
  }
  if (!found) {
    rc = client_fail(c, DECOMP_ERR_NOT_FOUND, "job %s has no artifact '%s'",
                     id, only);
    goto done;
  }
  if (!c->offline && (rc = record_save(c, &j)) != DECOMP_OK)
    goto done;
  if (dest_dir) {
    int err = client_mkdirs(dest_dir, 0755);
    if (err) {
      rc = client_fail(c, client_errno_code(err), "%s: %s", dest_dir,
                       strerror(err));
      goto done;
    }
    for (size_t i = 0; i < *out_n; i++) {
      char dst[DECOMP_CLIENT_PATH_LEN];
      int k = snprintf(dst, sizeof dst, "%s/%s", dest_dir, out[i].name);
      if (k < 0 || (size_t)k >= sizeof dst) {
        rc = client_fail(c, DECOMP_ERR_INVALID_ARGUMENT, "%s: path too long",
                         dest_dir);
        goto done;
      }
      if ((rc = client_copy_atomic(c, out[i].path, dst)) != DECOMP_OK)
        goto done;
      snprintf(out[i].path, sizeof out[i].path, "%s", dst);
    }
  }
done:
  client_sha_free(sha);
  decomp_client_job_clear(&j);
  return rc;
}
