/* test_decompose.c — the spatial SVD (core_factorize) and decomp_decompose:
 * full-rank reconstruction of the kernel, the rank-R error against the
 * discarded singular values, groups and both orders, NaN/Inf, cancellation,
 * dtypes kept, and the result's tensor order, names and metadata. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

/* --- helpers -------------------------------------------------------------- */

static uint64_t rng = 88172645463325252ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static decomp_layer conv(const char *name, int64_t cin, int64_t cout,
                         int64_t kh, int64_t kw, int64_t groups, bool bias) {
  return (decomp_layer){.name = name, .type = "Conv2d", .in_channels = cin,
                        .out_channels = cout, .kernel_size = {kh, kw},
                        .stride = {1, 1}, .padding = {kh / 2, kw / 2},
                        .dilation = {1, 1}, .groups = groups, .bias = bias};
}

static decomp_tensor tensor4(const char *name, decomp_dtype dt, const void *data,
                             int64_t a, int64_t b, int64_t c, int64_t d) {
  return (decomp_tensor){.name = name, .dtype = dt, .ndim = 4,
                         .shape = {a, b, c, d},
                         .stride = {b * c * d, c * d, d, 1}, .data = data};
}

static double *random_f64(size_t n) {
  double *p = malloc(n * sizeof *p);
  for (size_t i = 0; i < n; i++)
    p[i] = urand();
  return p;
}

static float *random_f32(size_t n) {
  float *p = malloc(n * sizeof *p);
  for (size_t i = 0; i < n; i++)
    p[i] = (float)urand();
  return p;
}

/* The kernel the pair computes, from dense float64 factors. */
static void effective_kernel(const decomp_layer *l, bool vfirst, int64_t R,
                             const double *first, const double *second,
                             double *K) {
  int64_t g = l->groups, O = l->out_channels / g, I = l->in_channels / g;
  int64_t kh = l->kernel_size[0], kw = l->kernel_size[1];
  int64_t ka = vfirst ? kh : kw, kb = vfirst ? kw : kh;
  for (int64_t o = 0; o < g * O; o++)
    for (int64_t i = 0; i < I; i++)
      for (int64_t h = 0; h < kh; h++)
        for (int64_t w = 0; w < kw; w++) {
          int64_t j = o / O, p = vfirst ? h : w, q = vfirst ? w : h;
          double acc = 0;
          for (int64_t r = 0; r < R; r++)
            acc += first[((j * R + r) * I + i) * ka + p] *
                   second[(o * R + r) * kb + q];
          K[((o * I + i) * kh + h) * kw + w] = acc;
        }
}

static double rel_diff(const double *a, const double *b, size_t n) {
  double d = 0, nb = 0;
  for (size_t i = 0; i < n; i++) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    nb += b[i] * b[i];
  }
  return sqrt(d / nb);
}

static double *as_f64(const void *p, decomp_dtype dt, size_t n) {
  decomp_tensor t = {.name = "x", .dtype = dt, .ndim = 1, .shape = {(int64_t)n},
                     .stride = {1}, .data = p};
  double *out = malloc(n * sizeof *out);
  ck_assert(core_tensor_to_f64(&t, out));
  return out;
}

/* Factorize `l` (random weights) at rank R and return ‖W − K_R‖/‖W‖; also
 * checks the factor shapes and the reported error. */
static double factor_error(const decomp_layer *l, core_order order, int64_t R,
                           int bits, double *reported) {
  size_t n = (size_t)(l->out_channels * (l->in_channels / l->groups) *
                      l->kernel_size[0] * l->kernel_size[1]);
  double *W = random_f64(n);
  decomp_tensor t = tensor4("w", DECOMP_DTYPE_F64, W, l->out_channels,
                            l->in_channels / l->groups, l->kernel_size[0],
                            l->kernel_size[1]);
  decomp_ctx *ctx = decomp_ctx_new();
  core_factors f;
  ck_assert_int_eq(core_factorize(ctx, l, &t, order, R, bits, false, &f),
                   DECOMP_OK);
  bool vf = order == CORE_ORDER_VERTICAL_FIRST;
  ck_assert_int_eq(f.first_shape[0], l->groups * R);
  ck_assert_int_eq(f.first_shape[2], vf ? l->kernel_size[0] : 1);
  ck_assert_int_eq(f.first_shape[3], vf ? 1 : l->kernel_size[1]);
  ck_assert_int_eq(f.second_shape[0], l->out_channels);
  ck_assert_int_eq(f.second_shape[1], R);
  ck_assert_int_eq(f.second_shape[2], vf ? 1 : l->kernel_size[0]);
  ck_assert_int_eq(f.second_shape[3], vf ? l->kernel_size[1] : 1);
  ck_assert_int_eq(f.dtype, DECOMP_DTYPE_F64);
  double *K = malloc(n * sizeof *K);
  effective_kernel(l, vf, R, f.first, f.second, K);
  double err = rel_diff(K, W, n);
  *reported = sqrt(f.energy_discarded / f.energy_total);
  double norm2 = 0;
  for (size_t i = 0; i < n; i++)
    norm2 += W[i] * W[i];
  ck_assert_double_eq_tol(f.energy_total, norm2,
                          (bits == 64 ? 1e-12 : 1e-6) * norm2);
  core_factors_clear(&f);
  decomp_ctx_free(ctx);
  free(K);
  free(W);
  return err;
}

