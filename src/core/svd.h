/* svd.h — the engine's SVD layer as decompose.c and the unit tests use it:
 * the singular values of a layer's matrix the cheap way, its truncated SVD
 * at a chosen rank with an accuracy control, the BLAS/LAPACK wrappers they
 * are made of (lapack.c), and the per-layer seed. Internal to libdecomp. */
#ifndef DECOMP_SVD_H
#define DECOMP_SVD_H

#include "core.h"

/* --- lapack.c: level-3 products, eigensolvers, QR, threads --------------- */

/* c = alpha·op(a)·op(b) + beta·c, column-major, op = transpose when t. */
void core_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                const float *a, int64_t lda, const float *b, int64_t ldb,
                float beta, float *c, int64_t ldc);
/* Lower triangle of c (n×n) = op(a)·op(a)ᵀ + beta·c, op(a) n×k (a is k×n
 * when ta). */
void core_ssyrk(bool ta, int64_t n, int64_t k, const float *a, int64_t lda,
                float beta, float *c, int64_t ldc);
/* OpenBLAS's thread count (process-wide) and setting it (n ≥ 1). */
int core_blas_threads(void);
void core_blas_set_threads(int n);

/* Eigenvalues (ascending) of the symmetric n×n `a` (lower triangle read,
 * destroyed): ssyevd, or the two-stage ssyev for large n. */
int core_eig_values_f32(decomp_ctx *ctx, const char *what, int64_t n,
                        float *a, float *w);
/* The r largest eigenpairs of the symmetric n×n `a` (ssyevd, every pair,
 * the top r kept): w[r] ascending, z n×r (ld n). `a` is destroyed. */
int core_eig_top_f32(decomp_ctx *ctx, const char *what, int64_t n, float *a,
                     int64_t r, float *w, float *z);
/* The r largest eigenpairs of the symmetric n×n `a` (tridiagonal
 * reduction, MRRR for those r alone, back-transformation; O(n) workspace
 * beside z): w[r] ascending, z n×r (ld n). `a` is destroyed. */
int core_eig_range_f32(decomp_ctx *ctx, const char *what, int64_t n, float *a,
                       int64_t r, float *w, float *z);
int core_eig_range_f64(decomp_ctx *ctx, const char *what, int64_t n,
                       double *a, int64_t r, double *w, double *z);
/* `a` (m×n, m ≥ n, ld m) replaced by the Q of its Householder QR. */
int core_qr_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                float *a);

/* An orthonormal basis of span(a) (m×n, m ≥ n, ld m) in place: LU, then
 * Cholesky-QR twice; Householder QR when Cholesky breaks down. */
int core_orth_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                  float *a);

/* Cholesky factor of the symmetric positive definite n×n `a` in place: the
 * lower triangle becomes L (a = L·Lᵀ), the upper one zeros. *pd is false
 * (and `a` garbage) when `a` is not positive definite; that is not an
 * error. */
int core_chol_f32(decomp_ctx *ctx, const char *what, int64_t n, float *a,
                  bool *pd);
int core_chol_f64(decomp_ctx *ctx, const char *what, int64_t n, double *a,
                  bool *pd);
/* b (n×k, ld n) ← op(L)·b (trmm) or op(L)⁻¹·b (trsm), L lower triangular
 * n×n (ld n), op = transpose when `trans`. */
void core_trmm_f32(bool trans, int64_t n, int64_t k, const float *l,
                   float *b);
void core_trsm_f32(bool trans, int64_t n, int64_t k, const float *l,
                   float *b);
void core_trmm_f64(bool trans, int64_t n, int64_t k, const double *l,
                   double *b);
void core_trsm_f64(bool trans, int64_t n, int64_t k, const double *l,
                   double *b);

/* --- calib.c: the whitening factor ------------------------------------- */

/* S (n×n, ld n, lower) with S·Sᵀ = G_j/c for group j of `gram`, c the power
 * of two nearest the mean diagonal of all its groups (whitening does not
 * depend on the Gram's scale; one c keeps the groups' weights). When G_j is not positive definite a shift of 1e-6 of the
 * mean diagonal (ten times more each try, up to 10%) is added and logged;
 * *shift gets it relative to the mean diagonal (0 when none was needed). */
int core_calib_factor_f32(decomp_ctx *ctx, const char *what,
                          const decomp_tensor *gram, int64_t group, int64_t n,
                          float *s, double *shift);
