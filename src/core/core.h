/* core.h — what the engine's files share and no one outside sees: setting
 * errors on a context, logging, the weight set's internals (how a reader adds
 * tensors and keeps its mapping alive), and element conversion between
 * dtypes. */
#ifndef DECOMP_CORE_H
#define DECOMP_CORE_H

#include <stdarg.h>
#include <sys/types.h>

#include "decomp/decomp.h"

#if defined(__GNUC__)
#define DECOMP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DECOMP_PRINTF(a, b)
#endif

/* Record a failure on `ctx` (which may be NULL) and return `err`, so that
 * `return core_fail(ctx, DECOMP_ERR_BAD_ZIP, "entry %s: …", name);` reads as
 * one statement. */
int core_fail(decomp_ctx *ctx, int err, const char *fmt, ...)
    DECOMP_PRINTF(3, 4);
/* Clear the last failure. */
void core_clear(decomp_ctx *ctx);

/* Log through the context's handler when `level` is enabled. */
void core_log(decomp_ctx *ctx, int level, const char *topic, const char *fmt,
              ...) DECOMP_PRINTF(4, 5);
bool core_log_enabled(const decomp_ctx *ctx, int level);

/* Progress inside a long step (a large layer's spectrum or factors).
 * decompose.c installs a hook on the calling thread's context around such
 * a step; the SVD code calls core_tick with its estimate of the step done
 * (in [0, 1], mapped through the span core_tick_span set: base + scale·f,
 * for one group of several). The hook may cancel: core_tick then returns
 * its error (DECOMP_ERR_CANCELLED, set on ctx), which the caller passes up
 * after freeing what it holds. Without a hook it is a no-op. */
typedef int (*core_tick_fn)(void *user, double fraction);
void core_set_tick(decomp_ctx *ctx, core_tick_fn fn, void *user);
void core_tick_span(decomp_ctx *ctx, double base, double scale);
int core_tick(decomp_ctx *ctx, double fraction);
double core_progress_interval(const decomp_ctx *ctx);

/* --- weight sets -------------------------------------------------------- */

/* Resources a weight set releases when freed. */
typedef void (*core_release_fn)(void *p, size_t len);

/* Keep `p` (of `len` bytes) alive until `w` is freed, then call
 * release(p, len). On failure release is called at once. */
int core_weights_keep(decomp_weights *w, void *p, size_t len,
                      core_release_fn release);
void core_weights_set_format(decomp_weights *w, decomp_format f);
/* The context a set was made through (for error messages of add). */
decomp_ctx *core_weights_ctx(const decomp_weights *w);

/* Bytes of storage a tensor needs: (offset + largest element index reached
 * + 1) × item size. Returns false on overflow or negative fields. A tensor
 * with a zero dimension needs 0. */
bool core_tensor_extent(const decomp_tensor *t, size_t *out_bytes);

/* The number of shards a set was read from (0: one file, or built). */
void core_weights_set_shards(decomp_weights *w, size_t n);

/* Give back the resident pages of `t`'s data when they belong to a file
 * mapping the set `w` keeps (madvise MADV_DONTNEED on the whole pages
 * inside it: the data stays valid, read again from the page cache if
 * touched), so a long run over a mapped model keeps in RSS only the layers
 * it works on. A no-op for data the set does not map from a file (built
 * sets, caller buffers). Safe from any thread. */
void core_weights_drop_pages(const decomp_weights *w, const void *data,
                             size_t len);
/* Ask for those pages to be read ahead (MADV_WILLNEED) before a tensor is
 * read through: a page fault alone reads a small window at a time (a
 * 22 GB calibration was checked at 0.4 GB/s). Same no-op cases. */
void core_weights_will_need(const decomp_weights *w, const void *data,
                            size_t len);

/* Sharded checkpoints (shard_read.c). Whether `name` is a plain shard file
 * name (else *why says what is wrong); parse and check an index document
 * (weight_map of plain names, metadata.total_size), giving its root and
 * total_size (-1 when absent); open the index file at `path` with the
 * shards of its folder. */
struct json_t;
bool core_shard_name_ok(const char *name, const char **why);
int core_shard_index_parse(decomp_ctx *ctx, const char *text, size_t len,
                           struct json_t **out_root, int64_t *out_total);