/* --- the factorization ---------------------------------------------------- */

START_TEST(full_rank_pair_reproduces_the_kernel_in_both_orders_and_groups) {
  static const int64_t shapes[][5] = {
      /* cin, cout, kh, kw, groups */
      {4, 6, 3, 3, 1}, {6, 4, 3, 5, 1}, {8, 8, 5, 3, 2},
      {12, 8, 3, 3, 4}, {6, 6, 3, 3, 6}, {3, 16, 7, 7, 1}};
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (int o = 0; o < 2; o++)
      for (int bits = 32; bits <= 64; bits += 32) {
        const int64_t *x = shapes[s];
        decomp_layer l = conv("c", x[0], x[1], x[2], x[3], x[4], false);
        int64_t I = x[0] / x[4], O = x[1] / x[4];
        int64_t m = I * (o ? x[3] : x[2]), n = O * (o ? x[2] : x[3]);
        double reported;
        double err = factor_error(&l, (core_order)o, m < n ? m : n, bits,
                                  &reported);
        ck_assert_msg(err < (bits == 64 ? 1e-12 : 1e-5),
                      "shape %zu order %d bits %d: error %g", s, o, bits, err);
        ck_assert_double_le(reported, bits == 64 ? 1e-12 : 1e-5);
      }
}
END_TEST

START_TEST(rank_r_error_is_the_discarded_energy) {
  decomp_layer l = conv("c", 16, 24, 3, 5, 1, false);
  for (int o = 0; o < 2; o++)
    for (int64_t R = 1; R <= 40; R += 13) {
      double reported;
      double err = factor_error(&l, (core_order)o, R, 64, &reported);
      ck_assert_msg(fabs(err - reported) <= 1e-9 * reported,
                    "order %d rank %lld: error %.12g reported %.12g", o,
                    (long long)R, err, reported);
      ck_assert_double_gt(err, 0);
    }
  /* Same in float32 within float precision, with groups. */
  decomp_layer lg = conv("g", 16, 16, 3, 3, 2, false);
  double reported;
  double err = factor_error(&lg, CORE_ORDER_VERTICAL_FIRST, 5, 32, &reported);
  ck_assert_double_eq_tol(err, reported, 1e-5 * reported);
}
END_TEST

