/* main.c — decompctl's entry point: verb dispatch, --help, exit codes and
 * the helpers the verbs share. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "decomp/decomp.h"

static const char usage[] =
    "usage: decompctl <verb> [options]\n"
    "\n"
    "Low-rank decomposition of convolutional networks (decompd " DECOMP_VERSION
    ").\n"
    "\n"
    "Verbs:\n"
    "  decompose   decompose a weight file (or a sharded safetensors\n"
    "              checkpoint) locally with the engine\n"
    "              (decompctl decompose --help for its options)\n"
    "\n"
    "Service verbs (a decompd server: DECOMPD_URL, default\n"
    "http://127.0.0.1:8080; token DECOMPD_TOKEN; each has --help and --json):\n"
    "  upload      upload a weight file or a sharded safetensors checkpoint\n"
    "              (a folder: shards the server has are skipped, partial\n"
    "              ones resumed), and attach a layer spec, a calibration or\n"
    "              a latency profile to it; prints the model id\n"
    "  submit      submit a job (model or file, spec, policy, calibration,\n"
    "              profile); prints the job id\n"
    "  status      print a job's state and progress\n"
    "  wait        wait for a job to finish, with its progress\n"
    "  fetch       fetch a job's artifacts, --parallel N at a time (default\n"
    "              4), into the verified local cache (DECOMPD_CACHE, default\n"
    "              ~/.cache/decompd; resumes; offline with DECOMPD_OFFLINE=1)\n"
    "              and optionally into a folder\n"
    "  jobs        list jobs\n"
    "  cancel      cancel a job\n"
    "  retry       run a failed or cancelled job again\n"
    "\n"
    "Exit codes:\n"
    "  0    success\n"
    "  1    other failure\n"
    "  2    bad command line\n"
    "  3    bad input: weights, layer spec, policy, calibration, profile\n"
    "       or info file; a strict budget out of reach\n"
    "  4    cannot write the output (I/O error, disk full, also the cache)\n"
    "  5    the decomposition failed (SVD did not converge)\n"
    "  6    cannot connect to the server, or the connection broke\n"
    "  7    not authorized: 401 (no or unknown token) or 403 (role too low)\n"
    "  8    not found: no such model, job or artifact (or not in the cache\n"
    "       in offline mode)\n"
    "  9    the job failed or was cancelled (wait)\n"
    "  10   downloaded data failed its SHA-256 digest\n"
    "  11   wait --timeout ran out\n"
    "  130  interrupted (SIGINT/SIGTERM); nothing is left behind\n";

volatile int cli_interrupted;

static void on_signal(int sig) {
  (void)sig;
  cli_interrupted = 1;
}

void cli_catch_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

void cli_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("decompctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

int cli_exit_for(int err) {
  switch (err) {
  case DECOMP_OK:
    return CLI_EXIT_OK;
  case DECOMP_ERR_IO:
  case DECOMP_ERR_DISK_FULL:
    return CLI_EXIT_OUTPUT;
  case DECOMP_ERR_SVD_FAILED:
  case DECOMP_ERR_INTERNAL:
    return CLI_EXIT_ENGINE;
  case DECOMP_ERR_CANCELLED:
    return CLI_EXIT_INTERRUPTED;
  case DECOMP_ERR_NOMEM:
    return CLI_EXIT_FAILURE;
  default:
    return decomp_error_http_status(err) / 100 == 4 ? CLI_EXIT_INPUT
                                                    : CLI_EXIT_FAILURE;
  }
}

char *cli_read_file(const char *path, size_t *out_len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap + 1);
  while (buf) {
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (len < cap)
      break;
    char *nb = realloc(buf, 2 * cap + 1);
    if (!nb) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = nb;
    cap *= 2;
  }
  int bad = ferror(f);
  fclose(f);
  if (!buf || bad) {
    free(buf);
    errno = bad ? EIO : ENOMEM;
    return NULL;
  }
  buf[len] = '\0';
  if (out_len)
    *out_len = len;
  return buf;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return CLI_EXIT_USAGE;
  }
  const char *verb = argv[1];
  if (!strcmp(verb, "--help") || !strcmp(verb, "-h") || !strcmp(verb, "help")) {
    fputs(usage, stdout);
    return CLI_EXIT_OK;
  }
  if (!strcmp(verb, "--version")) {
    puts("decompctl " DECOMP_VERSION);
    return CLI_EXIT_OK;
  }
  if (!strcmp(verb, "decompose"))
    return cmd_decompose(argc - 1, argv + 1);
  static const struct {
    const char *name;
    int (*fn)(int, char **);
  } remote[] = {{"upload", cmd_upload}, {"submit", cmd_submit},
                {"status", cmd_status}, {"wait", cmd_wait},
                {"fetch", cmd_fetch},   {"jobs", cmd_jobs},
                {"cancel", cmd_cancel}, {"retry", cmd_retry}};
  for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++)
    if (!strcmp(verb, remote[i].name))
      return remote[i].fn(argc - 1, argv + 1);
  cli_error("unknown verb '%s' (decompctl --help lists them)", verb);
  return CLI_EXIT_USAGE;
}
