/* test_tasks.c — one job cut into tasks (decomp_task_*): on a resnet-like
 * model (strided, grouped and 1x1 convs, biases, a Linear, tensors passing
 * through), the assembled files and info are decomp_decompose_save's byte
 * for byte (peak_rss_bytes aside, the one measurement) under a budget
 * (global) policy and a per-layer one, whitened by a calibration too, with
 * threads 1 and 2, however the layers are grouped into tasks and in
 * whatever order the tasks run; the comparison sees one changed factor
 * element or one changed rank; and records that do not fit (a missing
 * layer, a wrong rank, another plan, another job, a duplicate) are refused
 * naming the layer, leaving nothing written. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void) { /* xorshift64, uniform in [-1, 1) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 4503599627370496.0 - 1.0;
}

static const char *SPEC =
    "{\"layers\": ["
    "{\"name\": \"conv1\", \"type\": \"Conv2d\", \"in_channels\": 3, "
    "\"out_channels\": 16, \"kernel_size\": 5, \"stride\": 2, \"padding\": 2, "
    "\"bias\": false, \"input_size\": [32, 32]},"
    "{\"name\": \"layer1.0.conv1\", \"type\": \"Conv2d\", \"in_channels\": 16, "
    "\"out_channels\": 16, \"kernel_size\": 3, \"padding\": 1, \"bias\": "
    "false, "
    "\"input_size\": [16, 16]},"
    "{\"name\": \"layer1.0.conv2\", \"type\": \"Conv2d\", \"in_channels\": 16, "
    "\"out_channels\": 16, \"kernel_size\": 3, \"padding\": 1, \"bias\": "
    "false, "
    "\"input_size\": [16, 16]},"
    "{\"name\": \"layer2.0.conv1\", \"type\": \"Conv2d\", \"in_channels\": 16, "
    "\"out_channels\": 32, \"kernel_size\": 3, \"stride\": 2, \"padding\": 1, "
    "\"bias\": false, \"input_size\": [16, 16]},"
    "{\"name\": \"layer2.0.conv2\", \"type\": \"Conv2d\", \"in_channels\": 32, "
    "\"out_channels\": 32, \"kernel_size\": 3, \"padding\": 1, \"bias\": true, "
    "\"input_size\": [8, 8]},"
    "{\"name\": \"layer2.0.downsample.0\", \"type\": \"Conv2d\", "
    "\"in_channels\": 16, \"out_channels\": 32, \"kernel_size\": 1, "
    "\"stride\": 2, \"bias\": false, \"input_size\": [16, 16]},"
    "{\"name\": \"layer3.0.conv1\", \"type\": \"Conv2d\", \"in_channels\": 32, "
    "\"out_channels\": 64, \"kernel_size\": 3, \"padding\": 1, \"groups\": 4, "
    "\"bias\": false, \"input_size\": [8, 8]},"
    "{\"name\": \"fc\", \"type\": \"Linear\", \"in_features\": 64, "
    "\"out_features\": 10, \"bias\": true}"
    "]}";

#define NLAYERS 8

/* The model's tensors: each layer's weight (and bias), with a norm's
 * tensors and a step counter passing through between them. */
typedef struct model {
  decomp_ctx *ctx;
  decomp_weights *w, *calib;
  decomp_spec *spec;
  void *bufs[64];
  int nbufs;
} model;

static void *keep(model *m, size_t bytes) {
  void *p = malloc(bytes);
  ck_assert_ptr_nonnull(p);
  m->bufs[m->nbufs++] = p;
  return p;
}

static void add(model *m, const char *name, decomp_dtype dt, int ndim,
                const int64_t *shape) {
  decomp_tensor t = {.name = name, .dtype = dt, .ndim = ndim};
  int64_t n = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    t.shape[d] = shape[d];
    t.stride[d] = n;
    n *= shape[d];
  }
  void *p = keep(m, (size_t)n * decomp_dtype_size(dt));
  for (int64_t i = 0; i < n; i++) {
    if (dt == DECOMP_DTYPE_F32)
      ((float *)p)[i] = (float)urand();
    else if (dt == DECOMP_DTYPE_F16)
      ((uint16_t *)p)[i] = core_float_to_half((float)urand());
    else
      ((int64_t *)p)[i] = i + 7;
  }
  t.data = p;
  ck_assert_int_eq(decomp_weights_add(m->w, &t), DECOMP_OK);
}

/* A Gram XᵀX of `rows` random samples of width n (groups of them). */
static void add_gram(model *m, const char *key, int64_t groups, int64_t n,
                     int64_t rows) {
  char name[128];
  float *g = keep(m, (size_t)(groups * n * n) * sizeof *g);
  double *x = malloc((size_t)(rows * n) * sizeof *x);
  for (int64_t j = 0; j < groups; j++) {
    for (int64_t i = 0; i < rows * n; i++)
      x[i] = urand() * (1 + (double)(i % n) / 4); /* uneven input scales */
    for (int64_t a = 0; a < n; a++)
      for (int64_t b = 0; b <= a; b++) {
        double s = 0;
        for (int64_t r = 0; r < rows; r++)
          s += x[r * n + a] * x[r * n + b];
        g[(j * n + a) * n + b] = g[(j * n + b) * n + a] = (float)s;
      }
  }
  free(x);
  decomp_tensor t = {.dtype = DECOMP_DTYPE_F32, .data = g};
  snprintf(name, sizeof name, "%s.gram", key);
  t.name = name;
  if (groups > 1) {
    t.ndim = 3;
    t.shape[0] = groups, t.shape[1] = t.shape[2] = n;
    t.stride[0] = n * n, t.stride[1] = n, t.stride[2] = 1;
  } else {
    t.ndim = 2;
    t.shape[0] = t.shape[1] = n;
    t.stride[0] = n, t.stride[1] = 1;
  }
  ck_assert_int_eq(decomp_weights_add(m->calib, &t), DECOMP_OK);
  float *c = keep(m, sizeof *c);
  *c = (float)rows;
  decomp_tensor ct = {.dtype = DECOMP_DTYPE_F32, .ndim = 0, .data = c};
  snprintf(name, sizeof name, "%s.count", key);
  ct.name = name;
  ck_assert_int_eq(decomp_weights_add(m->calib, &ct), DECOMP_OK);
}

