/* test_pth.c — torch.save archives: the zip reader and writer, the
 * restricted unpickler, the .pth writer, and atomic saving. Bad inputs are
 * built here, byte by byte, and each must fail with a clear error (never a
 * crash, a hang or an out-of-bounds read: run under ASan). */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"
#include "zip.h"

/* --- helpers ------------------------------------------------------------ */

typedef struct bytes {
  unsigned char *p;
  size_t n;
} bytes;

static bytes read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  bytes b = {malloc((size_t)n + 1), (size_t)n};
  ck_assert_uint_eq(fread(b.p, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  return b;
}

static char tmpdir[256];

static void make_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_pth.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void) {
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  char p[600];
  while (d && (e = readdir(d))) {
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
      unlink(p);
    }
  }
  if (d)
    closedir(d);
  rmdir(tmpdir);
}

static int count_files(void) {
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  int n = 0;
  while (d && (e = readdir(d)))
    n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
  if (d)
    closedir(d);
  return n;
}

/* A zip of the given entries (names, data, sizes), built with our writer. */
typedef struct zentry {
  const char *name;
  const void *data;
  size_t n;
} zentry;

static bytes make_zip(const zentry *es, size_t n, bool zip64) {
  FILE *f = tmpfile();
  ck_assert_ptr_nonnull(f);
  decomp_ctx *ctx = decomp_ctx_new();
  zip_writer zw;
  zip_writer_init(&zw, ctx, fileno(f));
  zw.force_zip64 = zip64;
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(zip_writer_add(&zw, es[i].name, es[i].data, es[i].n),
                     DECOMP_OK);
  ck_assert_int_eq(zip_writer_finish(&zw), DECOMP_OK);
  zip_writer_free(&zw);
  decomp_ctx_free(ctx);
  long len = lseek(fileno(f), 0, SEEK_END);
  bytes b = {malloc((size_t)len), (size_t)len};
  ck_assert_int_eq(pread(fileno(f), b.p, (size_t)len, 0), len);
  fclose(f);
  return b;
}

/* A tiny pickle assembler. */
typedef struct pk {
  unsigned char b[1 << 16];
  size_t n;
} pk;

static void op(pk *p, unsigned char c) { p->b[p->n++] = c; }
static void raw(pk *p, const void *s, size_t n) {
  memcpy(p->b + p->n, s, n);
  p->n += n;
}
static void str(pk *p, const char *s) {
  size_t n = strlen(s);
  unsigned char h[5] = {'X', (unsigned char)n, (unsigned char)(n >> 8), 0, 0};
  raw(p, h, 5);
  raw(p, s, n);
}
static void i64(pk *p, int64_t v) { /* LONG1, 8 bytes */
  unsigned char h[10] = {0x8a, 8};
  for (int i = 0; i < 8; i++)
    h[2 + i] = (unsigned char)((uint64_t)v >> (8 * i));
  raw(p, h, 10);
}
static void global(pk *p, const char *mod, const char *name) {
  op(p, 'c');
  raw(p, mod, strlen(mod));
  op(p, '\n');
  raw(p, name, strlen(name));
  op(p, '\n');
}
static void odict(pk *p) {
  global(p, "collections", "OrderedDict");
  op(p, ')');
  op(p, 'R');
}
/* One `name: _rebuild_tensor_v2(storage(key, type, numel), off, size,
 * stride, False, OrderedDict())` pair (for inside SETITEMS). */
static void tensor(pk *p, const char *name, const char *type, const char *key,
                   int64_t numel, int64_t off, const int64_t *size,
                   const int64_t *stride, int nd) {
  str(p, name);
  global(p, "torch._utils", "_rebuild_tensor_v2");
  op(p, '(');
  op(p, '(');
  str(p, "storage");
  global(p, "torch", type);
  str(p, key);
  str(p, "cpu");
  i64(p, numel);
  op(p, 't');
  op(p, 'Q');
  i64(p, off);
  op(p, '(');
  for (int d = 0; d < nd; d++)
    i64(p, size[d]);
  op(p, 't');
  op(p, '(');
  for (int d = 0; d < nd; d++)
    i64(p, stride[d]);
  op(p, 't');
  op(p, 0x89);
  odict(p);
  op(p, 't');
  op(p, 'R');
}

