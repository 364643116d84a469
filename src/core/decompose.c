/* decompose.c — decomp_decompose: the spatial SVD of a model's Conv2d layers
 * (DESIGN "The decomposition").
 *
 * Two passes over the spec. Phase 1 checks each eligible layer's weights for
 * NaN/Inf and, when the policy chooses ranks from the spectrum, computes its
 * singular values (values only: gesdd for small matrices, the eigenvalues
 * of a Gram matrix built from kernel slabs for large ones; svd.c). The
 * policy then chooses every rank at once (a budget needs the whole model).
 * Phase 2 factorizes each layer with a rank: per group j the matrix
 * M_j[(i,h),(o,w)] = W[j·O+o, i, h, w] (vertical-first; the transposed
 * reshape M_j[(i,w),(o,h)] for horizontal-first) is split as U_R Σ_R^½
 * (first conv) and V_R Σ_R^½ (second conv), from gesdd (small), the
 * randomized truncated SVD (large, ranks up to about 0.4·k) or the float64
 * Gram eigenpairs (large, higher ranks; float32 compute), each checked by
 * the accuracy control; the info file's error is the one achieved. With decomp_options.threads ≥ 2 the
 * layers of each phase run on a small pool (see "layers in parallel"
 * below); memory is bounded by the layers in flight plus the new factors.
 * Only the new tensors are kept; everything else in the result is borrowed
 * from the input. decomp_decompose_save streams instead: between the two
 * phases it plans the output files (shard_write.c) and copies the tensors
 * that pass through, and each layer's factors are written and freed as it
 * is reported done, so memory is the layers in flight alone; the input
 * pages each layer read are given back after it (core_weights_drop_pages). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "run.h"
#include "svd.h"

struct decomp_result {
  decomp_weights *weights;
  char *info;
};

const decomp_weights *decomp_result_weights(const decomp_result *r) {
  return r ? r->weights : NULL;
}

const char *decomp_result_info(const decomp_result *r) {
  return r ? r->info : NULL;
}

void decomp_result_free(decomp_result *r) {
  if (!r)
    return;
  decomp_weights_free(r->weights);
  free(r->info);
  free(r);
}

const char *core_order_name(core_order o) {
  return o == CORE_ORDER_HORIZONTAL_FIRST ? "horizontal_first"
                                          : "vertical_first";
}

/* --- one layer's work --------------------------------------------------- */


enum { JOB_IDLE = 0, JOB_QUEUED = 1, JOB_DONE = 2 };

/* The matrix shape of a layer's groups for a method (and, spatial, an
 * order). Row (i, pa) = i·ka + pa on the input side, column (o, pb) =
 * o·kb + pb on the output side, where the kernel position (h, w) is
 * (pa, pb) vertical-first, (pb, pa) horizontal-first, and pa = h·kw + w,
 * pb = 0 for the channel method (and a Linear, a 1x1 conv here). */
typedef struct geom {
  int64_t g, O, I, kh, kw;
  int64_t ka, kb;  /* kernel positions per row / column block */
  int64_t m, n, k; /* m = I·ka rows, n = O·kb columns, k = min(m, n) */
  core_method method;
  bool vfirst;
} geom;

static geom geom_of(const decomp_layer *l, core_method method,
                    core_order order) {
  geom gm;
  gm.g = l->groups;
  gm.O = l->out_channels / l->groups;
  gm.I = l->in_channels / l->groups;
  gm.kh = l->kernel_size[0];
  gm.kw = l->kernel_size[1];
  gm.method = core_layer_is_linear(l) ? CORE_METHOD_LINEAR : method;
  gm.vfirst = order == CORE_ORDER_VERTICAL_FIRST;
  if (gm.method != CORE_METHOD_SPATIAL) {
    gm.ka = gm.kh * gm.kw;
    gm.kb = 1;
  } else {
    gm.ka = gm.vfirst ? gm.kh : gm.kw;
    gm.kb = gm.vfirst ? gm.kw : gm.kh;
  }
  gm.m = gm.I * gm.ka;
  gm.n = gm.O * gm.kb;
  gm.k = gm.m < gm.n ? gm.m : gm.n;
  return gm;
}

/* The shapes of the two new weights at rank R: [g·R, I, ka-ish…] and
 * [Cout, R, …] (4-d for convs, 2-d [R, in] and [out, R] for a Linear). */
static void factor_shapes(const decomp_layer *l, const geom *gm, int64_t R,
                          int *ndim, int64_t s0[4], int64_t s1[4]) {
  *ndim = gm->method == CORE_METHOD_LINEAR ? 2 : 4;
  s0[0] = gm->g * R, s0[1] = gm->I;
  s1[0] = l->out_channels, s1[1] = R;
  s0[2] = s0[3] = s1[2] = s1[3] = 0;
  if (gm->method == CORE_METHOD_CHANNEL) {
    s0[2] = gm->kh, s0[3] = gm->kw; /* [g·R, I, kh, kw] */
    s1[2] = s1[3] = 1;              /* [Cout, R, 1, 1] */
  } else if (gm->method == CORE_METHOD_SPATIAL) {
    s0[2] = gm->vfirst ? gm->kh : 1;
    s0[3] = gm->vfirst ? 1 : gm->kw;
    s1[2] = gm->vfirst ? 1 : gm->kh;
    s1[3] = gm->vfirst ? gm->kw : 1;
  }
}

static geom geom_view(const core_layer_view *v) {
  return geom_of(v->layer, v->method, v->order);
}

/* The kernel position (h, w) of (pa, pb), and back. */
static void hw_of(const geom *gm, size_t pa, size_t pb, size_t *h, size_t *w) {
  if (gm->method != CORE_METHOD_SPATIAL) {
    *h = pa / (size_t)gm->kw;
    *w = pa % (size_t)gm->kw;
  } else if (gm->vfirst) {
    *h = pa;
    *w = pb;
  } else {
    *h = pb;
    *w = pa;
  }
}

static void pa_pb_of(const geom *gm, size_t h, size_t w, size_t *pa,
                     size_t *pb) {
  if (gm->method != CORE_METHOD_SPATIAL) {
    *pa = h * (size_t)gm->kw + w;
    *pb = 0;
  } else if (gm->vfirst) {
    *pa = h;
    *pb = w;
  } else {
    *pa = w;
    *pb = h;
  }
}

/* Where element (row, col) of group j's matrix (rows i·ka + pa, columns
 * o·kb + pb) sits in the kernel, row-major [g·O, I, kh, kw]. */
static size_t kernel_index(const geom *gm, size_t j, size_t row, size_t col) {
  size_t ka = (size_t)gm->ka, kb = (size_t)gm->kb, h, w;
  hw_of(gm, row % ka, col % kb, &h, &w);
  return ((((j * (size_t)gm->O + col / kb) * (size_t)gm->I + row / ka) *
               (size_t)gm->kh +
           h) *
          (size_t)gm->kw) +
         w;
}

static char *join(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  char *s = malloc(la + lb + 1);
  if (s) {
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
  }
  return s;
}

static int progress_at(decomp_ctx *ctx, const decomp_options *opts,
                       const struct layer *L, size_t total, int phase,
                       int64_t rank, const char *skip_reason, double seconds,
                       double fraction) {
  if (!opts || !opts->progress)
    return DECOMP_OK;
  decomp_progress p = {
      .layer = L->info.layer->name,
      .index = L->conv_index,
      .total = total,
      .phase = phase,
      .rank = rank,
      .max_rank = L->info.has_view ? L->info.view.max_rank : 0,
      .seconds = seconds,
      .skip_reason = skip_reason,
      .fraction = fraction,
  };
  if (opts->progress(opts->progress_user, &p) != 0)
    return core_fail(ctx, DECOMP_ERR_CANCELLED, "cancelled at layer %s",
                     L->info.layer->name);
  return DECOMP_OK;
}

static int progress(decomp_ctx *ctx, const decomp_options *opts,
                    const struct layer *L, size_t total, int phase,
                    int64_t rank, const char *skip_reason) {
  return progress_at(ctx, opts, L, total, phase, rank, skip_reason,
                     L->seconds, 0);
}

/* WORKING events of a layer run on the calling thread: core_tick's hook,
 * at most every progress interval (the first one that far in). */
struct ticker {
  decomp_ctx *ctx;
  const decomp_options *opts;
  const struct layer *L;
  size_t total;
  int64_t rank;
  double t0, last, interval;
};

static int layer_tick(void *user, double fraction) {
  struct ticker *tk = user;
  double now = core_now();
  if (now - tk->last < tk->interval)
    return DECOMP_OK;
  tk->last = now;
  return progress_at(tk->ctx, tk->opts, tk->L, tk->total,
                     DECOMP_PHASE_WORKING, tk->rank, NULL,
                     tk->L->seconds + (now - tk->t0),
                     fraction < 1 ? fraction : 0.999);
}

/* The kernel as a dense row-major array of T: the tensor's own data when it
 * already is one (no copy), else a gathered copy in *owned. */
#define DENSE_LOADER(T, DT, SUFFIX)                                            \
  static int dense_##SUFFIX(decomp_ctx *ctx, const decomp_tensor *t,           \
                            const T **out, T **owned) {                        \
    *owned = NULL;                                                             \
    if (t->dtype == DT && decomp_tensor_is_contiguous(t)) {                    \
      *out = t->data;                                                          \
      return DECOMP_OK;                                                        \
    }                                                                          \
    size_t n = (size_t)decomp_tensor_numel(t);                                 \
    T *buf = malloc((n ? n : 1) * sizeof *buf);                                \
    if (!buf)                                                                  \
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", t->name);   \
    core_tensor_to_##SUFFIX(t, buf);                                           \
    *out = *owned = buf;                                                       \
    return DECOMP_OK;                                                          \
  }

DENSE_LOADER(float, DECOMP_DTYPE_F32, f32)
DENSE_LOADER(double, DECOMP_DTYPE_F64, f64)

/* One group's SVD step. With R == 0: the k singular values into all[k].
 * With R > 0: s[R], u (m×R, ld m), v (n×R, ld n), the SVD's own figure of
 * the discarded energy in *disc, and, when this path knows them, all k
 * values into all[k] (*have_all), through svd.c (gesdd for small matrices;
 * for large ones the Gram spectrum, and the block Krylov truncated SVD or
 * the float64 Gram eigenpairs), or gesdd whatever the size when `exact`.
 * `a` is kept. */
#define SVD_STEP(T, SUFFIX)                                                    \
  static int step_##SUFFIX(decomp_ctx *ctx, const char *what, const geom *gm,  \
                           T *a, int64_t R, uint64_t seed, double energy,      \
                           const double *known, bool exact, double *all,       \
                           bool *have_all, T *s, T *u, T *v, double *disc,     \
                           core_svd_report *rep) {                             \
    *rep = (core_svd_report){.optimal = -1};                                   \
    if (R == 0) {                                                              \
      *have_all = true;                                                        \
      return core_svd_spectrum_##SUFFIX(ctx, what, gm->m, gm->n, a, all);      \
    }                                                                          \
    int rc = exact ? core_svd_rank_exact_##SUFFIX(ctx, what, gm->m, gm->n, a,  \
                                                  R, s, u, v, all, rep)        \
                   : core_svd_rank_##SUFFIX(ctx, what, gm->m, gm->n, a, R,     \
                                            seed, energy, known, s, u, v,      \
                                            all, rep);                         \
    if (rc != DECOMP_OK)                                                       \
      return rc;                                                               \
    *disc = rep->discarded;                                                    \
    *have_all = !rep->randomized && !rep->gram;                                \
    return DECOMP_OK;                                                          \
  }