/* The model with its layers' weights (and biases) in `dt`. */
static void model_init_dtype(model *m, decomp_dtype dt) {
  *m = (model){.ctx = decomp_ctx_new()};
  rng = 88172645463325252ull;
  ck_assert_int_eq(decomp_spec_parse(m->ctx, SPEC, strlen(SPEC), &m->spec),
                   DECOMP_OK);
  ck_assert_int_eq(decomp_weights_new(m->ctx, &m->w), DECOMP_OK);
  for (size_t i = 0; i < decomp_spec_count(m->spec); i++) {
    const decomp_layer *l = decomp_spec_at(m->spec, i);
    char name[128];
    snprintf(name, sizeof name, "%s.weight", l->name);
    if (core_layer_is_linear(l)) {
      int64_t s[2] = {l->out_channels, l->in_channels};
      add(m, name, dt, 2, s);
    } else {
      int64_t s[4] = {l->out_channels, l->in_channels / l->groups,
                      l->kernel_size[0], l->kernel_size[1]};
      add(m, name, dt, 4, s);
    }
    if (l->bias) {
      int64_t s[1] = {l->out_channels};
      snprintf(name, sizeof name, "%s.bias", l->name);
      add(m, name, dt, 1, s);
    }
    /* A norm after it, passing through. */
    int64_t s[1] = {l->out_channels};
    snprintf(name, sizeof name, "bn%zu.weight", i);
    add(m, name, DECOMP_DTYPE_F32, 1, s);
    snprintf(name, sizeof name, "bn%zu.num_batches_tracked", i);
    add(m, name, DECOMP_DTYPE_I64, 0, s);
  }
  /* The calibration: the Linear's and a grouped conv's inputs. */
  ck_assert_int_eq(decomp_weights_new(m->ctx, &m->calib), DECOMP_OK);
  add_gram(m, "fc", 1, 64, 200);
  add_gram(m, "l3", 4, 8 * 9, 150);
  ck_assert_int_eq(
      decomp_weights_set_metadata(
          m->calib,
          "{\"format\": \"decompd.calibration\", \"version\": \"1\", "
          "\"layers\": \"{\\\"fc\\\": {\\\"gram\\\": \\\"fc\\\", "
          "\\\"type\\\": \\\"Linear\\\"}, \\\"layer3.0.conv1\\\": "
          "{\\\"gram\\\": \\\"l3\\\", \\\"type\\\": \\\"Conv2d\\\"}}\"}"),
      DECOMP_OK);
}

static void model_init(model *m) {
  model_init_dtype(m, DECOMP_DTYPE_F32);
}

static void model_free(model *m) {
  decomp_weights_free(m->w);
  decomp_weights_free(m->calib);
  decomp_spec_free(m->spec);
  for (int i = 0; i < m->nbufs; i++)
    free(m->bufs[i]);
  decomp_ctx_free(m->ctx);
}

/* --- folders and files ---------------------------------------------------- */

