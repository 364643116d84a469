/* lapack_tmpl.h — lapack.c's eigensolver, QR and orthonormalization
 * wrappers for one element type, included once for float and once for
 * double (lapack.c defines T, SFX, LA, CB and P before each inclusion). */
int SFX(core_eig_values)(decomp_ctx *ctx, const char *what, int64_t n,
                        T *a, T *w) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  lapack_int ln = (lapack_int)n, info, iq = 0;
  T query = 0;
  /* The one-stage tridiagonal reduction is half matrix-vector work, bound
   * by memory once the matrix leaves the cache; the two-stage one is
   * matrix-matrix work, but its second stage (the bulge chasing) runs on
   * one thread. Single-threaded the two-stage one wins from a few thousand
   * up (float32, 4096: 1.8 s vs 2.7 s); with OpenBLAS on two threads the
   * one-stage one does (1.2 s vs 2.6 s). */
  bool two = n >= 4096 && core_blas_threads() < 2;
  if (two)
    info = LA(syev_2stage_work)(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                                     &query, -1);
  else
    info = LA(syevd_work)(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                               &query, -1, &iq, -1);
  if (info != 0)
    return check_info(ctx, what, info, two ? P "syev_2stage" : P "syevd");
  size_t lw = lwork_of(query);
  T *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  lapack_int *iwork = malloc(sizeof *iwork * (size_t)(iq > 1 ? iq : 1));
  if (!work || !iwork) {
    free(work);
    free(iwork);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for the eigensolver", what);
  }
  if (two)
    info = LA(syev_2stage_work)(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w,
                                     work, (lapack_int)lw);
  else
    info = LA(syevd_work)(LAPACK_COL_MAJOR, 'N', 'L', ln, a, ln, w, work,
                               (lapack_int)lw, iwork, iq > 1 ? iq : 1);
  free(work);
  free(iwork);
  return check_info(ctx, what, info, two ? P "syev_2stage" : P "syevd");
}

int SFX(core_eig_top)(decomp_ctx *ctx, const char *what, int64_t n, T *a,
                     int64_t r, T *w, T *z) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  if (r < 1 || r > n)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: %lld eigenpairs of %lld",
                     what, (long long)r, (long long)n);
  /* Divide and conquer for every pair, then the top r kept: measured twice
   * as fast as ssyevr's bisection and inverse iteration for r of n/2 and
   * more (1040: 0.05 s vs 0.10 s; 3200: 1.0 s vs 1.6 s on two cores). */
  lapack_int ln = (lapack_int)n, iq = 0, info;
  size_t nn = (size_t)n, rr = (size_t)r;
  T query = 0;
  T *all = malloc(nn * sizeof *all);
  if (!all)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  info = LA(syevd_work)(LAPACK_COL_MAJOR, 'V', 'L', ln, a, ln, all, &query, -1,
                        &iq, -1);
  if (info != 0) {
    free(all);
    return check_info(ctx, what, info, P "syevd");
  }
  size_t lw = lwork_of(query);
  T *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  lapack_int *iwork = malloc(sizeof *iwork * (size_t)(iq > 1 ? iq : 1));
  if (!work || !iwork) {
    free(work);
    free(iwork);
    free(all);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for the eigensolver", what);
  }
  info = LA(syevd_work)(LAPACK_COL_MAJOR, 'V', 'L', ln, a, ln, all, work,
                        (lapack_int)lw, iwork, iq > 1 ? iq : 1);
  free(work);
  free(iwork);
  if (info == 0) {
    memcpy(w, all + (nn - rr), rr * sizeof *w);
    memcpy(z, a + (nn - rr) * nn, rr * nn * sizeof *z);
  }
  free(all);
  return check_info(ctx, what, info, P "syevd");
}

/* The r largest eigenpairs of the symmetric n×n `a`: ?sytrd to a
 * tridiagonal T = Qᵀ·a·Q, ?stemr (MRRR) for T's r largest pairs alone,
 * ?ormtr to take those r vectors back through Q; ?stevr (bisection and
 * inverse iteration) when MRRR reports a failure. w[r] ascending, z n×r
 * (ld n); `a` is destroyed. Memory is z and O(n) beside `a`, where ?syevd
 * holds 2·n² more; time (n = 4096 in float64, two cores) 7 s at r = 1638
 * and 11 s at r = 2388, where ?syevd takes 12–15 s and ?syevr, which
 * runs MRRR only for every pair, 14–20 s. */
