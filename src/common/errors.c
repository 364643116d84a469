/* errors.c — the error tables generated from the one X-macro list in
 * decomp/errors.h: decomp_strerror(), the snake_case code names, their HTTP
 * statuses and the reverse lookup.
 *
 * This is the whole of libdecomp_common, the static (PIC) unit below every
 * subsystem: the engine links it whole and exports these functions (its
 * public ABI), libdecompclient links it and exports them too (its header
 * promises codes from decomp/errors.h, and a client-only program must not
 * need the engine, OpenBLAS or LAPACK to print one), and the store links it
 * for the `code` strings it records. Both shared libraries compile the same
 * table, so whichever copy the dynamic linker binds gives the same answer. */
#include <string.h>

#include "decomp/errors.h"

const char *decomp_strerror(int err) {
  switch (err) {
#define X_(name, num, code, msg, http)                                         \
  case num:                                                                    \
    return msg;
    DECOMP_ERRORS(X_)
#undef X_
  }
  return "unknown error";
}

const char *decomp_error_code(int err) {
  switch (err) {
#define X_(name, num, code, msg, http)                                         \
  case num:                                                                    \
    return code;
    DECOMP_ERRORS(X_)
#undef X_
  }
  return "unknown";
}

int decomp_error_http_status(int err) {
  switch (err) {
#define X_(name, num, code, msg, http)                                         \
  case num:                                                                    \
    return http;
    DECOMP_ERRORS(X_)
#undef X_
  }
  return 500;
}

int decomp_error_from_code(const char *code) {
#define X_(name, num, c, msg, http)                                            \
  if (code && strcmp(code, c) == 0)                                            \
    return num;
  DECOMP_ERRORS(X_)
#undef X_
  return -1;
}
