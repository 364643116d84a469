/* fuzz_shard_index.c — libFuzzer target for the sharded checkpoint index
 * (model.safetensors.index.json). Besides not crashing, whatever parses
 * must name only plain shard file names, and opening it with no shard
 * given must fail saying which shard is missing, never touching a file. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  decomp_ctx *ctx = decomp_ctx_new();
  if (!ctx)
    return 0;
  json_t *root = NULL;
  int64_t total = 0;
  if (core_shard_index_parse(ctx, (const char *)data, size, &root, &total) ==
      DECOMP_OK) {
    const char *k, *why;
    json_t *v;
    json_object_foreach(json_object_get(root, "weight_map"), k, v) {
      const char *name = json_string_value(v);
      if (!name || strchr(name, '/') || strstr(name, "..") ||
          !core_shard_name_ok(name, &why))
        abort(); /* the parser let a path through */
    }
    json_decref(root);
    decomp_weights *w = NULL;
    int rc = decomp_weights_open_sharded(ctx, (const char *)data, size, 0,
                                         NULL, NULL, &w);
    if (rc != DECOMP_ERR_BAD_SHARD_INDEX || w ||
        !strstr(decomp_errmsg(ctx), "missing"))
      abort();
  }
  decomp_ctx_free(ctx);
  return 0;
}