int core_calib_factor_f64(decomp_ctx *ctx, const char *what,
                          const decomp_tensor *gram, int64_t group, int64_t n,
                          double *s, double *shift);

/* --- svd.c ----------------------------------------------------------------- */

/* The accuracy control's promise: a rank-R error at most this many times
 * the optimum's (in norm) when the optimum is known. */
#define CORE_SVD_TOLERANCE 1.01

/* How a truncated SVD was computed and what it achieved. */
typedef struct core_svd_report {
  bool randomized;   /* the Krylov path (false: gesdd or the Gram path) */
  bool gram;         /* the float64 Gram eigenpairs path */
  int iterations;    /* Krylov steps after the first block (randomized) */
  int64_t width;     /* the basis' final width (randomized) */
  int64_t block;     /* its block width (randomized) */
  double discarded;  /* ‖A − A_R‖²: Σ σ_i², i > R, on the exact path; the
                        Ritz values' estimate on the randomized one */
  double optimal;    /* Σ σ_i², i > R, when the spectrum was given; else -1 */
  int64_t deflated;  /* basis columns restarted at random because the
                        Krylov space was exhausted along them */
  const char *fallback; /* why the randomized path handed over to the
                           exact one (static), or NULL */
  /* (core_factorize_ex, whitened layers) seconds spent whitening (the
   * Cholesky factor, S·A, S⁻ᵀ·U and its check S·U) and measuring what
   * whitened factors alone need (the output error of the written factors
   * and the weight error from the kernel), over the groups */
  double whiten_seconds, measure_seconds;
} core_svd_report;

/* Whether the singular values of an m×n matrix come from the Gram matrix
 * (true) or from gesdd on the matrix itself (false, small matrices). */
bool core_svd_spectrum_uses_gram(int64_t m, int64_t n);

/* The k = min(m, n) singular values of the column-major m×n `a` (not
 * modified), descending, into s[k]. Small matrices: gesdd, values only.
 * Larger: the eigenvalues of the smaller Gram matrix (ssyrk, then ssyevd or
 * two-stage ssyev, values only), σ = √max(λ, 0). In float32 the Gram
 * matrix squares the condition number: a σ_i with σ_i/σ_1 below ~1e-3 has
 * a large relative error (absolute error about 1e-7·σ_1²/σ_i), which is
 * harmless for choosing a rank and for the energy sums, and is reported in
 * the info file as computed. */
int core_svd_spectrum_f32(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const float *a, double *s);

/* σ (descending, k values into s) from the lower triangle of the k×k Gram
 * matrix g (destroyed): √max(λ, 0) of its eigenvalues, values only. */
int core_svd_gram_values_f32(decomp_ctx *ctx, const char *what, int64_t k,
                             float *g, double *s);
int core_svd_gram_values_f64(decomp_ctx *ctx, const char *what, int64_t k,
                             double *g, double *s);

/* Whether a rank-R SVD of an m×n matrix takes the randomized path. */
bool core_svd_rank_randomized(int64_t m, int64_t n, int64_t R);

/* The rank-R truncated SVD of the column-major m×n `a` (not modified):
 * s[R] descending, u m×R (ld m), v n×R (ld n), so a ≈ u·diag(s)·vᵀ.
 * `energy` is ‖a‖² (summed in double by the caller). `sigma`, when not
 * NULL, is the full spectrum (k values, descending) and tightens the
 * accuracy control to the known optimum.
 *
 * Small matrices (k ≤ 512) take exact gesdd. Large ones at ranks the
 * Krylov basis below has no room for (above about 0.4·k) take, in
 * float32, the R largest eigenpairs of the smaller Gram matrix formed in
 * float64 (core_eig_range; rep->gram; a third of sgesdd's time and none of its
 * 4·k² workspace; gesdd when σ_R < 1e-4·σ_1, which the squared spectrum
 * would lose), and in float64 gesdd. Otherwise a
 * randomized block Krylov method (block Lanczos with full
 * reorthogonalization from a random start, as in Musco and Musco 2015,
 * "Randomized block Krylov methods for stronger and faster approximate
 * SVD"): the basis [Q_0, Q_1, …] of span{A·Ω, (A·Aᵀ)·A·Ω, …} grows by
 * blocks of about R/8 columns, each orthonormalized against the last two
 * blocks and then against the whole basis (once more when that removed
 * much of it; a column that lies in the basis to rounding, as when the
 * basis outgrows the matrix's rank, is restarted at random, so the basis
 * stays orthonormal), and from R + two blocks on the Ritz values of the
 * basis give the rank-R error it achieves. It stops when that error is
 * within 0.8% of a known optimum (`sigma`), or when its extrapolated
 * remaining gain is below 1% of it; the factors come from a Rayleigh–Ritz
 * step on BᵀB, B the basis' projection of A. The exact path runs instead
 * (rep->fallback says why) when the Ritz values keep more than ‖A‖² (the
 * basis lost its orthogonality), when a known optimum is missed by more
 * than 1%, or when the basis reached its largest width (0.6·k) with more
 * than 1% (in norm) of the error still extrapolated to come.
 * rep->discarded is the Ritz values' figure: decompose.c measures what the
 * factors achieve (core_svd_residual) and checks it against that figure.
 * The sketch is drawn from `seed`, so equal inputs give equal bytes.
 * When the exact path ran (rep->randomized false) and `all` is not NULL,
 * all[k] gets every singular value. */