SVD_STEP(float, f32)
SVD_STEP(double, f64)

/* Phase 1's spectrum of group j of a large layer, without gathering the
 * whole matrix: the smaller Gram matrix accumulated (ssyrk) from slabs of
 * 256 columns (m ≤ n: A·Aᵀ) or rows (m > n: Aᵀ·A) gathered straight from
 * the kernel, each value times 2^sx (see layer_T), then its eigenvalues,
 * returned in the kernel's own scale. Peak memory is the k×k Gram matrix
 * and one slab, not the m×n matrix as well; `release` (the kernel's copy
 * converted to T, for the last group) is freed before the eigensolver. */
#define GRAM_SPECTRUM(T, SUFFIX, SYRK)                                         \
  static int gram_##SUFFIX(decomp_ctx *ctx, const char *what, const T *W,      \
                           const geom *gm, size_t j, int sx, double *out,      \
                           T **release) {                                      \
    size_t m = (size_t)gm->m, n = (size_t)gm->n, k = (size_t)gm->k;            \
    bool cols = m <= n;                                                        \
    size_t len = cols ? n : m, other = cols ? m : n, slab = 256;               \
    T sc = (T)ldexp(1.0, sx);                                                  \
    T *G = malloc(k * k * sizeof *G), *B = malloc(other * slab * sizeof *B);   \
    int rc = DECOMP_OK;                                                        \
    if (!G || !B) {                                                            \
      rc = core_fail(ctx, DECOMP_ERR_NOMEM,                                    \
                     "%s: out of memory for a %zux%zu Gram matrix", what, k,   \
                     k);                                                       \
      goto out;                                                                \
    }                                                                          \
    for (size_t c0 = 0; c0 < len; c0 += slab) {                                \
      size_t cw = len - c0 < slab ? len - c0 : slab;                           \
      for (size_t x = 0; x < cw; x++)                                          \
        for (size_t y = 0; y < other; y++) {                                   \
          size_t row = cols ? y : c0 + x, col = cols ? c0 + x : y;             \
          T v = W[kernel_index(gm, j, row, col)] * sc;                         \
          if (cols)                                                            \
            B[y + other * x] = v; /* m×cw, ld m */                             \
          else                                                                 \
            B[x + cw * y] = v; /* cw×n, ld cw */                               \
        }                                                                      \
      if (cols)                                                                \
        SYRK(false, (int64_t)k, (int64_t)cw, B, (int64_t)other, c0 ? 1 : 0,    \
             G, (int64_t)k);                                                   \
      else                                                                     \
        SYRK(true, (int64_t)k, (int64_t)cw, B, (int64_t)cw, c0 ? 1 : 0, G,     \
             (int64_t)k);                                                      \
      /* The eigensolver after this loop takes about 3/4 of the time. */       \
      if ((rc = core_tick(ctx, 0.25 * (double)(c0 + cw) / (double)len)) !=     \
          DECOMP_OK)                                                           \
        goto out;                                                              \
    }                                                                          \
    free(B);                                                                   \
    B = NULL;                                                                  \
    if (release) { /* the kernel's converted copy: not needed any more */      \
      free(*release);                                                          \
      *release = NULL;                                                         \
    }                                                                          \
    rc = core_svd_gram_values_##SUFFIX(ctx, what, (int64_t)k, G, out);         \
    for (size_t x = 0; rc == DECOMP_OK && x < k; x++)                          \
      out[x] = ldexp(out[x], -sx);                                             \
  out:                                                                         \
    free(G);                                                                   \
    free(B);                                                                   \
    return rc;                                                                 \
  }

GRAM_SPECTRUM(float, f32, core_ssyrk)
GRAM_SPECTRUM(double, f64, core_dsyrk)

/* x[n] rounded as it will be stored in `dt` at the scale 2^e it will be
 * stored at, and brought back. */
#define ROUND_TO(T, SUFFIX)                                                    \
  static void round_to_##SUFFIX(T *x, size_t n, decomp_dtype dt, int e) {     \
    for (size_t i = 0; i < n; i++)                                             \
      x[i] = (T)ldexp(core_dtype_round(dt, ldexp((double)x[i], e)), -e);       \
  }

ROUND_TO(float, f32)
ROUND_TO(double, f64)

/* One group's factors as they will be written, and what they achieve:
 * u and v (m×R and n×R, of the scaled matrix `a`) times √σ, each element
 * rounded as it will be stored in `dt` at the scale it will be stored
 * (u·2^fa, v·2^fb) and brought back, then ‖a − u·vᵀ‖² measured into
 * *meas. `bound` gets how far (in norm) that measurement may honestly
 * sit from the SVD's own figure: the rounding to `dt` (‖δ(u·vᵀ)‖ ≤
 * 2u_dt·√(σ_1·Σσ)) and the SVD's and residual's own arithmetic (a
 * backward-stable SVD reconstructs to about ε·k·‖a‖). */
#define FINISH_GROUP(T, SUFFIX, EPS)                                           \
  static int finish_##SUFFIX(decomp_ctx *ctx, const char *what,                \
                             const geom *gm, const T *a, double energy,        \
                             int64_t R, const T *s, T *u, T *v,                \
                             decomp_dtype dt, decomp_dtype own, int fa,        \
                             int fb, double *meas, double *bound) {            \
    size_t m = (size_t)gm->m, n = (size_t)gm->n, r = (size_t)R;                \
    double sum = 0;                                                            \
    for (size_t q = 0; q < r; q++) {                                           \
      T sq = (T)sqrt((double)(s[q] > 0 ? s[q] : 0));                           \
      sum += (double)s[q];                                                     \
      for (size_t x = 0; x < m; x++)                                           \
        u[x + m * q] *= sq;                                                    \
      for (size_t x = 0; x < n; x++)                                           \
        v[x + n * q] *= sq;                                                    \
    }                                                                          \
    double unit = 0;                                                           \
    if (dt != own) {                                                           \
      unit = dt == DECOMP_DTYPE_F16    ? 0x1p-11                               \
             : dt == DECOMP_DTYPE_BF16 ? 0x1p-8                                \
             : dt == DECOMP_DTYPE_F32  ? 0x1p-24                               \
                                       : 0x1p-53;                              \
      round_to_##SUFFIX(u, m * r, dt, fa);                                     \
      round_to_##SUFFIX(v, n * r, dt, fb);                                     \
    }                                                                          \
    double top = r ? (double)(s[0] > 0 ? s[0] : 0) : 0;                        \
    *bound = 2 * unit * sqrt(top * (sum > 0 ? sum : 0)) +                      \
             2 * EPS * (double)gm->k * sqrt(energy);                           \
    return core_svd_residual_##SUFFIX(ctx, what, gm->m, gm->n, a, R, u, v,     \
                                      meas);                                   \
  }

FINISH_GROUP(float, f32, 0x1p-24)
FINISH_GROUP(double, f64, 0x1p-53)

/* Whether a group's measured error² `meas` agrees with the SVD's own
 * figure `est` (within half a percent in norm, plus `bound`) and keeps
 * the accuracy control's promise against a known optimum `opt` (-1 when
 * not known); else why not (static). */
static const char *group_mismatch(double meas, double est, double opt,
                                  double bound) {
  double me = sqrt(meas), es = sqrt(est);
  if (fabs(me - es) > 0.005 * es + bound)
    return "the measured error differs from the SVD's own figure";
  if (opt >= 0 && me > CORE_SVD_TOLERANCE * sqrt(opt) + bound)
    return "the measured error misses the known optimum by more than 1%";
  return NULL;
}

/* Group j of the kernel W (dense, row-major [g·O, I, kh, kw]) as the
 * column-major m×n matrix A of the geometry, times 2^sx when sx ≠ 0. */
#define GATHER(T, SUFFIX)                                                      \
  static void gather_##SUFFIX(const T *W, const geom *gm, size_t j, int sx,    \
                              T *A) {                                          \
    size_t m = (size_t)gm->m, I = (size_t)gm->I, O = (size_t)gm->O;            \
    size_t kh = (size_t)gm->kh, kw = (size_t)gm->kw;                           \
    size_t ka = (size_t)gm->ka, kb = (size_t)gm->kb;                           \
    if (kb == 1 && ka == kh * kw) {                                            \
      /* Channel methods and Linear: column o of A is row j·O + o of the      \
       * kernel as it lies. */                                                 \
      memcpy(A, W + j * O * m, m * O * sizeof *A);                             \
    } else                                                                     \
    for (size_t o = 0; o < O; o++)                                             \
      for (size_t i = 0; i < I; i++)                                           \
        for (size_t h = 0; h < kh; h++) {                                      \
          const T *src = W + (((j * O + o) * I + i) * kh + h) * kw;            \
          for (size_t w = 0; w < kw; w++) {                                    \
            size_t pa, pb;                                                     \
            pa_pb_of(gm, h, w, &pa, &pb);                                      \
            A[(i * ka + pa) + m * (o * kb + pb)] = src[w];                     \
          }                                                                    \
        }                                                                      \
    if (sx) {                                                                  \
      T sc = (T)ldexp(1.0, sx);                                                \
      for (size_t x = 0; x < m * (size_t)gm->n; x++)                           \
        A[x] *= sc;                                                            \
    }                                                                          \
  }

GATHER(float, f32)
GATHER(double, f64)

/* ‖A_j − U·Vᵀ‖² for group j of the kernel (U m×R, V n×R, the matrix
 * times 2^sx as gather_T forms it) without the m×n matrix: its columns
 * come 256 at a time straight from the kernel — W (dense T) when given,
 * else the contiguous tensor `t` converted element by element — and each
 * slab is done as core_svd_residual does it, so the figure is the same. */
#define KERNEL_RESIDUAL(T, SUFFIX, GEMM)                                       \
  static int kernel_residual_##SUFFIX(                                         \
      decomp_ctx *ctx, const char *what, const T *W, const decomp_tensor *t,  \
      const geom *gm, size_t j, int sx, int64_t R, const T *U, const T *V,    \
      double *out) {                                                           \
    size_t m = (size_t)gm->m, n = (size_t)gm->n, slab = 256;                   \
    size_t isz = decomp_dtype_size(t->dtype);                                  \
    const unsigned char *raw = t->data;                                        \
    T sc = (T)ldexp(1.0, sx);                                                  \
    T *E = malloc(m * slab * sizeof *E);                                       \
    if (!E)                                                                    \
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);      \
    double sum = 0;                                                            \
    for (size_t c0 = 0; c0 < n; c0 += slab) {                                  \
      size_t cw = n - c0 < slab ? n - c0 : slab;                               \
      for (size_t x = 0; x < cw; x++)                                          \
        for (size_t y = 0; y < m; y++) {                                       \
          size_t at = kernel_index(gm, j, y, c0 + x);                          \
          T v = W ? W[at] : (T)core_load_f64(raw + at * isz, t->dtype);        \
          E[y + m * x] = sx ? v * sc : v;                                      \
        }                                                                      \
      GEMM(false, true, (int64_t)m, (int64_t)cw, R, -1, U, (int64_t)m,         \
           V + c0, (int64_t)n, 1, E, (int64_t)m);                              \
      for (size_t x = 0; x < m * cw; x++)                                      \
        sum += (double)E[x] * (double)E[x];                                    \
    }                                                                          \
    free(E);                                                                   \
    *out = sum;                                                                \
    return DECOMP_OK;                                                          \
  }

