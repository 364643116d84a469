/* engine.c — see engine.h. */
#include <stddef.h>

#include "decomp/decomp.h"
#include "engine.h"

typedef void (*fnptr)(void);

struct part {
  int part;
  const char *name;
  fnptr fn;
};

const char *engine_missing(int parts) {
  const struct part all[] = {
      {ENGINE_READERS, "decomp_weights_open", (fnptr)decomp_weights_open},
      {ENGINE_SPEC, "decomp_spec_parse", (fnptr)decomp_spec_parse},
      {ENGINE_SPEC, "decomp_spec_to_json", (fnptr)decomp_spec_to_json},
      {ENGINE_SPEC, "decomp_spec_check", (fnptr)decomp_spec_check},
      {ENGINE_SPEC, "decomp_spec_free", (fnptr)decomp_spec_free},
      {ENGINE_POLICY, "decomp_policy_parse", (fnptr)decomp_policy_parse},
      {ENGINE_POLICY, "decomp_policy_to_json", (fnptr)decomp_policy_to_json},
      {ENGINE_POLICY, "decomp_policy_free", (fnptr)decomp_policy_free},
      {ENGINE_DECOMPOSE, "decomp_decompose", (fnptr)decomp_decompose},
      {ENGINE_DECOMPOSE, "decomp_weights_save", (fnptr)decomp_weights_save},
      {ENGINE_DECOMPOSE, "decomp_result_info", (fnptr)decomp_result_info},
      {ENGINE_DECOMPOSE, "decomp_result_weights", (fnptr)decomp_result_weights},
      {ENGINE_DECOMPOSE, "decomp_result_free", (fnptr)decomp_result_free},
  };
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if ((all[i].part & parts) && all[i].fn == NULL)
      return all[i].name;
  return NULL;
}
