/* svd.c — the engine's float32 SVD of one layer matrix, fast: the singular
 * values alone from the smaller Gram matrix, and the rank-R factors from a
 * randomized range finder with power iterations and an accuracy control
 * (svd.h has the contracts). Small matrices take exact gesdd, which is
 * cheap there and keeps small layers exact. Only BLAS level 3 and LAPACK's
 * QR/eigensolvers, through lapack.c; no threads of its own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svd.h"

/* Below these sizes gesdd is as fast as anything and exact. */
#define SPECTRUM_EXACT_MAX 512 /* k at or below: gesdd values only */
#define RANK_EXACT_MAX 512     /* k at or below: gesdd with vectors */
/* Above this fraction of k the sketch is nearly the whole matrix. */
#define RANK_RANDOM_MAX_FRACTION 0.6

#define MIN_ITERATIONS 1
#define MAX_ITERATIONS 8
#define CONVERGED 2e-3  /* rank-R error² improving by less: converged */
#define REMAINING 1e-2  /* … or its extrapolated remaining gain below */
#define TARGET 1.008    /* rank-R error vs a known optimum: stop within */
#define TOLERANCE 1.01  /* … and fall back to exact gesdd beyond */

uint64_t core_svd_seed(const char *name, int64_t group) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char *p = (const unsigned char *)name; p && *p; p++) {
    h ^= *p;
    h *= 1099511628211ull;
  }
  h ^= (uint64_t)group * 0x9e3779b97f4a7c15ull;
  return h ? h : 0x2545f4914f6cdd1dull;
}

bool core_svd_spectrum_uses_gram(int64_t m, int64_t n) {
  return (m < n ? m : n) > SPECTRUM_EXACT_MAX;
}

/* Oversampling: a tenth of the rank, at least 16, within k. */
static int64_t sketch_width(int64_t k, int64_t R) {
  int64_t p = R / 4 > 16 ? R / 4 : 16;
  return R + p < k ? R + p : k;
}

#define GRAM_VALUES(T, SUFFIX)                                                 \
  int core_svd_gram_values_##SUFFIX(decomp_ctx *ctx, const char *what,        \
                                    int64_t k, T *g, double *s) {             \
    size_t kk = (size_t)k;                                                     \
    T *w = malloc(kk * sizeof *w);                                             \
    if (!w)                                                                    \
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);      \
    int rc = core_eig_values_##SUFFIX(ctx, what, k, g, w);                     \
    for (size_t i = 0; rc == DECOMP_OK && i < kk; i++) {                       \
      double l = (double)w[kk - 1 - i];                                        \
      s[i] = l > 0 ? sqrt(l) : 0.0;                                            \
    }                                                                          \
    free(w);                                                                   \
    return rc;                                                                 \
  }

GRAM_VALUES(float, f32)
GRAM_VALUES(double, f64)

bool core_svd_rank_randomized(int64_t m, int64_t n, int64_t R) {
  int64_t k = m < n ? m : n;
  if (k <= RANK_EXACT_MAX)
    return false;
  return (double)sketch_width(k, R) <= RANK_RANDOM_MAX_FRACTION * (double)k;
}

int core_svd_spectrum_f32(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const float *a, double *s) {
  int64_t k = m < n ? m : n;
  size_t kk = (size_t)k;
  int rc;
  if (!core_svd_spectrum_uses_gram(m, n)) {
    float *c = malloc((size_t)m * (size_t)n * sizeof *c);
    float *sv = malloc(kk * sizeof *sv);
    if (!c || !sv) {
      free(c);
      free(sv);
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    }
    memcpy(c, a, (size_t)m * (size_t)n * sizeof *c);
    rc = core_svd_values_f32(ctx, what, m, n, c, sv);
    for (size_t i = 0; rc == DECOMP_OK && i < kk; i++)
      s[i] = sv[i];
    free(c);
    free(sv);
    return rc;
  }
  float *g = malloc(kk * kk * sizeof *g), *w = malloc(kk * sizeof *w);
  if (!g || !w) {
    free(g);
    free(w);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for a %lldx%lld Gram matrix", what,
                     (long long)k, (long long)k);
  }
  /* m ≤ n: A·Aᵀ (m×m); else Aᵀ·A (n×n). */
  core_ssyrk(m > n, k, m < n ? n : m, a, m, 0, g, k);
  rc = core_eig_values_f32(ctx, what, k, g, w);
  for (size_t i = 0; rc == DECOMP_OK && i < kk; i++) {
    double l = w[kk - 1 - i];
    s[i] = l > 0 ? sqrt(l) : 0.0;
  }
  free(g);
  free(w);
  return rc;
}

