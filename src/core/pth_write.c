/* pth_write.c — writing a weight set as a torch.save archive that
 * torch.load(path, weights_only=True) reads back (PyTorch ≥ 1.13).
 *
 * The layout is the one torch.save produces: `STEM/data.pkl` (a protocol-2
 * pickle of an OrderedDict of _rebuild_tensor_v2 calls, then its `_metadata`
 * attribute through BUILD), one stored entry `STEM/data/K` per storage,
 * 64-byte aligned, and `STEM/version` = "3\n". Tensors that share a storage
 * in the set (same decomp_tensor.storage and dtype) share one entry, with
 * their own offsets and strides, so views stay views. Only opcodes and
 * globals that torch 1.13's weights-only unpickler accepts are written. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zip.h"

typedef struct buf {
  unsigned char *p;
  size_t n, cap;
  bool oom;
} buf;

static void put(buf *b, const void *p, size_t n) {
  if (b->oom)
    return;
  if (n > b->cap - b->n) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->n < n)
      cap *= 2;
    unsigned char *q = realloc(b->p, cap);
    if (!q) {
      b->oom = true;
      return;
    }
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
}

static void put1(buf *b, unsigned char c) { put(b, &c, 1); }

static void put_str(buf *b, const char *s, size_t n) {
  unsigned char h[5] = {'X', (unsigned char)n, (unsigned char)(n >> 8),
                        (unsigned char)(n >> 16), (unsigned char)(n >> 24)};
  put(b, h, 5);
  put(b, s, n);
}

static void put_int(buf *b, int64_t v) {
  if (v >= 0 && v < 256) {
    unsigned char h[2] = {'K', (unsigned char)v};
    put(b, h, 2);
  } else if (v >= 0 && v < 65536) {
    unsigned char h[3] = {'M', (unsigned char)v, (unsigned char)(v >> 8)};
    put(b, h, 3);
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    uint32_t u = (uint32_t)(int32_t)v;
    unsigned char h[5] = {'J', (unsigned char)u, (unsigned char)(u >> 8),
                          (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
    put(b, h, 5);
  } else { /* LONG1, 8 bytes two's complement */
    uint64_t u;
    memcpy(&u, &v, 8);
    unsigned char h[10] = {0x8a, 8};
    for (int i = 0; i < 8; i++)
      h[2 + i] = (unsigned char)(u >> (8 * i));
    put(b, h, 10);
  }
}

static void put_global(buf *b, const char *mod_name) {
  put1(b, 'c');
  put(b, mod_name, strlen(mod_name));
}

static void put_odict(buf *b) {
  put_global(b, "collections\nOrderedDict\n");
  put1(b, ')');
  put1(b, 'R');
}

/* A JSON value as pickle: the top object is an OrderedDict (as torch's
 * `_metadata`), nested objects plain dicts. */
static bool put_json(buf *b, const json_t *j, int depth) {
  if (depth > 64)
    return false;
  switch (json_typeof(j)) {
  case JSON_OBJECT: {
    if (depth == 0)
      put_odict(b);
    else
      put1(b, '}');
    if (json_object_size(j) == 0)
      return true;
    put1(b, '(');
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v) {
      put_str(b, k, strlen(k));
      if (!put_json(b, v, depth + 1))
        return false;
    }
    put1(b, 'u');
    return true;
  }
  case JSON_ARRAY: {
    put1(b, ']');
    if (json_array_size(j) == 0)
      return true;
    put1(b, '(');
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v) {
      if (!put_json(b, v, depth + 1))
        return false;
    }
    put1(b, 'e');
    return true;
  }
  case JSON_STRING:
    put_str(b, json_string_value(j), json_string_length(j));
    return true;
  case JSON_INTEGER:
    put_int(b, (int64_t)json_integer_value(j));
    return true;
  case JSON_REAL: {
    double d = json_real_value(j);
    uint64_t u;
    memcpy(&u, &d, 8);
    unsigned char h[9] = {'G'};
    for (int i = 0; i < 8; i++)
      h[1 + i] = (unsigned char)(u >> (56 - 8 * i));
    put(b, h, 9);
    return true;
  }
  case JSON_TRUE:
    put1(b, 0x88);
    return true;
  case JSON_FALSE:
    put1(b, 0x89);
    return true;
  case JSON_NULL:
    put1(b, 'N');
    return true;
  }
  return false;
}

