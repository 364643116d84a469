/* spec.c — the layer spec: what each module of the model is (a Conv2d with
 * its channels, kernel, stride, padding, dilation, groups, bias, padding
 * mode and optional input size; a Linear with its features and bias; or
 * some other module known only by name and type), parsed from JSON or built
 * layer by layer, validated as torch's nn.Conv2d / nn.Linear would validate
 * it, and checked against a weight set. Every error names the layer and the
 * field. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

/* Bounds well above any real network that keep every product the engine
 * forms (weight elements, MACs) inside int64 and exact in a double. */
#define SPEC_MAX_CHANNELS ((int64_t)1 << 20)
#define SPEC_MAX_FEATURES ((int64_t)1 << 24) /* vocabularies: 256k and more */
#define SPEC_MAX_KERNEL ((int64_t)1024)
#define SPEC_MAX_STRIDE ((int64_t)1 << 16)
#define SPEC_MAX_DILATION ((int64_t)1 << 16)
#define SPEC_MAX_PADDING ((int64_t)1 << 20)
#define SPEC_MAX_INPUT ((int64_t)1 << 20)

struct decomp_spec {
  decomp_ctx *ctx;
  decomp_layer *layers; /* name and type owned (strdup) */
  size_t n, cap;
  size_t *index;        /* open addressing: layer index + 1, 0 empty */
  size_t index_cap;     /* power of two, > 2n */
};

static const char *const pad_mode_names[] = {"zeros", "reflect", "replicate",
                                             "circular"};

const char *decomp_padding_mode_name(decomp_padding_mode m) {
  if ((unsigned)m < sizeof pad_mode_names / sizeof pad_mode_names[0])
    return pad_mode_names[m];
  return "unknown";
}

bool core_layer_is_conv(const decomp_layer *l) {
  return l && l->type && strcmp(l->type, "Conv2d") == 0;
}

bool core_layer_is_linear(const decomp_layer *l) {
  return core_layer_names_linear(l) && l->in_channels > 0;
}

bool core_layer_names_linear(const decomp_layer *l) {
  return l && l->type && strcmp(l->type, "Linear") == 0;
}

bool core_layer_is_decomposable(const decomp_layer *l) {
  return core_layer_is_conv(l) || core_layer_is_linear(l);
}

void core_layer_padding(const decomp_layer *l, int64_t lo[2], int64_t hi[2]) {
  for (int a = 0; a < 2; a++) {
    switch (l->padding_kind) {
    case DECOMP_PADDING_SAME: {
      /* torch: total = d·(k−1), the odd element goes after. */
      int64_t total = l->dilation[a] * (l->kernel_size[a] - 1);
      lo[a] = total / 2;
      hi[a] = total - total / 2;
      break;
    }
    case DECOMP_PADDING_VALID:
      lo[a] = hi[a] = 0;
      break;
    default:
      lo[a] = hi[a] = l->padding[a];
      break;
    }
  }
}

int64_t core_conv_out_size(int64_t in, int64_t k, int64_t s, int64_t pad_lo,
                           int64_t pad_hi, int64_t d) {
  int64_t span = in + pad_lo + pad_hi - d * (k - 1) - 1;
  if (span < 0)
    return 0;
  return span / s + 1;
}

bool core_layer_output_size(const decomp_layer *l, int64_t out[2]) {
  if (l->input_size[0] <= 0 || l->input_size[1] <= 0)
    return false;
  int64_t lo[2], hi[2];
  core_layer_padding(l, lo, hi);
  for (int a = 0; a < 2; a++) {
    out[a] = core_conv_out_size(l->input_size[a], l->kernel_size[a],
                                l->stride[a], lo[a], hi[a], l->dilation[a]);
    if (out[a] <= 0)
      return false;
  }
  return true;
}

/* --- the name index ----------------------------------------------------- */

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static bool index_grow(decomp_spec *spec) {
  size_t cap = spec->index_cap ? 2 * spec->index_cap : 64;
  size_t *idx = calloc(cap, sizeof *idx);
  if (!idx)
    return false;
  for (size_t i = 0; i < spec->n; i++) {
    size_t j = hash_name(spec->layers[i].name) & (cap - 1);
    while (idx[j])
      j = (j + 1) & (cap - 1);
    idx[j] = i + 1;
  }
  free(spec->index);
  spec->index = idx;
  spec->index_cap = cap;
  return true;
}