int core_shard_open_index_file(decomp_ctx *ctx, const char *index_path,
                               decomp_weights **out);

/* Readers: map a whole file read-only. */
int core_map_file(decomp_ctx *ctx, const char *path, void **out,
                  size_t *out_len);
void core_unmap(void *p, size_t len);

/* Format readers, each on a buffer kept alive by the caller/set. */
int core_pth_read(decomp_ctx *ctx, const void *buf, size_t len,
                  decomp_weights *w);
int core_safetensors_read(decomp_ctx *ctx, const void *buf, size_t len,
                          decomp_weights *w);
/* Format writers, each to an open file descriptor positioned at 0. `stem`
 * is the archive's folder name for .pth. */
int core_pth_write(decomp_ctx *ctx, const decomp_weights *w, int fd,
                   const char *stem);
int core_safetensors_write(decomp_ctx *ctx, const decomp_weights *w, int fd);

/* The safetensors writer's parts (safetensors.c), shared with the
 * streaming writer (shard_write.c). An item is one tensor as the header
 * describes it; its data is `nbytes` bytes, row-major. */
typedef struct core_st_item {
  const char *name;       /* borrowed */
  decomp_dtype dtype;
  int ndim;
  int64_t shape[DECOMP_MAX_DIMS];
  uint64_t nbytes;
} core_st_item;
/* The item describing `t` as written (DECOMP_ERR_TOO_LARGE when its byte
 * size overflows). */
int core_st_item_of(decomp_ctx *ctx, const decomp_tensor *t, core_st_item *it);
/* The header JSON of a file holding `items` in this order, data offsets
 * tiling from 0: *out_text (free()), its length, and the padded length
 * (a multiple of 8, what the 8-byte prefix says). */
int core_st_header(decomp_ctx *ctx, const core_st_item *items, size_t n,
                   const char *metadata, char **out_text, size_t *out_len,
                   size_t *out_hlen);
/* Write `t`'s elements row-major to fd's current position, gathering a
 * strided view through `gbuf` (1 MiB). */
int core_safetensors_write_tensor(decomp_ctx *ctx, int fd,
                                  const decomp_tensor *t, unsigned char *gbuf);
#define CORE_GATHER_BYTES ((size_t)1 << 20)

/* The streaming safetensors writer (shard_write.c): one file named
 * `single_name` in `dir`, or, when `sharded` or the items do not fit one
 * shard of `shard_bytes`, model-0000i-of-0000N.safetensors plus
 * model.safetensors.index.json. Open plans the layout, creates every file
 * as a temporary with its header; write/copy put one item's data at its
 * place (any order; write takes exactly its bytes, row-major; copy streams
 * a tensor of `src` in slices, giving each slice's mapped pages back);
 * commit fsyncs and renames them all, the index last, and gives the file
 * names written as a JSON array text (free()); free without a commit (or
 * after a failed one) removes everything. */
typedef struct core_st_out core_st_out;
int core_st_out_open(decomp_ctx *ctx, const char *dir, const char *single_name,
                     const core_st_item *items, size_t n,
                     const char *metadata, uint64_t shard_bytes, bool sharded,
                     core_st_out **out);
uint64_t core_st_out_nbytes(const core_st_out *o, size_t item);
int core_st_out_write(core_st_out *o, size_t item, const void *buf,
                      size_t len);
int core_st_out_copy(core_st_out *o, size_t item, const decomp_tensor *t,
                     const decomp_weights *src);
int core_st_out_commit(core_st_out *o, char **files_json);
void core_st_out_free(core_st_out *o);

/* The mode a new file gets: 0666 less the process umask. */
mode_t core_new_file_mode(void);

/* Write all of buf to fd (retrying short writes); DECOMP_ERR_IO or
 * DECOMP_ERR_DISK_FULL on failure, with errno text in the message. */
int core_write_all(decomp_ctx *ctx, int fd, const void *buf, size_t len);

/* --- element conversion ------------------------------------------------- */

float core_half_to_float(uint16_t h);
uint16_t core_float_to_half(float f);   /* round to nearest even */
float core_bf16_to_float(uint16_t h);
uint16_t core_float_to_bf16(float f);   /* round to nearest even */