int SFX(core_eig_range)(decomp_ctx *ctx, const char *what, int64_t n, T *a,
                        int64_t r, T *w, T *z) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  if (r < 1 || r > n)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: %lld eigenpairs of %lld",
                     what, (long long)r, (long long)n);
  lapack_int ln = (lapack_int)n, lr = (lapack_int)r, il = ln - lr + 1;
  lapack_int found = 0, info, liw = 0;
  lapack_logical tryrac = 1;
  size_t nn = (size_t)n;
  T q1 = 0, q2 = 0, q3 = 0;
  lapack_int iq = 0;
  /* d, e and their copies (for ?stevr), τ, the values (n: the solvers
   * write up to n whatever the range) */
  T *d = malloc(6 * nn * sizeof *d), *work = NULL;
  lapack_int *isuppz = malloc(sizeof *isuppz * 2 * nn), *iwork = NULL;
  if (!d || !isuppz) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    goto out;
  }
  T *e = d + nn, *d0 = e + nn, *e0 = d0 + nn, *tau = e0 + nn, *vals = tau + nn;
  info = LA(sytrd_work)(LAPACK_COL_MAJOR, 'L', ln, a, ln, d, e, tau, &q1, -1);
  if (info == 0)
    info = LA(stemr_work)(LAPACK_COL_MAJOR, 'V', 'I', ln, d, e, 0, 0, il, ln,
                          &found, vals, z, ln, lr, isuppz, &tryrac, &q2, -1,
                          &iq, -1);
  if (info == 0)
    info = LA(ormtr_work)(LAPACK_COL_MAJOR, 'L', 'L', 'N', ln, lr, a, ln, tau,
                          z, ln, &q3, -1);
  if (info != 0) {
    rc = check_info(ctx, what, info, P "sytrd/" P "stemr/" P "ormtr");
    goto out;
  }
  T big = q1 > q2 ? q1 : q2;
  big = big > q3 ? big : q3;
  /* ?stevr wants 20·n and 10·n */
  size_t lw = lwork_of((double)big > 20.0 * (double)n ? big : 20.0 * (double)n);
  liw = iq > 10 * ln ? iq : 10 * ln;
  work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  iwork = malloc(sizeof *iwork * (size_t)liw);
  if (!work || !iwork) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "%s: out of memory for the eigensolver", what);
    goto out;
  }
  info = LA(sytrd_work)(LAPACK_COL_MAJOR, 'L', ln, a, ln, d, e, tau, work,
                        (lapack_int)lw);
  if (info != 0) {
    rc = check_info(ctx, what, info, P "sytrd");
    goto out;
  }
  memcpy(d0, d, 2 * nn * sizeof *d); /* d and e */
  info = LA(stemr_work)(LAPACK_COL_MAJOR, 'V', 'I', ln, d, e, 0, 0, il, ln,
                        &found, vals, z, ln, lr, isuppz, &tryrac, work,
                        (lapack_int)lw, iwork, liw);
  if (info < 0) {
    rc = check_info(ctx, what, info, P "stemr");
    goto out;
  }
  if (info > 0 || found != lr) {
    core_log(ctx, DECOMP_LOG_DEBUG, "svd",
             "matrix=\"%s\" " P "stemr info=%d found=%d of %d: " P "stevr",
             what, (int)info, (int)found, (int)lr);
    info = LA(stevr_work)(LAPACK_COL_MAJOR, 'V', 'I', ln, d0, e0, 0, 0, il, ln,
                          0, &found, vals, z, ln, isuppz, work,
                          (lapack_int)lw, iwork, liw);
    if (info == 0 && found != lr)
      info = -1000;
    if (info != 0) {
      rc = info == -1000
               ? core_fail(ctx, DECOMP_ERR_SVD_FAILED,
                           "%s: " P "stevr found %d of %lld eigenpairs", what,
                           (int)found, (long long)r)
               : check_info(ctx, what, info, P "stevr");
      goto out;
    }
  }
  info = LA(ormtr_work)(LAPACK_COL_MAJOR, 'L', 'L', 'N', ln, lr, a, ln, tau,
                        z, ln, work, (lapack_int)lw);
  if (info != 0) {
    rc = check_info(ctx, what, info, P "ormtr");
    goto out;
  }
  memcpy(w, vals, (size_t)r * sizeof *w);
out:
  free(d);
  free(work);
  free(iwork);
  free(isuppz);
  return rc;
}

