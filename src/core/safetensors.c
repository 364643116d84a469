/* safetensors.c — the safetensors format: reader (zero-copy over the
 * caller's buffer) and writer (streaming to a file descriptor).
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON
 * ({"__metadata__": {str: str}, NAME: {"dtype", "shape", "data_offsets"}}),
 * then the data section. The reader holds the file to the spec: header at
 * most 100 MB and starting with '{', no duplicate names, known dtypes, sizes
 * equal to numel × itemsize (overflow-checked), and data_offsets that, sorted,
 * tile the data section exactly (no gap, no overlap, nothing left over).
 * Tensors come out in header order; the writer writes them in the set's
 * order, header and data alike, each one contiguous (strided views are
 * gathered a slice at a time, never the whole model in memory). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

#define HEADER_MAX ((size_t)100 * 1000 * 1000)
#define GATHER_BYTES CORE_GATHER_BYTES

static uint64_t rd64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

static bool dtype_from_name(const char *s, decomp_dtype *out) {
  for (int d = 0; d < DECOMP_DTYPE_COUNT; d++) {
    if (strcmp(s, decomp_dtype_name((decomp_dtype)d)) == 0) {
      *out = (decomp_dtype)d;
      return true;
    }
  }
  return false;
}

typedef struct st_entry {
  const char *name;
  decomp_dtype dtype;
  int ndim;
  int64_t shape[DECOMP_MAX_DIMS];
  uint64_t begin, end;
} st_entry;

static int cmp_range(const void *a, const void *b) {
  const st_entry *x = *(const st_entry *const *)a;
  const st_entry *y = *(const st_entry *const *)b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static int parse_entry(decomp_ctx *ctx, const char *name, json_t *v,
                       uint64_t data_len, st_entry *e) {
  if (!json_is_object(v))
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: entry is not an object", name);
  const char *k;
  json_t *f;
  json_object_foreach(v, k, f) {
    if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
      return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                       "safetensors: %s: unknown field \"%s\"", name, k);
  }
  json_t *dt = json_object_get(v, "dtype");
  json_t *sh = json_object_get(v, "shape");
  json_t *off = json_object_get(v, "data_offsets");
  if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(off))
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: needs \"dtype\" (string), \"shape\" "
                     "and \"data_offsets\" (arrays)",
                     name);
  e->name = name;
  if (!dtype_from_name(json_string_value(dt), &e->dtype))
    return core_fail(ctx, DECOMP_ERR_UNSUPPORTED_DTYPE,
                     "safetensors: %s: dtype \"%.32s\" is not supported (F32 "
                     "F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)",
                     name, json_string_value(dt));
  if (json_array_size(sh) > DECOMP_MAX_DIMS)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: %zu dimensions (at most %d)", name,
                     json_array_size(sh), DECOMP_MAX_DIMS);
  e->ndim = (int)json_array_size(sh);
  size_t numel = 1;
  for (int d = 0; d < e->ndim; d++) {
    json_t *x = json_array_get(sh, (size_t)d);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
      return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                       "safetensors: %s: shape holds a value that is not a "
                       "non-negative integer",
                       name);
    e->shape[d] = (int64_t)json_integer_value(x);
    if (!core_mul_size(numel, (size_t)e->shape[d], &numel) ||
        numel > (size_t)INT64_MAX)
      return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                       "safetensors: %s: shape's element count overflows",
                       name);
  }
  size_t nbytes;
  if (!core_mul_size(numel, decomp_dtype_size(e->dtype), &nbytes))
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: byte size overflows", name);
  json_t *b0 = json_array_get(off, 0), *b1 = json_array_get(off, 1);
  if (json_array_size(off) != 2 || !json_is_integer(b0) ||
      !json_is_integer(b1) || json_integer_value(b0) < 0 ||
      json_integer_value(b1) < json_integer_value(b0))
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: data_offsets is not [begin, end] with "
                     "0 <= begin <= end",
                     name);
  e->begin = (uint64_t)json_integer_value(b0);
  e->end = (uint64_t)json_integer_value(b1);
  if (e->end > data_len)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: data_offsets end %llu is past the data "
                     "section (%llu bytes)",
                     name, (unsigned long long)e->end,
                     (unsigned long long)data_len);
  if (e->end - e->begin != nbytes)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: %s: data_offsets span %llu bytes, shape and "
                     "dtype need %zu",
                     name, (unsigned long long)(e->end - e->begin), nbytes);
  return DECOMP_OK;
}

static int read_metadata(decomp_ctx *ctx, json_t *m, decomp_weights *w) {
  if (!json_is_object(m))
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: __metadata__ is not an object");
  const char *k;
  json_t *v;
  json_object_foreach(m, k, v) {
    if (!json_is_string(v))
      return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                       "safetensors: __metadata__ value of \"%.64s\" is not a "
                       "string",
                       k);
  }
  char *text = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!text)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  int rc = decomp_weights_set_metadata(w, text);
  free(text);
  return rc;
}

int core_safetensors_read(decomp_ctx *ctx, const void *vbuf, size_t len,
                          decomp_weights *w) {
  const unsigned char *b = vbuf;
  if (len < 8)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: file of %zu bytes has no header", len);
  uint64_t hlen = rd64(b);
  if (hlen > HEADER_MAX)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: header of %llu bytes is over the 100 MB "
                     "limit",
                     (unsigned long long)hlen);
  if (hlen > len - 8)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: header of %llu bytes runs past the end of "
                     "the file (%zu bytes; truncated?)",
                     (unsigned long long)hlen, len);
  if (hlen < 2 || b[8] != '{')
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: header is not a JSON object");
  const unsigned char *data = b + 8 + hlen;
  uint64_t data_len = len - 8 - hlen;
  json_error_t jerr;
  json_t *root = json_loadb((const char *)b + 8, (size_t)hlen,
                            JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: header JSON, byte %d: %s", jerr.position,
                     jerr.text);
  int rc = DECOMP_OK;
  size_t cap = json_object_size(root);
  st_entry *es = calloc(cap ? cap : 1, sizeof *es);
  st_entry **sorted = calloc(cap ? cap : 1, sizeof *sorted);
  size_t n = 0;
  if (!es || !sorted) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if (!json_is_object(root)) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                   "safetensors: header is not a JSON object");
    goto done;
  }
  const char *k;
  json_t *v;
  json_object_foreach(root, k, v) {
    if (strcmp(k, "__metadata__") == 0) {
      if ((rc = read_metadata(ctx, v, w)))
        goto done;
      continue;
    }
    if (!*k) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     "safetensors: a tensor has an empty name");
      goto done;
    }
    if ((rc = parse_entry(ctx, k, v, data_len, &es[n])))
      goto done;
    sorted[n] = &es[n];
    n++;
  }
  if (n)
    qsort(sorted, n, sizeof *sorted, cmp_range);
  uint64_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    const st_entry *e = sorted[i];
    if (e->begin != pos) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                     e->begin > pos
                         ? "safetensors: %s: data_offsets leave a gap (begins "
                           "at %llu, the data before ends at %llu)"
                         : "safetensors: %s: data_offsets overlap another "
                           "tensor (begins at %llu, the data before ends at "
                           "%llu)",
                     e->name, (unsigned long long)e->begin,
                     (unsigned long long)pos);
      goto done;
    }
    pos = e->end;
  }
  if (pos != data_len) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_SAFETENSORS,
                   "safetensors: tensors cover %llu bytes of a %llu-byte data "
                   "section",
                   (unsigned long long)pos, (unsigned long long)data_len);
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    const st_entry *e = &es[i];
    decomp_tensor t = {.name = e->name, .dtype = e->dtype, .ndim = e->ndim};
    int64_t stride = 1;
    for (int d = e->ndim - 1; d >= 0; d--) {
      t.shape[d] = e->shape[d];
      t.stride[d] = stride;
      stride *= e->shape[d] ? e->shape[d] : 1;
    }
    t.data = t.storage = data + e->begin;
    t.storage_nbytes = (size_t)(e->end - e->begin);
    if ((rc = decomp_weights_add(w, &t)))
      goto done;
  }
  core_weights_set_format(w, DECOMP_FORMAT_SAFETENSORS);
done:
  free(es);
  free(sorted);
  json_decref(root);
  return rc;
}

/* --- writer ------------------------------------------------------------- */

