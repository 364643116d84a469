/* lapack.c — the engine's one door to LAPACK: thin wrappers over ?gesdd that
 * take column-major matrices, check their sizes against LAPACK's int, manage
 * the workspace, and turn LAPACK's `info` into a decomp error code with a
 * message naming the matrix. No other file includes lapacke.h. */
#include <limits.h>
#include <stdlib.h>

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