START_TEST(values_only_spectrum_matches_the_factorization) {
  decomp_layer l = conv("c", 10, 12, 3, 3, 2, false);
  size_t n = 12 * 5 * 9;
  float *W = random_f32(n);
  decomp_tensor t = tensor4("w", DECOMP_DTYPE_F32, W, 12, 5, 3, 3);
  decomp_ctx *ctx = decomp_ctx_new();
  core_factors a, b;
  ck_assert_int_eq(core_factorize(ctx, &l, &t, CORE_ORDER_VERTICAL_FIRST, 0,
                                  32, true, &a),
                   DECOMP_OK);
  ck_assert_ptr_null(a.first);
  ck_assert_int_eq(a.groups, 2);
  ck_assert_int_eq(a.k, 15);
  ck_assert_int_eq(core_factorize(ctx, &l, &t, CORE_ORDER_VERTICAL_FIRST, 3,
                                  32, false, &b),
                   DECOMP_OK);
  for (size_t i = 0; i < 30; i++) {
    ck_assert_double_eq_tol(a.sigma[i], b.sigma[i], 1e-5 * a.sigma[0]);
    if (i % 15)
      ck_assert_double_le(a.sigma[i], a.sigma[i - 1]);
  }
  core_factors_clear(&a);
  core_factors_clear(&b);
  /* Values not asked, rank 0: only the finiteness check and ‖W‖². */
  ck_assert_int_eq(core_factorize(ctx, &l, &t, CORE_ORDER_VERTICAL_FIRST, 0,
                                  32, false, &a),
                   DECOMP_OK);
  ck_assert_ptr_null(a.sigma);
  ck_assert_double_gt(a.energy_total, 0);
  core_factors_clear(&a);
  free(W);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(strided_weights_are_read_through_their_strides) {
  /* The kernel stored as [cin, cout, kh, kw] and viewed transposed. */
  decomp_layer l = conv("c", 3, 4, 3, 3, 1, false);
  double *S = random_f64(3 * 4 * 9);
  decomp_tensor view = {.name = "w", .dtype = DECOMP_DTYPE_F64, .ndim = 4,
                        .shape = {4, 3, 3, 3}, .stride = {9, 36, 3, 1},
                        .data = S};
  double *dense = malloc(108 * sizeof *dense);
  ck_assert(core_tensor_to_f64(&view, dense));
  decomp_ctx *ctx = decomp_ctx_new();
  core_factors f;
  ck_assert_int_eq(core_factorize(ctx, &l, &view, CORE_ORDER_VERTICAL_FIRST, 9,
                                  64, false, &f),
                   DECOMP_OK);
  double K[108];
  effective_kernel(&l, true, 9, f.first, f.second, K);
  ck_assert_double_le(rel_diff(K, dense, 108), 1e-12);
  core_factors_clear(&f);
  decomp_ctx_free(ctx);
  free(dense);
  free(S);
}
END_TEST

/* --- decomp_decompose ------------------------------------------------------ */

/* A small model: an integer buffer, conv1 (8→8 3×3, bias), a norm weight,
 * conv2 (8→16 3×5, no bias, groups 2), head (1×1), fc (Linear). */
typedef struct model {
  decomp_ctx *ctx;
  decomp_weights *w;
  decomp_spec *spec;
  void *conv1_w, *conv2_w;
  float conv1_b[8], bn_w[8], head_w[16 * 16], fc_w[10 * 16];
  int64_t steps[1];
} model;

static void *random_dtype(decomp_dtype dt, size_t n) {
  float *f = random_f32(n);
  void *out = malloc(n * decomp_dtype_size(dt));
  core_f32_to_dtype(f, n, dt, out);
  free(f);
  return out;
}

static void model_init(model *m, decomp_dtype dt) {
  memset(m, 0, sizeof *m);
  m->ctx = decomp_ctx_new();
  ck_assert_int_eq(decomp_weights_new(m->ctx, &m->w), DECOMP_OK);
  m->conv1_w = random_dtype(dt, 8 * 8 * 9);
  m->conv2_w = random_dtype(dt, 16 * 4 * 15);
  for (int i = 0; i < 8; i++)
    m->conv1_b[i] = (float)urand(), m->bn_w[i] = 1;
  m->steps[0] = 7;
  decomp_tensor ts[] = {
      {.name = "steps", .dtype = DECOMP_DTYPE_I64, .ndim = 1, .shape = {1},
       .stride = {1}, .data = m->steps},
      tensor4("conv1.weight", dt, m->conv1_w, 8, 8, 3, 3),
      {.name = "conv1.bias", .dtype = DECOMP_DTYPE_F32, .ndim = 1,
       .shape = {8}, .stride = {1}, .data = m->conv1_b},
      {.name = "bn.weight", .dtype = DECOMP_DTYPE_F32, .ndim = 1,
       .shape = {8}, .stride = {1}, .data = m->bn_w},
      tensor4("conv2.weight", dt, m->conv2_w, 16, 4, 3, 5),
      tensor4("head.weight", DECOMP_DTYPE_F32, m->head_w, 16, 16, 1, 1),
      {.name = "fc.weight", .dtype = DECOMP_DTYPE_F32, .ndim = 2,
       .shape = {10, 16}, .stride = {16, 1}, .data = m->fc_w},
  };
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
    ck_assert_int_eq(decomp_weights_add(m->w, &ts[i]), DECOMP_OK);
  ck_assert_int_eq(decomp_spec_new(m->ctx, &m->spec), DECOMP_OK);
  decomp_layer ls[] = {
      conv("conv1", 8, 8, 3, 3, 1, true),
      {.name = "bn", .type = "BatchNorm2d"},
      conv("conv2", 8, 16, 3, 5, 2, false),
      conv("head", 16, 16, 1, 1, 1, false),
      {.name = "fc", .type = "Linear"},
  };
  for (size_t i = 0; i < sizeof ls / sizeof *ls; i++)
    ck_assert_int_eq(decomp_spec_add(m->ctx, m->spec, &ls[i]), DECOMP_OK);
}

static void model_free(model *m) {
  decomp_weights_free(m->w);
  decomp_spec_free(m->spec);
  decomp_ctx_free(m->ctx);
  free(m->conv1_w);
  free(m->conv2_w);
}

static int run(model *m, const char *policy_text, const decomp_options *opts,
               decomp_result **out) {
  decomp_policy *p;
  ck_assert_int_eq(decomp_policy_parse(m->ctx, policy_text, &p), DECOMP_OK);
  int rc = decomp_decompose(m->ctx, m->w, m->spec, p, opts, out);
  decomp_policy_free(p);
  return rc;
}

/* spatial only: the 1x1 "head" stays alone, as these tests expect */
#define FIXED2 "{\"name\": \"fixed\", \"rank\": 2, \"methods\": [\"spatial\"]}"

START_TEST(result_keeps_input_order_and_replaces_decomposed_layers_in_place) {
  model m;
  model_init(&m, DECOMP_DTYPE_F32);
  decomp_result *r = NULL;
  ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_OK);
  const decomp_weights *rw = decomp_result_weights(r);
  static const char *const want[] = {
      "steps",         "conv1.0.weight", "conv1.1.weight", "conv1.1.bias",
      "bn.weight",     "conv2.0.weight", "conv2.1.weight", "head.weight",
      "fc.weight"};
  ck_assert_uint_eq(decomp_weights_count(rw), 9);
  for (size_t i = 0; i < 9; i++)
    ck_assert_str_eq(decomp_weights_at(rw, i)->name, want[i]);
  /* Untouched tensors and the moved bias are borrowed, not copied. */
  ck_assert_ptr_eq(decomp_weights_find(rw, "steps")->data, m.steps);
  ck_assert_ptr_eq(decomp_weights_find(rw, "bn.weight")->data, m.bn_w);
  ck_assert_ptr_eq(decomp_weights_find(rw, "conv1.1.bias")->data, m.conv1_b);
  ck_assert_ptr_eq(decomp_weights_find(rw, "head.weight")->data, m.head_w);
  /* Shapes: conv1 8→8 3×3 and conv2 8→16 3×5 groups 2 at rank 2. */
  const decomp_tensor *a = decomp_weights_find(rw, "conv1.0.weight");
  const decomp_tensor *b = decomp_weights_find(rw, "conv1.1.weight");
  const decomp_tensor *c = decomp_weights_find(rw, "conv2.0.weight");
  const decomp_tensor *d = decomp_weights_find(rw, "conv2.1.weight");
  /* conv1 is square and cin == cout: vertical-first (the tie rule). */
  int64_t sa[4] = {2, 8, 3, 1}, sb[4] = {8, 2, 1, 3};
  ck_assert_mem_eq(a->shape, sa, sizeof sa);
  ck_assert_mem_eq(b->shape, sb, sizeof sb);
  ck_assert_int_eq(c->shape[0], 4); /* g·R */
  ck_assert_int_eq(c->shape[1], 4); /* cin/g */
  ck_assert_int_eq(d->shape[0], 16);
  ck_assert_int_eq(d->shape[1], 2);
  ck_assert(decomp_tensor_is_contiguous(a) && decomp_tensor_is_contiguous(d));
  decomp_result_free(r);
  model_free(&m);
}
END_TEST