/* Exact: gesdd on a copy, the first R triplets kept. */
static int rank_exact(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const float *a, int64_t R, float *s, float *u, float *v,
                      double *all, core_svd_report *rep) {
  size_t k = (size_t)(m < n ? m : n), mm = (size_t)m, nn = (size_t)n;
  size_t r = (size_t)R;
  float *c = malloc(mm * nn * sizeof *c), *sv = malloc(k * sizeof *sv);
  float *U = malloc(mm * k * sizeof *U), *VT = malloc(k * nn * sizeof *VT);
  int rc;
  if (!c || !sv || !U || !VT) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    goto out;
  }
  memcpy(c, a, mm * nn * sizeof *c);
  rc = core_svd_f32(ctx, what, m, n, c, sv, U, VT);
  if (rc != DECOMP_OK)
    goto out;
  memcpy(u, U, mm * r * sizeof *u);
  for (size_t x = 0; all && x < k; x++)
    all[x] = sv[x];
  for (size_t q = 0; q < r; q++) {
    s[q] = sv[q];
    for (size_t j = 0; j < nn; j++)
      v[j + nn * q] = VT[q + k * j];
  }
  /* Summed from the smallest σ up, as the exact error. */
  rep->randomized = false;
  rep->discarded = 0;
  for (size_t x = k; x-- > r;)
    rep->discarded += (double)sv[x] * (double)sv[x];
out:
  free(c);
  free(sv);
  free(U);
  free(VT);
  return rc;
}

/* Uniform in [-1, 1) from splitmix64: no libm, same bits everywhere. */
static void fill_random(float *x, size_t n, uint64_t seed) {
  uint64_t st = seed;
  for (size_t i = 0; i < n; i++) {
    uint64_t z = (st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = (float)((double)(z >> 40) / 8388608.0 - 1.0);
  }
}

/* Whether the rank-R error² (prev, then e) has converged. The gap to the
 * optimum shrinks about geometrically, by ρ = gain / last gain per
 * iteration, so what is left is about gain·ρ/(1−ρ) (Aitken); stop when that
 * is below 1% of e² (0.5% of the error), with ρ capped at 0.9 so a stalled
 * start does not look converged; or when the gain itself is tiny. */
static bool converged(int it, double prev, double e, double last_gain) {
  double gain = prev - e;
  if (gain <= CONVERGED * e)
    return true;
  if (it < 3 || last_gain <= 0) /* the first gain, from q = 0, says little */
    return false;
  double rho = gain / last_gain;
  if (rho > 0.9)
    rho = 0.9;
  return gain * rho / (1 - rho) <= REMAINING * e;
}

/* The rank-R error² of the sketch Z = op(A)ᵀ·Q (q×l): ‖A‖² minus the R
 * largest eigenvalues of ZᵀZ (values only; c is l×l scratch, w l). */
static int rank_error(decomp_ctx *ctx, const char *what, const float *Z,
                      int64_t q, int64_t l, int64_t R, double energy, float *c,
                      float *w, double *out) {
  core_ssyrk(true, l, q, Z, q, 0, c, l);
  int rc = core_eig_values_f32(ctx, what, l, c, w);
  if (rc != DECOMP_OK)
    return rc;
  double kept = 0;
  for (int64_t x = l - R; x < l; x++)
    kept += w[x] > 0 ? (double)w[x] : 0.0;
  *out = energy - kept > 0 ? energy - kept : 0;
  return DECOMP_OK;
}

int core_svd_rank_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const float *a, int64_t R, uint64_t seed, double energy,
                      const double *sigma, float *s, float *u, float *v,
                      double *all, core_svd_report *rep) {
  int64_t k = m < n ? m : n;
  *rep = (core_svd_report){.optimal = -1};
  if (R < 1 || R > k)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: rank %lld of at most %lld",
                     what, (long long)R, (long long)k);
  double opt = -1;
  if (sigma) {
    opt = 0;
    for (int64_t x = k; x-- > R;)
      opt += sigma[x] * sigma[x];
    rep->optimal = opt;
  }
  if (!core_svd_rank_randomized(m, n, R)) {
    int rc = rank_exact(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    return rc;
  }

  /* op(A) is A when m ≤ n, else Aᵀ: rows p = k (the side we orthonormalize,
   * the smaller), columns q. Y = op(A)·Z is p×ℓ, Z = op(A)ᵀ·Q is q×ℓ. */
  bool tr = m > n;
  int64_t p = k, q = tr ? m : n, l = sketch_width(k, R);
  size_t pl = (size_t)p * (size_t)l, ql = (size_t)q * (size_t)l;
  size_t ll = (size_t)l * (size_t)l, r = (size_t)R;
  float *Y = malloc(pl * sizeof *Y), *Z = malloc(ql * sizeof *Z);
  float *C = malloc(ll * sizeof *C), *W = malloc((size_t)l * r * sizeof *W);
  float *lam = malloc((size_t)l * sizeof *lam);
  int rc = DECOMP_OK;
  if (!Y || !Z || !C || !W || !lam) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "%s: out of memory for a rank-%lld sketch", what,
                   (long long)l);
    goto out;
  }