KERNEL_RESIDUAL(float, f32, core_sgemm)
KERNEL_RESIDUAL(double, f64, core_dgemm)

/* Phase 1 and phase 2 for one precision T. `sigma` (when non-NULL) gets g
 * runs of k values when they are known (*have_sigma). With rank == 0 only
 * the values are computed; else the factors, scaled by Σ^½, land in new
 * buffers *first ([g·R, I, …]) and *second ([O·g, R, …]) of T. `known` (g
 * runs of k, or NULL) is the spectrum of phase 1. The input is checked for
 * NaN/Inf first; ‖W‖² goes to *energy and the discarded energy, measured
 * from the factors as they will be written, to *discarded.
 *
 * Any finite kernel works: the SVD runs on the kernel times 2^sx, a power
 * of two that brings its largest magnitude near 1 (exact, so it changes no
 * bit of the result), so that Gram matrices neither overflow (a kernel of
 * 1e30 in float32) nor underflow (1e-25, subnormals); the values, energies
 * and factors come back in the kernel's own scale.
 *
 * With a Gram (`gram`, channel and Linear methods: whitened, SVD-LLM) each
 * group's matrix A (rows: the layer's inputs) is whitened, A' = Sᵀ·A with
 * S·Sᵀ = G, and factored: the spectrum (and so every policy) is A''s, the
 * input-side factor is S⁻ᵀ·U'·Σ^½ and the output side V'·Σ^½, which
 * minimizes ‖(W − W̃)·X‖ over the calibration data. *out_total and
 * *out_discarded get ‖A'‖² and ‖A' − Sᵀ·first·secondᵀ‖² over the groups.
 *
 * Each group's factors are checked before they are kept: the error they
 * achieve, measured from the factors themselves, must agree with the SVD's
 * own figure and keep the accuracy control's promise; a randomized result
 * that does not is replaced by the exact one (logged with the reason), and
 * the figures reported are always measured ones. */
#define LAYER_WORKER(T, SUFFIX, OWN, SCALE_MAX)                                \
  static int layer_##SUFFIX(decomp_ctx *ctx, const decomp_layer *l,            \
                            const decomp_tensor *wt, const geom *gm,           \
                            const decomp_tensor *gram, int64_t R,              \
                            const double *known, double *sigma,                \
                            bool *have_sigma, double *energy,                  \
                            double *discarded, double *out_total,              \
                            double *out_discarded, core_svd_report *agg,       \
                            T **first, T **second) {                           \
    const char *name = l->name;                                                \
    const T *W = NULL;                                                         \
    T *owned = NULL, *A = NULL, *s = NULL, *V = NULL;                          \
    T *F = NULL, *S = NULL, *Sw = NULL, *Fw = NULL;                            \
    double *all = NULL, *kn = NULL;                                            \
    char what[256];                                                            \
    int rc = dense_##SUFFIX(ctx, wt, &W, &owned);                              \
    if (rc != DECOMP_OK)                                                       \
      return rc;                                                               \
    size_t total = (size_t)(gm->g * gm->O) * (size_t)(gm->I * gm->kh * gm->kw); \
    double e = 0, big = 0;                                                     \
    for (size_t x = 0; x < total; x++) {                                       \
      double v = (double)W[x];                                                 \
      if (!isfinite(v)) {                                                      \
        size_t hw = (size_t)(gm->kh * gm->kw), ihw = (size_t)gm->I * hw;       \
        if (core_layer_is_linear(l))                                           \
          rc = core_fail(ctx, DECOMP_ERR_NONFINITE,                            \
                         "%s: weight holds %s at [%zu, %zu]", name,            \
                         isnan(v) ? "NaN" : "Inf", x / ihw, x % ihw);          \
        else                                                                   \
          rc = core_fail(ctx, DECOMP_ERR_NONFINITE,                            \
                         "%s: weight holds %s at [%zu, %zu, %zu, %zu]", name,  \
                         isnan(v) ? "NaN" : "Inf", x / ihw, x % ihw / hw,      \
                         x % hw / (size_t)gm->kw, x % (size_t)gm->kw);         \
        goto done;                                                             \
      }                                                                        \
      e += v * v;                                                              \
      big = fabs(v) > big ? fabs(v) : big;                                     \
    }                                                                          \
    if (!isfinite(e)) {                                                        \
      rc = core_fail(ctx, DECOMP_ERR_NONFINITE,                                \
                     "%s: the weight's squared norm overflows float64 "        \
                     "(largest magnitude %g)",                                 \
                     name, big);                                               \
      goto done;                                                               \
    }                                                                          \
    *energy = e;                                                               \
    *discarded = 0;                                                            \
    *out_total = *out_discarded = 0;                                           \
    *have_sigma = false;                                                       \
    /* The power of two the SVD works at (0 for everyday magnitudes), and      \
     * how the factors share it back: first·2^fa, second·2^fb. */              \
    int sx = 0;                                                                \
    if (big > 0) {                                                             \
      int ex;                                                                  \
      frexp(big, &ex);                                                         \
      if (ex < -16 || ex > 16)                                                 \
        sx = -ex < -SCALE_MAX ? -SCALE_MAX : -ex > SCALE_MAX ? SCALE_MAX : -ex; \
    }                                                                          \
    int fa = -sx / 2, fb = -sx - fa;                                           \
    if (!sigma && R == 0)                                                      \
      goto done;                                                               \
    if (R == 0 && !gram && core_svd_spectrum_uses_gram(gm->m, gm->n)) {        \
      for (size_t j = 0; j < (size_t)gm->g; j++) {                             \
        snprintf(what, sizeof what, "%s group %zu", name, j);                  \
        core_tick_span(ctx, (double)j / (double)gm->g, 1.0 / (double)gm->g);   \
        rc = gram_##SUFFIX(ctx, what, W, gm, j, sx, sigma + j * (size_t)gm->k, \
                           j + 1 == (size_t)gm->g ? &owned : NULL);            \
        if (rc != DECOMP_OK)                                                   \
          goto done;                                                           \
      }                                                                        \
      *have_sigma = true;                                                      \
      goto done;                                                               \
    }                                                                          \
    size_t m = (size_t)gm->m, n = (size_t)gm->n, k = (size_t)gm->k;            \
    size_t r = (size_t)R;                                                      \
    A = malloc(m * n * sizeof *A);                                             \
    all = malloc(k * sizeof *all);                                             \
    if (R > 0) {                                                               \
      s = malloc(r * sizeof *s);                                               \
      V = malloc(n * r * sizeof *V);                                           \
      F = malloc((size_t)gm->g * r * m * sizeof *F);                           \
      kn = known ? malloc(k * sizeof *kn) : NULL;                              \
    }                                                                          \
    if (gram)                                                                  \
      Sw = malloc(m * m * sizeof *Sw);                                         \
    if (!A || !all || (R > 0 && (!s || !V || !F || (known && !kn))) ||         \
        (gram && !Sw)) {                                                       \
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", name);        \
      goto done;                                                               \
    }                                                                          \
    size_t O = (size_t)gm->O, kb = (size_t)gm->kb;                             \
    bool every = true;                                                         \
    for (size_t j = 0; j < (size_t)gm->g; j++) {                               \
      gather_##SUFFIX(W, gm, j, sx, A);                                        \
      /* A converted copy of the kernel is done with after the last            \
       * group's gather: release it before the SVD's own buffers exist.        \
       * Whitened, the weight error is measured from the kernel again          \
       * (kernel_residual_T): from the tensor itself when it is contiguous,    \
       * else the copy stays. */                                               \
      if (j + 1 == (size_t)gm->g && owned &&                                   \
          !(gram && R > 0 && !decomp_tensor_is_contiguous(wt))) {              \
        free(owned);                                                           \
        owned = NULL;                                                          \
        W = NULL;                                                              \
      }                                                                        \
      snprintf(what, sizeof what, "%s group %zu", name, j);                    \
      double ej = 0;                                                           \
      for (size_t x = 0; x < m * n; x++)                                       \
        ej += (double)A[x] * (double)A[x];                                     \
      /* The matrix the SVD factors: A, or A' = Sᵀ·A in A's place (the       \
       * weight error is then measured from the kernel). */                    \
      T *M = A;                                                                \
      double em = ej;                                                          \
      if (gram) {                                                              \
        double shift, t0 = core_now();                                         \
        if ((rc = core_calib_factor_##SUFFIX(ctx, what, gram, (int64_t)j,      \
                                             (int64_t)m, Sw, &shift)) !=       \
            DECOMP_OK)                                                         \
          goto done;                                                           \
        core_trmm_##SUFFIX(true, (int64_t)m, (int64_t)n, Sw, A);               \
        em = 0;                                                                \
        for (size_t x = 0; x < m * n; x++)                                     \
          em += (double)A[x] * (double)A[x];                                   \
        *out_total += ldexp(em, -2 * sx);                                      \
        agg->whiten_seconds += core_now() - t0;                                \
      }                                                                        \
      double opt = -1;                                                         \
      if (kn) {                                                                \
        opt = 0;                                                               \
        for (size_t x = 0; x < k; x++) {                                       \
          kn[x] = ldexp(known[j * k + x], sx);                                 \
          opt += x >= r ? kn[x] * kn[x] : 0;                                   \
        }                                                                      \
      }                                                                        \
      bool have = false, exact = false;                                        \
      double dj = 0;                                                           \
      core_svd_report rep;                                                     \
      T *Uj = R > 0 ? F + j * r * m : NULL;                                    \
      core_tick_span(ctx, (double)j / (double)gm->g, 1.0 / (double)gm->g);     \
      for (;;) {                                                               \
        rc = step_##SUFFIX(ctx, what, gm, M, R, core_svd_seed(name, (int64_t)j), \
                           em, kn, exact, all, &have, s, Uj, V, &dj, &rep);    \
        if (rc != DECOMP_OK || R == 0)                                         \
          break;                                                               \
        /* Whitened: the SVD is checked on A' before the factors are taken     \
         * back through S⁻ᵀ and rounded. */                                    \
        double meas, bound;                                                    \
        rc = finish_##SUFFIX(ctx, what, gm, M, em, R, s, Uj, V,                \
                             gram ? OWN : wt->dtype, OWN, fa, fb, &meas,       \
                             &bound);                                          \
        if (rc != DECOMP_OK)                                                   \
          break;                                                               \
        const char *why = group_mismatch(meas, dj, opt, bound);                \
        if (why && !exact && (rep.randomized || rep.gram)) {                   \
          core_log(ctx, DECOMP_LOG_WARN, "svd",                                \
                   "matrix=\"%s\" fallback=exact measured=%.6g "               \
                   "estimated=%.6g optimal=%.6g reason=\"%s\"",                \
                   what, sqrt(meas / (em > 0 ? em : 1)),                       \
                   sqrt(dj / (em > 0 ? em : 1)),                               \
                   opt >= 0 ? sqrt(opt / (em > 0 ? em : 1)) : -1.0, why);      \
          exact = true;                                                        \
          continue;                                                            \
        }                                                                      \
        if (why)                                                               \
          core_log(ctx, DECOMP_LOG_WARN, "svd",                                \
                   "matrix=\"%s\" measured=%.6g estimated=%.6g reason=\"%s\" " \
                   "(the measured error is reported)",                         \
                   what, sqrt(meas / (em > 0 ? em : 1)),                       \
                   sqrt(dj / (em > 0 ? em : 1)), why);                         \
        if (exact && !rep.fallback)                                            \
          rep.fallback = "the factors failed their check";                     \
        dj = meas;                                                             \
        if (gram) {                                                            \
          /* first = S⁻ᵀ·U'·Σ^½, rounded as written; then what it achieves     \
           * on the weights and on the outputs. */                             \
          double t0 = core_now();                                              \
          core_trsm_##SUFFIX(true, (int64_t)m, R, Sw, Uj);                     \
          if (wt->dtype != OWN)                                                \
            round_to_##SUFFIX(Uj, m * r, wt->dtype, fa);                       \
          if (wt->dtype != OWN)                                                \
            round_to_##SUFFIX(V, n * r, wt->dtype, fb);                        \
          double dout;                                                         \
          if (!(Fw = malloc(m * r * sizeof *Fw))) {                            \
            rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", name);  \
            break;                                                             \
          }                                                                    \
          memcpy(Fw, Uj, m * r * sizeof *Fw);                                  \
          core_trmm_##SUFFIX(true, (int64_t)m, R, Sw, Fw);                     \
          double t1 = core_now();                                              \
          agg->whiten_seconds += t1 - t0;                                      \
          rc = core_svd_residual_##SUFFIX(ctx, what, (int64_t)m, (int64_t)n,   \
                                          A, R, Fw, V, &dout);                 \
          free(Fw);                                                            \
          Fw = NULL;                                                           \
          if (rc != DECOMP_OK ||                                               \
              (rc = kernel_residual_##SUFFIX(ctx, what, W, wt, gm, j, sx, R,   \
                                             Uj, V, &dj)) != DECOMP_OK)        \
            break;                                                             \
          agg->measure_seconds += core_now() - t1;                             \
          *out_discarded += ldexp(dout, -2 * sx);                              \
        }                                                                      \
        break;                                                                 \
      }                                                                        \
      if (rc != DECOMP_OK)                                                     \
        goto done;                                                             \
      every = every && have;                                                   \
      if (sigma && have)                                                       \
        for (size_t x = 0; x < k; x++)                                         \
          sigma[j * k + x] = ldexp(all[x], -sx);                               \
      *discarded += ldexp(dj, -2 * sx);                                        \
      agg->randomized = agg->randomized || rep.randomized;                     \
      agg->gram = agg->gram || rep.gram;                                       \
      if (rep.iterations > agg->iterations)                                    \
        agg->iterations = rep.iterations;                                      \
      if (rep.width > agg->width)                                              \
        agg->width = rep.width;                                                \
      if (rep.block > agg->block)                                              \
        agg->block = rep.block;                                                \
      agg->deflated += rep.deflated;                                           \
      if (rep.fallback)                                                        \
        agg->fallback = rep.fallback;                                          \
      if (R == 0)                                                              \
        continue;                                                              \
      /* The matrix is done with after the last group: release it before       \
       * the second factor exists, so the peak holds one of the two. */        \
      if (j + 1 == (size_t)gm->g) {                                            \
        free(A);                                                               \
        A = NULL;                                                              \
      }                                                                        \
      if (!S && !(S = malloc((size_t)gm->g * n * r * sizeof *S))) {            \
        rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", name);      \
        goto done;                                                             \
      }                                                                        \
      /* Back to the kernel's scale (powers of two: exact). */                 \
      T ua = (T)ldexp(1.0, fa), vb = (T)ldexp(1.0, fb);                        \
      for (size_t q = 0; q < r; q++) {                                         \
        /* first[(j·R+q), i, pa…] = U[(i·ka+pa), q]·√σ_q, in place. */         \
        T *fd = Uj + q * m;                                                    \
        for (size_t x = 0; fa && x < m; x++)                                   \
          fd[x] *= ua;                                                         \
        /* second[(j·O+o), q, pb] = V[(o·kb+pb), q]·√σ_q. */                   \
        const T *vc = V + q * n;                                               \
        for (size_t o = 0; o < O; o++)                                         \
          for (size_t p = 0; p < kb; p++)                                      \
            S[((j * O + o) * r + q) * kb + p] = vc[o * kb + p] * vb;           \
      }                                                                        \
    }                                                                          \
    *have_sigma = every;                                                       \
    if (R > 0) {                                                               \
      *first = F;                                                              \
      *second = S;                                                             \
      F = S = NULL;                                                            \
    }                                                                          \
  done:                                                                        \
    free(owned);                                                               \
    free(A);                                                                   \
    free(all);                                                                 \
    free(kn);                                                                  \
    free(s);                                                                   \
    free(V);                                                                   \
    free(F);                                                                   \
    free(S);                                                                   \
    free(Sw);                                                                  \
    free(Fw);                                                                  \
    return rc;                                                                 \
  }

