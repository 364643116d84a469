/* ts_shim.h — the C face of the libtorch shim (ts_shim.cpp): load a
 * torch.jit.save archive and read its layer structure and tensors.
 *
 * Only decompd-ts-reader links this, and it runs in a sandboxed child
 * process (ts_sandbox.c): loading an archive runs the archive's own
 * TorchScript code (__setstate__ methods), so nothing here is safe to call in
 * a process that must survive a hostile archive.
 *
 * Everything returned is owned by the ts_model and valid until
 * ts_model_free(). */
#ifndef DECOMP_TS_SHIM_H
#define DECOMP_TS_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "decomp/decomp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Result codes of the shim; the reader turns them into exit statuses. */
enum ts_status {
  TS_OK = 0,
  TS_ERR_LOAD = 1, /* torch::jit::load failed: corrupt, not TorchScript */
  TS_ERR_UNSUPPORTED = 2, /* loaded, but holds something decompd cannot take */
  TS_ERR_NOMEM = 3,       /* an allocation failed (the memory limit) */
  TS_ERR_INTERNAL = 4,
};

typedef struct ts_model ts_model;

/* One module holding parameters of its own, as the Python package's
 * layer_spec() lists it: Conv2d layers with every field, others with their
 * type only. */
typedef struct ts_layer {
  const char *name; /* "layer1.0.conv1"; "" for the root module */
  const char *type; /* "Conv2d", or the module's class name */
  bool is_conv;     /* type is "Conv2d" and the fields below are set */
  bool is_linear;   /* type is "Linear": in_channels/out_channels hold its
                       in_features/out_features, and bias is set */
  int64_t in_channels, out_channels;
  int64_t kernel_size[2], stride[2], padding[2], dilation[2];
  decomp_padding_kind padding_kind;
  int64_t groups;
  bool bias;
  const char *padding_mode; /* "zeros", "reflect", "replicate", "circular" */
  const char *source; /* where the fields came from: "attributes" (scripted)
                         or "graph" (traced: the forward graph's call) */
} ts_layer;

/* One tensor of the state dict, contiguous on the CPU. */
typedef struct ts_tensor {
  const char *name; /* state-dict key: "layer1.0.bn1.running_mean" */
  decomp_dtype dtype;
  int ndim;
  int64_t shape[DECOMP_MAX_DIMS];
  size_t nbytes;
} ts_tensor;

/* Load `path` on the CPU and read its structure. On failure returns a
 * ts_status and writes a one-line message into err[errlen]. */
int ts_model_load(const char *path, ts_model **out, char *err, size_t errlen);

size_t ts_model_layer_count(const ts_model *m);
const ts_layer *ts_model_layer(const ts_model *m, size_t i);

/* Tensors in the order module.state_dict() gives them. */
size_t ts_model_tensor_count(const ts_model *m);
const ts_tensor *ts_model_tensor(const ts_model *m, size_t i);

/* The bytes of tensor i (row-major, nbytes long). A non-contiguous tensor is
 * copied; the pointer stays valid until the next call or ts_model_free.
 * Returns a ts_status (TS_ERR_NOMEM when the copy cannot be made). */
int ts_model_tensor_data(ts_model *m, size_t i, const void **data, char *err,
                         size_t errlen);

/* Notes worth telling the user (a conv whose structure could not be read,
 * a 'same' padding read back as numbers); may be none. */
size_t ts_model_note_count(const ts_model *m);
const char *ts_model_note(const ts_model *m, size_t i);

void ts_model_free(ts_model *m);

#ifdef __cplusplus
}
#endif
#endif