/* An archive "m/" with data.pkl = p and one storage data/0 of `n` bytes. */
static bytes archive(const pk *p, const void *storage, size_t n) {
  zentry es[] = {{"m/data.pkl", p->b, p->n},
                 {"m/data/0", storage, n},
                 {"m/version", "3\n", 2}};
  return make_zip(es, 3, false);
}

static int open_bytes(decomp_ctx *ctx, bytes b, decomp_weights **w) {
  *w = NULL;
  return decomp_weights_open_memory(ctx, b.p, b.n, w);
}

/* --- round trip ----------------------------------------------------------- */

static float f32s[6] = {0, 1, 2, 3, 4, 5};
static uint16_t halves[4] = {0x3c00, 0x4000, 0xc200, 0x7bff};
static uint16_t bf16s[3] = {0x3f80, 0x4049, 0xbf80};
static double f64s[2] = {1.5, -2.25};
static int64_t i64s[3] = {1, -1, INT64_MAX};
static int32_t i32s[2] = {7, -7};
static int16_t i16s[2] = {300, -300};
static int8_t i8s[2] = {-128, 127};
static uint8_t u8s[2] = {0, 255};
static uint8_t bools[3] = {1, 0, 1};

static decomp_weights *sample_set(decomp_ctx *ctx) {
  decomp_weights *w;
  ck_assert_int_eq(decomp_weights_new(ctx, &w), DECOMP_OK);
  decomp_tensor ts[] = {
      {.name = "conv1.weight", .dtype = DECOMP_DTYPE_F32, .ndim = 2,
       .shape = {2, 3}, .stride = {3, 1}, .data = f32s, .storage = f32s,
       .storage_nbytes = sizeof f32s},
      /* its transpose, sharing the storage */
      {.name = "conv1.weight_t", .dtype = DECOMP_DTYPE_F32, .ndim = 2,
       .shape = {3, 2}, .stride = {1, 3}, .data = f32s, .storage = f32s,
       .storage_nbytes = sizeof f32s},
      /* its second row, at an offset */
      {.name = "row1", .dtype = DECOMP_DTYPE_F32, .ndim = 1, .shape = {3},
       .stride = {1}, .offset = 3, .data = f32s + 3, .storage = f32s,
       .storage_nbytes = sizeof f32s},
      {.name = "half", .dtype = DECOMP_DTYPE_F16, .ndim = 2, .shape = {2, 2},
       .stride = {2, 1}, .data = halves},
      {.name = "bf16", .dtype = DECOMP_DTYPE_BF16, .ndim = 1, .shape = {3},
       .stride = {1}, .data = bf16s},
      {.name = "f64", .dtype = DECOMP_DTYPE_F64, .ndim = 1, .shape = {2},
       .stride = {1}, .data = f64s},
      {.name = "bn.num_batches_tracked", .dtype = DECOMP_DTYPE_I64, .ndim = 0,
       .data = i64s + 2},
      {.name = "i64", .dtype = DECOMP_DTYPE_I64, .ndim = 1, .shape = {3},
       .stride = {1}, .data = i64s},
      {.name = "i32", .dtype = DECOMP_DTYPE_I32, .ndim = 1, .shape = {2},
       .stride = {1}, .data = i32s},
      {.name = "i16", .dtype = DECOMP_DTYPE_I16, .ndim = 1, .shape = {2},
       .stride = {1}, .data = i16s},
      {.name = "i8", .dtype = DECOMP_DTYPE_I8, .ndim = 1, .shape = {2},
       .stride = {1}, .data = i8s},
      {.name = "u8", .dtype = DECOMP_DTYPE_U8, .ndim = 1, .shape = {2},
       .stride = {1}, .data = u8s},
      {.name = "bool", .dtype = DECOMP_DTYPE_BOOL, .ndim = 1, .shape = {3},
       .stride = {1}, .data = bools},
      {.name = "empty", .dtype = DECOMP_DTYPE_F32, .ndim = 2, .shape = {0, 4},
       .stride = {4, 1}, .data = NULL},
  };
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
    ck_assert_int_eq(decomp_weights_add(w, &ts[i]), DECOMP_OK);
  ck_assert_int_eq(
      decomp_weights_set_metadata(
          w, "{\"\": {\"version\": 1}, \"conv1\": {\"version\": 1}, "
             "\"bn\": {\"version\": 2}}"),
      DECOMP_OK);
  return w;
}

