/* c_layouts.c — what the C compiler says about the parts of the C API that
 * python/decompd mirrors, as one JSON object on stdout: the error table
 * (expanded from decomp/errors.h's X-macro itself), enum values, the
 * #defines, and sizeof/offsetof of every field of the structs the ctypes
 * binding declares. test_c_layouts.py compares it with
 * python/decompd/_c_constants.py and _engine.py's ctypes structs.
 *
 * The field lists below are written by hand on purpose: they are a second,
 * independent reading of the header. A field added to a struct here but not
 * in the generated layout (or the reverse) fails the test by name; one
 * missing from both changes the struct's sizeof, which the test also
 * compares. */
#include <stddef.h>
#include <stdio.h>

#include "decomp/client.h"
#include "decomp/decomp.h"
#include "decomp/errors.h"

/* Strings in these headers hold no character that needs escaping in JSON;
 * a quote or backslash would need one, so it is refused here. */
static int json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) {
      fprintf(stderr, "c_layouts: string needs escaping: %s\n", s);
      return 1;
    }
    putchar(*s);
  }
  putchar('"');
  return 0;
}

#define FIELD(type, f)                                                         \
  printf("%s[\"%s\", %zu, %zu]", first ? "" : ", ", #f, offsetof(type, f),     \
         sizeof(((type *)0)->f));                                              \
  first = 0;

int main(void) {
  int bad = 0, first;

  printf("{\"errors\": [");
  first = 1;
#define X_(name, num, code, msg, http)                                         \
  printf("%s[%d, \"%s\", ", first ? "" : ", ", num, #name);                    \
  bad |= json_str(code);                                                       \
  printf(", ");                                                                \
  bad |= json_str(msg);                                                        \
  printf(", %d]", http);                                                       \
  first = 0;
  DECOMP_ERRORS(X_)
#undef X_
  printf("],\n");

  printf(" \"enums\": {\"LOG_ERROR\": %d, \"LOG_WARN\": %d, \"LOG_INFO\": %d, "
         "\"LOG_DEBUG\": %d,\n",
         DECOMP_LOG_ERROR, DECOMP_LOG_WARN, DECOMP_LOG_INFO, DECOMP_LOG_DEBUG);
  printf("  \"DTYPE_F32\": %d, \"DTYPE_F16\": %d, \"DTYPE_BF16\": %d, "
         "\"DTYPE_F64\": %d, \"DTYPE_I64\": %d, \"DTYPE_I32\": %d, "
         "\"DTYPE_I16\": %d, \"DTYPE_I8\": %d, \"DTYPE_U8\": %d, "
         "\"DTYPE_BOOL\": %d,\n",
         DECOMP_DTYPE_F32, DECOMP_DTYPE_F16, DECOMP_DTYPE_BF16,
         DECOMP_DTYPE_F64, DECOMP_DTYPE_I64, DECOMP_DTYPE_I32, DECOMP_DTYPE_I16,
         DECOMP_DTYPE_I8, DECOMP_DTYPE_U8, DECOMP_DTYPE_BOOL);
  printf("  \"FORMAT_UNKNOWN\": %d, \"FORMAT_PTH\": %d, "
         "\"FORMAT_SAFETENSORS\": %d, \"FORMAT_TORCHSCRIPT\": %d,\n",
         DECOMP_FORMAT_UNKNOWN, DECOMP_FORMAT_PTH, DECOMP_FORMAT_SAFETENSORS,
         DECOMP_FORMAT_TORCHSCRIPT);
  printf("  \"PHASE_SPECTRUM\": %d, \"PHASE_START\": %d, \"PHASE_DONE\": %d, "
         "\"PHASE_WORKING\": %d},\n",
         DECOMP_PHASE_SPECTRUM, DECOMP_PHASE_START, DECOMP_PHASE_DONE,
         DECOMP_PHASE_WORKING);

  printf(" \"defines\": {\"MAX_DIMS\": %d, \"ARTIFACT_WEIGHTS_PTH\": ",
         DECOMP_MAX_DIMS);
  bad |= json_str(DECOMP_ARTIFACT_WEIGHTS_PTH);
  printf(", \"ARTIFACT_WEIGHTS_SAFETENSORS\": ");
  bad |= json_str(DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS);
  printf(", \"ARTIFACT_INFO\": ");
  bad |= json_str(DECOMP_ARTIFACT_INFO);
  printf(", \"CLIENT_DEFAULT_URL\": ");
  bad |= json_str(DECOMP_CLIENT_DEFAULT_URL);
  printf("},\n");

  /* "STRUCT": [sizeof, [[field, offset, size], ...]] */
  printf(" \"structs\": {\"TENSOR\": [%zu, [", sizeof(decomp_tensor));
  first = 1;
  FIELD(decomp_tensor, name)
  FIELD(decomp_tensor, dtype)
  FIELD(decomp_tensor, ndim)
  FIELD(decomp_tensor, shape)
  FIELD(decomp_tensor, stride)
  FIELD(decomp_tensor, offset)
  FIELD(decomp_tensor, data)
  FIELD(decomp_tensor, storage)
  FIELD(decomp_tensor, storage_nbytes)
  printf("]],\n  \"PROGRESS\": [%zu, [", sizeof(decomp_progress));
  first = 1;
  FIELD(decomp_progress, layer)
  FIELD(decomp_progress, index)
  FIELD(decomp_progress, total)
  FIELD(decomp_progress, phase)
  FIELD(decomp_progress, rank)
  FIELD(decomp_progress, max_rank)
  FIELD(decomp_progress, seconds)
  FIELD(decomp_progress, skip_reason)
  FIELD(decomp_progress, fraction)
  printf("]],\n  \"OPTIONS\": [%zu, [", sizeof(decomp_options));
  first = 1;
  FIELD(decomp_options, progress)
  FIELD(decomp_options, progress_user)
  FIELD(decomp_options, source_digest)
  FIELD(decomp_options, source_format)
  FIELD(decomp_options, record_spectra)
  FIELD(decomp_options, threads)
  FIELD(decomp_options, calibration)
  FIELD(decomp_options, calibration_digest)
  FIELD(decomp_options, profile)
  FIELD(decomp_options, profile_digest)
  printf("]]}}\n");
  return bad;
}