START_TEST(torch_metadata_gains_the_sequential_and_its_two_convs) {
  model m;
  model_init(&m, DECOMP_DTYPE_F32);
  ck_assert_int_eq(
      decomp_weights_set_metadata(
          m.w, "{\"\": {\"version\": 1}, \"conv1\": {\"version\": 1}, "
               "\"bn\": {\"version\": 2}, \"conv2\": {\"version\": 1}, "
               "\"head\": {\"version\": 1}}"),
      DECOMP_OK);
  decomp_result *r = NULL;
  ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_OK);
  const char *md = decomp_weights_metadata(decomp_result_weights(r));
  ck_assert_ptr_nonnull(md);
  json_t *j = json_loads(md, 0, NULL);
  const char *want[] = {"", "conv1", "conv1.0", "conv1.1", "bn", "conv2",
                        "conv2.0", "conv2.1", "head"};
  ck_assert_uint_eq(json_object_size(j), 9);
  size_t i = 0;
  const char *key;
  json_t *v;
  json_object_foreach(j, key, v) {
    ck_assert_str_eq(key, want[i]);
    ck_assert_int_eq(json_integer_value(json_object_get(v, "version")),
                     strcmp(key, "bn") ? 1 : 2);
    i++;
  }
  json_decref(j);
  decomp_result_free(r);
  model_free(&m);

  /* Safetensors' map of strings is copied as it is; no metadata stays none. */
  model_init(&m, DECOMP_DTYPE_F32);
  ck_assert_int_eq(decomp_weights_set_metadata(m.w, "{\"format\": \"pt\"}"),
                   DECOMP_OK);
  ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_OK);
  ck_assert_str_eq(decomp_weights_metadata(decomp_result_weights(r)),
                   "{\"format\":\"pt\"}");
  decomp_result_free(r);
  decomp_weights_set_metadata(m.w, NULL);
  ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_OK);
  ck_assert_ptr_null(decomp_weights_metadata(decomp_result_weights(r)));
  decomp_result_free(r);
  model_free(&m);
}
END_TEST

