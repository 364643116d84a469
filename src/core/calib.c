/* calib.c — the calibration a run is given (DESIGN "Beyond spatial SVD"):
 * the Gram matrices of layers' inputs, as a weight set read from a
 * decompd.calibration safetensors file (or built in memory by the Python
 * package). This file owns reading its metadata's layer map, checking every
 * Gram against the layer it belongs to before any work starts (the layer
 * exists and is a Conv2d or Linear of the type named, the shape fits, the
 * values are finite and symmetric, the sample count is positive), and
 * turning one group's Gram into the whitening factor S = chol(G) in either
 * precision, with a small logged shift when G is not positive definite. */
#include <float.h>
#include <inttypes.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "svd.h"

#define CALIB_FORMAT "decompd.calibration"

struct calib_entry {
  const decomp_layer *layer;
  const decomp_tensor *gram;
  int64_t samples;
};

struct core_calib {
  struct calib_entry *e;
  size_t n;
};

/* Every failure here: BAD_CALIBRATION, its message starting so. */
#define bad(ctx, ...)                                                          \
  core_fail(ctx, DECOMP_ERR_BAD_CALIBRATION, "calibration: " __VA_ARGS__)

void core_calib_free(core_calib *c) {
  if (!c)
    return;
  free(c->e);
  free(c);
}

/* "KEY.what" from the weight set, or NULL. */
static const decomp_tensor *find2(const decomp_weights *w, const char *key,
                                  const char *what) {
  size_t len = strlen(key) + strlen(what) + 2;
  char *name = malloc(len);
  if (!name)
    return NULL;
  snprintf(name, len, "%s.%s", key, what);
  const decomp_tensor *t = decomp_weights_find(w, name);
  free(name);
  return t;
}

/* A tensor's elements by their row-major index over its logical shape:
 * straight from the data when it is contiguous (a Gram read from a file
 * is), else through its strides. A Gram is never copied whole: a dense
 * copy would double the memory of a large one. */
typedef struct gram_view {
  const decomp_tensor *t;
  const unsigned char *p;
  size_t size;
  decomp_dtype dtype;
  bool dense;
} gram_view;

static gram_view view_of(const decomp_tensor *t) {
  return (gram_view){.t = t,
                     .p = t->data,
                     .size = decomp_dtype_size(t->dtype),
                     .dtype = t->dtype,
                     .dense = decomp_tensor_is_contiguous(t)};
}

static inline double at(const gram_view *v, int64_t i) {
  if (v->dense) {
    if (v->dtype == DECOMP_DTYPE_F64)
      return ((const double *)v->p)[i];
    if (v->dtype == DECOMP_DTYPE_F32)
      return ((const float *)v->p)[i];
    return core_load_f64(v->p + (size_t)i * v->size, v->dtype);
  }
  const decomp_tensor *t = v->t;
  int64_t off = 0, rem = i;
  for (int d = t->ndim - 1; d >= 0; d--) {
    off += (rem % t->shape[d]) * t->stride[d];
    rem /= t->shape[d];
  }
  return core_load_f64(v->p + (size_t)off * v->size, v->dtype);
}

static double element(const decomp_tensor *t, int64_t i) {
  gram_view v = view_of(t);
  return at(&v, i);
}

/* Tiles of the symmetric checks and copies: both triangles' tiles stay in
 * the cache while one is read by rows and the other by columns. */
#define TILE 64

/* The scans of check_values over one group's n×n values (row-major, as
 * the file lays them, from index `base`), each with its own element
 * access: typed for a dense float or double Gram (a LLaMA-7B calibration
 * is 5.5 billion values), at() for any other. finite_scan: the first value
 * that is not finite (*bad, -1 when none) and the largest magnitude;
 * asym_scan: the first pair (a, b), by tiles, whose values differ by more
 * than tol (false when none). */
