/* lapack.c — the engine's one door to BLAS and LAPACK: thin wrappers over
 * ?gesdd, the symmetric eigensolvers (ssyevd, ssyev_2stage, ssyevr), the
 * Householder QR (sgeqrf/sorgqr), the level-3 products the truncated SVD is
 * made of (sgemm, ssyrk), and OpenBLAS's thread count. They take
 * column-major matrices, check sizes against LAPACK's int, manage the
 * workspace, and turn LAPACK's `info` into a decomp error code with a
 * message naming the matrix. No other file includes lapacke.h or cblas.h. */
#include <limits.h>
#include <stdlib.h>

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

int core_eig_values_f32(decomp_ctx *ctx, const char *what, int64_t n,
                        float *a, float *w) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  lapack_int ln = (lapack_int)n, info, iq = 0;
  float query = 0;
  /* The one-stage tridiagonal reduction is half matrix-vector work, bound
   * by memory once the matrix leaves the cache; the two-stage one is
   * matrix-matrix work and wins above a few thousand (measured: 3072 is
   * 2.7 s vs 3.3 s, 5120 is 27 s vs 13 s on two cores). */
  bool two = n >= 4096;
  if (two)
    info = LAPACKE_ssyev_2stage_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                                     &query, -1);
  else
    info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                               &query, -1, &iq, -1);
  if (info != 0)
    return check_info(ctx, what, info, two ? "ssyev_2stage" : "ssyevd");
  size_t lw = lwork_of(query);
  float *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  lapack_int *iwork = malloc(sizeof *iwork * (size_t)(iq > 1 ? iq : 1));
  if (!work || !iwork) {
    free(work);
    free(iwork);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for the eigensolver", what);
  }
  if (two)
    info = LAPACKE_ssyev_2stage_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                                     work, (lapack_int)lw);
  else
    info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w, work,
                               (lapack_int)lw, iwork, iq > 1 ? iq : 1);
  free(work);
  free(iwork);
  return check_info(ctx, what, info, two ? "ssyev_2stage" : "ssyevd");
}

int core_eig_top_f32(decomp_ctx *ctx, const char *what, int64_t n, float *a,
                     int64_t r, float *w, float *z) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  if (r < 1 || r > n)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: %lld eigenpairs of %lld",
                     what, (long long)r, (long long)n);
  lapack_int ln = (lapack_int)n, found = 0, iq = 0, info;
  lapack_int il = (lapack_int)(n - r + 1), iu = ln;
  float query = 0;
  lapack_int *isuppz = malloc(sizeof *isuppz * 2 * (size_t)n);
  if (!isuppz)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  info = LAPACKE_ssyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', ln, a, ln, 0, 0,
                             il, iu, 0, &found, w, z, ln, isuppz, &query, -1,
                             &iq, -1);
  if (info != 0) {
    free(isuppz);
    return check_info(ctx, what, info, "ssyevr");
  }
  size_t lw = lwork_of(query);
  float *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  lapack_int *iwork = malloc(sizeof *iwork * (size_t)(iq > 1 ? iq : 1));
  if (!work || !iwork) {
    free(work);
    free(iwork);
    free(isuppz);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for the eigensolver", what);
  }
  info = LAPACKE_ssyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', ln, a, ln, 0, 0,
                             il, iu, 0, &found, w, z, ln, isuppz, work,
                             (lapack_int)lw, iwork, iq > 1 ? iq : 1);
  free(work);
  free(iwork);
  free(isuppz);
  if (info == 0 && found != (lapack_int)r)
    return core_fail(ctx, DECOMP_ERR_SVD_FAILED,
                     "%s: ssyevr found %d of %lld eigenpairs", what, (int)found,
                     (long long)r);
  return check_info(ctx, what, info, "ssyevr");
}

int core_qr_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                float *a) {
  int rc = check_dims(ctx, what, m, n);
  if (rc != DECOMP_OK)
    return rc;
  if (n > m)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: QR of a wide matrix", what);
  lapack_int lm = (lapack_int)m, ln = (lapack_int)n, info;
  float q1 = 0, q2 = 0;
  float *tau = malloc(sizeof *tau * (size_t)n);
  if (!tau)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, lm, ln, a, lm, tau, &q1, -1);
  if (info == 0)
    info = LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, lm, ln, ln, a, lm, tau, &q2,
                               -1);
  if (info != 0) {
    free(tau);
    return check_info(ctx, what, info, "sgeqrf");
  }
  size_t lw = lwork_of(q1 > q2 ? q1 : q2);
  float *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  if (!work) {
    free(tau);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  }
  info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, lm, ln, a, lm, tau, work,
                             (lapack_int)lw);
  if (info == 0)
    info = LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, lm, ln, ln, a, lm, tau, work,
                               (lapack_int)lw);
  free(work);
  free(tau);
  return check_info(ctx, what, info, "sgeqrf/sorgqr");
}