#define OP(Zin, Yout) /* Yout = op(A)·Zin */                                   \
  (tr ? core_sgemm(true, false, n, l, m, 1, a, m, Zin, m, 0, Yout, n)          \
      : core_sgemm(false, false, m, l, n, 1, a, m, Zin, n, 0, Yout, m))
#define OPT(Qin, Zout) /* Zout = op(A)ᵀ·Qin */                                 \
  (tr ? core_sgemm(false, false, m, l, n, 1, a, m, Qin, n, 0, Zout, m)         \
      : core_sgemm(true, false, n, l, m, 1, a, m, Qin, m, 0, Zout, n))

  fill_random(Z, ql, seed);
  OP(Z, Y);
  if ((rc = core_orth_f32(ctx, what, p, l, Y)) != DECOMP_OK)
    goto out;
  OPT(Y, Z);
  double prev;
  if ((rc = rank_error(ctx, what, Z, q, l, R, energy, C, lam, &prev)) !=
      DECOMP_OK)
    goto out;
  int it = 0;
  double last_gain = -1;
  /* Power iterations Q ← orth(op(A)·op(A)ᵀ·Q), Z = op(A)ᵀ·Q, until the
   * rank-R error stops improving (or meets a known optimum). */
  while (it < MAX_ITERATIONS &&
         !(opt >= 0 && prev <= TARGET * TARGET * opt)) {
    OP(Z, Y);
    if ((rc = core_orth_f32(ctx, what, p, l, Y)) != DECOMP_OK)
      goto out;
    OPT(Y, Z);
    it++;
    double e;
    if ((rc = rank_error(ctx, what, Z, q, l, R, energy, C, lam, &e)) !=
        DECOMP_OK)
      goto out;
    if (it >= MIN_ITERATIONS && converged(it, prev, e, last_gain))
      break;
    last_gain = prev - e;
    prev = e;
  }
  /* Rayleigh–Ritz: B = Qᵀ·op(A) = Zᵀ; B·Bᵀ = ZᵀZ = W·Λ·Wᵀ. */
  core_ssyrk(true, l, q, Z, q, 0, C, l);
  if ((rc = core_eig_top_f32(ctx, what, l, C, R, lam, W)) != DECOMP_OK)
    goto out;
  double kept = 0;
  for (size_t x = 0; x < r; x++)
    kept += lam[x] > 0 ? (double)lam[x] : 0.0;
  rep->discarded = energy - kept > 0 ? energy - kept : 0;
  rep->iterations = it;
  /* A tiny λ_R would make Z·W·Λ^-½ lose the float32 precision of the Gram
   * step; a known optimum still missed means the sketch did not converge:
   * either way the exact path decides. */
  float lmax = lam[r - 1], lmin = lam[0];
  if (!(lmin > 1e-6f * lmax) ||
      (opt >= 0 && rep->discarded > TOLERANCE * TOLERANCE * opt)) {
    core_log(ctx, DECOMP_LOG_DEBUG, "svd",
             "matrix=\"%s\" fallback=exact iterations=%d", what, it);
    rc = rank_exact(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    goto out;
  }
  /* Descending: column x of the result is eigenpair r-1-x. Scale W's
   * columns by 1/σ for the Z side after the Q side is formed. */
  float *Wd = C; /* reuse: l×r, reordered */
  for (size_t x = 0; x < r; x++) {
    size_t from = r - 1 - x;
    s[x] = sqrtf(lam[from] > 0 ? lam[from] : 0);
    memcpy(Wd + x * (size_t)l, W + from * (size_t)l, (size_t)l * sizeof *Wd);
  }
  float *left = tr ? v : u, *right = tr ? u : v; /* op's left/right */
  /* op's left vectors: Q·W (p×R); right vectors: Z·W·Σ⁻¹ (q×R). */
  core_sgemm(false, false, p, R, l, 1, Y, p, Wd, l, 0, left, p);
  for (size_t x = 0; x < r; x++) {
    float inv = s[x] > 0 ? 1.0f / s[x] : 0.0f;
    for (size_t y = 0; y < (size_t)l; y++)
      Wd[x * (size_t)l + y] *= inv;
  }
  core_sgemm(false, false, q, R, l, 1, Z, q, Wd, l, 0, right, q);
  rep->randomized = true;
  rep->width = l;
#undef OP
#undef OPT
out:
  free(Y);
  free(Z);
  free(C);
  free(W);
  free(lam);
  return rc;
}

