/* test_policy.c — rank policies: parsing and its errors, canonical JSON, the
 * cost model, each policy's rank on synthetic spectra, EVBMF on noise and on
 * low rank plus noise, the amct preset against the reference tool's own info
 * files, and the budget reaching its whole-model target. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

/* --- helpers ------------------------------------------------------------ */

static decomp_policy *parse_ok(const char *text) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_policy *p = NULL;
  int rc = decomp_policy_parse(ctx, text, &p);
  if (rc != DECOMP_OK)
    ck_abort_msg("parse %s: %d %s", text, rc, decomp_errmsg(ctx));
  decomp_ctx_free(ctx);
  return p;
}

static void expect_bad(const char *text, const char *needle) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_policy *p = NULL;
  int rc = decomp_policy_parse(ctx, text, &p);
  if (rc != DECOMP_ERR_BAD_POLICY || !strstr(decomp_errmsg(ctx), needle))
    ck_abort_msg("parse %s: got %d \"%s\", want bad_policy with \"%s\"", text,
                 rc, decomp_errmsg(ctx), needle);
  ck_assert_ptr_null(p);
  decomp_ctx_free(ctx);
}

static decomp_layer conv(const char *name, int64_t cin, int64_t cout,
                         int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  return (decomp_layer){.name = name, .type = "Conv2d", .in_channels = cin,
                        .out_channels = cout, .kernel_size = {kh, kw},
                        .stride = {sh, sw}, .padding = {kh / 2, kw / 2},
                        .dilation = {1, 1}, .groups = 1};
}

/* Singular values of an L×M (L ≤ M) matrix of unit Gaussian noise, as the
 * quantiles of the Marchenko–Pastur law of eigenvalues of YYᵀ/M: the
 * spectrum of a random kernel without the randomness. Written into s[L]. */
static void mp_noise(int64_t rows, int64_t cols, double scale, double *s) {
  int64_t L = rows < cols ? rows : cols, M = rows < cols ? cols : rows;
  double a = (double)L / (double)M;
  double lo = (1 - sqrt(a)) * (1 - sqrt(a)), hi = (1 + sqrt(a)) * (1 + sqrt(a));
  enum { N = 200000 };
  static double cdf[N + 1];
  double h = (hi - lo) / N;
  cdf[0] = 0;
  for (int i = 0; i < N; i++) {
    double x = lo + (i + 0.5) * h;
    cdf[i + 1] = cdf[i] + sqrt((hi - x) * (x - lo)) / (2 * M_PI * a * x) * h;
  }
  int j = 0;
  for (int64_t q = 0; q < L; q++) {
    double want = cdf[N] * ((double)q + 0.5) / (double)L;
    while (j < N && cdf[j + 1] < want)
      j++;
    double x = lo + (j + 0.5) * h;
    s[L - 1 - q] = scale * sqrt((double)M * x); /* descending */
  }
}

static double sum_sq(const double *s, int64_t n) {
  double t = 0;
  for (int64_t i = 0; i < n; i++)
    t += s[i] * s[i];
  return t;
}

/* A view of `l` in `order` with the given spectrum (one group). */
static core_layer_view view_of(const decomp_layer *l, core_order order,
                               const double *sigma) {
  core_layer_view v;
  char why[160];
  ck_assert(core_layer_view_init(l, order, &v, why, sizeof why));
  v.sigma = sigma;
  if (sigma)
    v.energy_total = sum_sq(sigma, v.max_rank * v.groups);
  return v;
}

static int64_t choose1(const char *policy, const core_layer_view *v,
                       char *reason) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_policy *p = parse_ok(policy);
  core_rank_decision d;
  int rc = core_policy_choose(ctx, p, v, 1, &d);
  if (rc)
    ck_abort_msg("choose %s: %s", policy, decomp_errmsg(ctx));
  if (reason)
    strcpy(reason, d.reason);
  decomp_policy_free(p);
  decomp_ctx_free(ctx);
  return d.rank;
}

/* --- parsing ------------------------------------------------------------ */

START_TEST(parse_errors_name_what_is_wrong) {
  expect_bad("bogus", "unknown policy \"bogus\"");
  expect_bad("{\"name\": \"svd\"}", "unknown policy \"svd\"");
  expect_bad("{\"energy\": 0.9}", "missing field name");
  expect_bad("{\"name\": \"energy\", \"energy\": 0.9, \"enrgy\": 1}",
             "unknown field enrgy");
  expect_bad("{\"name\": \"energy\", \"energy\": 0.9, \"rank\": 4}",
             "field rank does not apply to policy energy");
  expect_bad("fixed", "policy fixed needs \"rank\"");
  expect_bad("{\"name\": \"fixed\", \"rank\": 0}", "rank must be an integer >= 1");
  expect_bad("{\"name\": \"fixed\", \"rank\": 2.5}", "rank must be an integer");
  expect_bad("{\"name\": \"ratio\", \"ratio\": 0}", "ratio 0 is out of range (0, 1]");
  expect_bad("{\"name\": \"energy\", \"energy\": 1.5}", "energy 1.5 is out of range");
  expect_bad("{\"name\": \"max_error\", \"max_error\": 1}",
             "max_error 1 is out of range [0, 1)");
  expect_bad("{\"name\": \"budget\", \"macs_reduction\": 1}",
             "macs_reduction 1 is out of range (1,");
  expect_bad("{\"name\": \"budget\", \"macs_reduction\": 2,"
             " \"params_reduction\": 2}",
             "one of macs_reduction");
  expect_bad("{\"name\": \"budget\", \"macs_reduction\": \"2\"}",
             "macs_reduction must be a number");
  expect_bad("{\"name\": \"vbmf\", \"include\": \"layer*\"}",
             "include must be a list of globs");
  expect_bad("{\"name\": \"vbmf\", \"exclude\": [\"\"]}",
             "exclude[0] must be a non-empty string");
  expect_bad("{\"name\": \"vbmf\", \"overrides\": {\"fc*\": {\"rnk\": 3}}}",
             "overrides[\"fc*\"]: unknown field rnk");
  expect_bad("{\"name\": \"vbmf\", \"overrides\": {\"fc*\": {\"rank\": 3,"
             " \"skip\": true}}}",
             "must be an object with one of");
  expect_bad("{\"name\": \"vbmf\", \"overrides\": {\"fc*\": {\"energy\": 2}}}",
             "overrides[\"fc*\"].energy 2 is out of range");
  expect_bad("{\"name\": \"vbmf\", \"overrides\": [1]}", "overrides must be an object");
  expect_bad("{\"name\": \"vbmf\", \"compute\": \"float16\"}",
             "compute must be \"float32\" or \"float64\"");
  expect_bad("{\"name\": \"vbmf\", \"order\": \"diagonal\"}", "order must be");
  expect_bad("{\"name\": \"vbmf\",", "not valid JSON");
  expect_bad("{\"name\": \"vbmf\", \"name\": \"amct\"}", "duplicate");
  expect_bad("", "empty policy");
  expect_bad("   \n", "empty policy");
  expect_bad("[1]", "unknown policy");
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_policy *p = NULL;
  ck_assert_int_eq(decomp_policy_parse(ctx, NULL, &p), DECOMP_ERR_INVALID_ARGUMENT);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(equal_policies_give_equal_json) {
  const char *same[][2] = {
      {"budget", "{\"macs_reduction\": 2, \"name\": \"budget\"}"},
      {" amct\n", "\"amct\""},
      {"{\"name\": \"energy\", \"energy\": 0.95}",
       "{\"energy\": 0.95, \"name\": \"energy\", \"include\": [\"*\"],"
       " \"exclude\": [], \"overrides\": {}, \"compute\": \"auto\","
       " \"order\": \"auto\"}"},
  };
  for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
    decomp_policy *a = parse_ok(same[i][0]), *b = parse_ok(same[i][1]);
    char *ta = decomp_policy_to_json(a), *tb = decomp_policy_to_json(b);
    ck_assert_str_eq(ta, tb);
    decomp_free(ta);
    decomp_free(tb);
    decomp_policy_free(a);
    decomp_policy_free(b);
  }
  decomp_policy *p = parse_ok("budget");
  char *t = decomp_policy_to_json(p);
  ck_assert_str_eq(t, "{\"name\": \"budget\", \"macs_reduction\": 2.0,"
                      " \"include\": [\"*\"], \"exclude\": [],"
                      " \"overrides\": {}, \"compute\": \"auto\","
                      " \"order\": \"auto\", \"require_cheaper\": true,"
                      " \"types\": [\"Conv2d\"],"
                      " \"methods\": [\"spatial\", \"channel\"],"
                      " \"max_layer_error\": 0.75, \"strict\": false}");
  ck_assert_str_eq(decomp_policy_name(p), "budget");
  decomp_free(t);
  decomp_policy_free(p);

  const char *full =
      "{\"name\": \"max_error\", \"max_error\": 0.1,"
      " \"include\": [\"layer*\", \"conv1\"], \"exclude\": [\"*.downsample.*\"],"
      " \"overrides\": {\"layer4.*\": {\"rank\": 64}, \"layer1.*\":"
      " {\"skip\": true}, \"layer2.\\\"x\\\"\": {\"energy\": 0.9},"
      " \"*\": {\"skip\": false}, \"a\": {\"ratio\": 0.25},"
      " \"b\": {\"max_error\": 0.3}},"
      " \"compute\": \"float64\", \"order\": \"horizontal_first\","
      " \"require_cheaper\": false, \"types\": [\"Conv2d\", \"Linear\"],"
      " \"methods\": [\"channel\"]}";
  p = parse_ok(full);
  t = decomp_policy_to_json(p);
  ck_assert_str_eq(t, full);
  decomp_policy *q = parse_ok(t);
  char *t2 = decomp_policy_to_json(q);
  ck_assert_str_eq(t, t2);
  decomp_free(t);
  decomp_free(t2);
  decomp_policy_free(p);
  decomp_policy_free(q);
  decomp_policy_free(NULL);
}
END_TEST

