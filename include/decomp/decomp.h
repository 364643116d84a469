/* decomp/decomp.h — libdecomp, the decomposition engine of decompd.
 *
 * This header is the engine's documentation and its C ABI. Every path of
 * decompd (the daemon's workers, decompctl, the Python package through ctypes)
 * decomposes through these functions, so a layer decomposed either way gives
 * the same bytes.
 *
 * The flow:
 *
 *   decomp_ctx *ctx = decomp_ctx_new();
 *   decomp_weights *w;  decomp_spec *spec;  decomp_policy *pol;
 *   decomp_weights_open(ctx, "model.pth", &w);          // .pth or safetensors
 *   decomp_spec_parse(ctx, json, len, &spec);           // layer structure
 *   decomp_policy_parse(ctx, "budget", &pol);           // or a JSON object
 *   decomp_result *r;
 *   decomp_decompose(ctx, w, spec, pol, NULL, &r);
 *   decomp_weights_save(ctx, decomp_result_weights(r), "out.pth", DECOMP_FORMAT_PTH);
 *   puts(decomp_result_info(r));                        // decompose_info.json
 *
 * Conventions: fallible functions return a decomp_error code (0 on success)
 * and pass results through `out` parameters, which are left untouched on
 * failure. The context keeps a detailed message of the last failure
 * (decomp_errmsg()), saying what and where ("data.pkl offset 812: global
 * os.system is not allowed"). Inputs are borrowed unless a comment says
 * "takes ownership". Every _free accepts NULL. A context is not thread-safe;
 * use one per thread. Objects made through one context may be read from any
 * thread once made.
 */
#ifndef DECOMP_DECOMP_H
#define DECOMP_DECOMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DECOMP_VERSION "0.1.0"

/* ------------------------------------------------------------------------ */
/* Context: errors and logging                                               */
/* ------------------------------------------------------------------------ */

typedef struct decomp_ctx decomp_ctx;

enum decomp_log_level {
  DECOMP_LOG_ERROR = 0,
  DECOMP_LOG_WARN = 1,
  DECOMP_LOG_INFO = 2,
  DECOMP_LOG_DEBUG = 3,
};

/* A log handler: `topic` is the subsystem ("pth", "svd", "policy"), `msg` one
 * line without a newline. Libraries never print; they call this. */
typedef void (*decomp_log_fn)(void *user, int level, const char *topic,
                              const char *msg);

/* A new context, or NULL when out of memory. */
decomp_ctx *decomp_ctx_new(void);
void decomp_ctx_free(decomp_ctx *ctx);

/* Install a log handler; messages above `max_level` are never formatted. */
void decomp_ctx_set_log(decomp_ctx *ctx, decomp_log_fn fn, void *user,
                        int max_level);

/* WORKING progress events of a long layer come at most every `seconds`
 * (default 0.5; the first one that far into the layer), so that a caller
 * can show progress and cancel inside a layer; 0 reports every step. */
void decomp_ctx_set_progress_interval(decomp_ctx *ctx, double seconds);

/* The detailed message of the last failure on `ctx` ("" when none). Valid
 * until the next call on `ctx`. */
const char *decomp_errmsg(const decomp_ctx *ctx);

/* The code of the last failure on `ctx` (DECOMP_OK when none). */
int decomp_errcode(const decomp_ctx *ctx);

/* For code built on the engine (the TorchScript intake, plugins): record a
 * failure on `ctx` the way the engine does, so decomp_errmsg/decomp_errcode
 * report it, and return `err`. */
