/* info.c — decompose_info.json (DESIGN "Formats"): building it for a run,
 * and reading one back — ours (version 1, checked field by field) or the
 * reference tool's list of {"ori_layer_info", "mode", "decom_nodes"} —
 * into our version-1 form. The two new convs of a layer are derived here in
 * one place (info_modules) for both directions, so what we write and what
 * we accept cannot drift apart. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

#define INFO_FORMAT "decompd.decompose_info"
#define INFO_DUMP_FLAGS (JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10))

/* Fields of a conv known to a reader: the reference's info files lack the
 * padding, bias and padding mode. */
enum {
  KNOW_PADDING = 1u << 0,
  KNOW_BIAS = 1u << 1,
  KNOW_MODE = 1u << 2,
  KNOW_INPUT = 1u << 3,
  KNOW_ALL = KNOW_PADDING | KNOW_BIAS | KNOW_MODE,
};

static json_t *pair(const int64_t v[2]) {
  return json_pack("[II]", (json_int_t)v[0], (json_int_t)v[1]);
}

/* A number that is an integer when it is one (counts), else a real. */
static json_t *number(double x) {
  if (x == floor(x) && fabs(x) < 9007199254740992.0)
    return json_integer((json_int_t)x);
  return json_real(x);
}

/* A Linear's fields as the layer spec names them. */
static json_t *linear_json(const char *name, const decomp_layer *l) {
  json_t *o = json_object();
  if (!o)
    return NULL;
  int bad = 0;
  if (name)
    bad |= json_object_set_new(o, "name", json_string(name));
  bad |= json_object_set_new(o, "type", json_string("Linear"));
  bad |= json_object_set_new(o, "in_features", json_integer(l->in_channels));
  bad |= json_object_set_new(o, "out_features", json_integer(l->out_channels));
  bad |= json_object_set_new(o, "bias", json_boolean(l->bias));
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* The conv's (or Linear's) fields as the layer spec names them. */
static json_t *conv_json(const char *name, const decomp_layer *l,
                         unsigned known) {
  if (core_layer_is_linear(l))
    return linear_json(name, l);
  json_t *o = json_object();
  if (!o)
    return NULL;
  int bad = 0;
  if (name)
    bad |= json_object_set_new(o, "name", json_string(name));
  bad |= json_object_set_new(o, "type", json_string("Conv2d"));
  bad |= json_object_set_new(o, "in_channels", json_integer(l->in_channels));
  bad |= json_object_set_new(o, "out_channels", json_integer(l->out_channels));
  bad |= json_object_set_new(o, "kernel_size", pair(l->kernel_size));
  bad |= json_object_set_new(o, "stride", pair(l->stride));
  if (known & KNOW_PADDING)
    bad |= json_object_set_new(
        o, "padding",
        l->padding_kind == DECOMP_PADDING_SAME    ? json_string("same")
        : l->padding_kind == DECOMP_PADDING_VALID ? json_string("valid")
                                                  : pair(l->padding));
  bad |= json_object_set_new(o, "dilation", pair(l->dilation));
  bad |= json_object_set_new(o, "groups", json_integer(l->groups));
  if (known & KNOW_BIAS)
    bad |= json_object_set_new(o, "bias", json_boolean(l->bias));
  if (known & KNOW_MODE)
    bad |= json_object_set_new(
        o, "padding_mode", json_string(decomp_padding_mode_name(l->padding_mode)));
  if ((known & KNOW_INPUT) && l->input_size[0] > 0)
    bad |= json_object_set_new(o, "input_size", pair(l->input_size));
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* The two modules replacing `l` at rank R (DESIGN "The decomposition",
 * "Beyond spatial SVD"). Spatial: the first conv keeps its own axis's
 * kernel, stride, padding and dilation and gets 1, 1, 0, 1 on the other.
 * Channel: the first conv is the layer's own with g·R outputs, the second
 * a 1x1 (stride 1, padding 0, dilation 1, zeros) with the same groups.
 * Linear: in → R, then R → out. Only the second has the bias. */
static void info_modules(const decomp_layer *l, core_method method,
                         core_order order, int64_t R, decomp_layer out[2]) {
  if (method != CORE_METHOD_SPATIAL) {
    out[0] = out[1] = *l;
    out[0].out_channels = out[1].in_channels = l->groups * R;
    out[0].bias = false;
    decomp_layer *m = &out[1];
    m->kernel_size[0] = m->kernel_size[1] = 1;
    m->stride[0] = m->stride[1] = 1;
    m->padding[0] = m->padding[1] = 0;
    m->padding_kind = DECOMP_PADDING_EXPLICIT;
    m->dilation[0] = m->dilation[1] = 1;
    m->padding_mode = DECOMP_PAD_ZEROS;
    m->input_size[0] = m->input_size[1] = 0;
    if (l->input_size[0] > 0 && !core_layer_is_linear(l))
      core_layer_output_size(l, m->input_size);
    return;
  }
  int first_ax = order == CORE_ORDER_VERTICAL_FIRST ? 0 : 1;
  for (int c = 0; c < 2; c++) {
    decomp_layer *m = &out[c];
    *m = *l;
    int ax = c == 0 ? first_ax : 1 - first_ax; /* the axis this conv keeps */
    m->in_channels = c == 0 ? l->in_channels : l->groups * R;
    m->out_channels = c == 0 ? l->groups * R : l->out_channels;
    m->kernel_size[1 - ax] = 1;
    m->stride[1 - ax] = 1;
    m->padding[1 - ax] = 0;
    m->dilation[1 - ax] = 1;
    m->bias = c == 1 && l->bias;
    m->input_size[0] = m->input_size[1] = 0;
  }
  if (l->input_size[0] > 0) {
    out[0].input_size[0] = l->input_size[0];
    out[0].input_size[1] = l->input_size[1];
    core_layer_output_size(&out[0], out[1].input_size);
  }
}

static json_t *modules_json(const decomp_layer *l, core_method method,
                            core_order order, int64_t R, unsigned known) {
  decomp_layer m[2];
  info_modules(l, method, order, R, m);
  json_t *arr = json_array();
  for (int c = 0; arr && c < 2; c++) {
    size_t len = strlen(l->name) + 3;
    char *name = malloc(len);
    if (!name) {
      json_decref(arr);
      return NULL;
    }
    snprintf(name, len, "%s.%d", l->name, c);
    if (json_array_append_new(arr, conv_json(name, &m[c], known))) {
      free(name);
      json_decref(arr);
      return NULL;
    }
    free(name);
  }
  return arr;
}

static json_t *changes_entry(const char *name) {
  size_t len = strlen(name) + 3;
  char *a = malloc(len), *b = malloc(len);
  json_t *v = NULL;
  if (a && b) {
    snprintf(a, len, "%s.0", name);
    snprintf(b, len, "%s.1", name);
    v = json_pack("[ss]", a, b);
  }
  free(a);
  free(b);
  return v;
}

static json_t *values_json(const double *v, size_t n) {
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < n; i++)
    if (json_array_append_new(arr, json_real(v[i]))) {
      json_decref(arr);
      return NULL;
    }
  return arr;
}

