/* test_safetensors.c — the safetensors reader and writer: round trips (set
 * order kept, strided views written contiguous, metadata), and malformed
 * files each refused with a clear error: overlapping offsets, gaps, a huge
 * header, duplicate names, bad dtypes, sizes that do not match, overflow. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

typedef struct bytes {
  unsigned char *p;
  size_t n;
} bytes;

/* A safetensors file: header text, then `data_len` bytes counting up. */
static bytes st(const char *header, size_t data_len) {
  size_t h = strlen(header);
  bytes b = {malloc(8 + h + data_len + 1), 8 + h + data_len};
  for (int i = 0; i < 8; i++)
    b.p[i] = (unsigned char)((uint64_t)h >> (8 * i));
  memcpy(b.p + 8, header, h);
  for (size_t i = 0; i < data_len; i++)
    b.p[8 + h + i] = (unsigned char)i;
  return b;
}

static void expect(const char *header, size_t data_len, int code,
                   const char *needle) {
  decomp_ctx *ctx = decomp_ctx_new();
  bytes b = st(header, data_len);
  decomp_weights *w = NULL;
  int rc = decomp_weights_open_memory(ctx, b.p, b.n, &w);
  ck_assert_msg(rc == code, "%s: expected %d, got %d: %s", header, code, rc,
                decomp_errmsg(ctx));
  ck_assert_ptr_null(w);
  ck_assert_msg(strstr(decomp_errmsg(ctx), needle),
                "message \"%s\" lacks \"%s\"", decomp_errmsg(ctx), needle);
  free(b.p);
  decomp_ctx_free(ctx);
}

START_TEST(reads_tensors_zero_copy_in_header_order_with_metadata) {
  decomp_ctx *ctx = decomp_ctx_new();
  /* Header order differs from data order on purpose. */
  bytes b = st("{\"__metadata__\":{\"format\":\"pt\",\"epoch\":\"3\"},"
               "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]},"
               "\"z\":{\"dtype\":\"BOOL\",\"shape\":[0],\"data_offsets\":[12,12]},"
               "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[12,20]}}",
               20);
  ck_assert_int_eq(decomp_detect_format(b.p, b.n), DECOMP_FORMAT_SAFETENSORS);
  decomp_weights *w;
  ck_assert_int_eq(decomp_weights_open_memory(ctx, b.p, b.n, &w), DECOMP_OK);
  ck_assert_int_eq(decomp_weights_format(w), DECOMP_FORMAT_SAFETENSORS);
  ck_assert_uint_eq(decomp_weights_count(w), 4);
  const decomp_tensor *t0 = decomp_weights_at(w, 0), *t1 = decomp_weights_at(w, 1);
  ck_assert_str_eq(t0->name, "b");
  ck_assert_str_eq(t1->name, "a");
  ck_assert_int_eq(t1->ndim, 2);
  ck_assert_int_eq(t1->stride[0], 2);
  size_t hlen = b.n - 8 - 20;
  ck_assert_ptr_eq(t1->data, b.p + 8 + hlen);      /* zero-copy */
  ck_assert_ptr_eq(t0->data, b.p + 8 + hlen + 8);
  ck_assert_uint_eq(t0->storage_nbytes, 4);
  ck_assert_int_eq(decomp_weights_at(w, 3)->ndim, 0);
  ck_assert_str_eq(decomp_weights_metadata(w),
                   "{\"format\":\"pt\",\"epoch\":\"3\"}");
  decomp_weights_free(w);
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(round_trip_keeps_set_order_and_writes_views_contiguous) {
  char dir[] = "/tmp/test_st.XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/out.safetensors", dir);
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  static float s[12];
  for (int i = 0; i < 12; i++)
    s[i] = (float)i;
  static uint16_t h[3] = {0x3c00, 0x4000, 0x4200};
  static double d[2] = {1e300, -0.5};
  /* zeta first: the writer must not sort names. */
  decomp_tensor ts[] = {
      {.name = "zeta", .dtype = DECOMP_DTYPE_F32, .ndim = 2, .shape = {3, 4},
       .stride = {4, 1}, .data = s},
      /* the transpose: non-contiguous, inner stride not 1 */
      {.name = "alpha.t", .dtype = DECOMP_DTYPE_F32, .ndim = 2,
       .shape = {4, 3}, .stride = {1, 4}, .data = s, .storage = s,
       .storage_nbytes = sizeof s},
      /* a block at an offset: rows 8 apart, inner dimension dense */
      {.name = "rows", .dtype = DECOMP_DTYPE_F32, .ndim = 2, .shape = {2, 2},
       .stride = {8, 1}, .offset = 2, .data = s + 2, .storage = s,
       .storage_nbytes = sizeof s},
      {.name = "half", .dtype = DECOMP_DTYPE_F16, .ndim = 1, .shape = {3},
       .stride = {1}, .data = h},
      {.name = "f64", .dtype = DECOMP_DTYPE_F64, .ndim = 1, .shape = {2},
       .stride = {1}, .data = d},
      {.name = "nothing", .dtype = DECOMP_DTYPE_I8, .ndim = 1, .shape = {0},
       .stride = {1}, .data = NULL},
  };
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
    ck_assert_int_eq(decomp_weights_add(w, &ts[i]), DECOMP_OK);
  /* A .pth-style nested metadata becomes strings of JSON text. */
  ck_assert_int_eq(decomp_weights_set_metadata(
                       w, "{\"note\": \"hi\", \"conv1\": {\"version\": 1}}"),
                   DECOMP_OK);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_SAFETENSORS),
                   DECOMP_OK);
  decomp_weights *r;
  ck_assert_int_eq(decomp_weights_open(ctx, path, &r), DECOMP_OK);
  ck_assert_uint_eq(decomp_weights_count(r), 6);
  const char *names[] = {"zeta", "alpha.t", "rows", "half", "f64", "nothing"};
  for (int i = 0; i < 6; i++)
    ck_assert_str_eq(decomp_weights_at(r, (size_t)i)->name, names[i]);
  const decomp_tensor *t = decomp_weights_at(r, 1);
  ck_assert(decomp_tensor_is_contiguous(t));
  const float *tf = t->data;
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 3; j++)
      ck_assert_float_eq(tf[i * 3 + j], s[j * 4 + i]);
  const float *rf = decomp_weights_at(r, 2)->data;
  const float want[4] = {2, 3, 10, 11};
  for (int j = 0; j < 4; j++)
    ck_assert_float_eq(rf[j], want[j]);
  ck_assert_int_eq(memcmp(decomp_weights_at(r, 3)->data, h, sizeof h), 0);
  ck_assert_int_eq(memcmp(decomp_weights_at(r, 4)->data, d, sizeof d), 0);
  /* Data offsets follow the set's order, and the data is 8-aligned. */
  ck_assert((const char *)decomp_weights_at(r, 0)->data <
            (const char *)decomp_weights_at(r, 1)->data);
  ck_assert_uint_eq((uintptr_t)decomp_weights_at(r, 0)->data % 8, 0);
  ck_assert_str_eq(decomp_weights_metadata(r),
                   "{\"note\":\"hi\",\"conv1\":\"{\\\"version\\\":1}\"}");
  decomp_weights_free(r);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  unlink(path);
  rmdir(dir);
}
END_TEST