START_TEST(compute_bits_and_orders) {
  decomp_policy *b = parse_ok("budget"), *a = parse_ok("amct");
  decomp_policy *f = parse_ok("{\"name\": \"vbmf\", \"compute\": \"float32\","
                              " \"order\": \"vertical_first\"}");
  ck_assert_int_eq(core_policy_compute_bits(b, DECOMP_DTYPE_F32), 32);
  ck_assert_int_eq(core_policy_compute_bits(b, DECOMP_DTYPE_BF16), 32);
  ck_assert_int_eq(core_policy_compute_bits(b, DECOMP_DTYPE_F64), 64);
  ck_assert_int_eq(core_policy_compute_bits(a, DECOMP_DTYPE_F32), 64);
  ck_assert_int_eq(core_policy_compute_bits(f, DECOMP_DTYPE_F64), 32);
  ck_assert_int_eq(core_policy_order(b), -1);
  ck_assert_int_eq(core_policy_order(f), CORE_ORDER_VERTICAL_FIRST);
  decomp_layer l = conv("b", 128, 128, 5, 3, 2, 1);
  ck_assert_int_eq(core_policy_layer_order(a, &l), CORE_ORDER_HORIZONTAL_FIRST);
  ck_assert_int_eq(core_policy_layer_order(b, &l), -1);
  ck_assert_int_eq(core_policy_layer_order(f, &l), CORE_ORDER_VERTICAL_FIRST);
  decomp_policy_free(a);
  decomp_policy_free(b);
  decomp_policy_free(f);
}
END_TEST

/* --- cost model --------------------------------------------------------- */

START_TEST(cost_model_per_pixel_and_exact) {
  /* Cin 64, Cout 128, groups 2 (I 32, O 64), kernel 3x5, stride 2x1, bias. */
  decomp_layer l = conv("x", 64, 128, 3, 5, 2, 1);
  l.groups = 2;
  l.bias = true;
  core_layer_view v;
  char why[160];
  ck_assert(core_layer_view_init(&l, CORE_ORDER_VERTICAL_FIRST, &v, why, sizeof why));
  ck_assert_int_eq(v.max_rank, 96);          /* min(32·3, 64·5) */
  /* No input size: per output pixel times the estimated area (3584/128)². */
  const double area = 28.0 * 28.0;
  ck_assert(v.macs_estimated);
  ck_assert_double_eq(v.macs_before, area * 128.0 * 32 * 15);
  ck_assert_double_eq(v.macs_per_rank, area * (2.0 * 32 * 3 * 1 + 128 * 5));
  ck_assert_double_eq(v.params_before, 128.0 * 32 * 15 + 128);
  ck_assert_double_eq(v.params_per_rank, 2.0 * 32 * 3 + 128 * 5);
  ck_assert_double_eq(v.params_bias, 128);
  ck_assert_int_eq(v.groups, 2);
  ck_assert(core_layer_view_init(&l, CORE_ORDER_HORIZONTAL_FIRST, &v, why, sizeof why));
  ck_assert_int_eq(v.max_rank, 160);         /* min(32·5, 64·3) */
  ck_assert_double_eq(v.macs_per_rank, area * (2.0 * 32 * 5 * 2 + 128 * 3));
  ck_assert_double_eq(v.params_per_rank, 2.0 * 32 * 5 + 128 * 3);

  /* Exact: input 20x30, padding (1, 2) → output 10x30. */
  l.input_size[0] = 20;
  l.input_size[1] = 30;
  ck_assert(core_layer_view_init(&l, CORE_ORDER_VERTICAL_FIRST, &v, why, sizeof why));
  ck_assert(!v.macs_estimated);
  ck_assert_double_eq(v.macs_before, 10.0 * 30 * 128 * 32 * 15);
  /* vertical conv: 10 rows × 30 (unstrided, unpadded) columns */
  ck_assert_double_eq(v.macs_per_rank, 10.0 * 30 * 2 * 32 * 3 + 10.0 * 30 * 128 * 5);
  ck_assert(core_layer_view_init(&l, CORE_ORDER_HORIZONTAL_FIRST, &v, why, sizeof why));
  /* horizontal conv: 20 (unstrided) rows × 30 columns */
  ck_assert_double_eq(v.macs_per_rank, 20.0 * 30 * 2 * 32 * 5 + 10.0 * 30 * 128 * 3);

  decomp_layer p = conv("pw", 64, 64, 1, 1, 1, 1);
  ck_assert(!core_layer_view_init(&p, CORE_ORDER_VERTICAL_FIRST, &v, why, sizeof why));
  ck_assert_str_eq(why, "kernel is 1x1");
  ck_assert_double_eq(v.macs_before, 56.0 * 56 * 64 * 64); /* filled all the same */
  ck_assert_int_eq(v.max_rank, 0);
  decomp_layer h = conv("h", 64, 64, 1, 3, 1, 1);
  ck_assert(!core_layer_view_init(&h, CORE_ORDER_HORIZONTAL_FIRST, &v, why, sizeof why));
  ck_assert_str_eq(why, "kernel is 1x3: nothing to split");
  decomp_layer o = {.name = "fc", .type = "Linear"}; /* no features given */
  ck_assert(!core_layer_view_init(&o, CORE_ORDER_VERTICAL_FIRST, &v, why, sizeof why));
  ck_assert_str_eq(why, "not a Conv2d or Linear");
}
END_TEST