int SFX(core_qr)(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                T *a) {
  int rc = check_dims(ctx, what, m, n);
  if (rc != DECOMP_OK)
    return rc;
  if (n > m)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: QR of a wide matrix", what);
  lapack_int lm = (lapack_int)m, ln = (lapack_int)n, info;
  T q1 = 0, q2 = 0;
  T *tau = malloc(sizeof *tau * (size_t)n);
  if (!tau)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  info = LA(geqrf_work)(LAPACK_COL_MAJOR, lm, ln, a, lm, tau, &q1, -1);
  if (info == 0)
    info = LA(orgqr_work)(LAPACK_COL_MAJOR, lm, ln, ln, a, lm, tau, &q2,
                               -1);
  if (info != 0) {
    free(tau);
    return check_info(ctx, what, info, P "geqrf");
  }
  size_t lw = lwork_of(q1 > q2 ? q1 : q2);
  T *work = lw <= INT_MAX ? malloc(lw * sizeof *work) : NULL;
  if (!work) {
    free(tau);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  }
  info = LA(geqrf_work)(LAPACK_COL_MAJOR, lm, ln, a, lm, tau, work,
                             (lapack_int)lw);
  if (info == 0)
    info = LA(orgqr_work)(LAPACK_COL_MAJOR, lm, ln, ln, a, lm, tau, work,
                               (lapack_int)lw);
  free(work);
  free(tau);
  return check_info(ctx, what, info, P "geqrf/" P "orgqr");
}

/* An orthonormal basis of span(a) in place, cheaply: LU with partial
 * pivoting gives a well-conditioned basis of the same span (P·L, |L| ≤ 1)
 * whatever the conditioning of `a` (a Krylov block can be close to rank
 * deficient once the basis has caught the leading directions), then
 * Cholesky-QR twice orthonormalizes it to working precision with level-3
 * work only (about a quarter of Householder QR's). If the Cholesky step
 * breaks down, Householder QR finishes the job. */
int SFX(core_orth)(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                  T *a) {
  int rc = check_dims(ctx, what, m, n);
  if (rc != DECOMP_OK)
    return rc;
  if (n > m)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: basis of a wide matrix",
                     what);
  lapack_int lm = (lapack_int)m, ln = (lapack_int)n, info;
  size_t nn = (size_t)n;
  lapack_int *ipiv = malloc(sizeof *ipiv * nn);
  T *s = malloc(sizeof *s * nn * nn);
  if (!ipiv || !s) {
    free(ipiv);
    free(s);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  }
  info = LA(getrf_work)(LAPACK_COL_MAJOR, lm, ln, a, lm, ipiv);
  if (info < 0) {
    rc = check_info(ctx, what, info, P "getrf");
    goto out;
  }
  /* info > 0 (an exactly singular U) does not matter: L is what we keep. */
  for (size_t j = 0; j < nn; j++) {
    T *col = a + j * (size_t)m;
    for (size_t i = 0; i < j; i++)
      col[i] = 0;
    col[j] = 1;
  }
  LA(laswp_work)(LAPACK_COL_MAJOR, ln, a, lm, 1, ln, ipiv, -1);
  for (int pass = 0; pass < 2; pass++) {
    CB(syrk)(CblasColMajor, CblasLower, CblasTrans, (blasint)n, (blasint)m,
                (T)1, a, (blasint)m, (T)0, s, (blasint)n);
    info = LA(potrf_work)(LAPACK_COL_MAJOR, 'L', ln, s, ln);
    if (info != 0)
      break;
    /* a ← a·L⁻ᵀ, where s = L·Lᵀ. */
    CB(trsm)(CblasColMajor, CblasRight, CblasLower, CblasTrans,
                CblasNonUnit, (blasint)m, (blasint)n, (T)1, s, (blasint)n, a,
                (blasint)m);
  }
  rc = info == 0 ? DECOMP_OK : SFX(core_qr)(ctx, what, m, n, a);
out:
  free(ipiv);
  free(s);
  return rc;
}

int SFX(core_chol)(decomp_ctx *ctx, const char *what, int64_t n, T *a,
                   bool *pd) {
  int rc = check_sym(ctx, what, n);
  if (rc != DECOMP_OK)
    return rc;
  lapack_int info = LA(potrf_work)(LAPACK_COL_MAJOR, 'L', (lapack_int)n, a,
                                   (lapack_int)n);
  if (info < 0)
    return check_info(ctx, what, info, P "potrf");
  *pd = info == 0;
  for (int64_t j = 1; *pd && j < n; j++) /* the upper triangle: zeros */
    memset(a + (size_t)n * (size_t)j, 0, (size_t)j * sizeof *a);
  return DECOMP_OK;
}

void SFX(core_trmm)(bool trans, int64_t n, int64_t k, const T *l, T *b) {
  CB(trmm)(CblasColMajor, CblasLeft, CblasLower,
           trans ? CblasTrans : CblasNoTrans, CblasNonUnit, (blasint)n,
           (blasint)k, (T)1, l, (blasint)n, b, (blasint)n);
}

void SFX(core_trsm)(bool trans, int64_t n, int64_t k, const T *l, T *b) {
  CB(trsm)(CblasColMajor, CblasLeft, CblasLower,
           trans ? CblasTrans : CblasNoTrans, CblasNonUnit, (blasint)n,
           (blasint)k, (T)1, l, (blasint)n, b, (blasint)n);
}