/* Singular values of group 0 as "singular_values", and every group's as
 * "singular_values_by_group" when there are several. */
static int add_spectra(json_t *o, const core_info_layer *L) {
  size_t k = (size_t)L->view.max_rank, g = (size_t)L->view.groups;
  if (!L->sigma || !k || !g)
    return 0;
  int bad = json_object_set_new(o, "singular_values", values_json(L->sigma, k));
  if (g > 1) {
    json_t *all = json_array();
    for (size_t j = 0; all && j < g; j++)
      if (json_array_append_new(all, values_json(L->sigma + j * k, k))) {
        json_decref(all);
        all = NULL;
      }
    bad |= json_object_set_new(o, "singular_values_by_group", all);
  }
  return bad;
}

int core_info_build(decomp_ctx *ctx, const decomp_policy *policy,
                    const core_info_run *run, const core_info_layer *layers,
                    size_t n, char **out) {
  const char *source_digest = run->source_digest;
  const char *source_format = run->source_format;
  bool record_spectra = run->record_spectra;
  json_t *root = NULL, *arr = NULL, *skipped = NULL, *changes = NULL;
  json_t *pol = NULL;
  int bad = 0;
  char *ptext = decomp_policy_to_json(policy);
  if (!ptext)
    goto nomem;
  pol = json_loads(ptext, 0, NULL);
  free(ptext);
  if (!pol)
    return core_fail(ctx, DECOMP_ERR_INTERNAL, "policy JSON does not parse");
  root = json_object();
  arr = json_array();
  skipped = json_array();
  changes = json_object();
  if (!root || !arr || !skipped || !changes)
    goto nomem;
  bad |= json_object_set_new(root, "format", json_string(INFO_FORMAT));
  bad |= json_object_set_new(root, "version", json_integer(1));
  bad |= json_object_set_new(root, "created_by",
                             json_string("decompd " DECOMP_VERSION));
  bad |= json_object_set_new(
      root, "source",
      json_pack("{s:s?,s:s?}", "digest", source_digest, "format",
                source_format));
  bad |= json_object_set(root, "policy", pol);
  if (run->profiled) {
    json_t *shape = run->profile_input_shape
                        ? json_loads(run->profile_input_shape,
                                     JSON_DECODE_ANY, NULL)
                        : NULL;
    bad |= json_object_set_new(
        root, "profile",
        json_pack("{s:s?,s:s?,s:s?,s:o?}", "digest", run->profile_digest,
                  "device_name", run->profile_device, "dtype",
                  run->profile_dtype, "input_shape", shape));
  }
  if (run->calibrated)
    bad |= json_object_set_new(
        root, "calibration",
        json_pack("{s:s?,s:I}", "digest", run->calibration_digest, "layers",
                  (json_int_t)run->calibration_layers));

  double p_before = 0, p_after = 0, m_before = 0, m_after = 0, worst = 0;
  double t_before = 0, t_after = 0; /* predicted, over profiled layers */
  bool estimated = false; /* some conv had no input_size */
  size_t ndec = 0;
  for (size_t i = 0; i < n && !bad; i++) {
    const core_info_layer *L = &layers[i];
    const decomp_layer *l = L->layer;
    if (L->rank <= 0) {
      json_t *s = json_pack("{s:s,s:s}", "name", l->name, "reason",
                            L->skip_reason ? L->skip_reason : "");
      if (s && record_spectra)
        bad |= add_spectra(s, L);
      bad |= json_array_append_new(skipped, s);
      if (L->considered) { /* at full cost */
        t_before += L->view.latency_before;
        t_after += L->view.latency_before;
        estimated |= L->view.macs_estimated;
        p_before += L->view.params_before;
        p_after += L->view.params_before;
        m_before += L->view.macs_before;
        m_after += L->view.macs_before;
      }
      continue;
    }
    const core_layer_view *v = &L->view;
    estimated |= v->macs_estimated;
    double R = (double)L->rank;
    double pa = R * v->params_per_rank + v->params_bias;
    double ma = R * v->macs_per_rank;
    double rel = L->energy_total > 0
                     ? sqrt(L->energy_discarded / L->energy_total)
                     : 0.0;
    double kept = L->energy_total > 0
                      ? 1.0 - L->energy_discarded / L->energy_total
                      : 1.0;
    json_t *stats = json_object();
    if (!stats)
      goto nomem;
    bad |= json_object_set_new(stats, "params_before",
                               number(v->params_before));
    bad |= json_object_set_new(stats, "params_after", number(pa));
    bad |= json_object_set_new(stats, "macs_before", number(v->macs_before));
    if (v->macs_estimated)
      bad |= json_object_set_new(stats, "macs_estimated", json_true());
    bad |= json_object_set_new(stats, "macs_after", number(ma));
    bad |= json_object_set_new(
        stats, "macs_ratio",
        json_real(v->macs_before > 0 ? ma / v->macs_before : 0.0));
    bad |= json_object_set_new(stats, "relative_error", json_real(rel));
    bad |= json_object_set_new(stats, "energy_retained", json_real(kept));
    if (v->profiled) {
      double ta = v->latency ? core_curve_at(v->latency, L->rank)
                             : v->latency_before;
      bad |= json_object_set_new(stats, "latency_before",
                                 json_real(v->latency_before));
      bad |= json_object_set_new(stats, "latency_after", json_real(ta));
      t_before += v->latency_before;
      t_after += ta;
    }
    if (v->whitened) {
      double orel = L->out_total > 0 ? sqrt(L->out_discarded / L->out_total)
                                     : 0.0;
      bad |= json_object_set_new(stats, "output_relative_error",
                                 json_real(orel));
      bad |= json_object_set_new(
          stats, "output_energy_retained",
          json_real(L->out_total > 0 ? 1.0 - L->out_discarded / L->out_total
                                     : 1.0));
      bad |= json_object_set_new(stats, "samples",
                                 json_integer((json_int_t)L->samples));
    }
    if (record_spectra)
      bad |= add_spectra(stats, L);
    json_t *o = json_object();
    if (!o) {
      json_decref(stats);
      goto nomem;
    }
    bad |= json_object_set_new(o, "name", json_string(l->name));
    bad |= json_object_set_new(o, "method",
                               json_string(core_method_name(v->method)));
    bad |= json_object_set_new(o, "rank", json_integer(L->rank));
    bad |= json_object_set_new(o, "max_rank", json_integer(v->max_rank));
    if (v->method == CORE_METHOD_SPATIAL)
      bad |= json_object_set_new(o, "order",
                                 json_string(core_order_name(v->order)));
    bad |= json_object_set_new(o, "original",
                               conv_json(NULL, l, KNOW_ALL | KNOW_INPUT));
    bad |= json_object_set_new(
        o, "modules",
        modules_json(l, v->method, v->order, L->rank, KNOW_ALL | KNOW_INPUT));
    bad |= json_object_set_new(o, "stats", stats);
    bad |= json_array_append_new(arr, o);
    bad |= json_object_set_new(changes, l->name, changes_entry(l->name));
    p_before += v->params_before;
    p_after += pa;
    m_before += v->macs_before;
    m_after += ma;
    worst = rel > worst ? rel : worst;
    ndec++;
  }
  if (bad)
    goto nomem;
  json_t *summary = json_object();
  if (!summary)
    goto nomem;
  bad |= json_object_set_new(summary, "layers_decomposed", json_integer((json_int_t)ndec));
  bad |= json_object_set_new(summary, "layers_skipped",
                             json_integer((json_int_t)(n - ndec)));
  bad |= json_object_set_new(summary, "params_before", number(p_before));
  bad |= json_object_set_new(summary, "params_after", number(p_after));
  bad |= json_object_set_new(summary, "macs_before", number(m_before));
  bad |= json_object_set_new(summary, "macs_after", number(m_after));
  if (estimated)
    bad |= json_object_set_new(summary, "macs_estimated", json_true());
  if (run->profiled && run->latency_other >= 0) { /* the whole model's */
    t_before += run->latency_other;
    t_after += run->latency_other;
    bad |= json_object_set_new(summary, "latency_other",
                               json_real(run->latency_other));
  }
  if (run->profiled) {
    bad |= json_object_set_new(summary, "latency_before", json_real(t_before));
    bad |= json_object_set_new(summary, "latency_after", json_real(t_after));
  }
  bad |= json_object_set_new(summary, "worst_relative_error", json_real(worst));
  if (run->peak_rss_bytes > 0)
    bad |= json_object_set_new(summary, "peak_rss_bytes",
                               json_integer((json_int_t)run->peak_rss_bytes));
  bad |= json_object_set(root, "layers", arr);
  bad |= json_object_set(root, "skipped", skipped);
  bad |= json_object_set(root, "changes", changes);
  bad |= json_object_set_new(root, "summary", summary);
  if (bad)
    goto nomem;
  *out = json_dumps(root, INFO_DUMP_FLAGS);
  if (!*out)
    goto nomem;
  json_decref(root);
  json_decref(arr);
  json_decref(skipped);
  json_decref(changes);
  json_decref(pol);
  return DECOMP_OK;
nomem:
  json_decref(root);
  json_decref(arr);
  json_decref(skipped);
  json_decref(changes);
  json_decref(pol);
  return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
}

