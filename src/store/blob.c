/* blob.c — the content-addressed blob folder: DATA_DIR/blobs/sha256/ab/<hex>.
 *
 * A blob is written to a temp file under DATA_DIR/tmp (same file system),
 * hashed on the fly, fsynced, then renamed into place and its folder fsynced,
 * so a crash leaves either the whole blob or none (plus a temp file that
 * store_open removes). DATA_DIR/tmp holds nothing but what a live daemon is
 * writing: uploads, a job's outputs (and the engine's ".NAME.tmp-XXXXXX"
 * files behind them), a TorchScript reader's work folder; the owner empties
 * it at start, dot-names included. Blob files are never modified after the
 * rename.
 *
 * An upload's SHA-256 is computed by a helper thread that reads back what
 * the connection's thread has written (from the page cache), so hashing
 * overlaps receiving and writing instead of adding to them. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <ftw.h>

#include "s3.h"
#include "store_int.h"

static int io_err(int e) {
  return e == ENOSPC || e == EDQUOT ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO;
}

static int mkdir_p(const char *path) {
  char buf[STORE_PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "%s: path too long", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(buf, 0750) != 0 && errno != EEXIST)
        return store_fail(io_err(errno), "mkdir %s: %s", buf, strerror(errno));
      *p = c;
      if (c == '\0')
        break;
    }
  }
  return DECOMP_OK;
}

static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return store_fail(DECOMP_ERR_IO, "open %s: %s", dir, strerror(errno));
  int rc = fsync(fd) == 0 ? DECOMP_OK
                          : store_fail(DECOMP_ERR_IO, "fsync %s: %s", dir,
                                       strerror(errno));
  close(fd);
  return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)ftw;
  if (flag == FTW_DP)
    rmdir(path);
  else
    unlink(path);
  return 0;
}

#define S3_SCHEME "s3://"

/* The blob folder `blobs` names (NULL or "": DATA_DIR/blobs; "file:PATH":
 * PATH; "s3://…": DATA_DIR/blobs, this node's copies), with its "/sha256"
 * level, into buf. */
static int blobs_folder(const char *data_dir, const char *blobs, char *buf,
                        size_t len) {
  int n;
  if (!blobs || !blobs[0] || strncmp(blobs, S3_SCHEME, 5) == 0)
    n = snprintf(buf, len, "%s/blobs/sha256", data_dir);
  else if (strncmp(blobs, "file:", 5) == 0 && blobs[5])
    n = snprintf(buf, len, "%s/sha256", blobs + 5);
  else
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "blobs = %s: expected file:PATH (a folder, shared by "
                      "the nodes that share the index) or s3://BUCKET/PREFIX",
                      blobs);
  if (n >= (int)len)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "blobs = %s: path too long",
                      blobs);
  return DECOMP_OK;
}

/* Open the object store of blobs = s3://BUCKET[/PREFIX]. */
static int s3_init(const store_options *o, store_paths *p) {
  const char *spec = o->blobs + strlen(S3_SCHEME);
  char bucket[256], endpoint[512];
  size_t bn = strcspn(spec, "/");
  if (bn == 0 || bn >= sizeof bucket)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT,
                      "blobs = %s: expected s3://BUCKET or s3://BUCKET/PREFIX",
                      o->blobs);
  memcpy(bucket, spec, bn);
  bucket[bn] = '\0';
  const char *region =
      o->s3_region && o->s3_region[0] ? o->s3_region : "us-east-1";
  if (o->s3_endpoint && o->s3_endpoint[0])
    snprintf(endpoint, sizeof endpoint, "%s", o->s3_endpoint);
  else
    snprintf(endpoint, sizeof endpoint, "https://s3.%s.amazonaws.com", region);
  s3_config c = {.endpoint = endpoint,
                 .region = region,
                 .bucket = bucket,
                 .prefix = spec[bn] ? spec + bn + 1 : "",
                 .access_key = o->s3_access_key,
                 .secret_key = o->s3_secret_key};
  int rc = s3_open(&c, &p->s3);
  if (rc != DECOMP_OK) {
    char why[1024]; /* the thread's message is rewritten below */
    snprintf(why, sizeof why, "%s", store_errmsg());
    return store_fail(rc, "blobs = %s: %s", o->blobs, why);
  }
  return DECOMP_OK;
}

void store_blob_fini(store_paths *p) {
  s3_close(p->s3);
  p->s3 = NULL;
}