/* Element-wise equality of two tensors of the same dtype and shape. */
static void assert_same_tensor(const decomp_tensor *a, const decomp_tensor *b) {
  ck_assert_str_eq(a->name, b->name);
  ck_assert_int_eq(a->dtype, b->dtype);
  ck_assert_int_eq(a->ndim, b->ndim);
  for (int d = 0; d < a->ndim; d++)
    ck_assert_int_eq(a->shape[d], b->shape[d]);
  size_t isz = decomp_dtype_size(a->dtype);
  int64_t n = decomp_tensor_numel(a);
  int64_t idx[DECOMP_MAX_DIMS] = {0};
  for (int64_t k = 0; k < n; k++) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < a->ndim; d++) {
      oa += idx[d] * a->stride[d];
      ob += idx[d] * b->stride[d];
    }
    ck_assert_int_eq(memcmp((const char *)a->data + oa * (int64_t)isz,
                            (const char *)b->data + ob * (int64_t)isz, isz),
                     0);
    for (int d = a->ndim - 1; d >= 0; d--) {
      if (++idx[d] < a->shape[d])
        break;
      idx[d] = 0;
    }
  }
}

START_TEST(round_trip_keeps_order_dtypes_views_shared_storage_and_metadata) {
  make_tmpdir();
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w = sample_set(ctx), *r = NULL;
  char path[512];
  snprintf(path, sizeof path, "%s/my model.v2.pth", tmpdir);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_PTH),
                   DECOMP_OK);
  ck_assert_int_eq(count_files(), 1); /* no temporary left */
  ck_assert_int_eq(decomp_weights_open(ctx, path, &r), DECOMP_OK);
  ck_assert_int_eq(decomp_weights_format(r), DECOMP_FORMAT_PTH);
  ck_assert_uint_eq(decomp_weights_count(r), decomp_weights_count(w));
  for (size_t i = 0; i < decomp_weights_count(w); i++)
    assert_same_tensor(decomp_weights_at(w, i), decomp_weights_at(r, i));
  /* The view and the offset row still share the first tensor's storage,
   * with their own strides and offset. */
  const decomp_tensor *a = decomp_weights_at(r, 0), *t = decomp_weights_at(r, 1),
                      *row = decomp_weights_at(r, 2);
  ck_assert_ptr_eq(a->storage, t->storage);
  ck_assert_ptr_eq(a->storage, row->storage);
  ck_assert_int_eq(t->stride[0], 1);
  ck_assert_int_eq(t->stride[1], 3);
  ck_assert_int_eq(row->offset, 3);
  ck_assert_uint_eq(a->storage_nbytes, sizeof f32s);
  ck_assert_str_eq(decomp_weights_metadata(r),
                   "{\"\":{\"version\":1},\"conv1\":{\"version\":1},"
                   "\"bn\":{\"version\":2}}");
  /* The archive folder is the file's stem; data is 64-byte aligned. */
  bytes b = read_file(path);
  ck_assert_int_eq(decomp_detect_format(b.p, b.n), DECOMP_FORMAT_PTH);
  zip_archive z;
  ck_assert_int_eq(zip_open(ctx, b.p, b.n, &z), DECOMP_OK);
  ck_assert_ptr_nonnull(zip_find(&z, "my model.v2/data.pkl"));
  ck_assert_ptr_nonnull(zip_find(&z, "my model.v2/version"));
  const zip_entry *v = zip_find(&z, "my model.v2/version");
  ck_assert_int_eq(memcmp(b.p + v->data_offset, "3\n", 2), 0);
  for (size_t i = 0; i < z.n; i++) {
    ck_assert_uint_eq(z.entries[i].data_offset % 64, 0);
    /* Other readers check the CRC: it must be right. */
    ck_assert_uint_eq(z.entries[i].crc,
                      zip_crc32(0, b.p + z.entries[i].data_offset,
                                z.entries[i].size));
  }
  zip_close(&z);
  free(b.p);
  decomp_weights_free(r);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  remove_tmpdir();
}
END_TEST

START_TEST(crc32_matches_the_standard_check_value) {
  ck_assert_uint_eq(zip_crc32(0, "123456789", 9), 0xcbf43926u);
  /* Streaming in pieces gives the same value. */
  ck_assert_uint_eq(zip_crc32(zip_crc32(0, "1234", 4), "56789", 5),
                    0xcbf43926u);
}
END_TEST

/* Re-wrap a saved archive's entries under another folder name and/or with
 * ZIP64 records. */