/* Metadata as safetensors wants it: a map of strings. Non-string values
 * (a .pth `_metadata` holds objects) are kept as their JSON text. */
static json_t *metadata_strings(const char *text) {
  json_error_t jerr;
  json_t *m = json_loads(text, 0, &jerr);
  if (!json_is_object(m)) {
    json_decref(m);
    return NULL;
  }
  json_t *out = json_object();
  const char *k;
  json_t *v;
  json_object_foreach(m, k, v) {
    json_t *s;
    if (json_is_string(v)) {
      s = json_copy(v);
    } else {
      char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      s = t ? json_string(t) : NULL;
      free(t);
    }
    if (!s || json_object_set_new(out, k, s)) {
      json_decref(out);
      out = NULL;
      break;
    }
  }
  json_decref(m);
  return out;
}

int core_safetensors_write_tensor(decomp_ctx *ctx, int fd,
                                  const decomp_tensor *t, unsigned char *gbuf) {
  size_t isz = decomp_dtype_size(t->dtype);
  int64_t numel = decomp_tensor_numel(t);
  if (numel == 0)
    return DECOMP_OK;
  const unsigned char *src = t->data;
  if (decomp_tensor_is_contiguous(t))
    return core_write_all(ctx, fd, src, (size_t)numel * isz);
  /* Walk the outer dimensions; copy the innermost as one run when it is
   * dense, else element by element. */
  int nd = t->ndim;
  bool dense_last = t->stride[nd - 1] == 1;
  size_t run = dense_last ? (size_t)t->shape[nd - 1] * isz : isz;
  int outer = dense_last ? nd - 1 : nd;
  int64_t idx[DECOMP_MAX_DIMS] = {0};
  size_t fill = 0;
  int rc = DECOMP_OK;
  for (;;) {
    int64_t off = 0;
    for (int d = 0; d < outer; d++)
      off += idx[d] * t->stride[d];
    const unsigned char *p = src + (size_t)off * isz;
    if (run > GATHER_BYTES) {
      if (fill && (rc = core_write_all(ctx, fd, gbuf, fill)))
        return rc;
      fill = 0;
      if ((rc = core_write_all(ctx, fd, p, run)))
        return rc;
    } else {
      if (fill + run > GATHER_BYTES) {
        if ((rc = core_write_all(ctx, fd, gbuf, fill)))
          return rc;
        fill = 0;
      }
      memcpy(gbuf + fill, p, run);
      fill += run;
    }
    int d = outer - 1;
    for (; d >= 0; d--) {
      if (++idx[d] < t->shape[d])
        break;
      idx[d] = 0;
    }
    if (d < 0)
      break;
  }
  return fill ? core_write_all(ctx, fd, gbuf, fill) : DECOMP_OK;
}

