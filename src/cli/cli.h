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
  /* service verbs (cmd_remote.c) */
  CLI_EXIT_CONNECT = 6,   /* cannot reach the server, or the connection broke */
  CLI_EXIT_AUTH = 7,      /* 401/403: token missing, unknown or too weak */
  CLI_EXIT_NOT_FOUND = 8, /* no such model/job/artifact; offline cache miss */
  CLI_EXIT_JOB_FAILED = 9, /* the job failed or was cancelled */
  CLI_EXIT_DIGEST = 10,   /* downloaded data failed its SHA-256 */
  CLI_EXIT_TIMEOUT = 11,  /* wait --timeout ran out */
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

/* The digest decompose records for its input: the file's, or for a sharded
 * checkpoint (a folder or its index .json) the SHA-256 of its manifest,
 * lines "<sha256:…> <name>\n" for the index file and then every shard by
 * name. False on I/O failure or an index that cannot be read (errno may be
 * 0: the engine's open says what is wrong). */
bool cli_weights_digest(const char *path, char out[72]);

/* Set by SIGINT/SIGTERM handlers installed by cli_catch_signals(). */
extern volatile int cli_interrupted;
void cli_catch_signals(void);

int cmd_decompose(int argc, char **argv);
int cmd_upload(int argc, char **argv);
int cmd_submit(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_wait(int argc, char **argv);
int cmd_fetch(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_retry(int argc, char **argv);

#endif