/* An orthonormal basis of span(a) in place, cheaply: LU with partial
 * pivoting gives a well-conditioned basis of the same span (P·L, |L| ≤ 1)
 * whatever the conditioning of `a` (power iterations make it huge), then
 * Cholesky-QR twice orthonormalizes it to working precision with level-3
 * work only (about a quarter of Householder QR's). If the Cholesky step
 * breaks down, Householder QR finishes the job. */
int core_orth_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                  float *a) {
  int rc = check_dims(ctx, what, m, n);
  if (rc != DECOMP_OK)
    return rc;
  if (n > m)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: basis of a wide matrix",
                     what);
  lapack_int lm = (lapack_int)m, ln = (lapack_int)n, info;
  size_t nn = (size_t)n;
  lapack_int *ipiv = malloc(sizeof *ipiv * nn);
  float *s = malloc(sizeof *s * nn * nn);
  if (!ipiv || !s) {
    free(ipiv);
    free(s);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  }
  info = LAPACKE_sgetrf_work(LAPACK_COL_MAJOR, lm, ln, a, lm, ipiv);
  if (info < 0) {
    rc = check_info(ctx, what, info, "sgetrf");
    goto out;
  }
  /* info > 0 (an exactly singular U) does not matter: L is what we keep. */
  for (size_t j = 0; j < nn; j++) {
    float *col = a + j * (size_t)m;
    for (size_t i = 0; i < j; i++)
      col[i] = 0;
    col[j] = 1;
  }
  LAPACKE_slaswp_work(LAPACK_COL_MAJOR, ln, a, lm, 1, ln, ipiv, -1);
  for (int pass = 0; pass < 2; pass++) {
    cblas_ssyrk(CblasColMajor, CblasLower, CblasTrans, (blasint)n, (blasint)m,
                1.0f, a, (blasint)m, 0.0f, s, (blasint)n);
    info = LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'L', ln, s, ln);
    if (info != 0)
      break;
    /* a ← a·L⁻ᵀ, where s = L·Lᵀ. */
    cblas_strsm(CblasColMajor, CblasRight, CblasLower, CblasTrans,
                CblasNonUnit, (blasint)m, (blasint)n, 1.0f, s, (blasint)n, a,
                (blasint)m);
  }
  rc = info == 0 ? DECOMP_OK : core_qr_f32(ctx, what, m, n, a);
out:
  free(ipiv);
  free(s);
  return rc;
}

/* --- the same in float64 --------------------------------------------- */

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

int core_eig_values_f64(decomp_ctx *ctx, const char *what, int64_t n,
                        double *a, double *w) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  lapack_int ln = (lapack_int)n, info, iq = 0;
  double query = 0;
  /* The one-stage tridiagonal reduction is half matrix-vector work, bound
   * by memory once the matrix leaves the cache; the two-stage one is
   * matrix-matrix work and wins above a few thousand (measured: 3072 is
   * 2.7 s vs 3.3 s, 5120 is 27 s vs 13 s on two cores). */
  bool two = n >= 4096;
  if (two)
    info = LAPACKE_dsyev_2stage_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                                     &query, -1);
  else
    info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                               &query, -1, &iq, -1);
  if (info != 0)
    return check_info(ctx, what, info, two ? "dsyev_2stage" : "dsyevd");
  size_t lw = lwork_of(query);
  double *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  lapack_int *iwork = malloc(sizeof *iwork * (size_t)(iq > 1 ? iq : 1));
  if (!work || !iwork) {
    free(work);
    free(iwork);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for the eigensolver", what);
  }
  if (two)
    info = LAPACKE_dsyev_2stage_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                                     work, (lapack_int)lw);
  else
    info = LAPACKE_dsyevd_work(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w, work,
                               (lapack_int)lw, iwork, iq > 1 ? iq : 1);
  free(work);
  free(iwork);
  return check_info(ctx, what, info, two ? "dsyev_2stage" : "dsyevd");
}