static void mk_dir(char *out, size_t cap) {
  snprintf(out, cap, "/tmp/decomp-tasks-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(out));
}

static int count_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
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

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "%s is missing", path);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc(*len ? *len : 1);
  ck_assert_uint_eq(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

/* The info text with summary.peak_rss_bytes's value set to 0: the one
 * field that measures a process. */
static char *normalized(const char *info) {
  char *s = strdup(info);
  char *p = strstr(s, "\"peak_rss_bytes\": ");
  if (p) {
    p += strlen("\"peak_rss_bytes\": ");
    char *q = p;
    while (*q >= '0' && *q <= '9')
      q++;
    *p = '0';
    memmove(p + 1, q, strlen(q) + 1);
  }
  return s;
}

/* Whether folder a and b hold the same files (names from files_json, a
 * JSON array as decomp_decompose_save gives it) with the same bytes. */
static bool same_files(const char *a, const char *b, const char *files_json) {
  bool same = true;
  const char *p = files_json;
  while ((p = strchr(p, '"'))) {
    const char *q = strchr(p + 1, '"');
    char name[256], pa[512], pb[512];
    snprintf(name, sizeof name, "%.*s", (int)(q - p - 1), p + 1);
    p = q + 1;
    snprintf(pa, sizeof pa, "%s/%s", a, name);
    snprintf(pb, sizeof pb, "%s/%s", b, name);
    size_t la, lb;
    char *x = slurp(pa, &la), *y = slurp(pb, &lb);
    same = same && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
  }
  return same;
}

/* --- the job as tasks ----------------------------------------------------- */

typedef struct blobs {
  void *p[NLAYERS];
  size_t len[NLAYERS];
  size_t n;
} blobs;

static void blobs_free(blobs *b) {
  for (size_t i = 0; i < b->n; i++)
    decomp_free(b->p[i]);
  b->n = 0;
}

/* A grouping of the spec's layers into tasks, in the order they run:
 * "7,6|5|4,3,2,1,0" (layer indexes; '|' between tasks). */
static const char **group_names(const model *m, const char *grouping,
                                size_t *counts, size_t *ntasks) {
  const char **names = calloc(NLAYERS, sizeof *names);
  size_t t = 0, k = 0;
  counts[0] = 0;
  for (const char *c = grouping; *c; c++) {
    if (*c == '|') {
      counts[++t] = 0;
    } else if (*c >= '0' && *c <= '9') {
      names[k++] = decomp_spec_at(m->spec, (size_t)(*c - '0'))->name;
      counts[t]++;
    }
  }
  *ntasks = t + 1;
  return names;
}

static void run_tasks(model *m, const decomp_policy *pol,
                      const decomp_options *o, const char *grouping, int phase,
                      const void *plan, size_t plan_len, blobs *out) {
  size_t counts[NLAYERS], ntasks;
  const char **names = group_names(m, grouping, counts, &ntasks);
  out->n = 0;
  for (size_t t = 0, k = 0; t < ntasks; k += counts[t++]) {
    int rc =
        phase == 1
            ? decomp_task_spectra(m->ctx, m->w, m->spec, pol, o, names + k,
                                  counts[t], &out->p[out->n], &out->len[out->n])
            : decomp_task_factors(m->ctx, m->w, m->spec, pol, o, plan, plan_len,
                                  names + k, counts[t], &out->p[out->n],
                                  &out->len[out->n]);
    ck_assert_msg(rc == DECOMP_OK, "phase %d task %zu: %s", phase, t,
                  decomp_errmsg(m->ctx));
    out->n++;
  }
  free(names);
}

static void make_plan(model *m, const decomp_policy *pol,
                      const decomp_options *o, const char *grouping,
                      void **plan, size_t *plan_len) {
  blobs s;
  run_tasks(m, pol, o, grouping, 1, NULL, 0, &s);
  ck_assert_msg(decomp_task_plan(m->ctx, m->w, m->spec, pol, o,
                                 (const void *const *)s.p, s.len, s.n, plan,
                                 plan_len) == DECOMP_OK,
                "plan: %s", decomp_errmsg(m->ctx));
  blobs_free(&s);
}

static int assemble(model *m, const decomp_policy *pol, const decomp_options *o,
                    const void *plan, size_t plan_len, const blobs *f,
                    const char *dir, char **info, char **files) {
  return decomp_task_assemble(m->ctx, m->w, m->spec, pol, o, plan, plan_len,
                              (const void *const *)f->p, f->len, f->n, dir,
                              NULL, info, files);
}

/* The single run and the job as tasks (phase 1 grouped as g1, phase 2 as
 * g2) into two folders: same files, same bytes, same info but for
 * peak_rss_bytes. */
static void check_same(model *m, const char *policy, const decomp_options *o,
                       const char *g1, const char *g2) {
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(m->ctx, policy, &pol), DECOMP_OK);
  char a[64], b[64];
  mk_dir(a, sizeof a);
  mk_dir(b, sizeof b);
  char *info_a, *files_a, *info_b, *files_b;
  ck_assert_msg(decomp_decompose_save(m->ctx, m->w, m->spec, pol, o, a, NULL,
                                      &info_a, &files_a) == DECOMP_OK,
                "%s", decomp_errmsg(m->ctx));
  void *plan;
  size_t plan_len;
  make_plan(m, pol, o, g1, &plan, &plan_len);
  blobs f;
  run_tasks(m, pol, o, g2, 2, plan, plan_len, &f);
  ck_assert_msg(assemble(m, pol, o, plan, plan_len, &f, b, &info_b, &files_b) ==
                    DECOMP_OK,
                "assemble: %s", decomp_errmsg(m->ctx));
  ck_assert_str_eq(files_a, files_b);
  ck_assert_msg(same_files(a, b, files_a),
                "%s, threads %d, tasks %s then %s: the files differ", policy,
                o->threads, g1, g2);
  /* The same records as files. */
  char c[64], *info_c, *files_c;
  mk_dir(c, sizeof c);
  char paths[NLAYERS][128];
  const char *pp[NLAYERS];
  for (size_t i = 0; i < f.n; i++) {
    snprintf(paths[i], sizeof paths[i], "%s/r%zu.safetensors", b, i);
    FILE *fp = fopen(paths[i], "wb");
    ck_assert_uint_eq(fwrite(f.p[i], 1, f.len[i], fp), f.len[i]);
    fclose(fp);
    pp[i] = paths[i];
  }
  ck_assert_msg(decomp_task_assemble_files(m->ctx, m->w, m->spec, pol, o, plan,
                                           plan_len, pp, f.n, c, NULL, &info_c,
                                           &files_c) == DECOMP_OK,
                "assemble_files: %s", decomp_errmsg(m->ctx));
  ck_assert_str_eq(files_c, files_a);
  ck_assert_msg(same_files(a, c, files_a), "assembled from files: differ");
  decomp_free(info_c);
  decomp_free(files_c);
  rm_dir(c);
  char *na = normalized(info_a), *nb = normalized(info_b);
  size_t at = 0;
  while (na[at] && na[at] == nb[at])
    at++;
  ck_assert_msg(na[at] == nb[at],
                "%s, threads %d, tasks %s then %s: the info differs at byte "
                "%zu: \"%.80s\" against \"%.80s\"",
                policy, o->threads, g1, g2, at, na + (at > 40 ? at - 40 : 0),
                nb + (at > 40 ? at - 40 : 0));
  /* The job decomposes something, and the info has its peak. */
  ck_assert_ptr_nonnull(strstr(info_b, "\"peak_rss_bytes\""));
  ck_assert_ptr_null(strstr(info_b, "\"layers_decomposed\": 0,"));
  free(na);
  free(nb);
  decomp_free(info_a);
  decomp_free(files_a);
  decomp_free(info_b);
  decomp_free(files_b);
  blobs_free(&f);
  decomp_free(plan);
  decomp_policy_free(pol);
  rm_dir(a);
  rm_dir(b);
}

