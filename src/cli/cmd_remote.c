/* cmd_remote.c — decompctl's service verbs over libdecompclient: upload,
 * submit, status, wait, fetch, jobs, cancel, retry. The server comes from
 * --url or DECOMPD_URL, the token from DECOMPD_TOKEN (never from the command
 * line, where other users could read it), the cache from DECOMPD_CACHE,
 * offline mode from DECOMPD_OFFLINE. Results go to stdout (ids and paths
 * alone, so a shell script can capture them, or one JSON document with
 * --json); progress and messages to stderr (a bar on a terminal, plain
 * lines otherwise). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "decomp/client.h"

/* Options every remote verb takes. */
struct common {
  const char *url;
  bool json;
  bool quiet;
  bool tty; /* stderr is a terminal: draw bars */
};

enum { OPT_URL = 0x100, OPT_JSON, OPT_QUIET, OPT_HELP };

#define COMMON_LONG_OPTS                                                       \
  {"url", required_argument, NULL, OPT_URL},                                   \
      {"json", no_argument, NULL, OPT_JSON},                                   \
      {"quiet", no_argument, NULL, OPT_QUIET},                                 \
      {"help", no_argument, NULL, OPT_HELP}

static const char common_help[] =
    "\n"
    "  --url URL   the server (default $DECOMPD_URL, else " DECOMP_CLIENT_DEFAULT_URL
    ")\n"
    "  --json      print one JSON document on stdout (errors too:\n"
    "              {\"error\": {\"code\", \"message\", \"exit\"}})\n"
    "  --quiet     no progress on stderr\n"
    "\n"
    "Environment: DECOMPD_URL, DECOMPD_TOKEN (bearer token), DECOMPD_CACHE\n"
    "(default ~/.cache/decompd), DECOMPD_OFFLINE=1 (serve from the cache).\n"
    "Exit codes: see decompctl --help.\n";

/* Handle a common option; false when `opt` is not one. */
static bool common_opt(struct common *o, int opt) {
  switch (opt) {
  case OPT_URL:
    o->url = optarg;
    return true;
  case OPT_JSON:
    o->json = true;
    return true;
  case OPT_QUIET:
    o->quiet = true;
    return true;
  default:
    return false;
  }
}

static int remote_exit(int rc) {
  switch (rc) {
  case DECOMP_OK:
    return CLI_EXIT_OK;
  case DECOMP_ERR_CONNECT:
  case DECOMP_ERR_TRANSFER:
    return CLI_EXIT_CONNECT;
  case DECOMP_ERR_UNAUTHORIZED:
  case DECOMP_ERR_FORBIDDEN:
    return CLI_EXIT_AUTH;
  case DECOMP_ERR_NOT_FOUND:
  case DECOMP_ERR_OFFLINE_MISS:
    return CLI_EXIT_NOT_FOUND;
  case DECOMP_ERR_DIGEST_MISMATCH:
    return CLI_EXIT_DIGEST;
  case DECOMP_ERR_TIMEOUT:
    return CLI_EXIT_TIMEOUT;
  case DECOMP_ERR_DISK_FULL:
    return CLI_EXIT_OUTPUT;
  case DECOMP_ERR_SERVER:
  case DECOMP_ERR_CONFLICT:
    return CLI_EXIT_FAILURE;
  default:
    return cli_exit_for(rc);
  }
}

/* Report a failure (stderr, and stdout with --json); the exit code. */
static int fail(const struct common *o, int rc, const char *msg) {
  int code = remote_exit(rc);
  cli_error("%s [%s]", msg && msg[0] ? msg : decomp_strerror(rc),
            decomp_error_code(rc));
  if (o->json) {
    json_t *j = json_pack("{s:{s:s, s:s, s:i}}", "error", "code",
                          decomp_error_code(rc), "message",
                          msg && msg[0] ? msg : decomp_strerror(rc), "exit",
                          code);
    if (j) {
      json_dumpf(j, stdout, JSON_COMPACT);
      fputc('\n', stdout);
      json_decref(j);
    }
  }
  return code;
}

static int client_fail_exit(const struct common *o, decomp_client *c, int rc) {
  return fail(o, rc, decomp_client_errmsg(c));
}

static int open_client(const struct common *o, decomp_client **out) {
  int rc = decomp_client_new(o->url, NULL, out);
  if (rc == DECOMP_ERR_INVALID_ARGUMENT) {
    char m[512];
    snprintf(m, sizeof m, "server URL '%s' must start with http:// or https://",
             o->url ? o->url : getenv("DECOMPD_URL"));
    return fail(o, rc, m);
  }
  if (rc != DECOMP_OK)
    return fail(o, rc, "cannot make the client");
  return CLI_EXIT_OK;
}

static void print_json_text(const char *text) {
  fputs(text ? text : "null", stdout);
  fputc('\n', stdout);
}

