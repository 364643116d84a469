/* test_svd.c — the fast SVD layer (svd.c) and layers in parallel: the
 * randomized truncated SVD's error against the optimum on decaying and flat
 * spectra, the Gram-matrix spectrum against gesdd, determinism across runs
 * at each BLAS thread count, and decomp_decompose giving identical bytes with
 * its layers on a pool and one by one. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svd.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

/* An orthonormal m×k basis (column-major) from a random matrix. */
static float *orthonormal(int64_t m, int64_t k) {
  float *q = malloc((size_t)(m * k) * sizeof *q);
  for (int64_t i = 0; i < m * k; i++)
    q[i] = (float)urand();
  ck_assert_int_eq(core_qr_f32(NULL, "q", m, k, q), DECOMP_OK);
  return q;
}

/* A = Q1·diag(s)·Q2ᵀ, m×n column-major, k = min(m, n). */
static float *with_spectrum(int64_t m, int64_t n, const double *s) {
  int64_t k = m < n ? m : n;
  float *q1 = orthonormal(m, k), *q2 = orthonormal(n, k);
  for (int64_t j = 0; j < k; j++)
    for (int64_t i = 0; i < m; i++)
      q1[i + m * j] *= (float)s[j];
  float *a = malloc((size_t)(m * n) * sizeof *a);
  core_sgemm(false, true, m, n, k, 1, q1, m, q2, n, 0, a, m);
  free(q1);
  free(q2);
  return a;
}

/* ‖A − U·diag(s)·Vᵀ‖² in double. */
static double residual2(int64_t m, int64_t n, const float *a, int64_t R,
                        const float *s, const float *u, const float *v) {
  double e = 0;
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      double x = a[i + m * j];
      for (int64_t q = 0; q < R; q++)
        x -= (double)u[i + m * q] * s[q] * v[j + n * q];
      e += x * x;
    }
  return e;
}

static double sumsq(const double *s, int64_t from, int64_t to) {
  double e = 0;
  for (int64_t i = to; i-- > from;)
    e += s[i] * s[i];
  return e;
}

/* Truncated SVD of an m×n matrix with spectrum s at rank R: the achieved
 * error (measured) against the optimum, and the reported one. */
static core_svd_report check_rank_of(int64_t m, int64_t n, float *a,
                                     const double *s, int64_t R,
                                     bool give_sigma) {
  int64_t k = m < n ? m : n;
  float *sv = malloc((size_t)R * sizeof *sv);
  float *u = malloc((size_t)(m * R) * sizeof *u);
  float *v = malloc((size_t)(n * R) * sizeof *v);
  double energy = 0;
  for (int64_t i = 0; i < m * n; i++)
    energy += (double)a[i] * a[i];
  core_svd_report rep;
  ck_assert(core_svd_rank_randomized(m, n, R));
  ck_assert_int_eq(core_svd_rank_f32(NULL, "a", m, n, a, R, 42, energy,
                                     give_sigma ? s : NULL, sv, u, v, NULL,
                                     &rep),
                   DECOMP_OK);
  ck_assert(rep.randomized);
  double opt = sumsq(s, R, k), got = residual2(m, n, a, R, sv, u, v);
  ck_assert_msg(sqrt(got) <= 1.01 * sqrt(opt),
                "%lldx%lld rank %lld: error %g, optimal %g (ratio %.5f, "
                "%d iterations)",
                (long long)m, (long long)n, (long long)R, sqrt(got),
                sqrt(opt), sqrt(got / opt), rep.iterations);
  /* The reported (achieved) error is the measured one. */
  ck_assert_msg(fabs(sqrt(rep.discarded) - sqrt(got)) <= 2e-3 * sqrt(got),
                "reported %g measured %g", sqrt(rep.discarded), sqrt(got));
  for (int64_t q = 1; q < R; q++)
    ck_assert(sv[q] <= sv[q - 1]);
  /* The left factors are orthonormal: a Krylov basis that lost its
   * orthogonality would show here (and count directions twice). */
  double worst = 0;
  for (int64_t x = 0; x < R; x++)
    for (int64_t y = 0; y <= x; y++) {
      double dot = 0;
      for (int64_t i = 0; i < m; i++)
        dot += (double)u[i + m * x] * u[i + m * y];
      double off = fabs(dot - (x == y ? 1.0 : 0.0));
      worst = off > worst ? off : worst;
    }
  ck_assert_msg(worst < 1e-3, "|UᵀU − I| reaches %g", worst);
  free(a);
  free(sv);
  free(u);
  free(v);
  return rep;
}