LAYER_WORKER(float, f32, DECOMP_DTYPE_F32, 120)
LAYER_WORKER(double, f64, DECOMP_DTYPE_F64, 1000)

void core_factors_clear(core_factors *f) {
  if (!f)
    return;
  free(f->sigma);
  free(f->first);
  free(f->second);
  *f = (core_factors){0};
}

int core_factorize(decomp_ctx *ctx, const decomp_layer *l,
                   const decomp_tensor *weight, core_order order, int64_t R,
                   int bits, bool want_sigma, core_factors *out) {
  core_svd_report rep;
  return core_factorize_ex(ctx, l, weight, CORE_METHOD_SPATIAL, order, NULL,
                           R, bits, want_sigma, NULL, out, &rep);
}

int core_factorize_ex(decomp_ctx *ctx, const decomp_layer *l,
                      const decomp_tensor *weight, core_method method,
                      core_order order, const decomp_tensor *gram, int64_t R,
                      int bits, bool want_sigma, const double *known,
                      core_factors *out, core_svd_report *rep) {
  geom gm = geom_of(l, method, order);
  if (gm.method == CORE_METHOD_SPATIAL)
    gram = NULL; /* spatial stays weight-only */
  core_factors f = {.groups = gm.g, .k = gm.k, .dtype = weight->dtype};
  *rep = (core_svd_report){.optimal = -1};
  if (R < 0 || R > gm.k)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: rank %lld of at most %lld",
                     l->name, (long long)R, (long long)gm.k);
  /* The exact path gives every value with the factors; keep them. */
  want_sigma = want_sigma || R > 0 || known;
  size_t nsig = (size_t)(gm.g * gm.k);
  if (want_sigma && !(f.sigma = malloc(nsig * sizeof *f.sigma)))
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", l->name);
  void *first = NULL, *second = NULL;
  bool have = false;
  int rc;
  if (bits == 64)
    rc = layer_f64(ctx, l, weight, &gm, gram, R, known, f.sigma, &have,
                   &f.energy_total, &f.energy_discarded, &f.out_total,
                   &f.out_discarded, rep, (double **)&first,
                   (double **)&second);
  else
    rc = layer_f32(ctx, l, weight, &gm, gram, R, known, f.sigma, &have,
                   &f.energy_total, &f.energy_discarded, &f.out_total,
                   &f.out_discarded, rep, (float **)&first,
                   (float **)&second);
  if (rc != DECOMP_OK)
    goto fail;
  if (f.sigma && !have) {
    if (known) {
      memcpy(f.sigma, known, nsig * sizeof *f.sigma);
    } else {
      free(f.sigma);
      f.sigma = NULL;
    }
  }
  if (R > 0) {
    int64_t c1 = gm.g * R;
    factor_shapes(l, &gm, R, &f.ndim, f.first_shape, f.second_shape);
    /* Into the input's dtype. */
    decomp_dtype dt = weight->dtype;
    decomp_dtype have = bits == 64 ? DECOMP_DTYPE_F64 : DECOMP_DTYPE_F32;
    size_t nf = (size_t)(c1 * gm.m), ns = (size_t)(gm.g * gm.n * R);
    if (dt != have) {
      void *f2 = malloc(nf * decomp_dtype_size(dt));
      void *s2 = malloc(ns * decomp_dtype_size(dt));
      if (!f2 || !s2) {
        free(f2);
        free(s2);
        rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", l->name);
        goto fail;
      }
      if (bits == 64) {
        core_f64_to_dtype(first, nf, dt, f2);
        core_f64_to_dtype(second, ns, dt, s2);
      } else {
        core_f32_to_dtype(first, nf, dt, f2);
        core_f32_to_dtype(second, ns, dt, s2);
      }
      free(first);
      free(second);
      first = f2;
      second = s2;
    }
    f.first = first;
    f.second = second;
  }
  *out = f;
  return DECOMP_OK;
fail:
  free(first);
  free(second);
  core_factors_clear(&f);
  return rc;
}

/* Run one layer in the policy's precision. Phase 1 (R == 0): every
 * candidate's finiteness check, energy and (when asked) spectrum, into
 * cand[]/cfac[]. Phase 2: the chosen candidate (info.view) at rank R; the
 * factors replace its phase-1 spectrum, which the SVD is handed as its
 * known optimum and which stays the layer's sigma. */
static int layer_run_(decomp_ctx *ctx, const decomp_policy *policy,
                      struct layer *L, int64_t R, bool want_sigma);

/* A layer's work: its weight (and Gram) read ahead from the input's file
 * mapping first, and after it the pages the SVD touched given back: a run
 * over a mapped model keeps only the layers in flight in RSS. */
static int layer_run(decomp_ctx *ctx, const decomp_policy *policy,
                     struct layer *L, int64_t R, bool want_sigma) {
  core_weights_will_need(L->src, L->weight->storage,
                         L->weight->storage_nbytes);
  if (L->gram)
    core_weights_will_need(L->calib_src, L->gram->storage,
                           L->gram->storage_nbytes);
  int rc = layer_run_(ctx, policy, L, R, want_sigma);
  core_weights_drop_pages(L->src, L->weight->storage,
                          L->weight->storage_nbytes);
  if (L->gram)
    core_weights_drop_pages(L->calib_src, L->gram->storage,
                            L->gram->storage_nbytes);
  return rc;
}

static int layer_run_(decomp_ctx *ctx, const decomp_policy *policy,
                      struct layer *L, int64_t R, bool want_sigma) {
  int bits = core_policy_compute_bits(policy, L->weight->dtype);
  if (R == 0) {
    for (int c = 0; c < L->ncand; c++) {
      core_layer_view *v = &L->cand[c];
      core_factors f;
      int rc = core_factorize_ex(ctx, L->info.layer, L->weight, v->method,
                                 v->order, v->whitened ? L->gram : NULL, 0,
                                 bits, want_sigma, NULL, &f, &L->rep);
      if (rc != DECOMP_OK)
        return rc;
      core_run_set_spectrum(L, c, &f);
    }
    return DECOMP_OK;
  }
  const core_layer_view *v = &L->info.view;
  core_factors f;
  int rc = core_factorize_ex(ctx, L->info.layer, L->weight, v->method,
                             v->order, v->whitened ? L->gram : NULL, R, bits,
                             want_sigma, L->fac.sigma, &f, &L->rep);
  if (rc != DECOMP_OK)
    return rc;
  core_factors_clear(&L->fac);
  L->fac = f;
  L->info.sigma = f.sigma;
  L->info.energy_total = f.energy_total;
  L->info.energy_discarded = f.energy_discarded;
  L->info.out_total = f.out_total;
  L->info.out_discarded = f.out_discarded;
  return DECOMP_OK;
}