static const char *storage_type(decomp_dtype dt) {
  switch (dt) {
  case DECOMP_DTYPE_F32: return "torch\nFloatStorage\n";
  case DECOMP_DTYPE_F16: return "torch\nHalfStorage\n";
  case DECOMP_DTYPE_BF16: return "torch\nBFloat16Storage\n";
  case DECOMP_DTYPE_F64: return "torch\nDoubleStorage\n";
  case DECOMP_DTYPE_I64: return "torch\nLongStorage\n";
  case DECOMP_DTYPE_I32: return "torch\nIntStorage\n";
  case DECOMP_DTYPE_I16: return "torch\nShortStorage\n";
  case DECOMP_DTYPE_I8: return "torch\nCharStorage\n";
  case DECOMP_DTYPE_U8: return "torch\nByteStorage\n";
  case DECOMP_DTYPE_BOOL: return "torch\nBoolStorage\n";
  }
  return NULL;
}

/* One storage written: the tensors (storage, dtype) that share it. */
typedef struct group {
  const unsigned char *base;
  decomp_dtype dtype;
  size_t nbytes;   /* largest storage_nbytes among its tensors */
} group;

typedef struct order_item {
  const unsigned char *base;
  decomp_dtype dtype;
  size_t index;    /* tensor index */
} order_item;