int decomp_ctx_fail(decomp_ctx *ctx, int err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Forget the last failure on `ctx`. */
void decomp_ctx_clear(decomp_ctx *ctx);

/* Free memory that the library returned as `char *` (JSON texts). */
void decomp_free(void *p);

/* ------------------------------------------------------------------------ */
/* Tensors and weight sets                                                   */
/* ------------------------------------------------------------------------ */

typedef enum decomp_dtype {
  DECOMP_DTYPE_F32 = 0,
  DECOMP_DTYPE_F16 = 1,
  DECOMP_DTYPE_BF16 = 2,
  DECOMP_DTYPE_F64 = 3,
  DECOMP_DTYPE_I64 = 4,
  DECOMP_DTYPE_I32 = 5,
  DECOMP_DTYPE_I16 = 6,
  DECOMP_DTYPE_I8 = 7,
  DECOMP_DTYPE_U8 = 8,
  DECOMP_DTYPE_BOOL = 9,
} decomp_dtype;
#define DECOMP_DTYPE_COUNT 10

/* Bytes per element (0 for an invalid dtype). */
size_t decomp_dtype_size(decomp_dtype dt);
/* The safetensors name ("F32", "BF16", "I64", "BOOL", …). */
const char *decomp_dtype_name(decomp_dtype dt);
/* Whether the dtype is a floating-point type (decomposable). */
bool decomp_dtype_is_float(decomp_dtype dt);

#define DECOMP_MAX_DIMS 8

/* One named tensor. `data` points at the storage element with index
 * `offset` (so element [i0, i1, …] is at data + Σ ik·stride[k] elements);
 * `storage` is the start of the whole storage it lives in and
 * `storage_nbytes` that storage's size, so that tensors sharing a storage can
 * be written back sharing it. Strides are in elements and never negative. */
typedef struct decomp_tensor {
  const char *name;
  decomp_dtype dtype;
  int ndim;
  int64_t shape[DECOMP_MAX_DIMS];
  int64_t stride[DECOMP_MAX_DIMS];
  int64_t offset;          /* element offset of `data` in `storage` */
  const void *data;        /* first element */
  const void *storage;     /* storage start */
  size_t storage_nbytes;   /* bytes of the storage */
} decomp_tensor;

/* Number of elements (product of the shape; 1 for a scalar). */
int64_t decomp_tensor_numel(const decomp_tensor *t);
/* Whether the tensor is laid out contiguously in row-major order. */
bool decomp_tensor_is_contiguous(const decomp_tensor *t);

typedef enum decomp_format {
  DECOMP_FORMAT_UNKNOWN = 0,
  DECOMP_FORMAT_PTH = 1,          /* torch.save zip archive */
  DECOMP_FORMAT_SAFETENSORS = 2,
  DECOMP_FORMAT_TORCHSCRIPT = 3,  /* torch.jit.save archive */
} decomp_format;

/* "pth", "safetensors", "torchscript" or "unknown". */
const char *decomp_format_name(decomp_format f);
/* The format named `name`, or DECOMP_FORMAT_UNKNOWN. */
decomp_format decomp_format_from_name(const char *name);

/* An ordered set of named tensors: a state dict. Tensors read from a file
 * are mapped, not copied; the set keeps the mapping alive until freed. */
typedef struct decomp_weights decomp_weights;

/* Which format `buf` holds, judged from its first bytes (and, for zips, from
 * the entry names): PTH, SAFETENSORS, TORCHSCRIPT or UNKNOWN. */
decomp_format decomp_detect_format(const void *buf, size_t len);

/* Read a weight file (format found from its content). The file is mapped
 * read-only; nothing in it is executed; every size and offset is checked.
 * A TorchScript archive fails with DECOMP_ERR_TORCHSCRIPT.
 *
 * `path` may also be a sharded safetensors checkpoint as the Hugging Face
 * tools write it: a folder holding model.safetensors.index.json, or an
 * index file (a name ending in ".json"). The shards are looked up by their
 * plain names in the index's folder, and a file there that looks like a
 * shard (NAME-…-of-….safetensors) but that the index does not name is an
 * error; see decomp_weights_open_sharded for the checks. */
int decomp_weights_open(decomp_ctx *ctx, const char *path,
                        decomp_weights **out);

/* Read a sharded safetensors checkpoint from its index document (the text
 * of model.safetensors.index.json: {"metadata": {"total_size": N},
 * "weight_map": {tensor: shard name}}) and the `nshards` shard files it
 * names, shard names[i] being at paths[i] (as a service keeps each shard as
 * its own blob). Every shard is mapped and checked as a safetensors file
 * (a defect keeps that reader's code, the message starts with the shard's
 * name). The index is checked, DECOMP_ERR_BAD_SHARD_INDEX naming the tensor
 * and the shard: shard names are plain file names (no '/', no "..", ending
 * in ".safetensors"; never used as a path); every shard the map names is
 * given and every one given is named; every tensor is in exactly one shard,
 * the one the map says, and every mapped tensor is there; total_size, when
 * given, equals the tensors' bytes. The set holds the shards' tensors, shard
 * by shard in the order the map first names them, each in its file's order,
 * all mapped; __metadata__ is the shards' when they all carry the same. */
int decomp_weights_open_sharded(decomp_ctx *ctx, const char *index_json,
                                size_t len, size_t nshards,
                                const char *const *names,
                                const char *const *paths,
                                decomp_weights **out);

/* How many shards the set was read from: 0 for a single file or a built
 * set. */
size_t decomp_weights_shard_count(const decomp_weights *w);

/* Same as decomp_weights_open on a buffer the caller keeps alive and
 * unchanged for the life of the returned set. */
int decomp_weights_open_memory(decomp_ctx *ctx, const void *buf, size_t len,
                               decomp_weights **out);

/* An empty set, to be filled with decomp_weights_add (for callers that hold
 * their tensors in memory, such as the Python package). */
int decomp_weights_new(decomp_ctx *ctx, decomp_weights **out);

/* Append a tensor. The name, shape and strides are copied; the data is
 * borrowed and must stay valid and unchanged while the set (and any result
 * made from it) lives. `t->storage`/`storage_nbytes` may be NULL/0, in which
 * case the tensor's own extent is used. Fails on a duplicate name, a bad
 * dtype or shape, or an extent overflow. */
int decomp_weights_add(decomp_weights *w, const decomp_tensor *t);

/* Same, but the set takes ownership of `buffer` (released with free(), also
 * on failure); `t->data` must point into it. */
int decomp_weights_add_owned(decomp_weights *w, const decomp_tensor *t,
                             void *buffer);

size_t decomp_weights_count(const decomp_weights *w);
/* The i-th tensor in file order; borrowed, valid while `w` lives. */
const decomp_tensor *decomp_weights_at(const decomp_weights *w, size_t i);
/* The tensor named `name`, or NULL. */
const decomp_tensor *decomp_weights_find(const decomp_weights *w,
                                         const char *name);
/* The format the set was read from (UNKNOWN for built sets). */
decomp_format decomp_weights_format(const decomp_weights *w);
/* Say which format the set came from (a reader built on the engine, such as
 * the TorchScript intake, marks its sets; the info file records it). */
void decomp_weights_set_format(decomp_weights *w, decomp_format f);

/* The state dict's metadata as a JSON object text, or NULL when it has none:
 * for .pth the `_metadata` attribute ({"": {"version": 1}, "conv1": {…}}),
 * for safetensors the `__metadata__` map of strings. Borrowed. */
const char *decomp_weights_metadata(const decomp_weights *w);
/* Replace the metadata (a JSON object text; NULL to clear). */
int decomp_weights_set_metadata(decomp_weights *w, const char *json);

/* Write the set to `path` as a .pth that torch.load(weights_only=True)
 * reads back as an OrderedDict with the same keys, order, dtypes, shapes and
 * values (and `_metadata`), or as safetensors. Written to a temporary file in
 * the same folder, fsynced and renamed, so `path` is either the whole new
 * file or untouched. */
int decomp_weights_save(decomp_ctx *ctx, const decomp_weights *w,
                        const char *path, decomp_format fmt);

void decomp_weights_free(decomp_weights *w);

/* ------------------------------------------------------------------------ */
/* Layer spec                                                                */
/* ------------------------------------------------------------------------ */

typedef enum decomp_padding_mode {
  DECOMP_PAD_ZEROS = 0,
  DECOMP_PAD_REFLECT = 1,
  DECOMP_PAD_REPLICATE = 2,
  DECOMP_PAD_CIRCULAR = 3,
} decomp_padding_mode;

/* "zeros", "reflect", "replicate", "circular". */
const char *decomp_padding_mode_name(decomp_padding_mode m);

typedef enum decomp_padding_kind {
  DECOMP_PADDING_EXPLICIT = 0, /* numbers in `padding` */
  DECOMP_PADDING_SAME = 1,     /* padding='same' (stride 1 only) */
  DECOMP_PADDING_VALID = 2,    /* padding='valid' (= 0, 0) */
} decomp_padding_kind;

/* One layer of the model as the layer spec gives it. For a "Linear" layer
 * in_channels/out_channels hold in_features/out_features, bias its bias,
 * and the conv fields are a 1x1 conv's (kernel, stride, dilation 1,
 * padding 0, groups 1). For layers whose `type` is neither "Conv2d" nor
 * "Linear" only `name` and `type` are meaningful. */
typedef struct decomp_layer {
  const char *name;        /* module name: "layer1.0.conv1" */
  const char *type;        /* "Conv2d", or the module's class name */
  int64_t in_channels, out_channels;
  int64_t kernel_size[2];  /* kh, kw */
  int64_t stride[2];
  int64_t padding[2];      /* meaningful when padding_kind is EXPLICIT */
  decomp_padding_kind padding_kind;
  int64_t dilation[2];
  int64_t groups;
  bool bias;
  decomp_padding_mode padding_mode;
  int64_t input_size[2];   /* H, W of the layer's input; 0, 0 if unknown */
} decomp_layer;

typedef struct decomp_spec decomp_spec;

/* Parse a layer spec: {"layers": [{"name": …, "type": "Conv2d", …}, …]} or a
 * bare list of layer objects, with DECOMP's fields (in_channels,
 * out_channels, kernel_size, stride, padding, dilation, groups, bias,
 * padding_mode, optional input_size; ints or [h, w] pairs; padding may be
 * "same" or "valid"; a "Linear" has in_features, out_features and bias).
 * Every field is checked (positive sizes, channels divisible by groups, a
 * known padding mode, no duplicate names) and an error names the layer and
 * the field. */
int decomp_spec_parse(decomp_ctx *ctx, const char *json, size_t len,
                      decomp_spec **out);

/* A new empty spec, to be filled with decomp_spec_add. */
int decomp_spec_new(decomp_ctx *ctx, decomp_spec **out);
/* Append a copy of `layer` (strings copied), validated as by parse. */
int decomp_spec_add(decomp_ctx *ctx, decomp_spec *spec,
                    const decomp_layer *layer);

size_t decomp_spec_count(const decomp_spec *spec);
/* Borrowed, valid while `spec` lives. */
const decomp_layer *decomp_spec_at(const decomp_spec *spec, size_t i);
const decomp_layer *decomp_spec_find(const decomp_spec *spec,
                                     const char *name);

/* Check every Conv2d and Linear of `spec` against `w`: NAME.weight exists
 * with shape [out, in/groups, kh, kw] ([out, in] for a Linear) and a
 * floating dtype, NAME.bias exists with shape [out] exactly when bias is
 * true. The error names the layer and what is
 * wrong ("layer3.1.conv2: weight has shape [64, 64, 3, 3], spec says
 * [128, 64, 3, 3]"). */
int decomp_spec_check(decomp_ctx *ctx, const decomp_spec *spec,
                      const decomp_weights *w);

/* The spec as canonical JSON text ({"layers": […]}); free with
 * decomp_free. */
char *decomp_spec_to_json(const decomp_spec *spec);

void decomp_spec_free(decomp_spec *spec);

/* ------------------------------------------------------------------------ */
/* Rank policies                                                             */
/* ------------------------------------------------------------------------ */

typedef struct decomp_policy decomp_policy;

/* Parse a policy: a bare name ("budget", "amct", "vbmf") with its defaults,
 * or a JSON object {"name": "energy", "energy": 0.95, …}. Policies and their
 * knobs:
 *   fixed      rank (int ≥ 1; clamped to the layer's largest rank)
 *   ratio      ratio (0 < r ≤ 1, fraction of the largest rank)
 *   energy     energy (0 < e ≤ 1, fraction of Σσ² kept)
 *   max_error  max_error (0 ≤ e < 1, relative Frobenius error bound)
 *   vbmf       (no knob: empirical variational Bayes rank)
 *   amct       (no knob: the reference tool's eligibility and rank rules)
 *   budget     macs_reduction (> 1, default 2.0) or params_reduction (> 1):
 *              a whole-model target over the eligible convs (default)
 * Common fields: "include"/"exclude" (lists of globs over layer names),
 * "overrides" ({"glob": {"rank": 16} | {"skip": true} | {"ratio": …} |
 * {"energy": …} | {"max_error": …}}, first matching glob wins), "compute"
 * ("float32" or "float64"; default float32, float64 for F64 weights),
 * "order" ("auto", "vertical_first", "horizontal_first"; default auto),
 * "require_cheaper" (default true: a layer whose rank would not make it
 * cheaper in MACs is left alone; false keeps the rank the policy chose, so
 * {"name": "ratio", "ratio": 1, "require_cheaper": false} decomposes every
 * eligible layer at full rank). Budget always requires a saving.
 * Unknown names and fields are errors that name them. */
int decomp_policy_parse(decomp_ctx *ctx, const char *text,
                        decomp_policy **out);

/* The policy as canonical JSON (every knob spelled out, keys in a fixed
 * order), so two equal policies give the same text; free with decomp_free. */
char *decomp_policy_to_json(const decomp_policy *p);

/* The policy's name ("budget", …). Borrowed. */
const char *decomp_policy_name(const decomp_policy *p);

void decomp_policy_free(decomp_policy *p);

/* ------------------------------------------------------------------------ */
/* Decomposition                                                             */
/* ------------------------------------------------------------------------ */

/* What decomp_decompose reports before and after each layer, and inside
 * long ones. */
typedef struct decomp_progress {
  const char *layer;       /* layer name */
  size_t index;            /* 0-based among the layers considered */
  size_t total;            /* layers considered (the spec's Conv2d layers) */
  int phase;               /* DECOMP_PHASE_* */
  int64_t rank;            /* chosen rank (0 when skipped or unknown yet) */
  int64_t max_rank;        /* largest possible rank */
  double seconds;          /* time spent on this layer (at DONE; so far at
                              WORKING) */
  const char *skip_reason; /* when the layer is left alone, why; else NULL */
  double fraction;         /* WORKING: estimated share of the layer's
                              current step (its spectrum, or its factors)
                              done, in [0, 1); 0 for the other phases */
} decomp_progress;

enum decomp_phase {
  DECOMP_PHASE_SPECTRUM = 0, /* singular values of a layer being computed */
  DECOMP_PHASE_START = 1,    /* factorization of a layer starting */
  DECOMP_PHASE_DONE = 2,     /* layer finished (decomposed or skipped) */
  DECOMP_PHASE_WORKING = 3,  /* inside a long layer: `fraction` done; at most
                                every progress interval (see
                                decomp_ctx_set_progress_interval), and only
                                for layers run on the calling thread (the
                                large ones, or all with threads ≤ 1) */
};

/* Called from the decomposing thread; return non-zero to cancel the run at
 * this point (decomp_decompose then fails with DECOMP_ERR_CANCELLED). */
typedef int (*decomp_progress_fn)(void *user, const decomp_progress *p);

typedef struct decomp_options {
  decomp_progress_fn progress; /* may be NULL */
  void *progress_user;
  const char *source_digest;   /* "sha256:…" recorded in the info file; may
                                  be NULL */
  const char *source_format;   /* "pth", "safetensors", …; NULL: from `w` */
  bool record_spectra;         /* record each layer's singular values in the
                                  info file (for charts) */
  /* Fields below were appended after 0.1.0's first release; a caller that
   * zero-initializes the struct (or passes NULL) gets the old behaviour.
   * The engine reads every field declared here: a binding that declares
   * the struct itself (ctypes) must declare all of them, in this order.
   * Python's is generated from this declaration (as are decomp_tensor's
   * and decomp_progress's): run scripts/gen_py_constants.py after a
   * change, one declarator per line. */
  int threads;                 /* cores this call may use. 0 (default): run
                                  the layers one by one on the calling
                                  thread and leave OpenBLAS's thread count
                                  as it is. 1: one by one with BLAS
                                  single-threaded. N ≥ 2: the layers of each
                                  phase run on N engine threads with BLAS
                                  single-threaded, except large layers
                                  (m·n·min(m,n) ≥ 2^32 for the layer's
                                  matrix), which run alone with N BLAS
                                  threads — unless the spec has at least
                                  2N of them (a transformer's): then they
                                  too run side by side, one BLAS thread
                                  each; so engine threads × BLAS threads
                                  never exceed N. OpenBLAS's thread count is
                                  process-wide: with threads > 0 the call
                                  sets it (and restores it on return), so
                                  concurrent calls in one process must pass
                                  the same value (a daemon with W workers on
                                  C cores: threads = C / W each). Output
                                  bytes depend on the input, the policy and
                                  `threads` (large layers' BLAS thread count)
                                  only, never on scheduling: a model whose
                                  layers are all below the size bound gives
                                  the same bytes for every threads ≥ 1.
                                  Progress with N ≥ 2: SPECTRUM and START
                                  come as each layer is handed to a thread,
                                  DONE in spec order as layers finish, all
                                  from the calling thread; a cancel lets the
                                  layers in flight finish. */
  /* Appended after `threads`: */
  const decomp_weights *calibration; /* the layers' input Gram matrices, a
                                  decompd.calibration set (read from its
                                  safetensors file with decomp_weights_open,
                                  or built in memory): every layer it names
                                  is decomposed by channel_svd / svd
                                  whitened by its Gram (DESIGN "Beyond
                                  spatial SVD"); NULL: weights only. It is
                                  checked against the spec first
                                  (DECOMP_ERR_BAD_CALIBRATION names the
                                  layer). Borrowed for the call. */
  const char *calibration_digest; /* "sha256:…" of that file, recorded in
                                  the info file; may be NULL */
  const char *profile;         /* a latency profile (decompd.profile's JSON
                                  text: per layer the time of the layer and
                                  of each candidate pair over a grid of
                                  ranks, on the user's device), or NULL.
                                  With it the budget can take
                                  latency_reduction, every policy leaves
                                  alone a layer the profile says would get
                                  slower (max_slowdown, default 1.0), and
                                  the info file records predicted
                                  latencies. Checked against the spec first
                                  (DECOMP_ERR_BAD_PROFILE names the layer). */
  const char *profile_digest;  /* "sha256:…" of it, for the info file; may
                                  be NULL */
} decomp_options;

typedef struct decomp_result decomp_result;

/* Decompose the Conv2d layers of `spec` in `w` under `policy`.
 *
 * Checks the spec against the weights first (decomp_spec_check) and fails
 * with DECOMP_ERR_NONFINITE naming the layer when a decomposed weight holds
 * NaN or Inf. The result holds the decomposed state dict — every tensor of
 * `w` in its order, each decomposed NAME.weight/NAME.bias replaced in place
 * by NAME.0.weight, NAME.1.weight and (with bias) NAME.1.bias, in the input's
 * dtype — and the decompose_info.json text. Untouched tensors are borrowed
 * from `w`, which must outlive the result. `opts` may be NULL. */
int decomp_decompose(decomp_ctx *ctx, const decomp_weights *w,
                     const decomp_spec *spec, const decomp_policy *policy,
                     const decomp_options *opts, decomp_result **out);

/* Check a calibration (a decompd.calibration weight set: the Gram matrices
 * of layers' inputs, see decomp_options.calibration) against `spec`: its
 * metadata, every layer it names exists in the spec as a Conv2d or Linear
 * of the type it says, each Gram has the shape that layer's inputs give
 * ([in, in]; a conv's [groups, (in/groups)·kh·kw, …]), is finite and
 * symmetric, and each count is positive. DECOMP_ERR_BAD_CALIBRATION names
 * the layer and what is wrong. *layers (may be NULL) gets how many layers
 * it covers. decomp_decompose makes the same check. */
int decomp_calibration_check(decomp_ctx *ctx, const decomp_weights *calibration,
                             const decomp_spec *spec, size_t *layers);

/* Check a latency profile (JSON text, see decomp_options.profile) against
 * `spec`: every layer exists with the profile's type and weight shape, each
 * candidate's method applies, ranks increase within its largest rank, times
 * are finite and non-negative, no grid is empty. DECOMP_ERR_BAD_PROFILE
 * names the layer. *layers (may be NULL) gets how many layers it has. */
int decomp_profile_check(decomp_ctx *ctx, const char *profile,
                         const decomp_spec *spec, size_t *layers);

/* Where and how decomp_decompose_save writes. Zero-initialized (or NULL):
 * one file model.safetensors, shards of DECOMP_SHARD_BYTES_DEFAULT. */
typedef struct decomp_save_options {
  uint64_t shard_bytes;    /* a shard's size limit in bytes (a tensor larger
                              than it gets a shard of its own); 0: the
                              default, 5 GB as the Hub's tools use */
  bool sharded;            /* write the sharded layout even when everything
                              fits one shard (for a sharded input) */
  const char *single_name; /* the file's name when not sharded (a plain
                              name); NULL: "model.safetensors" */
} decomp_save_options;

#define DECOMP_SHARD_BYTES_DEFAULT 5000000000ull

/* Decompose as decomp_decompose does, writing the decomposed state dict to
 * the folder `out_dir` (which must exist) as safetensors while it is made,
 * never holding it whole: in one file, or — when `save->sharded`, or when
 * it does not fit one shard of `save->shard_bytes` — as the Hub's sharded
 * layout, model-00001-of-0000N.safetensors … plus
 * model.safetensors.index.json (weight_map and total_size), tensors packed
 * in order. The files' headers are written once the ranks are chosen (the
 * factors' shapes follow from them); tensors that pass through are copied
 * from the input's mapping slice by slice; each decomposed layer's factors
 * are written as soon as it is done and freed; the input's mapped pages a
 * layer read are given back after it. Peak memory is then the layers in
 * flight (with `threads` ≥ 2, at most a few more done layers waiting for
 * their turn in spec order) plus a constant, whatever the model's size;
 * the info file's summary records the process's peak RSS so far as
 * `peak_rss_bytes` (getrusage's high-water mark: in a long-running process
 * it also covers earlier work). The bytes are those decomp_weights_save
 * writes for decomp_decompose's result (for one file, the same file).
 *
 * Files are written as temporaries in `out_dir` and renamed at the end,
 * the index last; on failure nothing is left. *out_info gets
 * decompose_info.json, *out_files (may be NULL) a JSON array of the file
 * names written, shards then index; free both with decomp_free. */
int decomp_decompose_save(decomp_ctx *ctx, const decomp_weights *w,
                          const decomp_spec *spec,
                          const decomp_policy *policy,
                          const decomp_options *opts, const char *out_dir,
                          const decomp_save_options *save, char **out_info,
                          char **out_files);

/* ------------------------------------------------------------------------ */
/* One job over many machines                                                */
/* ------------------------------------------------------------------------ */

/* decomp_decompose_save cut into tasks that any node may run (DESIGN
 * "Across machines"), in four stages:
 *
 *   1. decomp_task_spectra on any grouping of the spec's layers (one layer
 *      per task, or several): phase 1, each layer's spectra, as a record;
 *   2. decomp_task_plan on every phase-1 record: the policy's ranks for
 *      the whole model (a budget needs every spectrum), as the plan;
 *   3. decomp_task_factors on any grouping of the layers, with the plan:
 *      phase 2, each decomposed layer's factors, as a record;
 *   4. decomp_task_assemble with the plan and every phase-2 record: the
 *      files decomp_decompose_save writes, and its decompose_info.json.
 *
 * Every stage is called with the job's weights, spec, policy and options
 * (the same on every node: `threads` included) and rebuilds the run's
 * cheap part (eligibility, candidates, cost models) from them. Each
 * layer's arithmetic is the single run's and depends only on the layer's
 * input, the policy and its BLAS thread count (decomp_options.threads), so
 * the assembled files are byte for byte decomp_decompose_save's with the
 * same options, however the layers were grouped, ordered or spread. With
 * threads == 0 OpenBLAS's thread count is whatever each process has, and
 * layers of m·n·min(m,n) ≥ 2^32 then give the same bytes only where it
 * is the same; pass threads ≥ 1 (the same on every node) for a guarantee.
 *
 * decompose_info.json is the single run's too, except one field that
 * measures a process: summary.peak_rss_bytes is the largest peak RSS of
 * the processes that made the records and the assembly (each record
 * carries its maker's), where the single run has its own. Nothing else in
 * the info file is a measurement (layer times are logged, not recorded).
 *
 * Records are safetensors buffers (free with decomp_free; store them as
 * they are). Float64 tensors hold the numbers, so they come back bit for
 * bit: for each layer of a phase-1 record (and of the plan) and each of its
 * candidates c, "NAME/c/energy" [‖W‖², ‖W·S‖²] and, when computed,
 * "NAME/c/sigma" [groups, k]; in a phase-2 record "NAME/energy" [‖W‖²,
 * ‖W − W̃‖², ‖W·S‖², ‖(W − W̃)·S‖²], "NAME/sigma" and the factors as the
 * output holds them, "NAME.0.weight" and "NAME.1.weight" (the weight's
 * dtype). The metadata's "decompd_task" is a JSON text: {"format":
 * "decompd.task", "version": 1, "kind": "spectra" | "plan" | "factors",
 * "job": key, "plan": digest (factors), "layers": [{"name", per kind:
 * "candidates": [{"method", "order", "groups", "k", "sigma"}], "chosen",
 * "rank", "reason" (plan), "rank", "method", "order", "groups", "k",
 * "sigma" (factors)}], "peak_rss_bytes"}. The job key is a 64-bit hash of
 * the spec and policy (canonical texts), the options that shape the output
 * (threads, record_spectra, source digest and format, calibration digest
 * and layer count, profile text and digest) and every tensor's name, dtype
 * and shape; the weights' data is told apart by source_digest only. The
 * plan's digest is a 64-bit hash of its bytes. Hashes catch records
 * handed over by mistake, not forged ones.
 *
 * Every record is checked before use: a record of another kind, job or
 * plan, a layer the spec lacks or the job does not decompose, a second
 * result for a layer, a missing one, or a result whose rank, method,
 * shapes or dtype are not the plan's fail with DECOMP_ERR_BAD_TASK naming
 * the layer, and the assembly writes nothing then.
 *
 * `layers` selects spec layers by name (NULL: all of them; a name the
 * spec lacks is DECOMP_ERR_INVALID_ARGUMENT); layers the stage has no
 * work for (not decomposed by the job, or left alone by the plan) are
 * simply absent from the record. Progress reports only the selected
 * layers, with index and total spec-wide. A task's memory is its own
 * layers', never the model's (a phase-2 task holds its layers' factors,
 * each freed as it is copied into the record); the assembly streams as
 * decomp_decompose_save does, the factors written from the records as
 * they are (decomp_task_assemble_files maps them and gives their pages
 * back as it goes). */

/* The layers that have work in a stage, for the queue to make tasks of:
 * with plan NULL, the layers phase 1 works on (those the job may
 * decompose); with a plan, the layers it decomposes. *out_json (free with
 * decomp_free) gets a JSON array in spec order of {"name", "cost"} (and
 * "rank" with a plan), cost being Σ m·n·min(m, n) over the layer's
 * candidate matrices, a weight to balance tasks by (not seconds). */
int decomp_task_layers(decomp_ctx *ctx, const decomp_weights *w,
                       const decomp_spec *spec, const decomp_policy *policy,
                       const decomp_options *opts, const void *plan,
                       size_t plan_len, char **out_json);

/* Phase 1 on the selected layers: *out (free with decomp_free) gets the
 * record of their spectra, *out_len its length. */
int decomp_task_spectra(decomp_ctx *ctx, const decomp_weights *w,
                        const decomp_spec *spec, const decomp_policy *policy,
                        const decomp_options *opts, const char *const *layers,
                        size_t nlayers, void **out, size_t *out_len);

/* The plan from the `nrecords` phase-1 records (records[i] of lens[i]
 * bytes, in any order) that between them hold every layer the job
 * decomposes once: the ranks decomp_decompose would choose, and the
 * spectra phase 2 and the info file need. */
int decomp_task_plan(decomp_ctx *ctx, const decomp_weights *w,
                     const decomp_spec *spec, const decomp_policy *policy,
                     const decomp_options *opts, const void *const *records,
                     const size_t *lens, size_t nrecords, void **out,
                     size_t *out_len);

/* Phase 2 on the selected layers at the plan's ranks: the record of their
 * factors. */
int decomp_task_factors(decomp_ctx *ctx, const decomp_weights *w,
                        const decomp_spec *spec, const decomp_policy *policy,
                        const decomp_options *opts, const void *plan,
                        size_t plan_len, const char *const *layers,
                        size_t nlayers, void **out, size_t *out_len);

/* Write into `out_dir` what decomp_decompose_save writes there with the
 * same options and `save`, from the plan and the `nresults` phase-2
 * records (in any order) that between them hold every layer the plan
 * decomposes once; *out_info and *out_files as decomp_decompose_save
 * gives them. Every record is checked before anything is written. */
int decomp_task_assemble(decomp_ctx *ctx, const decomp_weights *w,
                         const decomp_spec *spec, const decomp_policy *policy,
                         const decomp_options *opts, const void *plan,
                         size_t plan_len, const void *const *results,
                         const size_t *lens, size_t nresults,
                         const char *out_dir, const decomp_save_options *save,
                         char **out_info, char **out_files);

/* The same with the phase-2 records in files (paths[i], as stored): each
 * is mapped, and the pages of a layer's factors given back once they are
 * written, so the assembly's memory stays that of the layers in hand
 * whatever the model's size. */
int decomp_task_assemble_files(decomp_ctx *ctx, const decomp_weights *w,
                               const decomp_spec *spec,
                               const decomp_policy *policy,
                               const decomp_options *opts, const void *plan,
                               size_t plan_len, const char *const *paths,
                               size_t nresults, const char *out_dir,
                               const decomp_save_options *save,
                               char **out_info, char **out_files);

/* The decomposed state dict. Borrowed, valid while the result lives. */
const decomp_weights *decomp_result_weights(const decomp_result *r);
/* decompose_info.json (version 1) as text. Borrowed. */
const char *decomp_result_info(const decomp_result *r);

void decomp_result_free(decomp_result *r);

/* The file names of a decomposition's outputs: the artifacts of a service
 * job (GET /v1/jobs/{id}/artifacts/NAME) and the files `decompctl decompose`
 * writes into --out. python/decompd/_c_constants.py is generated from
 * these (scripts/gen_py_constants.py). */
#define DECOMP_ARTIFACT_WEIGHTS_PTH "decomposed_weights.pth"
#define DECOMP_ARTIFACT_WEIGHTS_SAFETENSORS "decomposed_weights.safetensors"
#define DECOMP_ARTIFACT_INFO "decompose_info.json"
/* A sharded output's index (beside its model-0000i-of-0000N.safetensors),
 * and the name a sharded checkpoint's index has in its folder. */
#define DECOMP_ARTIFACT_INDEX "model.safetensors.index.json"

/* ------------------------------------------------------------------------ */
/* Info files                                                                */
/* ------------------------------------------------------------------------ */

/* Read a decompose_info file — ours (version 1) or the reference tool's (a
 * JSON list of {"ori_layer_info", "mode", "decom_nodes"}) — check it, and
 * give it back as our version-1 JSON text (free with decomp_free). */
int decomp_info_normalize(decomp_ctx *ctx, const char *json, size_t len,
                          char **out_json);

#ifdef __cplusplus
}
#endif
#endif
