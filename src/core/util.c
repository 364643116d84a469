/* util.c — small helpers the engine's files share: file mapping, full
 * writes, globs, the clock, tensor extents. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core.h"

int core_map_file(decomp_ctx *ctx, const char *path, void **out,
                  size_t *out_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return core_fail(ctx, DECOMP_ERR_IO, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return core_fail(ctx, DECOMP_ERR_IO, "%s: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return core_fail(ctx, DECOMP_ERR_IO, "%s: not a regular file", path);
  }
  if (st.st_size == 0) {
    close(fd);
    return core_fail(ctx, DECOMP_ERR_UNKNOWN_FORMAT, "%s: empty file", path);
  }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED)
    return core_fail(ctx, DECOMP_ERR_IO, "%s: mmap: %s", path, strerror(e));
  *out = p;
  *out_len = (size_t)st.st_size;
  return DECOMP_OK;
}

void core_unmap(void *p, size_t len) {
  if (p)
    munmap(p, len);
}

int core_write_all(decomp_ctx *ctx, int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int e = errno;
      return core_fail(ctx, e == ENOSPC ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO,
                       "write: %s", strerror(e));
    }
    p += n;
    len -= (size_t)n;
  }
  return DECOMP_OK;
}

/* Iterative glob with single-star backtracking; `[...]` classes with ranges
 * and `!` negation. */
static const char *class_match(const char *p, char c, bool *matched) {
  bool neg = false, hit = false;
  p++; /* '[' */
  if (*p == '!' || *p == '^') {
    neg = true;
    p++;
  }
  bool first = true;
  while (*p && (first || *p != ']')) {
    first = false;
    char lo = *p, hi = lo;
    if (p[1] == '-' && p[2] && p[2] != ']') {
      hi = p[2];
      p += 3;
    } else {
      p++;
    }
    if (c >= lo && c <= hi)
      hit = true;
  }
  if (*p != ']')
    return NULL; /* unterminated: treat '[' literally */
  *matched = hit != neg;
  return p + 1;
}

bool core_glob_match(const char *pat, const char *s) {
  const char *star_p = NULL, *star_s = NULL;
  while (*s) {
    if (*pat == '*') {
      star_p = ++pat;
      star_s = s;
      continue;
    }
    if (*pat == '[') {
      bool m = false;
      const char *next = class_match(pat, *s, &m);
      if (next && m) {
        pat = next;
        s++;
        continue;
      }
      if (!next && *s == '[') {
        pat++;
        s++;
        continue;
      }
    } else if (*pat && (*pat == '?' || *pat == *s)) {
      pat++;
      s++;
      continue;
    }
    if (!star_p)
      return false;
    pat = star_p;
    s = ++star_s;
  }
  while (*pat == '*')
    pat++;
  return *pat == '\0';
}

double core_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool core_tensor_extent(const decomp_tensor *t, size_t *out_bytes) {
  size_t last = 0; /* largest element index reached */
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] == 0) {
      *out_bytes = 0;
      return true;
    }
  }
  for (int i = 0; i < t->ndim; i++) {
    size_t step;
    if (t->shape[i] < 0 || t->stride[i] < 0)
      return false;
    if (!core_mul_size((size_t)(t->shape[i] - 1), (size_t)t->stride[i], &step) ||
        !core_add_size(last, step, &last))
      return false;
  }
  size_t n;
  if (t->offset < 0 || !core_add_size(last, 1, &n) ||
      !core_add_size(n, (size_t)t->offset, &n) ||
      !core_mul_size(n, decomp_dtype_size(t->dtype), out_bytes))
    return false;
  return true;
}

int64_t core_peak_rss_bytes(void) {
  /* VmHWM: the high-water mark of this address space. getrusage's
   * ru_maxrss also keeps, across exec, the peak of whatever ran before in
   * the process (a large parent that forked us), so it is the fallback. */
  FILE *f = fopen("/proc/self/status", "re");
  if (f) {
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "VmHWM: %lld kB", &kb) == 1)
        break;
    fclose(f);
    if (kb >= 0)
      return (int64_t)kb * 1024;
  }
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0)
    return 0;
  return (int64_t)ru.ru_maxrss * 1024; /* Linux counts kilobytes */
}