static int cmp_item(const void *a, const void *b) {
  const order_item *x = a, *y = b;
  if (x->base != y->base)
    return (uintptr_t)x->base < (uintptr_t)y->base ? -1 : 1;
  if (x->dtype != y->dtype)
    return x->dtype < y->dtype ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

int core_pth_write(decomp_ctx *ctx, const decomp_weights *w, int fd,
                   const char *stem) {
  size_t n = decomp_weights_count(w);
  int rc = DECOMP_OK;
  buf pk = {0};
  zip_writer zw;
  zip_writer_init(&zw, ctx, fd);
  json_t *meta = NULL;
  order_item *items = calloc(n ? n : 1, sizeof *items);
  size_t *gid = calloc(n ? n : 1, sizeof *gid);    /* tensor → group */
  group *groups = calloc(n ? n : 1, sizeof *groups);
  size_t *renum = calloc(n ? n : 1, sizeof *renum); /* provisional → final */
  size_t ngroups = 0;
  char name[1024];
  if (!items || !gid || !groups || !renum) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if (!stem || !*stem || strlen(stem) > 512 || strchr(stem, '/')) {
    rc = core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "bad archive name");
    goto done;
  }
  /* Group tensors by storage; number the groups in order of first use so
   * the keys follow the set's order as torch.save's do. */
  for (size_t i = 0; i < n; i++) {
    const decomp_tensor *t = decomp_weights_at(w, i);
    items[i] = (order_item){t->storage, t->dtype, i};
  }
  if (n)
    qsort(items, n, sizeof *items, cmp_item);
  for (size_t i = 0; i < n; i++)
    gid[i] = SIZE_MAX;
  for (size_t s = 0; s < n;) {
    size_t e = s, first = items[s].index;
    size_t nbytes = 0;
    while (e < n && items[e].base == items[s].base &&
           items[e].dtype == items[s].dtype) {
      const decomp_tensor *t = decomp_weights_at(w, items[e].index);
      if (t->storage_nbytes > nbytes)
        nbytes = t->storage_nbytes;
      if (items[e].index < first)
        first = items[e].index;
      e++;
    }
    /* Provisional id = first tensor index; renumbered below. */
    for (size_t k = s; k < e; k++)
      gid[items[k].index] = first;
    groups[first] = (group){items[s].base, items[s].dtype, nbytes};
    s = e;
  }
  for (size_t i = 0; i < n; i++) {
    if (gid[i] == i) { /* first tensor of its group */
      renum[i] = ngroups;
      groups[ngroups++] = groups[i]; /* ngroups <= i: no clobbering */
    }
  }
  for (size_t i = 0; i < n; i++)
    gid[i] = renum[gid[i]];

  /* data.pkl */
  put(&pk, "\x80\x02", 2);
  put_odict(&pk);
  if (n)
    put1(&pk, '(');
  for (size_t i = 0; i < n; i++) {
    const decomp_tensor *t = decomp_weights_at(w, i);
    const group *g = &groups[gid[i]];
    size_t isz = decomp_dtype_size(t->dtype);
    char key[32];
    int klen = snprintf(key, sizeof key, "%zu", gid[i]);
    put_str(&pk, t->name, strlen(t->name));
    put_global(&pk, "torch._utils\n_rebuild_tensor_v2\n");
    put1(&pk, '(');
    put1(&pk, '(');
    put_str(&pk, "storage", 7);
    put_global(&pk, storage_type(t->dtype));
    put_str(&pk, key, (size_t)klen);
    put_str(&pk, "cpu", 3);
    put_int(&pk, (int64_t)(g->nbytes / isz));
    put1(&pk, 't');
    put1(&pk, 'Q');
    put_int(&pk, t->offset);
    put1(&pk, '(');
    for (int d = 0; d < t->ndim; d++)
      put_int(&pk, t->shape[d]);
    put1(&pk, 't');
    put1(&pk, '(');
    for (int d = 0; d < t->ndim; d++)
      put_int(&pk, t->stride[d]);
    put1(&pk, 't');
    put1(&pk, 0x89); /* requires_grad = False */
    put_odict(&pk);  /* backward_hooks */
    put1(&pk, 't');
    put1(&pk, 'R');
    /* torch.save batches SETITEMS by 1000; any size loads, but stay alike. */
    if ((i + 1) % 1000 == 0 && i + 1 < n) {
      put1(&pk, 'u');
      put1(&pk, '(');
    }
  }
  if (n)
    put1(&pk, 'u');
  const char *mtext = decomp_weights_metadata(w);
  if (mtext) {
    json_error_t jerr;
    meta = json_loads(mtext, 0, &jerr);
    if (!json_is_object(meta)) {
      rc = core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "metadata is not a JSON object");
      goto done;
    }
    put1(&pk, '}');
    put_str(&pk, "_metadata", 9);
    if (!put_json(&pk, meta, 0)) {
      rc = core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "metadata is nested too deeply");
      goto done;
    }
    put1(&pk, 's');
    put1(&pk, 'b');
  }
  put1(&pk, '.');
  if (pk.oom) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }

  snprintf(name, sizeof name, "%s/data.pkl", stem);
  if ((rc = zip_writer_add(&zw, name, pk.p, pk.n)))
    goto done;
  for (size_t k = 0; k < ngroups; k++) {
    const group *g = &groups[k];
    size_t isz = decomp_dtype_size(g->dtype);
    size_t nbytes = g->nbytes / isz * isz;
    snprintf(name, sizeof name, "%s/data/%zu", stem, k);
    if ((rc = zip_writer_begin(&zw, name, nbytes)))
      goto done;
    /* Stream in slices so a huge storage never needs one write call. */
    for (size_t off = 0; off < nbytes && rc == DECOMP_OK;) {
      size_t chunk = nbytes - off < ((size_t)1 << 26) ? nbytes - off
                                                       : (size_t)1 << 26;
      rc = zip_writer_data(&zw, g->base + off, chunk);
      off += chunk;
    }
    if (rc || (rc = zip_writer_end(&zw)))
      goto done;
  }
  snprintf(name, sizeof name, "%s/version", stem);
  if ((rc = zip_writer_add(&zw, name, "3\n", 2)))
    goto done;
  rc = zip_writer_finish(&zw);
done:
  json_decref(meta);
  free(pk.p);
  free(items);
  free(gid);
  free(groups);
  free(renum);
  zip_writer_free(&zw);
  return rc;
}
