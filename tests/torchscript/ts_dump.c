/* ts_dump.c — the tests' caller of decomp_torchscript_read.
 *
 *   ts_dump ARCHIVE OUTDIR [--time S] [--memory MIB] [--cancel-after S]
 *           [--decompose POLICY]
 *       read ARCHIVE through the C API; write OUTDIR/weights.safetensors
 *       (decomp_weights_save) and OUTDIR/spec.json (decomp_spec_to_json);
 *       check the spec against the weights (decomp_spec_check); with
 *       --decompose, also decompose them and write
 *       OUTDIR/decomposed.safetensors and OUTDIR/decompose_info.json
 *   ts_dump --canon SPEC.json
 *       print the engine's canonical form of a spec file
 *   ts_dump --expect-unavailable
 *       with DECOMPD_TS_READER pointing nowhere (or in a build without
 *       TorchScript), the read must fail with DECOMP_ERR_TORCHSCRIPT
 *
 * Always prints one JSON line on stdout: {"ok": true, "seconds": …,
 * "format": …} or {"ok": false, "code": …, "message": …}. Exit status 0 when
 * the call returned (whatever it returned): the point of the hostile-archive
 * tests is that the caller survives to say so. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "decomp/decomp.h"
#include "decomp/torchscript.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cancel_at;

static int cancel_after(void *user) {
  (void)user;
  return now() >= cancel_at;
}

static int report_error(decomp_ctx *ctx, int rc, double seconds) {
  json_t *o = json_pack("{s:b, s:s, s:i, s:s, s:f}", "ok", 0, "code",
                        decomp_error_code(rc), "errno", rc, "message",
                        decomp_errmsg(ctx), "seconds", seconds);
  char *s = json_dumps(o, JSON_COMPACT);
  puts(s);
  free(s);
  json_decref(o);
  return 0;
}

/* Decompose what was read, as the daemon will, and write the result. */
static int decompose(decomp_ctx *ctx, const decomp_weights *w,
                     const decomp_spec *spec, const char *policy_text,
                     const char *outdir) {
  decomp_policy *pol = NULL;
  decomp_result *res = NULL;
  char path[4096];
  int rc = decomp_policy_parse(ctx, policy_text, &pol);
  if (!rc)
    rc = decomp_decompose(ctx, w, spec, pol, NULL, &res);
  if (!rc) {
    snprintf(path, sizeof path, "%s/decomposed.safetensors", outdir);
    rc = decomp_weights_save(ctx, decomp_result_weights(res), path,
                             DECOMP_FORMAT_SAFETENSORS);
  }
  if (!rc) {
    snprintf(path, sizeof path, "%s/decompose_info.json", outdir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(decomp_result_info(res), f) < 0)
      rc = DECOMP_ERR_IO;
    if (f && fclose(f) != 0)
      rc = DECOMP_ERR_IO;
  }
  decomp_result_free(res);
  decomp_policy_free(pol);
  return rc;
}

static int canon(const char *path) {
  json_error_t je;
  json_t *j = json_load_file(path, 0, &je);
  char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(j);
  if (!text) {
    fprintf(stderr, "%s: %s\n", path, je.text);
    return 1;
  }
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_spec *spec = NULL;
  int rc = decomp_spec_parse(ctx, text, strlen(text), &spec);
  free(text);
  if (rc) {
    fprintf(stderr, "%s: %s\n", path, decomp_errmsg(ctx));
    decomp_ctx_free(ctx);
    return 1;
  }
  char *out = decomp_spec_to_json(spec);
  puts(out);
  decomp_free(out);
  decomp_spec_free(spec);
  decomp_ctx_free(ctx);
  return 0;
}

static int expect_unavailable(void) {
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w = NULL;
  decomp_spec *spec = NULL;
  int rc =
      decomp_torchscript_read(ctx, "/nonexistent/model.pt", NULL, &w, &spec);
  int ok = rc == DECOMP_ERR_TORCHSCRIPT && w == NULL && spec == NULL &&
           decomp_errcode(ctx) == DECOMP_ERR_TORCHSCRIPT &&
           decomp_errmsg(ctx)[0] != '\0';
  printf("supported=%d rc=%d (%s) message=%s\n", decomp_torchscript_supported(),
         rc, decomp_error_code(rc), decomp_errmsg(ctx));
  decomp_ctx_free(ctx);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--expect-unavailable") == 0)
    return expect_unavailable();
  if (argc == 3 && strcmp(argv[1], "--canon") == 0)
    return canon(argv[2]);
  if (argc < 3) {
    fprintf(stderr,
            "usage: ts_dump ARCHIVE OUTDIR [--time S] [--memory MIB]\n");
    return 2;
  }
  decomp_ts_limits lim = {0};
  const char *policy_text = NULL;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--time") == 0)
      lim.time_seconds = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--memory") == 0)
      lim.memory_bytes = (uint64_t)atoll(argv[i + 1]) << 20;
    else if (strcmp(argv[i], "--decompose") == 0)
      policy_text = argv[i + 1];
    else if (strcmp(argv[i], "--cancel-after") == 0) {
      cancel_at = now() + atof(argv[i + 1]);
      lim.cancel = cancel_after;
    }
  }
  decomp_ctx *ctx = decomp_ctx_new();
  decomp_weights *w = NULL;
  decomp_spec *spec = NULL;
  double t0 = now();
  int rc = decomp_torchscript_read(ctx, argv[1], &lim, &w, &spec);
  double seconds = now() - t0;
  if (rc) {
    report_error(ctx, rc, seconds);
    decomp_ctx_free(ctx);
    return 0;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/weights.safetensors", argv[2]);
  rc = decomp_weights_save(ctx, w, path, DECOMP_FORMAT_SAFETENSORS);
  if (!rc)
    rc = decomp_spec_check(ctx, spec, w);
  if (!rc) {
    snprintf(path, sizeof path, "%s/spec.json", argv[2]);
    char *text = decomp_spec_to_json(spec);
    FILE *f = fopen(path, "w");
    if (!text || !f || fputs(text, f) < 0) {
      fprintf(stderr, "%s: cannot write\n", path);
      rc = -1;
    }
    if (f)
      fclose(f);
    decomp_free(text);
  }
  if (!rc && policy_text)
    rc = decompose(ctx, w, spec, policy_text, argv[2]);
  if (rc) {
    report_error(ctx, rc, seconds);
  } else {
    printf("{\"ok\":true,\"seconds\":%.3f,\"format\":\"%s\",\"tensors\":%zu,"
           "\"layers\":%zu}\n",
           seconds, decomp_format_name(decomp_weights_format(w)),
           decomp_weights_count(w), decomp_spec_count(spec));
  }
  decomp_weights_free(w);
  decomp_spec_free(spec);
  decomp_ctx_free(ctx);
  return 0;
}