static bytes rewrap(bytes src, const char *prefix, bool zip64) {
  zip_archive z;
  ck_assert_int_eq(zip_open(NULL, src.p, src.n, &z), DECOMP_OK);
  zentry es[64];
  char names[64][128];
  ck_assert_uint_le(z.n, 64);
  for (size_t i = 0; i < z.n; i++) {
    const zip_entry *e = &z.entries[i];
    const char *slash = memchr(e->name, '/', e->name_len);
    snprintf(names[i], sizeof names[i], "%s%.*s", prefix,
             (int)(e->name_len - (size_t)(slash - e->name)), slash);
    es[i] = (zentry){names[i], src.p + e->data_offset, e->size};
  }
  bytes out = make_zip(es, z.n, zip64);
  zip_close(&z);
  return out;
}

START_TEST(any_folder_prefix_and_zip64_records_are_read) {
  make_tmpdir();
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w = sample_set(ctx), *r;
  char path[512];
  snprintf(path, sizeof path, "%s/x.pth", tmpdir);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_PTH),
                   DECOMP_OK);
  bytes b = read_file(path);
  const char *prefixes[] = {"archive", "resnet18-f37072fd", "a b.c"};
  for (int zip64 = 0; zip64 < 2; zip64++) {
    for (size_t k = 0; k < 3; k++) {
      bytes c = rewrap(b, prefixes[k], zip64);
      ck_assert_int_eq(open_bytes(ctx, c, &r), DECOMP_OK);
      ck_assert_uint_eq(decomp_weights_count(r), decomp_weights_count(w));
      for (size_t i = 0; i < decomp_weights_count(w); i++)
        assert_same_tensor(decomp_weights_at(w, i), decomp_weights_at(r, i));
      decomp_weights_free(r);
      free(c.p);
    }
  }
  free(b.p);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  remove_tmpdir();
}
END_TEST

/* --- bad zips --------------------------------------------------------------- */

static bytes good_archive(void) {
  pk p = {.n = 0};
  raw(&p, "\x80\x02", 2);
  odict(&p);
  op(&p, '(');
  int64_t size[2] = {2, 2}, stride[2] = {2, 1};
  tensor(&p, "w", "FloatStorage", "0", 4, 0, size, stride, 2);
  op(&p, 'u');
  op(&p, '.');
  static const float data[4] = {1, 2, 3, 4};
  return archive(&p, data, sizeof data);
}

