/* svd_tmpl.h — the body of svd.c for one element type, included once for
 * float and once for double (svd.c defines T, SFX, GEMM, SYRK and SQRT
 * before each inclusion), so both precisions run the same code. */
int SFX(core_svd_spectrum)(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const T *a, double *s) {
  int64_t k = m < n ? m : n;
  size_t kk = (size_t)k;
  int rc;
  if (!core_svd_spectrum_uses_gram(m, n)) {
    T *c = malloc((size_t)m * (size_t)n * sizeof *c);
    T *sv = malloc(kk * sizeof *sv);
    if (!c || !sv) {
      free(c);
      free(sv);
      return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    }
    memcpy(c, a, (size_t)m * (size_t)n * sizeof *c);
    rc = SFX(core_svd_values)(ctx, what, m, n, c, sv);
    for (size_t i = 0; rc == DECOMP_OK && i < kk; i++)
      s[i] = sv[i];
    free(c);
    free(sv);
    return rc;
  }
  T *g = malloc(kk * kk * sizeof *g), *w = malloc(kk * sizeof *w);
  if (!g || !w) {
    free(g);
    free(w);
    return core_fail(ctx, DECOMP_ERR_NOMEM,
                     "%s: out of memory for a %lldx%lld Gram matrix", what,
                     (long long)k, (long long)k);
  }
  /* m ≤ n: A·Aᵀ (m×m); else Aᵀ·A (n×n). */
  SYRK(m > n, k, m < n ? n : m, a, m, 0, g, k);
  rc = SFX(core_eig_values)(ctx, what, k, g, w);
  for (size_t i = 0; rc == DECOMP_OK && i < kk; i++) {
    double l = w[kk - 1 - i];
    s[i] = l > 0 ? sqrt(l) : 0.0;
  }
  free(g);
  free(w);
  return rc;
}

/* Exact: gesdd on a copy, the first R triplets kept. */
static int SFX(rank_exact)(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const T *a, int64_t R, T *s, T *u, T *v,
                      double *all, core_svd_report *rep) {
  size_t k = (size_t)(m < n ? m : n), mm = (size_t)m, nn = (size_t)n;
  size_t r = (size_t)R;
  T *c = malloc(mm * nn * sizeof *c), *sv = malloc(k * sizeof *sv);
  T *U = malloc(mm * k * sizeof *U), *VT = malloc(k * nn * sizeof *VT);
  int rc;
  if (!c || !sv || !U || !VT) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    goto out;
  }
  memcpy(c, a, mm * nn * sizeof *c);
  rc = SFX(core_svd)(ctx, what, m, n, c, sv, U, VT);
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

#if GRAM_RANK
/* Large float32 matrices at ranks the Krylov basis has no room for: the R
 * largest eigenpairs of the smaller Gram matrix (A·Aᵀ when m ≤ n, else
 * Aᵀ·A), formed in float64 from slabs of 256 columns (rows) of A and
 * solved for those R alone (core_eig_range: MRRR); the small side's vectors are its
 * eigenvectors, the other side's come from A itself (Aᵀ·U·Σ⁻¹, A·V·Σ⁻¹).
 * Memory: the k×k Gram and k×R vectors in float64 beside the outputs,
 * where gesdd holds a copy of A, U, Vᵀ and 4·k² of workspace; time: a
 * third of sgesdd's at 4096×11008. Squaring the condition number in
 * float64 loses less than float32 gesdd's own rounding while σ_R/σ_1 is
 * above 1e-4 (a relative error of about 1e-16·(σ_1/σ_i)² on σ_i); below
 * that the exact path runs. decompose.c measures the factors and falls
 * back to gesdd when they miss, as for the Krylov path. rep->discarded is
 * the Gram's trace minus the R eigenvalues kept. */