/* --- per-layer policies ------------------------------------------------- */

START_TEST(fixed_ratio_energy_max_error_on_a_known_spectrum) {
  /* 8x8 conv of 3x3: max rank 24; σ_i = 2^-i/2 so σ² halves each rank. */
  decomp_layer l = conv("c", 8, 8, 3, 3, 1, 1);
  double s[24];
  for (int i = 0; i < 24; i++)
    s[i] = pow(2.0, -i / 2.0);
  core_layer_view v = view_of(&l, CORE_ORDER_VERTICAL_FIRST, s);
  ck_assert_int_eq(v.max_rank, 24);
  char why[160];
  ck_assert_int_eq(choose1("{\"name\": \"fixed\", \"rank\": 5}", &v, NULL), 5);
  /* rank 30 clamps to 24, which costs more than the conv */
  ck_assert_int_eq(choose1("{\"name\": \"fixed\", \"rank\": 30}", &v, why), 0);
  ck_assert_str_eq(why, "rank 24 would not make it cheaper (115605504 MACs -> 231211008)");
  /* unless the policy says a saving is not required */
  ck_assert_int_eq(choose1("{\"name\": \"ratio\", \"ratio\": 1,"
                           " \"require_cheaper\": false}", &v, NULL), 24);
  decomp_ctx *bc = decomp_ctx_new();
  decomp_policy *bp = NULL;
  ck_assert_int_eq(decomp_policy_parse(bc, "{\"name\": \"fixed\", \"rank\": 2,"
                                       " \"require_cheaper\": 1}", &bp),
                   DECOMP_ERR_BAD_POLICY);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(bc), "require_cheaper"));
  decomp_ctx_free(bc);
  ck_assert_int_eq(choose1("{\"name\": \"ratio\", \"ratio\": 0.25}", &v, NULL), 6);
  ck_assert_int_eq(choose1("{\"name\": \"ratio\", \"ratio\": 0.01}", &v, NULL), 1);
  /* energy kept by rank R: 1 − 2^-R (over 1 − 2^-24) */
  ck_assert_int_eq(choose1("{\"name\": \"energy\", \"energy\": 0.5}", &v, NULL), 1);
  ck_assert_int_eq(choose1("{\"name\": \"energy\", \"energy\": 0.75}", &v, NULL), 2);
  ck_assert_int_eq(choose1("{\"name\": \"energy\", \"energy\": 0.9}", &v, NULL), 4);
  ck_assert_int_eq(choose1("{\"name\": \"energy\", \"energy\": 0.999}", &v, NULL), 10);
  /* relative error at rank R: √(2^-R) roughly; ≤ 0.1 needs 2^-R ≤ 0.01 → 7 */
  ck_assert_int_eq(choose1("{\"name\": \"max_error\", \"max_error\": 0.1}", &v, NULL), 7);
  ck_assert_int_eq(choose1("{\"name\": \"max_error\", \"max_error\": 0.5}", &v, NULL), 2);
  /* 0 allows nothing discarded: every rank, which is not cheaper */
  ck_assert_int_eq(choose1("{\"name\": \"max_error\", \"max_error\": 0}", &v, why), 0);
  ck_assert_ptr_nonnull(strstr(why, "rank 24 would not make it cheaper"));
  double e[24], tot = 0;
  for (int i = 0; i < 24; i++)
    tot += e[i] = s[i] * s[i];
  ck_assert_int_eq(core_rank_for_energy(e, 24, tot, 1.0), 24);
  ck_assert_int_eq(core_rank_for_error(e, 24, tot, 0.0), 24);
  ck_assert_int_eq(core_rank_for_energy(e, 24, 0.0, 0.9), 1);
}
END_TEST

START_TEST(overrides_and_globs_decide_first) {
  decomp_layer l1 = conv("layer1.0.conv1", 64, 64, 3, 3, 1, 1);
  decomp_layer l2 = conv("layer2.0.conv1", 64, 64, 3, 3, 1, 1);
  decomp_layer ds = conv("layer2.0.downsample.0", 64, 64, 3, 3, 1, 1);
  decomp_layer fc = {.name = "fc", .type = "Linear"};
  decomp_policy *p = parse_ok(
      "{\"name\": \"fixed\", \"rank\": 10, \"include\": [\"layer*\"],"
      " \"exclude\": [\"*.downsample.*\"],"
      " \"overrides\": {\"layer1.*\": {\"rank\": 3}, \"layer1.0.*\":"
      " {\"skip\": true}, \"layer2.*\": {\"energy\": 0.5}}}");
  char why[160];
  ck_assert(!core_policy_eligible(p, &ds, why, sizeof why));
  ck_assert_str_eq(why, "excluded by \"*.downsample.*\"");
  ck_assert(!core_policy_eligible(p, &fc, why, sizeof why));
  ck_assert_str_eq(why, "not a Conv2d or Linear");
  decomp_layer other = conv("conv1", 64, 64, 3, 3, 1, 1);
  ck_assert(!core_policy_eligible(p, &other, why, sizeof why));
  ck_assert_str_eq(why, "not matched by include");
  ck_assert(core_policy_eligible(p, &l1, why, sizeof why)); /* rank 3 wins first */
  ck_assert(!core_policy_needs_spectrum(p, &l1));
  ck_assert(core_policy_needs_spectrum(p, &l2));
  ck_assert(!core_policy_needs_spectrum(p, &ds));

  double s[192];
  for (int i = 0; i < 192; i++)
    s[i] = 1.0 / (1 + i);
  core_layer_view v[2] = {view_of(&l1, CORE_ORDER_VERTICAL_FIRST, NULL),
                          view_of(&l2, CORE_ORDER_VERTICAL_FIRST, s)};
  core_rank_decision d[2];
  decomp_ctx *ctx = decomp_ctx_new();
  ck_assert_int_eq(core_policy_choose(ctx, p, v, 2, d), DECOMP_OK);
  ck_assert_int_eq(d[0].rank, 3);
  ck_assert_int_eq(d[1].rank, 1); /* σ₁² = 1 is over half of Σ 1/i² */
  decomp_policy_free(p);

  p = parse_ok("{\"name\": \"fixed\", \"rank\": 8, \"overrides\":"
               " {\"layer1.*\": {\"skip\": true}}}");
  ck_assert(!core_policy_eligible(p, &l1, why, sizeof why));
  ck_assert_str_eq(why, "skipped by override \"layer1.*\"");
  ck_assert_int_eq(core_policy_choose(ctx, p, v, 2, d), DECOMP_OK);
  ck_assert_int_eq(d[0].rank, 0);
  ck_assert_str_eq(d[0].reason, "skipped by override \"layer1.*\"");
  ck_assert_int_eq(d[1].rank, 8);
  ck_assert_str_eq(d[1].reason, "");
  decomp_policy_free(p);

  /* energy needs singular values: a missing spectrum is our bug, said so */
  p = parse_ok("{\"name\": \"energy\", \"energy\": 0.9}");
  ck_assert_int_eq(core_policy_choose(ctx, p, v, 1, d), DECOMP_ERR_INTERNAL);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "layer1.0.conv1"));
  decomp_policy_free(p);
  decomp_ctx_free(ctx);
}
END_TEST

