/* cli.h — what decompctl's verbs share: exit codes, output helpers. */
#ifndef DECOMP_CLI_H
#define DECOMP_CLI_H

#include <stdbool.h>
#include <stddef.h>

/* Exit codes, documented in `decompctl --help` and the README. */
enum cli_exit {
  CLI_EXIT_OK = 0,
  CLI_EXIT_FAILURE = 1,   /* anything not below */
  CLI_EXIT_USAGE = 2,     /* bad command line */
  CLI_EXIT_INPUT = 3,     /* bad weights, spec, policy or info file */
  CLI_EXIT_OUTPUT = 4,    /* cannot write the output (I/O, disk full) */
  CLI_EXIT_ENGINE = 5,    /* the decomposition itself failed (SVD) */
  CLI_EXIT_INTERRUPTED = 130, /* SIGINT: stopped at a layer boundary */
};

/* The exit code for a decomp error code. */
int cli_exit_for(int decomp_err);

/* Print "decompctl: <fmt>\n" to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Read a whole (small) file into a NUL-terminated buffer; NULL + errno on
 * failure. */
char *cli_read_file(const char *path, size_t *out_len);

/* SHA-256 of a file as "sha256:<64 hex>" into out (72 bytes); false on
 * I/O failure. */
bool cli_file_digest(const char *path, char out[72]);

/* Set by SIGINT/SIGTERM handlers installed by cli_catch_signals(). */
extern volatile int cli_interrupted;
void cli_catch_signals(void);

int cmd_decompose(int argc, char **argv);

#endif