static void human_bytes(int64_t n, char *buf, size_t len) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)n;
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    u++;
  }
  snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

/* ---- progress on stderr ---------------------------------------------------- */

struct bar {
  const struct common *o;
  bool drawn; /* a bar line is on screen */
};

static void bar_draw(struct bar *b, double frac, const char *text) {
  char cells[33];
  int n = frac < 0 ? 0 : frac > 1 ? 32 : (int)(frac * 32);
  for (int i = 0; i < 32; i++)
    cells[i] = i < n ? '#' : '.';
  cells[32] = '\0';
  fprintf(stderr, "\r[%s] %-60.60s", cells, text);
  fflush(stderr);
  b->drawn = true;
}

static void bar_end(struct bar *b) {
  if (b->drawn)
    fputc('\n', stderr);
  b->drawn = false;
}

static int on_transfer(void *user, const decomp_client_progress *p) {
  struct bar *b = user;
  if (cli_interrupted)
    return 1;
  if (b->o->quiet)
    return 0;
  char done[32], total[32], text[128];
  human_bytes(p->done, done, sizeof done);
  human_bytes(p->total, total, sizeof total);
  if (b->o->tty && p->files_total > 1) {
    /* A fetch of several artifacts: one bar for them all. */
    char all_done[32], all_total[32];
    human_bytes(p->all_done, all_done, sizeof all_done);
    human_bytes(p->all_total, all_total, sizeof all_total);
    snprintf(text, sizeof text, "fetch %zu/%zu files %s / %s (%s)",
             p->files_done, p->files_total, all_done, all_total, p->name);
    bar_draw(b, p->all_total > 0
                    ? (double)p->all_done / (double)p->all_total
                    : 0,
             text);
  } else if (b->o->tty) {
    snprintf(text, sizeof text, "%s %s %s / %s",
             p->direction == DECOMP_CLIENT_UPLOAD ? "upload" : "fetch",
             p->name, done, p->total >= 0 ? total : "?");
    bar_draw(b, p->total > 0 ? (double)p->done / (double)p->total : 0, text);
  } else if (p->total > 0 && p->done >= p->total) {
    fprintf(stderr, "%s %s: %s\n",
            p->direction == DECOMP_CLIENT_UPLOAD ? "uploaded" : "fetched",
            p->name, total);
  }
  return 0;
}

/* ---- upload ---------------------------------------------------------------- */

/* The end of an upload: with `print`, the model as JSON (--json) or its
 * id on stdout; frees `json`. CLI_EXIT_OK. */
static int print_uploaded(const struct common *o,
                          const decomp_client_model *m, char *json,
                          bool print) {
  if (print) {
    if (o->json)
      print_json_text(json);
    else
      puts(m->id);
  }
  decomp_client_string_free(json);
  return CLI_EXIT_OK;
}

/* Upload `path`; the model into *m. An exit code. */
static int do_upload(const struct common *o, decomp_client *c,
                     const char *path, const char *name,
                     decomp_client_model *m, bool print) {
  struct bar b = {o, false};
  decomp_client_set_progress(c, on_transfer, &b);
  bool created = false;
  char *json = NULL;
  int rc = decomp_client_upload(c, path, name, m, &created, print ? &json : NULL);
  bar_end(&b);
  decomp_client_set_progress(c, NULL, NULL);
  if (rc != DECOMP_OK)
    return client_fail_exit(o, c, rc);
  if (!o->quiet) {
    char size[32];
    human_bytes(m->size, size, sizeof size);
    fprintf(stderr, "%s: model %s (%s, %lld tensors, %s, %s)%s\n", path, m->id,
            m->format, (long long)m->tensors, size, m->digest,
            created ? "" : " already uploaded");
  }
  return print_uploaded(o, m, json, print);
}

/* Whether `path` is a sharded checkpoint: a folder (holding
 * model.safetensors.index.json) or an index file (*.json). */
static bool is_sharded_path(const char *path) {
  struct stat st;
  size_t n = strlen(path);
  return (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) ||
         (n > 5 && strcmp(path + n - 5, ".json") == 0);
}

/* Upload the sharded checkpoint at `path` (shards the server has are
 * skipped, partial ones resumed), bound into model *m; with `print`, say
 * which as do_upload does. An exit code. */