static const char *BUDGET =
    "{\"name\": \"budget\", \"macs_reduction\": 3, "
    "\"types\": [\"Conv2d\", \"Linear\"], \"methods\": [\"spatial\", "
    "\"channel\"]}";
static const char *ENERGY =
    "{\"name\": \"energy\", \"energy\": 0.8, \"require_cheaper\": false, "
    "\"types\": [\"Conv2d\", \"Linear\"]}";

/* Groupings, each run in the order written. */
static const char *const ONE_EACH_REVERSED = "7|6|5|4|3|2|1|0";
static const char *const MIXED = "5,0|2,7,1|3|6,4";
static const char *const ALL_IN_ONE = "0,1,2,3,4,5,6,7";
static const char *const PAIRS_BACKWARDS = "6,7|4,5|2,3|0,1";

START_TEST(budget_tasks_in_any_grouping_assemble_the_single_runs_bytes) {
  model m;
  model_init(&m);
  for (int threads = 1; threads <= 2; threads++) {
    decomp_options o = {.threads = threads};
    check_same(&m, BUDGET, &o, ONE_EACH_REVERSED, MIXED);
    check_same(&m, BUDGET, &o, MIXED, ONE_EACH_REVERSED);
    check_same(&m, BUDGET, &o, ALL_IN_ONE, PAIRS_BACKWARDS);
  }
  model_free(&m);
}
END_TEST

START_TEST(per_layer_policy_tasks_assemble_the_single_runs_bytes) {
  model m;
  model_init(&m);
  for (int threads = 1; threads <= 2; threads++) {
    decomp_options o = {.threads = threads,
                        .record_spectra = true,
                        .source_digest = "sha256:00ff"};
    check_same(&m, ENERGY, &o, PAIRS_BACKWARDS, ONE_EACH_REVERSED);
    check_same(&m, ENERGY, &o, ONE_EACH_REVERSED, ALL_IN_ONE);
  }
  model_free(&m);
}
END_TEST

START_TEST(calibrated_tasks_assemble_the_single_runs_bytes) {
  model m;
  model_init(&m);
  for (int threads = 1; threads <= 2; threads++) {
    decomp_options o = {.threads = threads,
                        .calibration = m.calib,
                        .calibration_digest = "sha256:ca11",
                        .record_spectra = true};
    check_same(&m, BUDGET, &o, MIXED, ONE_EACH_REVERSED);
    check_same(&m, ENERGY, &o, ONE_EACH_REVERSED, MIXED);
  }
  model_free(&m);
}
END_TEST

/* The plan's record of `layer`: its "rank":R in the metadata, rewritten
 * as R' of as many digits (the header keeps its length). */
static void rewrite_rank(void *plan, size_t len, const char *layer,
                         int64_t *old, int64_t *now) {
  char *s = plan, key[160];
  snprintf(key, sizeof key, "\\\"name\\\":\\\"%s\\\"", layer);
  char *p = memmem(s, len, key, strlen(key));
  ck_assert_ptr_nonnull(p);
  p = strstr(p, "\\\"rank\\\":");
  ck_assert_ptr_nonnull(p);
  p += strlen("\\\"rank\\\":");
  *old = strtoll(p, NULL, 10);
  ck_assert_int_gt(*old, 1);
  int64_t r = *old - 1;
  char was[32], to[32];
  snprintf(was, sizeof was, "%lld", (long long)*old);
  snprintf(to, sizeof to, "%lld", (long long)r);
  if (strlen(to) != strlen(was)) { /* 10 → 9: go up instead */
    r = *old + 1;
    snprintf(to, sizeof to, "%lld", (long long)r);
  }
  ck_assert_uint_eq(strlen(to), strlen(was));
  memcpy(p, to, strlen(to));
  *now = r;
}

/* The first decomposed layer of a plan (its first entry with a rank). */
static const char *first_decomposed(const void *plan, size_t len, char *out,
                                    size_t cap) {
  const char *s = plan;
  const char *p = s;
  for (;;) {
    p = memmem(p, len - (size_t)(p - s), "\\\"name\\\":\\\"", 11);
    ck_assert_ptr_nonnull(p);
    p += 11;
    const char *q = strstr(p, "\\\"");
    const char *r = strstr(q, "\\\"rank\\\":");
    if (r && r[9] != '0') {
      snprintf(out, cap, "%.*s", (int)(q - p), p);
      return out;
    }
  }
}

/* float16 weights: factors of an odd byte size in the records, so the
 * float64 tensors after them sit unaligned. */
START_TEST(half_precision_tasks_assemble_the_single_runs_bytes) {
  model m;
  model_init_dtype(&m, DECOMP_DTYPE_F16);
  decomp_options o = {.threads = 2, .record_spectra = true};
  check_same(&m, BUDGET, &o, MIXED, ONE_EACH_REVERSED);
  check_same(&m, ENERGY, &o, ONE_EACH_REVERSED, PAIRS_BACKWARDS);
  model_free(&m);
}
END_TEST

