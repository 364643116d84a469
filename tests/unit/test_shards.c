/* test_shards.c — sharded checkpoints in (decomp_weights_open_sharded, the
 * form a service with shards as separate blobs uses) and the streamed
 * output (decomp_decompose_save): a sharded model reads as the same set as
 * its one-file form, index defects are refused naming tensor and shard,
 * the streamed file is byte for byte what the in-memory path saves, and a
 * failed or cancelled run leaves nothing in the output folder. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

#define D 24
#define NL 3

/* A folder for one test, emptied and removed by rm_dir. */
static void mk_dir(char *out, size_t cap) {
  snprintf(out, cap, "/tmp/decomp-shards-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(out));
}

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    n += e->d_name[0] != '.' || (e->d_name[1] && e->d_name[1] != '.');
  if (d)
    closedir(d);
  return n;
}

static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[512];
  while (d && (e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
      continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  if (d)
    closedir(d);
  rmdir(dir);
}

static float data[NL][D * D + D];

/* The model: NL Linear layers (weight + bias) and a passing-through norm,
 * as one set; shard s (of 3) gets the tensors whose index % 3 == s. */
static decomp_weights *model(decomp_ctx *ctx, int shard) {
  decomp_weights *w;
  ck_assert_int_eq(decomp_weights_new(ctx, &w), DECOMP_OK);
  int k = 0;
  for (int l = 0; l < NL; l++) {
    for (int i = 0; i < D * D + D; i++) /* rank-2 weights plus a ripple */
      data[l][i] = (float)((i % D) * 0.01 + (i / D % 5) * 0.1 * (l + 1) +
                           0.001 * ((i * 7919) % 13));
    char name[64];
    for (int part = 0; part < 2; part++) {
      snprintf(name, sizeof name, "layers.%d.%s", l, part ? "bias" : "weight");
      decomp_tensor t = {.name = name, .dtype = DECOMP_DTYPE_F32,
                         .ndim = part ? 1 : 2,
                         .shape = {part ? D : D, D},
                         .stride = {part ? 1 : D, 1},
                         .data = part ? &data[l][D * D] : data[l]};
      if (shard < 0 || k % 3 == shard)
        ck_assert_int_eq(decomp_weights_add(w, &t), DECOMP_OK);
      k++;
    }
  }
  ck_assert_int_eq(decomp_weights_set_metadata(w, "{\"format\":\"pt\"}"),
                   DECOMP_OK);
  return w;
}

static const char *shard_name[3] = {"model-00001-of-00003.safetensors",
                                    "model-00002-of-00003.safetensors",
                                    "model-00003-of-00003.safetensors"};

/* Write the three shards into `dir`; return the index text (static). */
static const char *write_shards(decomp_ctx *ctx, const char *dir) {
  static char index[4096];
  size_t n = (size_t)snprintf(index, sizeof index,
                              "{\"metadata\":{\"total_size\":%zu},"
                              "\"weight_map\":{",
                              (size_t)NL * (D * D + D) * 4);
  for (int s = 0; s < 3; s++) {
    decomp_weights *w = model(ctx, s);
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, shard_name[s]);
    ck_assert_int_eq(decomp_weights_save(ctx, w, p, DECOMP_FORMAT_SAFETENSORS),
                     DECOMP_OK);
    decomp_weights_free(w);
  }
  for (int k = 0; k < 2 * NL; k++)
    n += (size_t)snprintf(index + n, sizeof index - n, "%s\"layers.%d.%s\":\"%s\"",
                          k ? "," : "", k / 2, k % 2 ? "bias" : "weight",
                          shard_name[k % 3]);
  snprintf(index + n, sizeof index - n, "}}");
  return index;
}

static int open_with(decomp_ctx *ctx, const char *dir, const char *index,
                     int nshards, const char *const names[],
                     decomp_weights **out) {
  char paths[4][512];
  const char *pp[4];
  for (int i = 0; i < nshards; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/%s", dir, names[i]);
    pp[i] = paths[i];
  }
  return decomp_weights_open_sharded(ctx, index, strlen(index),
                                     (size_t)nshards, names, pp, out);
}

