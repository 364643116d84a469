/* fuzz_policy.c — libFuzzer target for the rank policy parser: whatever
 * parses gives canonical JSON that parses again to the same text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decomp/decomp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  decomp_ctx *ctx = decomp_ctx_new();
  if (!text || !ctx)
    goto out;
  memcpy(text, data, size);
  text[size] = '\0';
  decomp_policy *p = NULL;
  if (decomp_policy_parse(ctx, text, &p) == DECOMP_OK) {
    char *t = decomp_policy_to_json(p);
    if (t) {
      decomp_policy *q = NULL;
      if (decomp_policy_parse(ctx, t, &q) != DECOMP_OK)
        abort();
      char *t2 = decomp_policy_to_json(q);
      if (t2 && strcmp(t, t2) != 0)
        abort();
      decomp_free(t2);
      decomp_policy_free(q);
    }
    decomp_free(t);
    decomp_policy_free(p);
  } else if (p != NULL || decomp_errmsg(ctx)[0] == '\0') {
    abort();
  }
out:
  decomp_ctx_free(ctx);
  free(text);
  return 0;
}