static void check_rank(int64_t m, int64_t n, const double *s, int64_t R,
                       bool give_sigma) {
  check_rank_of(m, n, with_spectrum(m, n, s), s, R, give_sigma);
}

START_TEST(truncated_error_is_within_one_percent_on_decaying_spectra) {
  int64_t k = 768;
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++) /* a power law over a noise floor */
    s[i] = 1.0 / (1.0 + (double)i / (0.02 * (double)k)) + 0.03;
  check_rank(768, 896, s, 192, false);  /* 4x for a square 3x3 conv */
  check_rank(896, 768, s, 96, false);   /* tall: the transposed path */
  check_rank(768, 896, s, 192, true);   /* with the spectrum known */
  for (int64_t i = 0; i < k; i++) /* exponential decay */
    s[i] = exp(-(double)i / 60.0);
  check_rank(768, 768, s, 128, false);
  free(s);
}
END_TEST

START_TEST(truncated_error_is_within_one_percent_on_flat_spectra) {
  int64_t k = 640;
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++) /* random-init layers: nearly flat */
    s[i] = 1.0 - 0.5 * (double)i / (double)k;
  check_rank(640, 700, s, 160, false);
  for (int64_t i = 0; i < k; i++)
    s[i] = 1.0;
  check_rank(700, 640, s, 100, false);
  free(s);
}
END_TEST

START_TEST(truncated_error_is_within_one_percent_when_the_basis_outgrows_the_rank) {
  /* Rank 150: the Krylov space is exhausted before the basis stops
   * growing, so the later blocks are rounding noise, orthogonalized. */
  int64_t k = 768;
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++)
    s[i] = i < 150 ? 1.0 / (1.0 + (double)i / 10.0) : 0.0;
  check_rank(768, 800, s, 120, false);
  check_rank(768, 800, s, 120, true);
  /* A sharp gap right after R, then a plateau. */
  for (int64_t i = 0; i < k; i++)
    s[i] = i < 96 ? 2.0 - (double)i / 96.0 : 0.1;
  check_rank(768, 768, s, 96, false);
  free(s);
}
END_TEST

START_TEST(truncated_error_is_right_when_zero_taps_exhaust_the_krylov_space) {
  /* A 256→256 3x3 conv whose only non-zero tap is the centre (a 1x1 conv
   * stored as 3x3, common in real checkpoints): its 768x768 spatial
   * matrix is a dense 256x256 block spread over every third row and
   * column, rank 256. At rank 192 the basis outgrows that rank; the next
   * block is then rounding inside the basis, and orthonormalizing it
   * wrecked the basis (error 0.76 reported as 0). Exact zeros, unlike a
   * dense matrix of low rank, leave nothing outside the basis to recover. */
  int64_t k = 768, c = 256;
  double *s = calloc((size_t)k, sizeof *s);
  for (int64_t i = 0; i < c; i++) /* a random block's spread of values */
    s[i] = 2.0 - 1.6 * (double)i / (double)c;
  float *block = with_spectrum(c, c, s);
  float *a = calloc((size_t)(k * k), sizeof *a);
  for (int64_t j = 0; j < c; j++)
    for (int64_t i = 0; i < c; i++)
      a[(3 * i + 1) + k * (3 * j + 1)] = block[i + c * j];
  free(block);
  core_svd_report rep = check_rank_of(k, k, a, s, 192, false);
  ck_assert(rep.randomized);
  ck_assert_msg(rep.deflated > 0, "the basis never met the matrix's rank");
  free(s);
}
END_TEST

/* A rank above the Krylov basis' room on a large float32 matrix: the
 * float64 Gram eigenpairs, at the optimum (within 0.01%), the reported
 * error the measured one, both sides' factors from one eigensolve. */