int store_blob_init(const store_options *o, bool clean, store_paths *p) {
  const char *data_dir = o->data_dir;
  int rc = blobs_folder(data_dir, o->blobs, p->blobs, sizeof p->blobs);
  if (rc != DECOMP_OK)
    return rc;
  if (!p->s3 && o->blobs && strncmp(o->blobs, S3_SCHEME, 5) == 0 &&
      (rc = s3_init(o, p)) != DECOMP_OK)
    return rc;
  if (snprintf(p->root, sizeof p->root, "%s", data_dir) >= (int)sizeof p->root ||
      snprintf(p->tmp, sizeof p->tmp, "%s/tmp", data_dir) >=
          (int)sizeof p->tmp ||
      snprintf(p->partial, sizeof p->partial, "%s/partial", data_dir) >=
          (int)sizeof p->partial ||
      snprintf(p->db, sizeof p->db, "%s/decompd.db", data_dir) >=
          (int)sizeof p->db ||
      snprintf(p->reserve, sizeof p->reserve, "%s/decompd.reserve",
               data_dir) >= (int)sizeof p->reserve)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "%s: path too long",
                      data_dir);
  rc = mkdir_p(p->blobs);
  if (rc == DECOMP_OK)
    rc = mkdir_p(p->tmp);
  if (rc == DECOMP_OK)
    rc = mkdir_p(p->partial);
  if (rc == DECOMP_OK && !realpath(data_dir, p->real))
    p->real[0] = '\0';
  if (rc != DECOMP_OK || !clean)
    return rc;
  return store_tmp_empty(p->tmp);
}

int store_tmp_empty(const char *tmp) {
  DIR *d = opendir(tmp);
  if (!d)
    return store_fail(DECOMP_ERR_IO, "opendir %s: %s", tmp, strerror(errno));
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    /* Every entry but the folder's own: the engine writes a job's outputs
     * as ".NAME.tmp-XXXXXX" first, as large as the output. */
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno == EISDIR) {
      char sub[STORE_PATH_MAX + 256];
      snprintf(sub, sizeof sub, "%s/%s", tmp, e->d_name);
      nftw(sub, rm_entry, 8, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    }
  }
  closedir(d);
  return DECOMP_OK;
}

const char *blobs_tmp_dir(store *s) { return store_paths_of(s)->tmp; }

/* ---- the reserve (store_int.h) ----------------------------------------- */

int store_reserve_fill(const store_paths *p) {
  int fd = open(p->reserve, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0)
    return store_fail(io_err(errno), "reserve: %s", strerror(errno));
  struct stat st;
  int rc = DECOMP_OK;
  if (fstat(fd, &st) != 0 ||
      (int64_t)st.st_blocks * 512 < (int64_t)STORE_RESERVE_BYTES) {
    /* Allocated blocks, not a hole: the point is that they are taken. */
    int e = posix_fallocate(fd, 0, STORE_RESERVE_BYTES);
    if (e != 0)
      rc = store_fail(io_err(e), "reserve: %s", strerror(e));
    else if (fsync(fd) != 0)
      rc = store_fail(io_err(errno), "reserve: %s", strerror(errno));
  }
  close(fd);
  return rc;
}

bool store_reserve_release(const store_paths *p) {
  struct stat st;
  if (stat(p->reserve, &st) != 0 || st.st_blocks == 0)
    return false;
  return unlink(p->reserve) == 0;
}

/* ---- messages without server paths -------------------------------------- */

/* A character that may be part of a path (so a root found after one is
 * inside another path, not the start of ours). */
static bool path_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '/' || c == '.' || c == '_' ||
         c == '-' || c == '~' || c == '+';
}

/* Where a path ends in a message ("open PATH: No such file", "(PATH)"). */
static bool path_end(char c) {
  return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == ':' ||
         c == ',' || c == ';' || c == '"' || c == '\'' || c == ')' || c == ']';
}

/* What the file at `rest` under the data dir is, for a message. */
static void path_word(const char *rest, size_t n, char *w, size_t wlen) {
  static const char BLOBS[] = "/blobs/sha256/";
  size_t nb = sizeof BLOBS - 1;
  if (n == 0)
    snprintf(w, wlen, "the data dir");
  else if (n > 12 && strncmp(rest, "/tmp/upload-", 12) == 0)
    snprintf(w, wlen, "the upload");
  else if (n > 5 && strncmp(rest, "/tmp/", 5) == 0)
    snprintf(w, wlen, "a temp file");
  else if (n > 9 && strncmp(rest, "/partial/", 9) == 0)
    snprintf(w, wlen, "the partial upload");
  else if (n == 4 && strncmp(rest, "/tmp", 4) == 0)
    snprintf(w, wlen, "the temp folder");
  else if (n == nb + 3 + 64 && strncmp(rest, BLOBS, nb) == 0 &&
           rest[nb + 2] == '/')
    snprintf(w, wlen, "blob sha256:%.64s", rest + nb + 3);
  else if (n >= 6 && strncmp(rest, "/blobs", 6) == 0)
    snprintf(w, wlen, "the blob folder");
  else if (n >= 11 && strncmp(rest, "/decompd.db", 11) == 0)
    snprintf(w, wlen, "the database");
  else
    snprintf(w, wlen, "a file in the data dir");
}