int core_eig_top_f64(decomp_ctx *ctx, const char *what, int64_t n, double *a,
                     int64_t r, double *w, double *z) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  if (r < 1 || r > n)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: %lld eigenpairs of %lld",
                     what, (long long)r, (long long)n);
  lapack_int ln = (lapack_int)n, found = 0, iq = 0, info;
  lapack_int il = (lapack_int)(n - r + 1), iu = ln;
  double query = 0;
  lapack_int *isuppz = malloc(sizeof *isuppz * 2 * (size_t)n);
  if (!isuppz)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  info = LAPACKE_dsyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', ln, a, ln, 0, 0,
                             il, iu, 0, &found, w, z, ln, isuppz, &query, -1,
                             &iq, -1);
  if (info != 0) {
    free(isuppz);
    return check_info(ctx, what, info, "dsyevr");
  }
  size_t lw = lwork_of(query);
  double *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  lapack_int *iwork = malloc(sizeof *iwork * (size_t)(iq > 1 ? iq : 1));
  if (!work || !iwork) {
    free(work);
    free(iwork);
    free(isuppz);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for the eigensolver", what);
  }
  info = LAPACKE_dsyevr_work(LAPACK_COL_MAJOR, 'V', 'I', 'L', ln, a, ln, 0, 0,
                             il, iu, 0, &found, w, z, ln, isuppz, work,
                             (lapack_int)lw, iwork, iq > 1 ? iq : 1);
  free(work);
  free(iwork);
  free(isuppz);
  if (info == 0 && found != (lapack_int)r)
    return core_fail(ctx, DECOMP_ERR_SVD_FAILED,
                     "%s: ssyevr found %d of %lld eigenpairs", what, (int)found,
                     (long long)r);
  return check_info(ctx, what, info, "dsyevr");
}

int core_qr_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                double *a) {
  int rc = check_dims(ctx, what, m, n);
  if (rc != DECOMP_OK)
    return rc;
  if (n > m)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: QR of a wide matrix", what);
  lapack_int lm = (lapack_int)m, ln = (lapack_int)n, info;
  double q1 = 0, q2 = 0;
  double *tau = malloc(sizeof *tau * (size_t)n);
  if (!tau)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, lm, ln, a, lm, tau, &q1, -1);
  if (info == 0)
    info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, lm, ln, ln, a, lm, tau, &q2,
                               -1);
  if (info != 0) {
    free(tau);
    return check_info(ctx, what, info, "dgeqrf");
  }
  size_t lw = lwork_of(q1 > q2 ? q1 : q2);
  double *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  if (!work) {
    free(tau);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  }
  info = LAPACKE_dgeqrf_work(LAPACK_COL_MAJOR, lm, ln, a, lm, tau, work,
                             (lapack_int)lw);
  if (info == 0)
    info = LAPACKE_dorgqr_work(LAPACK_COL_MAJOR, lm, ln, ln, a, lm, tau, work,
                               (lapack_int)lw);
  free(work);
  free(tau);
  return check_info(ctx, what, info, "dgeqrf/sorgqr");
}

/* An orthonormal basis of span(a) in place, cheaply: LU with partial
 * pivoting gives a well-conditioned basis of the same span (P·L, |L| ≤ 1)
 * whatever the conditioning of `a` (power iterations make it huge), then
 * Cholesky-QR twice orthonormalizes it to working precision with level-3
 * work only (about a quarter of Householder QR's). If the Cholesky step
 * breaks down, Householder QR finishes the job. */
int core_orth_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                  double *a) {
  int rc = check_dims(ctx, what, m, n);
  if (rc != DECOMP_OK)
    return rc;
  if (n > m)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: basis of a wide matrix",
                     what);
  lapack_int lm = (lapack_int)m, ln = (lapack_int)n, info;
  size_t nn = (size_t)n;
  lapack_int *ipiv = malloc(sizeof *ipiv * nn);
  double *s = malloc(sizeof *s * nn * nn);
  if (!ipiv || !s) {
    free(ipiv);
    free(s);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  }
  info = LAPACKE_dgetrf_work(LAPACK_COL_MAJOR, lm, ln, a, lm, ipiv);
  if (info < 0) {
    rc = check_info(ctx, what, info, "dgetrf");
    goto out;
  }
  /* info > 0 (an exactly singular U) does not matter: L is what we keep. */
  for (size_t j = 0; j < nn; j++) {
    double *col = a + j * (size_t)m;
    for (size_t i = 0; i < j; i++)
      col[i] = 0;
    col[j] = 1;
  }
  LAPACKE_dlaswp_work(LAPACK_COL_MAJOR, ln, a, lm, 1, ln, ipiv, -1);
  for (int pass = 0; pass < 2; pass++) {
    cblas_dsyrk(CblasColMajor, CblasLower, CblasTrans, (blasint)n, (blasint)m,
                1.0, a, (blasint)m, 0.0, s, (blasint)n);
    info = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', ln, s, ln);
    if (info != 0)
      break;
    /* a ← a·L⁻ᵀ, where s = L·Lᵀ. */
    cblas_dtrsm(CblasColMajor, CblasRight, CblasLower, CblasTrans,
                CblasNonUnit, (blasint)m, (blasint)n, 1.0, s, (blasint)n, a,
                (blasint)m);
  }
  rc = info == 0 ? DECOMP_OK : core_qr_f64(ctx, what, m, n, a);
out:
  free(ipiv);
  free(s);
  return rc;
}