/* --- the same in float64 --------------------------------------------- */

int core_svd_spectrum_f64(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const double *a, double *s) {
  int64_t k = m < n ? m : n;
  size_t kk = (size_t)k;
  int rc;
  if (!core_svd_spectrum_uses_gram(m, n)) {
    double *c = malloc((size_t)m * (size_t)n * sizeof *c);
    double *sv = malloc(kk * sizeof *sv);
    if (!c || !sv) {
      free(c);
      free(sv);
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    }
    memcpy(c, a, (size_t)m * (size_t)n * sizeof *c);
    rc = core_svd_values_f64(ctx, what, m, n, c, sv);
    for (size_t i = 0; rc == DECOMP_OK && i < kk; i++)
      s[i] = sv[i];
    free(c);
    free(sv);
    return rc;
  }
  double *g = malloc(kk * kk * sizeof *g), *w = malloc(kk * sizeof *w);
  if (!g || !w) {
    free(g);
    free(w);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for a %lldx%lld Gram matrix", what,
                     (long long)k, (long long)k);
  }
  /* m ≤ n: A·Aᵀ (m×m); else Aᵀ·A (n×n). */
  core_dsyrk(m > n, k, m < n ? n : m, a, m, 0, g, k);
  rc = core_eig_values_f64(ctx, what, k, g, w);
  for (size_t i = 0; rc == DECOMP_OK && i < kk; i++) {
    double l = w[kk - 1 - i];
    s[i] = l > 0 ? sqrt(l) : 0.0;
  }
  free(g);
  free(w);
  return rc;
}

