/* test_spec.c — the layer spec: parsing with torch's defaults, every
 * validation error naming its layer and field, building by hand, canonical
 * JSON, and the check against a weight set. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

/* Parse `json`; expect `want` and, on failure, `needle` in the message. */
static void expect_parse(const char *json, int want, const char *needle) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *s = NULL;
  int rc = decomp_spec_parse(ctx, json, strlen(json), &s);
  if (rc != want || (needle && !strstr(decomp_errmsg(ctx), needle)))
    ck_abort_msg("parse %s: got %d \"%s\", want %d with \"%s\"", json, rc,
                 decomp_errmsg(ctx), want, needle ? needle : "");
  if (rc == DECOMP_OK)
    ck_assert_ptr_nonnull(s);
  else
    ck_assert_ptr_null(s);
  decomp_spec_free(s);
  decomp_ctx_free(ctx);
}

START_TEST(omitted_fields_take_torch_defaults) {
  const char *j = "{\"format\": \"decompd.spec\", \"version\": 1, \"layers\": ["
                  "{\"name\": \"conv1\", \"type\": \"Conv2d\", \"in_channels\": 3,"
                  " \"out_channels\": 64, \"kernel_size\": 7}]}";
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *s;
  ck_assert_int_eq(decomp_spec_parse(ctx, j, strlen(j), &s), DECOMP_OK);
  ck_assert_uint_eq(decomp_spec_count(s), 1);
  const decomp_layer *l = decomp_spec_at(s, 0);
  ck_assert_str_eq(l->name, "conv1");
  ck_assert_int_eq(l->kernel_size[0], 7);
  ck_assert_int_eq(l->kernel_size[1], 7);
  ck_assert_int_eq(l->stride[0], 1);
  ck_assert_int_eq(l->stride[1], 1);
  ck_assert_int_eq(l->padding[0], 0);
  ck_assert_int_eq(l->dilation[1], 1);
  ck_assert_int_eq(l->groups, 1);
  ck_assert(l->bias);
  ck_assert_int_eq(l->padding_mode, DECOMP_PAD_ZEROS);
  ck_assert_int_eq(l->padding_kind, DECOMP_PADDING_EXPLICIT);
  ck_assert_int_eq(l->input_size[0], 0);
  ck_assert_ptr_eq(decomp_spec_find(s, "conv1"), l);
  ck_assert_ptr_null(decomp_spec_find(s, "conv2"));
  decomp_spec_free(s);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(bare_list_pairs_and_other_modules) {
  const char *j =
      "[{\"name\": \"a\", \"type\": \"Conv2d\", \"in_channels\": 64,"
      " \"out_channels\": 128, \"kernel_size\": [3, 5], \"stride\": [2, 1],"
      " \"padding\": [1, 2], \"dilation\": [1, 2], \"groups\": 2,"
      " \"bias\": false, \"padding_mode\": \"reflect\", \"input_size\": [56, 40]},"
      " {\"name\": \"bn\", \"type\": \"BatchNorm2d\", \"num_features\": 128},"
      " {\"name\": \"b\", \"type\": \"Conv2d\", \"in_channels\": 8,"
      " \"out_channels\": 8, \"kernel_size\": 3, \"padding\": \"same\","
      " \"dilation\": 2},"
      " {\"name\": \"c\", \"type\": \"Conv2d\", \"in_channels\": 8,"
      " \"out_channels\": 8, \"kernel_size\": 3, \"padding\": \"valid\","
      " \"input_size\": null}]";
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *s;
  ck_assert_int_eq(decomp_spec_parse(ctx, j, strlen(j), &s), DECOMP_OK);
  ck_assert_uint_eq(decomp_spec_count(s), 4);
  const decomp_layer *a = decomp_spec_find(s, "a");
  ck_assert_int_eq(a->kernel_size[0], 3);
  ck_assert_int_eq(a->kernel_size[1], 5);
  ck_assert_int_eq(a->stride[0], 2);
  ck_assert_int_eq(a->padding[1], 2);
  ck_assert_int_eq(a->dilation[1], 2);
  ck_assert_int_eq(a->groups, 2);
  ck_assert(!a->bias);
  ck_assert_int_eq(a->padding_mode, DECOMP_PAD_REFLECT);
  ck_assert_int_eq(a->input_size[0], 56);
  int64_t out[2];
  ck_assert(core_layer_output_size(a, out));
  ck_assert_int_eq(out[0], 28); /* (56 + 2 - 3) / 2 + 1 */
  ck_assert_int_eq(out[1], 36); /* 40 + 4 - 2·4 - 1 + 1 */
  const decomp_layer *bn = decomp_spec_at(s, 1);
  ck_assert_str_eq(bn->type, "BatchNorm2d");
  ck_assert(!core_layer_is_conv(bn));
  const decomp_layer *b = decomp_spec_find(s, "b");
  ck_assert_int_eq(b->padding_kind, DECOMP_PADDING_SAME);
  int64_t lo[2], hi[2];
  core_layer_padding(b, lo, hi);
  ck_assert_int_eq(lo[0], 2);
  ck_assert_int_eq(hi[0], 2);
  ck_assert_int_eq(decomp_spec_find(s, "c")->padding_kind,
                   DECOMP_PADDING_VALID);
  decomp_spec_free(s);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(same_padding_splits_odd_totals_like_torch) {
  decomp_layer l = {.name = "x", .type = "Conv2d", .in_channels = 4,
                    .out_channels = 4, .kernel_size = {4, 3},
                    .stride = {1, 1}, .dilation = {1, 1}, .groups = 1,
                    .padding_kind = DECOMP_PADDING_SAME,
                    .input_size = {10, 9}};
  int64_t lo[2], hi[2], out[2];
  core_layer_padding(&l, lo, hi);
  ck_assert_int_eq(lo[0], 1);
  ck_assert_int_eq(hi[0], 2);
  ck_assert_int_eq(lo[1], 1);
  ck_assert_int_eq(hi[1], 1);
  ck_assert(core_layer_output_size(&l, out));
  ck_assert_int_eq(out[0], 10);
  ck_assert_int_eq(out[1], 9);
}
END_TEST

#define CONV(extra)                                                            \
  "{\"layers\": [{\"name\": \"ok\", \"type\": \"Conv2d\", \"in_channels\": 8,"  \
  " \"out_channels\": 8, \"kernel_size\": 3}, {\"name\": \"layer1.0.conv1\","   \
  " \"type\": \"Conv2d\", \"in_channels\": 64, \"out_channels\": 64" extra "}]}"

START_TEST(every_error_names_the_layer_and_the_field) {
  expect_parse(CONV(", \"kernel_size\": 3, \"groups\": 3"), DECOMP_ERR_BAD_SPEC,
               "layers[1] (layer1.0.conv1): groups 3 does not divide "
               "in_channels 64");
  expect_parse("[{\"name\": \"x\", \"type\": \"Conv2d\", \"in_channels\": 64,"
               " \"out_channels\": 30, \"kernel_size\": 3, \"groups\": 4}]",
               DECOMP_ERR_BAD_SPEC,
               "layers[0] (x): groups 4 does not divide out_channels 30");
  expect_parse(CONV(""), DECOMP_ERR_BAD_SPEC,
               "layers[1] (layer1.0.conv1): missing field kernel_size");
  expect_parse(CONV(", \"kernel_size\": 0"), DECOMP_ERR_BAD_SPEC,
               "layers[1] (layer1.0.conv1): kernel_size [0, 0] must be >= 1");
  expect_parse(CONV(", \"kernel_size\": [3, 3, 3]"), DECOMP_ERR_BAD_SPEC,
               "kernel_size must be an integer or a list of 2 integers");
  expect_parse(CONV(", \"kernel_size\": 3.0"), DECOMP_ERR_BAD_SPEC,
               "kernel_size must be an integer or [h, w], not a number");
  expect_parse(CONV(", \"kernel_size\": 3, \"stride\": [1, 0]"),
               DECOMP_ERR_BAD_SPEC, "(layer1.0.conv1): stride [1, 0]");
  expect_parse(CONV(", \"kernel_size\": 3, \"padding\": -1"),
               DECOMP_ERR_BAD_SPEC, "padding [-1, -1] must be >= 0");
  expect_parse(CONV(", \"kernel_size\": 3, \"padding\": \"full\""),
               DECOMP_ERR_BAD_SPEC, "padding 'full' is unknown");
  expect_parse(CONV(", \"kernel_size\": 3, \"padding\": \"same\", \"stride\": 2"),
               DECOMP_ERR_BAD_SPEC, "padding 'same' needs stride 1");
  expect_parse(CONV(", \"kernel_size\": 3, \"padding_mode\": \"mirror\""),
               DECOMP_ERR_BAD_SPEC, "padding_mode 'mirror' is unknown");
  expect_parse(CONV(", \"kernel_size\": 3, \"bias\": 1"), DECOMP_ERR_BAD_SPEC,
               "bias must be true or false, not an integer");
  expect_parse(CONV(", \"kernel_size\": 3, \"in_channels\": 0"),
               DECOMP_ERR_BAD_SPEC, "duplicate"); /* JSON duplicate key */
  expect_parse(CONV(", \"kernel_size\": 3, \"strides\": 2"),
               DECOMP_ERR_BAD_SPEC,
               "layers[1] (layer1.0.conv1): unknown field strides");
  expect_parse(CONV(", \"kernel_size\": 3, \"input_size\": [2, 2]"),
               DECOMP_ERR_BAD_SPEC, "input_size [2, 2] gives an empty output");
  expect_parse(CONV(", \"kernel_size\": 3, \"input_size\": [0, 5]"),
               DECOMP_ERR_BAD_SPEC, "input_size [0, 5] must be >= 1");
  expect_parse(CONV(", \"kernel_size\": 4096"), DECOMP_ERR_BAD_SPEC,
               "kernel_size [4096, 4096] is too large");
  expect_parse("[{\"name\": \"x\", \"type\": \"Conv2d\", \"in_channels\": -3,"
               " \"out_channels\": 3, \"kernel_size\": 3}]",
               DECOMP_ERR_BAD_SPEC, "layers[0] (x): in_channels -3");
  expect_parse("[{\"name\": \"x\", \"type\": \"Conv2d\", \"in_channels\": \"3\","
               " \"out_channels\": 3, \"kernel_size\": 3}]",
               DECOMP_ERR_BAD_SPEC, "in_channels must be an integer, not a string");
  expect_parse("[{\"type\": \"Conv2d\"}]", DECOMP_ERR_BAD_SPEC,
               "layers[0]: missing field name");
  expect_parse("[{\"name\": \"\", \"type\": \"Conv2d\"}]", DECOMP_ERR_BAD_SPEC,
               "layers[0]: name must be a non-empty string");
  expect_parse("[{\"name\": \"fc\"}]", DECOMP_ERR_BAD_SPEC,
               "layers[0] (fc): missing field type");
  expect_parse("[{\"name\": \"fc\", \"type\": \"Linear\"}, 7]",
               DECOMP_ERR_BAD_SPEC, "layers[1]: a layer must be an object");
  expect_parse("[{\"name\": \"fc\", \"type\": \"Linear\"},"
               " {\"name\": \"fc\", \"type\": \"ReLU\"}]",
               DECOMP_ERR_BAD_SPEC, "layers[1] (fc): duplicate layer name fc");
  expect_parse("{\"version\": 1}", DECOMP_ERR_BAD_SPEC, "no \"layers\" list");
  expect_parse("{\"layers\": {}}", DECOMP_ERR_BAD_SPEC,
               "\"layers\" must be a list of layers, not an object");
  expect_parse("3", DECOMP_ERR_BAD_SPEC, "must be a list of layers");
  expect_parse("[{\"name\": ", DECOMP_ERR_BAD_SPEC, "not valid JSON");
  expect_parse("[]", DECOMP_OK, NULL);
  expect_parse("{\"layers\": [], \"format\": \"x\", \"future\": {}}", DECOMP_OK,
               NULL);
}
END_TEST

START_TEST(add_validates_and_copies) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *s;
  ck_assert_int_eq(decomp_spec_new(ctx, &s), DECOMP_OK);
  char name[32];
  for (int i = 0; i < 300; i++) {
    snprintf(name, sizeof name, "features.%d", i);
    decomp_layer l = {.name = name, .type = "Conv2d", .in_channels = 16,
                      .out_channels = 32, .kernel_size = {3, 3},
                      .stride = {1, 1}, .padding = {1, 1},
                      .dilation = {1, 1}, .groups = 1};
    ck_assert_int_eq(decomp_spec_add(ctx, s, &l), DECOMP_OK);
  }
  strcpy(name, "clobbered");
  ck_assert_ptr_nonnull(decomp_spec_find(s, "features.299"));
  ck_assert_ptr_eq(decomp_spec_find(s, "features.7"), decomp_spec_at(s, 7));
  decomp_layer bad = {.name = "features.3", .type = "Conv2d",
                      .in_channels = 16, .out_channels = 32,
                      .kernel_size = {3, 3}, .stride = {1, 1},
                      .dilation = {1, 1}, .groups = 1};
  ck_assert_int_eq(decomp_spec_add(ctx, s, &bad), DECOMP_ERR_BAD_SPEC);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "duplicate"));
  bad.name = "new";
  bad.groups = 5;
  ck_assert_int_eq(decomp_spec_add(ctx, s, &bad), DECOMP_ERR_BAD_SPEC);
  ck_assert_str_eq(decomp_errmsg(ctx),
                   "layers[300] (new): groups 5 does not divide in_channels 16");
  bad.groups = 1;
  bad.stride[0] = 0;
  ck_assert_int_eq(decomp_spec_add(ctx, s, &bad), DECOMP_ERR_BAD_SPEC);
  ck_assert_uint_eq(decomp_spec_count(s), 300);
  decomp_layer relu = {.name = "relu", .type = "ReLU", .groups = 99};
  ck_assert_int_eq(decomp_spec_add(ctx, s, &relu), DECOMP_OK);
  ck_assert_int_eq(decomp_spec_find(s, "relu")->groups, 0);
  decomp_spec_free(s);
  decomp_spec_free(NULL);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(to_json_is_canonical_and_round_trips) {
  const char *j =
      "[{\"type\": \"Conv2d\", \"name\": \"a\", \"in_channels\": 4,"
      " \"out_channels\": 8, \"kernel_size\": 3, \"padding\": 1},"
      " {\"name\": \"p\", \"type\": \"MaxPool2d\", \"kernel_size\": 2},"
      " {\"name\": \"b\", \"type\": \"Conv2d\", \"in_channels\": 8,"
      " \"out_channels\": 8, \"kernel_size\": [1, 3], \"padding\": \"same\","
      " \"padding_mode\": \"circular\", \"bias\": false,"
      " \"input_size\": [7, 9]}]";
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *s, *s2;
  ck_assert_int_eq(decomp_spec_parse(ctx, j, strlen(j), &s), DECOMP_OK);
  char *t = decomp_spec_to_json(s);
  ck_assert_ptr_nonnull(t);
  ck_assert_str_eq(
      t,
      "{\"layers\": [{\"name\": \"a\", \"type\": \"Conv2d\", \"in_channels\": 4,"
      " \"out_channels\": 8, \"kernel_size\": [3, 3], \"stride\": [1, 1],"
      " \"padding\": [1, 1], \"dilation\": [1, 1], \"groups\": 1,"
      " \"bias\": true, \"padding_mode\": \"zeros\"},"
      " {\"name\": \"p\", \"type\": \"MaxPool2d\"},"
      " {\"name\": \"b\", \"type\": \"Conv2d\", \"in_channels\": 8,"
      " \"out_channels\": 8, \"kernel_size\": [1, 3], \"stride\": [1, 1],"
      " \"padding\": \"same\", \"dilation\": [1, 1], \"groups\": 1,"
      " \"bias\": false, \"padding_mode\": \"circular\","
      " \"input_size\": [7, 9]}]}");
  ck_assert_int_eq(decomp_spec_parse(ctx, t, strlen(t), &s2), DECOMP_OK);
  char *t2 = decomp_spec_to_json(s2);
  ck_assert_str_eq(t, t2);
  decomp_free(t);
  decomp_free(t2);
  decomp_spec_free(s);
  decomp_spec_free(s2);
  decomp_ctx_free(ctx);
}
END_TEST

