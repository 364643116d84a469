/* test_info.c — decompose_info.json: the structure a run writes, reading it
 * back (decomp_info_normalize round trip), reading the reference tool's own
 * info files (fixtures), and errors that name the layer and the field. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = '\0';
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* A run over: conv (8→8 3×3, bias, padding 1), same (4→8 3×5 padding
 * 'same', reflect, no bias), act (ReLU). Returns the info text. */
static char *run_info(decomp_ctx *ctx, const char *policy_text, bool spectra,
                      float **keep) {
  static const int64_t n1 = 8 * 8 * 9, n2 = 8 * 4 * 15;
  float *buf = malloc((size_t)(n1 + n2 + 8) * sizeof *buf);
  uint32_t x = 12345;
  for (int64_t i = 0; i < n1 + n2 + 8; i++) {
    x = x * 1664525u + 1013904223u;
    buf[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
  }
  *keep = buf;
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  decomp_tensor ts[] = {
      {.name = "conv.weight", .dtype = DECOMP_DTYPE_F32, .ndim = 4,
       .shape = {8, 8, 3, 3}, .stride = {72, 9, 3, 1}, .data = buf},
      {.name = "conv.bias", .dtype = DECOMP_DTYPE_F32, .ndim = 1,
       .shape = {8}, .stride = {1}, .data = buf + n1 + n2},
      {.name = "same.weight", .dtype = DECOMP_DTYPE_F32, .ndim = 4,
       .shape = {8, 4, 3, 5}, .stride = {60, 15, 5, 1}, .data = buf + n1},
  };
  for (size_t i = 0; i < 3; i++)
    ck_assert_int_eq(decomp_weights_add(w, &ts[i]), DECOMP_OK);
  decomp_spec *spec;
  const char *sj =
      "{\"layers\": ["
      "{\"name\": \"conv\", \"type\": \"Conv2d\", \"in_channels\": 8, "
      "\"out_channels\": 8, \"kernel_size\": 3, \"stride\": 1, \"padding\": 1,"
      " \"dilation\": 1, \"groups\": 1, \"bias\": true, "
      "\"padding_mode\": \"zeros\"},"
      "{\"name\": \"same\", \"type\": \"Conv2d\", \"in_channels\": 4, "
      "\"out_channels\": 8, \"kernel_size\": [3, 5], \"stride\": 1, "
      "\"padding\": \"same\", \"dilation\": 1, \"groups\": 1, \"bias\": false,"
      " \"padding_mode\": \"reflect\"},"
      "{\"name\": \"act\", \"type\": \"ReLU\"}]}";
  ck_assert_int_eq(decomp_spec_parse(ctx, sj, strlen(sj), &spec), DECOMP_OK);
  decomp_policy *p;
  ck_assert_int_eq(decomp_policy_parse(ctx, policy_text, &p), DECOMP_OK);
  decomp_options opts = {.source_digest = "sha256:abc", .record_spectra = spectra};
  decomp_result *r;
  ck_assert_msg(decomp_decompose(ctx, w, spec, p, &opts, &r) == DECOMP_OK, "%s",
                decomp_errmsg(ctx));
  char *info = strdup(decomp_result_info(r));
  decomp_result_free(r);
  decomp_policy_free(p);
  decomp_spec_free(spec);
  decomp_weights_free(w);
  return info;
}

static json_t *get(json_t *o, const char *path) { /* "a.b.0.c" */
  char buf[256];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *tok = strtok(buf, "."); tok && o; tok = strtok(NULL, "."))
    o = json_is_array(o) ? json_array_get(o, strtoul(tok, NULL, 10))
                         : json_object_get(o, tok);
  ck_assert_msg(o != NULL, "no %s", path);
  return o;
}

static void assert_json(json_t *o, const char *path, const char *want) {
  json_t *w = json_loads(want, JSON_DECODE_ANY, NULL);
  ck_assert_msg(w != NULL, "bad expectation %s", want);
  char *got = json_dumps(get(o, path), JSON_COMPACT | JSON_ENCODE_ANY);
  ck_assert_msg(json_equal(get(o, path), w), "%s is %s, want %s", path, got,
                want);
  free(got);
  json_decref(w);
}

