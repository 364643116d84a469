/* cache.c — the client's local, content-addressed cache (layout in
 * decomp/client.h, shared with python/decompd/client.py): paths, SHA-256
 * (OpenSSL EVP), partial downloads claimed by rename, and files written
 * through a unique temporary file, fsync and rename. No HTTP here. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "client_internal.h"

/* ---- SHA-256 -------------------------------------------------------------- */

struct client_sha {
  EVP_MD_CTX *md;
};

client_sha *client_sha_new(void) {
  client_sha *h = calloc(1, sizeof *h);
  if (!h)
    return NULL;
  h->md = EVP_MD_CTX_new();
  if (!h->md || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
    client_sha_free(h);
    return NULL;
  }
  return h;
}

void client_sha_update(client_sha *h, const void *buf, size_t len) {
  EVP_DigestUpdate(h->md, buf, len);
}

void client_sha_reset(client_sha *h) {
  EVP_DigestInit_ex(h->md, EVP_sha256(), NULL);
}

void client_sha_final(client_sha *h, char hex[65]) {
  unsigned char d[32];
  unsigned int n = 0;
  EVP_DigestFinal_ex(h->md, d, &n);
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", d[i]);
  client_sha_reset(h);
}

void client_sha_free(client_sha *h) {
  if (!h)
    return;
  EVP_MD_CTX_free(h->md);
  free(h);
}

int client_sha_fd(client_sha *h, int fd, int64_t len) {
  static __thread unsigned char buf[1 << 16];
  int64_t off = 0;
  while (len < 0 || off < len) {
    size_t want = sizeof buf;
    if (len >= 0 && (int64_t)want > len - off)
      want = (size_t)(len - off);
    ssize_t n = pread(fd, buf, want, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return errno;
    if (n == 0)
      return len < 0 ? 0 : EIO; /* shorter than promised */
    client_sha_update(h, buf, (size_t)n);
    off += n;
  }
  return 0;
}

bool client_digest_hex(const char *digest, char hex[65]) {
  if (!digest)
    return false;
  if (strncmp(digest, "sha256:", 7) == 0)
    digest += 7;
  if (strlen(digest) != 64)
    return false;
  for (int i = 0; i < 64; i++) {
    char ch = digest[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
      return false;
    hex[i] = ch;
  }
  hex[64] = '\0';
  return true;
}

/* ---- paths ---------------------------------------------------------------- */

int decomp_client_cache_blob_path(const char *cache_dir, const char *digest,
                                  char *buf, size_t len) {
  char hex[65];
  if (!cache_dir || !cache_dir[0] || !buf || !client_digest_hex(digest, hex))
    return DECOMP_ERR_INVALID_ARGUMENT;
  int n = snprintf(buf, len, "%s/blobs/sha256/%.2s/%s", cache_dir, hex, hex);
  return n < 0 || (size_t)n >= len ? DECOMP_ERR_INVALID_ARGUMENT : DECOMP_OK;
}

int decomp_client_cache_job_path(const char *cache_dir, const char *id,
                                 char *buf, size_t len) {
  if (!cache_dir || !cache_dir[0] || !id || !buf)
    return DECOMP_ERR_INVALID_ARGUMENT;
  size_t k = strlen(id);
  if (k == 0 || k > 64)
    return DECOMP_ERR_INVALID_ARGUMENT;
  for (size_t i = 0; i < k; i++) {
    char ch = id[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
          (ch >= 'A' && ch <= 'Z') || ch == '_' || ch == '-'))
      return DECOMP_ERR_INVALID_ARGUMENT;
  }
  int n = snprintf(buf, len, "%s/jobs/%s.json", cache_dir, id);
  return n < 0 || (size_t)n >= len ? DECOMP_ERR_INVALID_ARGUMENT : DECOMP_OK;
}

int decomp_client_default_cache_dir(char *buf, size_t len) {
  const char *v = getenv("DECOMPD_CACHE");
  int n = -1;
  if (v && v[0])
    n = snprintf(buf, len, "%s", v);
  else if ((v = getenv("XDG_CACHE_HOME")) && v[0] == '/')
    n = snprintf(buf, len, "%s/decompd", v);
  else if ((v = getenv("HOME")) && v[0])
    n = snprintf(buf, len, "%s/.cache/decompd", v);
  if (n < 0 || (size_t)n >= len)
    return DECOMP_ERR_INVALID_ARGUMENT;
  while (n > 1 && buf[n - 1] == '/')
    buf[--n] = '\0';
  return DECOMP_OK;
}

bool client_artifact_name_ok(const char *name, size_t cap, const char **why) {
  size_t n = name ? strlen(name) : 0;
  *why = NULL;
  if (n == 0)
    *why = "is empty";
  else if (n >= cap)
    *why = "is too long";
  else if (name[0] == '.')
    *why = "starts with '.'";
  else if (strchr(name, '/') || strchr(name, '\\'))
    *why = "is a path, not a plain file name";
  for (size_t i = 0; !*why && i < n; i++)
    if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
      *why = "holds a control character";
  return *why == NULL;
}

/* ---- files ---------------------------------------------------------------- */

int client_mkdirs(const char *path, int mode) {
  char tmp[DECOMP_CLIENT_PATH_LEN];
  int n = snprintf(tmp, sizeof tmp, "%s", path);
  if (n < 0 || (size_t)n >= sizeof tmp)
    return ENAMETOOLONG;
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST)
      return errno;
    *p = '/';
  }
  if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST)
    return errno;
  return 0;
}

