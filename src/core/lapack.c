/* lapack.c — the engine's one door to BLAS and LAPACK: thin wrappers over
 * ?gesdd, the symmetric eigensolvers (ssyevd, ssyev_2stage; ?sytrd, ?stemr
 * and ?ormtr for some of the pairs), the Householder QR (sgeqrf/sorgqr),
 * the level-3 products the truncated SVD is made of (sgemm, ssyrk), and
 * OpenBLAS's thread count. They take
 * column-major matrices, check sizes against LAPACK's int, manage the
 * workspace, and turn LAPACK's `info` into a decomp error code with a
 * message naming the matrix. No other file includes lapacke.h or cblas.h. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <lapacke.h>

#include "core.h"

static int check_dims(decomp_ctx *ctx, const char *what, int64_t m,
                      int64_t n) {
  /* gesdd's workspace grows like 4·k² + 7·k (values: 7·k): keep it and the
   * matrix within lapack_int. */
  int64_t k = m < n ? m : n;
  int64_t big = m > n ? m : n;
  if (m <= 0 || n <= 0)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: empty %lldx%lld matrix",
                     what, (long long)m, (long long)n);
  if (big > INT_MAX / 8 || k > 20000 || m > INT_MAX / n)
    return core_fail(ctx, DECOMP_ERR_TOO_LARGE,
                     "%s: %lldx%lld matrix is too large for LAPACK", what,
                     (long long)m, (long long)n);
  return DECOMP_OK;
}

static int check_info(decomp_ctx *ctx, const char *what, lapack_int info,
                      const char *routine) {
  if (info == 0)
    return DECOMP_OK;
  if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: %s: out of memory", what,
                     routine);
  if (info < 0)
    return core_fail(ctx, DECOMP_ERR_INTERNAL,
                     "%s: %s: argument %d is invalid", what, routine,
                     (int)-info);
  return core_fail(ctx, DECOMP_ERR_SVD_FAILED,
                   "%s: %s did not converge (info=%d)", what, routine,
                   (int)info);
}

/* Each wrapper: query the workspace, allocate it (with the int workspace of
 * 8·k), run, free. The _work entry points keep LAPACKE from transposing or
 * allocating behind our back. */

#define SVD_WRAPPERS(T, P, SUFFIX)                                             \
  static int svd_##SUFFIX(decomp_ctx *ctx, const char *what, int64_t m,       \
                          int64_t n, T *a, T *s, T *u, T *vt, char jobz) {    \
    int rc = check_dims(ctx, what, m, n);                                      \
    if (rc != DECOMP_OK)                                                       \
      return rc;                                                               \
    lapack_int lm = (lapack_int)m, ln = (lapack_int)n;                         \
    lapack_int k = lm < ln ? lm : ln;                                          \
    lapack_int ldu = jobz == 'N' ? 1 : lm, ldvt = jobz == 'N' ? 1 : k;         \
    T dummy = 0, query = 0;                                                    \
    lapack_int *iwork = malloc(sizeof *iwork * 8 * (size_t)k);                 \
    if (!iwork)                                                                \
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);      \
    lapack_int info = LAPACKE_##P##gesdd_work(                                 \
        LAPACK_COL_MAJOR, jobz, lm, ln, a, lm, s, u ? u : &dummy, ldu,         \
        vt ? vt : &dummy, ldvt, &query, -1, iwork);                            \
    if (info != 0) {                                                           \
      free(iwork);                                                             \
      return check_info(ctx, what, info, #P "gesdd");                          \
    }                                                                          \
    /* The reported size is a float; round up and add slack (some LAPACK  */  \
    /* versions under-report by rounding to the float's precision).       */  \
    size_t lwork = (size_t)query + 1;                                          \
    lwork += lwork / 64;                                                       \
    if (lwork > (size_t)INT_MAX) {                                             \
      free(iwork);                                                             \
      return core_fail(ctx, DECOMP_ERR_TOO_LARGE,                              \
                       "%s: SVD workspace too large", what);                   \
    }                                                                          \
    T *work = malloc(sizeof *work * lwork);                                    \
    if (!work) {                                                               \
      free(iwork);                                                             \
      return core_fail(ctx, DECOMP_ERR_NOMEM,                                  \
                       "%s: out of memory for the SVD workspace", what);       \
    }                                                                          \
    info = LAPACKE_##P##gesdd_work(LAPACK_COL_MAJOR, jobz, lm, ln, a, lm, s,  \
                                   u ? u : &dummy, ldu, vt ? vt : &dummy,      \
                                   ldvt, work, (lapack_int)lwork, iwork);      \
    free(work);                                                                \
    free(iwork);                                                               \
    return check_info(ctx, what, info, #P "gesdd");                            \
  }