static int SFX(rank_gram)(decomp_ctx *ctx, const char *what, int64_t m,
                          int64_t n, const T *a, int64_t R, T *s, T *u, T *v,
                          double *all, core_svd_report *rep) {
  bool tr = m > n; /* Aᵀ·A (n×n) */
  size_t mm = (size_t)m, k = (size_t)(tr ? n : m), r = (size_t)R;
  size_t len = (size_t)(tr ? m : n), slab = 256;
  double *G = malloc(k * k * sizeof *G), *B = malloc(k * slab * sizeof *B);
  double *w = NULL, *Z = NULL;
  int rc = DECOMP_OK;
  if (!G || !B) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "%s: out of memory for a %zux%zu Gram matrix", what, k, k);
    goto out;
  }
  for (size_t c0 = 0; c0 < len; c0 += slab) {
    size_t cw = len - c0 < slab ? len - c0 : slab;
    for (size_t x = 0; x < cw; x++)
      for (size_t y = 0; y < k; y++)
        if (tr)
          B[x + cw * y] = (double)a[(c0 + x) + mm * y]; /* cw×n, ld cw */
        else
          B[y + k * x] = (double)a[y + mm * (c0 + x)]; /* m×cw, ld m */
    core_dsyrk(tr, (int64_t)k, (int64_t)cw, B, (int64_t)(tr ? cw : k),
               c0 ? 1 : 0, G, (int64_t)k);
    if ((rc = core_tick(ctx, 0.3 * (double)(c0 + cw) / (double)len)) !=
        DECOMP_OK)
      goto out;
  }
  free(B);
  B = NULL;
  double trace = 0;
  for (size_t x = 0; x < k; x++)
    trace += G[x + k * x];
  w = malloc(r * sizeof *w);
  Z = malloc(k * r * sizeof *Z);
  if (!w || !Z) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
    goto out;
  }
  if ((rc = core_eig_range_f64(ctx, what, (int64_t)k, G, R, w, Z)) !=
      DECOMP_OK)
    goto out;
  free(G);
  G = NULL;
  if (!(w[0] > 1e-8 * w[r - 1])) {
    rep->fallback = "the rank-R Gram eigenvalue is tiny";
    core_log(ctx, DECOMP_LOG_DEBUG, "svd",
             "matrix=\"%s\" fallback=exact reason=\"%s\"", what,
             rep->fallback);
    rc = SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
    goto out;
  }
  /* Descending: column x is eigenpair r-1-x. */
  T *small = tr ? v : u, *other = tr ? u : v;
  double kept = 0;
  for (size_t x = 0; x < r; x++) {
    size_t from = r - 1 - x;
    kept += w[from];
    s[x] = (T)sqrt(w[from]);
    for (size_t y = 0; y < k; y++)
      small[y + k * x] = (T)Z[y + k * from];
  }
  if ((rc = core_tick(ctx, 0.8)) != DECOMP_OK)
    goto out;
  if (tr) /* u = A·v (m×R) */
    GEMM(false, false, m, R, n, 1, a, m, v, n, 0, u, m);
  else /* v = Aᵀ·u (n×R) */
    GEMM(true, false, n, R, m, 1, a, m, u, m, 0, v, n);
  size_t ol = (size_t)(tr ? m : n);
  for (size_t x = 0; x < r; x++) {
    T inv = (T)1 / s[x];
    for (size_t y = 0; y < ol; y++)
      other[y + ol * x] *= inv;
  }
  rep->gram = true;
  rep->discarded = trace - kept > 0 ? trace - kept : 0;
out:
  free(G);
  free(B);
  free(w);
  free(Z);
  return rc;
}
#endif

int SFX(core_svd_rank_exact)(decomp_ctx *ctx, const char *what, int64_t m,
                            int64_t n, const T *a, int64_t R, T *s, T *u,
                            T *v, double *all, core_svd_report *rep) {
  int64_t k = m < n ? m : n;
  *rep = (core_svd_report){.optimal = -1};
  if (R < 1 || R > k)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "%s: rank %lld of at most %lld",
                     what, (long long)R, (long long)k);
  return SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
}