START_TEST(truncated_zip_fails_cleanly_at_every_length) {
  decomp_ctx *ctx = decomp_ctx_new();
  bytes b = good_archive();
  decomp_weights *w;
  ck_assert_int_eq(open_bytes(ctx, b, &w), DECOMP_OK);
  decomp_weights_free(w);
  for (size_t len = 0; len < b.n; len++) {
    /* An exact-size copy, so ASan sees any read past the end. */
    unsigned char *c = malloc(len ? len : 1);
    memcpy(c, b.p, len);
    w = NULL;
    int rc = decomp_weights_open_memory(ctx, c, len, &w);
    ck_assert_msg(rc == DECOMP_ERR_BAD_ZIP || rc == DECOMP_ERR_UNKNOWN_FORMAT,
                  "length %zu: %d %s", len, rc, decomp_errmsg(ctx));
    ck_assert_ptr_null(w);
    ck_assert_str_ne(decomp_errmsg(ctx), "");
    free(c);
  }
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* The central directory record of entry `name`. */
static unsigned char *central(bytes b, const char *name) {
  size_t nlen = strlen(name);
  for (size_t i = 0; i + 46 + nlen <= b.n; i++)
    if (b.p[i] == 'P' && b.p[i + 1] == 'K' && b.p[i + 2] == 1 &&
        b.p[i + 3] == 2 && memcmp(b.p + i + 46, name, nlen) == 0)
      return b.p + i;
  ck_abort_msg("no central record for %s", name);
  return NULL;
}

static void expect(decomp_ctx *ctx, bytes b, int code, const char *needle) {
  decomp_weights *w = NULL;
  int rc = open_bytes(ctx, b, &w);
  ck_assert_msg(rc == code, "expected %d, got %d: %s", code, rc,
                decomp_errmsg(ctx));
  ck_assert_ptr_null(w);
  ck_assert_msg(strstr(decomp_errmsg(ctx), needle), "message \"%s\" lacks \"%s\"",
                decomp_errmsg(ctx), needle);
}

START_TEST(zip_with_lying_sizes_or_offsets_is_refused) {
  decomp_ctx *ctx = decomp_ctx_new();
  bytes b = good_archive();
  unsigned char *c;
  /* data/0 claims more bytes than the file holds. */
  c = central(b, "m/data/0");
  put32(c + 20, 1u << 30);
  put32(c + 24, 1u << 30);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "run past");
  free(b.p);
  /* sizes that disagree for a stored entry */
  b = good_archive();
  put32(central(b, "m/data/0") + 24, 8);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "declares 8 bytes");
  free(b.p);
  /* a size that makes data.pkl overlap the next entry */
  b = good_archive();
  c = central(b, "m/data.pkl");
  uint32_t sz = (uint32_t)(c[20] | c[21] << 8) + 64;
  put32(c + 20, sz);
  put32(c + 24, sz);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "overlaps");
  free(b.p);
  /* a local header offset pointing into data */
  b = good_archive();
  put32(central(b, "m/data/0") + 42, 100);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "local header");
  free(b.p);
  /* a local header offset far past the end */
  b = good_archive();
  put32(central(b, "m/data/0") + 42, 0xfffffff0u);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "local header");
  free(b.p);
  /* central directory offset and entry count that lie */
  b = good_archive();
  put32(b.p + b.n - 22 + 16, (uint32_t)b.n);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "central directory");
  free(b.p);
  b = good_archive();
  b.p[b.n - 22 + 8] = b.p[b.n - 22 + 10] = 200;
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "entries");
  free(b.p);
  /* a compressed (deflate) entry */
  b = good_archive();
  central(b, "m/data.pkl")[10] = 8;
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "compressed");
  free(b.p);
  /* an encrypted entry */
  b = good_archive();
  central(b, "m/data/0")[8] |= 1;
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "encrypted");
  free(b.p);
  /* a missing storage entry */
  b = good_archive();
  memcpy(central(b, "m/data/0") + 46, "m/data/9", 8);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "another entry");
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(torchscript_archive_is_detected_and_refused) {
  decomp_ctx *ctx = decomp_ctx_new();
  zentry es[] = {{"net/data.pkl", "\x80\x02}.", 4},
                 {"net/constants.pkl", "\x80\x02).", 4},
                 {"net/code/__torch__.py", "", 0},
                 {"net/version", "3\n", 2}};
  bytes b = make_zip(es, 4, false);
  ck_assert_int_eq(decomp_detect_format(b.p, b.n), DECOMP_FORMAT_TORCHSCRIPT);
  expect(ctx, b, DECOMP_ERR_TORCHSCRIPT, "TorchScript");
  free(b.p);
  /* A zip that is neither. */
  zentry other[] = {{"readme.txt", "hi", 2}};
  b = make_zip(other, 1, false);
  ck_assert_int_eq(decomp_detect_format(b.p, b.n), DECOMP_FORMAT_UNKNOWN);
  expect(ctx, b, DECOMP_ERR_BAD_ZIP, "not a torch.save archive");
  free(b.p);
  /* A legacy (pre-1.6) bare pickle. */
  static unsigned char lg[16] = {0x80, 2,    0x8a, 0x0a, 'l', 0xfc,
                                 0x9c, 'F',  0xf9, ' ',  'j', 0xa8,
                                 'P',  0x19, '.',  0};
  bytes legacy = {malloc(16), 16};
  memcpy(legacy.p, lg, 16);
  ck_assert_int_eq(decomp_detect_format(legacy.p, legacy.n),
                   DECOMP_FORMAT_UNKNOWN);
  expect(ctx, legacy, DECOMP_ERR_UNKNOWN_FORMAT, "legacy");
  free(legacy.p);
  decomp_ctx_free(ctx);
}
END_TEST

/* --- the unpickler ------------------------------------------------------------ */

static bytes pickle_archive(const pk *p) {
  static const float data[4] = {1, 2, 3, 4};
  return archive(p, data, sizeof data);
}

