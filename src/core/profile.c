/* profile.c — the latency profile a run is given (DESIGN "Latency, not only
 * MACs"): per layer, the time of the layer as it is and of each candidate
 * pair over a grid of ranks, measured by decompd.profile on the user's
 * device. This file owns reading it (checked whole against the spec before
 * any work: every layer exists with the type and weight shape the profile
 * says, every method applies, ranks increase within the method's largest
 * rank, times are finite and non-negative, no grid is empty) and the
 * predicted time of a candidate at any rank: an isotonic fit (pool adjacent
 * violators) makes the measured times non-decreasing in rank, linear
 * between grid points, the first point's time below the grid, the last
 * segment's slope above it (the budget offers no rank above the grid). */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

#define PROFILE_FORMAT "decompd.profile"

struct core_curve {
  int64_t n;
  int64_t *ranks;
  double *times; /* isotonic: non-decreasing */
};

struct profile_entry {
  const decomp_layer *layer;
  double time;
  core_curve curve[3]; /* spatial vertical, spatial horizontal, channel/svd */
};

struct core_profile {
  struct profile_entry *e;
  size_t n;
  double model_time; /* the whole forward pass, or -1 when not measured */
  char *device_name, *dtype, *input_shape; /* for the info file */
};

/* Every failure here: BAD_PROFILE, its message starting so. */
#define bad(ctx, ...)                                                          \
  core_fail(ctx, DECOMP_ERR_BAD_PROFILE, "profile: " __VA_ARGS__)

void core_profile_free(core_profile *p) {
  if (!p)
    return;
  for (size_t i = 0; i < p->n; i++)
    for (int c = 0; c < 3; c++) {
      free(p->e[i].curve[c].ranks);
      free(p->e[i].curve[c].times);
    }
  free(p->e);
  free(p->device_name);
  free(p->dtype);
  free(p->input_shape);
  free(p);
}

/* Pool adjacent violators: the non-decreasing sequence nearest (least
 * squares) to t[0..n), in place. */
static void isotonic(double *t, int64_t n) {
  double *val = malloc((size_t)n * sizeof *val);
  int64_t *len = malloc((size_t)n * sizeof *len);
  if (!val || !len) { /* fall back to a running maximum */
    for (int64_t i = 1; i < n; i++)
      t[i] = t[i] > t[i - 1] ? t[i] : t[i - 1];
    free(val);
    free(len);
    return;
  }
  int64_t b = 0;
  for (int64_t i = 0; i < n; i++) {
    val[b] = t[i];
    len[b] = 1;
    while (b > 0 && val[b - 1] > val[b]) {
      val[b - 1] = (val[b - 1] * (double)len[b - 1] + val[b] * (double)len[b]) /
                   (double)(len[b - 1] + len[b]);
      len[b - 1] += len[b];
      b--;
    }
    b++;
  }
  for (int64_t k = 0, i = 0; k < b; k++)
    for (int64_t j = 0; j < len[k]; j++)
      t[i++] = val[k];
  free(val);
  free(len);
}

/* A finite, non-negative number, or -1. */
static double seconds(const json_t *v) {
  if (!json_is_number(v))
    return -1;
  double x = json_number_value(v);
  return isfinite(x) && x >= 0 ? x : -1;
}

static int slot_of(const char *method, const char *order, core_method *m) {
  if (strcmp(method, "channel_svd") == 0 || strcmp(method, "svd") == 0) {
    *m = CORE_METHOD_CHANNEL;
    return 2;
  }
  if (strcmp(method, "spatial_svd") == 0 && order) {
    *m = CORE_METHOD_SPATIAL;
    if (strcmp(order, "vertical_first") == 0)
      return 0;
    if (strcmp(order, "horizontal_first") == 0)
      return 1;
  }
  return -1;
}