void blobs_scrub(store *s, const char *in, char *out, size_t outlen) {
  const store_paths *p = store_paths_of(s);
  /* the resolved root first: it is the longer one when they differ */
  const char *roots[2] = {p->real, p->root};
  size_t o = 0;
  if (outlen == 0)
    return;
  for (size_t i = 0; in[i] && o + 1 < outlen;) {
    size_t rlen = 0;
    if (i == 0 || !path_char(in[i - 1]))
      for (int k = 0; k < 2 && !rlen; k++) {
        size_t n = strlen(roots[k]);
        if (n > 0 && strncmp(in + i, roots[k], n) == 0 &&
            (in[i + n] == '/' || path_end(in[i + n])))
          rlen = n;
      }
    if (!rlen) {
      out[o++] = in[i++];
      continue;
    }
    size_t end = i + rlen;
    while (!path_end(in[end]))
      end++;
    char word[96];
    path_word(in + i + rlen, end - i - rlen, word, sizeof word);
    size_t wn = strlen(word);
    if (o + wn >= outlen)
      break;
    memcpy(out + o, word, wn);
    o += wn;
    i = end;
  }
  out[o] = '\0';
}

/* The blob's file in the folder, whether it is there or not. */
static int blob_file(store *s, const char *digest, char *buf, size_t len) {
  if (!store_digest_valid(digest))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "bad digest");
  const char *hex = digest + 7;
  if (snprintf(buf, len, "%s/%.2s/%s", store_paths_of(s)->blobs, hex, hex) >=
      (int)len)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "blob path too long");
  return DECOMP_OK;
}

/* The blob's key in the object store: sha256/<hex>. */
static void blob_key(const char *digest, char key[80]) {
  snprintf(key, 80, "sha256/%s", digest + 7);
}

/* With an object store: bring the blob into the folder (at `path`) unless
 * it is there, fetched through a temp file beside it, checked against its
 * digest (DECOMP_ERR_DIGEST_MISMATCH, nothing kept, when the object store
 * gave other bytes), fsynced and renamed. DECOMP_ERR_NOT_FOUND when the
 * blob is nowhere. */
static int blob_fetch(store *s, const char *digest, const char *path) {
  struct stat st;
  if (stat(path, &st) == 0)
    return DECOMP_OK;
  const store_paths *p = store_paths_of(s);
  if (!p->s3)
    return store_fail(DECOMP_ERR_NOT_FOUND, "blob %s: not stored", digest);
  char dir[STORE_PATH_MAX + 8], tmp[STORE_PATH_MAX + 32], key[80];
  snprintf(dir, sizeof dir, "%s/%.2s", p->blobs, digest + 7);
  if (snprintf(tmp, sizeof tmp, "%s/.get-XXXXXX", dir) >= (int)sizeof tmp)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "blob path too long");
  int rc = mkdir_p(dir);
  if (rc != DECOMP_OK)
    return rc;
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0)
    return store_fail(io_err(errno), "create %s: %s", tmp, strerror(errno));
  blob_key(digest, key);
  rc = s3_get_fd(p->s3, key, 0, -1, fd, digest + 7, NULL);
  if (rc == DECOMP_ERR_DIGEST_MISMATCH) {
    char why[1024];
    snprintf(why, sizeof why, "%s", store_errmsg());
    store_fail(rc, "blob %s: the object store's copy is not that digest: "
               "refused (%s)", digest, why);
  }
  if (rc == DECOMP_OK && fsync(fd) != 0)
    rc = store_fail(io_err(errno), "fsync %s: %s", tmp, strerror(errno));
  close(fd);
  if (rc == DECOMP_OK && rename(tmp, path) != 0)
    rc = store_fail(io_err(errno), "rename %s: %s", path, strerror(errno));
  if (rc != DECOMP_OK)
    unlink(tmp);
  return rc;
}

int blobs_blob_path(store *s, const char *digest, char *buf, size_t len) {
  int rc = blob_file(s, digest, buf, len);
  /* in the folder for a reader to map: fetched when it is elsewhere; a
   * blob that is nowhere keeps its (absent) path, as in a folder */
  if (rc == DECOMP_OK && store_paths_of(s)->s3 &&
      (rc = blob_fetch(s, digest, buf)) == DECOMP_ERR_NOT_FOUND)
    rc = DECOMP_OK;
  return rc;
}

