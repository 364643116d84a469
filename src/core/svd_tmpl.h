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

/* The rank-R error² of the sketch Z = op(A)ᵀ·Q (q×l): ‖A‖² minus the R
 * largest eigenvalues of ZᵀZ (values only; c is l×l scratch, w l). */
static int SFX(rank_error)(decomp_ctx *ctx, const char *what, const T *Z,
                      int64_t q, int64_t l, int64_t R, double energy, T *c,
                      T *w, double *out) {
  SYRK(true, l, q, Z, q, 0, c, l);
  int rc = SFX(core_eig_values)(ctx, what, l, c, w);
  if (rc != DECOMP_OK)
    return rc;
  double kept = 0;
  for (int64_t x = l - R; x < l; x++)
    kept += w[x] > 0 ? (double)w[x] : 0.0;
  *out = energy - kept > 0 ? energy - kept : 0;
  return DECOMP_OK;
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
    int rc = SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    return rc;
  }

  /* op(A) is A when m ≤ n, else Aᵀ: rows p = k (the side we orthonormalize,
   * the smaller), columns q. Y = op(A)·Z is p×ℓ, Z = op(A)ᵀ·Q is q×ℓ. */
  bool tr = m > n;
  int64_t p = k, q = tr ? m : n, l = sketch_width(k, R);
  size_t pl = (size_t)p * (size_t)l, ql = (size_t)q * (size_t)l;
  size_t ll = (size_t)l * (size_t)l, r = (size_t)R;
  T *Y = malloc(pl * sizeof *Y), *Z = malloc(ql * sizeof *Z);
  T *C = malloc(ll * sizeof *C), *W = malloc((size_t)l * r * sizeof *W);
  T *lam = malloc((size_t)l * sizeof *lam);
  int rc = DECOMP_OK;
  if (!Y || !Z || !C || !W || !lam) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "%s: out of memory for a rank-%lld sketch", what,
                   (long long)l);
    goto out;
  }
#define OP(Zin, Yout) /* Yout = op(A)·Zin */                                   \
  (tr ? GEMM(true, false, n, l, m, 1, a, m, Zin, m, 0, Yout, n)          \
      : GEMM(false, false, m, l, n, 1, a, m, Zin, n, 0, Yout, m))
#define OPT(Qin, Zout) /* Zout = op(A)ᵀ·Qin */                                 \
  (tr ? GEMM(false, false, m, l, n, 1, a, m, Qin, n, 0, Zout, m)         \
      : GEMM(true, false, n, l, m, 1, a, m, Qin, m, 0, Zout, n))

  SFX(fill_random)(Z, ql, seed);
  OP(Z, Y);
  if ((rc = SFX(core_orth)(ctx, what, p, l, Y)) != DECOMP_OK)
    goto out;
  OPT(Y, Z);
  double prev;
  if ((rc = SFX(rank_error)(ctx, what, Z, q, l, R, energy, C, lam, &prev)) !=
      DECOMP_OK)
    goto out;
  int it = 0;
  double last_gain = -1;
  /* Power iterations Q ← orth(op(A)·op(A)ᵀ·Q), Z = op(A)ᵀ·Q, until the
   * rank-R error stops improving (or meets a known optimum). */
  while (it < MAX_ITERATIONS &&
         !(opt >= 0 && prev <= TARGET * TARGET * opt)) {
    OP(Z, Y);
    if ((rc = SFX(core_orth)(ctx, what, p, l, Y)) != DECOMP_OK)
      goto out;
    OPT(Y, Z);
    it++;
    double e;
    if ((rc = SFX(rank_error)(ctx, what, Z, q, l, R, energy, C, lam, &e)) !=
        DECOMP_OK)
      goto out;
    if (it >= MIN_ITERATIONS && converged(it, prev, e, last_gain))
      break;
    last_gain = prev - e;
    prev = e;
  }
  /* Rayleigh–Ritz: B = Qᵀ·op(A) = Zᵀ; B·Bᵀ = ZᵀZ = W·Λ·Wᵀ. */
  SYRK(true, l, q, Z, q, 0, C, l);
  if ((rc = SFX(core_eig_top)(ctx, what, l, C, R, lam, W)) != DECOMP_OK)
    goto out;
  double kept = 0;
  for (size_t x = 0; x < r; x++)
    kept += lam[x] > 0 ? (double)lam[x] : 0.0;
  rep->discarded = energy - kept > 0 ? energy - kept : 0;
  rep->iterations = it;
  /* A tiny λ_R would make Z·W·Λ^-½ lose the float32 precision of the Gram
   * step; a known optimum still missed means the sketch did not converge:
   * either way the exact path decides. */
  T lmax = lam[r - 1], lmin = lam[0];
  if (!(lmin > (T)1e-6 * lmax) ||
      (opt >= 0 && rep->discarded > TOLERANCE * TOLERANCE * opt)) {
    core_log(ctx, DECOMP_LOG_DEBUG, "svd",
             "matrix=\"%s\" fallback=exact iterations=%d", what, it);
    rc = SFX(rank_exact)(ctx, what, m, n, a, R, s, u, v, all, rep);
    rep->optimal = opt;
    goto out;
  }
  /* Descending: column x of the result is eigenpair r-1-x. Scale W's
   * columns by 1/σ for the Z side after the Q side is formed. */
  T *Wd = C; /* reuse: l×r, reordered */
  for (size_t x = 0; x < r; x++) {
    size_t from = r - 1 - x;
    s[x] = SQRT(lam[from] > 0 ? lam[from] : 0);
    memcpy(Wd + x * (size_t)l, W + from * (size_t)l, (size_t)l * sizeof *Wd);
  }
  T *left = tr ? v : u, *right = tr ? u : v; /* op's left/right */
  /* op's left vectors: Q·W (p×R); right vectors: Z·W·Σ⁻¹ (q×R). */
  GEMM(false, false, p, R, l, 1, Y, p, Wd, l, 0, left, p);
  for (size_t x = 0; x < r; x++) {
    T inv = s[x] > 0 ? (T)1 / s[x] : (T)0;
    for (size_t y = 0; y < (size_t)l; y++)
      Wd[x * (size_t)l + y] *= inv;
  }
  GEMM(false, false, q, R, l, 1, Z, q, Wd, l, 0, right, q);
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