/* --- reading ------------------------------------------------------------ */

typedef struct reader {
  decomp_ctx *ctx;
  const char *where; /* "layer conv1" / "entry 3", for messages */
} reader;

#define BAD(rd, ...) core_fail((rd)->ctx, DECOMP_ERR_BAD_INFO, __VA_ARGS__)

static bool get_int(json_t *v, int64_t *out) {
  if (!json_is_integer(v))
    return false;
  *out = json_integer_value(v);
  return true;
}

/* An int or an [h, w] pair of ints, each >= min. */
static int get_pair(const reader *rd, json_t *obj, const char *key,
                    int64_t min, bool required, int64_t out[2]) {
  json_t *v = json_object_get(obj, key);
  if (!v) {
    if (required)
      return BAD(rd, "%s: missing field %s", rd->where, key);
    return DECOMP_OK;
  }
  int64_t a, b;
  if (get_int(v, &a)) {
    b = a;
  } else if (!json_is_array(v) || json_array_size(v) != 2 ||
             !get_int(json_array_get(v, 0), &a) ||
             !get_int(json_array_get(v, 1), &b)) {
    return BAD(rd, "%s: %s is not an int or a pair of ints", rd->where, key);
  }
  if (a < min || b < min)
    return BAD(rd, "%s: %s must be at least %lld", rd->where, key,
               (long long)min);
  out[0] = a;
  out[1] = b;
  return DECOMP_OK;
}