START_TEST(shards_given_by_path_read_as_the_one_file_set) {
  decomp_ctx *ctx = decomp_ctx_new();
  char dir[64];
  mk_dir(dir, sizeof dir);
  const char *index = write_shards(ctx, dir);
  decomp_weights *w = NULL, *one = model(ctx, -1);
  /* Given in another order than the map's: the map's order wins. */
  const char *names[3] = {shard_name[2], shard_name[0], shard_name[1]};
  ck_assert_msg(open_with(ctx, dir, index, 3, names, &w) == DECOMP_OK, "%s",
                decomp_errmsg(ctx));
  ck_assert_uint_eq(decomp_weights_shard_count(w), 3);
  ck_assert_uint_eq(decomp_weights_count(w), decomp_weights_count(one));
  ck_assert_str_eq(decomp_weights_metadata(w), "{\"format\":\"pt\"}");
  for (size_t i = 0; i < decomp_weights_count(one); i++) {
    const decomp_tensor *a = decomp_weights_at(one, i);
    const decomp_tensor *b = decomp_weights_find(w, a->name);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(b->ndim, a->ndim);
    ck_assert_int_eq(memcmp(a->data, b->data, a->storage_nbytes), 0);
  }
  /* The first shard's tensors come first. */
  ck_assert_str_eq(decomp_weights_at(w, 0)->name, "layers.0.weight");
  ck_assert_uint_eq(decomp_weights_shard_count(one), 0);
  decomp_weights_free(w);
  /* The folder way finds the same. */
  char ip[512];
  snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", dir);
  FILE *f = fopen(ip, "w");
  fputs(index, f);
  fclose(f);
  ck_assert_msg(decomp_weights_open(ctx, dir, &w) == DECOMP_OK, "%s",
                decomp_errmsg(ctx));
  ck_assert_uint_eq(decomp_weights_count(w), 2 * NL);
  decomp_weights_free(w);
  decomp_weights_free(one);
  rm_dir(dir);
  decomp_ctx_free(ctx);
}
END_TEST

static void refused(const char *index_edit_from, const char *index_edit_to,
                    int nshards, const char *const names[], const char *n1,
                    const char *n2) {
  decomp_ctx *ctx = decomp_ctx_new();
  char dir[64];
  mk_dir(dir, sizeof dir);
  char index[4096];
  snprintf(index, sizeof index, "%s", write_shards(ctx, dir));
  if (index_edit_from) {
    char *at = strstr(index, index_edit_from);
    ck_assert_ptr_nonnull(at);
    char rest[4096];
    snprintf(rest, sizeof rest, "%s", at + strlen(index_edit_from));
    snprintf(at, sizeof index - (size_t)(at - index), "%s%s", index_edit_to,
             rest);
  }
  decomp_weights *w = NULL;
  int rc = open_with(ctx, dir, index, nshards, names, &w);
  ck_assert_int_eq(rc, DECOMP_ERR_BAD_SHARD_INDEX);
  ck_assert_ptr_null(w);
  const char *msg = decomp_errmsg(ctx);
  ck_assert_msg(strstr(msg, n1) && (!n2 || strstr(msg, n2)),
                "\"%s\" should name %s and %s", msg, n1, n2 ? n2 : "-");
  rm_dir(dir);
  decomp_ctx_free(ctx);
}