static core_svd_report check_gram_rank(int64_t m, int64_t n, const double *s,
                                       int64_t R) {
  int64_t k = m < n ? m : n;
  float *a = with_spectrum(m, n, s);
  float *sv = malloc((size_t)R * sizeof *sv);
  float *u = malloc((size_t)(m * R) * sizeof *u);
  float *v = malloc((size_t)(n * R) * sizeof *v);
  double energy = 0;
  for (int64_t i = 0; i < m * n; i++)
    energy += (double)a[i] * a[i];
  core_svd_report rep;
  ck_assert(!core_svd_rank_randomized(m, n, R));
  ck_assert(core_svd_spectrum_uses_gram(m, n));
  ck_assert_int_eq(core_svd_rank_f32(NULL, "a", m, n, a, R, 7, energy, NULL,
                                     sv, u, v, NULL, &rep),
                   DECOMP_OK);
  double opt = sumsq(s, R, k), got = residual2(m, n, a, R, sv, u, v);
  /* (gesdd in float32, where it takes over, is held to nothing better
   * than its own rounding: about 1e-7·σ_1 per value.) */
  ck_assert_msg(sqrt(got) <= (rep.gram ? 1.0001 : 1.0) * sqrt(opt) +
                                 (rep.gram ? 0 : 1e-6 * sqrt(energy)),
                "%lldx%lld rank %lld: error %g, optimal %g", (long long)m,
                (long long)n, (long long)R, sqrt(got), sqrt(opt));
  if (rep.gram)
    ck_assert_msg(fabs(sqrt(rep.discarded) - sqrt(got)) <= 1e-3 * sqrt(got),
                  "reported %g measured %g", sqrt(rep.discarded), sqrt(got));
  for (int64_t q = 0; q < R; q++) {
    ck_assert_double_eq_tol(sv[q], s[q], 1e-4 * s[0]);
    if (q)
      ck_assert(sv[q] <= sv[q - 1]);
  }
  free(a);
  free(sv);
  free(u);
  free(v);
  return rep;
}

START_TEST(high_ranks_of_large_matrices_take_the_float64_gram_eigenpairs) {
  int64_t k = 600;
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++) /* a power law over a noise floor */
    s[i] = 1.0 / (1.0 + (double)i / (0.02 * (double)k)) + 0.03;
  ck_assert(check_gram_rank(600, 900, s, 330).gram); /* wide: A·Aᵀ */
  ck_assert(check_gram_rank(900, 600, s, 300).gram); /* tall: Aᵀ·A */
  /* σ_R below 1e-4·σ_1: the squared spectrum would lose it; gesdd. */
  for (int64_t i = 0; i < k; i++)
    s[i] = exp(-(double)i / 25.0);
  core_svd_report rep = check_gram_rank(600, 700, s, 330);
  ck_assert(!rep.gram && !rep.randomized);
  ck_assert_str_eq(rep.fallback, "the rank-R Gram eigenvalue is tiny");
  free(s);
}
END_TEST

START_TEST(float64_truncated_svd_and_spectrum_take_the_same_paths) {
  int64_t m = 700, n = 640, k = 640, R = 120;
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++)
    s[i] = 1.0 / (1.0 + (double)i / 15.0) + 0.02;
  float *af = with_spectrum(m, n, s);
  double *a = malloc((size_t)(m * n) * sizeof *a);
  double energy = 0;
  for (int64_t i = 0; i < m * n; i++) {
    a[i] = af[i];
    energy += a[i] * a[i];
  }
  double *sv = malloc((size_t)R * sizeof *sv), *g = malloc((size_t)k * 8);
  double *u = malloc((size_t)(m * R) * sizeof *u);
  double *v = malloc((size_t)(n * R) * sizeof *v);
  core_svd_report rep;
  ck_assert_int_eq(core_svd_rank_f64(NULL, "a", m, n, a, R, 3, energy, NULL,
                                     sv, u, v, NULL, &rep),
                   DECOMP_OK);
  ck_assert(rep.randomized);
  double got = 0;
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      double x = a[i + m * j];
      for (int64_t q = 0; q < R; q++)
        x -= u[i + m * q] * sv[q] * v[j + n * q];
      got += x * x;
    }
  ck_assert_int_eq(core_svd_spectrum_f64(NULL, "a", m, n, a, g), DECOMP_OK);
  double opt = sumsq(g, R, k);
  ck_assert_msg(sqrt(got) <= 1.01 * sqrt(opt), "ratio %.5f",
                sqrt(got / opt));
  ck_assert_double_eq_tol(sqrt(rep.discarded), sqrt(got), 1e-6 * sqrt(got));
  for (int64_t i = 0; i < k; i++) /* the float32 input's own spectrum */
    ck_assert_double_eq_tol(g[i], s[i], 1e-5);
  free(s);
  free(af);
  free(a);
  free(sv);
  free(g);
  free(u);
  free(v);
}
END_TEST