static int do_upload_sharded(const struct common *o, decomp_client *c,
                             const char *path, const char *name,
                             decomp_client_model *m, bool print) {
  struct bar b = {o, false};
  decomp_client_set_progress(c, on_transfer, &b);
  bool created = false;
  char *json = NULL;
  decomp_client_shard_stats st;
  int rc = decomp_client_upload_sharded(c, path, name, m, &created, &st,
                                        print ? &json : NULL);
  bar_end(&b);
  decomp_client_set_progress(c, NULL, NULL);
  if (rc != DECOMP_OK)
    return client_fail_exit(o, c, rc);
  if (!o->quiet) {
    char size[32], sent[32];
    human_bytes(m->size, size, sizeof size);
    human_bytes(st.bytes, sent, sizeof sent);
    fprintf(stderr,
            "%s: model %s (%s, %zu shards: %zu sent, %zu resumed, %zu "
            "already on the server; %s sent; %lld tensors, %s, %s)%s\n",
            path, m->id, m->format, st.shards, st.sent, st.resumed,
            st.skipped, sent, (long long)m->tensors, size, m->digest,
            created ? "" : " already uploaded");
  }
  return print_uploaded(o, m, json, print);
}

/* Attach the layer spec in `spec` (JSON text, from `spec_path`), then the
 * calibration file `cal_path` and the latency profile file `prof_path` (any
 * may be NULL) to model `id`, with progress; *cal and *prof get what was
 * attached. An exit code. */
static int do_attach(const struct common *o, decomp_client *c, const char *id,
                     const char *spec, const char *spec_path,
                     const char *cal_path, decomp_client_calibration *cal,
                     const char *prof_path, decomp_client_profile *prof) {
  if (spec) {
    int rc = decomp_client_spec_attach(c, id, spec, NULL);
    if (rc != DECOMP_OK) {
      char pre[DECOMP_CLIENT_PATH_LEN + 32];
      snprintf(pre, sizeof pre, "spec %s: ", spec_path);
      char m[sizeof pre + 1024];
      snprintf(m, sizeof m, "%s%s", pre, decomp_client_errmsg(c));
      return fail(o, rc, m);
    }
    if (!o->quiet)
      fprintf(stderr, "%s: layer spec attached to model %s\n", spec_path, id);
  }
  if (cal_path) {
    struct bar b = {o, false};
    decomp_client_set_progress(c, on_transfer, &b);
    int rc = decomp_client_calibration_attach(c, id, cal_path, cal, NULL);
    bar_end(&b);
    decomp_client_set_progress(c, NULL, NULL);
    if (rc != DECOMP_OK)
      return client_fail_exit(o, c, rc);
    if (!o->quiet) {
      char size[32];
      human_bytes(cal->size, size, sizeof size);
      fprintf(stderr,
              "%s: calibration of %lld layers attached to model %s "
              "(%s, %s)\n",
              cal_path, (long long)cal->layers, id, size, cal->digest);
    }
  }
  if (prof_path) {
    int rc = decomp_client_profile_attach(c, id, prof_path, prof, NULL);
    if (rc != DECOMP_OK)
      return client_fail_exit(o, c, rc);
    if (!o->quiet)
      fprintf(stderr,
              "%s: latency profile of %lld layers attached to model %s "
              "(%s)\n",
              prof_path, (long long)prof->layers, id, prof->digest);
  }
  return CLI_EXIT_OK;
}

static const char upload_usage[] =
    "usage: decompctl upload FILE|DIR [--name NAME] [--spec SPEC.json]\n"
    "                        [--calibration CAL.safetensors]\n"
    "                        [--profile PROFILE.json] [--json]\n"
    "                        [--quiet] [--url URL]\n"
    "       decompctl upload --model MODEL [--spec SPEC.json]\n"
    "                        [--calibration CAL.safetensors]\n"
    "                        [--profile PROFILE.json] [...]\n"
    "\n"
    "Upload a weight file (.pth state dict or safetensors), streamed from\n"
    "disk. The server validates it and deduplicates it by digest. Prints the\n"
    "model id (m_…), or the model as JSON with --json. With --model, attach\n"
    "to a model uploaded before instead.\n"
    "\n"
    "A sharded safetensors checkpoint (a folder holding\n"
    "model.safetensors.index.json, or that index file) goes up shard by\n"
    "shard: a shard the server has is skipped, one it holds part of is\n"
    "resumed from there, the others are sent whole; then the index binds\n"
    "them into one model. Run it again after an interruption.\n"
    "\n"
    "  --name NAME          a label for the model\n"
    "  --spec FILE          attach this layer spec (JSON) to the model: jobs\n"
    "                       may then omit theirs\n"
    "  --calibration FILE   attach this calibration (the layers' input Gram\n"
    "                       matrices, decompd.calibration safetensors) to the\n"
    "                       model, replacing any; it is checked against the\n"
    "                       model's layer spec (give --spec the first time);\n"
    "                       submit --calibration attached then uses it\n"
    "  --profile FILE       attach this latency profile (decompd.profile's\n"
    "                       JSON: each layer's time and its candidates' over\n"
    "                       a grid of ranks, measured on the target device)\n"
    "                       to the model, replacing any; it is checked\n"
    "                       against the model's layer spec (give --spec the\n"
    "                       first time); submit --profile attached then uses\n"
    "                       it\n"
    "  --model MODEL        an id (m_…) of a model uploaded before\n";