START_TEST(index_defects_are_refused_naming_tensor_and_shard) {
  const char *all[3] = {shard_name[0], shard_name[1], shard_name[2]};
  /* A shard the map names is not given. */
  refused(NULL, NULL, 2, all, shard_name[2], "missing");
  /* A shard given that the map does not name. */
  const char *four[4] = {shard_name[0], shard_name[1], shard_name[2],
                         "extra-00001-of-00001.safetensors"};
  refused(NULL, NULL, 4, four, "extra-00001-of-00001.safetensors",
          "not referenced");
  /* The map puts a tensor in another shard than the one holding it. */
  refused("\"layers.0.bias\":\"model-00002-of-00003.safetensors\"",
          "\"layers.0.bias\":\"model-00003-of-00003.safetensors\"", 3, all,
          "layers.0.bias", shard_name[1]);
  /* Names that are paths. */
  refused("\"layers.2.bias\":\"model-00003-of-00003.safetensors\"",
          "\"layers.2.bias\":\"../model-00003-of-00003.safetensors\"", 3, all,
          "layers.2.bias", "..");
  refused("\"layers.2.bias\":\"model-00003-of-00003.safetensors\"",
          "\"layers.2.bias\":\"/etc/model.safetensors\"", 3, all,
          "layers.2.bias", "'/'");
  /* A mapped tensor no shard holds. */
  refused("\"weight_map\":{", "\"weight_map\":{\"ghost\":\"model-00001-of-"
          "00003.safetensors\",", 3, all, "ghost", "does not hold it");
  /* total_size off by one. */
  refused("\"total_size\":", "\"total_size\":1", 3, all, "total_size", NULL);
}
END_TEST