/* Gather a floating tensor (any of F32/F16/BF16/F64, any strides) into a
 * dense row-major array of doubles or floats. Returns false for a
 * non-floating dtype. */
bool core_tensor_to_f64(const decomp_tensor *t, double *dst);
bool core_tensor_to_f32(const decomp_tensor *t, float *dst);
/* Convert n dense elements to dtype `dt` (a floating dtype). */
void core_f64_to_dtype(const double *src, size_t n, decomp_dtype dt,
                       void *dst);
void core_f32_to_dtype(const float *src, size_t n, decomp_dtype dt, void *dst);
/* The element of dtype `dt` (a floating dtype, I64 or I32) at `p`, as a
 * double; 0 for other dtypes. */
double core_load_f64(const void *p, decomp_dtype dt);
/* v as the conversions above store it in the floating dtype `dt`, read
 * back: what a value becomes once written. */
double core_dtype_round(decomp_dtype dt, double v);

/* --- rank policies (policy.c), as decompose.c uses them ----------------- */

/* The two orders of the pair (DESIGN "The decomposition"). */
typedef enum core_order {
  CORE_ORDER_VERTICAL_FIRST = 0,   /* (kh,1) then (1,kw) */
  CORE_ORDER_HORIZONTAL_FIRST = 1, /* (1,kw) then (kh,1) */
} core_order;

/* The factorizations (DESIGN "Beyond spatial SVD"). */
typedef enum core_method {
  CORE_METHOD_SPATIAL = 0, /* spatial_svd: a (kh,1) and a (1,kw) conv */
  CORE_METHOD_CHANNEL = 1, /* channel_svd: a (kh,kw) conv to g·R, then 1x1 */
  CORE_METHOD_LINEAR = 2,  /* svd: Linear(in, R) then Linear(R, out) */
} core_method;

/* The info file's name of a method: "spatial_svd", "channel_svd", "svd". */
const char *core_method_name(core_method m);

/* Policy "types" and "methods" as bits. */
#define CORE_TYPE_CONV2D 1u
#define CORE_TYPE_LINEAR 2u
#define CORE_METHODS_SPATIAL 1u
#define CORE_METHODS_CHANNEL 2u
#define CORE_METHODS_LINEAR 4u /* implied for Linear layers */

/* The budget's default quality floor: no layer is taken beyond this
 * relative error (it keeps at least 75% of its energy), whatever the
 * target. */
#define CORE_BUDGET_MAX_LAYER_ERROR 0.75

/* What a policy knows of one candidate decomposition of a layer (a Conv2d
 * under one method and order, or a Linear) when it chooses a rank. A layer
 * with several candidates (a k×k conv: spatial and channel) has them as
 * adjacent views with the same `layer`: the policy decomposes it with one
 * of them at most. */
typedef struct core_layer_view {
  const decomp_layer *layer;
  core_method method;
  int64_t max_rank;      /* the reshape's smaller side: min(I·kh, O·kw)
                            for spatial (in the order), min(I·kh·kw, O)
                            for channel, min(in, out) for Linear */
  core_order order;      /* the cheaper order in MACs (or as the policy asks) */
  double macs_before;    /* per output pixel, or whole-layer when the spec
                            gives input_size */
  double macs_per_rank;  /* macs_after(R) = R · macs_per_rank */
  double params_before;  /* weight (+ bias) elements */
  double params_per_rank;/* params_after(R) = R · params_per_rank + bias */
  double params_bias;    /* bias elements (0 without bias) */
  bool macs_estimated;   /* no input_size: MACs use an estimated output
                            area (CORE_MACS_EST_SIDE / out_channels)² */
  /* Singular values, filled by decompose.c only when the policy asks
   * (core_policy_needs_spectrum): `groups` runs of `max_rank` values, each
   * descending. NULL otherwise. */
  const double *sigma;
  int64_t groups;
  double energy_total;   /* Σ σ² over all groups (the kernel's ‖W‖², or
                            ‖W·S‖² when whitened) */
  bool whitened;         /* sigma is the spectrum of W·S (calibrated) */
  /* With a latency profile: whether the layer was profiled, its own
   * measured time, and this candidate's predicted time by rank (NULL when
   * the profile did not measure it). */
  bool profiled;
  double latency_before;
  const struct core_curve *latency;
} core_layer_view;