START_TEST(overlapping_offsets_and_gaps_are_refused) {
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, DECOMP_ERR_BAD_SAFETENSORS, "b: data_offsets overlap");
  /* Two names on the same bytes. */
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, DECOMP_ERR_BAD_SAFETENSORS, "overlap");
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
         20, DECOMP_ERR_BAD_SAFETENSORS, "b: data_offsets leave a gap");
  /* A gap before the first tensor, and bytes left over at the end. */
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
         DECOMP_ERR_BAD_SAFETENSORS, "gap");
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 9,
         DECOMP_ERR_BAD_SAFETENSORS, "cover 8 bytes of a 9-byte");
  /* Past the end of the file. */
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         DECOMP_ERR_BAD_SAFETENSORS, "past the data section");
  /* begin > end */
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8,
         DECOMP_ERR_BAD_SAFETENSORS, "begin <= end");
}
END_TEST

START_TEST(huge_or_broken_headers_are_refused) {
  /* A header length over 100 MB (the file itself is small). */
  decomp_ctx *ctx = decomp_ctx_new();
  unsigned char b[32] = {0};
  uint64_t n = (uint64_t)200 * 1000 * 1000;
  for (int i = 0; i < 8; i++)
    b[i] = (unsigned char)(n >> (8 * i));
  memcpy(b + 8, "{}", 2);
  decomp_weights *w = NULL;
  ck_assert_int_eq(decomp_weights_open_memory(ctx, b, sizeof b, &w),
                   DECOMP_ERR_BAD_SAFETENSORS);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "over the 100 MB limit"));
  /* A header length of 2^64 - 1. */
  memset(b, 0xff, 8);
  ck_assert_int_eq(decomp_weights_open_memory(ctx, b, sizeof b, &w),
                   DECOMP_ERR_BAD_SAFETENSORS);
  /* A header longer than the file. */
  memset(b, 0, 8);
  b[0] = 100;
  ck_assert_int_eq(decomp_weights_open_memory(ctx, b, sizeof b, &w),
                   DECOMP_ERR_BAD_SAFETENSORS);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "past the end"));
  ck_assert_ptr_null(w);
  decomp_ctx_free(ctx);
  expect("{\"a\":", 0, DECOMP_ERR_BAD_SAFETENSORS, "header JSON");
  expect("{\"a\":1}", 0, DECOMP_ERR_BAD_SAFETENSORS, "a: entry is not an object");
  expect("{\"__metadata__\":{\"k\":1}}", 0, DECOMP_ERR_BAD_SAFETENSORS,
         "__metadata__ value of \"k\" is not a string");
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
         "\"extra\":1}}",
         4, DECOMP_ERR_BAD_SAFETENSORS, "unknown field \"extra\"");
  expect("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         DECOMP_ERR_BAD_SAFETENSORS, "empty name");
}
END_TEST

