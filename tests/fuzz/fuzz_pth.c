/* fuzz_pth.c — libFuzzer target for the pth reader (through
 * decomp_weights_open_memory, which also routes to the other readers), with
 * a write-and-read-back check of whatever parses. Seeds: corpus/pth/. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_one(data, size);
}