int client_errno_code(int err) {
  if (err == ENOSPC || err == EDQUOT)
    return DECOMP_ERR_DISK_FULL;
  if (err == ENOMEM)
    return DECOMP_ERR_NOMEM;
  return DECOMP_ERR_IO;
}

/* A name no other process or thread uses: pid, time, a counter. */
static void unique_suffix(char *buf, size_t len) {
  static unsigned long counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  unsigned long k = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
  snprintf(buf, len, "%ld-%lx%lx-%lu", (long)getpid(), (unsigned long)ts.tv_sec,
           (unsigned long)ts.tv_nsec, k);
}

int client_partial_claim(const char *tmp_dir, const char *hex, char *path,
                         size_t len, int64_t *have) {
  char sfx[64];
  unique_suffix(sfx, sizeof sfx);
  int n = snprintf(path, len, "%s/%s.%s.part", tmp_dir, hex, sfx);
  if (n < 0 || (size_t)n >= len) {
    errno = ENAMETOOLONG;
    return -1;
  }
  *have = 0;
  size_t hl = strlen(hex);
  for (int tries = 0; tries < 4; tries++) {
    DIR *d = opendir(tmp_dir);
    if (!d)
      break;
    char best[512] = "";
    int64_t best_size = -1;
    struct dirent *de;
    while ((de = readdir(d))) {
      size_t k = strlen(de->d_name);
      if (k <= hl + 6 || strncmp(de->d_name, hex, hl) != 0 ||
          de->d_name[hl] != '.' || strcmp(de->d_name + k - 5, ".part") != 0)
        continue;
      struct stat st;
      char full[DECOMP_CLIENT_PATH_LEN];
      snprintf(full, sizeof full, "%s/%s", tmp_dir, de->d_name);
      if (stat(full, &st) == 0 && S_ISREG(st.st_mode) &&
          (int64_t)st.st_size > best_size && k < sizeof best) {
        best_size = (int64_t)st.st_size;
        memcpy(best, de->d_name, k + 1);
      }
    }
    closedir(d);
    if (!best[0])
      break;
    char full[DECOMP_CLIENT_PATH_LEN];
    snprintf(full, sizeof full, "%s/%s", tmp_dir, best);
    if (rename(full, path) == 0) {
      int fd = open(path, O_RDWR | O_CLOEXEC);
      if (fd < 0)
        return -1;
      struct stat st;
      if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
      }
      *have = (int64_t)st.st_size;
      return fd;
    }
    /* Another fetch claimed it first: look again. */
  }
  return open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
}

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return errno;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int temp_beside(const char *path, char *tmp, size_t len) {
  char sfx[64];
  unique_suffix(sfx, sizeof sfx);
  const char *slash = strrchr(path, '/');
  int n;
  if (slash)
    n = snprintf(tmp, len, "%.*s/.%s.%s.tmp", (int)(slash - path), path,
                 slash + 1, sfx);
  else
    n = snprintf(tmp, len, ".%s.%s.tmp", path, sfx);
  if (n < 0 || (size_t)n >= len) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
}

int client_write_atomic(decomp_client *c, const char *path, const char *text,
                        size_t len) {
  char tmp[DECOMP_CLIENT_PATH_LEN + 64];
  int fd = temp_beside(path, tmp, sizeof tmp);
  if (fd < 0)
    return client_fail(c, client_errno_code(errno), "%s: %s", path,
                       strerror(errno));
  int err = write_all(fd, text, len);
  if (!err && fsync(fd) != 0)
    err = errno;
  if (close(fd) != 0 && !err)
    err = errno;
  if (!err && rename(tmp, path) != 0)
    err = errno;
  if (err) {
    unlink(tmp);
    return client_fail(c, client_errno_code(err), "%s: %s", path,
                       strerror(err));
  }
  return DECOMP_OK;
}

int client_copy_atomic(decomp_client *c, const char *src, const char *dst) {
  static __thread char buf[1 << 16];
  char tmp[DECOMP_CLIENT_PATH_LEN + 64];
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0)
    return client_fail(c, DECOMP_ERR_IO, "%s: %s", src, strerror(errno));
  int out = temp_beside(dst, tmp, sizeof tmp);
  if (out < 0) {
    int e = errno;
    close(in);
    return client_fail(c, client_errno_code(e), "%s: %s", dst, strerror(e));
  }
  int err = 0;
  bool read_err = false;
  /* In the kernel when it can (no copy through user space; a reflink on
   * file systems that share extents), else by read and write. */
  bool kernel = true;
  for (;;) {
    if (kernel) {
      ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)1 << 30, 0);
      if (n > 0)
        continue;
      if (n == 0)
        break;
      if (errno == EINTR)
        continue;
      if (errno != EXDEV && errno != ENOSYS && errno != EINVAL &&
          errno != EOPNOTSUPP && errno != EBADF) {
        err = errno;
        break;
      }
      kernel = false; /* not here: the file offsets are where it stopped */
    }
    ssize_t n = read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      err = errno;
      read_err = true;
      break;
    }
    if (n == 0)
      break;
    if ((err = write_all(out, buf, (size_t)n)))
      break;
  }
  if (!err && fsync(out) != 0)
    err = errno;
  if (close(out) != 0 && !err)
    err = errno;
  close(in);
  if (!err && rename(tmp, dst) != 0)
    err = errno;
  if (err) {
    unlink(tmp);
    return client_fail(c, read_err ? DECOMP_ERR_IO : client_errno_code(err),
                       "%s: %s", read_err ? src : dst, strerror(err));
  }
  return DECOMP_OK;
}
