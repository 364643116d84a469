/* bench_tasks.c — what cutting a job into tasks costs (decomp_task_*,
 * DESIGN "Across machines"): a resnet18-shaped model (its 20 convs and fc,
 * channels divided by --div, random float32 weights) under the budget
 * policy, decomposed by decomp_decompose_save and then as tasks (one layer
 * a task, phase 1 and phase 2, all in this process one after the other:
 * the work every node would do, summed), both with the same `threads`.
 * Prints the two times and their ratio (tasks / single run), the stages'
 * shares and the records' bytes, and checks the files are the same bytes.
 *
 *   ninja -C build bench/bench_tasks && build/bench/bench_tasks [--div 2]
 *       [--threads 1] [--policy budget | '{"name": "energy", …}']
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "decomp/decomp.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static float urand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

static void die(decomp_ctx *ctx, const char *what) {
  fprintf(stderr, "%s: %s\n", what, decomp_errmsg(ctx));
  exit(1);
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc(*len ? *len : 1);
  if (b && fread(b, 1, *len, f) != *len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  return b;
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

int main(int argc, char **argv) {
  int div = 2, threads = 1;
  const char *policy = "budget";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--div"))
      div = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--policy"))
      policy = argv[i + 1];
  }
  if (div < 1)
    div = 1;
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w;
  decomp_spec *spec;
  if (decomp_weights_new(ctx, &w) || decomp_spec_new(ctx, &spec))
    die(ctx, "new");
  /* resnet18's convs: conv1, then 4 stages of 2 blocks of two 3x3 convs
   * (the first of a stage strided, with a 1x1 downsample), then fc. */
  char names[32][64];
  int nl = 0;
  int64_t side = 224 / 2;
  decomp_layer conv1 = {.name = "conv1",
                        .type = "Conv2d",
                        .in_channels = 3,
                        .out_channels = 64 / div,
                        .kernel_size = {7, 7},
                        .stride = {2, 2},
                        .padding = {3, 3},
                        .dilation = {1, 1},
                        .groups = 1,
                        .input_size = {224, 224}};
  decomp_layer layers[32];
  layers[nl++] = conv1;
  side /= 2; /* the max pool */
  int64_t cin = 64 / div;
  for (int s = 0; s < 4; s++) {
    int64_t c = (64 << s) / div;
    for (int b = 0; b < 2; b++) {
      for (int k = 0; k < 2; k++) {
        bool down = s > 0 && b == 0 && k == 0;
        snprintf(names[nl], sizeof names[nl], "layer%d.%d.conv%d", s + 1, b,
                 k + 1);
        layers[nl] = (decomp_layer){
            .name = names[nl],
            .type = "Conv2d",
            .in_channels = cin,
            .out_channels = c,
            .kernel_size = {3, 3},
            .stride = {down ? 2 : 1, down ? 2 : 1},
            .padding = {1, 1},
            .dilation = {1, 1},
            .groups = 1,
            .input_size = {down ? side * 2 : side, down ? side * 2 : side}};
        nl++;
        if (down) {
          snprintf(names[nl], sizeof names[nl], "layer%d.0.downsample.0",
                   s + 1);
          layers[nl] = (decomp_layer){.name = names[nl],
                                      .type = "Conv2d",
                                      .in_channels = cin,
                                      .out_channels = c,
                                      .kernel_size = {1, 1},
                                      .stride = {2, 2},
                                      .dilation = {1, 1},
                                      .groups = 1,
                                      .input_size = {side * 2, side * 2}};
          nl++;
        }
        cin = c;
      }
    }
    if (s < 3)
      side /= 2;
  }
  layers[nl++] = (decomp_layer){.name = "fc",
                                .type = "Linear",
                                .in_channels = cin,
                                .out_channels = 1000,
                                .kernel_size = {1, 1},
                                .stride = {1, 1},
                                .dilation = {1, 1},
                                .groups = 1,
                                .bias = true};
  for (int i = 0; i < nl; i++) {
    const decomp_layer *l = &layers[i];
    if (decomp_spec_add(ctx, spec, l))
      die(ctx, l->name);
    char tn[96];
    snprintf(tn, sizeof tn, "%s.weight", l->name);
    decomp_tensor t = {.name = tn, .dtype = DECOMP_DTYPE_F32};
    bool lin = !strcmp(l->type, "Linear");
    t.ndim = lin ? 2 : 4;
    t.shape[0] = l->out_channels;
    t.shape[1] = l->in_channels;
    t.shape[2] = l->kernel_size[0];
    t.shape[3] = l->kernel_size[1];
    int64_t n = 1;
    for (int d = t.ndim - 1; d >= 0; d--) {
      t.stride[d] = n;
      n *= t.shape[d];
    }
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t x = 0; x < n; x++)
      p[x] = urand();
    t.data = p;
    if (decomp_weights_add_owned(w, &t, p))
      die(ctx, tn);
    if (l->bias) {
      snprintf(tn, sizeof tn, "%s.bias", l->name);
      decomp_tensor bt = {.name = tn,
                          .dtype = DECOMP_DTYPE_F32,
                          .ndim = 1,
                          .shape = {l->out_channels},
                          .stride = {1}};
      float *q = calloc((size_t)l->out_channels, sizeof *q);
      bt.data = q;
      if (decomp_weights_add_owned(w, &bt, q))
        die(ctx, tn);
    }
  }
  char ptext[256];
  if (policy[0] == '{') /* a whole policy object */
    snprintf(ptext, sizeof ptext, "%s", policy);
  else
    snprintf(ptext, sizeof ptext,
             "{\"name\": \"%s\", \"types\": [\"Conv2d\", \"Linear\"]}", policy);
  decomp_policy *pol;
  if (decomp_policy_parse(ctx, ptext, &pol))
    die(ctx, "policy");
  decomp_options o = {.threads = threads};
  char a[64] = "/tmp/decomp-bench-tasks-a-XXXXXX";
  char b[64] = "/tmp/decomp-bench-tasks-b-XXXXXX";
  if (!mkdtemp(a) || !mkdtemp(b))
    return 1;

  double t0 = now();
  char *info_a, *files_a, *info_b, *files_b;
  if (decomp_decompose_save(ctx, w, spec, pol, &o, a, NULL, &info_a, &files_a))
    die(ctx, "single run");
  double single = now() - t0;

  void *rec[32], *res[32], *plan;
  size_t rlen[32], slen[32], plen, bytes = 0;
  double t1 = now();
  for (int i = 0; i < nl; i++) {
    const char *nm = layers[i].name;
    if (decomp_task_spectra(ctx, w, spec, pol, &o, &nm, 1, &rec[i], &rlen[i]))
      die(ctx, nm);
    bytes += rlen[i];
  }
  double t2 = now();
  if (decomp_task_plan(ctx, w, spec, pol, &o, (const void *const *)rec, rlen,
                       (size_t)nl, &plan, &plen))
    die(ctx, "plan");
  double t3 = now();
  for (int i = 0; i < nl; i++) {
    const char *nm = layers[i].name;
    if (decomp_task_factors(ctx, w, spec, pol, &o, plan, plen, &nm, 1, &res[i],
                            &slen[i]))
      die(ctx, nm);
    bytes += slen[i];
  }
  double t4 = now();
  if (decomp_task_assemble(ctx, w, spec, pol, &o, plan, plen,
                           (const void *const *)res, slen, (size_t)nl, b, NULL,
                           &info_b, &files_b))
    die(ctx, "assemble");
  double t5 = now(), tasks = t5 - t1;

  char pa[256], pb[256];
  snprintf(pa, sizeof pa, "%s/model.safetensors", a);
  snprintf(pb, sizeof pb, "%s/model.safetensors", b);
  size_t la = 0, lb = 0;
  char *x = slurp(pa, &la), *y = slurp(pb, &lb);
  bool same = x && y && la == lb && !memcmp(x, y, la);
  printf("model: resnet18 shapes / %d, %d layers, policy %s, threads %d\n", div,
         nl, policy, threads);
  printf("single run      %8.3f s\n", single);
  printf("as %2d+%2d tasks  %8.3f s  (spectra %.3f, plan %.3f, factors %.3f, "
         "assemble %.3f)\n",
         nl, nl, tasks, t2 - t1, t3 - t2, t4 - t3, t5 - t4);
  printf("ratio tasks / single  %.3f\n", tasks / single);
  printf("records: %zu bytes (plan %zu), output %zu bytes\n", bytes + plen,
         plen, la);
  printf("same bytes: %s\n", same ? "yes" : "NO");
  free(x);
  free(y);
  for (int i = 0; i < nl; i++) {
    decomp_free(rec[i]);
    decomp_free(res[i]);
  }
  decomp_free(plan);
  decomp_free(info_a);
  decomp_free(files_a);
  decomp_free(info_b);
  decomp_free(files_b);
  rm_dir(a);
  rm_dir(b);
  decomp_policy_free(pol);
  decomp_spec_free(spec);
  decomp_weights_free(w);
  decomp_ctx_free(ctx);
  return same ? 0 : 1;
}
