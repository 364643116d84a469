/* ts_safetensors.h — a minimal safetensors writer for the TorchScript
 * intake: decompd-ts-reader hands its tensors to the parent process in this
 * format, and the tests' driver writes what the C API read back the same
 * way. (The engine's own writer, decomp_weights_save, lives in libdecomp;
 * the reader does not link libdecomp.) */
#ifndef DECOMP_TS_SAFETENSORS_H
#define DECOMP_TS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "decomp/decomp.h"

typedef struct ts_st_entry {
  const char *name;
  decomp_dtype dtype;
  int ndim;
  const int64_t *shape;
  size_t nbytes; /* numel × item size, checked by the writer */
} ts_st_entry;

/* Gives the row-major bytes of entry i (nbytes long). Returns 0, or a
 * non-zero code that ts_st_write passes back (after writing its message). */
typedef int (*ts_st_data_fn)(void *user, size_t i, const void **data, char *err,
                             size_t errlen);

enum {
  TS_ST_OK = 0,
  TS_ST_ERR_IO = -1,
  TS_ST_ERR_INVALID = -2,
  TS_ST_ERR_NOMEM = -3
};

/* Write `n` entries to `fd` (open for writing, at offset 0; not closed):
 * an 8-byte little-endian header length, the JSON header (entries in order,
 * data offsets ascending in that order, padded with spaces to 8 bytes),
 * then the data. `what` names the file in messages. Returns TS_ST_OK, a
 * TS_ST_ERR_* or the data callback's code, with a message in err. */
int ts_st_write(int fd, const char *what, const ts_st_entry *e, size_t n,
                ts_st_data_fn data, void *user, char *err, size_t errlen);

/* The safetensors dtype name ("F32", "BF16", "I64", "BOOL", …) or NULL. */
const char *ts_st_dtype_name(decomp_dtype dt);
/* Bytes per element, 0 for an invalid dtype. */
size_t ts_st_dtype_size(decomp_dtype dt);

#endif