/* --- layers in parallel ---------------------------------------------------
 *
 * With opts->threads ≥ 2 the layers of a phase run on a small pool: light
 * layers one per worker with BLAS single-threaded, heavy ones alone on the
 * calling thread with every BLAS thread (or, when the spec has at least
 * 2 × threads of them, in the pool as light ones), so workers × BLAS
 * threads never exceeds `threads`. Each layer's arithmetic depends only
 * on its input and its BLAS thread count (1 for light layers whatever
 * `threads` is), results land in the layer's own slot, and progress, logs
 * and errors are reported by the calling thread in spec order: the bytes
 * do not depend on the scheduling. */

/* A layer whose SVD is worth both cores: (m·n·k) ≥ 2^32, i.e. square
 * matrices from about 1600 up (torchvision resnet50's largest, 1536, runs
 * in the pool). */
static bool layer_heavy(const struct layer *L) {
  for (int c = 0; c < L->ncand; c++) {
    geom gm = geom_view(&L->cand[c]);
    if ((double)gm.m * (double)gm.n * (double)gm.k >= 4294967296.0)
      return true;
  }
  return false;
}


static void job_run(decomp_ctx *wctx, const decomp_policy *policy,
                    struct layer *L) {
  double t0 = core_now();
  L->rc = layer_run(wctx, policy, L, L->job_rank, L->job_sigma);
  if (L->rc != DECOMP_OK) {
    const char *msg = decomp_errmsg(wctx);
    L->err = strdup(msg && *msg ? msg : "out of memory");
  }
  L->seconds += core_now() - t0;
}

static void *pool_main(void *arg) {
  struct pool *P = arg;
  decomp_ctx *wctx = decomp_ctx_new(); /* errors of this worker's layers */
  pthread_mutex_lock(&P->mu);
  for (;;) {
    while (P->head == P->tail && !P->quit)
      pthread_cond_wait(&P->work, &P->mu);
    if (P->head == P->tail)
      break;
    struct layer *L = P->queue[P->head++];
    pthread_mutex_unlock(&P->mu);
    job_run(wctx, P->policy, L);
    pthread_mutex_lock(&P->mu);
    L->state = JOB_DONE;
    P->busy--;
    pthread_cond_broadcast(&P->done);
  }
  pthread_mutex_unlock(&P->mu);
  decomp_ctx_free(wctx);
  return NULL;
}

static int pool_start(struct pool *P, int nth, size_t n,
                      const decomp_policy *policy) {
  *P = (struct pool){.nth = nth, .policy = policy};
  P->queue = calloc(n ? n : 1, sizeof *P->queue);
  P->th = calloc((size_t)nth, sizeof *P->th);
  if (!P->queue || !P->th)
    return DECOMP_ERR_NOMEM;
  pthread_mutex_init(&P->mu, NULL);
  pthread_cond_init(&P->work, NULL);
  pthread_cond_init(&P->done, NULL);
  for (; P->started < nth; P->started++)
    if (pthread_create(&P->th[P->started], NULL, pool_main, P) != 0)
      break;
  return P->started > 0 ? DECOMP_OK : DECOMP_ERR_NOMEM;
}

static void pool_stop(struct pool *P) {
  if (P->th && P->started > 0) {
    pthread_mutex_lock(&P->mu);
    P->quit = true;
    pthread_cond_broadcast(&P->work);
    pthread_mutex_unlock(&P->mu);
    for (int i = 0; i < P->started; i++)
      pthread_join(P->th[i], NULL);
    pthread_mutex_destroy(&P->mu);
    pthread_cond_destroy(&P->work);
    pthread_cond_destroy(&P->done);
  }
  free(P->queue);
  free(P->th);
}

/* Wait until at most `limit` layers are queued or running. */
static void pool_wait(struct pool *P, size_t limit) {
  pthread_mutex_lock(&P->mu);
  while (P->busy > limit)
    pthread_cond_wait(&P->done, &P->mu);
  pthread_mutex_unlock(&P->mu);
}

/* Wait until layer L (queued, running or done) is done. */
static void pool_wait_layer(struct pool *P, const struct layer *L) {
  pthread_mutex_lock(&P->mu);
  while (L->state == JOB_QUEUED)
    pthread_cond_wait(&P->done, &P->mu);
  pthread_mutex_unlock(&P->mu);
}

static int layer_state(struct pool *P, const struct layer *L) {
  if (!P)
    return L->state;
  pthread_mutex_lock(&P->mu);
  int st = L->state;
  pthread_mutex_unlock(&P->mu);
  return st;
}

/* --- the result --------------------------------------------------------- */


static int cmp_by_name(const void *a, const void *b) {
  return strcmp(((const struct by_name *)a)->name,
                ((const struct by_name *)b)->name);
}

/* The index in `idx` of the layer named by the first `len` bytes of `s`,
 * or n. */
static size_t find_index(const struct by_name *idx, size_t n, const char *s,
                         size_t len) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const char *name = idx[mid].name;
    int c = strncmp(s, name, len);
    if (c == 0 && name[len] != '\0')
      c = -1; /* s[0..len) is a proper prefix of name: s sorts first */
    if (c == 0)
      return mid;
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return n;
}

/* The decomposed layer whose NAME + suffix is `tensor_name`, or NULL. */
static struct layer *lookup(const struct by_name *idx, size_t n,
                            const char *tensor_name, const char *suffix) {
  size_t lt = strlen(tensor_name), ls = strlen(suffix);
  if (lt <= ls || strcmp(tensor_name + lt - ls, suffix) != 0)
    return NULL;
  size_t i = find_index(idx, n, tensor_name, lt - ls);
  return i < n ? idx[i].L : NULL;
}

static int add_new(decomp_weights *rw, struct layer *L, const char *suffix,
                   void **buf, const int64_t shape[4]) {
  char *name = join(L->info.layer->name, suffix);
  void *data = *buf;
  *buf = NULL; /* add_owned takes it, also on failure */
  if (!name) {
    free(data);
    return core_fail(core_weights_ctx(rw), DECOMP_ERR_NOMEM, "out of memory");
  }
  decomp_tensor t = {
      .name = name, .dtype = L->fac.dtype, .ndim = 4,
      .shape = {shape[0], shape[1], shape[2], shape[3]},
      .stride = {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3],
                 1},
      .data = data};
  if (L->fac.ndim == 2) { /* a Linear's [R, in] and [out, R] */
    t.ndim = 2;
    t.stride[0] = shape[1];
    t.stride[1] = 1;
    t.shape[2] = t.shape[3] = t.stride[2] = t.stride[3] = 0;
  }
  int rc = decomp_weights_add_owned(rw, &t, data);
  free(name);
  return rc;
}

static int add_borrowed(decomp_weights *rw, const decomp_tensor *src,
                        const char *name) {
  decomp_tensor t = *src;
  t.name = name;
  return decomp_weights_add(rw, &t);
}

static int emit_layer(decomp_weights *rw, struct layer *L) {
  int rc = add_new(rw, L, ".0.weight", &L->fac.first, L->fac.first_shape);
  if (rc == DECOMP_OK)
    rc = add_new(rw, L, ".1.weight", &L->fac.second, L->fac.second_shape);
  if (rc == DECOMP_OK && L->bias) {
    char *name = join(L->info.layer->name, ".1.bias");
    if (!name)
      return core_fail(core_weights_ctx(rw), DECOMP_ERR_NOMEM,
                       "out of memory");
    rc = add_borrowed(rw, L->bias, name);
    free(name);
  }
  return rc;
}

/* The input's torch `_metadata` with {"version": 1} for NAME (the new
 * nn.Sequential), NAME.0 and NAME.1, right after NAME where torch's
 * state_dict() would put them. Metadata that is not torch's (safetensors'
 * map of strings) is copied unchanged. */
static int build_metadata(decomp_ctx *ctx, const char *in,
                          const struct by_name *idx, size_t n,
                          decomp_weights *rw) {
  if (!in)
    return DECOMP_OK;
  json_t *src = json_loads(in, 0, NULL), *dst = NULL;
  int rc = DECOMP_OK;
  if (!src || !json_is_object(src)) {
    json_decref(src);
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "input metadata is not JSON");
  }
  bool torch = true;
  const char *key;
  json_t *val;
  json_object_foreach(src, key, val) torch = torch && json_is_object(val);
  if (!torch || n == 0) {
    rc = decomp_weights_set_metadata(rw, in);
    json_decref(src);
    return rc;
  }
  dst = json_object();
  bool *seen = calloc(n, sizeof *seen);
  if (!dst || !seen)
    goto nomem;
  json_object_foreach(src, key, val) {
    if (json_object_get(dst, key))
      continue; /* already written as a NAME.0/NAME.1 */
    if (json_object_set(dst, key, val))
      goto nomem;
    size_t hit = find_index(idx, n, key, strlen(key));
    if (hit == n)
      continue;
    seen[hit] = true;
    for (int c = 0; c < 2; c++) {
      char *child = join(key, c ? ".1" : ".0");
      if (!child ||
          json_object_set_new(dst, child, json_pack("{s:i}", "version", 1))) {
        free(child);
        goto nomem;
      }
      free(child);
    }
  }
  /* Layers the input had no entry for: NAME, NAME.0, NAME.1 at the end. */
  for (size_t i = 0; i < n; i++) {
    if (seen[i])
      continue;
    static const char *const sfx[] = {"", ".0", ".1"};
    for (int c = 0; c < 3; c++) {
      char *child = join(idx[i].name, sfx[c]);
      if (!child ||
          json_object_set_new(dst, child, json_pack("{s:i}", "version", 1))) {
        free(child);
        goto nomem;
      }
      free(child);
    }
  }
  char *text = json_dumps(dst, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!text)
    goto nomem;
  rc = decomp_weights_set_metadata(rw, text);
  free(text);
  goto out;
nomem:
  rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
out:
  free(seen);
  json_decref(dst);
  json_decref(src);
  return rc;
}

/* --- the run ------------------------------------------------------------ */

/* The order for a layer: the policy's (an explicit order, or the amct
 * preset's mode rule), else (auto) the one with fewer MACs per rank; on a
 * tie the reference tool's mode rule (vertical-first when the smaller kernel
 * axis meets the smaller channel side), which is what it picks for square
 * kernels. *v gets the cost model even when the layer cannot be decomposed
 * (the summary and the budget count such layers at full cost). */