START_TEST(gram_spectrum_matches_gesdd) {
  int64_t m = 700, n = 600, k = 600;
  ck_assert(core_svd_spectrum_uses_gram(m, n));
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++)
    s[i] = pow(1.0 + (double)i, -0.7);
  float *a = with_spectrum(m, n, s);
  double *g = malloc((size_t)k * sizeof *g);
  float *e = malloc((size_t)k * sizeof *e);
  float *c = malloc((size_t)(m * n) * sizeof *c);
  memcpy(c, a, (size_t)(m * n) * sizeof *c);
  ck_assert_int_eq(core_svd_spectrum_f32(NULL, "a", m, n, a, g), DECOMP_OK);
  ck_assert_int_eq(core_svd_values_f32(NULL, "a", m, n, c, e), DECOMP_OK);
  double worst = 0;
  for (int64_t i = 0; i < k; i++) {
    /* σ² is exact to about 1e-7·σ₁² in float32: σ to 1e-4 relative while
     * σ ≥ 0.02·σ₁ (all of these, σ_min ≈ 0.011). */
    double rel = fabs(g[i] - e[i]) / e[i];
    worst = rel > worst ? rel : worst;
    ck_assert_msg(rel <= (e[i] >= 0.02 * e[0] ? 1e-4 : 1e-3),
                  "sigma %lld: gram %.9g gesdd %.9g", (long long)i, g[i],
                  (double)e[i]);
    if (i)
      ck_assert(g[i] <= g[i - 1]);
  }
  free(s);
  free(a);
  free(g);
  free(e);
  free(c);
}
END_TEST

/* Phase 1 of a large layer builds its Gram matrix from slabs of the kernel
 * (never the whole matrix): same spectrum, both orientations. */
START_TEST(layer_spectrum_from_kernel_slabs_matches_the_matrix) {
  static const int64_t io[][2] = {{300, 260}, {260, 300}};
  for (int c = 0; c < 2; c++) {
    int64_t I = io[c][0], O = io[c][1], kh = 3, kw = 3;
    int64_t m = I * kh, n = O * kw, k = m < n ? m : n;
    double *s = malloc((size_t)k * sizeof *s);
    for (int64_t i = 0; i < k; i++)
      s[i] = 1.0 / (1.0 + (double)i / 30.0) + 0.01;
    float *a = with_spectrum(m, n, s);
    float *W = malloc((size_t)(m * n) * sizeof *W);
    for (int64_t o = 0; o < O; o++)
      for (int64_t i = 0; i < I; i++)
        for (int64_t h = 0; h < kh; h++)
          for (int64_t w = 0; w < kw; w++)
            W[((o * I + i) * kh + h) * kw + w] =
                a[(i * kh + h) + m * (o * kw + w)];
    decomp_layer l = {.name = "c", .type = "Conv2d", .in_channels = I,
                      .out_channels = O, .kernel_size = {kh, kw},
                      .stride = {1, 1}, .dilation = {1, 1}, .groups = 1};
    decomp_tensor t = {.name = "c.weight", .dtype = DECOMP_DTYPE_F32,
                       .ndim = 4, .shape = {O, I, kh, kw},
                       .stride = {I * kh * kw, kh * kw, kw, 1}, .data = W};
    core_factors f;
    ck_assert(core_svd_spectrum_uses_gram(m, n));
    ck_assert_int_eq(core_factorize(NULL, &l, &t, CORE_ORDER_VERTICAL_FIRST,
                                    0, 32, true, &f),
                     DECOMP_OK);
    for (int64_t i = 0; i < k; i++)
      ck_assert_msg(fabs(f.sigma[i] - s[i]) <= 1e-4 * s[i],
                    "case %d sigma %lld: %.9g want %.9g", c, (long long)i,
                    f.sigma[i], s[i]);
    core_factors_clear(&f);
    free(s);
    free(a);
    free(W);
  }
}
END_TEST