/* Without input_size the output area of a conv is estimated as
 * (CORE_MACS_EST_SIDE / out_channels)² (policy.c says why). */
#define CORE_MACS_EST_SIDE 3584.0

/* Why a layer is left alone, or NULL when it is decomposed. Static strings
 * or strings owned by the decision. */
typedef struct core_rank_decision {
  int64_t rank;          /* 0 when skipped */
  char reason[160];      /* why skipped ("" when decomposed) */
} core_rank_decision;

/* Cost model of a Conv2d layer for the given order (fills every field of
 * `v` but sigma/energy_total). Returns false for a layer that cannot be
 * decomposed at all (kh == 1 or kw == 1), with the reason in `why`. */
bool core_layer_view_init(const decomp_layer *layer, core_order order,
                          core_layer_view *v, char *why, size_t why_len);
/* The same for any method (a Linear layer always takes CORE_METHOD_LINEAR;
 * a conv asked for it gets channel). False, with the reason, when the
 * method cannot split the layer. */
bool core_layer_view_init_method(const decomp_layer *layer,
                                 core_method method, core_order order,
                                 core_layer_view *v, char *why,
                                 size_t why_len);

/* The rows (input side) and columns (output side) of one group's matrix
 * for the view's method and order. */
void core_view_matrix(const core_layer_view *v, int64_t *rows, int64_t *cols);

typedef struct core_curve core_curve;

/* The CORE_METHODS_* bits of the candidates the policy allows for `l`
 * (0 when its type is not among the policy's types, or no allowed method
 * applies). */
unsigned core_policy_methods(const decomp_policy *p, const decomp_layer *l);

/* Whether the policy chooses ranks from the singular values (energy,
 * max_error, vbmf, amct, budget) or not (fixed, ratio, and layers with a
 * rank override). */
bool core_policy_needs_spectrum(const decomp_policy *p, const decomp_layer *l);

/* Layer-level eligibility before any SVD: include/exclude globs, `skip`
 * overrides, the amct preset's rules. Returns true when the layer may be
 * decomposed; else writes the reason. */
bool core_policy_eligible(const decomp_policy *p, const decomp_layer *l,
                          char *why, size_t why_len);

/* The order the policy asks for (auto picks the cheaper in MACs). */
int core_policy_order(const decomp_policy *p); /* -1 auto, else core_order */

/* The compute precision: 32 or 64 (64 also when the policy says float64). */
int core_policy_compute_bits(const decomp_policy *p, decomp_dtype weights);

/* Choose ranks for all `n` layers at once (budget spends a whole-model
 * target). A layer whose chosen rank would not make it cheaper gets rank 0
 * and a reason. `views[i].sigma` is set for the layers that need it. */
int core_policy_choose(decomp_ctx *ctx, const decomp_policy *p,
                       const core_layer_view *views, size_t n,
                       core_rank_decision *out);

/* What a whole-model budget counts of the layers that are not candidates
 * (left alone: at full cost). */
typedef struct core_rest {
  double macs, params;
  double latency; /* profiled ones, at their measured time, and the rest of
                     the model (model_time less the considered layers) */
} core_rest;
int core_policy_choose_rest(decomp_ctx *ctx, const decomp_policy *p,
                            const core_layer_view *views, size_t n,
                            const core_rest *rest, core_rank_decision *out);

/* The largest predicted slowdown a policy accepts for a profiled layer
 * (its "max_slowdown", 1.0 by default when there is a profile). */
double core_policy_max_slowdown(const decomp_policy *p);
/* Whether the policy is a budget over latency (needs a profile). */
bool core_policy_by_latency(const decomp_policy *p);

/* --- decomposition: SVD, factorization, info file ------------------------
 * (lapack.c, decompose.c, info.c) */

/* The SVD wrappers (lapack.c, the only file that includes lapacke.h). Every
 * matrix is column-major, m rows by n columns with leading dimension m, and
 * is destroyed. k = min(m, n). `what` names the matrix in error messages
 * ("layer3.1.conv2 group 0"). Failures: DECOMP_ERR_SVD_FAILED with LAPACK's
 * info, DECOMP_ERR_TOO_LARGE when a dimension does not fit LAPACK's int,
 * DECOMP_ERR_NOMEM. */