/* --- EVBMF -------------------------------------------------------------- */

START_TEST(evbmf_finds_nothing_in_noise) {
  static const int64_t shapes[][2] = {{192, 192}, {21, 448}, {768, 1536},
                                      {1536, 1536}, {96, 640}, {500, 60}};
  static double s[1536];
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    int64_t L = shapes[i][0] < shapes[i][1] ? shapes[i][0] : shapes[i][1];
    mp_noise(shapes[i][0], shapes[i][1], 0.02, s);
    double sigma2;
    int64_t r = core_evbmf_rank(s, L, shapes[i][0], shapes[i][1], &sigma2);
    ck_assert_msg(r == 0, "%lldx%lld: rank %lld", (long long)shapes[i][0],
                  (long long)shapes[i][1], (long long)r);
    /* the noise variance it finds is close to the true 0.02² */
    ck_assert_msg(fabs(sigma2 / 4e-4 - 1) < 0.2, "sigma2 %g", sigma2);
  }
  ck_assert_int_eq(core_evbmf_rank(s, 0, 0, 0, NULL), 0);
  double z[4] = {0, 0, 0, 0};
  ck_assert_int_eq(core_evbmf_rank(z, 4, 4, 9, NULL), 0);
}
END_TEST

START_TEST(evbmf_counts_signal_above_noise) {
  /* noise plus k strong components: exactly k survive */
  static double s[576];
  const int64_t rows = 576, cols = 384;
  for (int k = 1; k <= 40; k += 13) {
    mp_noise(rows, cols, 1.0, s);
    for (int i = 0; i < k; i++)
      s[i] = 200.0 - i; /* far above the bulk edge √M(1+√α) ≈ 44 */
    int64_t r = core_evbmf_rank(s, 384, rows, cols, NULL);
    ck_assert_msg(r == k, "k=%d: rank %lld", k, (long long)r);
  }
  /* vbmf policy on a layer: 64→64 3x3 (192x192), 12 components */
  decomp_layer l = conv("c", 64, 64, 3, 3, 1, 1);
  mp_noise(192, 192, 0.01, s);
  for (int i = 0; i < 12; i++)
    s[i] = 5.0 / (1 + i);
  core_layer_view v = view_of(&l, CORE_ORDER_VERTICAL_FIRST, s);
  ck_assert_int_eq(choose1("vbmf", &v, NULL), 12);
  mp_noise(192, 192, 0.01, s);
  char why[160];
  ck_assert_int_eq(choose1("vbmf", &v, why), 0);
  ck_assert_str_eq(why, "vbmf: no component above the noise level (EVBMF rank 0)");
}
END_TEST

/* --- amct --------------------------------------------------------------- */

/* The reference's rank, written out independently: clamp, then the nearest
 * multiple of 16 by Python's round (halves to even), floor 16, +16 below
 * 90 % of the clamped value. */
static int64_t amct_rank_ref(int64_t evbmf, int64_t kmin, int64_t cmin) {
  int64_t L = kmin * cmin, d = cmin >= 256 ? 4 : 6;
  double r = (double)evbmf;
  if (r > (double)L / d)
    r = (double)L / d;
  if (r < (double)L / (d + 1))
    r = (double)L / (d + 1);
  double q = r / 16, f = floor(q);
  int64_t n = (int64_t)f;
  if (q - f > 0.5 || (q - f == 0.5 && n % 2 == 1))
    n++;
  int64_t rank = n * 16 < 16 ? 16 : n * 16;
  return (double)rank < 0.9 * r ? rank + 16 : rank;
}

START_TEST(amct_rank_formula_on_a_table) {
  static const int64_t ks[] = {3, 5, 7, 9, 11};
  static const int64_t cs[] = {3, 16, 24, 64, 96, 104, 128, 255, 256, 384, 512, 1024, 2048};
  static const int64_t evs[] = {0, 1, 10, 30, 50, 100, 300, 1000, 100000};
  for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
    for (size_t b = 0; b < sizeof cs / sizeof cs[0]; b++)
      for (size_t c = 0; c < sizeof evs / sizeof evs[0]; c++) {
        decomp_layer l = conv("t", cs[b], cs[b] * 2, ks[a], ks[a] + 2, 1, 1);
        int64_t got = core_amct_rank(evs[c], &l);
        int64_t want = amct_rank_ref(evs[c], ks[a], cs[b]);
        ck_assert_msg(got == want, "k=%lld C=%lld ev=%lld: %lld, want %lld",
                      (long long)ks[a], (long long)cs[b], (long long)evs[c],
                      (long long)got, (long long)want);
      }
  /* Hand-checked corners: L/7 = 104 is 6.5 sixteens, which Python rounds to
   * 6 (96 ≥ 0.9·104, kept); L/7 = 40 is 2.5 → 32 < 36 → 48. */
  decomp_layer l = conv("t", 104, 104, 7, 7, 1, 1);
  ck_assert_int_eq(core_amct_rank(0, &l), 96);
  l = conv("t", 40, 40, 7, 7, 1, 1);
  ck_assert_int_eq(core_amct_rank(0, &l), 48);
}
END_TEST

/* The amct preset on a layer with a noise spectrum (EVBMF 0): rank. */
static int64_t amct_on_noise(const decomp_layer *l, core_order *order_out) {
  decomp_policy *p = parse_ok("amct");
  int want = core_policy_layer_order(p, l);
  ck_assert_int_ge(want, 0);
  core_layer_view v;
  char why[160];
  ck_assert(core_layer_view_init(l, (core_order)want, &v, why, sizeof why));
  double *s = malloc((size_t)v.max_rank * sizeof *s);
  int64_t I = l->in_channels, O = l->out_channels;
  int64_t rows = I * (want == CORE_ORDER_VERTICAL_FIRST ? l->kernel_size[0] : l->kernel_size[1]);
  int64_t cols = O * (want == CORE_ORDER_VERTICAL_FIRST ? l->kernel_size[1] : l->kernel_size[0]);
  mp_noise(rows, cols, 0.05, s);
  v.sigma = s;
  decomp_ctx *ctx = decomp_ctx_new();
  core_rank_decision d;
  ck_assert_int_eq(core_policy_choose(ctx, p, &v, 1, &d), DECOMP_OK);
  free(s);
  decomp_ctx_free(ctx);
  decomp_policy_free(p);
  *order_out = (core_order)want;
  return d.rank;
}

/* Every entry of a reference info file: the layer is eligible, its mode is
 * our order, and its rank is the first conv's output count. Returns the
 * number of entries. */