static int read_candidate(decomp_ctx *ctx, const decomp_layer *l,
                          const json_t *c, size_t i, core_curve *curves) {
  const char *method = json_string_value(json_object_get(c, "method"));
  const char *order = json_string_value(json_object_get(c, "order"));
  core_method m;
  int slot = method ? slot_of(method, order, &m) : -1;
  if (slot < 0)
    return bad(ctx, "layer %s: candidates[%zu] has no known method (spatial_svd "
                    "with an order, channel_svd, svd)",
               l->name, i);
  bool linear = core_layer_is_linear(l);
  if ((strcmp(method, "svd") == 0) != linear)
    return bad(ctx, "layer %s: candidates[%zu] method %s does not apply to a "
                    "%s",
               l->name, i, method, linear ? "Linear" : "Conv2d");
  core_layer_view v;
  char why[160];
  if (!core_layer_view_init_method(l, m,
                                   slot == 1 ? CORE_ORDER_HORIZONTAL_FIRST
                                             : CORE_ORDER_VERTICAL_FIRST,
                                   &v, why, sizeof why))
    return bad(ctx, "layer %s: candidates[%zu] %s: %s", l->name, i, method,
               why);
  const json_t *rs = json_object_get(c, "ranks"), *ts = json_object_get(c, "times");
  size_t n = json_array_size(rs);
  if (!json_is_array(rs) || !json_is_array(ts) || n == 0 ||
      json_array_size(ts) != n)
    return bad(ctx, "layer %s: candidates[%zu] (%s): ranks and times must be "
                    "non-empty lists of the same length",
               l->name, i, method);
  core_curve *cv = &curves[slot];
  if (cv->n)
    return bad(ctx, "layer %s: %s%s%s is listed twice", l->name, method,
               order ? " " : "", order ? order : "");
  cv->ranks = malloc(n * sizeof *cv->ranks);
  cv->times = malloc(n * sizeof *cv->times);
  if (!cv->ranks || !cv->times)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  cv->n = (int64_t)n;
  for (size_t j = 0; j < n; j++) {
    const json_t *r = json_array_get(rs, j);
    int64_t R = json_is_integer(r) ? json_integer_value(r) : 0;
    if (R < 1 || R > v.max_rank || (j && R <= cv->ranks[j - 1]))
      return bad(ctx, "layer %s: candidates[%zu] (%s): ranks[%zu] must be an "
                      "integer in [1, %" PRId64 "] above the one before",
                 l->name, i, method, j, v.max_rank);
    double t = seconds(json_array_get(ts, j));
    if (t < 0)
      return bad(ctx, "layer %s: candidates[%zu] (%s): times[%zu] is not a "
                      "finite, non-negative number of seconds",
                 l->name, i, method, j);
    cv->ranks[j] = R;
    cv->times[j] = t;
  }
  isotonic(cv->times, cv->n);
  return DECOMP_OK;
}

static int read_layer(decomp_ctx *ctx, const decomp_spec *spec,
                      const char *name, const json_t *o,
                      struct profile_entry *out) {
  const decomp_layer *l = decomp_spec_find(spec, name);
  if (!l)
    return bad(ctx, "layer %s is not in the model's layer spec (a profile of "
                    "another model?)",
               name);
  if (!core_layer_is_decomposable(l))
    return bad(ctx, "layer %s is a %s in the model, not a Conv2d or Linear",
               name, l->type);
  bool linear = core_layer_is_linear(l);
  const char *type = json_string_value(json_object_get(o, "type"));
  if (!type || strcmp(type, linear ? "Linear" : "Conv2d") != 0)
    return bad(ctx, "layer %s is a %s in the model, the profile says %s", name,
               linear ? "Linear" : "Conv2d", type ? type : "(no type)");
  int64_t want[4] = {l->out_channels, l->in_channels / l->groups,
                     l->kernel_size[0], l->kernel_size[1]};
  size_t nd = linear ? 2 : 4;
  const json_t *ws = json_object_get(o, "weight_shape");
  bool same = json_is_array(ws) && json_array_size(ws) == nd;
  for (size_t d = 0; same && d < nd; d++) {
    const json_t *x = json_array_get(ws, d);
    same = json_is_integer(x) && json_integer_value(x) == want[d];
  }
  if (!same) {
    char *got = ws ? json_dumps(ws, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    int rc = bad(ctx, "layer %s: the profile's weight_shape %s is not the "
                      "model's [%" PRId64 ", %" PRId64 "%s]",
                 name, got ? got : "(missing)", want[0], want[1],
                 linear ? "" : ", …");
    free(got);
    return rc;
  }
  double t0 = seconds(json_object_get(o, "time"));
  if (t0 < 0)
    return bad(ctx, "layer %s: time is not a finite, non-negative number of "
                    "seconds",
               name);
  const json_t *cands = json_object_get(o, "candidates");
  if (!json_is_array(cands) || json_array_size(cands) == 0)
    return bad(ctx, "layer %s: no candidates were measured (an empty grid)",
               name);
  *out = (struct profile_entry){.layer = l, .time = t0};
  size_t i;
  json_t *c;
  json_array_foreach(cands, i, c) {
    int rc = read_candidate(ctx, l, c, i, out->curve);
    if (rc)
      return rc;
  }
  return DECOMP_OK;
}

static char *dup_json(const json_t *v) {
  if (!v)
    return NULL;
  return json_is_string(v) ? strdup(json_string_value(v))
                           : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

int core_profile_open(decomp_ctx *ctx, const char *text,
                      const decomp_spec *spec, core_profile **out) {
  *out = NULL;
  json_error_t jerr;
  json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
  core_profile *p = NULL;
  int rc;
  if (!root) {
    rc = bad(ctx, "not valid JSON (line %d, column %d): %s", jerr.line,
             jerr.column, jerr.text);
    goto out;
  }
  const char *fmt = json_string_value(json_object_get(root, "format"));
  if (!fmt || strcmp(fmt, PROFILE_FORMAT) != 0) {
    rc = bad(ctx, "not a decompd profile (\"format\" is not \"" PROFILE_FORMAT
                  "\")");
    goto out;
  }
  const json_t *ver = json_object_get(root, "version");
  if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
    rc = bad(ctx, "version is not 1");
    goto out;
  }
  json_t *layers = json_object_get(root, "layers");
  if (!json_is_object(layers) || json_object_size(layers) == 0) {
    rc = bad(ctx, "\"layers\" is not a non-empty object");
    goto out;
  }
  p = calloc(1, sizeof *p);
  size_t n = json_object_size(layers);
  if (!p || !(p->e = calloc(n, sizeof *p->e))) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto out;
  }
  const char *name;
  json_t *o;
  json_object_foreach(layers, name, o) {
    if (!json_is_object(o)) {
      rc = bad(ctx, "layer %s: not a JSON object", name);
      goto out;
    }
    rc = read_layer(ctx, spec, name, o, &p->e[p->n]);
    p->n++; /* its curves are freed with it, also on failure */
    if (rc)
      goto out;
  }
  const json_t *mt = json_object_get(root, "model_time");
  p->model_time = -1;
  if (mt && (p->model_time = seconds(mt)) < 0) {
    rc = bad(ctx, "model_time is not a finite, non-negative number of "
                  "seconds");
    goto out;
  }
  p->device_name = dup_json(json_object_get(root, "device_name"));
  p->dtype = dup_json(json_object_get(root, "dtype"));
  p->input_shape = dup_json(json_object_get(root, "input_shape"));
  *out = p;
  p = NULL;
  rc = DECOMP_OK;
out:
  core_profile_free(p);
  json_decref(root);
  return rc;
}