/* Singular values only (descending) into s[k]. */
int core_svd_values_f32(decomp_ctx *ctx, const char *what, int64_t m,
                        int64_t n, float *a, float *s);
int core_svd_values_f64(decomp_ctx *ctx, const char *what, int64_t m,
                        int64_t n, double *a, double *s);
/* Thin SVD a = u · diag(s) · vt: u is m×k (ld m), vt is k×n (ld k). */
int core_svd_f32(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                 float *a, float *s, float *u, float *vt);
int core_svd_f64(decomp_ctx *ctx, const char *what, int64_t m, int64_t n,
                 double *a, double *s, double *u, double *vt);

/* The calibration of a run (calib.c): every layer's Gram of its inputs,
 * checked against the spec when opened (BAD_CALIBRATION names the layer and
 * what is wrong). `w` and `spec` must outlive it. */
typedef struct core_calib core_calib;
int core_calib_open(decomp_ctx *ctx, const decomp_weights *w,
                    const decomp_spec *spec, core_calib **out);
void core_calib_free(core_calib *c);
/* Layers with a Gram. */
size_t core_calib_count(const core_calib *c);
/* The Gram of layer `l` ([groups, n, n] or [n, n], borrowed) and its
 * sample count, or NULL when the calibration has none for it. */
const decomp_tensor *core_calib_gram(const core_calib *c, const decomp_layer *l,
                                     int64_t *samples);

/* The latency profile of a run (profile.c): checked against the spec when
 * opened (BAD_PROFILE names the layer); `spec` must outlive it. */
typedef struct core_profile core_profile;
int core_profile_open(decomp_ctx *ctx, const char *text,
                      const decomp_spec *spec, core_profile **out);
void core_profile_free(core_profile *p);
/* Whether layer `l` was profiled; the curve of one of its candidates (NULL
 * when not measured) and the layer's own time in *time. */
bool core_profile_has(const core_profile *p, const decomp_layer *l);
const core_curve *core_profile_curve(const core_profile *p,
                                     const decomp_layer *l, core_method m,
                                     core_order o, double *time);
/* The whole model's measured forward time ("model_time"), or -1 when the
 * profile has none. */
double core_profile_model_time(const core_profile *p);
/* The profile's device name, dtype and input shape (JSON text), or NULL. */
const char *core_profile_device(const core_profile *p);
const char *core_profile_dtype(const core_profile *p);
const char *core_profile_input_shape(const core_profile *p);
/* A candidate's predicted seconds at rank R (isotonic in rank, linear
 * between grid points, the first point's below them, the last segment's
 * slope above them), and the largest rank it was measured at (the budget
 * offers none above it). */
double core_curve_at(const core_curve *c, int64_t R);
int64_t core_curve_max_rank(const core_curve *c);

/* One layer's spatial SVD (decompose.c). */
typedef struct core_factors {
  int64_t groups, k;       /* sigma holds `groups` runs of k = max rank */
  double *sigma;           /* descending per group; NULL when not asked */
  double energy_total;     /* ‖W‖², summed from the weights */
  double energy_discarded; /* ‖W − first·second‖² achieved, over all
                              groups: Σ σ² beyond the rank on the exact
                              path, within 1% (in error) of it on the
                              truncated one (svd.h) */
  double out_total;        /* whitened (with a Gram): ‖W·S‖², and */
  double out_discarded;    /* ‖(W − first·second)·S‖², measured; else 0 */
  decomp_dtype dtype;      /* of first/second: the weight's */
  void *first, *second;    /* dense new weights; NULL at rank 0 */
  int ndim;                /* of both: 4 (convs) or 2 (Linear) */
  int64_t first_shape[4], second_shape[4];
} core_factors;

/* Factorize the Conv2d weight of `l` in `order` at rank R, computing in
 * float32 or float64 (`bits`). R == 0 computes only what is asked: the
 * finiteness check (DECOMP_ERR_NONFINITE naming the element) and ‖W‖², and
 * with `want_sigma` the singular values (values-only SVD). R > 0 also makes
 * the two new weights, U_R Σ_R^½ and V_R Σ_R^½ reshaped, in the weight's
 * dtype. On success *out owns its buffers (core_factors_clear). */