const decomp_layer *decomp_spec_find(const decomp_spec *spec,
                                     const char *name) {
  if (!spec || !name || !spec->index_cap)
    return NULL;
  size_t j = hash_name(name) & (spec->index_cap - 1);
  while (spec->index[j]) {
    const decomp_layer *l = &spec->layers[spec->index[j] - 1];
    if (strcmp(l->name, name) == 0)
      return l;
    j = (j + 1) & (spec->index_cap - 1);
  }
  return NULL;
}

/* --- validation --------------------------------------------------------- */

static int bad(decomp_ctx *ctx, const char *where, const char *fmt, ...)
    DECOMP_PRINTF(3, 4);
static int bad(decomp_ctx *ctx, const char *where, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return core_fail(ctx, DECOMP_ERR_BAD_SPEC, "%s: %s", where, msg);
}

static void where_of(char *buf, size_t len, size_t i, const char *name) {
  if (name && *name)
    snprintf(buf, len, "layers[%zu] (%.200s)", i, name);
  else
    snprintf(buf, len, "layers[%zu]", i);
}

static int check_range2(decomp_ctx *ctx, const char *where, const char *field,
                        const int64_t v[2], int64_t lo, int64_t hi) {
  for (int a = 0; a < 2; a++) {
    if (v[a] < lo)
      return bad(ctx, where, "%s [%" PRId64 ", %" PRId64 "] must be >= %" PRId64,
                 field, v[0], v[1], lo);
    if (v[a] > hi)
      return bad(ctx, where,
                 "%s [%" PRId64 ", %" PRId64 "] is too large (at most %" PRId64
                 ")",
                 field, v[0], v[1], hi);
  }
  return DECOMP_OK;
}

/* The checks torch's nn.Conv2d makes (and the engine's size bounds), on a
 * layer whose fields are all set. */
static int layer_validate(decomp_ctx *ctx, const char *where,
                          const decomp_layer *l) {
  if (!l->name || !*l->name)
    return bad(ctx, where, "name must be a non-empty string");
  if (!l->type || !*l->type)
    return bad(ctx, where, "type must be a non-empty string");
  if (core_layer_names_linear(l) && (l->in_channels || l->out_channels)) {
    if (l->in_channels < 1 || l->in_channels > SPEC_MAX_FEATURES)
      return bad(ctx, where,
                 "in_features %" PRId64 " is out of range [1, %" PRId64 "]",
                 l->in_channels, SPEC_MAX_FEATURES);
    if (l->out_channels < 1 || l->out_channels > SPEC_MAX_FEATURES)
      return bad(ctx, where,
                 "out_features %" PRId64 " is out of range [1, %" PRId64 "]",
                 l->out_channels, SPEC_MAX_FEATURES);
    return DECOMP_OK;
  }
  if (!core_layer_is_conv(l))
    return DECOMP_OK;
  int rc;
  if (l->in_channels < 1 || l->in_channels > SPEC_MAX_CHANNELS)
    return bad(ctx, where, "in_channels %" PRId64 " is out of range [1, %" PRId64
               "]", l->in_channels, SPEC_MAX_CHANNELS);
  if (l->out_channels < 1 || l->out_channels > SPEC_MAX_CHANNELS)
    return bad(ctx, where, "out_channels %" PRId64 " is out of range [1, %" PRId64
               "]", l->out_channels, SPEC_MAX_CHANNELS);
  if ((rc = check_range2(ctx, where, "kernel_size", l->kernel_size, 1,
                         SPEC_MAX_KERNEL)) ||
      (rc = check_range2(ctx, where, "stride", l->stride, 1, SPEC_MAX_STRIDE)) ||
      (rc = check_range2(ctx, where, "dilation", l->dilation, 1,
                         SPEC_MAX_DILATION)))
    return rc;
  switch (l->padding_kind) {
  case DECOMP_PADDING_EXPLICIT:
    if ((rc = check_range2(ctx, where, "padding", l->padding, 0,
                           SPEC_MAX_PADDING)))
      return rc;
    break;
  case DECOMP_PADDING_SAME:
    if (l->stride[0] != 1 || l->stride[1] != 1)
      return bad(ctx, where,
                 "padding 'same' needs stride 1 (stride is [%" PRId64
                 ", %" PRId64 "]), as in torch",
                 l->stride[0], l->stride[1]);
    break;
  case DECOMP_PADDING_VALID:
    break;
  default:
    return bad(ctx, where, "padding kind %d is unknown", (int)l->padding_kind);
  }
  if (l->groups < 1)
    return bad(ctx, where, "groups %" PRId64 " must be >= 1", l->groups);
  if (l->in_channels % l->groups)
    return bad(ctx, where, "groups %" PRId64 " does not divide in_channels %" PRId64,
               l->groups, l->in_channels);
  if (l->out_channels % l->groups)
    return bad(ctx, where,
               "groups %" PRId64 " does not divide out_channels %" PRId64,
               l->groups, l->out_channels);
  if ((unsigned)l->padding_mode > DECOMP_PAD_CIRCULAR)
    return bad(ctx, where, "padding_mode %d is unknown", (int)l->padding_mode);
  bool has_in = l->input_size[0] != 0 || l->input_size[1] != 0;
  if (has_in) {
    if ((rc = check_range2(ctx, where, "input_size", l->input_size, 1,
                           SPEC_MAX_INPUT)))
      return rc;
    int64_t out[2];
    if (!core_layer_output_size(l, out))
      return bad(ctx, where,
                 "input_size [%" PRId64 ", %" PRId64
                 "] gives an empty output for kernel_size [%" PRId64
                 ", %" PRId64 "]",
                 l->input_size[0], l->input_size[1], l->kernel_size[0],
                 l->kernel_size[1]);
  }
  return DECOMP_OK;
}

