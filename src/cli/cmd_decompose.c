/* cmd_decompose.c — `decompctl decompose`: run the engine locally on a weight
 * file (or a sharded safetensors checkpoint) and a layer spec, write
 * DIR/decomposed_weights.{pth,safetensors} (or the sharded layout) and
 * DIR/decompose_info.json, and print a summary. Safetensors output is
 * streamed as the layers are done (decomp_decompose_save); .pth is built in
 * memory and saved. On any failure nothing is left in DIR (and DIR itself
 * is removed if this run made it). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "decomp/decomp.h"
#include "decomp/torchscript.h"

static const char usage[] =
    "usage: decompctl decompose --weights FILE|DIR|INDEX --spec SPEC.json --out DIR\n"
    "       decompctl decompose --model SCRIPTED.pt --out DIR\n"
    "                           [--policy NAME|JSON|@FILE] [--format pth|safetensors]\n"
    "                           [--shard-bytes N]\n"
    "                           [--calibration CAL.safetensors] [--profile P.json]\n"
    "                           [--threads N] [--spectra] [--json] [--quiet]\n"
    "                           [--verbose]\n"
    "\n"
    "Decompose the Conv2d (and, with the policy's \"types\", Linear) layers of\n"
    "a weight file (.pth or safetensors, found by content) with the local\n"
    "engine.\n"
    "\n"
    "  --weights FILE   the state dict to decompose; or a sharded safetensors\n"
    "                   checkpoint: its folder, or its\n"
    "                   model.safetensors.index.json (shards are read from\n"
    "                   the index's folder, each mapped, never loaded whole)\n"
    "  --spec FILE      the layer spec (JSON, as the Python package writes it)\n"
    "  --model FILE     a TorchScript archive (torch.jit.save, scripted or\n"
    "                   traced): its weights and layer spec are read from it\n"
    "                   in a sandboxed reader process, so no --spec is needed\n"
    "  --out DIR        where to write decomposed_weights.pth (or .safetensors)\n"
    "                   and decompose_info.json; made if missing. A sharded\n"
    "                   input, or safetensors output over --shard-bytes, is\n"
    "                   written as model-0000i-of-0000N.safetensors plus\n"
    "                   model.safetensors.index.json instead\n"
    "  --policy P       rank policy: a name (budget, amct, vbmf, energy,\n"
    "                   max_error, ratio, fixed), a JSON object, or @FILE;\n"
    "                   default budget (2x fewer conv MACs)\n"
    "  --format F       output weights format: pth (default) or safetensors\n"
    "                   (the default, and the only one, for a sharded input);\n"
    "                   safetensors is written as the layers are done, so\n"
    "                   memory stays at the layers in flight\n"
    "  --shard-bytes N  safetensors shard size limit: bytes, or with a suffix\n"
    "                   K M G T (powers of 1000) or KiB MiB GiB TiB;\n"
    "                   default 5G, as the Hugging Face Hub's tools;\n"
    "                   implies --format safetensors\n"
    "  --calibration F  the layers' input Gram matrices (decompd.calibrate's\n"
    "                   file): the layers it names are decomposed to keep\n"
    "                   their outputs on that data (whitened channel_svd/svd)\n"
    "  --profile F      a latency profile (decompd.profile's JSON): the budget\n"
    "                   can then take latency_reduction, and no layer is made\n"
    "                   slower than the profile says it is (max_slowdown)\n"
    "  --threads N      cores the engine may use: with N >= 2 the layers run\n"
    "                   side by side on N threads (one BLAS thread each);\n"
    "                   large ones alone with N BLAS threads, unless the\n"
    "                   model has at least 2N of them (a transformer's).\n"
    "                   Default 0: one layer at a time, with OpenBLAS's own\n"
    "                   thread count (OPENBLAS_NUM_THREADS)\n"
    "  --spectra        record each layer's singular values in the info file\n"
    "  --json           print the summary as one JSON object\n"
    "  --quiet          no per-layer lines\n"
    "  --verbose        engine log lines on stderr\n"
    "\n"
    "A line per layer goes to stderr when it is a terminal, and inside a\n"
    "layer that takes long its progress, redrawn in place (Ctrl-C stops\n"
    "there within a second); the summary goes to stdout. Exit codes: see\n"
    "decompctl --help.\n";

struct progress_state {
  bool show;     /* print a line per finished layer */
  int width;     /* of the layer-name column */
  bool partial;  /* a long layer's progress line is on screen */
};