START_TEST(nonfinite_weight_fails_naming_the_layer) {
  for (int inf = 0; inf < 2; inf++) {
    model m;
    model_init(&m, DECOMP_DTYPE_F32);
    ((float *)m.conv2_w)[4 * 15 + 7] = inf ? INFINITY : NAN; /* [1,0,1,2] */
    decomp_result *r = NULL;
    ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_ERR_NONFINITE);
    ck_assert_ptr_null(r);
    const char *msg = decomp_errmsg(m.ctx);
    ck_assert_msg(strstr(msg, "conv2") && strstr(msg, inf ? "Inf" : "NaN") &&
                      strstr(msg, "[1, 0, 1, 2]"),
                  "message: %s", msg);
    model_free(&m);
  }
}
END_TEST

struct trace {
  int calls;
  int cancel_at;      /* call number that returns 1, or -1 */
  char log[1024];
};

static int on_progress(void *user, const decomp_progress *p) {
  struct trace *t = user;
  size_t len = strlen(t->log);
  snprintf(t->log + len, sizeof t->log - len, "%s:%d:%zu/%zu:%lld;", p->layer,
           p->phase, p->index, p->total, (long long)p->rank);
  return t->calls++ == t->cancel_at;
}

START_TEST(progress_reports_each_layer_and_cancels) {
  model m;
  model_init(&m, DECOMP_DTYPE_F32);
  struct trace t = {.cancel_at = -1};
  decomp_options opts = {.progress = on_progress, .progress_user = &t};
  decomp_result *r = NULL;
  ck_assert_int_eq(run(&m, FIXED2, &opts, &r), DECOMP_OK);
  /* fixed rank needs no spectrum: START and DONE for each decomposed conv,
   * DONE for the 1×1 head; BatchNorm and Linear are not Conv2d layers. */
  ck_assert_str_eq(t.log, "conv1:1:0/3:2;conv1:2:0/3:2;conv2:1:1/3:2;"
                          "conv2:2:1/3:2;head:2:2/3:0;");
  decomp_result_free(r);

  for (int at = 0; at < 5; at++) {
    struct trace c = {.cancel_at = at};
    opts.progress_user = &c;
    r = NULL;
    ck_assert_int_eq(run(&m, FIXED2, &opts, &r), DECOMP_ERR_CANCELLED);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(c.calls, at + 1);
  }
  model_free(&m);
}
END_TEST