int blobs_blob_stat(store *s, const char *digest, int64_t *size) {
  char path[STORE_PATH_MAX + 80];
  int rc = blob_file(s, digest, path, sizeof path);
  if (rc != DECOMP_OK)
    return rc;
  struct stat st;
  if (stat(path, &st) == 0) {
    *size = st.st_size;
    return DECOMP_OK;
  }
  const store_paths *p = store_paths_of(s);
  if (!p->s3)
    return store_fail(DECOMP_ERR_NOT_FOUND, "blob %s: not stored", digest);
  char key[80];
  bool exists = false;
  blob_key(digest, key);
  if ((rc = s3_head(p->s3, key, &exists, size)) != DECOMP_OK)
    return rc;
  return exists ? DECOMP_OK
                : store_fail(DECOMP_ERR_NOT_FOUND, "blob %s: not stored",
                             digest);
}

int blobs_blob_remove(store *s, const char *digest) {
  char path[STORE_PATH_MAX + 80];
  int rc = blob_file(s, digest, path, sizeof path);
  if (rc != DECOMP_OK)
    return rc;
  const store_paths *p = store_paths_of(s);
  if (p->s3) { /* the object first: a copy without it would be served */
    char key[80];
    blob_key(digest, key);
    if ((rc = s3_delete(p->s3, key)) != DECOMP_OK)
      return rc;
  }
  if (unlink(path) != 0 && errno != ENOENT)
    return store_fail(DECOMP_ERR_IO, "unlink %s: %s", path, strerror(errno));
  return DECOMP_OK;
}

int blobs_blob_drop_copy(store *s, const char *digest) {
  char path[STORE_PATH_MAX + 80];
  if (!store_paths_of(s)->s3)
    return DECOMP_OK; /* the file is the blob */
  int rc = blob_file(s, digest, path, sizeof path);
  if (rc != DECOMP_OK)
    return rc;
  if (unlink(path) != 0 && errno != ENOENT)
    return store_fail(DECOMP_ERR_IO, "unlink %s: %s", path, strerror(errno));
  return DECOMP_OK;
}

int blobs_blob_open(store *s, const char *digest, int *fd, int64_t *size) {
  char path[STORE_PATH_MAX + 80];
  int rc = blob_file(s, digest, path, sizeof path);
  if (rc == DECOMP_OK && store_paths_of(s)->s3)
    rc = blob_fetch(s, digest, path);
  if (rc != DECOMP_OK)
    return rc;
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0)
    return store_fail(errno == ENOENT ? DECOMP_ERR_NOT_FOUND : DECOMP_ERR_IO,
                      "blob %s: %s", digest, strerror(errno));
  struct stat st;
  if (fstat(f, &st) != 0) {
    int e = errno;
    close(f);
    return store_fail(DECOMP_ERR_IO, "blob %s: %s", digest, strerror(e));
  }
  *fd = f;
  *size = st.st_size;
  return DECOMP_OK;
}

int blobs_blob_read(store *s, const char *digest, int64_t max, char **out,
                    size_t *len) {
  *out = NULL;
  int fd;
  int64_t size;
  int rc = blobs_blob_open(s, digest, &fd, &size);
  if (rc != DECOMP_OK)
    return rc;
  if (size > max) {
    close(fd);
    return store_fail(DECOMP_ERR_TOO_LARGE, "blob %s is %lld bytes, over %lld",
                      digest, (long long)size, (long long)max);
  }
  char *buf = malloc((size_t)size + 1);
  size_t got = 0;
  if (!buf)
    rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
  while (rc == DECOMP_OK && got < (size_t)size) {
    ssize_t n = read(fd, buf + got, (size_t)size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      rc = store_fail(DECOMP_ERR_IO, "blob %s: %s", digest,
                      n < 0 ? strerror(errno) : "shorter than it was");
    else
      got += (size_t)n;
  }
  close(fd);
  if (rc != DECOMP_OK) {
    free(buf);
    return rc;
  }
  buf[got] = '\0';
  *out = buf;
  if (len)
    *len = got;
  return DECOMP_OK;
}

/* Copy the file `src` to `path` in the folder `dir` (another file system):
 * through a temp file beside it, fsynced, then renamed, so a reader sees
 * the whole blob or none. */
static int copy_into(const char *src, const char *dir, const char *path) {
  char tmp[STORE_PATH_MAX + 32];
  if (snprintf(tmp, sizeof tmp, "%s/.copy-XXXXXX", dir) >= (int)sizeof tmp)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "blob path too long");
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0)
    return store_fail(DECOMP_ERR_IO, "open %s: %s", src, strerror(errno));
  int out = mkostemp(tmp, O_CLOEXEC);
  if (out < 0) {
    int e = errno;
    close(in);
    return store_fail(io_err(e), "create %s: %s", tmp, strerror(e));
  }
  int rc = DECOMP_OK;
  static const size_t STEP = 1 << 20;
  char *buf = malloc(STEP);
  if (!buf)
    rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
  while (rc == DECOMP_OK) {
    ssize_t n = read(in, buf, STEP);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = store_fail(DECOMP_ERR_IO, "read %s: %s", src, strerror(errno));
      break;
    }
    if (n == 0)
      break;
    for (ssize_t off = 0; off < n && rc == DECOMP_OK;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0)
        rc = store_fail(io_err(errno), "write %s: %s", tmp, strerror(errno));
      else
        off += w;
    }
  }
  free(buf);
  close(in);
  if (rc == DECOMP_OK && fsync(out) != 0)
    rc = store_fail(io_err(errno), "fsync %s: %s", tmp, strerror(errno));
  close(out);
  if (rc == DECOMP_OK && rename(tmp, path) != 0)
    rc = store_fail(io_err(errno), "rename %s: %s", path, strerror(errno));
  if (rc != DECOMP_OK)
    unlink(tmp);
  return rc;
}