START_TEST(reduce_calling_os_system_is_refused_before_anything) {
  decomp_ctx *ctx = decomp_ctx_new();
  /* pickle.dumps(os.system-reduce, protocol=2) as torch.load would see it. */
  pk p = {.n = 0};
  raw(&p, "\x80\x02", 2);
  global(&p, "posix", "system");
  op(&p, 'q');
  op(&p, 0);
  str(&p, "touch /tmp/decompd-pwned");
  op(&p, 0x85);
  op(&p, 'R');
  op(&p, '.');
  bytes b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_FORBIDDEN_GLOBAL,
         "data.pkl offset 2: global posix system is not allowed");
  ck_assert_int_ne(access("/tmp/decompd-pwned", F_OK), 0);
  free(b.p);
  /* The same through protocol 4's STACK_GLOBAL. */
  p.n = 0;
  raw(&p, "\x80\x04", 2);
  op(&p, 0x8c);
  op(&p, 2);
  raw(&p, "os", 2);
  op(&p, 0x8c);
  op(&p, 6);
  raw(&p, "system", 6);
  op(&p, 0x93);
  str(&p, "id");
  op(&p, 0x85);
  op(&p, 'R');
  op(&p, '.');
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_FORBIDDEN_GLOBAL,
         "offset 14: global os system is not allowed");
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(unknown_globals_and_opcodes_are_refused_with_their_offset) {
  decomp_ctx *ctx = decomp_ctx_new();
  const char *bad[][2] = {{"builtins", "eval"},
                          {"__builtin__", "getattr"},
                          {"torch._utils", "_rebuild_parameter"},
                          {"torch", "Tensor"},
                          {"collections", "OrderedDict2"},
                          {"torch", "FloatStorage\x01"}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    pk p = {.n = 0};
    raw(&p, "\x80\x02", 2);
    odict(&p);
    global(&p, bad[i][0], bad[i][1]);
    op(&p, '.');
    bytes b = pickle_archive(&p);
    char want[160];
    snprintf(want, sizeof want, "offset 29: global %s ", bad[i][0]);
    expect(ctx, b, DECOMP_ERR_FORBIDDEN_GLOBAL, want);
    free(b.p);
  }
  /* A storage type may be named but never called. */
  pk p = {.n = 0};
  raw(&p, "\x80\x02", 2);
  global(&p, "torch", "FloatStorage");
  op(&p, ')');
  op(&p, 'R');
  op(&p, '.');
  bytes b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_FORBIDDEN_GLOBAL, "cannot be called");
  free(b.p);
  /* Opcodes outside the subset: INST, OBJ, NEWOBJ, DUP, EXT1. */
  const unsigned char ops[] = {'i', 'o', 0x81, '2', 0x82, 'P'};
  const char *names[] = {"INST", "OBJ", "NEWOBJ", "DUP", "EXT1", "PERSID"};
  for (size_t i = 0; i < sizeof ops; i++) {
    p.n = 0;
    raw(&p, "\x80\x02", 2);
    op(&p, ')');
    op(&p, ops[i]);
    op(&p, '.');
    b = pickle_archive(&p);
    char want[64];
    snprintf(want, sizeof want, "offset 3: opcode 0x%02x (%s)", ops[i],
             names[i]);
    expect(ctx, b, DECOMP_ERR_BAD_PICKLE, want);
    free(b.p);
  }
  /* Not a state dict, a value that is not a tensor, truncation, no STOP. */
  p.n = 0;
  raw(&p, "\x80\x02]", 3);
  op(&p, '.');
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "not a state dict");
  free(b.p);
  p.n = 0;
  raw(&p, "\x80\x02", 2);
  odict(&p);
  str(&p, "epoch");
  op(&p, 'K');
  op(&p, 3);
  op(&p, 's');
  op(&p, '.');
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "entry epoch is a int, not a tensor");
  free(b.p);
  p.n = 0;
  raw(&p, "\x80\x02X\xff\x00\x00\x00" "ab", 9);
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "truncated");
  free(b.p);
  p.n = 0;
  raw(&p, "\x80\x02}", 3);
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "without STOP");
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

static bytes one_tensor(const char *type, int64_t numel, int64_t off,
                        const int64_t *size, const int64_t *stride, int nd,
                        const void *data, size_t n) {
  pk p = {.n = 0};
  raw(&p, "\x80\x02", 2);
  odict(&p);
  op(&p, '(');
  tensor(&p, "layer.weight", type, "0", numel, off, size, stride, nd);
  op(&p, 'u');
  op(&p, '.');
  return archive(&p, data, n);
}