int core_st_header(decomp_ctx *ctx, const core_st_item *items, size_t n,
                   const char *metadata, char **out_text, size_t *out_len,
                   size_t *out_hlen) {
  int rc = DECOMP_OK;
  json_t *root = json_object();
  char *text = NULL;
  if (!root)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  if (metadata) {
    json_t *m = metadata_strings(metadata);
    if (!m || json_object_set_new(root, "__metadata__", m)) {
      rc = core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "metadata is not a JSON object");
      goto done;
    }
  }
  uint64_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    const core_st_item *t = &items[i];
    if (strcmp(t->name, "__metadata__") == 0) {
      rc = core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "a tensor named __metadata__ cannot be saved as "
                     "safetensors");
      goto done;
    }
    size_t end;
    if (!core_add_size((size_t)pos, (size_t)t->nbytes, &end) ||
        end > (size_t)INT64_MAX) {
      rc = core_fail(ctx, DECOMP_ERR_TOO_LARGE,
                     "%s: too large to write contiguously", t->name);
      goto done;
    }
    json_t *shape = json_array();
    for (int d = 0; shape && d < t->ndim; d++)
      json_array_append_new(shape, json_integer(t->shape[d]));
    json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype",
                          decomp_dtype_name(t->dtype), "shape", shape,
                          "data_offsets", (json_int_t)pos, (json_int_t)end);
    pos = end;
    if (!e || json_object_set_new(root, t->name, e)) {
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      goto done;
    }
  }
  text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!text) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  /* Pad the header with spaces so the data section is 8-byte aligned. */
  size_t tlen = strlen(text), hlen = (tlen + 7) / 8 * 8;
  if (hlen > HEADER_MAX) {
    rc = core_fail(ctx, DECOMP_ERR_TOO_LARGE,
                   "safetensors header would be %zu bytes (limit 100 MB)",
                   hlen);
    goto done;
  }
  *out_text = text;
  *out_len = tlen;
  *out_hlen = hlen;
  text = NULL;
done:
  free(text);
  json_decref(root);
  return rc;
}

int core_st_item_of(decomp_ctx *ctx, const decomp_tensor *t,
                    core_st_item *it) {
  size_t nbytes;
  /* A broadcast view can name more elements than memory holds. */
  if (!core_mul_size((size_t)decomp_tensor_numel(t),
                     decomp_dtype_size(t->dtype), &nbytes) ||
      nbytes > (size_t)INT64_MAX)
    return core_fail(ctx, DECOMP_ERR_TOO_LARGE,
                     "%s: too large to write contiguously", t->name);
  *it = (core_st_item){.name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                       .nbytes = nbytes};
  for (int d = 0; d < t->ndim; d++)
    it->shape[d] = t->shape[d];
  return DECOMP_OK;
}

int core_safetensors_write(decomp_ctx *ctx, const decomp_weights *w, int fd) {
  size_t n = decomp_weights_count(w);
  core_st_item *items = calloc(n ? n : 1, sizeof *items);
  char *text = NULL;
  unsigned char *gbuf = NULL;
  size_t tlen = 0, hlen = 0;
  int rc = DECOMP_OK;
  if (!items)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++)
    rc = core_st_item_of(ctx, decomp_weights_at(w, i), &items[i]);
  if (rc == DECOMP_OK)
    rc = core_st_header(ctx, items, n, decomp_weights_metadata(w), &text,
                        &tlen, &hlen);
  if (rc != DECOMP_OK)
    goto done;
  if (!(gbuf = malloc(GATHER_BYTES))) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  unsigned char head[8];
  for (int i = 0; i < 8; i++)
    head[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  if ((rc = core_write_all(ctx, fd, head, 8)) ||
      (rc = core_write_all(ctx, fd, text, tlen)) ||
      (rc = core_write_all(ctx, fd, "        ", hlen - tlen)))
    goto done;
  for (size_t i = 0; i < n; i++)
    if ((rc = core_safetensors_write_tensor(ctx, fd, decomp_weights_at(w, i),
                                            gbuf)))
      goto done;
done:
  free(gbuf);
  free(text);
  free(items);
  return rc;
}