int core_svd_rank_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const float *a, int64_t R, uint64_t seed, double energy,
                      const double *sigma, float *s, float *u, float *v,
                      double *all, core_svd_report *rep);

/* The exact path of core_svd_rank_f32 alone (gesdd), whatever the size:
 * what the caller falls back to when a randomized result fails its check. */
int core_svd_rank_exact_f32(decomp_ctx *ctx, const char *what, int64_t m,
                            int64_t n, const float *a, int64_t R, float *s,
                            float *u, float *v, double *all,
                            core_svd_report *rep);

/* ‖A − F·Gᵀ‖² (in *out) for the column-major m×n `a`, F m×R (ld m) and G
 * n×R (ld n), from the residual itself, formed 256 columns at a time and
 * summed in double: one rank-R product's work, accurate to about ε·√R·‖A‖
 * in norm. */
int core_svd_residual_f32(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const float *a, int64_t R,
                          const float *f, const float *g, double *out);

/* core_factorize (core.h) for any method (and order, for spatial), with
 * a layer's Gram (`gram`, or NULL: channel and Linear methods are then
 * whitened, see decompose.c), the spectrum of phase 1 (`known`, g runs of k
 * values, or NULL) handed to the accuracy control and kept as the factors'
 * sigma, and a report of how the SVD ran (over the groups: any randomized,
 * the most iterations, the widest sketch). energy_discarded is the
 * achieved error², measured from the factors as written. */
int core_factorize_ex(decomp_ctx *ctx, const decomp_layer *l,
                      const decomp_tensor *weight, core_method method,
                      core_order order, const decomp_tensor *gram, int64_t R,
                      int bits, bool want_sigma, const double *known,
                      core_factors *out, core_svd_report *rep);

/* The same in float64 (the wrappers below too): the same algorithms and
 * thresholds on doubles, for F64 weights and {"compute": "float64"}
 * (the amct preset's default). */
int core_svd_spectrum_f64(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const double *a, double *s);
int core_svd_rank_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const double *a, int64_t R, uint64_t seed, double energy,
                      const double *sigma, double *s, double *u, double *v,
                      double *all, core_svd_report *rep);
int core_svd_rank_exact_f64(decomp_ctx *ctx, const char *what, int64_t m,
                            int64_t n, const double *a, int64_t R, double *s,
                            double *u, double *v, double *all,
                            core_svd_report *rep);
int core_svd_residual_f64(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const double *a, int64_t R,
                          const double *f, const double *g, double *out);
void core_dgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                double alpha, const double *a, int64_t lda, const double *b,
                int64_t ldb, double beta, double *c, int64_t ldc);
void core_dsyrk(bool ta, int64_t n, int64_t k, const double *a, int64_t lda,
                double beta, double *c, int64_t ldc);
int core_eig_values_f64(decomp_ctx *ctx, const char *what, int64_t n,
                        double *a, double *w);
int core_eig_top_f64(decomp_ctx *ctx, const char *what, int64_t n, double *a,
                     int64_t r, double *w, double *z);
int core_qr_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                double *a);
int core_orth_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                  double *a);

/* A seed for a layer's group: FNV-1a of the name, mixed with the group. */
uint64_t core_svd_seed(const char *name, int64_t group);

#endif