static int on_progress(void *user, const decomp_progress *p) {
  struct progress_state *st = user;
  if (st->show && p->phase == DECOMP_PHASE_WORKING) {
    /* Inside a long layer: one line redrawn in place. */
    fprintf(stderr, "\r\033[K[%3zu/%zu] %-*s %s %3.0f%% %7.1f s", p->index + 1,
            p->total, st->width, p->layer,
            p->rank > 0 ? "factors " : "spectrum", 100 * p->fraction,
            p->seconds);
    fflush(stderr);
    st->partial = true;
  }
  if (st->show && p->phase == DECOMP_PHASE_DONE) {
    if (st->partial)
      fputs("\r\033[K", stderr);
    st->partial = false;
    if (p->skip_reason)
      fprintf(stderr, "[%3zu/%zu] %-*s skipped: %s\n", p->index + 1, p->total,
              st->width, p->layer, p->skip_reason);
    else
      fprintf(stderr, "[%3zu/%zu] %-*s rank %5lld/%-5lld %7.2f s\n",
              p->index + 1, p->total, st->width, p->layer, (long long)p->rank,
              (long long)p->max_rank, p->seconds);
  }
  return cli_interrupted;
}

static void on_log(void *user, int level, const char *topic, const char *msg) {
  (void)user;
  static const char *names[] = {"error", "warn", "info", "debug"};
  fprintf(stderr, "level=%s topic=%s msg=\"%s\"\n",
          names[level < 0 || level > 3 ? 0 : level], topic, msg);
}

/* Write `text` to dir/name through a temporary file, fsync and rename. */
static int write_text_atomic(const char *dir, const char *name,
                             const char *text) {
  char tmp[4096], final[4096];
  snprintf(final, sizeof final, "%s/%s", dir, name);
  snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, name);
  int fd = mkstemp(tmp);
  if (fd < 0)
    return errno;
  size_t len = strlen(text), off = 0;
  int err = 0;
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      err = errno;
      break;
    }
    off += (size_t)n;
  }
  if (!err && fsync(fd) != 0)
    err = errno;
  if (close(fd) != 0 && !err)
    err = errno;
  if (!err && rename(tmp, final) != 0)
    err = errno;
  if (err)
    unlink(tmp);
  return err;
}

static double num(json_t *o, const char *key) {
  return json_number_value(json_object_get(o, key));
}

static void human(double v, char *out, size_t len) {
  const char *units[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1000;
    u++;
  }
  snprintf(out, len, u ? "%.2f%s" : "%.0f%s", v, units[u]);
}

static void print_summary(const char *info_text, const char *weights_path,
                          const char *info_path, bool as_json) {
  json_t *info = json_loads(info_text, 0, NULL);
  json_t *sum = json_object_get(info, "summary");
  double pb = num(sum, "params_before"), pa = num(sum, "params_after");
  double mb = num(sum, "macs_before"), ma = num(sum, "macs_after");
  json_int_t nd = json_integer_value(json_object_get(sum, "layers_decomposed"));
  json_int_t ns = json_integer_value(json_object_get(sum, "layers_skipped"));
  double worst = num(sum, "worst_relative_error");
  /* Which layer has the worst error. */
  const char *worst_name = "";
  size_t i;
  json_t *layer;
  json_array_foreach(json_object_get(info, "layers"), i, layer) {
    json_t *stats = json_object_get(layer, "stats");
    if (num(stats, "relative_error") == worst)
      worst_name = json_string_value(json_object_get(layer, "name"));
  }
  if (as_json) {
    json_t *o = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:s, s:s, s:s}",
                          "layers_decomposed", nd, "layers_skipped", ns,
                          "params_before", pb, "params_after", pa,
                          "macs_before", mb, "macs_after", ma,
                          "worst_relative_error", worst, "worst_layer",
                          worst_name ? worst_name : "", "weights", weights_path,
                          "info", info_path);
    char *s = json_dumps(o, JSON_COMPACT);
    puts(s ? s : "{}");
    free(s);
    json_decref(o);
  } else {
    char a[32], b[32];
    printf("decomposed %lld layers, left %lld alone\n", (long long)nd,
           (long long)ns);
    human(pb, a, sizeof a);
    human(pa, b, sizeof b);
    printf("params  %s -> %s (%.2fx fewer)\n", a, b, pa > 0 ? pb / pa : 0.0);
    human(mb, a, sizeof a);
    human(ma, b, sizeof b);
    printf("MACs    %s -> %s (%.2fx fewer)\n", a, b, ma > 0 ? mb / ma : 0.0);
    if (nd > 0)
      printf("worst relative error %.4f (%s)\n", worst,
             worst_name ? worst_name : "?");
    printf("wrote %s and %s\n", weights_path, info_path);
  }
  json_decref(info);
}