/* A Conv2d's fields from `obj` into *l (defaults for the optional ones,
 * noted in *known). */
static int parse_conv(const reader *rd, json_t *obj, decomp_layer *l,
                      unsigned *known) {
  if (!json_is_object(obj))
    return BAD(rd, "%s: not a JSON object", rd->where);
  *l = (decomp_layer){.type = "Conv2d",
                      .stride = {1, 1},
                      .dilation = {1, 1},
                      .groups = 1};
  *known = 0;
  json_t *t = json_object_get(obj, "type");
  if (t && !(json_is_string(t) && strcmp(json_string_value(t), "Conv2d") == 0))
    return BAD(rd, "%s: type is not Conv2d", rd->where);
  if (!get_int(json_object_get(obj, "in_channels"), &l->in_channels) ||
      l->in_channels < 1)
    return BAD(rd, "%s: in_channels is missing or not a positive int",
               rd->where);
  if (!get_int(json_object_get(obj, "out_channels"), &l->out_channels) ||
      l->out_channels < 1)
    return BAD(rd, "%s: out_channels is missing or not a positive int",
               rd->where);
  int rc;
  if ((rc = get_pair(rd, obj, "kernel_size", 1, true, l->kernel_size)) ||
      (rc = get_pair(rd, obj, "stride", 1, false, l->stride)) ||
      (rc = get_pair(rd, obj, "dilation", 1, false, l->dilation)))
    return rc;
  json_t *g = json_object_get(obj, "groups");
  if (g && (!get_int(g, &l->groups) || l->groups < 1))
    return BAD(rd, "%s: groups is not a positive int", rd->where);
  if (l->in_channels % l->groups || l->out_channels % l->groups)
    return BAD(rd, "%s: channels %lld -> %lld are not divisible by groups %lld",
               rd->where, (long long)l->in_channels,
               (long long)l->out_channels, (long long)l->groups);
  json_t *p = json_object_get(obj, "padding");
  if (p) {
    *known |= KNOW_PADDING;
    if (json_is_string(p)) {
      const char *s = json_string_value(p);
      if (strcmp(s, "same") == 0)
        l->padding_kind = DECOMP_PADDING_SAME;
      else if (strcmp(s, "valid") == 0)
        l->padding_kind = DECOMP_PADDING_VALID;
      else
        return BAD(rd, "%s: padding \"%s\" is not \"same\" or \"valid\"",
                   rd->where, s);
    } else if ((rc = get_pair(rd, obj, "padding", 0, true, l->padding))) {
      return rc;
    }
  }
  json_t *b = json_object_get(obj, "bias");
  if (b) {
    if (!json_is_boolean(b))
      return BAD(rd, "%s: bias is not true or false", rd->where);
    l->bias = json_is_true(b);
    *known |= KNOW_BIAS;
  }
  json_t *m = json_object_get(obj, "padding_mode");
  if (m) {
    const char *s = json_string_value(m);
    int i = 0;
    for (; s && i < 4; i++)
      if (strcmp(s, decomp_padding_mode_name((decomp_padding_mode)i)) == 0)
        break;
    if (!s || i == 4)
      return BAD(rd, "%s: padding_mode is not zeros, reflect, replicate or "
                     "circular", rd->where);
    l->padding_mode = (decomp_padding_mode)i;
    *known |= KNOW_MODE;
  }
  if (json_object_get(obj, "input_size")) {
    if ((rc = get_pair(rd, obj, "input_size", 1, true, l->input_size)))
      return rc;
    *known |= KNOW_INPUT;
  }
  return DECOMP_OK;
}