START_TEST(output_keeps_the_input_dtype) {
  static const decomp_dtype dts[] = {DECOMP_DTYPE_F16, DECOMP_DTYPE_BF16,
                                     DECOMP_DTYPE_F64, DECOMP_DTYPE_F32};
  for (size_t k = 0; k < 4; k++) {
    model m;
    model_init(&m, dts[k]);
    /* At full rank (24) the pair rebuilds the kernel within the dtype's
     * precision. */
    decomp_layer l = conv("conv1", 8, 8, 3, 3, 1, true);
    decomp_tensor t = *decomp_weights_find(m.w, "conv1.weight");
    core_factors f;
    int bits = dts[k] == DECOMP_DTYPE_F64 ? 64 : 32;
    ck_assert_int_eq(core_factorize(m.ctx, &l, &t, CORE_ORDER_VERTICAL_FIRST,
                                    24, bits, false, &f),
                     DECOMP_OK);
    ck_assert_int_eq(f.dtype, dts[k]);
    double *fa = as_f64(f.first, dts[k], 24 * 8 * 3);
    double *fb = as_f64(f.second, dts[k], 8 * 24 * 3);
    double *W = as_f64(m.conv1_w, dts[k], 8 * 8 * 9);
    double K[8 * 8 * 9];
    effective_kernel(&l, true, 24, fa, fb, K);
    double tol = dts[k] == DECOMP_DTYPE_F64   ? 1e-12
                 : dts[k] == DECOMP_DTYPE_F32 ? 1e-5
                 : dts[k] == DECOMP_DTYPE_F16 ? 5e-3
                                              : 3e-2;
    double e = rel_diff(K, W, 8 * 8 * 9);
    ck_assert_msg(e < tol, "dtype %s: error %g", decomp_dtype_name(dts[k]), e);
    free(fa);
    free(fb);
    free(W);
    core_factors_clear(&f);
    /* Through decomp_decompose: every new tensor in the input's dtype. */
    decomp_result *r = NULL;
    ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_OK);
    const decomp_weights *rw = decomp_result_weights(r);
    static const char *const names[] = {"conv1.0.weight", "conv1.1.weight",
                                        "conv2.0.weight", "conv2.1.weight"};
    for (size_t i = 0; i < 4; i++)
      ck_assert_int_eq(decomp_weights_find(rw, names[i])->dtype, dts[k]);
    decomp_result_free(r);
    model_free(&m);
  }
}
END_TEST

/* One grouped conv, large enough for the Gram spectrum and the block Krylov
 * path (k = 600 per group), of `data` in dtype dt, decomposed under
 * `policy` with `opts` (WORKING reports every `interval` s; < 0: the
 * default). The run's code; its result in *out. large_free releases it. */
typedef struct large {
  decomp_ctx *ctx;
  decomp_weights *w;
  decomp_spec *spec;
  decomp_policy *p;
  decomp_result *r;
} large;

static int large_run(large *L, decomp_dtype dt, const void *data,
                     const char *policy, const decomp_options *opts,
                     double interval) {
  memset(L, 0, sizeof *L);
  L->ctx = decomp_ctx_new();
  if (interval >= 0)
    decomp_ctx_set_progress_interval(L->ctx, interval);
  ck_assert_int_eq(decomp_weights_new(L->ctx, &L->w), DECOMP_OK);
  decomp_tensor t = tensor4("c.weight", dt, data, 400, 200, 3, 3);
  ck_assert_int_eq(decomp_weights_add(L->w, &t), DECOMP_OK);
  ck_assert_int_eq(decomp_spec_new(L->ctx, &L->spec), DECOMP_OK);
  decomp_layer l = conv("c", 400, 400, 3, 3, 2, false);
  ck_assert_int_eq(decomp_spec_add(L->ctx, L->spec, &l), DECOMP_OK);
  ck_assert_int_eq(decomp_policy_parse(L->ctx, policy, &L->p), DECOMP_OK);
  return decomp_decompose(L->ctx, L->w, L->spec, L->p, opts, &L->r);
}

static void large_free(large *L) {
  decomp_result_free(L->r);
  decomp_policy_free(L->p);
  decomp_spec_free(L->spec);
  decomp_weights_free(L->w);
  decomp_ctx_free(L->ctx);
}

/* The large conv's two factors as float32 and its info's text. */
static void decompose_large(decomp_dtype dt, const void *data,
                            const char *policy, float **first, float **second,
                            char **info) {
  large L;
  ck_assert_int_eq(large_run(&L, dt, data, policy, NULL, -1), DECOMP_OK);
  const decomp_weights *rw = decomp_result_weights(L.r);
  const decomp_tensor *f = decomp_weights_find(rw, "c.0.weight");
  const decomp_tensor *g = decomp_weights_find(rw, "c.1.weight");
  size_t nf = (size_t)decomp_tensor_numel(f), ng = (size_t)decomp_tensor_numel(g);
  *first = malloc(nf * sizeof **first);
  *second = malloc(ng * sizeof **second);
  ck_assert(core_tensor_to_f32(f, *first));
  ck_assert(core_tensor_to_f32(g, *second));
  *info = strdup(decomp_result_info(L.r));
  large_free(&L);
}