/* The factors of one truncated SVD as bytes. */
static void run_bytes(const float *a, int64_t m, int64_t n, int64_t R,
                      double energy, float *out /* R + (m+n)·R */) {
  core_svd_report rep;
  ck_assert_int_eq(core_svd_rank_f32(NULL, "a", m, n, a, R, 7, energy, NULL,
                                     out, out + R, out + R + m * R, NULL,
                                     &rep),
                   DECOMP_OK);
  ck_assert(rep.randomized);
}

START_TEST(truncated_svd_is_deterministic_at_each_blas_thread_count) {
  int64_t m = 640, n = 700, R = 120, k = 640;
  double *s = malloc((size_t)k * sizeof *s);
  for (int64_t i = 0; i < k; i++)
    s[i] = 1.0 / (1.0 + (double)i / 20.0) + 0.02;
  float *a = with_spectrum(m, n, s);
  double energy = sumsq(s, 0, k);
  size_t len = (size_t)(R + (m + n) * R);
  float *x = malloc(len * sizeof *x), *y = malloc(len * sizeof *y);
  /* Equal bytes for equal input at a given BLAS thread count. (Across
   * thread counts OpenBLAS's threaded LAPACK kernels may round
   * differently, which is why decomp_options.threads fixes each layer's
   * BLAS thread count.) */
  int saved = core_blas_threads();
  for (int th = 1; th <= 2; th++) {
    core_blas_set_threads(th);
    run_bytes(a, m, n, R, energy, x);
    run_bytes(a, m, n, R, energy, y);
    ck_assert_msg(memcmp(x, y, len * sizeof *x) == 0,
                  "%d BLAS threads: two runs differ", th);
  }
  core_blas_set_threads(saved);
  free(s);
  free(a);
  free(x);
  free(y);
}
END_TEST

/* --- decomp_decompose with layers in parallel -------------------------- */

typedef struct model {
  decomp_ctx *ctx;
  decomp_weights *w;
  decomp_spec *spec;
  float *bufs[8];
  int nbuf;
} model;

static void add_conv(model *md, const char *name, int64_t c, int64_t kk) {
  decomp_layer l = {.name = name, .type = "Conv2d", .in_channels = c,
                    .out_channels = c, .kernel_size = {kk, kk},
                    .stride = {1, 1}, .padding = {kk / 2, kk / 2},
                    .dilation = {1, 1}, .groups = 1};
  ck_assert_int_eq(decomp_spec_add(md->ctx, md->spec, &l), DECOMP_OK);
  size_t n = (size_t)(c * c * kk * kk);
  float *p = malloc(n * sizeof *p);
  /* A decaying spectrum along the input channels, like trained layers. */
  for (size_t i = 0; i < n; i++)
    p[i] = (float)(urand() / (1.0 + (double)((i / (size_t)(kk * kk)) %
                                             (size_t)c) / 8.0));
  md->bufs[md->nbuf++] = p;
  char wname[64];
  snprintf(wname, sizeof wname, "%s.weight", name);
  decomp_tensor t = {.name = wname, .dtype = DECOMP_DTYPE_F32, .ndim = 4,
                     .shape = {c, c, kk, kk},
                     .stride = {c * kk * kk, kk * kk, kk, 1}, .data = p};
  ck_assert_int_eq(decomp_weights_add(md->w, &t), DECOMP_OK);
}

static void model_init(model *md) {
  memset(md, 0, sizeof *md);
  md->ctx = decomp_ctx_new();
  ck_assert_int_eq(decomp_weights_new(md->ctx, &md->w), DECOMP_OK);
  ck_assert_int_eq(decomp_spec_new(md->ctx, &md->spec), DECOMP_OK);
  add_conv(md, "a", 32, 3);
  add_conv(md, "b", 64, 3);
  add_conv(md, "c", 256, 3);  /* k = 768: the randomized path, in the pool */
  add_conv(md, "d", 48, 5);
  add_conv(md, "e", 64, 3);
}

static void model_free(model *md) {
  decomp_weights_free(md->w);
  decomp_spec_free(md->spec);
  decomp_ctx_free(md->ctx);
  for (int i = 0; i < md->nbuf; i++)
    free(md->bufs[i]);
}