START_TEST(run_info_has_the_documented_structure) {
  decomp_ctx *ctx = decomp_ctx_new();
  float *keep;
  char *text = run_info(ctx, "{\"name\": \"fixed\", \"rank\": 3}", true, &keep);
  json_t *j = json_loads(text, 0, NULL);
  ck_assert_ptr_nonnull(j);
  assert_json(j, "format", "\"decompd.decompose_info\"");
  assert_json(j, "version", "1");
  assert_json(j, "created_by", "\"decompd " DECOMP_VERSION "\"");
  assert_json(j, "source", "{\"digest\": \"sha256:abc\", \"format\": \"unknown\"}");
  assert_json(j, "policy.name", "\"fixed\"");
  ck_assert_uint_eq(json_array_size(get(j, "layers")), 2);
  /* conv: square, cin == cout: vertical-first. */
  assert_json(j, "layers.0.name", "\"conv\"");
  assert_json(j, "layers.0.method", "\"spatial_svd\"");
  assert_json(j, "layers.0.rank", "3");
  assert_json(j, "layers.0.max_rank", "24");
  assert_json(j, "layers.0.order", "\"vertical_first\"");
  assert_json(j, "layers.0.original",
              "{\"type\": \"Conv2d\", \"in_channels\": 8, \"out_channels\": 8,"
              " \"kernel_size\": [3, 3], \"stride\": [1, 1], \"padding\": [1, 1],"
              " \"dilation\": [1, 1], \"groups\": 1, \"bias\": true,"
              " \"padding_mode\": \"zeros\"}");
  assert_json(j, "layers.0.modules",
              "[{\"name\": \"conv.0\", \"type\": \"Conv2d\", \"in_channels\": 8,"
              " \"out_channels\": 3, \"kernel_size\": [3, 1], \"stride\": [1, 1],"
              " \"padding\": [1, 0], \"dilation\": [1, 1], \"groups\": 1,"
              " \"bias\": false, \"padding_mode\": \"zeros\"},"
              " {\"name\": \"conv.1\", \"type\": \"Conv2d\", \"in_channels\": 3,"
              " \"out_channels\": 8, \"kernel_size\": [1, 3], \"stride\": [1, 1],"
              " \"padding\": [0, 1], \"dilation\": [1, 1], \"groups\": 1,"
              " \"bias\": true, \"padding_mode\": \"zeros\"}]");
  /* same: 4→8 3×5: horizontal-first is cheaper (4·5 + 8·3 < 4·3 + 8·5);
   * padding 'same' stays 'same' on both convs. */
  assert_json(j, "layers.1.order", "\"horizontal_first\"");
  assert_json(j, "layers.1.max_rank", "20");
  assert_json(j, "layers.1.modules.0.kernel_size", "[1, 5]");
  assert_json(j, "layers.1.modules.1.kernel_size", "[3, 1]");
  assert_json(j, "layers.1.modules.0.padding", "\"same\"");
  assert_json(j, "layers.1.modules.1.padding", "\"same\"");
  assert_json(j, "layers.1.modules.1.padding_mode", "\"reflect\"");
  /* Stats: counts per the cost model, error = sqrt(1 - energy_retained). */
  assert_json(j, "layers.0.stats.params_before", "584");
  assert_json(j, "layers.0.stats.params_after", "152"); /* 3·(24 + 24) + 8 */
  json_t *st = get(j, "layers.0.stats");
  double rel = json_real_value(get(st, "relative_error"));
  double kept = json_real_value(get(st, "energy_retained"));
  ck_assert_double_gt(rel, 0.1);
  ck_assert_double_eq_tol(rel * rel, 1 - kept, 1e-6);
  ck_assert_uint_eq(json_array_size(get(st, "singular_values")), 24);
  ck_assert_double_gt(json_real_value(get(st, "macs_ratio")), 0);
  ck_assert_uint_eq(json_array_size(get(j, "skipped")), 1);
  assert_json(j, "skipped.0", "{\"name\": \"act\", \"reason\": \"not a Conv2d or Linear\"}");
  assert_json(j, "changes",
              "{\"conv\": [\"conv.0\", \"conv.1\"], \"same\": [\"same.0\", "
              "\"same.1\"]}");
  assert_json(j, "summary.layers_decomposed", "2");
  assert_json(j, "summary.layers_skipped", "1");
  ck_assert_double_ge(json_real_value(get(j, "summary.worst_relative_error")),
                      rel);
  json_decref(j);
  free(text);
  free(keep);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(our_info_reads_back_unchanged) {
  decomp_ctx *ctx = decomp_ctx_new();
  float *keep;
  char *text = run_info(ctx, "{\"name\": \"fixed\", \"rank\": 2}", false, &keep);
  char *norm = NULL;
  ck_assert_msg(decomp_info_normalize(ctx, text, strlen(text), &norm) ==
                    DECOMP_OK,
                "%s", decomp_errmsg(ctx));
  json_t *a = json_loads(text, 0, NULL), *b = json_loads(norm, 0, NULL);
  ck_assert(json_equal(a, b));
  json_decref(a);
  json_decref(b);
  decomp_free(norm);
  free(text);
  free(keep);
  decomp_ctx_free(ctx);
}
END_TEST

static json_t *normalize_file(decomp_ctx *ctx, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
  size_t len;
  char *text = slurp(path, &len);
  char *out = NULL;
  ck_assert_msg(decomp_info_normalize(ctx, text, len, &out) == DECOMP_OK,
                "%s", decomp_errmsg(ctx));
  free(text);
  json_t *j = json_loads(out, 0, NULL);
  ck_assert_ptr_nonnull(j);
  /* What we produce we also accept. */
  char *again = NULL;
  ck_assert_msg(decomp_info_normalize(ctx, out, strlen(out), &again) ==
                    DECOMP_OK,
                "%s", decomp_errmsg(ctx));
  decomp_free(again);
  decomp_free(out);
  return j;
}

START_TEST(reference_modes_file_maps_to_our_orders_and_ranks) {
  decomp_ctx *ctx = decomp_ctx_new();
  json_t *j = normalize_file(ctx, "amct_modes_decompose_info.json");
  assert_json(j, "format", "\"decompd.decompose_info\"");
  assert_json(j, "policy.name", "\"amct\"");
  ck_assert_uint_eq(json_array_size(get(j, "layers")), 4);
  static const struct {
    const char *name, *mode, *order;
    int rank;
  } want[] = {{"a", "SCFK", "vertical_first", 32},
              {"b", "SCSK", "horizontal_first", 64},
              {"c", "FCFK", "horizontal_first", 48},
              {"d", "FCSK", "vertical_first", 32}};
  for (size_t i = 0; i < 4; i++) {
    json_t *l = json_array_get(get(j, "layers"), i);
    ck_assert_str_eq(json_string_value(get(l, "name")), want[i].name);
    ck_assert_str_eq(json_string_value(get(l, "reference_mode")), want[i].mode);
    ck_assert_str_eq(json_string_value(get(l, "order")), want[i].order);
    ck_assert_int_eq(json_integer_value(get(l, "rank")), want[i].rank);
    ck_assert_ptr_null(json_object_get(l, "stats"));
  }
  /* b: 128→128 (5,3) stride (2,1), horizontal-first: (1,3) then (5,1). */
  assert_json(j, "layers.1.modules",
              "[{\"name\": \"b.0\", \"type\": \"Conv2d\", \"in_channels\": 128,"
              " \"out_channels\": 64, \"kernel_size\": [1, 3],"
              " \"stride\": [1, 1], \"dilation\": [1, 1], \"groups\": 1},"
              " {\"name\": \"b.1\", \"type\": \"Conv2d\", \"in_channels\": 64,"
              " \"out_channels\": 128, \"kernel_size\": [5, 1],"
              " \"stride\": [2, 1], \"dilation\": [1, 1], \"groups\": 1}]");
  assert_json(j, "layers.3.modules.0.stride", "[2, 1]");
  assert_json(j, "layers.3.modules.1.stride", "[1, 2]");
  assert_json(j, "layers.0.max_rank", "192"); /* min(64·3, 128·5) */
  assert_json(j, "changes.c", "[\"c.0\", \"c.1\"]");
  json_decref(j);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(reference_resnet18_file_reads_all_seventeen_layers) {
  decomp_ctx *ctx = decomp_ctx_new();
  json_t *j = normalize_file(ctx, "amct_resnet18_decompose_info.json");
  json_t *layers = get(j, "layers");
  ck_assert_uint_eq(json_array_size(layers), 17);
  size_t i;
  json_t *l;
  json_array_foreach(layers, i, l) ck_assert_str_eq(
      json_string_value(get(l, "order")), "vertical_first");
  assert_json(j, "layers.0.name", "\"conv1\"");
  assert_json(j, "layers.0.rank", "16");
  assert_json(j, "layers.0.modules.0.stride", "[2, 1]");
  assert_json(j, "layers.0.modules.1.kernel_size", "[1, 7]");
  assert_json(j, "layers.16.name", "\"layer4.1.conv2\"");
  assert_json(j, "layers.16.rank", "304");
  ck_assert_uint_eq(json_object_size(get(j, "changes")), 17);
  json_decref(j);
  decomp_ctx_free(ctx);
}
END_TEST

/* Normalize `text` with `from` replaced by `to` (first occurrence); expect
 * BAD_INFO with every one of `needles` in the message. */
static void expect_bad(const char *text, const char *from, const char *to,
                       const char *n1, const char *n2) {
  const char *at = strstr(text, from);
  ck_assert_msg(at != NULL, "no %s in the text", from);
  size_t len = strlen(text) - strlen(from) + strlen(to);
  char *t = malloc(len + 1);
  size_t pre = (size_t)(at - text);
  memcpy(t, text, pre);
  strcpy(t + pre, to);
  strcat(t, at + strlen(from));
  decomp_ctx *ctx = decomp_ctx_new();
  char *out = NULL;
  ck_assert_int_eq(decomp_info_normalize(ctx, t, len, &out), DECOMP_ERR_BAD_INFO);
  ck_assert_ptr_null(out);
  const char *msg = decomp_errmsg(ctx);
  ck_assert_msg(strstr(msg, n1) && (!n2 || strstr(msg, n2)),
                "message \"%s\" lacks %s / %s", msg, n1, n2 ? n2 : "");
  decomp_ctx_free(ctx);
  free(t);
}

START_TEST(bad_info_files_are_refused_naming_layer_and_field) {
  char path[1024];
  size_t len;
  snprintf(path, sizeof path, "%s/amct_modes_decompose_info.json", FIXTURES);
  char *ref = slurp(path, &len);
  expect_bad(ref, "\"SCSK\"", "\"SCXK\"", "layer b", "mode");
  expect_bad(ref, "\t\t\t\t\t64,\n\t\t\t\t\t128,\n\t\t\t\t\t1,",
             "\t\t\t\t\t64,\n\t\t\t\t\t128,\n\t\t\t\t\t3,", "layer b",
             "decom_nodes.first.weight_shape");
  expect_bad(ref, "\"in_channels\": 64", "\"in_channels\": \"64\"", "layer a",
             "in_channels");
  expect_bad(ref, "[", "{", "not JSON", NULL);
  free(ref);

  decomp_ctx *ctx = decomp_ctx_new();
  float *keep;
  char *ours = run_info(ctx, "{\"name\": \"fixed\", \"rank\": 3}", false, &keep);
  expect_bad(ours, "\"version\": 1", "\"version\": 2", "version 2", NULL);
  expect_bad(ours, "\"spatial_svd\",\n      \"rank\": 3",
             "\"spatial_svd\",\n      \"rank\": 99", "layer conv", "rank 99");
  expect_bad(ours, "\"order\": \"vertical_first\"", "\"order\": \"diagonal\"",
             "layer conv", "order");
  expect_bad(ours, "\"kernel_size\": [\n            3,\n            1\n",
             "\"kernel_size\": [\n            3,\n            3\n", "layer conv",
             "modules[0].kernel_size");
  expect_bad(ours, "\"method\": \"spatial_svd\"", "\"method\": \"tucker\"",
             "layer conv", "method");
  expect_bad(ours, "\"conv.1\"\n", "\"conv.2\"\n", "changes.conv", NULL);
  free(ours);
  free(keep);
  decomp_ctx_free(ctx);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("info");
  TCase *t = tcase_create("info");
  tcase_add_test(t, run_info_has_the_documented_structure);
  tcase_add_test(t, our_info_reads_back_unchanged);
  tcase_add_test(t, reference_modes_file_maps_to_our_orders_and_ranks);
  tcase_add_test(t, reference_resnet18_file_reads_all_seventeen_layers);
  tcase_add_test(t, bad_info_files_are_refused_naming_layer_and_field);
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