static size_t check_reference_info(const char *path) {
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  ck_assert_msg(root != NULL, "%s: %s", path, err.text);
  decomp_policy *p = parse_ok("amct");
  size_t i;
  json_t *e;
  json_array_foreach(root, i, e) {
    json_t *ori = json_object_get(e, "ori_layer_info");
    const char *mode = json_string_value(json_object_get(e, "mode"));
    json_t *ks = json_object_get(ori, "kernel_size");
    json_t *st = json_object_get(ori, "stride");
    decomp_layer l = conv(json_string_value(json_object_get(ori, "name")),
                          json_integer_value(json_object_get(ori, "in_channels")),
                          json_integer_value(json_object_get(ori, "out_channels")),
                          json_integer_value(json_array_get(ks, 0)),
                          json_integer_value(json_array_get(ks, 1)),
                          json_integer_value(json_array_get(st, 0)),
                          json_integer_value(json_array_get(st, 1)));
    char why[160];
    ck_assert_msg(core_policy_eligible(p, &l, why, sizeof why), "%s: %s", l.name, why);
    core_order order;
    int64_t rank = amct_on_noise(&l, &order);
    json_t *first = json_object_get(json_object_get(e, "decom_nodes"), "first");
    int64_t want = json_integer_value(json_array_get(json_object_get(first, "weight_shape"), 0));
    ck_assert_msg(rank == want, "%s: rank %lld, reference %lld", l.name,
                  (long long)rank, (long long)want);
    bool vertical_mode = strcmp(mode, "SCFK") == 0 || strcmp(mode, "FCSK") == 0;
    ck_assert_msg(vertical_mode == (order == CORE_ORDER_VERTICAL_FIRST),
                  "%s: mode %s", l.name, mode);
    /* the first conv's kernel is (kh, 1) exactly when vertical-first */
    int64_t fk3 = json_integer_value(json_array_get(json_object_get(first, "weight_shape"), 3));
    ck_assert_int_eq(fk3 == 1, order == CORE_ORDER_VERTICAL_FIRST);
  }
  decomp_policy_free(p);
  size_t n = json_array_size(root);
  json_decref(root);
  return n;
}

START_TEST(amct_matches_the_reference_info_files) {
  ck_assert_uint_eq(check_reference_info(FIXTURES "/amct_resnet18_decompose_info.json"), 17);
  ck_assert_uint_eq(check_reference_info(FIXTURES "/amct_modes_decompose_info.json"), 4);
}
END_TEST

START_TEST(amct_eligibility_on_resnet18_and_the_modes_model) {
  /* resnet18's 20 convs: the three 1x1 downsamples are left alone */
  struct { decomp_layer l; bool ok; int64_t rank; } t[] = {
      {conv("conv1", 3, 64, 7, 7, 2, 2), true, 16},
      {conv("layer1.0.conv1", 64, 64, 3, 3, 1, 1), true, 32},
      {conv("layer2.0.conv1", 64, 128, 3, 3, 2, 2), true, 32},
      {conv("layer2.0.conv2", 128, 128, 3, 3, 1, 1), true, 64},
      {conv("layer2.0.downsample.0", 64, 128, 1, 1, 2, 2), false, 0},
      {conv("layer3.0.conv1", 128, 256, 3, 3, 2, 2), true, 64},
      {conv("layer3.0.conv2", 256, 256, 3, 3, 1, 1), true, 160},
      {conv("layer3.0.downsample.0", 128, 256, 1, 1, 2, 2), false, 0},
      {conv("layer4.0.conv1", 256, 512, 3, 3, 2, 2), true, 160},
      {conv("layer4.1.conv2", 512, 512, 3, 3, 1, 1), true, 304},
      {conv("layer4.0.downsample.0", 256, 512, 1, 1, 2, 2), false, 0},
      /* modes model */
      {conv("a", 64, 128, 3, 5, 1, 1), true, 32},
      {conv("b", 128, 128, 5, 3, 2, 1), true, 64},
      {conv("c", 128, 96, 3, 5, 1, 1), true, 48},
      {conv("d", 96, 64, 5, 3, 2, 2), true, 32},
      {conv("e", 64, 64, 3, 3, 1, 1), false, 0}, /* dilation 2, below */
      {conv("f", 64, 64, 1, 1, 1, 1), false, 0},
      /* the other rules */
      {conv("s3", 64, 64, 3, 3, 3, 3), false, 0},
      {conv("small", 32, 64, 5, 5, 1, 1), false, 0},
      {conv("tiny7", 2, 64, 7, 7, 1, 1), false, 0},
      {conv("big7", 3, 16, 7, 7, 1, 1), true, 16},
      {conv("k2", 256, 256, 2, 2, 1, 1), false, 0},
  };
  size_t n = sizeof t / sizeof t[0];
  t[15].l.dilation[0] = t[15].l.dilation[1] = 2;
  decomp_layer g = conv("g", 128, 128, 3, 3, 1, 1);
  g.groups = 2;
  decomp_policy *p = parse_ok("amct");
  char why[160];
  for (size_t i = 0; i < n; i++) {
    bool ok = core_policy_eligible(p, &t[i].l, why, sizeof why);
    ck_assert_msg(ok == t[i].ok, "%s: %s", t[i].l.name, why);
    if (ok) {
      core_order o;
      ck_assert_int_eq(amct_on_noise(&t[i].l, &o), t[i].rank);
    }
  }
  ck_assert(!core_policy_eligible(p, &g, why, sizeof why));
  ck_assert_str_eq(why, "amct: groups is 2 (only groups=1)");
  ck_assert(!core_policy_eligible(p, &t[15].l, why, sizeof why));
  ck_assert_str_eq(why, "amct: dilation is [2, 2] (only 1)");
  ck_assert(!core_policy_eligible(p, &t[17].l, why, sizeof why));
  ck_assert_str_eq(why, "amct: stride [3, 3] is over 2");
  ck_assert(!core_policy_eligible(p, &t[18].l, why, sizeof why));
  ck_assert_str_eq(why, "amct: kernel side 5 < 7 with min(channels) 32 < 64");
  ck_assert(!core_policy_eligible(p, &t[19].l, why, sizeof why));
  ck_assert_str_eq(why, "amct: min(kernel)·min(channels) = 14 is under 16");
  ck_assert(!core_policy_eligible(p, &t[21].l, why, sizeof why));
  ck_assert_str_eq(why, "amct: kernel 2x2 has a side under 3");
  ck_assert(!core_policy_eligible(p, &t[16].l, why, sizeof why));
  ck_assert_str_eq(why, "kernel is 1x1");
  decomp_policy_free(p);
}
END_TEST

/* --- budget ------------------------------------------------------------- */

/* Sums over decisions: total MACs after (alone at full cost). */
static double macs_after(const core_layer_view *v, const core_rank_decision *d,
                         size_t n) {
  double t = 0;
  for (size_t i = 0; i < n; i++)
    t += d[i].rank ? (double)d[i].rank * v[i].macs_per_rank : v[i].macs_before;
  return t;
}

static double kept(const core_layer_view *v, int64_t R) {
  double k = 0;
  for (int64_t i = 0; i < R; i++)
    k += v->sigma[i] * v->sigma[i];
  return k / v->energy_total;
}