#define LOAD_F32(src, i) ((double)((const float *)(src))[i])
#define LOAD_F64(src, i) (((const double *)(src))[i])
#define LOAD_ANY(src, i) at((src), (i))
#define GRAM_SCANS(NAME, SRC, LOAD)                                            \
  static void finite_scan_##NAME(SRC src, int64_t base, int64_t len,          \
                                 int64_t *bad, double *top) {                  \
    double t = 0;                                                              \
    *bad = -1;                                                                 \
    for (int64_t x = 0; x < len; x++) {                                        \
      double v = fabs(LOAD(src, base + x));                                    \
      if (!(v <= DBL_MAX)) {                                                   \
        *bad = x;                                                              \
        break;                                                                 \
      }                                                                        \
      t = v > t ? v : t;                                                       \
    }                                                                          \
    *top = t;                                                                  \
  }                                                                            \
  static bool asym_scan_##NAME(SRC src, int64_t base, int64_t n, double tol,  \
                               int64_t *ra, int64_t *rb) {                     \
    for (int64_t a0 = 0; a0 < n; a0 += TILE)                                   \
      for (int64_t b0 = a0; b0 < n; b0 += TILE)                                \
        for (int64_t a = a0; a < a0 + TILE && a < n; a++)                      \
          for (int64_t b = b0 > a + 1 ? b0 : a + 1; b < b0 + TILE && b < n;    \
               b++)                                                            \
            if (fabs(LOAD(src, base + a * n + b) -                             \
                     LOAD(src, base + b * n + a)) > tol) {                     \
              *ra = a;                                                         \
              *rb = b;                                                         \
              return true;                                                     \
            }                                                                  \
    return false;                                                              \
  }

GRAM_SCANS(f32, const void *, LOAD_F32)
GRAM_SCANS(f64, const void *, LOAD_F64)
GRAM_SCANS(any, const gram_view *, LOAD_ANY)

/* Group j (of n×n) of the Gram: finite, no negative diagonal entry,
 * symmetric to 1e-5 of its largest magnitude. */
static int check_values(decomp_ctx *ctx, const gram_view *g,
                        const decomp_layer *l, const char *key, int64_t j,
                        int64_t n) {
  double top = 0;
  int64_t base = j * n * n, x;
  bool f32 = g->dense && g->dtype == DECOMP_DTYPE_F32;
  bool f64 = g->dense && g->dtype == DECOMP_DTYPE_F64;
  if (f32)
    finite_scan_f32(g->p, base, n * n, &x, &top);
  else if (f64)
    finite_scan_f64(g->p, base, n * n, &x, &top);
  else
    finite_scan_any(g, base, n * n, &x, &top);
  if (x >= 0) {
    double v = at(g, base + x);
    return bad(ctx, "layer %s: %s.gram holds %s at [%" PRId64 ", %" PRId64
                    ", %" PRId64 "]",
               l->name, key, isnan(v) ? "NaN" : "Inf", j, x / n, x % n);
  }
  for (int64_t a = 0; a < n; a++)
    if (at(g, base + a * n + a) < 0)
      return bad(ctx, "layer %s: %s.gram has a negative diagonal entry at "
                      "[%" PRId64 ", %" PRId64 ", %" PRId64 "]",
                 l->name, key, j, a, a);
  int64_t a, b;
  double tol = 1e-5 * top;
  bool asym = f32   ? asym_scan_f32(g->p, base, n, tol, &a, &b)
              : f64 ? asym_scan_f64(g->p, base, n, tol, &a, &b)
                    : asym_scan_any(g, base, n, tol, &a, &b);
  if (asym)
    return bad(ctx, "layer %s: %s.gram is not symmetric ([%" PRId64
                    ", %" PRId64 ", %" PRId64 "] = %g, [%" PRId64 ", %" PRId64
                    ", %" PRId64 "] = %g)",
               l->name, key, j, a, b, at(g, base + a * n + b), j, b, a,
               at(g, base + b * n + a));
  return DECOMP_OK;
}