int cmd_upload(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  const char *name = NULL, *spec_path = NULL, *cal_path = NULL,
             *prof_path = NULL, *model_id = NULL;
  static const struct option opts[] = {
      {"name", required_argument, NULL, 'n'},
      {"spec", required_argument, NULL, 's'},
      {"calibration", required_argument, NULL, 'c'},
      {"profile", required_argument, NULL, 'l'},
      {"model", required_argument, NULL, 'm'},
      COMMON_LONG_OPTS,
      {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (common_opt(&o, opt))
      continue;
    if (opt == 'n') {
      name = optarg;
    } else if (opt == 's') {
      spec_path = optarg;
    } else if (opt == 'c') {
      cal_path = optarg;
    } else if (opt == 'l') {
      prof_path = optarg;
    } else if (opt == 'm') {
      model_id = optarg;
    } else if (opt == OPT_HELP) {
      printf("%s%s", upload_usage, common_help);
      return CLI_EXIT_OK;
    } else {
      fprintf(stderr, "%s", upload_usage);
      return CLI_EXIT_USAGE;
    }
  }
  if (model_id
          ? (optind != argc || name || (!spec_path && !cal_path && !prof_path))
          : optind != argc - 1) {
    fprintf(stderr, "%s", upload_usage);
    return CLI_EXIT_USAGE;
  }
  char *spec = NULL, *json = NULL;
  decomp_client *c = NULL;
  int ex;
  if (spec_path && !(spec = cli_read_file(spec_path, NULL))) {
    char m[4200];
    snprintf(m, sizeof m, "%s: %s", spec_path, strerror(errno));
    ex = fail(&o, DECOMP_ERR_BAD_SPEC, m);
    goto done;
  }
  if ((ex = open_client(&o, &c)) != CLI_EXIT_OK)
    goto done;
  cli_catch_signals();
  decomp_client_model m;
  bool attaching = spec || cal_path || prof_path;
  if (!model_id) {
    /* Printed here only when nothing is attached after it. */
    if ((ex = is_sharded_path(argv[optind])
                  ? do_upload_sharded(&o, c, argv[optind], name, &m,
                                      !attaching)
                  : do_upload(&o, c, argv[optind], name, &m, !attaching)) !=
        CLI_EXIT_OK)
      goto done;
    model_id = m.id;
  }
  if (!attaching)
    goto done;
  decomp_client_calibration cal;
  decomp_client_profile prof;
  if ((ex = do_attach(&o, c, model_id, spec, spec_path, cal_path, &cal,
                      prof_path, &prof)) != CLI_EXIT_OK)
    goto done;
  int rc = decomp_client_model_get(c, model_id, &m, o.json ? &json : NULL);
  if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
    goto done;
  }
  if (o.json)
    print_json_text(json);
  else
    puts(m.id);
done:
  decomp_client_string_free(json);
  decomp_client_free(c);
  free(spec);
  return ex;
}

/* ---- submit ---------------------------------------------------------------- */

static const char submit_usage[] =
    "usage: decompctl submit MODEL|FILE [--spec SPEC.json] [--policy P]\n"
    "                        [--calibration CAL.safetensors|attached|DIGEST]\n"
    "                        [--profile PROFILE.json|attached|DIGEST]\n"
    "                        [--name NAME] [--json] [--quiet] [--url URL]\n"
    "\n"
    "Submit a decomposition job for model MODEL (an id m_… from upload), or\n"
    "upload FILE first. Prints the job id (j_…), or the job as JSON with\n"
    "--json. The same model, spec, policy, calibration and profile again\n"
    "give the same job.\n"
    "\n"
    "  --spec FILE         the layer spec (JSON, as the Python package writes\n"
    "                      it); without it the server uses the spec it has\n"
    "                      for the model, if any\n"
    "  --policy P          rank policy: a name (budget, amct, vbmf, energy,\n"
    "                      max_error, ratio, fixed), a JSON object, or @FILE;\n"
    "                      default the server's (budget). Linear layers are\n"
    "                      decomposed when its \"types\" lists them:\n"
    "                      {\"types\": [\"Conv2d\", \"Linear\"], …}\n"
    "  --calibration C     decompose the layers a calibration covers to keep\n"
    "                      their outputs on its data (whitened channel_svd /\n"
    "                      svd): a decompd.calibration safetensors FILE\n"
    "                      (attached to the model first, and with --spec that\n"
    "                      spec too: the server checks one against the\n"
    "                      other), \"attached\" for the model's attached one,\n"
    "                      or its digest sha256:…\n"
    "  --profile P         a latency profile measured on the target device\n"
    "                      (decompd.profile's JSON): the budget may then take\n"
    "                      \"latency_reduction\", every policy leaves alone a\n"
    "                      layer it says would get slower, and the info file\n"
    "                      records predicted latencies; a FILE (attached to\n"
    "                      the model first, after --spec and --calibration),\n"
    "                      \"attached\" for the model's attached one, or its\n"
    "                      digest sha256:…\n"
    "  --name NAME         the model's label when FILE is uploaded\n";