/* --- building ----------------------------------------------------------- */

int decomp_spec_new(decomp_ctx *ctx, decomp_spec **out) {
  decomp_spec *s = calloc(1, sizeof *s);
  if (!s)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  s->ctx = ctx;
  *out = s;
  return DECOMP_OK;
}

void decomp_spec_free(decomp_spec *spec) {
  if (!spec)
    return;
  for (size_t i = 0; i < spec->n; i++) {
    free((char *)spec->layers[i].name);
    free((char *)spec->layers[i].type);
  }
  free(spec->layers);
  free(spec->index);
  free(spec);
}

/* Append a validated layer (copying its strings). `where` names it in
 * errors. */
static int spec_append(decomp_ctx *ctx, decomp_spec *spec, const char *where,
                       const decomp_layer *layer) {
  int rc = layer_validate(ctx, where, layer);
  if (rc)
    return rc;
  if (decomp_spec_find(spec, layer->name))
    return bad(ctx, where, "duplicate layer name %s", layer->name);
  if (spec->n == spec->cap) {
    size_t cap = spec->cap ? 2 * spec->cap : 16;
    decomp_layer *ls = realloc(spec->layers, cap * sizeof *ls);
    if (!ls)
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    spec->layers = ls;
    spec->cap = cap;
  }
  if (2 * (spec->n + 1) >= spec->index_cap && !index_grow(spec))
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  decomp_layer copy = *layer;
  copy.name = strdup(layer->name);
  copy.type = strdup(layer->type);
  if (!copy.name || !copy.type) {
    free((char *)copy.name);
    free((char *)copy.type);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  if (core_layer_is_linear(&copy)) {
    core_layer_linear_fields(&copy);
  } else if (!core_layer_is_conv(&copy)) {
    /* Only name and type mean anything; keep the rest zero so that two
     * equal specs compare equal field by field. */
    const char *n = copy.name, *t = copy.type;
    memset(&copy, 0, sizeof copy);
    copy.name = n;
    copy.type = t;
  } else if (copy.padding_kind != DECOMP_PADDING_EXPLICIT) {
    int64_t lo[2], hi[2];
    core_layer_padding(&copy, lo, hi);
    copy.padding[0] = lo[0];
    copy.padding[1] = lo[1];
  }
  spec->layers[spec->n] = copy;
  size_t j = hash_name(copy.name) & (spec->index_cap - 1);
  while (spec->index[j])
    j = (j + 1) & (spec->index_cap - 1);
  spec->index[j] = spec->n + 1;
  spec->n++;
  return DECOMP_OK;
}

int decomp_spec_add(decomp_ctx *ctx, decomp_spec *spec,
                    const decomp_layer *layer) {
  if (!spec || !layer)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_spec_add: NULL argument");
  char where[256];
  where_of(where, sizeof where, spec->n, layer->name);
  return spec_append(ctx, spec, where, layer);
}

size_t decomp_spec_count(const decomp_spec *spec) { return spec ? spec->n : 0; }

const decomp_layer *decomp_spec_at(const decomp_spec *spec, size_t i) {
  return spec && i < spec->n ? &spec->layers[i] : NULL;
}

/* --- parsing ------------------------------------------------------------ */

static const char *json_kind(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "a list";
  case JSON_STRING: return "a string";
  case JSON_INTEGER: return "an integer";
  case JSON_REAL: return "a number with a fraction";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  default: return "null";
  }
}

