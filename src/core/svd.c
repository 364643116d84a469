/* svd.c — the engine's SVD of one layer matrix, fast: the singular values
 * alone from the smaller Gram matrix, and the rank-R factors from a
 * randomized block Krylov method (block Lanczos from a random start, full
 * reorthogonalization, Rayleigh–Ritz) with an accuracy control, or, at
 * ranks too high for that basis, from the float64 eigenpairs of the Gram
 * matrix (svd.h has the contracts). Small matrices take exact gesdd, which
 * is cheap there and keeps small layers exact. One body, svd_tmpl.h, serves
 * float32 and float64. Only BLAS level 3 and LAPACK's QR/eigensolvers,
 * through lapack.c; no threads of its own. */
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

#define CONVERGED 2e-3  /* rank-R error² improving by less: converged */
#define REMAINING 1e-2  /* … or its extrapolated remaining gain below */
#define REMAINING_AT_MAX 2e-2 /* at the largest basis: within 1% in norm */
#define TARGET 1.008    /* rank-R error vs a known optimum: stop within */
#define TOLERANCE CORE_SVD_TOLERANCE /* … and fall back to gesdd beyond */

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

/* The Krylov basis grows by blocks of about R/8 columns (at least 32, a
 * multiple of 8): narrow enough that the basis stops close to the R + R/2
 * or so a decaying spectrum needs, wide enough for GEMM speed. */
static int64_t block_width(int64_t R) {
  int64_t b = (R / 8 + 7) / 8 * 8;
  return b < 32 ? 32 : b;
}

/* The largest basis: RANK_RANDOM_MAX_FRACTION of k, whole blocks. */
static int64_t basis_max(int64_t k, int64_t b) {
  return (int64_t)(RANK_RANDOM_MAX_FRACTION * (double)k) / b * b;
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
  /* Room for the basis to grow past R by four blocks. */
  return R + 4 * block_width(R) <= basis_max(k, block_width(R));
}

/* Whether the rank-R error² (prev, then e, at the check-th check) has
 * converged. The gap to the optimum shrinks about geometrically, by
 * ρ = gain / last gain per block, so what is left is about gain·ρ/(1−ρ)
 * (Aitken); stop when that is below 1% of e² (0.5% of the error), with ρ
 * capped at 0.9 so a stalled start does not look converged; or when the
 * gain itself is tiny. Two gains (three checks) are needed for a ρ. The
 * basis keeps growing while the gain left is above `remaining`·e²; at the
 * largest basis, what is left must be within 1% of the error in norm
 * (REMAINING_AT_MAX), else the exact path runs. */
static bool converged(int check, double prev, double e, double last_gain,
                      double remaining) {
  double gain = prev - e;
  if (gain <= CONVERGED * e)
    return true;
  if (check < 3 || last_gain <= 0)
    return false;
  double rho = gain / last_gain;
  if (rho > 0.9)
    rho = 0.9;
  return gain * rho / (1 - rho) <= remaining * e;
}

#define SFX_(name, suffix) name##_##suffix
#define SFX2_(name, suffix) SFX_(name, suffix)

#define T float
#define SFX(name) SFX2_(name, f32)
#define GEMM core_sgemm
#define SYRK core_ssyrk
#define SQRT sqrtf
#define DEFLATE 3e-3   /* about 8·√ε: a column shorter is inside the basis */
#define RITZ_SLACK 2e-3 /* Ritz values may exceed ‖A‖² by rounding only */
#define GRAM_RANK 1     /* large matrices, high ranks: float64 Gram eigenpairs */
#include "svd_tmpl.h"
#undef T
#undef SFX
#undef GEMM
#undef SYRK
#undef SQRT
#undef DEFLATE
#undef RITZ_SLACK
#undef GRAM_RANK

#define T double
#define SFX(name) SFX2_(name, f64)
#define GEMM core_dgemm
#define SYRK core_dsyrk
#define SQRT sqrt
#define DEFLATE 1e-7
#define RITZ_SLACK 1e-8
#define GRAM_RANK 0 /* float64 keeps gesdd: no wider type for the Gram */
#include "svd_tmpl.h"
#undef T
#undef SFX
#undef GEMM
#undef SYRK
#undef SQRT
#undef DEFLATE
#undef RITZ_SLACK
#undef GRAM_RANK