/* Exact: gesdd on a copy, the first R triplets kept. */
static int rank_exact_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const double *a, int64_t R, double *s, double *u, double *v,
                      double *all, core_svd_report *rep) {
  size_t k = (size_t)(m < n ? m : n), mm = (size_t)m, nn = (size_t)n;
  size_t r = (size_t)R;
  double *c = malloc(mm * nn * sizeof *c), *sv = malloc(k * sizeof *sv);
  double *U = malloc(mm * k * sizeof *U), *VT = malloc(k * nn * sizeof *VT);
  int rc;
  if (!c || !sv || !U || !VT) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    goto out;
  }
  memcpy(c, a, mm * nn * sizeof *c);
  rc = core_svd_f64(ctx, what, m, n, c, sv, U, VT);
  if (rc != DECOMP_OK)
    goto out;
  memcpy(u, U, mm * r * sizeof *u);
  for (size_t x = 0; all && x < k; x++)
    all[x] = sv[x];
  for (size_t q = 0; q < r; q++) {
    s[q] = sv[q];
    for (size_t j = 0; j < nn; j++)
      v[j + nn * q] = VT[q + k * j];
  }
  /* Summed from the smallest σ up, as the exact error. */
  rep->randomized = false;
  rep->discarded = 0;
  for (size_t x = k; x-- > r;)
    rep->discarded += (double)sv[x] * (double)sv[x];
out:
  free(c);
  free(sv);
  free(U);
  free(VT);
  return rc;
}

/* Uniform in [-1, 1) from splitmix64: no libm, same bits everywhere. */
static void fill_random_f64(double *x, size_t n, uint64_t seed) {
  uint64_t st = seed;
  for (size_t i = 0; i < n; i++) {
    uint64_t z = (st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = (double)((double)(z >> 40) / 8388608.0 - 1.0);
  }
}

/* The rank-R error² of the sketch Z = op(A)ᵀ·Q (q×l): ‖A‖² minus the R
 * largest eigenvalues of ZᵀZ (values only; c is l×l scratch, w l). */
static int rank_error_f64(decomp_ctx *ctx, const char *what, const double *Z,
                      int64_t q, int64_t l, int64_t R, double energy, double *c,
                      double *w, double *out) {
  core_dsyrk(true, l, q, Z, q, 0, c, l);
  int rc = core_eig_values_f64(ctx, what, l, c, w);
  if (rc != DECOMP_OK)
    return rc;
  double kept = 0;
  for (int64_t x = l - R; x < l; x++)
    kept += w[x] > 0 ? (double)w[x] : 0.0;
  *out = energy - kept > 0 ? energy - kept : 0;
  return DECOMP_OK;
}

int core_svd_rank_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const double *a, int64_t R, uint64_t seed, double energy,
                      const double *sigma, double *s, double *u, double *v,
                      double *all, core_svd_report *rep) {
  int64_t k = m < n ? m : n;
  *rep = (core_svd_report){.optimal = -1};
  if (R < 1 || R > k)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: rank %lld of at most %lld",
                     what, (long long)R, (long long)k);
  double opt = -1;
  if (sigma) {
    opt = 0;
    for (int64_t x = k; x-- > R;)
      opt += sigma[x] * sigma[x];
    rep->optimal = opt;
  }
  if (!core_svd_rank_randomized(m, n, R)) {
    int rc = rank_exact_f64(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    return rc;
  }

  /* op(A) is A when m ≤ n, else Aᵀ: rows p = k (the side we orthonormalize,
   * the smaller), columns q. Y = op(A)·Z is p×ℓ, Z = op(A)ᵀ·Q is q×ℓ. */
  bool tr = m > n;
  int64_t p = k, q = tr ? m : n, l = sketch_width(k, R);
  size_t pl = (size_t)p * (size_t)l, ql = (size_t)q * (size_t)l;
  size_t ll = (size_t)l * (size_t)l, r = (size_t)R;
  double *Y = malloc(pl * sizeof *Y), *Z = malloc(ql * sizeof *Z);
  double *C = malloc(ll * sizeof *C), *W = malloc((size_t)l * r * sizeof *W);
  double *lam = malloc((size_t)l * sizeof *lam);
  int rc = DECOMP_OK;
  if (!Y || !Z || !C || !W || !lam) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "%s: out of memory for a rank-%lld sketch", what,
                   (long long)l);
    goto out;
  }
#define OP(Zin, Yout) /* Yout = op(A)·Zin */                                   \
  (tr ? core_dgemm(true, false, n, l, m, 1, a, m, Zin, m, 0, Yout, n)          \
      : core_dgemm(false, false, m, l, n, 1, a, m, Zin, n, 0, Yout, m))