/* ‖A − F·Gᵀ‖² of the m×n `a` (ld m), F m×R (ld m), G n×R (ld n): the
 * residual formed slab by slab (256 columns: one GEMM into a copy of the
 * slab) and its squares summed in double. Forming E itself, rather than
 * expanding ‖A‖² − 2⟨A, F·Gᵀ⟩ + ‖F·Gᵀ‖², keeps the figure accurate to
 * about ε·√R·‖A‖ in norm when the error is small. */
int SFX(core_svd_residual)(decomp_ctx *ctx, const char *what, int64_t m,
                           int64_t n, const T *a, int64_t R, const T *f,
                           const T *g, double *out) {
  size_t mm = (size_t)m, slab = 256;
  T *e = malloc(mm * slab * sizeof *e);
  if (!e)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "%s: out of memory", what);
  double sum = 0;
  for (int64_t c0 = 0; c0 < n; c0 += (int64_t)slab) {
    int64_t cw = n - c0 < (int64_t)slab ? n - c0 : (int64_t)slab;
    memcpy(e, a + mm * (size_t)c0, mm * (size_t)cw * sizeof *e);
    GEMM(false, true, m, cw, R, -1, f, m, g + c0, n, 1, e, m);
    for (size_t x = 0; x < mm * (size_t)cw; x++)
      sum += (double)e[x] * (double)e[x];
  }
  free(e);
  *out = sum;
  return DECOMP_OK;
}