static int spatial_kernel(const reader *rd, const decomp_layer *l) {
  if (l->kernel_size[0] < 2 || l->kernel_size[1] < 2)
    return BAD(rd, "%s: a %lldx%lld kernel cannot be spatially decomposed",
               rd->where, (long long)l->kernel_size[0],
               (long long)l->kernel_size[1]);
  return DECOMP_OK;
}

/* A Linear's fields from `obj` into *l. */
static int parse_linear(const reader *rd, json_t *obj, decomp_layer *l) {
  if (!json_is_object(obj))
    return BAD(rd, "%s: not a JSON object", rd->where);
  *l = (decomp_layer){.type = "Linear", .bias = true};
  json_t *t = json_object_get(obj, "type");
  if (!(json_is_string(t) && strcmp(json_string_value(t), "Linear") == 0))
    return BAD(rd, "%s: type is not Linear", rd->where);
  if (!get_int(json_object_get(obj, "in_features"), &l->in_channels) ||
      l->in_channels < 1)
    return BAD(rd, "%s: in_features is missing or not a positive int",
               rd->where);
  if (!get_int(json_object_get(obj, "out_features"), &l->out_channels) ||
      l->out_channels < 1)
    return BAD(rd, "%s: out_features is missing or not a positive int",
               rd->where);
  json_t *b = json_object_get(obj, "bias");
  if (b) {
    if (!json_is_boolean(b))
      return BAD(rd, "%s: bias is not true or false", rd->where);
    l->bias = json_is_true(b);
  }
  core_layer_linear_fields(l);
  return DECOMP_OK;
}

static int64_t max_rank_of(const decomp_layer *l, core_method method,
                           core_order order) {
  core_layer_view v = {.layer = l, .method = method, .order = order};
  int64_t a, b;
  core_view_matrix(&v, &a, &b);
  return a < b ? a : b;
}

/* One of our layers[] entries: every field checked, the modules compared
 * with the ones its original, order and rank make. */