/* A weight set with NAME.weight of shape `ws` (4 dims) and, when bshape > 0,
 * NAME.bias of shape [bshape]. */
static float zeros[1 << 16];

static void add_tensor(decomp_weights *w, const char *name, decomp_dtype dt,
                       int ndim, const int64_t *shape) {
  decomp_tensor t = {.name = name, .dtype = dt, .ndim = ndim, .data = zeros};
  int64_t st = 1;
  for (int i = ndim; i-- > 0;) {
    t.shape[i] = shape[i];
    t.stride[i] = st;
    st *= shape[i];
  }
  ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_OK);
}

static void expect_check(const char *spec_json, decomp_weights *w, int want,
                         const char *msg) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *s;
  ck_assert_int_eq(decomp_spec_parse(ctx, spec_json, strlen(spec_json), &s),
                   DECOMP_OK);
  int rc = decomp_spec_check(ctx, s, w);
  if (rc != want || (msg && strcmp(decomp_errmsg(ctx), msg) != 0))
    ck_abort_msg("check: got %d \"%s\", want %d \"%s\"", rc, decomp_errmsg(ctx),
                 want, msg ? msg : "");
  decomp_spec_free(s);
  decomp_ctx_free(ctx);
}

START_TEST(check_against_weights_names_the_mismatch) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  add_tensor(w, "layer3.1.conv2.weight", DECOMP_DTYPE_F32, 4,
             (int64_t[]){64, 64, 3, 3});
  add_tensor(w, "g.weight", DECOMP_DTYPE_BF16, 4, (int64_t[]){32, 8, 3, 3});
  add_tensor(w, "g.bias", DECOMP_DTYPE_F32, 1, (int64_t[]){32});
  add_tensor(w, "i.weight", DECOMP_DTYPE_I64, 4, (int64_t[]){8, 8, 3, 3});
  add_tensor(w, "nb.weight", DECOMP_DTYPE_F16, 4, (int64_t[]){8, 8, 3, 3});
  add_tensor(w, "nb.bias", DECOMP_DTYPE_F16, 1, (int64_t[]){8});

  expect_check("[{\"name\": \"layer3.1.conv2\", \"type\": \"Conv2d\","
               " \"in_channels\": 64, \"out_channels\": 64, \"kernel_size\": 3,"
               " \"bias\": false},"
               " {\"name\": \"g\", \"type\": \"Conv2d\", \"in_channels\": 32,"
               " \"out_channels\": 32, \"kernel_size\": 3, \"groups\": 4},"
               " {\"name\": \"fc\", \"type\": \"Linear\"}]",
               w, DECOMP_OK, NULL);
  expect_check("[{\"name\": \"layer3.1.conv2\", \"type\": \"Conv2d\","
               " \"in_channels\": 64, \"out_channels\": 128, \"kernel_size\": 3,"
               " \"bias\": false}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "layer3.1.conv2: weight has shape [64, 64, 3, 3], spec says "
               "[128, 64, 3, 3]");
  expect_check("[{\"name\": \"conv9\", \"type\": \"Conv2d\", \"in_channels\": 3,"
               " \"out_channels\": 3, \"kernel_size\": 3}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "conv9: no tensor conv9.weight in the weights");
  expect_check("[{\"name\": \"layer3.1.conv2\", \"type\": \"Conv2d\","
               " \"in_channels\": 64, \"out_channels\": 64, \"kernel_size\": 3}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "layer3.1.conv2: no tensor layer3.1.conv2.bias in the weights");
  expect_check("[{\"name\": \"nb\", \"type\": \"Conv2d\", \"in_channels\": 8,"
               " \"out_channels\": 8, \"kernel_size\": 3, \"bias\": false}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "nb: the weights have nb.bias but the spec says bias: false");
  expect_check("[{\"name\": \"i\", \"type\": \"Conv2d\", \"in_channels\": 8,"
               " \"out_channels\": 8, \"kernel_size\": 3, \"bias\": false}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "i: weight has dtype I64, not a floating type");
  expect_check("[{\"name\": \"g\", \"type\": \"Conv2d\", \"in_channels\": 32,"
               " \"out_channels\": 32, \"kernel_size\": 3}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "g: weight has shape [32, 8, 3, 3], spec says [32, 32, 3, 3]");
  expect_check("[{\"name\": \"g\", \"type\": \"Conv2d\", \"in_channels\": 32,"
               " \"out_channels\": 32, \"kernel_size\": [3, 1], \"groups\": 4}]",
               w, DECOMP_ERR_SPEC_MISMATCH,
               "g: weight has shape [32, 8, 3, 3], spec says [32, 8, 3, 1]");
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(padding_mode_names) {
  ck_assert_str_eq(decomp_padding_mode_name(DECOMP_PAD_ZEROS), "zeros");
  ck_assert_str_eq(decomp_padding_mode_name(DECOMP_PAD_CIRCULAR), "circular");
  ck_assert_str_eq(decomp_padding_mode_name((decomp_padding_mode)17),
                   "unknown");
}
END_TEST

int main(void) {
  Suite *s = suite_create("spec");
  TCase *tc = tcase_create("spec");
  tcase_add_test(tc, omitted_fields_take_torch_defaults);
  tcase_add_test(tc, bare_list_pairs_and_other_modules);
  tcase_add_test(tc, same_padding_splits_odd_totals_like_torch);
  tcase_add_test(tc, every_error_names_the_layer_and_the_field);
  tcase_add_test(tc, add_validates_and_copies);
  tcase_add_test(tc, to_json_is_canonical_and_round_trips);
  tcase_add_test(tc, check_against_weights_names_the_mismatch);
  tcase_add_test(tc, padding_mode_names);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