/* A byte size: digits with an optional K M G T (powers of 1000, as the
 * Hub's "5GB"; a trailing B is allowed) or KiB MiB GiB TiB suffix. */
static bool parse_bytes(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (*s < '0' || *s > '9')
    return false;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || v == 0)
    return false;
  static const char *const dec[] = {"K", "M", "G", "T"};
  static const char *const bin[] = {"KiB", "MiB", "GiB", "TiB"};
  uint64_t mul = 1;
  bool ok = *end == '\0' || strcmp(end, "B") == 0;
  for (int i = 0; !ok && i < 4; i++) {
    uint64_t d = 1, b = 1;
    for (int j = 0; j <= i; j++)
      d *= 1000, b *= 1024;
    size_t k = strlen(dec[i]);
    if (strcmp(end, bin[i]) == 0)
      mul = b, ok = true;
    else if (strncmp(end, dec[i], k) == 0 &&
             (end[k] == '\0' || strcmp(end + k, "B") == 0))
      mul = d, ok = true;
  }
  if (!ok || v > UINT64_MAX / mul)
    return false;
  *out = (uint64_t)v * mul;
  return true;
}

/* Remove the files a save wrote (a JSON array of names in `dir`). */
static void unlink_files(const char *dir, const char *files_json) {
  json_t *a = files_json ? json_loads(files_json, 0, NULL) : NULL;
  size_t i;
  json_t *v;
  json_array_foreach(a, i, v) {
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, json_string_value(v));
    unlink(p);
  }
  json_decref(a);
}