START_TEST(budget_reaches_its_target_preferring_fast_decay) {
  /* Four 128→128 3x3 layers (max rank 384, 147456 MACs/pixel each, 768 per
   * rank): two with fast-decaying spectra, two nearly flat. */
  enum { N = 4, K = 384 };
  static double s[N][K];
  decomp_layer l[N];
  static char names[N][16];
  core_layer_view v[N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "layer%d", i);
    l[i] = conv(names[i], 128, 128, 3, 3, 1, 1);
    double rate = i % 2 ? 0.001 : 0.05;
    for (int r = 0; r < K; r++)
      s[i][r] = exp(-rate * r);
    v[i] = view_of(&l[i], CORE_ORDER_VERTICAL_FIRST, s[i]);
  }
  const double targets[] = {1.5, 2.0, 3.0, 8.0};
  decomp_ctx *ctx = decomp_ctx_new();
  for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
    char text[128];
    /* No quality floor: the allocation alone (the floor's own test is
     * below). */
    snprintf(text, sizeof text,
             "{\"name\": \"budget\", \"macs_reduction\": %g, "
             "\"max_layer_error\": 1}",
             targets[t]);
    decomp_policy *p = parse_ok(text);
    core_rank_decision d[N], d2[N];
    ck_assert_int_eq(core_policy_choose(ctx, p, v, N, d), DECOMP_OK);
    double before = 4.0 * v[0].macs_before, after = macs_after(v, d, N);
    if (getenv("TEST_VERBOSE"))
      printf("target %g: ranks %lld %lld %lld %lld reached %g\n", targets[t],
             (long long)d[0].rank, (long long)d[1].rank, (long long)d[2].rank,
             (long long)d[3].rank, before / after);
    ck_assert_msg(before / after >= targets[t], "target %g reached %g",
                  targets[t], before / after);
    /* not wastefully far past it: within one rank of one layer */
    ck_assert_msg(before / (after + v[0].macs_per_rank) < targets[t],
                  "target %g: overshoot to %g", targets[t], before / after);
    /* Fast decay keeps more of its energy; until the target is tight it is
     * also cut deeper (at 8x every layer is near 24 ranks and the fast ones,
     * whose first ranks carry the most, get more). */
    for (int i = 0; i < N; i += 2) {
      ck_assert_int_gt(d[i].rank, 0);
      if (targets[t] <= 3)
        ck_assert_msg(d[i + 1].rank == 0 || d[i + 1].rank > d[i].rank,
                      "target %g: fast %lld, flat %lld", targets[t],
                      (long long)d[i].rank, (long long)d[i + 1].rank);
      if (d[i + 1].rank)
        ck_assert(kept(&v[i], d[i].rank) > kept(&v[i + 1], d[i + 1].rank));
      else
        ck_assert_ptr_nonnull(strstr(d[i + 1].reason, "budget"));
    }
    /* twins get the same rank; runs are deterministic */
    ck_assert_int_eq(d[0].rank, d[2].rank);
    ck_assert_int_eq(d[1].rank, d[3].rank);
    ck_assert_int_eq(core_policy_choose(ctx, p, v, N, d2), DECOMP_OK);
    for (int i = 0; i < N; i++)
      ck_assert_int_eq(d[i].rank, d2[i].rank);
    decomp_policy_free(p);
  }
  decomp_ctx_free(ctx);
}
END_TEST

static void capture_log(void *user, int level, const char *topic,
                        const char *msg) {
  (void)topic;
  if (level == DECOMP_LOG_WARN)
    snprintf(user, 512, "%s", msg);
}

START_TEST(budget_out_of_reach_goes_as_far_as_it_can) {
  decomp_layer a = conv("a", 64, 64, 3, 3, 1, 1);
  decomp_layer one = conv("one", 64, 64, 3, 3, 1, 1);
  static double s[192];
  for (int r = 0; r < 192; r++)
    s[r] = 1.0 / (1 + r);
  core_layer_view v[1] = {view_of(&a, CORE_ORDER_VERTICAL_FIRST, s)};
  char log[512] = "";
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_ctx_set_log(ctx, capture_log, log, DECOMP_LOG_WARN);
  decomp_policy *p = parse_ok("{\"name\": \"budget\", \"macs_reduction\": 4,"
                              " \"max_layer_error\": 1}");
  core_rank_decision d[1];
  /* 1x1 convs elsewhere hold 10x this layer's MACs: 4x cannot be reached;
   * without a floor the layer goes to rank 1 */
  ck_assert_int_eq(core_policy_choose_in(ctx, p, v, 1, 10 * v[0].macs_before,
                                         0, d),
                   DECOMP_OK);
  ck_assert_int_eq(d[0].rank, 1);
  ck_assert_ptr_nonnull(strstr(log, "out of reach"));
  decomp_policy_free(p);

  /* a layer no rank makes cheaper: 1→1 channel 3x3 with stride 2 on W,
   * 9 MACs before, 1·3·2 + 3 = 9 per rank */
  decomp_layer c = conv("c", 1, 1, 3, 3, 1, 2);
  double s3[3] = {1, .5, .25};
  core_layer_view v2[2] = {view_of(&c, CORE_ORDER_VERTICAL_FIRST, s3),
                           view_of(&one, CORE_ORDER_VERTICAL_FIRST, s)};
  p = parse_ok("budget");
  core_rank_decision d2[2];
  ck_assert_int_eq(core_policy_choose(ctx, p, v2, 2, d2), DECOMP_OK);
  ck_assert_int_eq(d2[0].rank, 0);
  ck_assert_str_eq(d2[0].reason, "rank 1 would not make it cheaper (115605504 MACs -> 115605504)");
  ck_assert_int_gt(d2[1].rank, 0);
  decomp_policy_free(p);

  /* by parameters, with an override taking precedence */
  p = parse_ok("{\"name\": \"budget\", \"params_reduction\": 3,"
               " \"overrides\": {\"one\": {\"rank\": 50}}}");
  ck_assert_int_eq(core_policy_choose(ctx, p, v2, 2, d2), DECOMP_OK);
  ck_assert_int_eq(d2[1].rank, 50);
  decomp_policy_free(p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(budget_out_of_reach_stops_at_the_quality_floor_or_fails_when_strict) {
  /* The same unreachable 4x: by default no layer goes beyond relative
   * error 0.75 (energy kept 0.4375); "strict" makes it an error. */
  decomp_layer a = conv("a", 64, 64, 3, 3, 1, 1);
  static double s[192];
  double total = 0;
  for (int r = 0; r < 192; r++) {
    s[r] = 1.0 / (1 + r);
    total += s[r] * s[r];
  }
  core_layer_view v[1] = {view_of(&a, CORE_ORDER_VERTICAL_FIRST, s)};
  char log[512] = "";
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_ctx_set_log(ctx, capture_log, log, DECOMP_LOG_WARN);
  const char *const texts[] = {
      "{\"name\": \"budget\", \"macs_reduction\": 4}",
      "{\"name\": \"budget\", \"macs_reduction\": 4, \"max_layer_error\": 0.3}"};
  const double bounds[] = {0.75, 0.3};
  for (int t = 0; t < 2; t++) {
    decomp_policy *p = parse_ok(texts[t]);
    core_rank_decision d[1];
    log[0] = '\0';
    ck_assert_int_eq(core_policy_choose_in(ctx, p, v, 1,
                                           10 * v[0].macs_before, 0, d),
                     DECOMP_OK);
    /* the smallest rank within the bound */
    double tail = 0;
    for (int r = (int)d[0].rank; r < 192; r++)
      tail += s[r] * s[r];
    ck_assert(sqrt(tail / total) <= bounds[t]);
    ck_assert(sqrt((tail + s[d[0].rank - 1] * s[d[0].rank - 1]) / total) >
              bounds[t]);
    ck_assert_ptr_nonnull(strstr(log, "quality floor"));
    decomp_policy_free(p);
  }
  decomp_policy *p = parse_ok("{\"name\": \"budget\", \"macs_reduction\": 4,"
                              " \"strict\": true}");
  core_rank_decision d[1];
  ck_assert_int_eq(core_policy_choose_in(ctx, p, v, 1, 10 * v[0].macs_before,
                                         0, d),
                   DECOMP_ERR_OUT_OF_REACH);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "out of reach"));
  decomp_policy_free(p);
  /* max_layer_error and strict are budget's own */
  expect_bad("{\"name\": \"energy\", \"energy\": 0.9, \"strict\": true}",
             "applies to policy budget only");
  expect_bad("{\"name\": \"amct\", \"methods\": [\"channel\"]}",
             "reference tool's rules");
  expect_bad("{\"name\": \"budget\", \"types\": [\"Conv3d\"]}",
             "unknown entry");
  decomp_ctx_free(ctx);
}
END_TEST