/* Uniform in [-1, 1) from splitmix64: no libm, same bits everywhere. */
static void SFX(fill_random)(T *x, size_t n, uint64_t seed) {
  uint64_t st = seed;
  for (size_t i = 0; i < n; i++) {
    uint64_t z = (st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = (T)((double)(z >> 40) / 8388608.0 - 1.0);
  }
}

/* The symmetric d×d `c` (ld d, both triangles) from the upper triangle of
 * `t` (ld tl). */
static void SFX(sym_from_upper)(const T *t, size_t tl, size_t d, T *c) {
  for (size_t j = 0; j < d; j++)
    for (size_t i = 0; i <= j; i++)
      c[i + d * j] = c[j + d * i] = t[i + tl * j];
}

/* The rank-R error² of the basis so far: ‖A‖² minus the R largest
 * eigenvalues of T = ZᵀZ (d×d, upper triangle of `t`, ld tl), values only
 * (c is d×d scratch, w d). *lost is set when those eigenvalues keep more
 * than ‖A‖²: the basis lost its orthogonality and *out means nothing. */
static int SFX(ritz_error)(decomp_ctx *ctx, const char *what, const T *t,
                           int64_t tl, int64_t d, int64_t R, double energy,
                           T *c, T *w, double *out, bool *lost) {
  SFX(sym_from_upper)(t, (size_t)tl, (size_t)d, c);
  int rc = SFX(core_eig_values)(ctx, what, d, c, w);
  if (rc != DECOMP_OK)
    return rc;
  double kept = 0;
  for (int64_t x = d - R; x < d; x++)
    kept += w[x] > 0 ? (double)w[x] : 0.0;
  *lost = kept > energy * (1 + RITZ_SLACK);
  *out = energy - kept > 0 ? energy - kept : 0;
  return DECOMP_OK;
}

/* The smallest Euclidean norm among the b columns of y (p×b). */
static double SFX(min_column_norm)(int64_t p, int64_t b, const T *y) {
  double least = INFINITY;
  for (int64_t j = 0; j < b; j++) {
    double s = 0;
    for (int64_t i = 0; i < p; i++) {
      double v = (double)y[i + p * j];
      s += v * v;
    }
    least = s < least ? s : least;
  }
  return sqrt(least);
}

/* Replace each column of y (p×b, columns of length ≤ 1 after an
 * orthonormalization and a projection) that kept less than DEFLATE of its
 * length by uniform random numbers (drawn from `seed`); returns how many. */
static int64_t SFX(deflate)(int64_t p, int64_t b, T *y, uint64_t seed) {
  int64_t fresh = 0;
  for (int64_t j = 0; j < b; j++) {
    T *col = y + p * j;
    double s = 0;
    for (int64_t i = 0; i < p; i++)
      s += (double)col[i] * (double)col[i];
    if (sqrt(s) < DEFLATE) {
      SFX(fill_random)(col, (size_t)p, seed * 0x100000001b3ull + (uint64_t)j);
      fresh++;
    }
  }
  return fresh;
}

/* y (p×b) ← y − Q·(Qᵀ·y) for the d orthonormal columns of Q (p×d); h is
 * d×b scratch. */
static void SFX(project_out)(int64_t p, int64_t d, const T *Q, T *y,
                             int64_t b, T *h) {
  if (d == 0)
    return;
  GEMM(true, false, d, b, p, 1, Q, p, y, p, 0, h, d);
  GEMM(false, false, p, b, d, -1, Q, p, h, d, 1, y, p);
}

int SFX(core_svd_rank)(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                      const T *a, int64_t R, uint64_t seed, double energy,
                      const double *sigma, T *s, T *u, T *v,
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
#if GRAM_RANK
    int rc = core_svd_spectrum_uses_gram(m, n)
                 ? SFX(rank_gram)(ctx, what, m, n, a, R, s, u, v, all, rep)
                 : SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
#else
    int rc = SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
#endif
    rep->optimal = opt;
    return rc;
  }

  /* op(A) is A when m ≤ n, else Aᵀ: rows p = k (the side the basis Q
   * lives on, the smaller), columns q. Block j of the Krylov basis is
   * Q_j (p×b); Z_j = op(A)ᵀ·Q_j (q×b) is kept, so that B = Qᵀ·op(A) = Zᵀ
   * and T = ZᵀZ = B·Bᵀ grows by one block column per step. */
  bool tr = m > n;
  int64_t p = k, q = tr ? m : n, b = block_width(R), dmax = basis_max(k, b);
  size_t pd = (size_t)p * (size_t)dmax, qd = (size_t)q * (size_t)dmax;
  size_t dd = (size_t)dmax * (size_t)dmax, r = (size_t)R;
  /* Sized for the largest basis; pages are touched only as it grows. */
  T *Q = malloc(pd * sizeof *Q), *Z = malloc(qd * sizeof *Z);
  T *Tm = malloc(dd * sizeof *Tm), *C = malloc(dd * sizeof *C);
  T *W = malloc((size_t)dmax * r * sizeof *W);
  T *lam = malloc((size_t)dmax * sizeof *lam);
  T *H = malloc((size_t)dmax * (size_t)b * sizeof *H);
  int rc = DECOMP_OK;
  if (!Q || !Z || !Tm || !C || !W || !lam || !H) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "%s: out of memory for a rank-%lld Krylov basis", what,
                   (long long)dmax);
    goto out;
  }
#define OP(Zin, Yout) /* Yout = op(A)·Zin, b columns */                        \
  (tr ? GEMM(true, false, n, b, m, 1, a, m, Zin, m, 0, Yout, n)                \
      : GEMM(false, false, m, b, n, 1, a, m, Zin, n, 0, Yout, m))