/* One layer's entry: its Gram and count, checked against the layer. */
static int check_entry(decomp_ctx *ctx, const decomp_weights *w,
                       const decomp_layer *l, const char *type,
                       const char *key, const struct calib_entry *seen,
                       size_t nseen, struct calib_entry *out) {
  bool linear = core_layer_is_linear(l);
  if (!core_layer_is_decomposable(l))
    return bad(ctx, "layer %s is a %s in the model, not a Conv2d or Linear",
               l->name, l->type);
  if (type && strcmp(type, linear ? "Linear" : "Conv2d") != 0)
    return bad(ctx, "layer %s is a %s in the model, the calibration says %s",
               l->name, linear ? "Linear" : "Conv2d", type);
  const decomp_tensor *g = find2(w, key, "gram");
  const decomp_tensor *c = find2(w, key, "count");
  if (!g)
    return bad(ctx, "layer %s: no tensor %s.gram", l->name, key);
  bool checked = false; /* by an earlier layer that shares it */
  for (size_t i = 0; i < nseen && !checked; i++)
    checked = seen[i].gram == g;
  if (!c)
    return bad(ctx, "layer %s: no tensor %s.count", l->name, key);
  if (!decomp_dtype_is_float(g->dtype))
    return bad(ctx, "layer %s: %s.gram has dtype %s, not a floating type",
               l->name, key, decomp_dtype_name(g->dtype));
  int64_t groups = l->groups;
  int64_t n = (l->in_channels / groups) * l->kernel_size[0] *
              l->kernel_size[1];
  bool fits = (g->ndim == 3 && g->shape[0] == groups && g->shape[1] == n &&
               g->shape[2] == n) ||
              (g->ndim == 2 && groups == 1 && g->shape[0] == n &&
               g->shape[1] == n);
  if (!fits) {
    char got[96] = "[";
    for (int d = 0; d < g->ndim && d < 4; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%" PRId64,
               d ? ", " : "", g->shape[d]);
    strncat(got, "]", sizeof got - strlen(got) - 1);
    if (linear)
      return bad(ctx,
                 "layer %s: %s.gram has shape %s, a Linear with "
                 "in_features %" PRId64 " needs [%" PRId64 ", %" PRId64 "]",
                 l->name, key, got, n, n, n);
    return bad(ctx,
               "layer %s: %s.gram has shape %s, this conv's patches need "
               "[%" PRId64 ", %" PRId64 ", %" PRId64 "] (groups, (in/groups)"
               "·kh·kw twice)",
               l->name, key, got, groups, n, n);
  }
  if (decomp_tensor_numel(c) != 1)
    return bad(ctx, "layer %s: %s.count is not a single number", l->name, key);
  double count = element(c, 0);
  if (!(count >= 1) || !isfinite(count))
    return bad(ctx, "layer %s: %s.count is %g, not a positive sample count",
               l->name, key, count);
  /* Finite and symmetric, to the Gram's own scale: once for a Gram that
   * several layers share; its pages given back after (a large model's
   * Grams are read one by one, not held). */
  if (!checked) {
    core_weights_will_need(w, g->storage, g->storage_nbytes);
    gram_view gv = view_of(g);
    for (int64_t j = 0; j < groups; j++) {
      int rc = check_values(ctx, &gv, l, key, j, n);
      if (rc != DECOMP_OK)
        return rc;
    }
    core_weights_drop_pages(w, g->storage, g->storage_nbytes);
  }
  *out = (struct calib_entry){.layer = l, .gram = g, .samples = (int64_t)count};
  return DECOMP_OK;
}

int core_calib_open(decomp_ctx *ctx, const decomp_weights *w,
                    const decomp_spec *spec, core_calib **out) {
  *out = NULL;
  const char *meta = decomp_weights_metadata(w);
  json_t *root = meta ? json_loads(meta, 0, NULL) : NULL, *layers = NULL;
  core_calib *c = NULL;
  int rc;
  const char *fmt = json_string_value(json_object_get(root, "format"));
  if (!fmt || strcmp(fmt, CALIB_FORMAT) != 0) {
    rc = bad(ctx, "not a decompd calibration (its metadata's \"format\" is "
                  "not \"" CALIB_FORMAT "\")");
    goto out;
  }
  const char *ver = json_string_value(json_object_get(root, "version"));
  if (!ver || strcmp(ver, "1") != 0) {
    rc = bad(ctx, "version %s is not supported (this build reads 1)",
             ver ? ver : "(missing)");
    goto out;
  }
  const char *text = json_string_value(json_object_get(root, "layers"));
  layers = text ? json_loads(text, 0, NULL) : NULL;
  if (!json_is_object(layers)) {
    rc = bad(ctx, "its metadata's \"layers\" is not a JSON object text");
    goto out;
  }
  c = calloc(1, sizeof *c);
  size_t n = json_object_size(layers);
  if (!c || !(c->e = calloc(n ? n : 1, sizeof *c->e))) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto out;
  }
  const char *name;
  json_t *v;
  json_object_foreach(layers, name, v) {
    const decomp_layer *l = decomp_spec_find(spec, name);
    if (!l) {
      rc = bad(ctx, "layer %s is not in the model's layer spec", name);
      goto out;
    }
    const char *key = json_string_value(json_object_get(v, "gram"));
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || !key) {
      rc = bad(ctx, "layer %s: its entry has no \"gram\" key", name);
      goto out;
    }
    if ((rc = check_entry(ctx, w, l, type, key, c->e, c->n, &c->e[c->n])))
      goto out;
    c->n++;
  }
  *out = c;
  c = NULL;
  rc = DECOMP_OK;
out:
  core_calib_free(c);
  json_decref(layers);
  json_decref(root);
  return rc;
}

size_t core_calib_count(const core_calib *c) { return c ? c->n : 0; }