int core_factorize(decomp_ctx *ctx, const decomp_layer *l,
                   const decomp_tensor *weight, core_order order, int64_t R,
                   int bits, bool want_sigma, core_factors *out);
void core_factors_clear(core_factors *f);

/* "vertical_first" / "horizontal_first". */
const char *core_order_name(core_order o);

/* What decompose.c hands info.c about one layer of the spec. */
typedef struct core_info_layer {
  const decomp_layer *layer;
  bool considered;         /* a Conv2d, or a Linear the policy's types
                              take: counted in the summary's totals */
  bool has_view;           /* the layer can be decomposed (view_init ok) */
  core_layer_view view;    /* cost model for the order used (for any
                              Conv2d; macs/params_before always valid) */
  int64_t rank;            /* > 0 when decomposed */
  const char *skip_reason; /* when left alone: why (borrowed) */
  /* Singular values of every group (groups runs of view.max_rank values,
   * descending) when known, else NULL; borrowed. */
  const double *sigma;
  double energy_total;     /* ‖W‖² */
  double energy_discarded; /* ‖W − first·second‖² when decomposed, measured
                              from the factors as written */
  /* With a calibration (view.whitened): the output energies ‖W·S‖² and
   * ‖(W − first·second)·S‖², measured likewise, and the Gram's count. */
  double out_total, out_discarded;
  int64_t samples;
} core_info_layer;

/* What the info file says of the run as a whole. */
typedef struct core_info_run {
  const char *source_digest;      /* may be NULL */
  const char *source_format;      /* may be NULL */
  bool record_spectra;
  bool calibrated;                /* a calibration was given */
  const char *calibration_digest; /* may be NULL */
  size_t calibration_layers;      /* layers it has a Gram for */
  bool profiled;                  /* a latency profile was given */
  const char *profile_digest;     /* may be NULL */
  const char *profile_device;     /* its device name, or NULL */
  const char *profile_dtype;      /* or NULL */
  const char *profile_input_shape; /* JSON text, or NULL */
  double latency_other;           /* seconds of the model outside the
                                     considered layers (model_time less
                                     theirs), or -1 without model_time */
  int64_t peak_rss_bytes;         /* > 0: the summary records it */
} core_info_run;

/* Build decompose_info.json (version 1) for a run over `spec`. Returns the
 * text in *out (free with free()). */
int core_info_build(decomp_ctx *ctx, const decomp_policy *policy,
                    const core_info_run *run, const core_info_layer *layers,
                    size_t n, char **out);

/* --- small utilities ---------------------------------------------------- */

/* Shell-style glob match (`*`, `?`, `[…]`) over a whole layer name. */
bool core_glob_match(const char *pattern, const char *name);

/* Overflow-checked size arithmetic: false on overflow. */
static inline bool core_mul_size(size_t a, size_t b, size_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}
static inline bool core_add_size(size_t a, size_t b, size_t *out) {
  return !__builtin_add_overflow(a, b, out);
}

/* Monotonic seconds. */
double core_now(void);

/* The process's peak resident set so far, in bytes (getrusage's
 * ru_maxrss: a high-water mark over the process's life). */
int64_t core_peak_rss_bytes(void);

/* --- layer spec and rank policies: helpers (spec.c, policy.c, vbmf.c) ---
 * Added by the spec/policy owner; the functions above keep their contract. */

/* Whether the layer's type is "Conv2d"; "Linear"; either of the two. */
bool core_layer_is_conv(const decomp_layer *l);
bool core_layer_is_linear(const decomp_layer *l);
/* Whether the type is "Linear", described (in_features…) or not: a spec
 * may give a Linear by name and type only, which is then not decomposable. */
bool core_layer_names_linear(const decomp_layer *l);
bool core_layer_is_decomposable(const decomp_layer *l);
/* A Linear layer's conv fields as a 1x1 conv's (kernel, stride, dilation
 * 1; padding 0; groups 1; no input size): in_channels/out_channels hold
 * in_features/out_features. */