#define OPT(Qin, Zout) /* Zout = op(A)ᵀ·Qin, b columns */                      \
  (tr ? GEMM(false, false, m, b, n, 1, a, m, Qin, n, 0, Zout, m)               \
      : GEMM(true, false, n, b, m, 1, a, m, Qin, m, 0, Zout, n))

  /* Q_0 = orth(op(A)·Ω), Ω uniform (drawn into Z_0's place). */
  SFX(fill_random)(Z, (size_t)q * (size_t)b, seed);
  OP(Z, Q);
  if ((rc = SFX(core_orth)(ctx, what, p, b, Q)) != DECOMP_OK)
    goto out;
  int64_t d = 0, d_est = R + R * 7 / 10 + b; /* a decaying spectrum's */
  if (d_est > dmax)
    d_est = dmax;
  int checks = 0;
  int64_t deflated = 0; /* columns restarted at random */
  bool lost = false;    /* the basis lost its orthogonality */
  bool settled = false; /* the accuracy control was met */
  bool near = false;    /* … or nearly, as the basis stopped growing */
  double prev = -1, last_gain = -1, e = -1;
  /* Block Lanczos with full reorthogonalization: Q_{j+1} = orth(op(A)·Z_j)
   * against every earlier block. From d ≥ R + 2b on, each step's Ritz
   * values give the rank-R error the basis achieves; stop when it meets a
   * known optimum or stops improving. */
  for (;;) {
    T *Qj = Q + (size_t)p * (size_t)d, *Zj = Z + (size_t)q * (size_t)d;
    OPT(Qj, Zj);
    /* T[0 : d+b, d : d+b] = [Z_0 … Z_j]ᵀ·Z_j. */
    GEMM(true, false, d + b, b, q, 1, Z, q, Zj, q, 0, Tm + (size_t)dmax * (size_t)d,
         dmax);
    d += b;
    if (d >= R + 2 * b) {
      if ((rc = SFX(ritz_error)(ctx, what, Tm, dmax, d, R, energy, C, lam,
                                &e, &lost)) != DECOMP_OK)
        goto out;
      if (lost)
        break;
      checks++;
      core_log(ctx, DECOMP_LOG_DEBUG, "svd",
               "matrix=\"%s\" basis=%lld error=%.6g optimal=%.6g", what,
               (long long)d, sqrt(e), opt >= 0 ? sqrt(opt) : -1.0);
      if (opt >= 0 && e <= TARGET * TARGET * opt) {
        settled = true;
        break;
      }
      if (checks > 1 && converged(checks, prev, e, last_gain, REMAINING)) {
        settled = true;
        break;
      }
      near = checks > 1 &&
             converged(checks, prev, e, last_gain, REMAINING_AT_MAX);
      if (checks > 1)
        last_gain = prev - e;
      prev = e;
    }
    if (d + b > dmax)
      break;
    double done = 0.9 * (double)d / (double)d_est;
    if ((rc = core_tick(ctx, done < 0.9 ? done : 0.9)) != DECOMP_OK)
      goto out;
    T *Qn = Q + (size_t)p * (size_t)d;
    OP(Zj, Qn);
    /* op(A)·op(A)ᵀ·Q_j lies, in exact arithmetic, in the span of Q_{j-1},
     * Q_j and the new block: project out those two blocks and
     * orthonormalize, then project out the whole basis (what rounding left
     * along the older blocks). If that took away much of a column (the
     * block was nearly in the basis: rounding, or a matrix of low rank),
     * orthonormalizing would magnify what is left along the basis: then
     * once more, orthonormalize and project out the whole basis. Last,
     * orthonormalize. */
    int64_t near = d > 2 * b ? d - 2 * b : 0;
    SFX(project_out)(p, d - near, Q + (size_t)p * (size_t)near, Qn, b, H);
    if ((rc = SFX(core_orth)(ctx, what, p, b, Qn)) != DECOMP_OK)
      goto out;
    SFX(project_out)(p, d, Q, Qn, b, H);
    if (SFX(min_column_norm)(p, b, Qn) < 0.7) {
      /* A column left with almost nothing lies in the basis already: the
       * Krylov space is exhausted along it (the matrix's rank is reached,
       * or an invariant subspace is found), and what is left is rounding
       * of the projection itself, which lies in the basis too; no number
       * of passes makes it orthogonal. A fresh random direction takes its
       * place (as ARPACK and PROPACK restart), so the basis stays
       * orthonormal; directions outside the matrix's range add nothing to
       * its Ritz values. */
      int64_t fresh = SFX(deflate)(p, b, Qn, seed + (uint64_t)d);
      if (fresh)
        deflated += fresh;
      for (int pass = 0; pass < (fresh ? 2 : 1); pass++) {
        if ((rc = SFX(core_orth)(ctx, what, p, b, Qn)) != DECOMP_OK)
          goto out;
        SFX(project_out)(p, d, Q, Qn, b, H);
      }
    }
    if ((rc = SFX(core_orth)(ctx, what, p, b, Qn)) != DECOMP_OK)
      goto out;
  }
  rep->iterations = (int)(d / b - 1);
  rep->width = d;
  rep->block = b;
  rep->deflated = deflated;
  /* Rayleigh–Ritz: B = Qᵀ·op(A) = Zᵀ; B·Bᵀ = T = W·Λ·Wᵀ. */
  double kept = 0;
  if (!lost) {
    SFX(sym_from_upper)(Tm, (size_t)dmax, (size_t)d, C);
    if ((rc = SFX(core_eig_top)(ctx, what, d, C, R, lam, W)) != DECOMP_OK)
      goto out;
    for (size_t x = 0; x < r; x++)
      kept += lam[x] > 0 ? (double)lam[x] : 0.0;
    lost = kept > energy * (1 + RITZ_SLACK);
  }
  rep->discarded = energy - kept > 0 ? energy - kept : 0;
  /* A basis that lost its orthogonality gives factors and an error figure
   * that mean nothing; a tiny λ_R would make Z·W·Λ^-½ lose the precision
   * of the Gram step; a known optimum still missed means the basis did not
   * converge: in each case the exact path decides. */
  const char *why = NULL;
  if (lost)
    why = "the Krylov basis lost its orthogonality";
  else if (!(lam[0] > (T)1e-6 * lam[r - 1]))
    why = "the rank-R Ritz value is tiny";
  else if (opt >= 0 && rep->discarded > TOLERANCE * TOLERANCE * opt)
    why = "the known optimum was missed";
  else if (!settled && !near)
    why = "the basis reached its largest width before converging";
  if (why) {
    rep->fallback = why;
    core_log(ctx, lost ? DECOMP_LOG_WARN : DECOMP_LOG_DEBUG, "svd",
             "matrix=\"%s\" fallback=exact basis=%lld deflated=%lld "
             "reason=\"%s\"",
             what, (long long)d, (long long)deflated, why);
    rc = SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    goto out;
  }
  /* Descending: column x of the result is eigenpair r-1-x. Scale W's
   * columns by 1/σ for the Z side after the Q side is formed. */
  T *Wd = C; /* reuse: d×r, reordered */
  size_t dl = (size_t)d;
  for (size_t x = 0; x < r; x++) {
    size_t from = r - 1 - x;
    s[x] = SQRT(lam[from] > 0 ? lam[from] : 0);
    memcpy(Wd + x * dl, W + from * dl, dl * sizeof *Wd);
  }
  T *left = tr ? v : u, *right = tr ? u : v; /* op's left/right */
  /* op's left vectors: Q·W (p×R); right vectors: Z·W·Σ⁻¹ (q×R). */
  GEMM(false, false, p, R, d, 1, Q, p, Wd, d, 0, left, p);
  for (size_t x = 0; x < r; x++) {
    T inv = s[x] > 0 ? (T)1 / s[x] : (T)0;
    for (size_t y = 0; y < dl; y++)
      Wd[x * dl + y] *= inv;
  }
  GEMM(false, false, q, R, d, 1, Z, q, Wd, d, 0, right, q);
  rep->randomized = true;
#undef OP
#undef OPT
out:
  free(Q);
  free(Z);
  free(Tm);
  free(C);
  free(W);
  free(lam);
  free(H);
  return rc;
}