START_TEST(a_changed_factor_or_rank_makes_the_bytes_differ) {
  model m;
  model_init(&m);
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(m.ctx, BUDGET, &pol), DECOMP_OK);
  decomp_options o = {.threads = 1};
  char a[64], b[64];
  mk_dir(a, sizeof a);
  mk_dir(b, sizeof b);
  char *info_a, *files_a, *info_b, *files_b;
  ck_assert_int_eq(decomp_decompose_save(m.ctx, m.w, m.spec, pol, &o, a, NULL,
                                         &info_a, &files_a),
                   DECOMP_OK);
  void *plan;
  size_t plan_len;
  make_plan(&m, pol, &o, MIXED, &plan, &plan_len);
  blobs f;
  run_tasks(&m, pol, &o, ONE_EACH_REVERSED, 2, plan, plan_len, &f);

  /* One bit of one factor element (the last byte of the largest factors
   * record: its last tensor, a factor, its last element). */
  size_t big = 0;
  for (size_t i = 1; i < f.n; i++)
    big = f.len[i] > f.len[big] ? i : big;
  unsigned char *last = (unsigned char *)f.p[big] + f.len[big] - 1;
  *last ^= 1;
  ck_assert_int_eq(
      assemble(&m, pol, &o, plan, plan_len, &f, b, &info_b, &files_b),
      DECOMP_OK);
  ck_assert(!same_files(a, b, files_a));
  *last ^= 1;
  decomp_free(info_b);
  decomp_free(files_b);
  rm_dir(b);
  mk_dir(b, sizeof b);

  /* One rank in the plan: phase 2 follows it, the bytes follow phase 2. */
  char layer[128];
  int64_t was, now;
  first_decomposed(plan, plan_len, layer, sizeof layer);
  rewrite_rank(plan, plan_len, layer, &was, &now);
  blobs g;
  run_tasks(&m, pol, &o, MIXED, 2, plan, plan_len, &g);
  ck_assert_msg(assemble(&m, pol, &o, plan, plan_len, &g, b, &info_b,
                         &files_b) == DECOMP_OK,
                "%s", decomp_errmsg(m.ctx));
  ck_assert(!same_files(a, b, files_a));
  char *na = normalized(info_a), *nb = normalized(info_b);
  ck_assert_str_ne(na, nb);
  free(na);
  free(nb);
  decomp_free(info_b);
  decomp_free(files_b);
  blobs_free(&g);
  blobs_free(&f);
  decomp_free(plan);
  decomp_free(info_a);
  decomp_free(files_a);
  decomp_policy_free(pol);
  rm_dir(a);
  rm_dir(b);
  model_free(&m);
}
END_TEST

/* Replace the first `from` in buf by `to` (as long). */
static void replace_once(void *buf, size_t len, const char *from,
                         const char *to) {
  ck_assert_uint_eq(strlen(from), strlen(to));
  char *p = memmem(buf, len, from, strlen(from));
  ck_assert_msg(p != NULL, "%s not found", from);
  memcpy(p, to, strlen(to));
}

/* The record's `"plan":"…"` text (escaped as the header holds it). */
static void plan_field(const void *rec, size_t len, char *out, size_t cap) {
  const char *key = "\\\"plan\\\":\\\"";
  const char *p = memmem(rec, len, key, strlen(key));
  ck_assert_ptr_nonnull(p);
  snprintf(out, cap, "%.*s", (int)(strlen(key) + 16), p);
}

/* Assembling must fail with BAD_TASK, naming `layer`, writing nothing. */
static void refused(model *m, const decomp_policy *pol, const decomp_options *o,
                    const void *plan, size_t len, const blobs *f,
                    const char *layer, const char *says) {
  char dir[64];
  mk_dir(dir, sizeof dir);
  char *info = NULL, *files = NULL;
  int rc = assemble(m, pol, o, plan, len, f, dir, &info, &files);
  const char *msg = decomp_errmsg(m->ctx);
  ck_assert_msg(rc == DECOMP_ERR_BAD_TASK, "rc %d (%s), expected bad_task", rc,
                msg);
  ck_assert_msg(!layer || strstr(msg, layer), "\"%s\" does not name %s", msg,
                layer);
  ck_assert_msg(strstr(msg, says), "\"%s\" does not say \"%s\"", msg, says);
  ck_assert_ptr_null(info);
  ck_assert_int_eq(count_files(dir), 0);
  rm_dir(dir);
}