/* An int field: `v` must be a JSON integer. */
static int get_int(decomp_ctx *ctx, const char *where, const char *field,
                   const json_t *v, int64_t *out) {
  if (!json_is_integer(v))
    return bad(ctx, where, "%s must be an integer, not %s", field, json_kind(v));
  *out = (int64_t)json_integer_value(v);
  return DECOMP_OK;
}

/* An int or an [h, w] pair of ints. */
static int get_pair(decomp_ctx *ctx, const char *where, const char *field,
                    const json_t *v, int64_t out[2]) {
  if (json_is_integer(v)) {
    out[0] = out[1] = (int64_t)json_integer_value(v);
    return DECOMP_OK;
  }
  if (json_is_array(v) && json_array_size(v) == 2 &&
      json_is_integer(json_array_get(v, 0)) &&
      json_is_integer(json_array_get(v, 1))) {
    out[0] = (int64_t)json_integer_value(json_array_get(v, 0));
    out[1] = (int64_t)json_integer_value(json_array_get(v, 1));
    return DECOMP_OK;
  }
  if (json_is_array(v))
    return bad(ctx, where, "%s must be an integer or a list of 2 integers",
               field);
  return bad(ctx, where, "%s must be an integer or [h, w], not %s", field,
             json_kind(v));
}

static const char *const conv_fields[] = {
    "name",     "type",   "in_channels", "out_channels", "kernel_size",
    "stride",   "padding", "dilation",   "groups",       "bias",
    "padding_mode", "input_size", NULL};

static const char *const linear_fields[] = {"name", "type", "in_features",
                                            "out_features", "bias", NULL};

/* Any field of `obj` not in `fields` is an error: a typo ("strides") must
 * not silently become a default. */
static int only_fields(decomp_ctx *ctx, const char *where, const json_t *obj,
                       const char *const *fields) {
  const char *key;
  const json_t *val;
  json_object_foreach((json_t *)obj, key, val) {
    bool known = false;
    for (const char *const *f = fields; *f; f++)
      if (strcmp(*f, key) == 0)
        known = true;
    if (!known)
      return bad(ctx, where, "unknown field %.100s", key);
  }
  return DECOMP_OK;
}

static int get_bias(decomp_ctx *ctx, const char *where, const json_t *obj,
                    bool *bias) {
  const json_t *v = json_object_get(obj, "bias");
  if (!v)
    return DECOMP_OK;
  if (!json_is_boolean(v))
    return bad(ctx, where, "bias must be true or false, not %s", json_kind(v));
  *bias = json_is_true(v);
  return DECOMP_OK;
}

/* A Linear layer: in_features, out_features, bias (default true, as in
 * torch), held in in_channels/out_channels as a 1x1 conv's would be. */