#define OPT(Qin, Zout) /* Zout = op(A)ᵀ·Qin */                                 \
  (tr ? core_dgemm(false, false, m, l, n, 1, a, m, Qin, n, 0, Zout, m)         \
      : core_dgemm(true, false, n, l, m, 1, a, m, Qin, m, 0, Zout, n))

  fill_random_f64(Z, ql, seed);
  OP(Z, Y);
  if ((rc = core_orth_f64(ctx, what, p, l, Y)) != DECOMP_OK)
    goto out;
  OPT(Y, Z);
  double prev;
  if ((rc = rank_error_f64(ctx, what, Z, q, l, R, energy, C, lam, &prev)) !=
      DECOMP_OK)
    goto out;
  int it = 0;
  double last_gain = -1;
  /* Power iterations Q ← orth(op(A)·op(A)ᵀ·Q), Z = op(A)ᵀ·Q, until the
   * rank-R error stops improving (or meets a known optimum). */
  while (it < MAX_ITERATIONS &&
         !(opt >= 0 && prev <= TARGET * TARGET * opt)) {
    OP(Z, Y);
    if ((rc = core_orth_f64(ctx, what, p, l, Y)) != DECOMP_OK)
      goto out;
    OPT(Y, Z);
    it++;
    double e;
    if ((rc = rank_error_f64(ctx, what, Z, q, l, R, energy, C, lam, &e)) !=
        DECOMP_OK)
      goto out;
    if (it >= MIN_ITERATIONS && converged(it, prev, e, last_gain))
      break;
    last_gain = prev - e;
    prev = e;
  }
  /* Rayleigh–Ritz: B = Qᵀ·op(A) = Zᵀ; B·Bᵀ = ZᵀZ = W·Λ·Wᵀ. */
  core_dsyrk(true, l, q, Z, q, 0, C, l);
  if ((rc = core_eig_top_f64(ctx, what, l, C, R, lam, W)) != DECOMP_OK)
    goto out;
  double kept = 0;
  for (size_t x = 0; x < r; x++)
    kept += lam[x] > 0 ? (double)lam[x] : 0.0;
  rep->discarded = energy - kept > 0 ? energy - kept : 0;
  rep->iterations = it;
  /* A tiny λ_R would make Z·W·Λ^-½ lose the double32 precision of the Gram
   * step; a known optimum still missed means the sketch did not converge:
   * either way the exact path decides. */
  double lmax = lam[r - 1], lmin = lam[0];
  if (!(lmin > 1e-6 * lmax) ||
      (opt >= 0 && rep->discarded > TOLERANCE * TOLERANCE * opt)) {
    core_log(ctx, DECOMP_LOG_DEBUG, "svd",
             "matrix=\"%s\" fallback=exact iterations=%d", what, it);
    rc = rank_exact_f64(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    goto out;
  }
  /* Descending: column x of the result is eigenpair r-1-x. Scale W's
   * columns by 1/σ for the Z side after the Q side is formed. */
  double *Wd = C; /* reuse: l×r, reordered */
  for (size_t x = 0; x < r; x++) {
    size_t from = r - 1 - x;
    s[x] = sqrt(lam[from] > 0 ? lam[from] : 0);
    memcpy(Wd + x * (size_t)l, W + from * (size_t)l, (size_t)l * sizeof *Wd);
  }
  double *left = tr ? v : u, *right = tr ? u : v; /* op's left/right */
  /* op's left vectors: Q·W (p×R); right vectors: Z·W·Σ⁻¹ (q×R). */
  core_dgemm(false, false, p, R, l, 1, Y, p, Wd, l, 0, left, p);
  for (size_t x = 0; x < r; x++) {
    double inv = s[x] > 0 ? 1.0 / s[x] : 0.0;
    for (size_t y = 0; y < (size_t)l; y++)
      Wd[x * (size_t)l + y] *= inv;
  }
  core_dgemm(false, false, q, R, l, 1, Z, q, Wd, l, 0, right, q);
  rep->randomized = true;
  rep->width = l;
#undef OP
#undef OPT
out:
  free(Y);
  free(Z);
  free(C);
  free(W);
  free(lam);
  return rc;
}