START_TEST(results_that_do_not_fit_the_plan_are_refused_naming_the_layer) {
  model m;
  model_init(&m);
  decomp_policy *pol, *other;
  ck_assert_int_eq(decomp_policy_parse(m.ctx, BUDGET, &pol), DECOMP_OK);
  ck_assert_int_eq(decomp_policy_parse(m.ctx, ENERGY, &other), DECOMP_OK);
  decomp_options o = {.threads = 1};
  void *plan;
  size_t plan_len;
  make_plan(&m, pol, &o, ONE_EACH_REVERSED, &plan, &plan_len);
  /* A layer the plan decomposes, alone in the last task. */
  char layer[128], grouping[32] = "";
  first_decomposed(plan, plan_len, layer, sizeof layer);
  size_t x = 0;
  while (strcmp(decomp_spec_at(m.spec, x)->name, layer) != 0)
    x++;
  for (size_t i = 0; i < NLAYERS; i++)
    if (i != x)
      snprintf(grouping + strlen(grouping), 4, "%zu,", i);
  snprintf(grouping + strlen(grouping), 4, "|%zu", x);
  blobs f;
  run_tasks(&m, pol, &o, grouping, 2, plan, plan_len, &f);

  /* A layer's result missing. */
  blobs g = f;
  g.n--;
  refused(&m, pol, &o, plan, plan_len, &g, layer, "no factors result");

  /* A result given twice. */
  g = f;
  g.p[g.n - 2] = g.p[g.n - 1];
  g.len[g.n - 2] = g.len[g.n - 1];
  refused(&m, pol, &o, plan, plan_len, &g, layer, "a second result");

  /* A result whose rank is not the plan's (its record rewritten). */
  void *copy = malloc(f.len[f.n - 1]);
  memcpy(copy, f.p[f.n - 1], f.len[f.n - 1]);
  int64_t was, now;
  rewrite_rank(copy, f.len[f.n - 1], layer, &was, &now);
  g = f;
  g.p[g.n - 1] = copy;
  char says[96];
  snprintf(says, sizeof says, "factors at rank %lld, the plan says %lld",
           (long long)now, (long long)was);
  refused(&m, pol, &o, plan, plan_len, &g, layer, says);
  free(copy);

  /* Results made from another plan (one rank changed). */
  void *plan2 = malloc(plan_len);
  memcpy(plan2, plan, plan_len);
  rewrite_rank(plan2, plan_len, layer, &was, &now);
  g = f;
  g.p[0] = f.p[f.n - 1];
  g.len[0] = f.len[f.n - 1];
  g.n = 1;
  refused(&m, pol, &o, plan2, plan_len, &g, layer, "made from another plan");

  /* A result whose rank and plan say the plan's, but whose factors are
   * another rank's (made from plan2, its rank and plan rewritten). */
  blobs h;
  run_tasks(&m, pol, &o, grouping, 2, plan2, plan_len, &h);
  char from[64], to[64], pf[64], pt[64];
  snprintf(from, sizeof from, "\\\"rank\\\":%lld", (long long)now);
  snprintf(to, sizeof to, "\\\"rank\\\":%lld", (long long)was);
  replace_once(h.p[h.n - 1], h.len[h.n - 1], from, to);
  plan_field(h.p[h.n - 1], h.len[h.n - 1], pf, sizeof pf);
  plan_field(f.p[f.n - 1], f.len[f.n - 1], pt, sizeof pt);
  replace_once(h.p[h.n - 1], h.len[h.n - 1], pf, pt);
  g = f;
  g.p[g.n - 1] = h.p[h.n - 1];
  g.len[g.n - 1] = h.len[h.n - 1];
  snprintf(says, sizeof says, "as rank %lld gives", (long long)was);
  refused(&m, pol, &o, plan, plan_len, &g, layer, says);
  blobs_free(&h);

  /* A plan and results of another job (another policy). */
  refused(&m, other, &o, plan, plan_len, &f, NULL, "made for another job");
  decomp_options o2 = {.threads = 2};
  refused(&m, pol, &o2, plan, plan_len, &f, NULL, "made for another job");

  /* A plan missing a layer's spectra: made from all but its record. */
  blobs s;
  run_tasks(&m, pol, &o, grouping, 1, NULL, 0, &s);
  void *p3;
  size_t l3;
  ck_assert_int_eq(decomp_task_plan(m.ctx, m.w, m.spec, pol, &o,
                                    (const void *const *)s.p, s.len, s.n - 1,
                                    &p3, &l3),
                   DECOMP_ERR_BAD_TASK);
  ck_assert_msg(strstr(decomp_errmsg(m.ctx), layer) &&
                    strstr(decomp_errmsg(m.ctx), "no spectra record"),
                "%s", decomp_errmsg(m.ctx));
  /* A factors record where a spectra record belongs. */
  ck_assert_int_eq(decomp_task_plan(m.ctx, m.w, m.spec, pol, &o,
                                    (const void *const *)f.p, f.len, 1, &p3,
                                    &l3),
                   DECOMP_ERR_BAD_TASK);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(m.ctx), "a factors record"));
  /* A layer the spec lacks. */
  const char *bogus = "layer9.conv";
  void *b;
  size_t bl;
  ck_assert_int_eq(
      decomp_task_spectra(m.ctx, m.w, m.spec, pol, &o, &bogus, 1, &b, &bl),
      DECOMP_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(decomp_errmsg(m.ctx), bogus));

  blobs_free(&s);
  free(plan2);
  blobs_free(&f);
  decomp_free(plan);
  decomp_policy_free(pol);
  decomp_policy_free(other);
  model_free(&m);
}
END_TEST