static int check_layer(decomp_ctx *ctx, json_t *o, size_t i,
                       json_t *names) {
  char where[300];
  snprintf(where, sizeof where, "layers[%zu]", i);
  reader rd = {ctx, where};
  if (!json_is_object(o))
    return BAD(&rd, "%s: not a JSON object", where);
  const char *name = json_string_value(json_object_get(o, "name"));
  if (!name || !*name)
    return BAD(&rd, "%s: name is missing", where);
  snprintf(where, sizeof where, "layer %s", name);
  if (json_object_get(names, name))
    return BAD(&rd, "%s: listed twice", where);
  json_object_set_new(names, name, json_true());
  const char *method = json_string_value(json_object_get(o, "method"));
  core_method meth;
  if (method && strcmp(method, "spatial_svd") == 0)
    meth = CORE_METHOD_SPATIAL;
  else if (method && strcmp(method, "channel_svd") == 0)
    meth = CORE_METHOD_CHANNEL;
  else if (method && strcmp(method, "svd") == 0)
    meth = CORE_METHOD_LINEAR;
  else
    return BAD(&rd,
               "%s: method is not \"spatial_svd\", \"channel_svd\" or "
               "\"svd\"",
               where);
  const char *ord = json_string_value(json_object_get(o, "order"));
  core_order order = CORE_ORDER_VERTICAL_FIRST;
  if (ord && strcmp(ord, "vertical_first") == 0)
    order = CORE_ORDER_VERTICAL_FIRST;
  else if (ord && strcmp(ord, "horizontal_first") == 0)
    order = CORE_ORDER_HORIZONTAL_FIRST;
  else if (meth == CORE_METHOD_SPATIAL || ord)
    return BAD(&rd, "%s: order is not vertical_first or horizontal_first",
               where);
  int64_t rank, mr;
  if (!get_int(json_object_get(o, "rank"), &rank) || rank < 1)
    return BAD(&rd, "%s: rank is missing or not a positive int", where);
  char owhere[320];
  snprintf(owhere, sizeof owhere, "%s: original", where);
  reader ord_rd = {ctx, owhere};
  decomp_layer l;
  unsigned known = KNOW_ALL;
  json_t *orig = json_object_get(o, "original");
  int rc = meth == CORE_METHOD_LINEAR
               ? parse_linear(&ord_rd, orig, &l)
               : parse_conv(&ord_rd, orig, &l, &known);
  if (!rc && meth == CORE_METHOD_SPATIAL)
    rc = spatial_kernel(&ord_rd, &l);
  if (rc)
    return rc;
  l.name = name;
  int64_t max = max_rank_of(&l, meth, order);
  if (rank > max)
    return BAD(&rd, "%s: rank %lld is above the largest rank %lld", where,
               (long long)rank, (long long)max);
  json_t *jm = json_object_get(o, "max_rank");
  if (jm && (!get_int(jm, &mr) || mr != max))
    return BAD(&rd, "%s: max_rank is not %lld", where, (long long)max);
  json_t *mods = json_object_get(o, "modules");
  if (!json_is_array(mods) || json_array_size(mods) != 2)
    return BAD(&rd, "%s: modules is not a list of two convs", where);
  json_t *want = modules_json(&l, meth, order, rank, known);
  if (!want)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  rc = DECOMP_OK;
  static const char *const needed[] = {"name",         "type",
                                       "in_channels",  "out_channels",
                                       "kernel_size",  "in_features",
                                       "out_features", NULL};
  for (size_t c = 0; c < 2 && !rc; c++) {
    json_t *got = json_array_get(mods, c), *exp = json_array_get(want, c);
    if (!json_is_object(got)) {
      rc = BAD(&rd, "%s: modules[%zu] is not a JSON object", where, c);
      break;
    }
    const char *key;
    json_t *ev;
    json_object_foreach(exp, key, ev) {
      json_t *gv = json_object_get(got, key);
      bool need = false;
      for (const char *const *f = needed; *f; f++)
        need = need || strcmp(*f, key) == 0;
      if (need) {
        if (!gv) {
          rc = BAD(&rd, "%s: modules[%zu] lacks %s", where, c, key);
          break;
        }
      }
      if (gv && !json_equal(gv, ev)) {
        char *g = json_dumps(gv, JSON_COMPACT | JSON_ENCODE_ANY);
        char *e = json_dumps(ev, JSON_COMPACT | JSON_ENCODE_ANY);
        rc = BAD(&rd, "%s: modules[%zu].%s is %s, its original, method, "
                      "order and rank make %s",
                 where, c, key, g ? g : "?", e ? e : "?");
        free(g);
        free(e);
        break;
      }
    }
  }
  json_decref(want);
  if (rc)
    return rc;
  json_t *stats = json_object_get(o, "stats");
  if (stats && !json_is_object(stats))
    return BAD(&rd, "%s: stats is not a JSON object", where);
  return DECOMP_OK;
}