/* Every tensor's bytes and the info text of a run, concatenated. */
static char *run_model(model *md, const char *policy, int threads,
                       size_t *out_len) {
  decomp_policy *p;
  ck_assert_int_eq(decomp_policy_parse(md->ctx, policy, &p), DECOMP_OK);
  decomp_options o = {.threads = threads};
  decomp_result *r;
  ck_assert_int_eq(decomp_decompose(md->ctx, md->w, md->spec, p, &o, &r),
                   DECOMP_OK);
  const decomp_weights *rw = decomp_result_weights(r);
  const char *info = decomp_result_info(r);
  size_t len = strlen(info) + 1, at = 0;
  for (size_t i = 0; i < decomp_weights_count(rw); i++)
    len += (size_t)decomp_tensor_numel(decomp_weights_at(rw, i)) * 4 + 64;
  char *out = malloc(len);
  for (size_t i = 0; i < decomp_weights_count(rw); i++) {
    const decomp_tensor *t = decomp_weights_at(rw, i);
    size_t nb = (size_t)decomp_tensor_numel(t) * 4;
    at += (size_t)snprintf(out + at, 64, "%s:", t->name);
    memcpy(out + at, t->data, nb);
    at += nb;
  }
  memcpy(out + at, info, strlen(info) + 1);
  *out_len = at + strlen(info) + 1;
  decomp_result_free(r);
  decomp_policy_free(p);
  return out;
}

START_TEST(parallel_layers_give_the_bytes_of_serial_layers) {
  model md;
  model_init(&md);
  static const char *const policies[] = {
      "budget", "{\"name\": \"energy\", \"energy\": 0.9}",
      "{\"name\": \"ratio\", \"ratio\": 0.2}"};
  ck_assert(core_svd_rank_randomized(768, 768, 160)); /* layer c */
  for (size_t p = 0; p < 3; p++) {
    size_t n1, n1b, n2, n3;
    char *one = run_model(&md, policies[p], 1, &n1);
    char *again = run_model(&md, policies[p], 1, &n1b);
    char *two = run_model(&md, policies[p], 2, &n2);
    char *three = run_model(&md, policies[p], 3, &n3);
    ck_assert(n1 == n1b && memcmp(one, again, n1) == 0);
    ck_assert_msg(n1 == n2 && memcmp(one, two, n1) == 0,
                  "policy %zu: 2 threads", p);
    ck_assert_msg(n1 == n3 && memcmp(one, three, n1) == 0,
                  "policy %zu: 3 threads", p);
    free(one);
    free(again);
    free(two);
    free(three);
  }
  model_free(&md);
}
END_TEST

START_TEST(parallel_layers_report_errors_and_progress_in_spec_order) {
  model md;
  model_init(&md);
  /* A NaN in the third layer: the error names it, whatever ran first. */
  md.bufs[2][5] = NAN;
  decomp_policy *p;
  ck_assert_int_eq(decomp_policy_parse(md.ctx, "budget", &p), DECOMP_OK);
  decomp_options o = {.threads = 2};
  decomp_result *r = NULL;
  ck_assert_int_eq(decomp_decompose(md.ctx, md.w, md.spec, p, &o, &r),
                   DECOMP_ERR_NONFINITE);
  ck_assert_ptr_null(r);
  ck_assert_msg(strstr(decomp_errmsg(md.ctx), "c: weight holds NaN"),
                "%s", decomp_errmsg(md.ctx));
  decomp_policy_free(p);
  model_free(&md);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("svd");
  TCase *t = tcase_create("svd");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, truncated_error_is_within_one_percent_on_decaying_spectra);
  tcase_add_test(t, truncated_error_is_within_one_percent_on_flat_spectra);
  tcase_add_test(
      t, truncated_error_is_within_one_percent_when_the_basis_outgrows_the_rank);
  tcase_add_test(t,
                 truncated_error_is_right_when_zero_taps_exhaust_the_krylov_space);
  tcase_add_test(t, gram_spectrum_matches_gesdd);
  tcase_add_test(t, layer_spectrum_from_kernel_slabs_matches_the_matrix);
  tcase_add_test(t, float64_truncated_svd_and_spectrum_take_the_same_paths);
  tcase_add_test(t, high_ranks_of_large_matrices_take_the_float64_gram_eigenpairs);
  tcase_add_test(t, truncated_svd_is_deterministic_at_each_blas_thread_count);
  tcase_add_test(t, parallel_layers_give_the_bytes_of_serial_layers);
  tcase_add_test(t, parallel_layers_report_errors_and_progress_in_spec_order);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