START_TEST(storage_smaller_than_its_tensor_is_refused) {
  decomp_ctx *ctx = decomp_ctx_new();
  static const float data[4] = {1, 2, 3, 4};
  int64_t size[1] = {10}, stride[1] = {1};
  /* The tensor wants 10 floats of a 4-float storage. */
  bytes b = one_tensor("FloatStorage", 4, 0, size, stride, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR,
         "layer.weight: tensor needs 40 bytes, storage data/0 has 16");
  free(b.p);
  /* An offset that walks off the end. */
  size[0] = 2;
  b = one_tensor("FloatStorage", 4, 3, size, stride, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "needs 20 bytes");
  free(b.p);
  /* Strides that walk off the end. */
  int64_t size2[2] = {2, 2}, stride2[2] = {3, 1};
  b = one_tensor("FloatStorage", 4, 0, size2, stride2, 2, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "needs 20 bytes");
  free(b.p);
  /* The persistent id's element count is checked against the entry. */
  size[0] = 4;
  b = one_tensor("FloatStorage", 100, 0, size, stride, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR,
         "storage data/0 declares 100 elements of F32, the entry holds 16 "
         "bytes");
  free(b.p);
  /* Same bytes read as doubles: 4 doubles need 32. */
  b = one_tensor("DoubleStorage", 4, 0, size, stride, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "declares 4 elements of F64");
  free(b.p);
  /* Negative numbers. */
  size[0] = -1;
  b = one_tensor("FloatStorage", 4, 0, size, stride, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "non-negative");
  free(b.p);
  size[0] = 1;
  b = one_tensor("FloatStorage", 4, -1, size, stride, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "offset");
  free(b.p);
  /* Nine dimensions. */
  int64_t s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  b = one_tensor("FloatStorage", 4, 0, s9, s9, 9, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "9 dimensions");
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(shapes_whose_product_overflows_are_refused) {
  decomp_ctx *ctx = decomp_ctx_new();
  static const float data[4] = {1, 2, 3, 4};
  int64_t size[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
  int64_t stride[2] = {0, 0}; /* a broadcast view touching one element */
  bytes b = one_tensor("FloatStorage", 4, 0, size, stride, 2, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "element count overflows");
  free(b.p);
  /* Extent overflow with a sane element count. */
  int64_t size1[2] = {2, 1}, stride1[2] = {INT64_MAX / 2, 1};
  b = one_tensor("FloatStorage", 4, 0, size1, stride1, 2, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "overflow");
  free(b.p);
  /* Storage element count × item size overflow. */
  int64_t one[1] = {1}, st1[1] = {1};
  b = one_tensor("DoubleStorage", INT64_MAX / 4, 0, one, st1, 1, data, 16);
  expect(ctx, b, DECOMP_ERR_BAD_TENSOR, "declares");
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(deep_nesting_cycles_and_huge_memo_indices_are_bounded) {
  decomp_ctx *ctx = decomp_ctx_new();
  static pk p;
  /* 60000 nested MARKs. */
  p.n = 0;
  raw(&p, "\x80\x02", 2);
  for (int i = 0; i < 60000; i++)
    op(&p, '(');
  op(&p, '.');
  bytes b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "nested MARKs");
  free(b.p);
  /* A memo index near 2^32. */
  p.n = 0;
  raw(&p, "\x80\x02}r\xff\xff\xff\xff.", 9);
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "memo index");
  free(b.p);
  /* An unset memo entry. */
  p.n = 0;
  raw(&p, "\x80\x02h\x05.", 5);
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "memo entry 5 is not set");
  free(b.p);
  /* A _metadata list that contains itself. */
  p.n = 0;
  raw(&p, "\x80\x02", 2);
  odict(&p);
  op(&p, '}');
  str(&p, "_metadata");
  odict(&p);
  str(&p, "x");
  raw(&p, "]q\x01h\x01" "a", 6); /* l = []; l.append(l) */
  op(&p, 's');
  op(&p, 's');
  op(&p, 'b');
  op(&p, '.');
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "_metadata is nested too deeply");
  free(b.p);
  /* A _metadata DAG of 2^30 paths: x0 = [], x(k+1) = [xk, xk]. */
  p.n = 0;
  raw(&p, "\x80\x02", 2);
  odict(&p);
  op(&p, '}');
  str(&p, "_metadata");
  odict(&p);
  str(&p, "x");
  op(&p, '(');
  raw(&p, "]q\x00", 3);
  for (int k = 0; k < 30; k++) {
    raw(&p, "](h", 3);
    op(&p, (unsigned char)k);
    op(&p, 'h');
    op(&p, (unsigned char)k);
    op(&p, 'e');
    op(&p, 'q');
    op(&p, (unsigned char)(k + 1));
  }
  op(&p, 't'); /* all the lists, as one tuple value */
  op(&p, 's');
  op(&p, 's');
  op(&p, 'b');
  op(&p, '.');
  b = pickle_archive(&p);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "too large");
  free(b.p);
  /* A stack of a million values. */
  static unsigned char big[(1 << 20) + 16];
  memcpy(big, "\x80\x02", 2);
  memset(big + 2, 'N', (1 << 20) + 4);
  big[(1 << 20) + 6] = '.';
  zentry es[] = {{"m/data.pkl", big, (1 << 20) + 7}};
  b = make_zip(es, 1, false);
  expect(ctx, b, DECOMP_ERR_BAD_PICKLE, "stack deeper");
  free(b.p);
  decomp_ctx_free(ctx);
}
END_TEST

