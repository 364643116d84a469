/* weights.c — the weight set: an ordered, name-indexed list of tensors and
 * the mappings and buffers that keep their data alive. Readers fill it
 * through decomp_weights_add/core_weights_keep; the decomposition builds its
 * result the same way. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "core.h"

struct keep {
  void *p;
  size_t len;
  core_release_fn release;
};

struct decomp_weights {
  decomp_ctx *ctx;          /* for error messages of add */
  decomp_format format;
  decomp_tensor *tensors;   /* names are owned (strdup) */
  size_t n, cap;
  size_t *index;            /* open addressing: tensor index + 1, 0 empty */
  size_t index_cap;         /* power of two, > 2n */
  struct keep *keeps;
  size_t nkeep, capkeep;
  char *metadata;           /* JSON object text or NULL */
  size_t shards;            /* files it was read from, when sharded */
};

int decomp_weights_new(decomp_ctx *ctx, decomp_weights **out) {
  decomp_weights *w = calloc(1, sizeof *w);
  if (!w)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  w->ctx = ctx;
  *out = w;
  return DECOMP_OK;
}

void decomp_weights_free(decomp_weights *w) {
  if (!w)
    return;
  for (size_t i = 0; i < w->n; i++)
    free((char *)w->tensors[i].name);
  free(w->tensors);
  free(w->index);
  for (size_t i = w->nkeep; i-- > 0;)
    w->keeps[i].release(w->keeps[i].p, w->keeps[i].len);
  free(w->keeps);
  free(w->metadata);
  free(w);
}

static void release_free(void *p, size_t len) {
  (void)len;
  free(p);
}

static bool keep_reserve(decomp_weights *w) {
  if (w->nkeep < w->capkeep)
    return true;
  size_t cap = w->capkeep ? 2 * w->capkeep : 8;
  struct keep *k = realloc(w->keeps, cap * sizeof *k);
  if (!k)
    return false;
  w->keeps = k;
  w->capkeep = cap;
  return true;
}

int core_weights_keep(decomp_weights *w, void *p, size_t len,
                      core_release_fn release) {
  if (!keep_reserve(w)) {
    release(p, len);
    return core_fail(w->ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  w->keeps[w->nkeep++] = (struct keep){p, len, release};
  return DECOMP_OK;
}

void core_weights_set_shards(decomp_weights *w, size_t n) { w->shards = n; }

size_t decomp_weights_shard_count(const decomp_weights *w) {
  return w ? w->shards : 0;
}

/* madvise `advice` on the whole pages of [data, data + len) when they lie
 * in one of the set's file mappings. */
static void advise(const decomp_weights *w, const void *data, size_t len,
                   int advice) {
  if (!w || !data || !len)
    return;
  uintptr_t a = (uintptr_t)data, b = a + len;
  for (size_t i = 0; i < w->nkeep; i++) {
    const struct keep *k = &w->keeps[i];
    uintptr_t lo = (uintptr_t)k->p, hi = lo + k->len;
    if (k->release != core_unmap || a < lo || b > hi)
      continue;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t from = (a + page - 1) & ~(page - 1), to = b & ~(page - 1);
    if (to > from) /* a read-only file mapping: the data stays valid */
      madvise((void *)from, to - from, advice);
    return;
  }
}

void core_weights_drop_pages(const decomp_weights *w, const void *data,
                             size_t len) {
  advise(w, data, len, MADV_DONTNEED);
}

void core_weights_will_need(const decomp_weights *w, const void *data,
                            size_t len) {
  advise(w, data, len, MADV_WILLNEED);
}

void core_weights_set_format(decomp_weights *w, decomp_format f) {
  w->format = f;
}

void decomp_weights_set_format(decomp_weights *w, decomp_format f) {
  if (w)
    w->format = f;
}

decomp_ctx *core_weights_ctx(const decomp_weights *w) { return w->ctx; }

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static bool index_grow(decomp_weights *w) {
  size_t cap = w->index_cap ? 2 * w->index_cap : 64;
  size_t *idx = calloc(cap, sizeof *idx);
  if (!idx)
    return false;
  for (size_t i = 0; i < w->n; i++) {
    size_t j = hash_name(w->tensors[i].name) & (cap - 1);
    while (idx[j])
      j = (j + 1) & (cap - 1);
    idx[j] = i + 1;
  }
  free(w->index);
  w->index = idx;
  w->index_cap = cap;
  return true;
}

const decomp_tensor *decomp_weights_find(const decomp_weights *w,
                                         const char *name) {
  if (!w || !name || !w->index_cap)
    return NULL;
  size_t j = hash_name(name) & (w->index_cap - 1);
  while (w->index[j]) {
    const decomp_tensor *t = &w->tensors[w->index[j] - 1];
    if (strcmp(t->name, name) == 0)
      return t;
    j = (j + 1) & (w->index_cap - 1);
  }
  return NULL;
}

int64_t decomp_tensor_numel(const decomp_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++)
    n *= t->shape[i];
  return n;
}

bool decomp_tensor_is_contiguous(const decomp_tensor *t) {
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != expect)
      return false;
    expect *= t->shape[i];
  }
  return true;
}