/* --- latency ------------------------------------------------------------ */

/* A profile of three 64→64 3x3 convs: "a" and "b" take 10 ms and get
 * faster with rank, along known curves; every candidate of "slow" (1 ms)
 * is slower than the layer itself. */
static const char latency_profile[] =
    "{\"format\": \"decompd.profile\", \"version\": 1,"
    " \"device_name\": \"test cpu\", \"dtype\": \"float32\","
    " \"input_shape\": [8, 64, 56, 56], \"layers\": {"
    " \"a\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
    "  \"time\": 0.010, \"candidates\": ["
    "   {\"method\": \"channel_svd\", \"ranks\": [1, 16, 32, 64],"
    "    \"times\": [0.001, 0.004, 0.007, 0.013]},"
    "   {\"method\": \"spatial_svd\", \"order\": \"vertical_first\","
    "    \"ranks\": [1, 96, 192], \"times\": [0.002, 0.008, 0.014]}]},"
    " \"b\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
    "  \"time\": 0.010, \"candidates\": ["
    "   {\"method\": \"channel_svd\", \"ranks\": [1, 64],"
    "    \"times\": [0.0005, 0.0125]}]},"
    " \"slow\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
    "  \"time\": 0.001, \"candidates\": ["
    "   {\"method\": \"channel_svd\", \"ranks\": [1, 64],"
    "    \"times\": [0.002, 0.009]},"
    "   {\"method\": \"spatial_svd\", \"order\": \"vertical_first\","
    "    \"ranks\": [1, 192], \"times\": [0.003, 0.02]}]}}}";