/* With an object store: put the file `tmp` as the blob `digest` unless the
 * store has it (asked every time: another node may have collected it
 * since this node kept its copy), its digest checked on the way. */
static int blob_put_remote(store *s, const char *tmp, const char *digest) {
  const store_paths *p = store_paths_of(s);
  if (!p->s3)
    return DECOMP_OK;
  char key[80];
  bool exists = false;
  blob_key(digest, key);
  int rc = s3_head(p->s3, key, &exists, NULL);
  if (rc != DECOMP_OK || exists)
    return rc;
  int fd = open(tmp, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc = store_fail(DECOMP_ERR_IO, "open %s: %s", tmp, strerror(errno));
  } else {
    rc = s3_put_fd(p->s3, key, fd, (int64_t)st.st_size, digest + 7, NULL);
  }
  if (fd >= 0)
    close(fd);
  return rc;
}

/* Rename `tmp` (complete and fsynced) to the blob of `digest` (put in the
 * object store first, with one); copied when the blob folder is on another
 * file system. */
static int blob_place(store *s, const char *tmp, const char *digest) {
  char dir[STORE_PATH_MAX + 8], path[STORE_PATH_MAX + 80];
  int rc = blob_file(s, digest, path, sizeof path);
  if (rc == DECOMP_OK)
    rc = blob_put_remote(s, tmp, digest);
  if (rc != DECOMP_OK)
    return rc;
  if (snprintf(dir, sizeof dir, "%s/%.2s", store_paths_of(s)->blobs,
               digest + 7) >= (int)sizeof dir)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "blob path too long");
  if ((rc = mkdir_p(dir)) != DECOMP_OK)
    return rc;
  struct stat st;
  if (stat(path, &st) == 0) { /* deduplicated: same content already there */
    unlink(tmp);
    return DECOMP_OK;
  }
  if (rename(tmp, path) != 0) {
    if (errno != EXDEV)
      return store_fail(io_err(errno), "rename %s: %s", path, strerror(errno));
    /* the blob folder is another file system (blobs = file:PATH) */
    if ((rc = copy_into(tmp, dir, path)) != DECOMP_OK)
      return rc;
    unlink(tmp);
  }
  return fsync_dir(dir);
}

/* ---- uploads ---------------------------------------------------------- */

#define WRITEBACK_STEP (32 << 20)

struct store_upload {
  store *s;
  int fd;          /* written by the connection's thread */
  int64_t size;
  int64_t flushed; /* bytes whose writeback has been started */
  bool finished, committed;
  store_sha256 *h; /* updated by the hasher only, until it is joined */
  char digest[STORE_DIGEST_LEN];
  char path[STORE_PATH_MAX + 64];
  /* the hasher thread */
  int rfd;
  bool hasher_running;
  pthread_t hasher;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int64_t written;  /* guarded by mu: bytes the hasher may read */
  bool stop, abort; /* guarded by mu: no more data / give up */
  bool hash_failed; /* guarded by mu */
};