static bool choose_view(const decomp_policy *policy, const decomp_layer *l,
                        core_layer_view *v, char *why, size_t why_len) {
  int want = core_policy_layer_order(policy, l);
  if (want >= 0)
    return core_layer_view_init(l, (core_order)want, v, why, why_len);
  core_layer_view vh;
  if (!core_layer_view_init(l, CORE_ORDER_VERTICAL_FIRST, v, why, why_len))
    return false;
  if (!core_layer_view_init(l, CORE_ORDER_HORIZONTAL_FIRST, &vh, why,
                            why_len))
    return true;
  bool vertical;
  if (v->macs_per_rank != vh.macs_per_rank)
    vertical = v->macs_per_rank < vh.macs_per_rank;
  else
    vertical = (l->out_channels >= l->in_channels) ==
               (l->kernel_size[0] <= l->kernel_size[1]);
  if (!vertical)
    *v = vh;
  return true;
}

/* The relative error of the best rank-R pair (Eckart–Young) from the
 * layer's spectrum, or -1 when its spectrum is not known. */
static double optimal_error(const struct layer *L) {
  double total = L->info.view.whitened ? L->info.out_total
                                       : L->info.energy_total;
  if (!L->info.sigma || !(total > 0))
    return -1;
  size_t k = (size_t)L->fac.k, R = (size_t)L->info.rank;
  double tail = 0;
  for (size_t j = 0; j < (size_t)L->fac.groups; j++)
    for (size_t x = k; x-- > R;)
      tail += L->info.sigma[j * k + x] * L->info.sigma[j * k + x];
  return sqrt(tail / total);
}

/* What the calling thread does once a layer of the phase is done, in spec
 * order: phase 1 hands the spectrum to the policy's view; phase 2 logs the
 * layer and reports DONE. A worker's failure becomes the run's. */
static int layer_finish(decomp_ctx *ctx, const decomp_options *opts,
                        struct layer *L, size_t total, int phase) {
  const decomp_layer *l = L->info.layer;
  if (L->job && L->rc != DECOMP_OK)
    return core_fail(ctx, L->rc, "%s", L->err ? L->err : "out of memory");
  if (phase == 1) {
    for (int c = 0; L->job_event && c < L->ncand; c++) {
      geom gm = geom_view(&L->cand[c]);
      core_log(ctx, DECOMP_LOG_DEBUG, "svd",
               "layer=%s phase=spectrum candidate=%s max_rank=%lld "
               "sigma_max=%g whitened=%d method=%s seconds=%.3f",
               l->name, core_method_name(L->cand[c].method),
               (long long)L->cfac[c].k,
               L->cfac[c].sigma ? L->cfac[c].sigma[0] : 0.0,
               (int)L->cand[c].whitened,
               core_svd_spectrum_uses_gram(gm.m, gm.n) ? "gram" : "gesdd",
               L->seconds);
    }
    return DECOMP_OK;
  }
  if (L->info.rank > 0 && L->out) {
    /* Streamed: the factors go to their planned place and are freed. */
    size_t isz = decomp_dtype_size(L->fac.dtype), n0 = isz, n1 = isz;
    for (int d = 0; d < L->fac.ndim; d++) {
      n0 *= (size_t)L->fac.first_shape[d];
      n1 *= (size_t)L->fac.second_shape[d];
    }
    int rc = core_st_out_write(L->out, L->out_item, L->fac.first, n0);
    if (rc == DECOMP_OK)
      rc = core_st_out_write(L->out, L->out_item + 1, L->fac.second, n1);
    free(L->fac.first);
    free(L->fac.second);
    L->fac.first = L->fac.second = NULL;
    if (rc != DECOMP_OK)
      return rc;
  }
  if (L->info.rank > 0)
    core_log(ctx, DECOMP_LOG_INFO, "svd",
             "layer=%s decomposition=%s rank=%lld max_rank=%lld order=%s "
             "relative_error=%.6g method=%s steps=%d basis=%lld block=%lld "
             "deflated=%lld fallback=\"%s\" optimal_error=%.6g seconds=%.3f "
             "whiten_seconds=%.3f measure_seconds=%.3f",
             l->name, core_method_name(L->info.view.method),
             (long long)L->info.rank, (long long)L->info.view.max_rank,
             core_order_name(L->info.view.order),
             L->info.energy_total > 0
                 ? sqrt(L->info.energy_discarded / L->info.energy_total)
                 : 0.0,
             L->rep.randomized ? "krylov" : L->rep.gram ? "eig" : "gesdd",
             L->rep.iterations,
             (long long)L->rep.width, (long long)L->rep.block,
             (long long)L->rep.deflated,
             L->rep.fallback ? L->rep.fallback : "", optimal_error(L),
             L->seconds, L->rep.whiten_seconds, L->rep.measure_seconds);
  else
    core_log(ctx, DECOMP_LOG_INFO, "svd", "layer=%s skipped reason=\"%s\"",
             l->name, L->info.skip_reason);
  return progress(ctx, opts, L, total, DECOMP_PHASE_DONE, L->info.rank,
                  L->info.rank ? NULL : L->info.skip_reason);
}

/* Report, in spec order, every layer of the phase from *next on that is
 * done. */
static int drain(decomp_ctx *ctx, const decomp_options *opts, struct pool *P,
                 struct layer *Ls, size_t n, size_t *next, size_t total,
                 int phase) {
  for (; *next < n; (*next)++) {
    struct layer *L = &Ls[*next];
    if (!L->info.considered || (phase == 1 && !L->job) ||
        (phase == 2 && L->off))
      continue;
    if (layer_state(P, L) != JOB_DONE)
      return DECOMP_OK;
    int rc = layer_finish(ctx, opts, L, total, phase);
    if (rc != DECOMP_OK) {
      (*next)++;
      return rc;
    }
  }
  return DECOMP_OK;
}

/* How many of the layers [from, to) are jobs of this phase. */
static size_t jobs_between(const struct layer *Ls, size_t from, size_t to) {
  size_t count = 0;
  for (size_t j = from; j < to; j++)
    count += Ls[j].info.considered && Ls[j].job;
  return count;
}

/* Run the jobs of one phase (the layers with L->job), serially on the
 * calling thread when P is NULL, else light layers on the pool and heavy
 * ones alone here with `threads` BLAS threads. Events before a layer
 * (SPECTRUM, START) come from here as it is handed out; DONE and errors in
 * spec order through drain. */
static int run_phase(decomp_ctx *ctx, const decomp_options *opts,
                     const decomp_policy *policy, struct layer *Ls, size_t n,
                     size_t total, int phase, struct pool *P, int threads) {
  int rc = DECOMP_OK;
  size_t next = 0;
  if (P)
    P->phase = phase;
  for (size_t i = 0; i < n; i++)
    Ls[i].state = JOB_IDLE;
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    struct layer *L = &Ls[i];
    if (!L->info.considered)
      continue;
    if (L->job) {
      if (phase == 1 && L->job_event)
        rc = progress(ctx, opts, L, total, DECOMP_PHASE_SPECTRUM, 0, NULL);
      else if (phase == 2)
        rc = progress(ctx, opts, L, total, DECOMP_PHASE_START, L->job_rank,
                      NULL);
      if (rc != DECOMP_OK)
        break;
      if (!P || L->heavy) {
        if (P) { /* alone, with every BLAS thread */
          pool_wait(P, 0);
          if ((rc = drain(ctx, opts, P, Ls, n, &next, total, phase)) !=
              DECOMP_OK)
            break;
          core_blas_set_threads(threads);
        }
        double t0 = core_now();
        struct ticker tk = {.ctx = ctx, .opts = opts, .L = L, .total = total,
                            .rank = phase == 2 ? L->job_rank : 0, .t0 = t0,
                            .last = t0,
                            .interval = core_progress_interval(ctx)};
        if (opts && opts->progress)
          core_set_tick(ctx, layer_tick, &tk);
        rc = layer_run(ctx, policy, L, L->job_rank, L->job_sigma);
        core_set_tick(ctx, NULL, NULL);
        L->seconds += core_now() - t0;
        if (P)
          core_blas_set_threads(1);
        if (rc != DECOMP_OK)
          break;
        L->state = JOB_DONE;
      } else {
        /* Done layers wait to be reported (and, streamed, written) in
         * spec order: behind a slow one, at most a few more jobs pile up
         * (the layers this phase leaves alone between them hold nothing:
         * counted, they kept a block's MLP waiting behind the one before). */
        while (jobs_between(Ls, next, i) > 2 * (size_t)P->started) {
          pool_wait_layer(P, &Ls[next]);
          if ((rc = drain(ctx, opts, P, Ls, n, &next, total, phase)) !=
              DECOMP_OK)
            break;
        }
        if (rc != DECOMP_OK)
          break;
        pool_wait(P, (size_t)P->started - 1);
        pthread_mutex_lock(&P->mu);
        L->state = JOB_QUEUED;
        P->queue[P->tail++] = L;
        P->busy++;
        pthread_cond_signal(&P->work);
        pthread_mutex_unlock(&P->mu);
      }
    } else {
      L->state = JOB_DONE;
    }
    rc = drain(ctx, opts, P, Ls, n, &next, total, phase);
  }
  if (P) {
    pool_wait(P, 0); /* nothing of ours runs after we return */
    P->head = P->tail = 0;
  }
  if (rc == DECOMP_OK)
    rc = drain(ctx, opts, P, Ls, n, &next, total, phase);
  return rc;
}

/* Whether a spec layer is one the run considers: a Conv2d, or a Linear
 * when the policy's types take Linear layers. */
static bool considered(const decomp_policy *policy, const decomp_layer *l) {
  return core_layer_is_conv(l) ||
         (core_layer_is_linear(l) &&
          core_policy_methods(policy, l) == CORE_METHODS_LINEAR);
}

/* An eligible layer's candidate decompositions, in a fixed order (spatial,
 * then channel; a Linear has one). A layer with a Gram takes the
 * data-aware methods (channel, Linear) whitened, and leaves spatial out
 * unless it is the only method the policy allows (then its Gram is not
 * used: no data-aware spatial pair has a closed-form optimum). */
/* A view's latency from the profile (when there is one): whether the layer
 * was profiled, its own time, and this candidate's curve. */
static void view_latency(const core_profile *prof, core_layer_view *v) {
  double t0 = 0;
  v->profiled = core_profile_has(prof, v->layer);
  v->latency = core_profile_curve(prof, v->layer, v->method, v->order, &t0);
  v->latency_before = v->profiled ? t0 : 0;
  if (v->profiled && !v->latency) /* the layer's own time all the same */
    core_profile_curve(prof, v->layer, CORE_METHOD_CHANNEL,
                       CORE_ORDER_VERTICAL_FIRST, &v->latency_before);
}