START_TEST(a_converted_large_kernel_gives_the_factors_of_its_float32_twin) {
  /* A float16 kernel is converted to float32 for the engine, and that copy
   * is released once the last group is gathered (or its Gram matrix
   * built): the factors must be those of the same values given as float32,
   * rounded to float16, in both phases (a spectrum policy) and both paths
   * (Gram spectrum, block Krylov). */
  size_t n = 400 * 200 * 9;
  float *w32 = malloc(n * sizeof *w32);
  uint16_t *w16 = malloc(n * sizeof *w16);
  for (size_t i = 0; i < n; i++) {
    w16[i] = core_float_to_half((float)urand() * (1.0f + (float)(i % 97)));
    w32[i] = core_half_to_float(w16[i]);
  }
  static const char *const policies[] = {
      "{\"name\": \"energy\", \"energy\": 0.6}",
      "{\"name\": \"fixed\", \"rank\": 64}"};
  for (size_t k = 0; k < 2; k++) {
    float *a1, *b1, *a2, *b2;
    char *i1, *i2;
    decompose_large(DECOMP_DTYPE_F16, w16, policies[k], &a1, &b1, &i1);
    decompose_large(DECOMP_DTYPE_F32, w32, policies[k], &a2, &b2, &i2);
    json_t *j1 = json_loads(i1, 0, NULL), *j2 = json_loads(i2, 0, NULL);
    json_t *l1 = json_array_get(json_object_get(j1, "layers"), 0);
    json_t *l2 = json_array_get(json_object_get(j2, "layers"), 0);
    int64_t R = json_integer_value(json_object_get(l1, "rank"));
    ck_assert_int_eq(R, json_integer_value(json_object_get(l2, "rank")));
    ck_assert_int_gt(R, 0);
    size_t nf = (size_t)(2 * R * 200 * 3), ns = (size_t)(400 * R * 3);
    for (size_t x = 0; x < nf; x++)
      ck_assert_uint_eq(core_float_to_half(a2[x]), core_float_to_half(a1[x]));
    for (size_t x = 0; x < ns; x++)
      ck_assert_uint_eq(core_float_to_half(b2[x]), core_float_to_half(b1[x]));
    json_decref(j1);
    json_decref(j2);
    free(a1), free(b1), free(a2), free(b2), free(i1), free(i2);
  }
  free(w32);
  free(w16);
}
END_TEST

struct working {
  int events, cancel_at; /* WORKING events seen; the one that cancels, or -1 */
  int phases[4];
  double last;           /* the last fraction of the current step */
  int step_phase;        /* SPECTRUM or START: the step being reported */
  bool monotone, bounded;
};

static int on_working(void *user, const decomp_progress *p) {
  struct working *w = user;
  w->phases[p->phase]++;
  if (p->phase == DECOMP_PHASE_SPECTRUM || p->phase == DECOMP_PHASE_START) {
    w->step_phase = p->phase;
    w->last = 0;
  }
  if (p->phase != DECOMP_PHASE_WORKING)
    return 0;
  w->bounded = w->bounded && p->fraction >= 0 && p->fraction < 1 &&
               p->seconds >= 0 && strcmp(p->layer, "c") == 0;
  w->monotone = w->monotone && p->fraction >= w->last;
  w->last = p->fraction;
  return w->events++ == w->cancel_at;
}

/* The large conv on the calling thread (threads = 1) with every WORKING
 * event reported (interval 0). */
static int run_working(const char *policy, struct working *w) {
  float *data = random_f32(400 * 200 * 9);
  decomp_options opts = {.progress = on_working, .progress_user = w,
                         .threads = 1};
  large L;
  int rc = large_run(&L, DECOMP_DTYPE_F32, data, policy, &opts, 0);
  if (rc == DECOMP_ERR_CANCELLED) {
    ck_assert_ptr_null(L.r);
    ck_assert_str_eq(decomp_errmsg(L.ctx), "cancelled at layer c");
  }
  large_free(&L);
  free(data);
  return rc;
}