static void *hasher_main(void *arg) {
  store_upload *u = arg;
  enum { BUF = 1 << 20 };
  char *buf = malloc(BUF);
  int64_t done = 0;
  bool failed = buf == NULL;
  while (!failed) {
    pthread_mutex_lock(&u->mu);
    while (done == u->written && !u->stop && !u->abort)
      pthread_cond_wait(&u->cv, &u->mu);
    int64_t target = u->written;
    bool stop = u->stop, abort = u->abort;
    pthread_mutex_unlock(&u->mu);
    if (abort)
      break;
    while (done < target && !failed) {
      size_t want = target - done < BUF ? (size_t)(target - done) : BUF;
      ssize_t n = pread(u->rfd, buf, want, done);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0 || !store_sha256_update(u->h, buf, (size_t)n))
        failed = true;
      else
        done += n;
    }
    if (stop) /* stop is set after the last write: done == written */
      break;
  }
  free(buf);
  if (failed) {
    pthread_mutex_lock(&u->mu);
    u->hash_failed = true;
    pthread_mutex_unlock(&u->mu);
  }
  return NULL;
}

/* Tell the hasher to finish (or abort) and wait for it. */
static void hasher_join(store_upload *u, bool abort) {
  if (!u->hasher_running)
    return;
  pthread_mutex_lock(&u->mu);
  if (abort)
    u->abort = true;
  else
    u->stop = true;
  pthread_cond_signal(&u->cv);
  pthread_mutex_unlock(&u->mu);
  pthread_join(u->hasher, NULL);
  u->hasher_running = false;
}

int blobs_upload_begin(store *s, store_upload **out) {
  store_upload *u = calloc(1, sizeof *u);
  if (!u)
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  u->s = s;
  u->fd = -1;
  u->rfd = -1;
  pthread_mutex_init(&u->mu, NULL);
  pthread_cond_init(&u->cv, NULL);
  u->h = store_sha256_new();
  char name[40];
  if (!u->h || !store_random_id("upload-", 12, name, sizeof name)) {
    store_upload_free(u);
    return store_fail(DECOMP_ERR_INTERNAL, "hash or random source failed");
  }
  if (snprintf(u->path, sizeof u->path, "%s/%s", store_paths_of(s)->tmp,
               name) >= (int)sizeof u->path) {
    u->path[0] = '\0';
    store_upload_free(u);
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "temp path too long");
  }
  u->fd = open(u->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (u->fd < 0) {
    int rc = store_fail(io_err(errno), "temp file: %s", strerror(errno));
    u->path[0] = '\0';
    store_upload_free(u);
    return rc;
  }
  u->rfd = open(u->path, O_RDONLY | O_CLOEXEC);
  if (u->rfd < 0) {
    int rc = store_fail(io_err(errno), "temp file: %s", strerror(errno));
    store_upload_free(u);
    return rc;
  }
  if (pthread_create(&u->hasher, NULL, hasher_main, u) != 0) {
    store_upload_free(u);
    return store_fail(DECOMP_ERR_NOMEM, "cannot start the hash thread");
  }
  u->hasher_running = true;
  *out = u;
  return DECOMP_OK;
}

int store_upload_write(store_upload *u, const void *buf, size_t len) {
  if (u->finished)
    return store_fail(DECOMP_ERR_INTERNAL, "upload already finished");
  const char *p = buf;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(u->fd, p, left);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return store_fail(io_err(errno), "upload write: %s", strerror(errno));
    }
    p += n;
    left -= (size_t)n;
  }
  u->size += (int64_t)len;
  pthread_mutex_lock(&u->mu);
  u->written = u->size;
  pthread_cond_signal(&u->cv);
  pthread_mutex_unlock(&u->mu);
  /* Start writeback as the data comes, so the fsync at the end waits for
   * the last few megabytes, not the whole file. */
  if (u->size - u->flushed >= WRITEBACK_STEP) {
    sync_file_range(u->fd, u->flushed, u->size - u->flushed,
                    SYNC_FILE_RANGE_WRITE);
    u->flushed = u->size;
  }
  return DECOMP_OK;
}

int64_t store_upload_size(const store_upload *u) { return u->size; }
const char *store_upload_path(const store_upload *u) { return u->path; }

int store_upload_finish(store_upload *u, char digest[STORE_DIGEST_LEN]) {
  if (!u->finished) {
    /* fsync while the hasher catches up, then wait for it */
    int sync_err = fsync(u->fd) != 0 ? errno : 0;
    hasher_join(u, sync_err != 0);
    if (sync_err)
      return store_fail(io_err(sync_err), "upload fsync: %s",
                        strerror(sync_err));
    if (u->hash_failed || !store_sha256_final(u->h, u->digest))
      return store_fail(DECOMP_ERR_INTERNAL, "upload: hashing failed");
    close(u->fd);
    u->fd = -1;
    u->finished = true;
  }
  memcpy(digest, u->digest, STORE_DIGEST_LEN);
  return DECOMP_OK;
}

