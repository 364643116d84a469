/* fuzz_spec.c — libFuzzer target for the layer spec parser. Besides not
 * crashing, it checks that whatever parses gives canonical JSON that parses
 * again to the same canonical JSON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decomp/decomp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  decomp_ctx *ctx = decomp_ctx_new();
  if (!ctx)
    return 0;
  decomp_spec *s = NULL;
  if (decomp_spec_parse(ctx, (const char *)data, size, &s) == DECOMP_OK) {
    for (size_t i = 0; i < decomp_spec_count(s); i++) {
      const decomp_layer *l = decomp_spec_at(s, i);
      if (decomp_spec_find(s, l->name) != l)
        abort();
    }
    char *t = decomp_spec_to_json(s);
    if (t) {
      decomp_spec *s2 = NULL;
      if (decomp_spec_parse(ctx, t, strlen(t), &s2) != DECOMP_OK)
        abort();
      char *t2 = decomp_spec_to_json(s2);
      if (t2 && strcmp(t, t2) != 0)
        abort();
      decomp_free(t2);
      decomp_spec_free(s2);
    }
    decomp_free(t);
  } else if (s != NULL || decomp_errmsg(ctx)[0] == '\0') {
    abort(); /* a failure leaves *out alone and always says why */
  }
  decomp_spec_free(s);
  decomp_ctx_free(ctx);
  return 0;
}