static bool is_model_id(const char *s) {
  if (strncmp(s, "m_", 2) != 0 || strlen(s) != 18)
    return false;
  for (int i = 2; i < 18; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

int cmd_submit(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  const char *spec_path = NULL, *policy = NULL, *name = NULL,
             *calibration = NULL, *profile = NULL;
  static const struct option opts[] = {
      {"spec", required_argument, NULL, 's'},
      {"policy", required_argument, NULL, 'p'},
      {"name", required_argument, NULL, 'n'},
      {"calibration", required_argument, NULL, 'c'},
      {"profile", required_argument, NULL, 'l'},
      COMMON_LONG_OPTS,
      {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (common_opt(&o, opt))
      continue;
    if (opt == 's') {
      spec_path = optarg;
    } else if (opt == 'p') {
      policy = optarg;
    } else if (opt == 'n') {
      name = optarg;
    } else if (opt == 'c') {
      calibration = optarg;
    } else if (opt == 'l') {
      profile = optarg;
    } else if (opt == OPT_HELP) {
      printf("%s%s", submit_usage, common_help);
      return CLI_EXIT_OK;
    } else {
      fprintf(stderr, "%s", submit_usage);
      return CLI_EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s", submit_usage);
    return CLI_EXIT_USAGE;
  }
  char *spec = NULL, *pol = NULL;
  decomp_client *c = NULL;
  decomp_client_job j = {0};
  int ex;
  if (spec_path && !(spec = cli_read_file(spec_path, NULL))) {
    char m[4200];
    snprintf(m, sizeof m, "%s: %s", spec_path, strerror(errno));
    ex = fail(&o, DECOMP_ERR_BAD_SPEC, m);
    goto done;
  }
  if (policy && policy[0] == '@') {
    if (!(pol = cli_read_file(policy + 1, NULL))) {
      char m[4200];
      snprintf(m, sizeof m, "%s: %s", policy + 1, strerror(errno));
      ex = fail(&o, DECOMP_ERR_BAD_POLICY, m);
      goto done;
    }
    policy = pol;
  }
  if ((ex = open_client(&o, &c)) != CLI_EXIT_OK)
    goto done;
  cli_catch_signals();
  const char *model = argv[optind];
  decomp_client_model m;
  if (!is_model_id(model)) {
    if ((ex = do_upload(&o, c, model, name, &m, false)) != CLI_EXIT_OK)
      goto done;
    model = m.id;
  }
  /* A calibration or profile file is attached first (its digest then
   * names it); the server checks it against the model's spec, so the
   * job's goes first. */
  decomp_client_calibration cal;
  decomp_client_profile prof;
  bool cal_file = calibration && strcmp(calibration, DECOMP_CLIENT_ATTACHED) &&
                  strncmp(calibration, "sha256:", 7) != 0;
  bool prof_file = profile && strcmp(profile, DECOMP_CLIENT_ATTACHED) &&
                   strncmp(profile, "sha256:", 7) != 0;
  if (cal_file || prof_file) {
    if ((ex = do_attach(&o, c, model, spec, spec_path,
                        cal_file ? calibration : NULL, &cal,
                        prof_file ? profile : NULL, &prof)) != CLI_EXIT_OK)
      goto done;
    if (cal_file)
      calibration = cal.digest;
    if (prof_file)
      profile = prof.digest;
  }
  bool created = false;
  decomp_client_submit_options so = {.calibration = calibration,
                                     .profile = profile};
  int rc = decomp_client_submit_with(c, model, spec, policy, &so, &j, &created);
  if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
    goto done;
  }
  if (!o.quiet)
    fprintf(stderr, "job %s %s (model %s%s%s%s%s)\n", j.id,
            created ? "queued" : "already submitted, now", model,
            calibration ? ", calibration " : "", calibration ? calibration : "",
            profile ? ", profile " : "", profile ? profile : "");
  if (!o.quiet && !created)
    fprintf(stderr, "job %s is %s\n", j.id, decomp_job_state_name(j.state));
  if (o.json)
    print_json_text(j.json);
  else
    puts(j.id);
  ex = CLI_EXIT_OK;
done:
  decomp_client_job_clear(&j);
  decomp_client_free(c);
  free(spec);
  free(pol);
  return ex;
}

/* ---- status, wait, cancel, retry ------------------------------------------ */

static void status_line(FILE *f, const decomp_client_job *j) {
  fprintf(f, "%s %s %lld/%lld layers", j->id, decomp_job_state_name(j->state),
          (long long)j->layers_done, (long long)j->layers_total);
  if (j->seconds > 0)
    fprintf(f, " %.1f s", j->seconds);
  if (j->cancel_requested && !decomp_job_state_final(j->state))
    fputs(" (cancel requested)", f);
  if (j->error_code[0])
    fprintf(f, " error %s: %s", j->error_code, j->error_message);
  fputc('\n', f);
}

/* Parse "VERB JOB [options]" with no verb-specific options but --timeout. */
static int parse_job_verb(int argc, char **argv, const char *usage,
                          struct common *o, double *timeout) {
  static const struct option opts[] = {
      {"timeout", required_argument, NULL, 't'}, COMMON_LONG_OPTS, {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (common_opt(o, opt))
      continue;
    if (opt == 't' && timeout) {
      char *end;
      *timeout = strtod(optarg, &end);
      if (*end || end == optarg || *timeout < 0) {
        cli_error("--timeout wants seconds, not '%s'", optarg);
        return CLI_EXIT_USAGE;
      }
    } else if (opt == OPT_HELP) {
      printf("%s%s", usage, common_help);
      return -1;
    } else {
      fprintf(stderr, "%s", usage);
      return CLI_EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s", usage);
    return CLI_EXIT_USAGE;
  }
  return CLI_EXIT_OK;
}

static const char status_usage[] =
    "usage: decompctl status JOB [--json] [--url URL]\n"
    "\n"
    "Print a job's state: \"ID STATE DONE/TOTAL layers [SECONDS s] [error CODE:\n"
    "MESSAGE]\", or the job as JSON (per-layer ranks, artifacts) with --json.\n";

int cmd_status(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  int ex = parse_job_verb(argc, argv, status_usage, &o, NULL);
  if (ex != CLI_EXIT_OK)
    return ex < 0 ? CLI_EXIT_OK : ex;
  decomp_client *c = NULL;
  if ((ex = open_client(&o, &c)) != CLI_EXIT_OK)
    return ex;
  decomp_client_job j = {0};
  int rc = decomp_client_job_get(c, argv[optind], &j);
  if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
  } else {
    if (o.json)
      print_json_text(j.json);
    else
      status_line(stdout, &j);
  }
  decomp_client_job_clear(&j);
  decomp_client_free(c);
  return ex;
}

struct wait_state {
  struct common *o;
  struct bar bar;
  decomp_job_state last_state;
  int64_t last_done;
};

static int on_wait(void *user, const decomp_client_job *j) {
  struct wait_state *w = user;
  if (cli_interrupted)
    return 1;
  if (w->o->quiet)
    return 0;
  if (w->o->tty) {
    char text[160], cur[64] = "";
    /* Inside a layer: where, instead of the id (on the command line). */
    if (j->current_layer[0])
      snprintf(cur, sizeof cur, ", %.24s: %s %.0f%%", j->current_layer,
               j->current_step, 100 * j->current_fraction);
    snprintf(text, sizeof text, "%s%s%s %lld/%lld layers %.1f s%s",
             cur[0] ? "" : j->id, cur[0] ? "" : " ",
             decomp_job_state_name(j->state), (long long)j->layers_done,
             (long long)j->layers_total, j->seconds, cur);
    bar_draw(&w->bar,
             j->layers_total > 0
                 ? (double)j->layers_done / (double)j->layers_total
                 : 0,
             text);
  } else if (j->state != w->last_state || j->layers_done != w->last_done) {
    status_line(stderr, j);
  }
  w->last_state = j->state;
  w->last_done = j->layers_done;
  return 0;
}

static const char wait_usage[] =
    "usage: decompctl wait JOB [--timeout SECONDS] [--json] [--quiet] [--url URL]\n"
    "\n"
    "Wait until a job has finished, showing its per-layer progress (a bar on\n"
    "a terminal, a line per change otherwise), then print its final state.\n"
    "Exit 0 when it succeeded, 9 when it failed or was cancelled, 11 when\n"
    "SECONDS ran out first.\n";

int cmd_wait(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  double timeout = 0;
  int ex = parse_job_verb(argc, argv, wait_usage, &o, &timeout);
  if (ex != CLI_EXIT_OK)
    return ex < 0 ? CLI_EXIT_OK : ex;
  decomp_client *c = NULL;
  if ((ex = open_client(&o, &c)) != CLI_EXIT_OK)
    return ex;
  cli_catch_signals();
  struct wait_state w = {&o, {&o, false}, DECOMP_JOB_UNKNOWN, -1};
  decomp_client_job j = {0};
  int rc = decomp_client_wait(c, argv[optind], timeout, on_wait, &w, &j);
  bar_end(&w.bar);
  if (rc == DECOMP_ERR_CANCELLED && cli_interrupted) {
    cli_error("interrupted; the job goes on (decompctl cancel %s stops it)",
              argv[optind]);
    ex = CLI_EXIT_INTERRUPTED;
  } else if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
  } else {
    if (o.json)
      print_json_text(j.json);
    else
      status_line(stdout, &j);
    ex = j.state == DECOMP_JOB_SUCCEEDED ? CLI_EXIT_OK : CLI_EXIT_JOB_FAILED;
    if (ex != CLI_EXIT_OK)
      cli_error("job %s %s%s%s", j.id, decomp_job_state_name(j.state),
                j.error_message[0] ? ": " : "", j.error_message);
  }
  decomp_client_job_clear(&j);
  decomp_client_free(c);
  return ex;
}

static const char cancel_usage[] =
    "usage: decompctl cancel JOB [--json] [--url URL]\n"
    "\n"
    "Cancel a job: a queued one at once, a running one at its next layer\n"
    "boundary (decompctl wait JOB then ends with exit code 9).\n";

int cmd_cancel(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  int ex = parse_job_verb(argc, argv, cancel_usage, &o, NULL);
  if (ex != CLI_EXIT_OK)
    return ex < 0 ? CLI_EXIT_OK : ex;
  decomp_client *c = NULL;
  if ((ex = open_client(&o, &c)) != CLI_EXIT_OK)
    return ex;
  decomp_client_job j = {0};
  int rc = decomp_client_job_cancel(c, argv[optind], &j);
  if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
  } else if (o.json) {
    print_json_text(j.json);
  } else {
    status_line(stdout, &j);
  }
  decomp_client_job_clear(&j);
  decomp_client_free(c);
  return ex;
}

static const char retry_usage[] =
    "usage: decompctl retry JOB [--json] [--url URL]\n"
    "\n"
    "Run a failed or cancelled job again: it goes back to the server's queue\n"
    "as a new attempt (decompctl wait JOB follows it), then print its state.\n"
    "Submitting the same input again would only return the failed job. A\n"
    "queued or running job is left as it is; a succeeded one is a conflict\n"
    "(exit 1).\n";

int cmd_retry(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  int ex = parse_job_verb(argc, argv, retry_usage, &o, NULL);
  if (ex != CLI_EXIT_OK)
    return ex < 0 ? CLI_EXIT_OK : ex;
  decomp_client *c = NULL;
  if ((ex = open_client(&o, &c)) != CLI_EXIT_OK)
    return ex;
  decomp_client_job j = {0};
  int rc = decomp_client_job_retry(c, argv[optind], &j);
  if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
  } else if (o.json) {
    print_json_text(j.json);
  } else {
    status_line(stdout, &j);
  }
  decomp_client_job_clear(&j);
  decomp_client_free(c);
  return ex;
}

/* ---- jobs ------------------------------------------------------------------ */

static const char jobs_usage[] =
    "usage: decompctl jobs [--state STATE] [--limit N] [--cursor C] [--json]\n"
    "                      [--url URL]\n"
    "\n"
    "List jobs, newest first: one status line each (see decompctl status);\n"
    "a last line \"next: CURSOR\" on stderr when there are more. --json prints\n"
    "{\"jobs\": [...], \"next_cursor\": ...}.\n";

int cmd_jobs(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  const char *state = NULL, *cursor = NULL;
  int limit = 0;
  static const struct option opts[] = {{"state", required_argument, NULL, 's'},
                                       {"limit", required_argument, NULL, 'l'},
                                       {"cursor", required_argument, NULL, 'c'},
                                       COMMON_LONG_OPTS,
                                       {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (common_opt(&o, opt))
      continue;
    if (opt == 's') {
      state = optarg;
    } else if (opt == 'c') {
      cursor = optarg;
    } else if (opt == 'l') {
      char *end;
      long v = strtol(optarg, &end, 10);
      if (*end || end == optarg || v < 1 || v > 500) {
        cli_error("--limit wants 1 to 500, not '%s'", optarg);
        return CLI_EXIT_USAGE;
      }
      limit = (int)v;
    } else if (opt == OPT_HELP) {
      printf("%s%s", jobs_usage, common_help);
      return CLI_EXIT_OK;
    } else {
      fprintf(stderr, "%s", jobs_usage);
      return CLI_EXIT_USAGE;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "%s", jobs_usage);
    return CLI_EXIT_USAGE;
  }
  decomp_client *c = NULL;
  int ex = open_client(&o, &c);
  if (ex != CLI_EXIT_OK)
    return ex;
  decomp_client_job *v = NULL;
  size_t n = 0;
  char *next = NULL;
  int rc = decomp_client_job_list(c, state, limit, cursor, &v, &n, &next);
  if (rc != DECOMP_OK) {
    ex = client_fail_exit(&o, c, rc);
  } else if (o.json) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
      json_array_append_new(arr, json_loads(v[i].json, 0, NULL));
    json_t *doc = json_pack("{s:o, s:o}", "jobs", arr, "next_cursor",
                            next ? json_string(next) : json_null());
    json_dumpf(doc, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    for (size_t i = 0; i < n; i++)
      status_line(stdout, &v[i]);
    if (next && !o.quiet)
      fprintf(stderr, "next: %s (decompctl jobs --cursor %s)\n", next, next);
  }
  decomp_client_job_list_free(v, n);
  decomp_client_string_free(next);
  decomp_client_free(c);
  return ex;
}

/* ---- fetch ----------------------------------------------------------------- */

static const char fetch_usage[] =
    "usage: decompctl fetch JOB [--out DIR] [--only NAME] [--parallel N]\n"
    "                       [--json] [--quiet] [--url URL]\n"
    "\n"
    "Fetch a succeeded job's artifacts (decomposed_weights.pth,\n"
    "decomposed_weights.safetensors, decompose_info.json, or a sharded\n"
    "output: model.safetensors.index.json and its shards) into the local\n"
    "cache, N at a time, verifying each one's SHA-256 and resuming an\n"
    "interrupted download, and copy them to DIR when given (only once all\n"
    "are verified; an index file last). Prints \"NAME PATH\" per file (PATH\n"
    "in DIR, or in the cache), or JSON with --json. With DECOMPD_OFFLINE=1\n"
    "it serves a job fetched before from the cache without the server.\n"
    "\n"
    "  --out DIR     copy the files there (made if missing)\n"
    "  --only NAME   fetch one artifact\n"
    "  --parallel N  transfers at once, 1 to 32 (default 4)\n";

int cmd_fetch(int argc, char **argv) {
  struct common o = {.tty = isatty(2)};
  decomp_client_fetch_options fo = {0};
  static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                       {"only", required_argument, NULL, 'O'},
                                       {"parallel", required_argument, NULL,
                                        'P'},
                                       COMMON_LONG_OPTS,
                                       {0, 0, 0, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (common_opt(&o, opt))
      continue;
    if (opt == 'o') {
      fo.dest_dir = optarg;
    } else if (opt == 'O') {
      fo.only = optarg;
    } else if (opt == 'P') {
      char *end;
      errno = 0;
      long v = strtol(optarg, &end, 10);
      if (errno || end == optarg || *end || v < 1 ||
          v > DECOMP_CLIENT_MAX_PARALLEL) {
        fprintf(stderr, "decompctl fetch: --parallel %s: give a number "
                "from 1 to %d\n", optarg, DECOMP_CLIENT_MAX_PARALLEL);
        return CLI_EXIT_USAGE;
      }
      fo.parallel = (int)v;
    } else if (opt == OPT_HELP) {
      printf("%s%s", fetch_usage, common_help);
      return CLI_EXIT_OK;
    } else {
      fprintf(stderr, "%s", fetch_usage);
      return CLI_EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "%s", fetch_usage);
    return CLI_EXIT_USAGE;
  }
  decomp_client *c = NULL;
  int ex = open_client(&o, &c);
  if (ex != CLI_EXIT_OK)
    return ex;
  cli_catch_signals();
  struct bar b = {&o, false};
  decomp_client_set_progress(c, on_transfer, &b);
  decomp_client_file *files = NULL;
  size_t n = 0;
  int rc = decomp_client_fetch_with(c, argv[optind], &fo, &files, &n);
  bar_end(&b);
  if (rc != DECOMP_OK) {
    ex = rc == DECOMP_ERR_CANCELLED && cli_interrupted
             ? (cli_error("interrupted; the partial downloads are kept and "
                          "the next fetch resumes them"),
                CLI_EXIT_INTERRUPTED)
             : client_fail_exit(&o, c, rc);
  } else if (o.json) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
      json_array_append_new(
          arr, json_pack("{s:s, s:s, s:s, s:I, s:b, s:I, s:I}", "name",
                         files[i].name, "path", files[i].path, "digest",
                         files[i].digest, "size", (json_int_t)files[i].size,
                         "from_cache", files[i].from_cache, "resumed_from",
                         (json_int_t)files[i].resumed_from, "downloaded",
                         (json_int_t)files[i].downloaded));
    json_t *doc = json_pack("{s:s, s:s, s:b, s:o}", "job", argv[optind],
                            "cache", decomp_client_cache_dir(c), "offline",
                            decomp_client_offline(c), "files", arr);
    json_dumpf(doc, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    for (size_t i = 0; i < n; i++) {
      printf("%s %s\n", files[i].name, files[i].path);
      if (!o.quiet && files[i].resumed_from > 0)
        fprintf(stderr, "%s: resumed from byte %lld, verified\n",
                files[i].name, (long long)files[i].resumed_from);
      else if (!o.quiet && files[i].from_cache)
        fprintf(stderr, "%s: from the cache, verified\n", files[i].name);
    }
  }
  decomp_client_file_list_free(files);
  decomp_client_free(c);
  return ex;
}