START_TEST(task_layers_lists_phase_ones_layers_then_the_plans) {
  model m;
  model_init(&m);
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(m.ctx, ENERGY, &pol), DECOMP_OK);
  decomp_options o = {.threads = 1};
  char *all, *planned;
  ck_assert_int_eq(
      decomp_task_layers(m.ctx, m.w, m.spec, pol, &o, NULL, 0, &all),
      DECOMP_OK);
  /* Every layer of the spec is a Conv2d or a Linear the policy takes. */
  for (size_t i = 0; i < NLAYERS; i++) {
    char key[160];
    snprintf(key, sizeof key,
             "{\"name\":\"%s\",\"cost\":", decomp_spec_at(m.spec, i)->name);
    ck_assert_msg(strstr(all, key), "%s lacks %s", all, key);
  }
  void *plan;
  size_t plan_len;
  make_plan(&m, pol, &o, MIXED, &plan, &plan_len);
  ck_assert_int_eq(
      decomp_task_layers(m.ctx, m.w, m.spec, pol, &o, plan, plan_len, &planned),
      DECOMP_OK);
  /* The single run's decomposed layers, at their ranks. */
  decomp_result *r;
  ck_assert_int_eq(decomp_decompose(m.ctx, m.w, m.spec, pol, &o, &r),
                   DECOMP_OK);
  const char *info = decomp_result_info(r);
  size_t listed = 0;
  for (const char *p = planned; (p = strstr(p, "\"name\":\"")); listed++) {
    p += 8;
    char name[128], key[200];
    snprintf(name, sizeof name, "%.*s", (int)(strchr(p, '"') - p), p);
    long long rank = strtoll(strstr(p, "\"rank\":") + 7, NULL, 10);
    snprintf(key, sizeof key, "\"name\": \"%s\",\n      \"method\"", name);
    const char *at = strstr(info, key);
    ck_assert_msg(at, "%s is not decomposed in the single run", name);
    char rk[64];
    snprintf(rk, sizeof rk, "\"rank\": %lld,", rank);
    ck_assert_msg(strstr(at, rk) && strstr(at, rk) < strstr(at, "\"stats\""),
                  "%s: rank %lld is not the single run's", name, rank);
  }
  char dec[64];
  snprintf(dec, sizeof dec, "\"layers_decomposed\": %zu,", listed);
  ck_assert_msg(strstr(info, dec), "%zu layers listed", listed);
  decomp_result_free(r);
  decomp_free(all);
  decomp_free(planned);
  decomp_free(plan);
  decomp_policy_free(pol);
  model_free(&m);
}
END_TEST

/* A Linear of 1664 × 1664 (m·n·min(m, n) ≥ 2^32: a heavy layer, run alone
 * with every BLAS thread) beside a light conv: with threads 2 the task
 * that holds it runs it with 2 BLAS threads as the single run does. */
START_TEST(a_heavy_layer_gives_the_single_runs_bytes_with_two_threads) {
  model m = {.ctx = decomp_ctx_new()};
  const char *spec =
      "[{\"name\": \"big\", \"type\": \"Linear\", \"in_features\": 1664, "
      "\"out_features\": 1664, \"bias\": false},"
      "{\"name\": \"small\", \"type\": \"Conv2d\", \"in_channels\": 8, "
      "\"out_channels\": 8, \"kernel_size\": 3, \"bias\": false}]";
  ck_assert_int_eq(decomp_spec_parse(m.ctx, spec, strlen(spec), &m.spec),
                   DECOMP_OK);
  ck_assert_int_eq(decomp_weights_new(m.ctx, &m.w), DECOMP_OK);
  int64_t big[2] = {1664, 1664}, small[4] = {8, 8, 3, 3};
  add(&m, "big.weight", DECOMP_DTYPE_F32, 2, big);
  add(&m, "small.weight", DECOMP_DTYPE_F32, 4, small);
  decomp_options o = {.threads = 2, .record_spectra = true};
  check_same(&m,
             "{\"name\": \"ratio\", \"ratio\": 0.05, "
             "\"types\": [\"Conv2d\", \"Linear\"]}",
             &o, "1|0", "1|0");
  model_free(&m);
}
END_TEST

/* WORKING events seen (a layer run on the calling thread reports them). */
static int count_working(void *user, const decomp_progress *p) {
  if (p->phase == DECOMP_PHASE_WORKING)
    ++*(int *)user;
  return 0;
}

/* `count` heavy Linears of 1664 × 1664 (each m·n·min(m, n) ≥ 2^32). */
static void heavy_model(model *m, int count) {
  *m = (model){.ctx = decomp_ctx_new()};
  char spec[1024] = "[";
  for (int i = 0; i < count; i++)
    snprintf(spec + strlen(spec), sizeof spec - strlen(spec),
             "%s{\"name\": \"h%d\", \"type\": \"Linear\", "
             "\"in_features\": 1664, \"out_features\": 1664, "
             "\"bias\": false}",
             i ? "," : "", i);
  strcat(spec, "]");
  ck_assert_int_eq(decomp_spec_parse(m->ctx, spec, strlen(spec), &m->spec),
                   DECOMP_OK);
  ck_assert_int_eq(decomp_weights_new(m->ctx, &m->w), DECOMP_OK);
  int64_t shape[2] = {1664, 1664};
  for (int i = 0; i < count; i++) {
    char name[32];
    snprintf(name, sizeof name, "h%d.weight", i);
    add(m, name, DECOMP_DTYPE_F32, 2, shape);
  }
}

/* How many WORKING events a threads-2 run of `m` reports. */
static int working_events(model *m, const char *policy, const char *dir) {
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(m->ctx, policy, &pol), DECOMP_OK);
  int seen = 0;
  decomp_ctx_set_progress_interval(m->ctx, 0);
  decomp_options o = {.threads = 2, .progress = count_working,
                      .progress_user = &seen};
  char *info, *files;
  ck_assert_msg(decomp_decompose_save(m->ctx, m->w, m->spec, pol, &o, dir,
                                      NULL, &info, &files) == DECOMP_OK,
                "%s", decomp_errmsg(m->ctx));
  decomp_free(info);
  decomp_free(files);
  decomp_policy_free(pol);
  return seen;
}