static int candidates(decomp_ctx *ctx, const decomp_policy *policy,
                      const core_profile *prof, struct layer *L) {
  const decomp_layer *l = L->info.layer;
  unsigned m = core_policy_methods(policy, l);
  if (L->gram && m == CORE_METHODS_SPATIAL) {
    core_log(ctx, DECOMP_LOG_INFO, "calibration",
             "layer=%s spatial_svd is weight-only: its Gram is not used "
             "(\"methods\": [\"channel\"] uses it)",
             l->name);
    L->gram = NULL;
    L->info.samples = 0;
  }
  if (L->gram)
    m &= ~CORE_METHODS_SPATIAL;
  char why[160];
  L->ncand = 0;
  if (m & CORE_METHODS_SPATIAL) {
    if (choose_view(policy, l, &L->cand[L->ncand], why, sizeof why))
      L->ncand++;
  }
  if (m & (CORE_METHODS_CHANNEL | CORE_METHODS_LINEAR)) {
    core_layer_view *v = &L->cand[L->ncand];
    if (core_layer_view_init_method(l, CORE_METHOD_CHANNEL,
                                    CORE_ORDER_VERTICAL_FIRST, v, why,
                                    sizeof why)) {
      v->whitened = L->gram != NULL;
      L->ncand++;
    }
  }
  for (int c = 0; c < L->ncand; c++) {
    geom gm = geom_view(&L->cand[c]);
    view_latency(prof, &L->cand[c]);
    if (L->cand[c].max_rank != gm.k)
      return core_fail(ctx, DECOMP_ERR_INTERNAL,
                       "%s: cost model says max rank %lld, the matrix %lld",
                       l->name, (long long)L->cand[c].max_rank,
                       (long long)gm.k);
  }
  if (L->ncand == 0)
    return core_fail(ctx, DECOMP_ERR_INTERNAL,
                     "%s: eligible but no method applies", l->name);
  return DECOMP_OK;
}

static void free_layers(struct layer *Ls, size_t n) {
  for (size_t i = 0; Ls && i < n; i++) {
    core_factors_clear(&Ls[i].fac);
    core_factors_clear(&Ls[i].cfac[0]);
    core_factors_clear(&Ls[i].cfac[1]);
    free(Ls[i].err);
  }
  free(Ls);
}

/* --- the run in stages (run.h) ------------------------------------------ */

void core_run_factor_shapes(const struct layer *L, int64_t rank, int *ndim,
                            int64_t s0[4], int64_t s1[4]) {
  geom gm = geom_view(&L->info.view);
  factor_shapes(L->info.layer, &gm, rank, ndim, s0, s1);
}

/* The streamed output's plan: every tensor of the result in its order
 * (the input's, decomposed layers' tensors replaced in place), as items;
 * an item that copies an input tensor is copied now, a new factor's layer
 * gets out/out_item. Names it makes go to *out_names (free each, then the
 * array). */
int core_run_stream_open(struct run *R, const char *dir,
                         const decomp_save_options *save, core_st_out **out,
                         char ***out_names) {
  decomp_ctx *ctx = R->ctx;
  const decomp_weights *w = R->w;
  const struct by_name *idx = R->idx;
  size_t ndec = R->ndec;
  size_t nt = decomp_weights_count(w), cap = nt + 2 * ndec, n = 0, nn = 0;
  core_st_item *items = calloc(cap ? cap : 1, sizeof *items);
  const decomp_tensor **src = calloc(cap ? cap : 1, sizeof *src);
  char **names = calloc(3 * ndec + 1, sizeof *names);
  decomp_weights *mw = NULL;
  int rc = DECOMP_OK;
  *out_names = names;
  if (!items || !src || !names)
    goto nomem;
  for (size_t i = 0; i < nt; i++) {
    const decomp_tensor *t = decomp_weights_at(w, i);
    struct layer *L = lookup(idx, ndec, t->name, ".weight");
    if (L && t == L->weight) {
      static const char *const sfx[] = {".0.weight", ".1.weight", ".1.bias"};
      int ndim;
      int64_t shp[2][4];
      core_run_factor_shapes(L, L->info.rank, &ndim, shp[0], shp[1]);
      L->out_item = n;
      for (int c = 0; c < (L->bias ? 3 : 2); c++) {
        if (!(names[nn] = join(L->info.layer->name, sfx[c])))
          goto nomem;
        if (c == 2) {
          if ((rc = core_st_item_of(ctx, L->bias, &items[n])) != DECOMP_OK)
            goto fail;
          items[n].name = names[nn++];
          src[n++] = L->bias;
          continue;
        }
        core_st_item *it = &items[n++];
        *it = (core_st_item){.name = names[nn++], .dtype = t->dtype,
                             .ndim = ndim};
        it->nbytes = decomp_dtype_size(t->dtype);
        for (int d = 0; d < ndim; d++) {
          it->shape[d] = shp[c][d];
          it->nbytes *= (uint64_t)shp[c][d];
        }
      }
      continue;
    }
    L = lookup(idx, ndec, t->name, ".bias");
    if (L && t == L->bias)
      continue; /* written as NAME.1.bias with the weight */
    if ((rc = core_st_item_of(ctx, t, &items[n])) != DECOMP_OK)
      goto fail;
    src[n++] = t;
  }
  /* The metadata the in-memory result would carry. */
  if ((rc = decomp_weights_new(ctx, &mw)) != DECOMP_OK ||
      (rc = build_metadata(ctx, decomp_weights_metadata(w), idx, ndec, mw)) !=
          DECOMP_OK)
    goto fail;
  uint64_t shard_bytes = save && save->shard_bytes ? save->shard_bytes
                                                   : DECOMP_SHARD_BYTES_DEFAULT;
  rc = core_st_out_open(ctx, dir, save ? save->single_name : NULL, items, n,
                        decomp_weights_metadata(mw), shard_bytes,
                        save && save->sharded, out);
  if (rc != DECOMP_OK)
    goto fail;
  for (size_t i = 0; i < ndec; i++)
    idx[i].L->out = *out;
  /* The tensors that pass through, streamed now. */
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++)
    if (src[i])
      rc = core_st_out_copy(*out, i, src[i], w);
  goto done;
nomem:
  rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
fail:
done:
  decomp_weights_free(mw);
  free(items);
  free(src);
  return rc;
}

void core_run_close(struct run *R) {
  if (R->P)
    pool_stop(R->P);
  R->P = NULL;
  if (R->threads > 0)
    core_blas_set_threads(R->blas_saved);
  R->threads = 0;
  free(R->idx);
  free(R->views);
  free(R->dec);
  core_calib_free(R->calib);
  core_profile_free(R->prof);
  free_layers(R->Ls, R->n);
  R->idx = NULL;
  R->views = NULL;
  R->dec = NULL;
  R->calib = NULL;
  R->prof = NULL;
  R->Ls = NULL;
}

int core_run_open(struct run *R, decomp_ctx *ctx, const decomp_weights *w,
                  const decomp_spec *spec, const decomp_policy *policy,
                  const decomp_options *opts, const bool *sel) {
  *R = (struct run){.ctx = ctx, .w = w, .spec = spec, .policy = policy,
                    .opts = opts};
  int rc = decomp_spec_check(ctx, spec, w);
  if (rc != DECOMP_OK)
    return rc;
  size_t n = decomp_spec_count(spec), conv = 0, nheavy = 0;
  char *name = NULL;
  R->n = n;
  struct layer *Ls = R->Ls = calloc(n ? n : 1, sizeof *Ls);
  if (!Ls)
    goto nomem;
  /* A calibration is checked whole before any work. */
  if (opts && opts->calibration &&
      (rc = core_calib_open(ctx, opts->calibration, spec, &R->calib)) !=
          DECOMP_OK)
    goto fail;
  if (opts && opts->profile &&
      (rc = core_profile_open(ctx, opts->profile, spec, &R->prof)) !=
          DECOMP_OK)
    goto fail;
  R->t_run = core_now();
  for (size_t i = 0; i < n; i++)
    R->total += considered(policy, decomp_spec_at(spec, i));
  /* threads ≥ 1: this call owns that many cores (decomp.h). */
  R->threads = opts && opts->threads > 0 ? opts->threads : 0;
  if (R->threads > 0) {
    R->blas_saved = core_blas_threads();
    core_blas_set_threads(1);
  }
  if (R->threads >= 2) {
    if (pool_start(&R->pool, R->threads, n, policy) != DECOMP_OK) {
      pool_stop(&R->pool);
      goto nomem;
    }
    R->P = &R->pool;
  }

  /* Eligibility, candidates, and phase 1's jobs: finiteness, spectra. */
  for (size_t i = 0; i < n; i++) {
    struct layer *L = &Ls[i];
    const decomp_layer *l = decomp_spec_at(spec, i);
    L->info.layer = l;
    if (!considered(policy, l)) {
      L->info.skip_reason =
          core_layer_names_linear(l) && !core_layer_is_linear(l)
              ? "Linear given without in_features/out_features in the spec"
          : core_layer_is_linear(l)
              ? "Linear layers are not among the policy's types (\"types\": "
                "[\"Conv2d\", \"Linear\"] takes both)"
              : "not a Conv2d or Linear";
      continue;
    }
    L->info.considered = true;
    L->conv_index = conv++;
    double t0 = core_now();
    char why_view[160] = "";
    L->info.has_view =
        choose_view(policy, l, &L->info.view, why_view, sizeof why_view);
    if (!L->info.has_view && !core_layer_is_linear(l)) {
      /* The summary's cost model for a conv with a side of 1. */
      core_layer_view_init_method(l, CORE_METHOD_CHANNEL,
                                  CORE_ORDER_VERTICAL_FIRST, &L->info.view,
                                  why_view, sizeof why_view);
    }
    view_latency(R->prof, &L->info.view);
    if (!core_policy_eligible(policy, l, L->why, sizeof L->why)) {
      L->info.skip_reason = L->why;
      continue;
    }
    free(name);
    name = join(l->name, ".weight");
    if (!name)
      goto nomem;
    L->weight = decomp_weights_find(w, name);
    free(name);
    name = join(l->name, ".bias");
    if (!name)
      goto nomem;
    L->bias = l->bias ? decomp_weights_find(w, name) : NULL;
    L->src = w;
    L->calib_src = opts ? opts->calibration : NULL;
    if (!L->weight) { /* decomp_spec_check guarantees it */
      rc = core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: no weight", l->name);
      goto fail;
    }
    int64_t samples = 0;
    L->gram = core_calib_gram(R->calib, l, &samples);
    L->info.samples = L->gram ? samples : 0;
    if ((rc = candidates(ctx, policy, R->prof, L)) != DECOMP_OK)
      goto fail;
    L->info.view = L->cand[0];
    L->info.has_view = true;
    L->candidate = true;
    R->nviews += (size_t)L->ncand;
    /* Spectra the policy needs, and those the info file records that the
     * factorization would not give (large layers take the truncated SVD). */
    geom gm = geom_view(&L->cand[0]);
    L->job = !sel || sel[i];
    L->job_event = core_policy_needs_spectrum(policy, l);
    L->job_sigma = L->job_event || (opts && opts->record_spectra &&
                                    core_svd_spectrum_uses_gram(gm.m, gm.n));
    L->job_rank = 0;
    L->heavy = R->threads >= 2 && layer_heavy(L);
    nheavy += L->heavy;
    L->seconds = core_now() - t0;
  }
  /* Enough heavy layers to keep every worker busy (a transformer's): they
   * run in the pool too, one per worker, each on one BLAS thread. Half of
   * a large layer's time is work that one thread does as fast as two
   * (the tridiagonal reduction, MRRR, the conversions and checks), so
   * layers side by side finish sooner than one at a time (LLaMA-7B's
   * block on 2 cores: 1.3x). The count is the whole spec's, so every
   * subset of its layers (decomp_task_*) runs them the same way. */
  if (nheavy >= 2 * (size_t)R->threads)
    for (size_t i = 0; i < n; i++)
      Ls[i].heavy = false;
  free(name);
  return DECOMP_OK;
nomem:
  rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
fail:
  free(name);
  core_run_close(R);
  return rc;
}