START_TEST(latency_budget_meets_its_target_on_the_predicted_curves) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *spec;
  ck_assert_int_eq(decomp_spec_new(ctx, &spec), DECOMP_OK);
  const char *names[] = {"a", "b", "slow"};
  for (int i = 0; i < 3; i++) {
    decomp_layer l = conv(names[i], 64, 64, 3, 3, 1, 1);
    ck_assert_int_eq(decomp_spec_add(ctx, spec, &l), DECOMP_OK);
  }
  core_profile *prof;
  ck_assert_int_eq(core_profile_open(ctx, latency_profile, spec, &prof),
                   DECOMP_OK);
  static double s[192];
  for (int r = 0; r < 192; r++)
    s[r] = exp(-0.03 * r);
  /* Candidates: a: spatial + channel; b: channel; slow: spatial + channel. */
  core_layer_view v[5];
  size_t n = 0;
  for (int i = 0; i < 3; i++) {
    const decomp_layer *l = decomp_spec_find(spec, names[i]);
    for (int m = 0; m < 2; m++) {
      if (i == 1 && m == 0)
        continue;
      char why[160];
      ck_assert(core_layer_view_init_method(
          l, m ? CORE_METHOD_CHANNEL : CORE_METHOD_SPATIAL,
          CORE_ORDER_VERTICAL_FIRST, &v[n], why, sizeof why));
      v[n].sigma = s;
      v[n].energy_total = sum_sq(s, v[n].max_rank);
      v[n].profiled = true;
      v[n].latency = core_profile_curve(prof, l, v[n].method, v[n].order,
                                        &v[n].latency_before);
      ck_assert_ptr_nonnull(v[n].latency);
      n++;
    }
  }
  /* isotonic, linear between grid points */
  ck_assert_double_eq_tol(core_curve_at(v[1].latency, 24), 0.0055, 1e-12);
  ck_assert_double_eq_tol(core_curve_at(v[1].latency, 0), 0.001, 1e-12);
  const double targets[] = {1.3, 1.5, 2.5};
  for (int t = 0; t < 3; t++) {
    char text[160];
    snprintf(text, sizeof text,
             "{\"name\": \"budget\", \"latency_reduction\": %g, "
             "\"max_layer_error\": 1}",
             targets[t]);
    decomp_policy *p = parse_ok(text);
    core_rank_decision d[5];
    core_rest rest = {0};
    ck_assert_int_eq(core_policy_choose_rest(ctx, p, v, n, &rest, d),
                     DECOMP_OK);
    /* "slow" is left alone: every candidate is slower than the layer */
    ck_assert_int_eq(d[3].rank, 0);
    ck_assert_int_eq(d[4].rank, 0);
    ck_assert_ptr_nonnull(strstr(d[4].reason, "never faster"));
    double before = 0.021, after = 0.001;
    int chosen_a = 0;
    for (size_t c = 0; c < 3; c++)
      if (d[c].rank) {
        after += core_curve_at(v[c].latency, d[c].rank);
        chosen_a += c < 2;
      }
    if (!d[2].rank)
      after += 0.010;
    ck_assert_int_le(chosen_a, 1); /* one method per layer */
    ck_assert_msg(before / after >= targets[t], "target %g: %g", targets[t],
                  before / after);
    /* met on the curve: one more rank of any chosen candidate would miss */
    bool tight = false;
    for (size_t c = 0; c < 3; c++)
      if (d[c].rank && d[c].rank < v[c].max_rank &&
          d[c].rank < 64 * (c == 0 ? 3 : 1))
        tight = tight || before / (after + core_curve_at(v[c].latency,
                                                         d[c].rank + 1) -
                                   core_curve_at(v[c].latency, d[c].rank)) <
                             targets[t];
    ck_assert_msg(tight, "target %g: %g is not tight", targets[t],
                  before / after);
    decomp_policy_free(p);
  }
  /* Other policies: max_slowdown (1.0 with a profile) leaves "slow" alone. */
  decomp_policy *p = parse_ok("{\"name\": \"fixed\", \"rank\": 8}");
  core_rank_decision d[5];
  core_rest rest = {0};
  ck_assert_int_eq(core_policy_choose_rest(ctx, p, v, n, &rest, d), DECOMP_OK);
  ck_assert_int_eq(d[3].rank + d[4].rank, 0);
  ck_assert_ptr_nonnull(strstr(d[3].reason, "max_slowdown"));
  ck_assert_int_gt(d[2].rank, 0);
  decomp_policy_free(p);
  p = parse_ok("{\"name\": \"fixed\", \"rank\": 8, \"max_slowdown\": 4}");
  ck_assert_int_eq(core_policy_choose_rest(ctx, p, v, n, &rest, d), DECOMP_OK);
  ck_assert_int_gt(d[3].rank + d[4].rank, 0);
  decomp_policy_free(p);
  /* A MAC budget (and a parameter one) reads the profile too: no rank it
   * predicts slower than the layer, so "slow" is left alone and a low
   * target, which would keep high ranks, is capped where a curve crosses
   * its layer's time (channel on "a": rank 48). */
  const char *mac_budgets[] = {
      "{\"name\": \"budget\", \"macs_reduction\": 1.05, "
      "\"max_layer_error\": 1}",
      "{\"name\": \"budget\", \"params_reduction\": 1.05, "
      "\"max_layer_error\": 1}"};
  for (int t = 0; t < 2; t++) {
    p = parse_ok(mac_budgets[t]);
    ck_assert_int_eq(core_policy_choose_rest(ctx, p, v, n, &rest, d),
                     DECOMP_OK);
    ck_assert_int_eq(d[3].rank + d[4].rank, 0);
    ck_assert_ptr_nonnull(strstr(d[3].reason, "max_slowdown"));
    ck_assert_ptr_nonnull(strstr(d[4].reason, "max_slowdown"));
    int chosen = 0;
    for (size_t c = 0; c < 3; c++)
      if (d[c].rank) {
        chosen++;
        ck_assert_double_le(core_curve_at(v[c].latency, d[c].rank), 0.010);
      }
    ck_assert_int_gt(chosen, 0);
    if (d[1].rank)
      ck_assert_int_le(d[1].rank, 48);
    decomp_policy_free(p);
  }
  /* a latency budget without a profile is refused */
  core_layer_view bare = view_of(decomp_spec_find(spec, "a"),
                                 CORE_ORDER_VERTICAL_FIRST, s);
  p = parse_ok("{\"name\": \"budget\", \"latency_reduction\": 1.5}");
  ck_assert_int_eq(core_policy_choose_rest(ctx, p, &bare, 1, &rest, d),
                   DECOMP_ERR_BAD_POLICY);
  decomp_policy_free(p);
  core_profile_free(prof);
  decomp_spec_free(spec);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(bad_profiles_are_refused_naming_the_layer) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *spec;
  ck_assert_int_eq(decomp_spec_new(ctx, &spec), DECOMP_OK);
  decomp_layer l = conv("a", 64, 64, 3, 3, 1, 1);
  ck_assert_int_eq(decomp_spec_add(ctx, spec, &l), DECOMP_OK);
  static const struct {
    const char *layer, *want;
  } bad[] = {
      {"\"ghost\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
       " \"time\": 1, \"candidates\": []}",
       "layer ghost is not in the model"},
      {"\"a\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 32, 3, 3],"
       " \"time\": 1, \"candidates\": []}",
       "layer a: the profile's weight_shape"},
      {"\"a\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
       " \"time\": -1, \"candidates\": []}",
       "layer a: time"},
      {"\"a\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
       " \"time\": 1, \"candidates\": []}",
       "layer a: no candidates"},
      {"\"a\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
       " \"time\": 1, \"candidates\": [{\"method\": \"channel_svd\","
       " \"ranks\": [8, 4], \"times\": [1, 2]}]}",
       "ranks[1]"},
      {"\"a\": {\"type\": \"Conv2d\", \"weight_shape\": [64, 64, 3, 3],"
       " \"time\": 1, \"candidates\": [{\"method\": \"channel_svd\","
       " \"ranks\": [8], \"times\": [\"x\"]}]}",
       "times[0]"},
      {"\"a\": {\"type\": \"Linear\", \"weight_shape\": [64, 64],"
       " \"time\": 1, \"candidates\": []}",
       "the profile says Linear"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char text[1024];
    snprintf(text, sizeof text,
             "{\"format\": \"decompd.profile\", \"version\": 1,"
             " \"layers\": {%s}}",
             bad[i].layer);
    ck_assert_int_eq(decomp_profile_check(ctx, text, spec, NULL),
                     DECOMP_ERR_BAD_PROFILE);
    ck_assert_msg(strstr(decomp_errmsg(ctx), bad[i].want), "%zu: %s", i,
                  decomp_errmsg(ctx));
  }
  ck_assert_int_eq(decomp_profile_check(ctx, "{}", spec, NULL),
                   DECOMP_ERR_BAD_PROFILE);
  decomp_spec_free(spec);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(budget_by_params_meets_its_target) {
  enum { N = 3, K = 192 };
  static double s[N][K];
  static char names[N][8];
  decomp_layer l[N];
  core_layer_view v[N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "p%d", i);
    l[i] = conv(names[i], 64, 64, 3, 3, 1 + i % 2, 1 + i % 2);
    l[i].bias = true;
    for (int r = 0; r < K; r++)
      s[i][r] = exp(-0.02 * (i + 1) * r);
    v[i] = view_of(&l[i], CORE_ORDER_VERTICAL_FIRST, s[i]);
  }
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_policy *p = parse_ok("{\"name\": \"budget\", \"params_reduction\": 2.5}");
  core_rank_decision d[N];
  ck_assert_int_eq(core_policy_choose(ctx, p, v, N, d), DECOMP_OK);
  double before = 0, after = 0;
  for (int i = 0; i < N; i++) {
    before += v[i].params_before;
    after += d[i].rank ? (double)d[i].rank * v[i].params_per_rank + v[i].params_bias
                       : v[i].params_before;
  }
  ck_assert_msg(before / after >= 2.5, "reached %g", before / after);
  decomp_policy_free(p);
  decomp_ctx_free(ctx);
}
END_TEST

int main(void) {
  Suite *s = suite_create("policy");
  TCase *tc = tcase_create("policy");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, parse_errors_name_what_is_wrong);
  tcase_add_test(tc, equal_policies_give_equal_json);
  tcase_add_test(tc, compute_bits_and_orders);
  tcase_add_test(tc, cost_model_per_pixel_and_exact);
  tcase_add_test(tc, fixed_ratio_energy_max_error_on_a_known_spectrum);
  tcase_add_test(tc, overrides_and_globs_decide_first);
  tcase_add_test(tc, evbmf_finds_nothing_in_noise);
  tcase_add_test(tc, evbmf_counts_signal_above_noise);
  tcase_add_test(tc, amct_rank_formula_on_a_table);
  tcase_add_test(tc, amct_matches_the_reference_info_files);
  tcase_add_test(tc, amct_eligibility_on_resnet18_and_the_modes_model);
  tcase_add_test(tc, budget_reaches_its_target_preferring_fast_decay);
  tcase_add_test(tc, budget_out_of_reach_goes_as_far_as_it_can);
  tcase_add_test(
      tc, budget_out_of_reach_stops_at_the_quality_floor_or_fails_when_strict);
  tcase_add_test(tc, budget_by_params_meets_its_target);
  tcase_add_test(tc, latency_budget_meets_its_target_on_the_predicted_curves);
  tcase_add_test(tc, bad_profiles_are_refused_naming_the_layer);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