static int check_ours(decomp_ctx *ctx, json_t *root) {
  reader rd = {ctx, "info"};
  const char *fmt = json_string_value(json_object_get(root, "format"));
  if (!fmt || strcmp(fmt, INFO_FORMAT) != 0)
    return BAD(&rd, "format is not \"" INFO_FORMAT "\"");
  int64_t version;
  if (!get_int(json_object_get(root, "version"), &version))
    return BAD(&rd, "version is missing");
  if (version != 1)
    return BAD(&rd, "version %lld is not supported (this build reads 1)",
               (long long)version);
  json_t *layers = json_object_get(root, "layers");
  if (!json_is_array(layers))
    return BAD(&rd, "layers is not a list");
  json_t *names = json_object();
  if (!names)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  int rc = DECOMP_OK;
  size_t i;
  json_t *o;
  json_array_foreach(layers, i, o) {
    if ((rc = check_layer(ctx, o, i, names)))
      break;
  }
  json_t *skipped = json_object_get(root, "skipped");
  if (!rc && skipped) {
    if (!json_is_array(skipped)) {
      rc = BAD(&rd, "skipped is not a list");
    } else {
      json_array_foreach(skipped, i, o) {
        if (!json_is_string(json_object_get(o, "name")) ||
            !json_is_string(json_object_get(o, "reason"))) {
          rc = BAD(&rd, "skipped[%zu]: needs a name and a reason", i);
          break;
        }
      }
    }
  }
  json_t *changes = json_object_get(root, "changes");
  if (!rc && changes) {
    const char *key;
    json_t *v;
    if (!json_is_object(changes))
      rc = BAD(&rd, "changes is not a JSON object");
    else
      json_object_foreach(changes, key, v) {
        json_t *want = changes_entry(key);
        bool ok = json_object_get(names, key) && json_equal(v, want);
        json_decref(want);
        if (!ok) {
          rc = BAD(&rd, "changes.%s: not [\"%s.0\", \"%s.1\"] of a listed layer",
                   key, key, key);
          break;
        }
      }
    if (!rc && json_object_size(changes) != json_object_size(names))
      rc = BAD(&rd, "changes does not list every decomposed layer");
  }
  if (!rc && !changes) {
    /* Fill it in: the Python package reads `changes` from here. */
    json_t *ch = json_object();
    json_array_foreach(layers, i, o) {
      const char *n = json_string_value(json_object_get(o, "name"));
      json_object_set_new(ch, n, changes_entry(n));
    }
    json_object_set_new(root, "changes", ch);
  }
  json_decref(names);
  return rc;
}

/* The reference's modes: SCFK and FCSK run vertical-first, SCSK and FCFK
 * horizontal-first (fixtures/README.md). */
static int mode_order(const char *mode, core_order *out) {
  static const struct {
    const char *mode;
    core_order order;
  } modes[] = {{"SCFK", CORE_ORDER_VERTICAL_FIRST},
               {"FCSK", CORE_ORDER_VERTICAL_FIRST},
               {"SCSK", CORE_ORDER_HORIZONTAL_FIRST},
               {"FCFK", CORE_ORDER_HORIZONTAL_FIRST}};
  for (size_t i = 0; mode && i < sizeof modes / sizeof *modes; i++)
    if (strcmp(mode, modes[i].mode) == 0) {
      *out = modes[i].order;
      return 0;
    }
  return -1;
}

static int get_shape4(const reader *rd, json_t *nodes, const char *which,
                      int64_t s[4]) {
  json_t *v = json_object_get(json_object_get(nodes, which), "weight_shape");
  if (!json_is_array(v) || json_array_size(v) != 4)
    return BAD(rd, "%s: decom_nodes.%s.weight_shape is not a list of 4 ints",
               rd->where, which);
  for (size_t i = 0; i < 4; i++)
    if (!get_int(json_array_get(v, i), &s[i]) || s[i] < 1)
      return BAD(rd, "%s: decom_nodes.%s.weight_shape is not a list of 4 "
                     "positive ints", rd->where, which);
  return DECOMP_OK;
}