int core_run_phase(struct run *R, int phase) {
  return run_phase(R->ctx, R->opts, R->policy, R->Ls, R->n, R->total, phase,
                   R->P, R->threads);
}

int core_run_views(struct run *R) {
  struct layer *Ls = R->Ls;
  size_t n = R->n, nviews = R->nviews;
  /* Ranks, all at once: every candidate of every layer, each layer's
   * candidates side by side. */
  R->views = calloc(nviews ? nviews : 1, sizeof *R->views);
  R->dec = calloc(nviews ? nviews : 1, sizeof *R->dec);
  if (!R->views || !R->dec)
    return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
  /* The spec's other layers count at full cost in a whole-model budget. */
  core_rest rest = {0};
  for (size_t i = 0, c = 0; i < n; i++) {
    if (Ls[i].candidate) {
      for (int x = 0; x < Ls[i].ncand; x++)
        R->views[c++] = Ls[i].cand[x];
    } else if (Ls[i].info.considered) {
      rest.macs += Ls[i].info.view.macs_before;
      rest.params += Ls[i].info.view.params_before;
      rest.latency += Ls[i].info.view.latency_before;
    }
  }
  /* With the whole model's time, what the considered layers do not take
   * (other modules: norms, activations, pooling; layers of other types)
   * counts at its measured time too, so latency_reduction is the whole
   * model's. */
  double other = -1, model_time = core_profile_model_time(R->prof);
  if (model_time >= 0) {
    double in_layers = 0;
    for (size_t i = 0; i < n; i++)
      if (Ls[i].info.considered && Ls[i].info.view.profiled)
        in_layers += Ls[i].info.view.latency_before;
    other = model_time - in_layers;
    if (other < 0) {
      core_log(R->ctx, DECOMP_LOG_WARN, "policy",
               "profile: model_time %.6g s is below its considered layers' "
               "%.6g s; the rest of the model counts as 0",
               model_time, in_layers);
      other = 0;
    }
    rest.latency += other;
  }
  R->rest = rest;
  R->other = other;
  return DECOMP_OK;
}

int core_run_choose(struct run *R) {
  return core_policy_choose_rest(R->ctx, R->policy, R->views, R->nviews,
                                 &R->rest, R->dec);
}

int core_run_apply(struct run *R, const bool *sel) {
  struct layer *Ls = R->Ls;
  size_t n = R->n, ndec = 0;
  /* Phase 2: factorize; reported in spec order. */
  for (size_t i = 0, c = 0; i < n; i++) {
    struct layer *L = &Ls[i];
    const decomp_layer *l = L->info.layer;
    L->job = false;
    L->off = sel && !sel[i];
    if (!L->info.considered || !L->candidate)
      continue;
    /* The chosen candidate (at most one has a rank), else the first's
     * reason; its spectrum becomes the layer's. */
    int chosen = 0;
    for (int x = 0; x < L->ncand; x++)
      if (R->dec[c + (size_t)x].rank > 0)
        chosen = x;
    core_rank_decision *d = &R->dec[c + (size_t)chosen];
    c += (size_t)L->ncand;
    L->info.view = L->cand[chosen];
    core_factors_clear(&L->fac);
    L->fac = L->cfac[chosen];
    L->cfac[chosen] = (core_factors){0};
    L->info.sigma = L->fac.sigma;
    if (L->info.view.whitened)
      L->info.out_total = L->info.view.energy_total;
    if (d->rank < 0 || d->rank > L->info.view.max_rank)
      return core_fail(R->ctx, DECOMP_ERR_INTERNAL,
                       "%s: policy chose rank %lld of at most %lld", l->name,
                       (long long)d->rank, (long long)L->info.view.max_rank);
    if (d->rank == 0) {
      L->info.skip_reason = d->reason[0] ? d->reason : "rank 0";
      continue;
    }
    L->info.rank = d->rank;
    L->job = !sel || sel[i];
    L->job_rank = d->rank;
    L->job_sigma = true;
    ndec++;
  }
  /* The decomposed layers by name: where their tensors go. */
  R->idx = calloc(ndec ? ndec : 1, sizeof *R->idx);
  if (!R->idx)
    return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0, c = 0; i < n; i++)
    if (Ls[i].info.rank > 0)
      R->idx[c++] = (struct by_name){Ls[i].info.layer->name, &Ls[i]};
  qsort(R->idx, ndec, sizeof *R->idx, cmp_by_name);
  R->ndec = ndec;
  return DECOMP_OK;
}

void core_run_set_spectrum(struct layer *L, int c, core_factors *f) {
  core_layer_view *v = &L->cand[c];
  core_factors_clear(&L->cfac[c]);
  L->cfac[c] = *f;
  v->groups = f->groups;
  v->energy_total = v->whitened ? f->out_total : f->energy_total;
  v->sigma = f->sigma;
  L->info.energy_total = f->energy_total;
}

int core_run_report_left_alone(struct run *R) {
  for (size_t i = 0; i < R->n; i++) {
    struct layer *L = &R->Ls[i];
    if (!L->info.considered || L->info.rank > 0)
      continue;
    int rc = layer_finish(R->ctx, R->opts, L, R->total, 2);
    if (rc != DECOMP_OK)
      return rc;
  }
  return DECOMP_OK;
}

int core_run_info(struct run *R, int64_t peak_rss_bytes, char **out) {
  const decomp_options *opts = R->opts;
  size_t n = R->n;
  core_info_layer *infos = calloc(n ? n : 1, sizeof *infos);
  if (!infos)
    return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < n; i++)
    infos[i] = R->Ls[i].info;
  const char *fmt = opts && opts->source_format
                        ? opts->source_format
                        : decomp_format_name(decomp_weights_format(R->w));
  core_info_run run = {
      .source_digest = opts ? opts->source_digest : NULL,
      .source_format = fmt,
      .record_spectra = opts && opts->record_spectra,
      .calibrated = R->calib != NULL,
      .calibration_digest = opts && R->calib ? opts->calibration_digest : NULL,
      .calibration_layers = core_calib_count(R->calib),
      .profiled = R->prof != NULL,
      .profile_digest = opts && R->prof ? opts->profile_digest : NULL,
      .profile_device = core_profile_device(R->prof),
      .profile_dtype = core_profile_dtype(R->prof),
      .profile_input_shape = core_profile_input_shape(R->prof),
      .latency_other = R->other,
      .peak_rss_bytes = peak_rss_bytes,
  };
  int rc = core_info_build(R->ctx, R->policy, &run, infos, n, out);
  free(infos);
  if (rc == DECOMP_OK)
    core_log(R->ctx, DECOMP_LOG_INFO, "svd",
             "done layers=%zu decomposed=%zu seconds=%.3f "
             "peak_rss_bytes=%lld",
             R->total, R->ndec, core_now() - R->t_run,
             (long long)peak_rss_bytes);
  return rc;
}

/* Where a streamed run writes (decomp_decompose_save). */
struct save_req {
  const char *dir;
  const decomp_save_options *o;
};

static int decompose_run(decomp_ctx *ctx, const decomp_weights *w,
                         const decomp_spec *spec, const decomp_policy *policy,
                         const decomp_options *opts,
                         const struct save_req *save, decomp_result **out,
                         char **out_info, char **out_files) {
  struct run R;
  decomp_result *res = NULL;
  decomp_weights *rw = NULL;
  core_st_out *sout = NULL;
  char **snames = NULL, *info = NULL;
  int rc = core_run_open(&R, ctx, w, spec, policy, opts, NULL);
  if (rc != DECOMP_OK)
    return rc;
  if ((rc = core_run_phase(&R, 1)) != DECOMP_OK ||
      (rc = core_run_views(&R)) != DECOMP_OK ||
      (rc = core_run_choose(&R)) != DECOMP_OK ||
      (rc = core_run_apply(&R, NULL)) != DECOMP_OK)
    goto fail;
  /* Streamed: the output's files, planned now that the ranks are known;
   * each layer's factors are written as it is done. */
  if (save && (rc = core_run_stream_open(&R, save->dir, save->o, &sout,
                                         &snames)) != DECOMP_OK)
    goto fail;
  if ((rc = core_run_phase(&R, 2)) != DECOMP_OK)
    goto fail;

  /* The result: input order, decomposed layers' tensors replaced in place. */
  if (!save) {
    if ((rc = decomp_weights_new(ctx, &rw)) != DECOMP_OK)
      goto fail;
    for (size_t i = 0; i < decomp_weights_count(w); i++) {
      const decomp_tensor *t = decomp_weights_at(w, i);
      struct layer *L = lookup(R.idx, R.ndec, t->name, ".weight");
      if (L && t == L->weight) {
        rc = emit_layer(rw, L);
      } else {
        L = lookup(R.idx, R.ndec, t->name, ".bias");
        if (L && t == L->bias)
          continue; /* emitted as NAME.1.bias with the weight */
        rc = add_borrowed(rw, t, t->name);
      }
      if (rc != DECOMP_OK)
        goto fail;
    }
    rc = build_metadata(ctx, decomp_weights_metadata(w), R.idx, R.ndec, rw);
    if (rc != DECOMP_OK)
      goto fail;
  }

  if (!save && !(res = calloc(1, sizeof *res))) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto fail;
  }
  rc = core_run_info(&R, save ? core_peak_rss_bytes() : 0, &info);
  if (rc != DECOMP_OK)
    goto fail;
  if (save) {
    if ((rc = core_st_out_commit(sout, out_files)) != DECOMP_OK)
      goto fail;
    *out_info = info;
    info = NULL;
    rc = DECOMP_OK;
    goto out;
  }
  res->info = info;
  info = NULL;
  res->weights = rw;
  *out = res;
  res = NULL;
  rw = NULL;
  rc = DECOMP_OK;
  goto out;

fail:
out:
  core_run_close(&R);
  decomp_weights_free(rw);
  decomp_result_free(res);
  core_st_out_free(sout);
  for (size_t i = 0; snames && snames[i]; i++)
    free(snames[i]);
  free(snames);
  free(info);
  return rc;
}

int decomp_decompose(decomp_ctx *ctx, const decomp_weights *w,
                     const decomp_spec *spec, const decomp_policy *policy,
                     const decomp_options *opts, decomp_result **out) {
  if (!w || !spec || !policy || !out)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decompose: weights, spec, policy and out are required");
  return decompose_run(ctx, w, spec, policy, opts, NULL, out, NULL, NULL);
}

int decomp_decompose_save(decomp_ctx *ctx, const decomp_weights *w,
                          const decomp_spec *spec,
                          const decomp_policy *policy,
                          const decomp_options *opts, const char *out_dir,
                          const decomp_save_options *save, char **out_info,
                          char **out_files) {
  if (!w || !spec || !policy || !out_dir || !*out_dir || !out_info)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decompose_save: weights, spec, policy, out_dir and "
                     "out_info are required");
  if (save && save->single_name) {
    const char *why;
    if (!core_shard_name_ok(save->single_name, &why))
      return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                       "decompose_save: file name \"%s\" %s",
                       save->single_name, why);
  }
  struct save_req req = {.dir = out_dir, .o = save};
  char *files = NULL;
  int rc = decompose_run(ctx, w, spec, policy, opts, &req, NULL, out_info,
                         &files);
  if (rc == DECOMP_OK && out_files)
    *out_files = files;
  else
    free(files);
  return rc;
}