int store_upload_commit(store_upload *u) {
  if (!u->finished)
    return store_fail(DECOMP_ERR_INTERNAL, "upload not finished");
  int rc = blob_place(u->s, u->path, u->digest);
  if (rc == DECOMP_OK)
    u->committed = true;
  return rc;
}

void store_upload_free(store_upload *u) {
  if (!u)
    return;
  hasher_join(u, true);
  if (u->fd >= 0)
    close(u->fd);
  if (u->rfd >= 0)
    close(u->rfd);
  if (!u->committed && u->path[0])
    unlink(u->path);
  store_sha256_free(u->h);
  pthread_mutex_destroy(&u->mu);
  pthread_cond_destroy(&u->cv);
  free(u);
}

int store_blob_hash_file(const char *path, char digest[STORE_DIGEST_LEN],
                         int64_t *size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return store_fail(DECOMP_ERR_IO, "%s: %s", path, strerror(errno));
  store_sha256 *h = store_sha256_new();
  int rc = DECOMP_OK;
  int64_t total = 0;
  char *buf = malloc(1 << 20);
  if (!h || !buf) {
    rc = store_fail(DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (;;) {
    ssize_t n = read(fd, buf, 1 << 20);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = store_fail(DECOMP_ERR_IO, "read %s: %s", path, strerror(errno));
      goto done;
    }
    if (n == 0)
      break;
    store_sha256_update(h, buf, (size_t)n);
    total += n;
  }
  if (fsync(fd) != 0) {
    rc = store_fail(io_err(errno), "fsync %s: %s", path, strerror(errno));
    goto done;
  }
  if (!store_sha256_final(h, digest)) {
    rc = store_fail(DECOMP_ERR_INTERNAL, "sha256 final failed");
    goto done;
  }
  if (size)
    *size = total;
done:
  free(buf);
  store_sha256_free(h);
  close(fd);
  return rc;
}

int blobs_blob_place_file(store *s, const char *path, const char *digest) {
  return blob_place(s, path, digest);
}

/* ---- resumable uploads ------------------------------------------------- */

struct store_partial {
  store *s;
  int fd;            /* O_APPEND, locked (flock) while the request runs */
  int64_t size;      /* bytes the file holds */
  int64_t appended;  /* by this request */
  bool verified, done; /* hashed and matching / committed or dropped */
  char digest[STORE_DIGEST_LEN];
  char path[STORE_PATH_MAX + 80];
};

static int partial_path(store *s, const char *digest, char *buf, size_t len) {
  if (!store_digest_valid(digest))
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "bad digest");
  if (snprintf(buf, len, "%s/%s", store_paths_of(s)->partial, digest + 7) >=
      (int)len)
    return store_fail(DECOMP_ERR_INVALID_ARGUMENT, "partial path too long");
  return DECOMP_OK;
}

int blobs_partial_open(store *s, const char *digest, int64_t offset,
                       store_partial **out, int64_t *have) {
  if (have)
    *have = -1;
  store_partial *p = calloc(1, sizeof *p);
  if (!p)
    return store_fail(DECOMP_ERR_NOMEM, "out of memory");
  p->s = s;
  p->fd = -1;
  snprintf(p->digest, sizeof p->digest, "%s", digest);
  bool locked = false;
  int rc = partial_path(s, digest, p->path, sizeof p->path);
  if (rc != DECOMP_OK) {
    free(p);
    return rc;
  }
  /* The lock is on the file, and a sweep or a completed upload may remove
   * the name between open and flock: then the file locked is not the one
   * named, and it is opened again. */
  for (int tries = 0; tries < 4 && rc == DECOMP_OK; tries++) {
    p->fd = open(p->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (p->fd < 0) {
      rc = store_fail(io_err(errno), "partial upload: %s", strerror(errno));
      break;
    }
    if (flock(p->fd, LOCK_EX | LOCK_NB) != 0) {
      rc = store_fail(DECOMP_ERR_CONFLICT,
                      "another upload of %s is in progress", digest);
      break;
    }
    locked = true;
    struct stat a, b;
    if (fstat(p->fd, &a) == 0 && stat(p->path, &b) == 0 &&
        a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
      p->size = a.st_size;
      break;
    }
    close(p->fd);
    p->fd = -1;
    locked = false;
  }
  if (rc == DECOMP_OK && p->fd < 0)
    rc = store_fail(DECOMP_ERR_CONFLICT, "upload of %s: the partial upload "
                    "keeps changing; try again", digest);
  if (rc == DECOMP_OK && offset == 0 && p->size > 0) {
    /* a fresh start over what an earlier attempt left */
    if (ftruncate(p->fd, 0) != 0)
      rc = store_fail(io_err(errno), "partial upload: %s", strerror(errno));
    p->size = 0;
  }
  if (rc == DECOMP_OK && offset != p->size) {
    if (have)
      *have = p->size;
    rc = store_fail(DECOMP_ERR_CONFLICT,
                    "upload of %s resumes at byte %lld, not %lld (HEAD "
                    "/v1/blobs/%s gives the offset)",
                    digest, (long long)p->size, (long long)offset, digest);
  }
  if (rc != DECOMP_OK) {
    /* a file made by this open and holding nothing is not a partial */
    struct stat st;
    if (locked && fstat(p->fd, &st) == 0 && st.st_size == 0 && offset != 0)
      unlink(p->path);
    store_partial_free(p);
    return rc;
  }
  *out = p;
  return DECOMP_OK;
}

int store_partial_write(store_partial *p, const void *buf, size_t len) {
  const char *c = buf;
  size_t left = len;
  while (left > 0) {
    ssize_t n = write(p->fd, c, left);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return store_fail(io_err(errno), "upload write: %s", strerror(errno));
    }
    c += n;
    left -= (size_t)n;
    p->size += n;
    p->appended += n;
  }
  return DECOMP_OK;
}