/* One entry of the reference's list into our layers[] form. */
static int convert_entry(decomp_ctx *ctx, json_t *e, size_t i, json_t *names,
                         json_t **out) {
  char where[300];
  snprintf(where, sizeof where, "entry %zu", i);
  reader rd = {ctx, where};
  if (!json_is_object(e))
    return BAD(&rd, "%s: not a JSON object", where);
  json_t *ori = json_object_get(e, "ori_layer_info");
  const char *name = json_string_value(json_object_get(ori, "name"));
  if (!name || !*name)
    return BAD(&rd, "%s: ori_layer_info.name is missing", where);
  snprintf(where, sizeof where, "layer %s", name);
  if (json_object_get(names, name))
    return BAD(&rd, "%s: listed twice", where);
  json_object_set_new(names, name, json_true());
  char owhere[320];
  snprintf(owhere, sizeof owhere, "%s: ori_layer_info", where);
  reader ord = {ctx, owhere};
  decomp_layer l;
  unsigned known;
  int rc = parse_conv(&ord, ori, &l, &known);
  if (!rc)
    rc = spatial_kernel(&ord, &l);
  if (rc)
    return rc;
  l.name = name;
  const char *mode = json_string_value(json_object_get(e, "mode"));
  core_order order;
  if (mode_order(mode, &order))
    return BAD(&rd, "%s: mode is not SCFK, SCSK, FCFK or FCSK", where);
  json_t *nodes = json_object_get(e, "decom_nodes");
  int64_t f[4], s[4];
  if ((rc = get_shape4(&rd, nodes, "first", f)) ||
      (rc = get_shape4(&rd, nodes, "last", s)))
    return rc;
  if (f[0] % l.groups)
    return BAD(&rd, "%s: decom_nodes.first has %lld outputs, not a multiple "
                    "of groups %lld", where, (long long)f[0],
               (long long)l.groups);
  int64_t R = f[0] / l.groups;
  decomp_layer m[2];
  info_modules(&l, CORE_METHOD_SPATIAL, order, R, m);
  int64_t wf[4] = {m[0].out_channels, m[0].in_channels / l.groups,
                   m[0].kernel_size[0], m[0].kernel_size[1]};
  int64_t ws[4] = {m[1].out_channels, m[1].in_channels / l.groups,
                   m[1].kernel_size[0], m[1].kernel_size[1]};
  for (int c = 0; c < 2; c++) {
    const int64_t *got = c ? s : f, *want = c ? ws : wf;
    if (memcmp(got, want, sizeof wf) != 0)
      return BAD(&rd, "%s: decom_nodes.%s.weight_shape [%lld, %lld, %lld, "
                      "%lld] does not fit mode %s (expected [%lld, %lld, "
                      "%lld, %lld])",
                 where, c ? "last" : "first", (long long)got[0],
                 (long long)got[1], (long long)got[2], (long long)got[3], mode,
                 (long long)want[0], (long long)want[1], (long long)want[2],
                 (long long)want[3]);
  }
  int64_t max = max_rank_of(&l, CORE_METHOD_SPATIAL, order);
  if (R > max)
    return BAD(&rd, "%s: rank %lld is above the largest rank %lld", where,
               (long long)R, (long long)max);
  json_t *o = json_object();
  if (!o)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  int bad = 0;
  bad |= json_object_set_new(o, "name", json_string(name));
  bad |= json_object_set_new(o, "method", json_string("spatial_svd"));
  bad |= json_object_set_new(o, "rank", json_integer(R));
  bad |= json_object_set_new(o, "max_rank", json_integer(max));
  bad |= json_object_set_new(o, "order", json_string(core_order_name(order)));
  bad |= json_object_set_new(o, "original", conv_json(NULL, &l, known));
  bad |= json_object_set_new(
      o, "modules", modules_json(&l, CORE_METHOD_SPATIAL, order, R, known));
  bad |= json_object_set_new(o, "reference_mode", json_string(mode));
  if (bad) {
    json_decref(o);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  *out = o;
  return DECOMP_OK;
}

static int convert_reference(decomp_ctx *ctx, json_t *list, json_t **out) {
  json_t *root = json_pack("{s:s,s:i,s:s,s:{s:s},s:{s:s},s:[],s:[],s:{}}",
                           "format", INFO_FORMAT, "version", 1, "created_by",
                           "amct (read by decompd " DECOMP_VERSION ")",
                           "source", "format", "amct_decompose_info",
                           "policy", "name", "amct", "layers", "skipped",
                           "changes");
  json_t *names = json_object();
  if (!root || !names) {
    json_decref(root);
    json_decref(names);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  json_t *layers = json_object_get(root, "layers");
  json_t *changes = json_object_get(root, "changes");
  int rc = DECOMP_OK;
  size_t i;
  json_t *e;
  json_array_foreach(list, i, e) {
    json_t *o = NULL;
    if ((rc = convert_entry(ctx, e, i, names, &o)))
      break;
    const char *name = json_string_value(json_object_get(o, "name"));
    if (json_object_set_new(changes, name, changes_entry(name)) ||
        json_array_append_new(layers, o)) {
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      break;
    }
  }
  json_decref(names);
  if (rc) {
    json_decref(root);
    return rc;
  }
  *out = root;
  return DECOMP_OK;
}

int decomp_info_normalize(decomp_ctx *ctx, const char *json, size_t len,
                          char **out_json) {
  if (!json || !out_json)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "info_normalize: json and out_json are required");
  json_error_t jerr;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return core_fail(ctx, DECOMP_ERR_BAD_INFO,
                     "not JSON: line %d column %d: %s", jerr.line,
                     jerr.column, jerr.text);
  int rc;
  json_t *ours = NULL;
  if (json_is_object(root)) {
    rc = check_ours(ctx, root);
    if (rc == DECOMP_OK)
      ours = json_incref(root);
  } else if (json_is_array(root)) {
    rc = convert_reference(ctx, root, &ours);
  } else {
    rc = core_fail(ctx, DECOMP_ERR_BAD_INFO,
                   "not a decompose_info file: neither an object nor the "
                   "reference tool's list");
  }
  json_decref(root);
  if (rc)
    return rc;
  char *text = json_dumps(ours, INFO_DUMP_FLAGS);
  json_decref(ours);
  if (!text)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  *out_json = text;
  return DECOMP_OK;
}