SVD_WRAPPERS(float, s, f32)
SVD_WRAPPERS(double, d, f64)

int core_svd_values_f32(decomp_ctx *ctx, const char *what, int64_t m,
                        int64_t n, float *a, float *s) {
  return svd_f32(ctx, what, m, n, a, s, NULL, NULL, 'N');
}

int core_svd_values_f64(decomp_ctx *ctx, const char *what, int64_t m,
                        int64_t n, double *a, double *s) {
  return svd_f64(ctx, what, m, n, a, s, NULL, NULL, 'N');
}

int core_svd_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                 float *a, float *s, float *u, float *vt) {
  return svd_f32(ctx, what, m, n, a, s, u, vt, 'S');
}

int core_svd_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                 double *a, double *s, double *u, double *vt) {
  return svd_f64(ctx, what, m, n, a, s, u, vt, 'S');
}

/* --- level-3 products and threads (svd.c) -------------------------------- */

void core_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                const float *a, int64_t lda, const float *b, int64_t ldb,
                float beta, float *c, int64_t ldc) {
  cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans,
              tb ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n,
              (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, c,
              (blasint)ldc);
}

void core_ssyrk(bool ta, int64_t n, int64_t k, const float *a, int64_t lda,
                float beta, float *c, int64_t ldc) {
  cblas_ssyrk(CblasColMajor, CblasLower, ta ? CblasTrans : CblasNoTrans,
              (blasint)n, (blasint)k, 1.0f, a, (blasint)lda, beta, c,
              (blasint)ldc);
}

int core_blas_threads(void) { return openblas_get_num_threads(); }

void core_blas_set_threads(int n) {
  if (n >= 1 && n != openblas_get_num_threads())
    openblas_set_num_threads(n);
}

/* --- symmetric eigenproblems and QR (svd.c) ------------------------------- */

static int check_sym(decomp_ctx *ctx, const char *what, int64_t n) {
  if (n <= 0)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: empty %lldx%lld matrix",
                     what, (long long)n, (long long)n);
  if (n > 46000)
    return core_fail(ctx, DECOMP_ERR_TOO_LARGE,
                     "%s: %lldx%lld matrix is too large for LAPACK", what,
                     (long long)n, (long long)n);
  return DECOMP_OK;
}

static size_t lwork_of(double query) {
  size_t lw = (size_t)query + 1;
  return lw + lw / 64;
}

#define SFX_(name, suffix) name##_##suffix
#define SFX2_(name, suffix) SFX_(name, suffix)

#define T float
#define SFX(name) SFX2_(name, f32)
#define LA(name) LAPACKE_s##name
#define CB(name) cblas_s##name
#define P "s"
#include "lapack_tmpl.h"
#undef T
#undef SFX
#undef LA
#undef CB
#undef P

#define T double
#define SFX(name) SFX2_(name, f64)
#define LA(name) LAPACKE_d##name
#define CB(name) cblas_d##name
#define P "d"
#include "lapack_tmpl.h"
#undef T
#undef SFX
#undef LA
#undef CB
#undef P

/* --- level-3 products in float64 (svd.c) ------------------------------ */

void core_dgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                const double *a, int64_t lda, const double *b, int64_t ldb,
                double beta, double *c, int64_t ldc) {
  cblas_dgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans,
              tb ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n,
              (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, c,
              (blasint)ldc);
}

void core_dsyrk(bool ta, int64_t n, int64_t k, const double *a, int64_t lda,
                double beta, double *c, int64_t ldc) {
  cblas_dsyrk(CblasColMajor, CblasLower, ta ? CblasTrans : CblasNoTrans,
              (blasint)n, (blasint)k, 1.0, a, (blasint)lda, beta, c,
              (blasint)ldc);
}