START_TEST(a_failed_save_leaves_nothing_behind) {
  make_tmpdir();
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_weights_new(ctx, &w);
  static float x[2] = {1, 2};
  decomp_tensor t = {.name = "__metadata__", .dtype = DECOMP_DTYPE_F32,
                     .ndim = 1, .shape = {2}, .stride = {1}, .data = x};
  ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_OK);
  char path[512];
  snprintf(path, sizeof path, "%s/out.safetensors", tmpdir);
  /* Fails after the temporary file was made. */
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_SAFETENSORS),
                   DECOMP_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(count_files(), 0);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_TORCHSCRIPT),
                   DECOMP_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(count_files(), 0);
  snprintf(path, sizeof path, "%s/no/such/dir/out.pth", tmpdir);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_PTH),
                   DECOMP_ERR_IO);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "no/such/dir/out.pth"));
  /* An existing file is replaced whole. */
  snprintf(path, sizeof path, "%s/.pth", tmpdir);
  FILE *f = fopen(path, "w");
  fputs("old", f);
  fclose(f);
  ck_assert_int_eq(decomp_weights_save(ctx, w, path, DECOMP_FORMAT_PTH),
                   DECOMP_OK);
  ck_assert_int_eq(count_files(), 1);
  decomp_weights *r;
  ck_assert_int_eq(decomp_weights_open(ctx, path, &r), DECOMP_OK);
  ck_assert_str_eq(decomp_weights_at(r, 0)->name, "__metadata__");
  decomp_weights_free(r);
  bytes b = read_file(path); /* ".pth" has an empty stem: "archive/" */
  zip_archive z;
  ck_assert_int_eq(zip_open(ctx, b.p, b.n, &z), DECOMP_OK);
  ck_assert_ptr_nonnull(zip_find(&z, "archive/data.pkl"));
  zip_close(&z);
  free(b.p);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  remove_tmpdir();
}
END_TEST

START_TEST(open_reports_the_path_and_missing_files) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w = NULL;
  ck_assert_int_eq(decomp_weights_open(ctx, "/nonexistent/x.pth", &w),
                   DECOMP_ERR_IO);
  ck_assert_ptr_null(w);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(ctx), "/nonexistent/x.pth"));
  decomp_ctx_free(ctx);
}
END_TEST

int main(void) {
  Suite *s = suite_create("pth");
  TCase *tc = tcase_create("pth");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, round_trip_keeps_order_dtypes_views_shared_storage_and_metadata);
  tcase_add_test(tc, crc32_matches_the_standard_check_value);
  tcase_add_test(tc, any_folder_prefix_and_zip64_records_are_read);
  tcase_add_test(tc, truncated_zip_fails_cleanly_at_every_length);
  tcase_add_test(tc, zip_with_lying_sizes_or_offsets_is_refused);
  tcase_add_test(tc, torchscript_archive_is_detected_and_refused);
  tcase_add_test(tc, reduce_calling_os_system_is_refused_before_anything);
  tcase_add_test(tc, unknown_globals_and_opcodes_are_refused_with_their_offset);
  tcase_add_test(tc, storage_smaller_than_its_tensor_is_refused);
  tcase_add_test(tc, shapes_whose_product_overflows_are_refused);
  tcase_add_test(tc, deep_nesting_cycles_and_huge_memo_indices_are_bounded);
  tcase_add_test(tc, a_failed_save_leaves_nothing_behind);
  tcase_add_test(tc, open_reports_the_path_and_missing_files);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