static int parse_linear(decomp_ctx *ctx, const char *where, const json_t *obj,
                        decomp_layer *l) {
  int rc = only_fields(ctx, where, obj, linear_fields);
  if (rc)
    return rc;
  static const char *const required[] = {"in_features", "out_features"};
  for (size_t r = 0; r < 2; r++)
    if (!json_object_get(obj, required[r]))
      return bad(ctx, where, "missing field %s", required[r]);
  l->bias = true;
  if ((rc = get_int(ctx, where, "in_features",
                    json_object_get(obj, "in_features"), &l->in_channels)) ||
      (rc = get_int(ctx, where, "out_features",
                    json_object_get(obj, "out_features"), &l->out_channels)) ||
      (rc = get_bias(ctx, where, obj, &l->bias)))
    return rc;
  core_layer_linear_fields(l);
  return layer_validate(ctx, where, l);
}

void core_layer_linear_fields(decomp_layer *l) {
  l->kernel_size[0] = l->kernel_size[1] = 1;
  l->stride[0] = l->stride[1] = 1;
  l->dilation[0] = l->dilation[1] = 1;
  l->padding[0] = l->padding[1] = 0;
  l->padding_kind = DECOMP_PADDING_EXPLICIT;
  l->padding_mode = DECOMP_PAD_ZEROS;
  l->groups = 1;
  l->input_size[0] = l->input_size[1] = 0;
}

static int parse_layer(decomp_ctx *ctx, size_t i, const json_t *obj,
                       decomp_layer *l) {
  char where[256];
  const json_t *jn = json_is_object(obj) ? json_object_get(obj, "name") : NULL;
  where_of(where, sizeof where, i,
           json_is_string(jn) ? json_string_value(jn) : NULL);
  if (!json_is_object(obj))
    return bad(ctx, where, "a layer must be an object, not %s", json_kind(obj));
  if (!jn)
    return bad(ctx, where, "missing field name");
  if (!json_is_string(jn) || !*json_string_value(jn))
    return bad(ctx, where, "name must be a non-empty string");
  const json_t *jt = json_object_get(obj, "type");
  if (!jt)
    return bad(ctx, where, "missing field type");
  if (!json_is_string(jt) || !*json_string_value(jt))
    return bad(ctx, where, "type must be a non-empty string");

  memset(l, 0, sizeof *l);
  l->name = json_string_value(jn);
  l->type = json_string_value(jt);
  /* A Linear given by name and type only (as specs written before Linear
   * layers could be decomposed have it) stays a layer known by name. */
  if (core_layer_names_linear(l) && json_object_size(obj) > 2)
    return parse_linear(ctx, where, obj, l);
  if (!core_layer_is_conv(l))
    return DECOMP_OK; /* other modules: name and type only */

  int rc = only_fields(ctx, where, obj, conv_fields);
  if (rc)
    return rc;

  /* Defaults of torch's nn.Conv2d. */
  l->stride[0] = l->stride[1] = 1;
  l->dilation[0] = l->dilation[1] = 1;
  l->groups = 1;
  l->bias = true;
  l->padding_kind = DECOMP_PADDING_EXPLICIT;
  l->padding_mode = DECOMP_PAD_ZEROS;

  static const char *const required[] = {"in_channels", "out_channels",
                                         "kernel_size"};
  for (size_t r = 0; r < 3; r++)
    if (!json_object_get(obj, required[r]))
      return bad(ctx, where, "missing field %s", required[r]);
  if ((rc = get_int(ctx, where, "in_channels",
                    json_object_get(obj, "in_channels"), &l->in_channels)) ||
      (rc = get_int(ctx, where, "out_channels",
                    json_object_get(obj, "out_channels"), &l->out_channels)) ||
      (rc = get_pair(ctx, where, "kernel_size",
                     json_object_get(obj, "kernel_size"), l->kernel_size)))
    return rc;
  const json_t *v;
  if ((v = json_object_get(obj, "stride")) &&
      (rc = get_pair(ctx, where, "stride", v, l->stride)))
    return rc;
  if ((v = json_object_get(obj, "dilation")) &&
      (rc = get_pair(ctx, where, "dilation", v, l->dilation)))
    return rc;
  if ((v = json_object_get(obj, "groups")) &&
      (rc = get_int(ctx, where, "groups", v, &l->groups)))
    return rc;
  if ((v = json_object_get(obj, "padding"))) {
    if (json_is_string(v)) {
      const char *s = json_string_value(v);
      if (strcmp(s, "same") == 0)
        l->padding_kind = DECOMP_PADDING_SAME;
      else if (strcmp(s, "valid") == 0)
        l->padding_kind = DECOMP_PADDING_VALID;
      else
        return bad(ctx, where,
                   "padding '%.60s' is unknown (an integer, [h, w], 'same' or "
                   "'valid')",
                   s);
    } else if ((rc = get_pair(ctx, where, "padding", v, l->padding))) {
      return rc;
    }
  }
  if ((rc = get_bias(ctx, where, obj, &l->bias)))
    return rc;
  if ((v = json_object_get(obj, "padding_mode"))) {
    if (!json_is_string(v))
      return bad(ctx, where, "padding_mode must be a string, not %s",
                 json_kind(v));
    const char *s = json_string_value(v);
    size_t m;
    for (m = 0; m < 4; m++)
      if (strcmp(s, pad_mode_names[m]) == 0)
        break;
    if (m == 4)
      return bad(ctx, where,
                 "padding_mode '%.60s' is unknown (zeros, reflect, replicate "
                 "or circular)",
                 s);
    l->padding_mode = (decomp_padding_mode)m;
  }
  if ((v = json_object_get(obj, "input_size")) && !json_is_null(v)) {
    if ((rc = get_pair(ctx, where, "input_size", v, l->input_size)))
      return rc;
    if (l->input_size[0] < 1 || l->input_size[1] < 1)
      return bad(ctx, where,
                 "input_size [%" PRId64 ", %" PRId64 "] must be >= 1",
                 l->input_size[0], l->input_size[1]);
  }
  return layer_validate(ctx, where, l);
}