void core_layer_linear_fields(decomp_layer *l);

/* The padding torch applies before (lo) and after (hi) the input on each
 * axis (H, W): the numbers for EXPLICIT, 0 for VALID, and for SAME the total
 * d·(k−1) split with the odd element after, as torch does. */
void core_layer_padding(const decomp_layer *l, int64_t lo[2], int64_t hi[2]);

/* Output length of one conv axis: floor((in + lo + hi − d·(k−1) − 1) / s) + 1,
 * or 0 when the kernel's reach exceeds the padded input. */
int64_t core_conv_out_size(int64_t in, int64_t k, int64_t s, int64_t pad_lo,
                           int64_t pad_hi, int64_t d);

/* The layer's output size (H, W) from its input_size; false when the spec
 * gives no input_size. */
bool core_layer_output_size(const decomp_layer *l, int64_t out[2]);

/* The order the policy wants for this layer: an explicit "order", else for
 * the amct preset the reference's mode rule (core_amct_order), else -1 (auto:
 * the caller picks the order with fewer MACs per rank). decompose.c should
 * call this rather than core_policy_order, which cannot see the layer (it
 * says -1 for amct). */
int core_policy_layer_order(const decomp_policy *p, const decomp_layer *l);

/* core_policy_choose, with the cost of the spec's other Conv2d layers (not
 * in `views`: ineligible, excluded, 1x1, …) counted at full size in the
 * budget's whole-model totals: `rest_macs`/`rest_params` are the sums of
 * their macs_before/params_before (core_layer_view_init fills those even
 * when it returns false). core_policy_choose(…) is choose_in(…, 0, 0, …),
 * a target over the layers given only. The budget target is met when
 * (Σ before) / (Σ after) ≥ target, a layer left alone counting its full
 * cost; unreachable targets give every managed layer rank 1 and a warning
 * in the log. Deterministic: a bisection over the price of a MAC (or
 * parameter) on the bit patterns of doubles, then the leftover spent rank
 * by rank on the best energy gained per cost. */
int core_policy_choose_in(decomp_ctx *ctx, const decomp_policy *p,
                          const core_layer_view *views, size_t n,
                          double rest_macs, double rest_params,
                          core_rank_decision *out);

/* The empirical VBMF rank (vbmf.c) of a rows×cols matrix from its `n`
 * singular values, descending (n = min(rows, cols) for the exact answer).
 * σ² is found as the reference does (SciPy's bounded Brent, xatol 1e-5) and
 * returned in *out_sigma2 when non-NULL. 0 for a zero matrix. */
int64_t core_evbmf_rank(const double *s, int64_t n, int64_t rows, int64_t cols,
                        double *out_sigma2);

/* The reference tool's rules (fixtures/README.md):
 * - eligible: groups 1, dilation 1, max(stride) ≤ 2, min(kh,kw) ≥ 3,
 *   min(k)·min(Cin,Cout) ≥ 16, and not (min(k) < 7 and min(C) < 64);
 * - order ("modes"): SC* when Cout ≥ Cin, *FK when kh ≤ kw; SCFK and FCSK
 *   run vertical-first, SCSK and FCFK horizontal-first;
 * - rank: the EVBMF count clamped to [L/(d+1), L/d] in real arithmetic
 *   (L = min(k)·min(C), d = 6, or 4 when min(C) ≥ 256), rounded to the
 *   nearest multiple of 16 with halves to even (Python's round), at least
 *   16, plus 16 when that is below 0.9 × the clamped value. Not clamped to
 *   the layer's largest rank here; the caller does (choose clamps). */
bool core_amct_eligible(const decomp_layer *l, char *why, size_t why_len);
core_order core_amct_order(const decomp_layer *l);
int64_t core_amct_rank(int64_t evbmf, const decomp_layer *l);

/* Smallest rank keeping `keep` of `total` (energy) or with
 * √(discarded/total) ≤ `bound` (max_error), from the per-rank energies
 * e[0..k) (Σ over groups of σ², non-increasing). 1 when total is 0. */
int64_t core_rank_for_energy(const double *e, int64_t k, double total,
                             double keep);
int64_t core_rank_for_error(const double *e, int64_t k, double total,
                            double bound);

#endif