START_TEST(duplicate_names_are_refused) {
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, DECOMP_ERR_BAD_SAFETENSORS, "duplicate");
}
END_TEST

START_TEST(bad_dtypes_and_sizes_are_refused) {
  expect("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}",
         1, DECOMP_ERR_UNSUPPORTED_DTYPE, "dtype \"F8_E4M3\" is not supported");
  expect("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         DECOMP_ERR_UNSUPPORTED_DTYPE, "not supported");
  expect("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         DECOMP_ERR_BAD_SAFETENSORS, "needs \"dtype\"");
  /* numel × itemsize must equal the span. */
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         DECOMP_ERR_BAD_SAFETENSORS, "span 8 bytes, shape and dtype need 12");
  /* Overflowing products. */
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
         "\"data_offsets\":[0,0]}}",
         0, DECOMP_ERR_BAD_SAFETENSORS, "element count overflows");
  expect("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
         "\"data_offsets\":[0,0]}}",
         0, DECOMP_ERR_BAD_SAFETENSORS, "byte size overflows");
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
         DECOMP_ERR_BAD_SAFETENSORS, "non-negative");
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
         "\"data_offsets\":[0,4]}}",
         4, DECOMP_ERR_BAD_SAFETENSORS, "9 dimensions");
  expect("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,"
         "99999999999999999999999]}}",
         4, DECOMP_ERR_BAD_SAFETENSORS, "header JSON");
}
END_TEST

START_TEST(truncated_files_fail_cleanly_at_every_length) {
  decomp_ctx *ctx = decomp_ctx_new();
  bytes b = st("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               8);
  for (size_t len = 0; len < b.n; len++) {
    unsigned char *c = malloc(len ? len : 1);
    memcpy(c, b.p, len);
    decomp_weights *w = NULL;
    int rc = decomp_weights_open_memory(ctx, c, len, &w);
    ck_assert_msg(rc == DECOMP_ERR_BAD_SAFETENSORS ||
                      rc == DECOMP_ERR_UNKNOWN_FORMAT,
                  "length %zu: %d", len, rc);
    ck_assert_ptr_null(w);
    free(c);
  }
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(a_broadcast_view_too_large_to_write_fails_cleanly) {
  char dir[] = "/tmp/test_st.XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/big.safetensors", dir);
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  static float one = 1;
  /* 2^62 elements, all the same float: 4 bytes of storage, 2^64 to write. */
  decomp_tensor t = {.name = "bcast", .dtype = DECOMP_DTYPE_F32, .ndim = 1,
                     .shape = {(int64_t)1 << 62}, .stride = {0}, .data = &one};
  ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_OK);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_SAFETENSORS),
                   DECOMP_ERR_TOO_LARGE);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "bcast"));
  ck_assert_int_eq(rmdir(dir), 0); /* empty: no temporary left */
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
}
END_TEST

int main(void) {
  Suite *s = suite_create("safetensors");
  TCase *tc = tcase_create("safetensors");
  tcase_add_test(tc, reads_tensors_zero_copy_in_header_order_with_metadata);
  tcase_add_test(tc, round_trip_keeps_set_order_and_writes_views_contiguous);
  tcase_add_test(tc, overlapping_offsets_and_gaps_are_refused);
  tcase_add_test(tc, huge_or_broken_headers_are_refused);
  tcase_add_test(tc, duplicate_names_are_refused);
  tcase_add_test(tc, bad_dtypes_and_sizes_are_refused);
  tcase_add_test(tc, truncated_files_fail_cleanly_at_every_length);
  tcase_add_test(tc, a_broadcast_view_too_large_to_write_fails_cleanly);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
