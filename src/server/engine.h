/* engine.h — whether this build's libdecomp has each part the daemon calls.
 *
 * The engine (src/core) lands piece by piece; the daemon links against the
 * header's contract and asks engine_missing() before using a part, so a
 * half-built engine gives a clear 503 `unavailable` instead of a link
 * failure. Once every part is in the library this always answers NULL. */
#ifndef DECOMPD_SERVER_ENGINE_H
#define DECOMPD_SERVER_ENGINE_H

#include "decomp/decomp.h"

/* Weak references in every file that includes this one (a weak reference
 * must be weak in each translation unit), so the daemon links while
 * src/core is still being written; a missing function reads as NULL. */
#pragma weak decomp_weights_open
#pragma weak decomp_spec_parse
#pragma weak decomp_spec_to_json
#pragma weak decomp_spec_check
#pragma weak decomp_spec_free
#pragma weak decomp_policy_parse
#pragma weak decomp_policy_to_json
#pragma weak decomp_policy_free
#pragma weak decomp_policy_name
#pragma weak decomp_decompose
#pragma weak decomp_weights_save
#pragma weak decomp_result_info
#pragma weak decomp_result_weights
#pragma weak decomp_result_free


enum engine_part {
  ENGINE_READERS = 1,  /* decomp_weights_open */
  ENGINE_SPEC = 2,     /* decomp_spec_parse, _to_json, _check */
  ENGINE_POLICY = 4,   /* decomp_policy_parse, _to_json */
  ENGINE_DECOMPOSE = 8 /* decomp_decompose, decomp_weights_save */
};

/* The first missing function among `parts` (a mask), or NULL. */
const char *engine_missing(int parts);

#endif