int decomp_spec_parse(decomp_ctx *ctx, const char *json, size_t len,
                      decomp_spec **out) {
  if (!json || !out)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_spec_parse: NULL argument");
  json_error_t jerr;
  json_t *root =
      json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  if (!root)
    return core_fail(ctx, DECOMP_ERR_BAD_SPEC,
                     "spec: not valid JSON (line %d, column %d): %s",
                     jerr.line, jerr.column, jerr.text);
  decomp_spec *spec = NULL;
  int rc;
  const json_t *list = root;
  if (json_is_object(root)) {
    list = json_object_get(root, "layers");
    if (!list) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SPEC, "spec: no \"layers\" list");
      goto fail;
    }
  }
  if (!json_is_array(list)) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_SPEC,
                   "spec: %s must be a list of layers, not %s",
                   list == root ? "the spec" : "\"layers\"", json_kind(list));
    goto fail;
  }
  if ((rc = decomp_spec_new(ctx, &spec)))
    goto fail;
  for (size_t i = 0; i < json_array_size(list); i++) {
    decomp_layer l;
    if ((rc = parse_layer(ctx, i, json_array_get(list, i), &l)))
      goto fail;
    char where[256];
    where_of(where, sizeof where, i, l.name);
    if ((rc = spec_append(ctx, spec, where, &l)))
      goto fail;
  }
  json_decref(root);
  *out = spec;
  return DECOMP_OK;
fail:
  decomp_spec_free(spec);
  json_decref(root);
  return rc;
}

/* --- output ------------------------------------------------------------- */

static json_t *pair(const int64_t v[2]) {
  return json_pack("[II]", (json_int_t)v[0], (json_int_t)v[1]);
}