/* A model with at least 2 × threads heavy layers (a transformer's) runs
 * them side by side in the pool, one BLAS thread each: no layer reports
 * WORKING (only the calling thread's do), the bytes are threads 1's, and
 * tasks in any grouping give them too. With fewer, each still runs alone
 * on the calling thread with every BLAS thread (WORKING events). */
START_TEST(many_heavy_layers_run_side_by_side_with_one_threads_bytes) {
  const char *policy = "{\"name\": \"ratio\", \"ratio\": 0.05, "
                       "\"types\": [\"Linear\"]}";
  model m;
  heavy_model(&m, 4);
  char a[64], b[64];
  mk_dir(a, sizeof a);
  mk_dir(b, sizeof b);
  ck_assert_int_eq(working_events(&m, policy, a), 0);
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(m.ctx, policy, &pol), DECOMP_OK);
  decomp_options one = {.threads = 1};
  char *info, *files;
  ck_assert_msg(decomp_decompose_save(m.ctx, m.w, m.spec, pol, &one, b, NULL,
                                      &info, &files) == DECOMP_OK,
                "%s", decomp_errmsg(m.ctx));
  ck_assert_msg(same_files(a, b, files), "threads 2 and 1: the files differ");
  decomp_free(info);
  decomp_free(files);
  decomp_policy_free(pol);
  rm_dir(a);
  rm_dir(b);
  decomp_options two = {.threads = 2};
  check_same(&m, policy, &two, "3,1|0,2", "2|0,1,3");
  model_free(&m);

  heavy_model(&m, 3);
  mk_dir(a, sizeof a);
  ck_assert_int_gt(working_events(&m, policy, a), 0);
  rm_dir(a);
  model_free(&m);
}
END_TEST

/* Which layers a task's progress names, by phase. */
struct seen {
  char names[4][64][64];
  int n[4];
  size_t total;
};

static int on_progress(void *user, const decomp_progress *p) {
  struct seen *s = user;
  if (p->phase >= 0 && p->phase < 4 && s->n[p->phase] < 64)
    snprintf(s->names[p->phase][s->n[p->phase]++], 64, "%s", p->layer);
  s->total = p->total;
  return 0;
}

START_TEST(a_tasks_progress_names_its_own_layers_only) {
  model m;
  model_init(&m);
  decomp_policy *pol;
  ck_assert_int_eq(decomp_policy_parse(m.ctx, BUDGET, &pol), DECOMP_OK);
  for (int threads = 1; threads <= 2; threads++) {
    struct seen s = {0};
    decomp_options o = {.threads = threads};
    void *plan, *rec;
    size_t plan_len, len;
    make_plan(&m, pol, &o, MIXED, &plan, &plan_len);
    /* Both layers below are decomposed by this budget. */
    const char *mine[2] = {"layer2.0.conv2", "fc"};
    decomp_options op = o;
    op.progress = on_progress;
    op.progress_user = &s;
    ck_assert_int_eq(
        decomp_task_spectra(m.ctx, m.w, m.spec, pol, &op, mine, 2, &rec, &len),
        DECOMP_OK);
    decomp_free(rec);
    ck_assert_int_eq(s.n[DECOMP_PHASE_SPECTRUM], 2);
    ck_assert_str_eq(s.names[DECOMP_PHASE_SPECTRUM][0], "layer2.0.conv2");
    ck_assert_str_eq(s.names[DECOMP_PHASE_SPECTRUM][1], "fc");
    ck_assert_int_eq(s.n[DECOMP_PHASE_DONE], 0);
    ck_assert_uint_eq(s.total, NLAYERS); /* spec-wide */
    s = (struct seen){0};
    ck_assert_int_eq(decomp_task_factors(m.ctx, m.w, m.spec, pol, &op, plan,
                                         plan_len, mine, 2, &rec, &len),
                     DECOMP_OK);
    decomp_free(rec);
    ck_assert_int_eq(s.n[DECOMP_PHASE_START], 2);
    ck_assert_int_eq(s.n[DECOMP_PHASE_DONE], 2);
    for (int i = 0; i < 2; i++) {
      ck_assert_str_eq(s.names[DECOMP_PHASE_START][i], mine[i]);
      ck_assert_str_eq(s.names[DECOMP_PHASE_DONE][i], mine[i]);
    }
    decomp_free(plan);
  }
  decomp_policy_free(pol);
  model_free(&m);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("tasks");
  TCase *t = tcase_create("tasks");
  tcase_set_timeout(t, 120);
  tcase_add_test(t,
                 budget_tasks_in_any_grouping_assemble_the_single_runs_bytes);
  tcase_add_test(t, per_layer_policy_tasks_assemble_the_single_runs_bytes);
  tcase_add_test(t, calibrated_tasks_assemble_the_single_runs_bytes);
  tcase_add_test(t, half_precision_tasks_assemble_the_single_runs_bytes);
  tcase_add_test(t, a_changed_factor_or_rank_makes_the_bytes_differ);
  tcase_add_test(t,
                 results_that_do_not_fit_the_plan_are_refused_naming_the_layer);
  tcase_add_test(t, task_layers_lists_phase_ones_layers_then_the_plans);
  tcase_add_test(t, a_heavy_layer_gives_the_single_runs_bytes_with_two_threads);
  tcase_add_test(t, many_heavy_layers_run_side_by_side_with_one_threads_bytes);
  tcase_add_test(t, a_tasks_progress_names_its_own_layers_only);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