/* Decompose the model in `w` at rank 4 with `threads`. */
static decomp_spec *spec_of(decomp_ctx *ctx) {
  char text[1024];
  size_t n = (size_t)snprintf(text, sizeof text, "{\"layers\":[");
  for (int l = 0; l < NL; l++)
    n += (size_t)snprintf(text + n, sizeof text - n,
                          "%s{\"name\":\"layers.%d\",\"type\":\"Linear\","
                          "\"in_features\":%d,\"out_features\":%d,"
                          "\"bias\":true}",
                          l ? "," : "", l, D, D);
  snprintf(text + n, sizeof text - n, "]}");
  decomp_spec *spec;
  ck_assert_int_eq(decomp_spec_parse(ctx, text, strlen(text), &spec), DECOMP_OK);
  return spec;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc(*len ? *len : 1);
  ck_assert_uint_eq(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

START_TEST(streamed_file_is_byte_for_byte_the_saved_result) {
  decomp_ctx *ctx = decomp_ctx_new();
  char dir[64];
  mk_dir(dir, sizeof dir);
  decomp_weights *w = model(ctx, -1);
  decomp_spec *spec = spec_of(ctx);
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(ctx,
                                       "{\"name\":\"fixed\",\"rank\":4,"
                                       "\"types\":[\"Linear\"]}",
                                       &pol),
                   DECOMP_OK);
  for (int threads = 0; threads <= 2; threads += 2) {
    decomp_options o = {.threads = threads};
    decomp_result *r;
    ck_assert_int_eq(decomp_decompose(ctx, w, spec, pol, &o, &r), DECOMP_OK);
    char saved[128];
    snprintf(saved, sizeof saved, "%s/saved.safetensors", dir);
    ck_assert_int_eq(decomp_weights_save(ctx, decomp_result_weights(r), saved,
                                         DECOMP_FORMAT_SAFETENSORS),
                     DECOMP_OK);
    char *info = NULL, *files = NULL;
    decomp_save_options so = {.single_name = "streamed.safetensors"};
    ck_assert_msg(decomp_decompose_save(ctx, w, spec, pol, &o, dir, &so,
                                        &info, &files) == DECOMP_OK,
                  "%s", decomp_errmsg(ctx));
    ck_assert_str_eq(files, "[\"streamed.safetensors\"]");
    ck_assert_ptr_nonnull(strstr(info, "\"peak_rss_bytes\""));
    ck_assert_ptr_null(strstr(decomp_result_info(r), "peak_rss_bytes"));
    char streamed[128];
    snprintf(streamed, sizeof streamed, "%s/streamed.safetensors", dir);
    size_t la, lb;
    char *a = slurp(saved, &la), *b = slurp(streamed, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(a, b, la), 0);
    free(a);
    free(b);

    /* Sharded, one tensor a shard (each is over 16 bytes): reads back as
     * the result. */
    so = (decomp_save_options){.shard_bytes = 16};
    decomp_free(info);
    decomp_free(files);
    ck_assert_int_eq(decomp_decompose_save(ctx, w, spec, pol, &o, dir, &so,
                                           &info, &files),
                     DECOMP_OK);
    decomp_weights *back;
    ck_assert_msg(decomp_weights_open(ctx, dir, &back) == DECOMP_OK, "%s",
                  decomp_errmsg(ctx));
    const decomp_weights *rw = decomp_result_weights(r);
    ck_assert_uint_eq(decomp_weights_count(back), decomp_weights_count(rw));
    ck_assert_uint_eq(decomp_weights_shard_count(back),
                      decomp_weights_count(rw));
    for (size_t i = 0; i < decomp_weights_count(rw); i++) {
      const decomp_tensor *x = decomp_weights_at(rw, i);
      const decomp_tensor *y = decomp_weights_at(back, i);
      ck_assert_str_eq(x->name, y->name);
      ck_assert_int_eq(memcmp(x->data, y->data, (size_t)decomp_tensor_numel(x) *
                                                    decomp_dtype_size(x->dtype)),
                       0);
    }
    decomp_weights_free(back);
    decomp_free(info);
    decomp_free(files);
    decomp_result_free(r);
    rm_dir(dir);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
  }
  decomp_policy_free(pol);
  decomp_spec_free(spec);
  decomp_weights_free(w);
  rm_dir(dir);
  decomp_ctx_free(ctx);
}
END_TEST

static int cancel_second(void *user, const decomp_progress *p) {
  int *done = user;
  return p->phase == DECOMP_PHASE_DONE && ++*done == 2;
}

START_TEST(a_cancelled_or_failed_streamed_run_leaves_nothing) {
  decomp_ctx *ctx = decomp_ctx_new();
  char dir[64];
  mk_dir(dir, sizeof dir);
  decomp_weights *w = model(ctx, -1);
  decomp_spec *spec = spec_of(ctx);
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(ctx,
                                       "{\"name\":\"fixed\",\"rank\":4,"
                                       "\"types\":[\"Linear\"]}",
                                       &pol),
                   DECOMP_OK);
  int done = 0;
  decomp_options o = {.progress = cancel_second, .progress_user = &done};
  decomp_save_options so = {.sharded = true};
  char *info = NULL, *files = NULL;
  /* Cancelled after the second layer was written. */
  ck_assert_int_eq(decomp_decompose_save(ctx, w, spec, pol, &o, dir, &so,
                                         &info, &files),
                   DECOMP_ERR_CANCELLED);
  ck_assert_ptr_null(info);
  ck_assert_ptr_null(files);
  ck_assert_int_eq(count_files(dir), 0);
  /* A folder that does not exist, a file name that is a path. */
  char missing[128];
  snprintf(missing, sizeof missing, "%s/no/such", dir);
  ck_assert_int_eq(decomp_decompose_save(ctx, w, spec, pol, NULL, missing,
                                         NULL, &info, NULL),
                   DECOMP_ERR_IO);
  so = (decomp_save_options){.single_name = "../out.safetensors"};
  ck_assert_int_eq(decomp_decompose_save(ctx, w, spec, pol, NULL, dir, &so,
                                         &info, NULL),
                   DECOMP_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(count_files(dir), 0);
  decomp_policy_free(pol);
  decomp_spec_free(spec);
  decomp_weights_free(w);
  rm_dir(dir);
  decomp_ctx_free(ctx);
}
END_TEST

int main(void) {
  Suite *s = suite_create("shards");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, shards_given_by_path_read_as_the_one_file_set);
  tcase_add_test(tc, index_defects_are_refused_naming_tensor_and_shard);
  tcase_add_test(tc, streamed_file_is_byte_for_byte_the_saved_result);
  tcase_add_test(tc, a_cancelled_or_failed_streamed_run_leaves_nothing);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
