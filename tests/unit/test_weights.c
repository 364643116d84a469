/* test_weights.c — the weight set (add, find, ownership, extents, metadata)
 * and dtype conversions. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

START_TEST(add_and_find_keeps_order_and_rejects_duplicates) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  ck_assert_int_eq(decomp_weights_new(ctx, &w), DECOMP_OK);
  static float a[6] = {1, 2, 3, 4, 5, 6};
  char name[32];
  for (int i = 0; i < 200; i++) {
    snprintf(name, sizeof name, "layer%d.weight", i);
    decomp_tensor t = {.name = name, .dtype = DECOMP_DTYPE_F32, .ndim = 2,
                       .shape = {2, 3}, .stride = {3, 1}, .data = a};
    ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_OK);
  }
  ck_assert_uint_eq(decomp_weights_count(w), 200);
  ck_assert_str_eq(decomp_weights_at(w, 7)->name, "layer7.weight");
  const decomp_tensor *f = decomp_weights_find(w, "layer123.weight");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_eq(f, decomp_weights_at(w, 123));
  ck_assert_ptr_null(decomp_weights_find(w, "nope"));
  decomp_tensor dup = *f;
  ck_assert_int_eq(decomp_weights_add(w, &dup), DECOMP_ERR_BAD_TENSOR);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "duplicate"));
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(storage_smaller_than_tensor_is_refused) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  static float s[4];
  decomp_tensor t = {.name = "x", .dtype = DECOMP_DTYPE_F32, .ndim = 2,
                     .shape = {2, 3}, .stride = {3, 1}, .data = s,
                     .storage = s, .storage_nbytes = sizeof s};
  ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_ERR_BAD_TENSOR);
  t.shape[0] = INT64_MAX / 2;
  t.storage = NULL;
  ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_ERR_BAD_TENSOR);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "overflow"));
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(owned_buffers_are_released_also_on_failure) {
  /* Leaks would show under ASan's leak checker. */
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  float *buf = malloc(16);
  decomp_tensor t = {.name = "a", .dtype = DECOMP_DTYPE_F32, .ndim = 1,
                     .shape = {4}, .stride = {1}, .data = buf};
  ck_assert_int_eq(decomp_weights_add_owned(w, &t, buf), DECOMP_OK);
  float *buf2 = malloc(16);
  t.data = buf2;
  ck_assert_int_eq(decomp_weights_add_owned(w, &t, buf2), DECOMP_ERR_BAD_TENSOR);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(strided_view_gathers_in_row_major_order) {
  /* A [3,2] view with strides [1,3] of a [2,3] storage: its transpose. */
  float s[6] = {0, 1, 2, 3, 4, 5};
  decomp_tensor t = {.name = "v", .dtype = DECOMP_DTYPE_F32, .ndim = 2,
                     .shape = {3, 2}, .stride = {1, 3}, .data = s};
  float out[6];
  ck_assert(core_tensor_to_f32(&t, out));
  float want[6] = {0, 3, 1, 4, 2, 5};
  for (int i = 0; i < 6; i++)
    ck_assert_float_eq(out[i], want[i]);
  ck_assert(!decomp_tensor_is_contiguous(&t));
}
END_TEST

START_TEST(half_and_bfloat16_round_trip_and_round_to_nearest_even) {
  /* Every finite half converts to float and back unchanged. */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
      continue; /* NaN payloads */
    ck_assert_uint_eq(core_float_to_half(core_half_to_float((uint16_t)h)), h);
  }
  ck_assert_float_eq(core_half_to_float(0x3c00), 1.0f);
  ck_assert_uint_eq(core_float_to_half(65504.0f), 0x7bff);
  ck_assert_uint_eq(core_float_to_half(1e6f), 0x7c00);
  ck_assert_uint_eq(core_float_to_half(5.9604645e-08f), 0x0001);
  /* 1 + 2^-11 is halfway between 1 and the next half: even wins. */
  ck_assert_uint_eq(core_float_to_half(1.0f + 0x1p-11f), 0x3c00);
  ck_assert_uint_eq(core_float_to_bf16(1.0f), 0x3f80);
  ck_assert_float_eq(core_bf16_to_float(0x4049), 3.140625f);
  ck_assert(isnan(core_bf16_to_float(core_float_to_bf16(NAN))));
}
END_TEST

START_TEST(glob_matches_layer_names) {
  ck_assert(core_glob_match("layer1.*", "layer1.0.conv1"));
  ck_assert(!core_glob_match("layer1.*", "layer2.0.conv1"));
  ck_assert(core_glob_match("*conv?", "layer1.0.conv2"));
  ck_assert(core_glob_match("layer[1-3].*.conv1", "layer3.1.conv1"));
  ck_assert(!core_glob_match("layer[!1].*", "layer1.x"));
  ck_assert(core_glob_match("fc", "fc"));
  ck_assert(!core_glob_match("fc", "fc2"));
}
END_TEST

START_TEST(error_tables_agree) {
  ck_assert_str_eq(decomp_error_code(DECOMP_ERR_BAD_PICKLE), "bad_pickle");
  ck_assert_int_eq(decomp_error_http_status(DECOMP_ERR_NOT_FOUND), 404);
  ck_assert_int_eq(decomp_error_from_code("forbidden_global"),
                   DECOMP_ERR_FORBIDDEN_GLOBAL);
  ck_assert_str_eq(decomp_strerror(12345), "unknown error");
}
END_TEST

int main(void) {
  Suite *s = suite_create("weights");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, add_and_find_keeps_order_and_rejects_duplicates);
  tcase_add_test(tc, storage_smaller_than_tensor_is_refused);
  tcase_add_test(tc, owned_buffers_are_released_also_on_failure);
  tcase_add_test(tc, strided_view_gathers_in_row_major_order);
  tcase_add_test(tc, half_and_bfloat16_round_trip_and_round_to_nearest_even);
  tcase_add_test(tc, glob_matches_layer_names);
  tcase_add_test(tc, error_tables_agree);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