int decomp_weights_add(decomp_weights *w, const decomp_tensor *t) {
  decomp_ctx *ctx = w->ctx;
  const char *name = t->name ? t->name : "";
  if (!t->name || !*t->name)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "tensor without a name");
  if (!decomp_dtype_size(t->dtype))
    return core_fail(ctx, DECOMP_ERR_UNSUPPORTED_DTYPE, "%s: invalid dtype %d",
                     name, (int)t->dtype);
  if (t->ndim < 0 || t->ndim > DECOMP_MAX_DIMS)
    return core_fail(ctx, DECOMP_ERR_BAD_TENSOR, "%s: %d dimensions (at most %d)",
                     name, t->ndim, DECOMP_MAX_DIMS);
  size_t numel = 1;
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] < 0 || t->stride[i] < 0)
      return core_fail(ctx, DECOMP_ERR_BAD_TENSOR,
                       "%s: negative size or stride in dimension %d", name, i);
    if (!core_mul_size(numel, (size_t)t->shape[i], &numel) ||
        numel > (size_t)INT64_MAX)
      return core_fail(ctx, DECOMP_ERR_BAD_TENSOR,
                       "%s: number of elements overflows", name);
  }
  size_t need;
  if (!core_tensor_extent(t, &need))
    return core_fail(ctx, DECOMP_ERR_BAD_TENSOR,
                     "%s: storage extent overflows", name);
  if (numel > 0 && !t->data)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "%s: no data", name);
  decomp_tensor copy = *t;
  size_t isz = decomp_dtype_size(t->dtype);
  if (!t->storage) {
    copy.storage = numel ? (const char *)t->data - (size_t)t->offset * isz
                         : t->data;
    copy.storage_nbytes = need;
  } else {
    if (need > t->storage_nbytes)
      return core_fail(ctx, DECOMP_ERR_BAD_TENSOR,
                       "%s: needs %zu bytes of storage, the storage has %zu",
                       name, need, t->storage_nbytes);
    if (numel > 0 &&
        (const char *)t->data != (const char *)t->storage + (size_t)t->offset * isz)
      return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                       "%s: data is not storage + offset", name);
  }
  for (int i = t->ndim; i < DECOMP_MAX_DIMS; i++)
    copy.shape[i] = copy.stride[i] = 0;
  if (decomp_weights_find(w, name))
    return core_fail(ctx, DECOMP_ERR_BAD_TENSOR, "%s: duplicate tensor name",
                     name);
  if (2 * (w->n + 1) > w->index_cap && !index_grow(w))
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  if (w->n == w->cap) {
    size_t cap = w->cap ? 2 * w->cap : 64;
    decomp_tensor *ts = realloc(w->tensors, cap * sizeof *ts);
    if (!ts)
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    w->tensors = ts;
    w->cap = cap;
  }
  copy.name = strdup(name);
  if (!copy.name)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  w->tensors[w->n] = copy;
  size_t j = hash_name(copy.name) & (w->index_cap - 1);
  while (w->index[j])
    j = (j + 1) & (w->index_cap - 1);
  w->index[j] = ++w->n;
  return DECOMP_OK;
}

int decomp_weights_add_owned(decomp_weights *w, const decomp_tensor *t,
                             void *buffer) {
  if (!keep_reserve(w)) {
    free(buffer);
    return core_fail(w->ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  int rc = decomp_weights_add(w, t);
  if (rc != DECOMP_OK) {
    free(buffer);
    return rc;
  }
  return core_weights_keep(w, buffer, 0, release_free); /* cannot fail now */
}

size_t decomp_weights_count(const decomp_weights *w) { return w ? w->n : 0; }

const decomp_tensor *decomp_weights_at(const decomp_weights *w, size_t i) {
  return w && i < w->n ? &w->tensors[i] : NULL;
}

decomp_format decomp_weights_format(const decomp_weights *w) {
  return w ? w->format : DECOMP_FORMAT_UNKNOWN;
}

const char *decomp_weights_metadata(const decomp_weights *w) {
  return w ? w->metadata : NULL;
}

int decomp_weights_set_metadata(decomp_weights *w, const char *json) {
  if (!json) {
    free(w->metadata);
    w->metadata = NULL;
    return DECOMP_OK;
  }
  json_error_t jerr;
  json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
  if (!root || !json_is_object(root)) {
    json_decref(root);
    return core_fail(w->ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "metadata is not a JSON object");
  }
  char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(root);
  if (!text)
    return core_fail(w->ctx, DECOMP_ERR_NOMEM, "out of memory");
  free(w->metadata);
  w->metadata = text;
  return DECOMP_OK;
}

const char *decomp_format_name(decomp_format f) {
  switch (f) {
  case DECOMP_FORMAT_PTH:
    return "pth";
  case DECOMP_FORMAT_SAFETENSORS:
    return "safetensors";
  case DECOMP_FORMAT_TORCHSCRIPT:
    return "torchscript";
  default:
    return "unknown";
  }
}

decomp_format decomp_format_from_name(const char *name) {
  static const decomp_format all[] = {DECOMP_FORMAT_PTH,
                                      DECOMP_FORMAT_SAFETENSORS,
                                      DECOMP_FORMAT_TORCHSCRIPT};
  for (size_t i = 0; name && i < sizeof all / sizeof *all; i++)
    if (strcmp(name, decomp_format_name(all[i])) == 0)
      return all[i];
  return DECOMP_FORMAT_UNKNOWN;
}
