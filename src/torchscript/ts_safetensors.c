/* ts_safetensors.c — the minimal safetensors writer of ts_safetensors.h:
 * header built with jansson (keys in the order given), data streamed entry
 * by entry so that memory holds one tensor at a time. */
#include "ts_safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

static const struct {
  const char *name;
  size_t size;
} dtypes[DECOMP_DTYPE_COUNT] = {
    [DECOMP_DTYPE_F32] = {"F32", 4},   [DECOMP_DTYPE_F16] = {"F16", 2},
    [DECOMP_DTYPE_BF16] = {"BF16", 2}, [DECOMP_DTYPE_F64] = {"F64", 8},
    [DECOMP_DTYPE_I64] = {"I64", 8},   [DECOMP_DTYPE_I32] = {"I32", 4},
    [DECOMP_DTYPE_I16] = {"I16", 2},   [DECOMP_DTYPE_I8] = {"I8", 1},
    [DECOMP_DTYPE_U8] = {"U8", 1},     [DECOMP_DTYPE_BOOL] = {"BOOL", 1},
};

const char *ts_st_dtype_name(decomp_dtype dt) {
  return (unsigned)dt < DECOMP_DTYPE_COUNT ? dtypes[dt].name : NULL;
}

size_t ts_st_dtype_size(decomp_dtype dt) {
  return (unsigned)dt < DECOMP_DTYPE_COUNT ? dtypes[dt].size : 0;
}

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Whether the entry's byte count is its numel × item size. */
static int entry_ok(const ts_st_entry *e) {
  size_t item = ts_st_dtype_size(e->dtype);
  if (!item || !e->name || e->ndim < 0 || e->ndim > DECOMP_MAX_DIMS)
    return 0;
  uint64_t n = item;
  for (int d = 0; d < e->ndim; d++) {
    if (e->shape[d] < 0)
      return 0;
    if (e->shape[d] && n > UINT64_MAX / (uint64_t)e->shape[d])
      return 0;
    n *= (uint64_t)e->shape[d];
  }
  return n == e->nbytes;
}

static json_t *build_header(const ts_st_entry *e, size_t n, char *err,
                            size_t errlen) {
  json_t *h = json_object();
  uint64_t off = 0;
  if (!h)
    goto nomem;
  for (size_t i = 0; i < n; i++) {
    if (!entry_ok(&e[i])) {
      snprintf(err, errlen, "tensor %s: inconsistent dtype, shape or size",
               e[i].name ? e[i].name : "?");
      json_decref(h);
      return NULL;
    }
    if (json_object_get(h, e[i].name) || !strcmp(e[i].name, "__metadata__")) {
      snprintf(err, errlen, "tensor %s: duplicate name", e[i].name);
      json_decref(h);
      return NULL;
    }
    json_t *shape = json_array();
    for (int d = 0; shape && d < e[i].ndim; d++)
      json_array_append_new(shape, json_integer(e[i].shape[d]));
    json_t *t =
        json_pack("{s:s, s:o, s:[I, I]}", "dtype", ts_st_dtype_name(e[i].dtype),
                  "shape", shape, "data_offsets", (json_int_t)off,
                  (json_int_t)(off + e[i].nbytes));
    if (!t || json_object_set_new(h, e[i].name, t))
      goto nomem;
    off += e[i].nbytes;
  }
  return h;
nomem:
  json_decref(h);
  snprintf(err, errlen, "out of memory");
  return NULL;
}

int ts_st_write(int fd, const char *what, const ts_st_entry *e, size_t n,
                ts_st_data_fn data, void *user, char *err, size_t errlen) {
  int rc = TS_ST_OK;
  char *text = NULL;
  json_t *h = build_header(e, n, err, errlen);
  if (!h)
    return TS_ST_ERR_INVALID;
  text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(h);
  if (!text) {
    snprintf(err, errlen, "out of memory");
    return TS_ST_ERR_NOMEM;
  }
  size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
  char *hdr = malloc(8 + padded);
  if (!hdr) {
    free(text);
    snprintf(err, errlen, "out of memory");
    return TS_ST_ERR_NOMEM;
  }
  uint64_t le = padded;
  for (int b = 0; b < 8; b++)
    hdr[b] = (char)(le >> (8 * b));
  memcpy(hdr + 8, text, len);
  memset(hdr + 8 + len, ' ', padded - len);
  free(text);

  if (write_all(fd, hdr, 8 + padded) != 0)
    goto io;
  for (size_t i = 0; i < n; i++) {
    const void *p = NULL;
    rc = data(user, i, &p, err, errlen);
    if (rc != 0)
      goto done;
    if (e[i].nbytes && write_all(fd, p, e[i].nbytes) != 0)
      goto io;
  }
  goto done;
io:
  snprintf(err, errlen, "%s: %s", what, strerror(errno));
  rc = TS_ST_ERR_IO;
done:
  free(hdr);
  return rc;
}