START_TEST(a_long_layer_reports_progress_inside_and_cancels_there) {
  /* The spectrum's Gram slabs (energy needs a spectrum) and the Krylov
   * blocks of both groups report WORKING events, their fraction rising
   * through each step. */
  struct working w = {.cancel_at = -1, .monotone = true, .bounded = true};
  ck_assert_int_eq(run_working("{\"name\": \"energy\", \"energy\": 0.3}", &w),
                   DECOMP_OK);
  ck_assert_int_gt(w.events, 4);
  ck_assert(w.monotone);
  ck_assert(w.bounded);
  ck_assert_int_eq(w.phases[DECOMP_PHASE_SPECTRUM], 1);
  ck_assert_int_eq(w.phases[DECOMP_PHASE_START], 1);
  ck_assert_int_eq(w.phases[DECOMP_PHASE_DONE], 1);
  /* A fixed rank: no spectrum, WORKING events from the factorization. */
  struct working f = {.cancel_at = -1, .monotone = true, .bounded = true};
  ck_assert_int_eq(run_working("{\"name\": \"fixed\", \"rank\": 64}", &f),
                   DECOMP_OK);
  ck_assert_int_gt(f.events, 2);
  ck_assert(f.monotone);
  /* Cancelling from inside the layer stops the run there. */
  for (int at = 0; at < 3; at++) {
    struct working c = {.cancel_at = at, .monotone = true, .bounded = true};
    ck_assert_int_eq(run_working("{\"name\": \"fixed\", \"rank\": 64}", &c),
                     DECOMP_ERR_CANCELLED);
    ck_assert_int_eq(c.events, at + 1);
    ck_assert_int_eq(c.phases[DECOMP_PHASE_DONE], 0);
  }
}
END_TEST

START_TEST(info_lists_decomposed_and_skipped_layers) {
  model m;
  model_init(&m, DECOMP_DTYPE_F32);
  decomp_result *r = NULL;
  ck_assert_int_eq(run(&m, FIXED2, NULL, &r), DECOMP_OK);
  json_t *j = json_loads(decomp_result_info(r), 0, NULL);
  ck_assert_ptr_nonnull(j);
  json_t *layers = json_object_get(j, "layers");
  ck_assert_uint_eq(json_array_size(layers), 2);
  ck_assert_str_eq(json_string_value(json_object_get(json_array_get(layers, 0),
                                                     "name")),
                   "conv1");
  json_t *skipped = json_object_get(j, "skipped");
  ck_assert_uint_eq(json_array_size(skipped), 3);
  const char *names[] = {"bn", "head", "fc"};
  for (size_t i = 0; i < 3; i++) {
    json_t *s = json_array_get(skipped, i);
    ck_assert_str_eq(json_string_value(json_object_get(s, "name")), names[i]);
    ck_assert(strlen(json_string_value(json_object_get(s, "reason"))) > 0);
  }
  ck_assert_str_eq(
      json_string_value(json_object_get(json_array_get(skipped, 2), "reason")),
      "Linear given without in_features/out_features in the spec");
  json_decref(j);
  decomp_result_free(r);
  model_free(&m);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("decompose");
  TCase *f = tcase_create("factorize");
  tcase_add_test(f, full_rank_pair_reproduces_the_kernel_in_both_orders_and_groups);
  tcase_add_test(f, rank_r_error_is_the_discarded_energy);
  tcase_add_test(f, values_only_spectrum_matches_the_factorization);
  tcase_add_test(f, strided_weights_are_read_through_their_strides);
  suite_add_tcase(s, f);
  TCase *d = tcase_create("decompose");
  tcase_set_timeout(d, 60);
  tcase_add_test(d, result_keeps_input_order_and_replaces_decomposed_layers_in_place);
  tcase_add_test(d, torch_metadata_gains_the_sequential_and_its_two_convs);
  tcase_add_test(d, nonfinite_weight_fails_naming_the_layer);
  tcase_add_test(d, progress_reports_each_layer_and_cancels);
  tcase_add_test(d, output_keeps_the_input_dtype);
  tcase_add_test(
      d, a_converted_large_kernel_gives_the_factors_of_its_float32_twin);
  tcase_add_test(d, a_long_layer_reports_progress_inside_and_cancels_there);
  tcase_add_test(d, info_lists_decomposed_and_skipped_layers);
  suite_add_tcase(s, d);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
