/* fuzz_common.h — what the weight-format fuzz targets share: open the input
 * with decomp_weights_open_memory from an exact-size copy (so ASan sees any
 * read past the end), touch every byte a tensor claims, and push whatever
 * parses through both writers and back, which must give the same names,
 * dtypes, shapes and bytes. */
#ifndef DECOMP_FUZZ_COMMON_H
#define DECOMP_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"

/* Writing is skipped above this many tensor bytes (a broadcast view may
 * claim far more elements than the input has bytes). */
#define FUZZ_WRITE_LIMIT ((size_t)16 << 20)

static volatile unsigned fuzz_sink;

static void fuzz_touch(const decomp_tensor *t) {
  const unsigned char *s = t->storage;
  if (t->storage_nbytes) {
    fuzz_sink += s[0];
    fuzz_sink += s[t->storage_nbytes - 1];
  }
  size_t need;
  if (!core_tensor_extent(t, &need) || need > t->storage_nbytes)
    abort(); /* the reader let through a tensor that does not fit */
  if (decomp_tensor_numel(t) > 0)
    fuzz_sink += *(const unsigned char *)t->data;
}

static size_t fuzz_bytes(const decomp_weights *w) {
  size_t total = 0;
  for (size_t i = 0; i < decomp_weights_count(w); i++) {
    const decomp_tensor *t = decomp_weights_at(w, i);
    size_t n;
    if (!core_mul_size((size_t)decomp_tensor_numel(t),
                       decomp_dtype_size(t->dtype), &n) ||
        !core_add_size(total, n, &total))
      return SIZE_MAX;
  }
  return total;
}

static bool fuzz_same(const decomp_tensor *a, const decomp_tensor *b) {
  if (strcmp(a->name, b->name) || a->dtype != b->dtype || a->ndim != b->ndim)
    return false;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d])
      return false;
  int64_t n = decomp_tensor_numel(a);
  size_t isz = decomp_dtype_size(a->dtype);
  int64_t idx[DECOMP_MAX_DIMS] = {0};
  for (int64_t k = 0; k < n; k++) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < a->ndim; d++) {
      oa += idx[d] * a->stride[d];
      ob += idx[d] * b->stride[d];
    }
    if (memcmp((const char *)a->data + (size_t)oa * isz,
               (const char *)b->data + (size_t)ob * isz, isz))
      return false;
    for (int d = a->ndim - 1; d >= 0; d--) {
      if (++idx[d] < a->shape[d])
        break;
      idx[d] = 0;
    }
  }
  return true;
}

/* Write `w` in `fmt` to a memory file, read it back, compare. */
static void fuzz_round_trip(decomp_ctx *ctx, const decomp_weights *w,
                            decomp_format fmt) {
  int fd = memfd_create("fuzz", MFD_CLOEXEC);
  if (fd < 0)
    return;
  int rc = fmt == DECOMP_FORMAT_PTH ? core_pth_write(ctx, w, fd, "fuzz")
                                    : core_safetensors_write(ctx, w, fd);
  if (rc != DECOMP_OK) {
    /* Only a tensor named __metadata__ may not go to safetensors. */
    if (!(fmt == DECOMP_FORMAT_SAFETENSORS &&
          decomp_weights_find(w, "__metadata__")))
      abort();
    close(fd);
    return;
  }
  off_t len = lseek(fd, 0, SEEK_END);
  unsigned char *buf = malloc(len > 0 ? (size_t)len : 1);
  if (!buf || pread(fd, buf, (size_t)len, 0) != len)
    abort();
  close(fd);
  decomp_weights *r = NULL;
  if (decomp_weights_open_memory(ctx, buf, (size_t)len, &r) != DECOMP_OK) {
    fprintf(stderr, "re-reading our own %s failed: %s\n",
            decomp_format_name(fmt), decomp_errmsg(ctx));
    abort();
  }
  if (decomp_weights_count(r) != decomp_weights_count(w))
    abort();
  for (size_t i = 0; i < decomp_weights_count(w); i++)
    if (!fuzz_same(decomp_weights_at(w, i), decomp_weights_at(r, i)))
      abort();
  decomp_weights_free(r);
  free(buf);
}

static int fuzz_one(const uint8_t *data, size_t size) {
  decomp_ctx *ctx = decomp_ctx_new();
  unsigned char *copy = malloc(size ? size : 1);
  if (!ctx || !copy)
    abort();
  memcpy(copy, data, size);
  (void)decomp_detect_format(copy, size);
  decomp_weights *w = NULL;
  if (decomp_weights_open_memory(ctx, copy, size, &w) == DECOMP_OK) {
    for (size_t i = 0; i < decomp_weights_count(w); i++)
      fuzz_touch(decomp_weights_at(w, i));
    (void)decomp_weights_metadata(w);
    if (fuzz_bytes(w) <= FUZZ_WRITE_LIMIT) {
      fuzz_round_trip(ctx, w, DECOMP_FORMAT_PTH);
      fuzz_round_trip(ctx, w, DECOMP_FORMAT_SAFETENSORS);
    }
    decomp_weights_free(w);
  } else if (decomp_errmsg(ctx)[0] == '\0') {
    abort(); /* every failure says what and where */
  }
  free(copy);
  decomp_ctx_free(ctx);
  return 0;
}

#endif