int decomp_calibration_check(decomp_ctx *ctx, const decomp_weights *calibration,
                             const decomp_spec *spec, size_t *layers) {
  if (!calibration || !spec)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_calibration_check: NULL argument");
  core_calib *c = NULL;
  int rc = core_calib_open(ctx, calibration, spec, &c);
  if (rc == DECOMP_OK && layers)
    *layers = core_calib_count(c);
  core_calib_free(c);
  return rc;
}

const decomp_tensor *core_calib_gram(const core_calib *c, const decomp_layer *l,
                                     int64_t *samples) {
  for (size_t i = 0; c && i < c->n; i++)
    if (c->e[i].layer == l) {
      *samples = c->e[i].samples;
      return c->e[i].gram;
    }
  return NULL;
}

#define CALIB_FACTOR(T, SUFFIX)                                                \
  int core_calib_factor_##SUFFIX(decomp_ctx *ctx, const char *what,           \
                                 const decomp_tensor *gram, int64_t group,    \
                                 int64_t n, T *s, double *shift) {            \
    size_t nn = (size_t)n;                                                     \
    int64_t groups = gram->ndim == 3 ? gram->shape[0] : 1;                     \
    int64_t base = gram->ndim == 3 ? group * n * n : 0;                        \
    double tr = 0, all = 0;                                                    \
    gram_view gv = view_of(gram);                                              \
    for (int64_t j = 0; j < groups; j++)                                       \
      for (int64_t a = 0; a < n; a++) {                                        \
        double d = at(&gv, j * n * n + a * n + a);                             \
        all += d;                                                              \
        tr += j * n * n == base ? d : 0;                                       \
      }                                                                        \
    /* Whitening does not depend on G's scale: bring the layer's mean       \
     * diagonal near 1 (a power of two, exact, the same for every group so  \
     * that the groups' output energies add up as the data's do) so that    \
     * float32 neither overflows nor underflows. */                            \
    int ex = 0;                                                                \
    if (all > 0)                                                               \
      frexp(all / (double)(n * groups), &ex);                                  \
    double mean = tr > 0 ? ldexp(tr / (double)n, -ex) : 1.0;                  \
    /* 2^-ex: a product by it is ldexp's scaling, bit for bit, while 2^-ex  \
     * is a normal number; else ldexp itself. */                             \
    double sc = ldexp(1.0, -ex);                                               \
    bool by_sc = ex > -1000 && ex < 1000;                                      \
    *shift = 0;                                                                \
    for (double lambda = 0;;) {                                                \
      /* s(a, b) = G[a][b]: by tiles, G's rows read, s's columns written. */ \
      for (size_t a0 = 0; a0 < nn; a0 += TILE)                                 \
        for (size_t b0 = 0; b0 < nn; b0 += TILE)                               \
          for (size_t a = a0; a < a0 + TILE && a < nn; a++)                    \
            for (size_t b = b0; b < b0 + TILE && b < nn; b++)                  \
              s[a + nn * b] =                                                  \
                  (T)((by_sc ? at(&gv, base + (int64_t)(a * nn + b)) * sc      \
                             : ldexp(at(&gv, base + (int64_t)(a * nn + b)), -ex)) + \
                      (a == b ? lambda : 0.0));                                \
      bool pd;                                                                 \
      int rc = core_chol_##SUFFIX(ctx, what, n, s, &pd);                       \
      if (rc != DECOMP_OK)                                                     \
        return rc;                                                             \
      if (pd) {                                                                \
        *shift = lambda / mean;                                                \
        if (lambda > 0)                                                        \
          core_log(ctx, DECOMP_LOG_WARN, "calibration",                        \
                   "matrix=\"%s\" gram_not_positive_definite shift=%.3g "      \
                   "(times the mean diagonal)",                                \
                   what, lambda / mean);                                       \
        return DECOMP_OK;                                                      \
      }                                                                        \
      /* Not positive definite (dead inputs, too few samples, rounding):    \
       * shift the diagonal by 1e-6 of its mean, ten times more each try. */ \
      lambda = lambda > 0 ? lambda * 10 : 1e-6 * mean;                         \
      if (lambda > 0.1 * mean)                                                 \
        return core_fail(ctx, DECOMP_ERR_BAD_CALIBRATION,                      \
                         "calibration: %s: the Gram matrix is not positive "   \
                         "semi-definite (a shift of 10%% of its diagonal "     \
                         "did not make it so)",                                \
                         what);                                                \
    }                                                                          \
  }

CALIB_FACTOR(float, f32)
CALIB_FACTOR(double, f64)
