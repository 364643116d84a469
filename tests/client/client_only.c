/* client_only.c — a program that links libdecompclient and nothing of the
 * engine (as `pkg-config --libs libdecompclient` gives it) can name and
 * describe every error code: decomp/errors.h's functions come from the
 * client library itself. Exits non-zero on a wrong answer. */
#include <stdio.h>
#include <string.h>

#include "decomp/client.h"

int main(void) {
  int bad = 0;
#define X_(name, num, code, msg, http)                                         \
  if (strcmp(decomp_strerror(num), msg) != 0 ||                                \
      strcmp(decomp_error_code(num), code) != 0 ||                             \
      decomp_error_http_status(num) != http ||                                 \
      decomp_error_from_code(code) != num) {                                   \
    fprintf(stderr, "code %d (%s): wrong answer\n", num, code);                \
    bad = 1;                                                                   \
  }
  DECOMP_ERRORS(X_)
#undef X_
  printf("%s: %s\n", decomp_error_code(DECOMP_ERR_NOT_FOUND),
         decomp_strerror(DECOMP_ERR_NOT_FOUND));
  printf("job state: %s\n", decomp_job_state_name(DECOMP_JOB_SUCCEEDED));
  return bad;
}