int64_t store_partial_size(const store_partial *p) { return p->size; }
int64_t store_partial_appended(const store_partial *p) { return p->appended; }
const char *store_partial_path(const store_partial *p) { return p->path; }

int store_partial_sync(store_partial *p) {
  if (p->fd >= 0 && fsync(p->fd) != 0)
    return store_fail(io_err(errno), "upload fsync: %s", strerror(errno));
  return DECOMP_OK;
}

int store_partial_verify(store_partial *p) {
  int rc = store_partial_sync(p);
  char got[STORE_DIGEST_LEN];
  int64_t size = 0;
  if (rc == DECOMP_OK)
    rc = store_blob_hash_file(p->path, got, &size);
  if (rc != DECOMP_OK)
    return rc;
  if (strcmp(got, p->digest) != 0) {
    store_partial_drop(p);
    return store_fail(DECOMP_ERR_UPLOAD_DIGEST,
                      "the %lld bytes received have digest %s, not %s (the "
                      "partial upload is discarded: upload it again from "
                      "byte 0)",
                      (long long)size, got, p->digest);
  }
  p->verified = true;
  return DECOMP_OK;
}

int store_partial_commit(store_partial *p) {
  if (!p->verified || p->done)
    return store_fail(DECOMP_ERR_INTERNAL, "upload not verified");
  /* The blob and its loose-blob row under the blob lock, so that no
   * collection runs between the two. */
  store_blob_lock(p->s);
  int rc = blob_place(p->s, p->path, p->digest);
  if (rc == DECOMP_OK)
    rc = store_loose_blob_touch(p->s, p->digest, p->size);
  store_blob_unlock(p->s);
  if (rc == DECOMP_OK)
    p->done = true;
  return rc;
}

void store_partial_drop(store_partial *p) {
  if (!p->done)
    unlink(p->path);
  p->done = true;
}

void store_partial_free(store_partial *p) {
  if (!p)
    return;
  if (p->fd >= 0) {
    if (!p->done)
      fsync(p->fd); /* what came stays for a resume */
    close(p->fd);
  }
  free(p);
}

int blobs_partial_offset(store *s, const char *digest, int64_t *size) {
  char path[STORE_PATH_MAX + 80];
  int rc = partial_path(s, digest, path, sizeof path);
  if (rc != DECOMP_OK)
    return rc;
  struct stat st;
  if (stat(path, &st) != 0)
    return store_fail(errno == ENOENT ? DECOMP_ERR_NOT_FOUND : DECOMP_ERR_IO,
                      "no partial upload of %s", digest);
  *size = st.st_size;
  return DECOMP_OK;
}

int store_partials_sweep(const store_paths *p, int64_t cutoff_ms) {
  DIR *d = opendir(p->partial);
  int removed = 0;
  if (!d)
    return 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
      continue;
    struct stat st;
    /* a request appending holds the lock: leave that one alone */
    if (fstat(fd, &st) == 0 &&
        (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000 <
            cutoff_ms &&
        flock(fd, LOCK_EX | LOCK_NB) == 0) {
      if (unlinkat(dirfd(d), e->d_name, 0) == 0)
        removed++;
    }
    close(fd);
  }
  closedir(d);
  return removed;
}