char *decomp_spec_to_json(const decomp_spec *spec) {
  if (!spec)
    return NULL;
  json_t *layers = json_array();
  json_t *root = json_pack("{so}", "layers", layers);
  if (!root)
    return NULL;
  for (size_t i = 0; i < spec->n; i++) {
    const decomp_layer *l = &spec->layers[i];
    json_t *o;
    if (core_layer_is_linear(l)) {
      o = json_pack("{sssssIsIsb}", "name", l->name, "type", l->type,
                    "in_features", (json_int_t)l->in_channels, "out_features",
                    (json_int_t)l->out_channels, "bias", (int)l->bias);
    } else if (!core_layer_is_conv(l)) {
      o = json_pack("{ssss}", "name", l->name, "type", l->type);
    } else {
      json_t *pad;
      if (l->padding_kind == DECOMP_PADDING_SAME)
        pad = json_string("same");
      else if (l->padding_kind == DECOMP_PADDING_VALID)
        pad = json_string("valid");
      else
        pad = pair(l->padding);
      o = json_pack("{sssssIsIsososososIsbss}", "name", l->name, "type", l->type,
                    "in_channels", (json_int_t)l->in_channels, "out_channels",
                    (json_int_t)l->out_channels, "kernel_size",
                    pair(l->kernel_size), "stride", pair(l->stride), "padding",
                    pad, "dilation", pair(l->dilation), "groups",
                    (json_int_t)l->groups, "bias", (int)l->bias,
                    "padding_mode", decomp_padding_mode_name(l->padding_mode));
      if (o && l->input_size[0] > 0 &&
          json_object_set_new(o, "input_size", pair(l->input_size))) {
        json_decref(o);
        o = NULL;
      }
    }
    if (!o || json_array_append_new(layers, o)) {
      json_decref(root);
      return NULL;
    }
  }
  char *s = json_dumps(root, JSON_PRESERVE_ORDER);
  json_decref(root);
  return s;
}

/* --- checking against weights ------------------------------------------- */

static void shape_str(char *buf, size_t len, const int64_t *shape, int ndim) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, len - o, "[");
  for (int i = 0; i < ndim && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, "%s%" PRId64, i ? ", " : "",
                          shape[i]);
  if (o < len)
    snprintf(buf + o, len - o, "]");
}

/* "NAME.what", or NULL when out of memory. */
static char *tensor_key(const char *name, const char *what) {
  size_t n = strlen(name) + strlen(what) + 2;
  char *key = malloc(n);
  if (key)
    snprintf(key, n, "%s.%s", name, what);
  return key;
}

static int check_tensor(decomp_ctx *ctx, const decomp_layer *l,
                        const decomp_weights *w, const char *what,
                        const int64_t *want, int ndim) {
  char got_s[256], want_s[256];
  char *key = tensor_key(l->name, what);
  if (!key)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  const decomp_tensor *t = decomp_weights_find(w, key);
  free(key);
  if (!t)
    return core_fail(ctx, DECOMP_ERR_SPEC_MISMATCH,
                     "%s: no tensor %s.%s in the weights", l->name, l->name,
                     what);
  if (!decomp_dtype_is_float(t->dtype))
    return core_fail(ctx, DECOMP_ERR_SPEC_MISMATCH,
                     "%s: %s has dtype %s, not a floating type", l->name, what,
                     decomp_dtype_name(t->dtype));
  bool same = t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++)
    same = t->shape[i] == want[i];
  if (!same) {
    shape_str(got_s, sizeof got_s, t->shape, t->ndim);
    shape_str(want_s, sizeof want_s, want, ndim);
    return core_fail(ctx, DECOMP_ERR_SPEC_MISMATCH,
                     "%s: %s has shape %s, spec says %s", l->name, what, got_s,
                     want_s);
  }
  return DECOMP_OK;
}

int decomp_spec_check(decomp_ctx *ctx, const decomp_spec *spec,
                      const decomp_weights *w) {
  if (!spec || !w)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_spec_check: NULL argument");
  for (size_t i = 0; i < spec->n; i++) {
    const decomp_layer *l = &spec->layers[i];
    if (!core_layer_is_decomposable(l))
      continue;
    int64_t wshape[4] = {l->out_channels, l->in_channels / l->groups,
                         l->kernel_size[0], l->kernel_size[1]};
    int rc = check_tensor(ctx, l, w, "weight", wshape,
                          core_layer_is_linear(l) ? 2 : 4);
    if (rc)
      return rc;
    if (l->bias) {
      if ((rc = check_tensor(ctx, l, w, "bias", &l->out_channels, 1)))
        return rc;
    } else {
      char *key = tensor_key(l->name, "bias");
      if (!key)
        return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      bool has = decomp_weights_find(w, key) != NULL;
      free(key);
      if (has)
        return core_fail(ctx, DECOMP_ERR_SPEC_MISMATCH,
                         "%s: the weights have %s.bias but the spec says "
                         "bias: false",
                         l->name, l->name);
    }
  }
  return DECOMP_OK;
}