int cmd_decompose(int argc, char **argv) {
  static const struct option opts[] = {
      {"weights", required_argument, NULL, 'w'},
      {"spec", required_argument, NULL, 's'},
      {"model", required_argument, NULL, 'm'},
      {"out", required_argument, NULL, 'o'},
      {"policy", required_argument, NULL, 'p'},
      {"format", required_argument, NULL, 'f'},
      {"shard-bytes", required_argument, NULL, 'B'},
      {"calibration", required_argument, NULL, 'c'},
      {"profile", required_argument, NULL, 'P'},
      {"spectra", no_argument, NULL, 'S'},
      {"threads", required_argument, NULL, 't'},
      {"json", no_argument, NULL, 'j'},
      {"quiet", no_argument, NULL, 'q'},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {0, 0, 0, 0},
  };
  const char *weights_path = NULL, *spec_path = NULL, *out_dir = NULL;
  const char *model_path = NULL, *calib_path = NULL, *profile_path = NULL;
  const char *policy_arg = "budget", *format_arg = NULL, *shard_arg = NULL;
  const char *threads_arg = NULL;
  bool spectra = false, as_json = false, quiet = false, verbose = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "w:s:o:p:f:h", opts, NULL)) != -1) {
    switch (c) {
    case 'w': weights_path = optarg; break;
    case 's': spec_path = optarg; break;
    case 'm': model_path = optarg; break;
    case 'o': out_dir = optarg; break;
    case 'p': policy_arg = optarg; break;
    case 'f': format_arg = optarg; break;
    case 'B': shard_arg = optarg; break;
    case 'c': calib_path = optarg; break;
    case 'P': profile_path = optarg; break;
    case 'S': spectra = true; break;
    case 't': threads_arg = optarg; break;
    case 'j': as_json = true; break;
    case 'q': quiet = true; break;
    case 'v': verbose = true; break;
    case 'h': fputs(usage, stdout); return CLI_EXIT_OK;
    default: fputs(usage, stderr); return CLI_EXIT_USAGE;
    }
  }
  if (optind < argc) {
    cli_error("decompose: unexpected argument '%s'", argv[optind]);
    return CLI_EXIT_USAGE;
  }
  if (model_path && (weights_path || spec_path)) {
    cli_error("decompose: --model reads weights and spec from the archive; "
              "give it without --weights and --spec");
    return CLI_EXIT_USAGE;
  }
  if (model_path)
    weights_path = model_path;
  if (!weights_path || (!spec_path && !model_path) || !out_dir) {
    cli_error("decompose: --weights, --spec and --out (or --model and --out) "
              "are required");
    fputs(usage, stderr);
    return CLI_EXIT_USAGE;
  }
  decomp_format fmt = decomp_format_from_name(format_arg ? format_arg : "pth");
  if (fmt != DECOMP_FORMAT_PTH && fmt != DECOMP_FORMAT_SAFETENSORS) {
    cli_error("decompose: --format must be pth or safetensors, not '%s'",
              format_arg);
    return CLI_EXIT_USAGE;
  }
  long threads = 0;
  if (threads_arg) {
    char *end = NULL;
    errno = 0;
    threads = strtol(threads_arg, &end, 10);
    if (errno || end == threads_arg || *end || threads < 0 || threads > 1024) {
      cli_error("decompose: --threads takes a count from 0 to 1024, not '%s'",
                threads_arg);
      return CLI_EXIT_USAGE;
    }
  }
  uint64_t shard_bytes = 0;
  if (shard_arg && !parse_bytes(shard_arg, &shard_bytes)) {
    cli_error("decompose: --shard-bytes takes a positive size (5G, 500MiB, "
              "1000000), not '%s'",
              shard_arg);
    return CLI_EXIT_USAGE;
  }
  if (shard_arg && fmt == DECOMP_FORMAT_PTH && format_arg) {
    cli_error("decompose: --shard-bytes applies to safetensors output");
    return CLI_EXIT_USAGE;
  }

  int rc = CLI_EXIT_FAILURE, err;
  bool made_dir = false, wrote_weights = false;
  char *spec_text = NULL, *policy_text = NULL, *profile_text = NULL;
  char *info_text = NULL, *files = NULL;
  char weights_out[4096] = "", info_out[4096] = "";
  decomp_weights *w = NULL, *calib = NULL;
  decomp_spec *spec = NULL;
  decomp_policy *policy = NULL;
  decomp_result *result = NULL;
  decomp_ctx *ctx = decomp_ctx_new();
  if (!ctx) {
    cli_error("out of memory");
    return CLI_EXIT_FAILURE;
  }
  if (verbose)
    decomp_ctx_set_log(ctx, on_log, NULL, DECOMP_LOG_DEBUG);
  cli_catch_signals();

  if (model_path) {
    if ((err = decomp_torchscript_read(ctx, model_path, NULL, &w, &spec))) {
      cli_error("%s: %s", model_path, decomp_errmsg(ctx));
      rc = err == DECOMP_ERR_IO ? CLI_EXIT_INPUT : cli_exit_for(err);
      goto done;
    }
  } else if ((err = decomp_weights_open(ctx, weights_path, &w))) {
    /* Messages about the file itself already start with its path. */
    const char *msg = decomp_errmsg(ctx);
    if (strncmp(msg, weights_path, strlen(weights_path)) == 0)
      cli_error("%s", msg);
    else
      cli_error("%s: %s", weights_path, msg);
    rc = err == DECOMP_ERR_IO ? CLI_EXIT_INPUT : cli_exit_for(err);
    goto done;
  }
  size_t spec_len;
  if (!model_path && !(spec_text = cli_read_file(spec_path, &spec_len))) {
    cli_error("%s: %s", spec_path, strerror(errno));
    rc = CLI_EXIT_INPUT;
    goto done;
  }
  if (!model_path &&
      (err = decomp_spec_parse(ctx, spec_text, spec_len, &spec))) {
    cli_error("%s: %s", spec_path, decomp_errmsg(ctx));
    rc = cli_exit_for(err);
    goto done;
  }
  const char *ptext = policy_arg;
  if (policy_arg[0] == '@') {
    if (!(policy_text = cli_read_file(policy_arg + 1, NULL))) {
      cli_error("%s: %s", policy_arg + 1, strerror(errno));
      rc = CLI_EXIT_INPUT;
      goto done;
    }
    ptext = policy_text;
  }
  if ((err = decomp_policy_parse(ctx, ptext, &policy))) {
    cli_error("policy: %s", decomp_errmsg(ctx));
    rc = cli_exit_for(err);
    goto done;
  }

  bool sharded = decomp_weights_shard_count(w) > 0;
  if (sharded && fmt == DECOMP_FORMAT_PTH && format_arg) {
    cli_error("decompose: --format pth is for single-file models; a sharded "
              "checkpoint is written as sharded safetensors");
    rc = CLI_EXIT_USAGE;
    goto done;
  }
  if (sharded || shard_arg)
    fmt = DECOMP_FORMAT_SAFETENSORS;

  char digest[72], calib_digest[72], profile_digest[72];
  if (!cli_weights_digest(weights_path, digest)) {
    cli_error("%s: %s", weights_path, strerror(errno));
    rc = CLI_EXIT_INPUT;
    goto done;
  }
  if (profile_path &&
      (!(profile_text = cli_read_file(profile_path, NULL)) ||
       !cli_file_digest(profile_path, profile_digest))) {
    cli_error("%s: %s", profile_path, strerror(errno));
    rc = CLI_EXIT_INPUT;
    goto done;
  }
  if (calib_path) {
    if ((err = decomp_weights_open(ctx, calib_path, &calib))) {
      cli_error("%s: %s", calib_path, decomp_errmsg(ctx));
      rc = err == DECOMP_ERR_IO ? CLI_EXIT_INPUT : cli_exit_for(err);
      goto done;
    }
    if (!cli_file_digest(calib_path, calib_digest)) {
      cli_error("%s: %s", calib_path, strerror(errno));
      rc = CLI_EXIT_INPUT;
      goto done;
    }
  }

  struct stat st;
  if (stat(out_dir, &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      cli_error("--out %s: exists and is not a directory", out_dir);
      rc = CLI_EXIT_OUTPUT;
      goto done;
    }
  } else if (mkdir(out_dir, 0777) == 0) {
    made_dir = true;
  } else {
    cli_error("--out %s: %s", out_dir, strerror(errno));
    rc = CLI_EXIT_OUTPUT;
    goto done;
  }

  struct progress_state ps = {.show = !quiet && isatty(STDERR_FILENO),
                              .width = 12};
  for (size_t i = 0; i < decomp_spec_count(spec); i++) {
    int n = (int)strlen(decomp_spec_at(spec, i)->name);
    if (n > ps.width && n < 48)
      ps.width = n;
  }
  decomp_options o = {.progress = on_progress,
                      .progress_user = &ps,
                      .source_digest = digest,
                      .record_spectra = spectra,
                      .threads = (int)threads,
                      .calibration = calib,
                      .calibration_digest = calib ? calib_digest : NULL,
                      .profile = profile_text,
                      .profile_digest = profile_text ? profile_digest : NULL};
  decomp_save_options so = {.shard_bytes = shard_bytes,
                            .sharded = sharded,
                            .single_name = DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS};
  if (fmt == DECOMP_FORMAT_SAFETENSORS)
    err = decomp_decompose_save(ctx, w, spec, policy, &o, out_dir, &so,
                                &info_text, &files);
  else
    err = decomp_decompose(ctx, w, spec, policy, &o, &result);
  if (ps.partial)
    fputs("\r\033[K", stderr);
  if (err) {
    if (err == DECOMP_ERR_CANCELLED)
      cli_error("interrupted; nothing written");
    else
      cli_error("%s", decomp_errmsg(ctx));
    rc = cli_exit_for(err);
    goto done;
  }

  snprintf(info_out, sizeof info_out, "%s/" DECOMP_ARTIFACT_INFO, out_dir);
  if (files) {
    /* Streamed: written already; the last file named is the index when
     * sharded, else the one file. */
    json_t *a = json_loads(files, 0, NULL);
    size_t nf = json_array_size(a);
    snprintf(weights_out, sizeof weights_out, "%s/%s", out_dir,
             nf ? json_string_value(json_array_get(a, nf - 1)) : "?");
    json_decref(a);
    wrote_weights = true;
  } else {
    snprintf(weights_out, sizeof weights_out,
             "%s/" DECOMP_ARTIFACT_WEIGHTS_PTH, out_dir);
    if ((err = decomp_weights_save(ctx, decomp_result_weights(result),
                                   weights_out, fmt))) {
      cli_error("%s: %s", weights_out, decomp_errmsg(ctx));
      rc = cli_exit_for(err);
      goto done;
    }
    wrote_weights = true;
    info_text = strdup(decomp_result_info(result));
    if (!info_text) {
      cli_error("out of memory");
      goto done;
    }
  }
  if ((err = write_text_atomic(out_dir, DECOMP_ARTIFACT_INFO, info_text))) {
    cli_error("%s: %s", info_out, strerror(err));
    rc = CLI_EXIT_OUTPUT;
    goto done;
  }
  if (cli_interrupted) {
    cli_error("interrupted; nothing written");
    rc = CLI_EXIT_INTERRUPTED;
    unlink(info_out);
    goto done;
  }
  print_summary(info_text, weights_out, info_out, as_json);
  rc = CLI_EXIT_OK;

done:
  if (rc != CLI_EXIT_OK) {
    if (wrote_weights && files)
      unlink_files(out_dir, files);
    else if (wrote_weights)
      unlink(weights_out);
    if (made_dir)
      rmdir(out_dir);
  }
  decomp_result_free(result);
  decomp_policy_free(policy);
  decomp_spec_free(spec);
  decomp_weights_free(w);
  decomp_weights_free(calib);
  free(spec_text);
  free(policy_text);
  free(profile_text);
  decomp_free(info_text);
  decomp_free(files);
  decomp_ctx_free(ctx);
  return rc;
}