const core_curve *core_profile_curve(const core_profile *p,
                                     const decomp_layer *l, core_method m,
                                     core_order o, double *time) {
  for (size_t i = 0; p && i < p->n; i++) {
    if (p->e[i].layer != l)
      continue;
    *time = p->e[i].time;
    int slot = m != CORE_METHOD_SPATIAL                ? 2
               : o == CORE_ORDER_HORIZONTAL_FIRST      ? 1
                                                       : 0;
    return p->e[i].curve[slot].n ? &p->e[i].curve[slot] : NULL;
  }
  return NULL;
}

bool core_profile_has(const core_profile *p, const decomp_layer *l) {
  for (size_t i = 0; p && i < p->n; i++)
    if (p->e[i].layer == l)
      return true;
  return false;
}

double core_profile_model_time(const core_profile *p) {
  return p ? p->model_time : -1;
}

const char *core_profile_device(const core_profile *p) {
  return p ? p->device_name : NULL;
}
const char *core_profile_dtype(const core_profile *p) {
  return p ? p->dtype : NULL;
}
const char *core_profile_input_shape(const core_profile *p) {
  return p ? p->input_shape : NULL;
}

int64_t core_curve_max_rank(const core_curve *c) {
  return c && c->n ? c->ranks[c->n - 1] : 0;
}

double core_curve_at(const core_curve *c, int64_t R) {
  if (R <= c->ranks[0])
    return c->times[0];
  for (int64_t j = 1; j < c->n; j++)
    if (R <= c->ranks[j]) {
      double f = (double)(R - c->ranks[j - 1]) /
                 (double)(c->ranks[j] - c->ranks[j - 1]);
      return c->times[j - 1] + f * (c->times[j] - c->times[j - 1]);
    }
  /* Above the grid (policies other than the budget, which stays inside
   * it): the last segment's slope, or proportional to a lone point. */
  int64_t n = c->n;
  double last = c->times[n - 1];
  if (n == 1)
    return last * (double)R / (double)c->ranks[0];
  double slope = (last - c->times[n - 2]) /
                 (double)(c->ranks[n - 1] - c->ranks[n - 2]);
  return last + slope * (double)(R - c->ranks[n - 1]);
}

int decomp_profile_check(decomp_ctx *ctx, const char *profile,
                         const decomp_spec *spec, size_t *layers) {
  if (!profile || !spec)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_profile_check: NULL argument");
  core_profile *p = NULL;
  int rc = core_profile_open(ctx, profile, spec, &p);
  if (rc == DECOMP_OK && layers)
    *layers = p->n;
  core_profile_free(p);
  return rc;
}
