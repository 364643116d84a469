/* policy.c — rank policies: parsing a policy (a bare name or a JSON object
 * with its knobs, include/exclude globs, per-layer overrides, compute
 * precision and order), its canonical JSON, the cost model of a Conv2d under
 * either order of the pair, layer eligibility (including the reference
 * tool's "amct" rules and mode order), and the choice of ranks: per layer for
 * fixed/ratio/energy/max_error/vbmf/amct, and for the whole model under
 * "budget". The EVBMF estimate itself lives in vbmf.c. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core.h"

typedef enum pol_kind {
  POL_FIXED,
  POL_RATIO,
  POL_ENERGY,
  POL_MAX_ERROR,
  POL_VBMF,
  POL_AMCT,
  POL_BUDGET,
  POL_COUNT_
} pol_kind;

static const char *const pol_names[POL_COUNT_] = {
    "fixed", "ratio", "energy", "max_error", "vbmf", "amct", "budget"};

/* How one layer's rank is chosen: a policy's own rule or an override's. */
typedef enum rule_kind {
  RULE_POLICY = 0, /* the policy's rule ({"skip": false} overrides) */
  RULE_SKIP,
  RULE_RANK,
  RULE_RATIO,
  RULE_ENERGY,
  RULE_MAX_ERROR,
} rule_kind;

struct override {
  char *glob;
  rule_kind kind;
  int64_t rank;  /* RULE_RANK */
  double value;  /* RULE_RATIO/ENERGY/MAX_ERROR */
};

struct decomp_policy {
  pol_kind kind;
  int64_t rank;           /* fixed */
  double ratio;           /* ratio */
  double energy;          /* energy */
  double max_error;       /* max_error */
  bool by_params;         /* budget: params_reduction instead of macs */
  double reduction;       /* budget target (> 1) */
  char **include, **exclude;
  size_t ninclude, nexclude;
  struct override *ov;
  size_t nov;
  int compute;            /* 0 auto, 32, 64 */
  int order;              /* -1 auto, else core_order */
  bool require_cheaper;   /* skip a layer whose rank would not make it
                             cheaper (default; false keeps any rank, e.g.
                             full rank to check a model reproduces) */
  unsigned types;         /* CORE_TYPE_* bits: the layer types considered */
  unsigned methods;       /* CORE_METHODS_* bits: the candidates allowed */
  double max_layer_error; /* budget: no layer beyond this relative error */
  bool by_latency;        /* budget: latency_reduction (needs a profile) */
  double max_slowdown;    /* 0: unset (1.0 where a layer is profiled) */
  bool strict;            /* budget: an unreachable target is an error */
};

/* --- parsing ------------------------------------------------------------ */

static void free_strs(char **v, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

void decomp_policy_free(decomp_policy *p) {
  if (!p)
    return;
  free_strs(p->include, p->ninclude);
  free_strs(p->exclude, p->nexclude);
  for (size_t i = 0; i < p->nov; i++)
    free(p->ov[i].glob);
  free(p->ov);
  free(p);
}

static int bad(decomp_ctx *ctx, const char *fmt, ...) DECOMP_PRINTF(2, 3);
static int bad(decomp_ctx *ctx, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return core_fail(ctx, DECOMP_ERR_BAD_POLICY, "policy: %s", msg);
}

static int kind_from_name(const char *s) {
  for (int k = 0; k < POL_COUNT_; k++)
    if (strcmp(s, pol_names[k]) == 0)
      return k;
  return -1;
}

static int unknown_name(decomp_ctx *ctx, const char *s) {
  return bad(ctx,
             "unknown policy \"%.80s\" (fixed, ratio, energy, max_error, "
             "vbmf, amct or budget)",
             s);
}

static decomp_policy *policy_alloc(pol_kind k) {
  decomp_policy *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->kind = k;
  p->order = -1;
  p->require_cheaper = true;
  p->reduction = 2.0;
  p->types = CORE_TYPE_CONV2D;
  p->methods = k == POL_AMCT ? CORE_METHODS_SPATIAL
                             : CORE_METHODS_SPATIAL | CORE_METHODS_CHANNEL;
  p->max_layer_error = CORE_BUDGET_MAX_LAYER_ERROR;
  return p;
}

/* A number knob in (lo, hi] or [lo, hi) as `lo_open`/`hi_open` say. */
static int get_number(decomp_ctx *ctx, const char *what, const json_t *v,
                      double lo, bool lo_open, double hi, bool hi_open,
                      double *out) {
  if (!json_is_number(v))
    return bad(ctx, "%s must be a number", what);
  double x = json_number_value(v);
  bool ok = isfinite(x) && (lo_open ? x > lo : x >= lo) &&
            (hi_open ? x < hi : x <= hi);
  if (!ok)
    return bad(ctx, "%s %g is out of range %c%g, %g%c", what, x,
               lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
  *out = x;
  return DECOMP_OK;
}

static int get_rank(decomp_ctx *ctx, const char *what, const json_t *v,
                    int64_t *out) {
  if (!json_is_integer(v) || json_integer_value(v) < 1)
    return bad(ctx, "%s must be an integer >= 1", what);
  *out = (int64_t)json_integer_value(v);
  return DECOMP_OK;
}

static int get_globs(decomp_ctx *ctx, const char *what, const json_t *v,
                     char ***out, size_t *n) {
  if (!json_is_array(v))
    return bad(ctx, "%s must be a list of globs", what);
  size_t cnt = json_array_size(v);
  char **g = calloc(cnt ? cnt : 1, sizeof *g);
  if (!g)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < cnt; i++) {
    const json_t *s = json_array_get(v, i);
    if (!json_is_string(s) || !*json_string_value(s)) {
      free_strs(g, i);
      return bad(ctx, "%s[%zu] must be a non-empty string", what, i);
    }
    if (!(g[i] = strdup(json_string_value(s)))) {
      free_strs(g, i);
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    }
  }
  *out = g;
  *n = cnt;
  return DECOMP_OK;
}

static int parse_override(decomp_ctx *ctx, const char *glob, const json_t *v,
                          struct override *o) {
  if (!*glob)
    return bad(ctx, "overrides: a glob must not be empty");
  if (!json_is_object(v) || json_object_size(v) != 1)
    return bad(ctx,
               "overrides[\"%.80s\"] must be an object with one of rank, "
               "skip, ratio, energy, max_error",
               glob);
  const char *key = json_object_iter_key(json_object_iter((json_t *)v));
  const json_t *val = json_object_get(v, key);
  char what[160];
  snprintf(what, sizeof what, "overrides[\"%.80s\"].%.20s", glob, key);
  int rc = DECOMP_OK;
  if (strcmp(key, "rank") == 0) {
    o->kind = RULE_RANK;
    rc = get_rank(ctx, what, val, &o->rank);
  } else if (strcmp(key, "skip") == 0) {
    if (!json_is_boolean(val))
      return bad(ctx, "%s must be true or false", what);
    o->kind = json_is_true(val) ? RULE_SKIP : RULE_POLICY;
  } else if (strcmp(key, "ratio") == 0) {
    o->kind = RULE_RATIO;
    rc = get_number(ctx, what, val, 0, true, 1, false, &o->value);
  } else if (strcmp(key, "energy") == 0) {
    o->kind = RULE_ENERGY;
    rc = get_number(ctx, what, val, 0, true, 1, false, &o->value);
  } else if (strcmp(key, "max_error") == 0) {
    o->kind = RULE_MAX_ERROR;
    rc = get_number(ctx, what, val, 0, false, 1, true, &o->value);
  } else {
    return bad(ctx,
               "overrides[\"%.80s\"]: unknown field %.60s (rank, skip, ratio, "
               "energy or max_error)",
               glob, key);
  }
  if (rc)
    return rc;
  if (!(o->glob = strdup(glob)))
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  return DECOMP_OK;
}

/* Which knob fields belong to which policy. */
static bool knob_of(pol_kind k, const char *field) {
  switch (k) {
  case POL_FIXED: return strcmp(field, "rank") == 0;
  case POL_RATIO: return strcmp(field, "ratio") == 0;
  case POL_ENERGY: return strcmp(field, "energy") == 0;
  case POL_MAX_ERROR: return strcmp(field, "max_error") == 0;
  case POL_BUDGET:
    return strcmp(field, "macs_reduction") == 0 ||
           strcmp(field, "params_reduction") == 0 ||
           strcmp(field, "latency_reduction") == 0;
  default: return false;
  }
}

static const char *const knob_fields[] = {
    "rank",           "ratio",            "energy",            "max_error",
    "macs_reduction", "params_reduction", "latency_reduction", NULL};
static const char *const common_fields[] = {
    "name",  "include",         "exclude", "overrides", "compute",
    "order", "require_cheaper", "types",   "methods",   "max_slowdown",
    NULL};
static const char *const budget_fields[] = {"max_layer_error", "strict",
                                            NULL};

/* A list of names (`what`) into bits: names[i] sets bit 1 << i. */
static int get_names(decomp_ctx *ctx, const char *what, const json_t *v,
                     const char *const *names, unsigned *out) {
  if (!json_is_array(v) || json_array_size(v) == 0)
    return bad(ctx, "%s must be a non-empty list", what);
  unsigned bits = 0;
  size_t i;
  const json_t *e;
  json_array_foreach(v, i, e) {
    const char *s = json_is_string(e) ? json_string_value(e) : "";
    unsigned b = 0;
    for (unsigned k = 0; names[k]; k++)
      if (strcmp(s, names[k]) == 0)
        b = 1u << k;
    if (!b)
      return bad(ctx, "%s: unknown entry \"%.60s\" (one of %s%s%s)", what, s,
                 names[0], names[1] ? ", " : "", names[1] ? names[1] : "");
    bits |= b;
  }
  *out = bits;
  return DECOMP_OK;
}

static const char *const type_names[] = {"Conv2d", "Linear", NULL};
static const char *const method_names[] = {"spatial", "channel", NULL};

static bool in_list(const char *const *list, const char *s) {
  for (; *list; list++)
    if (strcmp(*list, s) == 0)
      return true;
  return false;
}

static int parse_object(decomp_ctx *ctx, const json_t *obj, decomp_policy **out) {
  const json_t *jn = json_object_get(obj, "name");
  if (!jn)
    return bad(ctx, "missing field name");
  if (!json_is_string(jn))
    return bad(ctx, "name must be a string");
  int k = kind_from_name(json_string_value(jn));
  if (k < 0)
    return unknown_name(ctx, json_string_value(jn));
  const char *key;
  const json_t *val;
  json_object_foreach((json_t *)obj, key, val) {
    if (in_list(common_fields, key))
      continue;
    if (in_list(budget_fields, key)) {
      if (k != POL_BUDGET)
        return bad(ctx, "field %s applies to policy budget only", key);
      continue;
    }
    if (in_list(knob_fields, key)) {
      if (!knob_of((pol_kind)k, key))
        return bad(ctx, "field %s does not apply to policy %s", key,
                   pol_names[k]);
      continue;
    }
    return bad(ctx, "unknown field %.80s", key);
  }
  decomp_policy *p = policy_alloc((pol_kind)k);
  if (!p)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  int rc = DECOMP_OK;
  const json_t *v;
  switch (p->kind) {
  case POL_FIXED:
    if (!(v = json_object_get(obj, "rank")))
      rc = bad(ctx, "policy fixed needs \"rank\"");
    else
      rc = get_rank(ctx, "rank", v, &p->rank);
    break;
  case POL_RATIO:
    if (!(v = json_object_get(obj, "ratio")))
      rc = bad(ctx, "policy ratio needs \"ratio\"");
    else
      rc = get_number(ctx, "ratio", v, 0, true, 1, false, &p->ratio);
    break;
  case POL_ENERGY:
    if (!(v = json_object_get(obj, "energy")))
      rc = bad(ctx, "policy energy needs \"energy\"");
    else
      rc = get_number(ctx, "energy", v, 0, true, 1, false, &p->energy);
    break;
  case POL_MAX_ERROR:
    if (!(v = json_object_get(obj, "max_error")))
      rc = bad(ctx, "policy max_error needs \"max_error\"");
    else
      rc = get_number(ctx, "max_error", v, 0, false, 1, true, &p->max_error);
    break;
  case POL_BUDGET: {
    const json_t *m = json_object_get(obj, "macs_reduction");
    const json_t *pr = json_object_get(obj, "params_reduction");
    const json_t *lr = json_object_get(obj, "latency_reduction");
    if ((m != NULL) + (pr != NULL) + (lr != NULL) > 1)
      rc = bad(ctx, "budget takes one of macs_reduction, params_reduction "
                    "and latency_reduction");
    else if (lr) {
      p->by_latency = true;
      rc = get_number(ctx, "latency_reduction", lr, 1, true, 1e6, false,
                      &p->reduction);
    } else if (m)
      rc = get_number(ctx, "macs_reduction", m, 1, true, 1e6, false,
                      &p->reduction);
    else if (pr) {
      p->by_params = true;
      rc = get_number(ctx, "params_reduction", pr, 1, true, 1e6, false,
                      &p->reduction);
    }
    break;
  }
  default:
    break;
  }
  /* An explicit include list, even an empty one, replaces the default
   * ["*"]. */
  if (!rc && (v = json_object_get(obj, "include")))
    rc = get_globs(ctx, "include", v, &p->include, &p->ninclude);
  else if (!rc) {
    if (!(p->include = calloc(1, sizeof *p->include)) ||
        !(p->include[0] = strdup("*")))
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    else
      p->ninclude = 1;
  }
  if (!rc && (v = json_object_get(obj, "exclude")))
    rc = get_globs(ctx, "exclude", v, &p->exclude, &p->nexclude);
  if (!rc && (v = json_object_get(obj, "overrides"))) {
    if (!json_is_object(v)) {
      rc = bad(ctx, "overrides must be an object of glob: {…}");
    } else {
      size_t n = json_object_size(v);
      p->ov = calloc(n ? n : 1, sizeof *p->ov);
      if (!p->ov) {
        rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      } else {
        /* jansson keeps insertion order: the first matching glob wins. */
        json_object_foreach((json_t *)v, key, val) {
          if ((rc = parse_override(ctx, key, val, &p->ov[p->nov])))
            break;
          p->nov++;
        }
      }
    }
  }
  if (!rc && (v = json_object_get(obj, "compute"))) {
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (strcmp(s, "float32") == 0)
      p->compute = 32;
    else if (strcmp(s, "float64") == 0)
      p->compute = 64;
    else if (strcmp(s, "auto") == 0)
      p->compute = 0;
    else
      rc = bad(ctx, "compute must be \"float32\" or \"float64\"");
  }
  if (!rc && (v = json_object_get(obj, "require_cheaper"))) {
    if (json_is_boolean(v))
      p->require_cheaper = json_is_true(v);
    else
      rc = bad(ctx, "require_cheaper must be true or false");
  }
  if (!rc && (v = json_object_get(obj, "types")))
    rc = get_names(ctx, "types", v, type_names, &p->types);
  if (!rc && (v = json_object_get(obj, "methods")))
    rc = get_names(ctx, "methods", v, method_names, &p->methods);
  if (!rc && p->kind == POL_AMCT &&
      (p->types != CORE_TYPE_CONV2D || p->methods != CORE_METHODS_SPATIAL))
    rc = bad(ctx, "policy amct is the reference tool's rules: spatial "
                  "decomposition of Conv2d layers only (types [\"Conv2d\"], "
                  "methods [\"spatial\"])");
  if (!rc && (v = json_object_get(obj, "max_layer_error")))
    rc = get_number(ctx, "max_layer_error", v, 0, true, 1, false,
                    &p->max_layer_error);
  if (!rc && (v = json_object_get(obj, "max_slowdown")))
    rc = get_number(ctx, "max_slowdown", v, 0, true, 1e6, false,
                    &p->max_slowdown);
  if (!rc && (v = json_object_get(obj, "strict"))) {
    if (json_is_boolean(v))
      p->strict = json_is_true(v);
    else
      rc = bad(ctx, "strict must be true or false");
  }
  if (!rc && (v = json_object_get(obj, "order"))) {
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    if (strcmp(s, "auto") == 0)
      p->order = -1;
    else if (strcmp(s, "vertical_first") == 0)
      p->order = CORE_ORDER_VERTICAL_FIRST;
    else if (strcmp(s, "horizontal_first") == 0)
      p->order = CORE_ORDER_HORIZONTAL_FIRST;
    else
      rc = bad(ctx,
               "order must be \"auto\", \"vertical_first\" or "
               "\"horizontal_first\"");
  }
  if (rc) {
    decomp_policy_free(p);
    return rc;
  }
  *out = p;
  return DECOMP_OK;
}

int decomp_policy_parse(decomp_ctx *ctx, const char *text,
                        decomp_policy **out) {
  if (!text || !out)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_policy_parse: NULL argument");
  while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
    text++;
  if (*text == '{' || *text == '"') {
    json_error_t jerr;
    json_t *root =
        json_loads(text, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
      return bad(ctx, "not valid JSON (line %d, column %d): %s", jerr.line,
                 jerr.column, jerr.text);
    int rc;
    if (json_is_string(root)) {
      json_t *obj = json_pack("{sO}", "name", root);
      rc = obj ? parse_object(ctx, obj, out)
               : core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      json_decref(obj);
    } else if (json_is_object(root)) {
      rc = parse_object(ctx, root, out);
    } else {
      rc = bad(ctx, "must be a name or a JSON object");
    }
    json_decref(root);
    return rc;
  }
  /* A bare name, trailing blanks allowed. */
  size_t n = strlen(text);
  while (n && (text[n - 1] == ' ' || text[n - 1] == '\t' ||
               text[n - 1] == '\n' || text[n - 1] == '\r'))
    n--;
  if (n == 0)
    return bad(ctx, "empty policy (a name such as \"budget\" or a JSON "
                    "object)");
  char name[32];
  if (n >= sizeof name) {
    char shown[81];
    snprintf(shown, sizeof shown, "%.*s", (int)(n < 80 ? n : 80), text);
    return unknown_name(ctx, shown);
  }
  memcpy(name, text, n);
  name[n] = '\0';
  if (kind_from_name(name) < 0)
    return unknown_name(ctx, name);
  json_t *obj = json_pack("{ss}", "name", name);
  if (!obj)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  int rc = parse_object(ctx, obj, out);
  json_decref(obj);
  return rc;
}

const char *decomp_policy_name(const decomp_policy *p) {
  return p ? pol_names[p->kind] : NULL;
}

/* --- canonical JSON ----------------------------------------------------- */

struct sbuf {
  char *s;
  size_t n, cap;
  bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t len) {
  if (b->oom)
    return;
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (b->n + len + 1 > cap)
      cap *= 2;
    char *ns = realloc(b->s, cap);
    if (!ns) {
      b->oom = true;
      return;
    }
    b->s = ns;
    b->cap = cap;
  }
  memcpy(b->s + b->n, s, len);
  b->n += len;
  b->s[b->n] = '\0';
}

static void sb_cat(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_str(struct sbuf *b, const char *s) {
  json_t *j = json_string(s);
  char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
  if (!t)
    b->oom = true;
  else
    sb_cat(b, t);
  free(t);
  json_decref(j);
}

/* The shortest text that reads back as the same double, with ".0" on
 * integral values so that it stays a JSON real. */
static void sb_real(struct sbuf *b, double x) {
  char t[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(t, sizeof t, "%.*g", prec, x);
    if (strtod(t, NULL) == x)
      break;
  }
  if (!strpbrk(t, ".eEn"))
    strcat(t, ".0");
  sb_cat(b, t);
}

static void sb_key(struct sbuf *b, const char *k) {
  sb_cat(b, ", ");
  sb_str(b, k);
  sb_cat(b, ": ");
}

static void sb_globs(struct sbuf *b, char **g, size_t n) {
  sb_cat(b, "[");
  for (size_t i = 0; i < n; i++) {
    if (i)
      sb_cat(b, ", ");
    sb_str(b, g[i]);
  }
  sb_cat(b, "]");
}

static void sb_bits(struct sbuf *b, unsigned bits, const char *const *names) {
  sb_cat(b, "[");
  bool first = true;
  for (unsigned k = 0; names[k]; k++)
    if (bits & (1u << k)) {
      if (!first)
        sb_cat(b, ", ");
      sb_str(b, names[k]);
      first = false;
    }
  sb_cat(b, "]");
}

char *decomp_policy_to_json(const decomp_policy *p) {
  if (!p)
    return NULL;
  struct sbuf b = {0};
  char num[32];
  sb_cat(&b, "{\"name\": ");
  sb_str(&b, pol_names[p->kind]);
  switch (p->kind) {
  case POL_FIXED:
    sb_key(&b, "rank");
    snprintf(num, sizeof num, "%" PRId64, p->rank);
    sb_cat(&b, num);
    break;
  case POL_RATIO: sb_key(&b, "ratio"); sb_real(&b, p->ratio); break;
  case POL_ENERGY: sb_key(&b, "energy"); sb_real(&b, p->energy); break;
  case POL_MAX_ERROR: sb_key(&b, "max_error"); sb_real(&b, p->max_error); break;
  case POL_BUDGET:
    sb_key(&b, p->by_latency  ? "latency_reduction"
               : p->by_params ? "params_reduction"
                              : "macs_reduction");
    sb_real(&b, p->reduction);
    break;
  default:
    break;
  }
  sb_key(&b, "include");
  sb_globs(&b, p->include, p->ninclude);
  sb_key(&b, "exclude");
  sb_globs(&b, p->exclude, p->nexclude);
  sb_key(&b, "overrides");
  sb_cat(&b, "{");
  for (size_t i = 0; i < p->nov; i++) {
    const struct override *o = &p->ov[i];
    if (i)
      sb_cat(&b, ", ");
    sb_str(&b, o->glob);
    switch (o->kind) {
    case RULE_RANK:
      snprintf(num, sizeof num, ": {\"rank\": %" PRId64 "}", o->rank);
      sb_cat(&b, num);
      break;
    case RULE_SKIP: sb_cat(&b, ": {\"skip\": true}"); break;
    case RULE_POLICY: sb_cat(&b, ": {\"skip\": false}"); break;
    case RULE_RATIO: sb_cat(&b, ": {\"ratio\": "); break;
    case RULE_ENERGY: sb_cat(&b, ": {\"energy\": "); break;
    case RULE_MAX_ERROR: sb_cat(&b, ": {\"max_error\": "); break;
    }
    if (o->kind == RULE_RATIO || o->kind == RULE_ENERGY ||
        o->kind == RULE_MAX_ERROR) {
      sb_real(&b, o->value);
      sb_cat(&b, "}");
    }
  }
  sb_cat(&b, "}");
  sb_key(&b, "compute");
  sb_str(&b, p->compute == 32 ? "float32" : p->compute == 64 ? "float64"
                                                             : "auto");
  sb_key(&b, "order");
  sb_str(&b, p->order == CORE_ORDER_VERTICAL_FIRST     ? "vertical_first"
             : p->order == CORE_ORDER_HORIZONTAL_FIRST ? "horizontal_first"
                                                       : "auto");
  sb_key(&b, "require_cheaper");
  sb_cat(&b, p->require_cheaper ? "true" : "false");
  sb_key(&b, "types");
  sb_bits(&b, p->types, type_names);
  sb_key(&b, "methods");
  sb_bits(&b, p->methods, method_names);
  if (p->max_slowdown > 0) {
    sb_key(&b, "max_slowdown");
    sb_real(&b, p->max_slowdown);
  }
  if (p->kind == POL_BUDGET) {
    sb_key(&b, "max_layer_error");
    sb_real(&b, p->max_layer_error);
    sb_key(&b, "strict");
    sb_cat(&b, p->strict ? "true" : "false");
  }
  sb_cat(&b, "}");
  if (b.oom) {
    free(b.s);
    return NULL;
  }
  return b.s;
}

/* --- the cost model ----------------------------------------------------- */

bool core_layer_view_init(const decomp_layer *l, core_order order,
                          core_layer_view *v, char *why, size_t why_len) {
  return core_layer_view_init_method(l, CORE_METHOD_SPATIAL, order, v, why,
                                     why_len);
}

bool core_layer_view_init_method(const decomp_layer *l, core_method method,
                                 core_order order, core_layer_view *v,
                                 char *why, size_t why_len) {
  memset(v, 0, sizeof *v);
  v->layer = l;
  v->order = order;
  v->method = method;
  if (core_layer_is_linear(l)) {
    /* Linear(in, out) → Linear(in, R) + Linear(R, out): per input row
     * (a token, or a sample of a classifier head). */
    double in = (double)l->in_channels, out = (double)l->out_channels;
    v->method = CORE_METHOD_LINEAR;
    v->groups = 1;
    v->params_bias = l->bias ? out : 0;
    v->params_before = in * out + v->params_bias;
    v->params_per_rank = in + out;
    v->macs_before = in * out;
    v->macs_per_rank = in + out;
    v->max_rank = l->in_channels < l->out_channels ? l->in_channels
                                                   : l->out_channels;
    return true;
  }
  if (!core_layer_is_conv(l)) {
    snprintf(why, why_len, "not a Conv2d or Linear");
    return false;
  }
  if (method == CORE_METHOD_LINEAR)
    method = v->method = CORE_METHOD_CHANNEL;
  double g = (double)l->groups;
  double I = (double)(l->in_channels / l->groups);
  double Cout = (double)l->out_channels;
  double kh = (double)l->kernel_size[0], kw = (double)l->kernel_size[1];
  double sh = (double)l->stride[0], sw = (double)l->stride[1];
  bool vert = order == CORE_ORDER_VERTICAL_FIRST;
  bool chan = method == CORE_METHOD_CHANNEL;
  v->groups = l->groups;
  v->params_bias = l->bias ? Cout : 0;
  v->params_before = Cout * I * kh * kw + v->params_bias;
  /* spatial: vertical weight [g·R, I, kh, 1] and horizontal [Cout, R, 1,
   * kw], or the mirror for horizontal-first; channel: [g·R, I, kh, kw] and
   * [Cout, R, 1, 1]. */
  v->params_per_rank = chan   ? g * I * kh * kw + Cout
                       : vert ? g * I * kh + Cout * kw
                              : g * I * kw + Cout * kh;
  int64_t out[2];
  if (core_layer_output_size(l, out)) {
    /* Exact whole-layer MACs: a spatial pair's first conv keeps the other
     * axis at its input size (no stride, no padding on it); a channel
     * pair's first conv is strided as the layer is. */
    double Hi = (double)l->input_size[0], Wi = (double)l->input_size[1];
    double Ho = (double)out[0], Wo = (double)out[1];
    v->macs_before = Ho * Wo * Cout * I * kh * kw;
    v->macs_per_rank = chan   ? Ho * Wo * (g * I * kh * kw + Cout)
                       : vert ? Ho * Wi * g * I * kh + Ho * Wo * Cout * kw
                              : Hi * Wo * g * I * kw + Ho * Wo * Cout * kh;
  } else {
    /* No input size: per output pixel (a spatial pair's first conv runs on
     * the unstrided axis) times an estimated output area. Per-pixel
     * figures alone would make the deepest layers look the most expensive
     * by the square of their channel growth; CNNs halve the resolution as
     * they double the channels, so the area is estimated as (side / Cout)²
     * with side = 3584 (56x56 at 64 channels, 7x7 at 512: ResNets and VGG
     * at 224x224). Then every 3x3 conv of such a net weighs what it really
     * does, a 1x1 downsample 1/18 of it, and a whole-model budget spends
     * rank where the cost is. The info file marks these MACs as estimated;
     * input_size in the spec gives exact ones. */
    double side = CORE_MACS_EST_SIDE / Cout, area = side * side;
    v->macs_before = area * Cout * I * kh * kw;
    v->macs_per_rank = area * (chan   ? g * I * kh * kw + Cout
                               : vert ? g * I * kh * sw + Cout * kw
                                      : g * I * kw * sh + Cout * kh);
    v->macs_estimated = true;
  }
  int64_t Ii = l->in_channels / l->groups, Oi = l->out_channels / l->groups;
  if (chan) {
    int64_t a = Ii * l->kernel_size[0] * l->kernel_size[1];
    v->max_rank = a < Oi ? a : Oi;
    return true;
  }
  int64_t a = vert ? Ii * l->kernel_size[0] : Ii * l->kernel_size[1];
  int64_t b = vert ? Oi * l->kernel_size[1] : Oi * l->kernel_size[0];
  if (l->kernel_size[0] == 1 || l->kernel_size[1] == 1) {
    if (l->kernel_size[0] == 1 && l->kernel_size[1] == 1)
      snprintf(why, why_len, "kernel is 1x1");
    else
      snprintf(why, why_len, "kernel is %" PRId64 "x%" PRId64
               ": nothing to split",
               l->kernel_size[0], l->kernel_size[1]);
    return false;
  }
  v->max_rank = a < b ? a : b;
  return true;
}

void core_view_matrix(const core_layer_view *v, int64_t *rows,
                      int64_t *cols) {
  const decomp_layer *l = v->layer;
  int64_t I = l->in_channels / l->groups, O = l->out_channels / l->groups;
  int64_t kh = l->kernel_size[0], kw = l->kernel_size[1];
  if (v->method != CORE_METHOD_SPATIAL) {
    *rows = I * kh * kw;
    *cols = O;
  } else if (v->order == CORE_ORDER_VERTICAL_FIRST) {
    *rows = I * kh;
    *cols = O * kw;
  } else {
    *rows = I * kw;
    *cols = O * kh;
  }
}

const char *core_method_name(core_method m) {
  switch (m) {
  case CORE_METHOD_CHANNEL: return "channel_svd";
  case CORE_METHOD_LINEAR: return "svd";
  default: return "spatial_svd";
  }
}

/* --- eligibility and order ---------------------------------------------- */

/* The first override whose glob matches `name`, or NULL. */
static const struct override *override_for(const decomp_policy *p,
                                           const char *name) {
  for (size_t i = 0; i < p->nov; i++)
    if (core_glob_match(p->ov[i].glob, name))
      return &p->ov[i];
  return NULL;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

bool core_amct_eligible(const decomp_layer *l, char *why, size_t why_len) {
  int64_t kmin = min64(l->kernel_size[0], l->kernel_size[1]);
  int64_t cmin = min64(l->in_channels, l->out_channels);
  if (l->groups != 1)
    snprintf(why, why_len, "amct: groups is %" PRId64 " (only groups=1)",
             l->groups);
  else if (l->dilation[0] != 1 || l->dilation[1] != 1)
    snprintf(why, why_len,
             "amct: dilation is [%" PRId64 ", %" PRId64 "] (only 1)",
             l->dilation[0], l->dilation[1]);
  else if (max64(l->stride[0], l->stride[1]) > 2)
    snprintf(why, why_len,
             "amct: stride [%" PRId64 ", %" PRId64 "] is over 2",
             l->stride[0], l->stride[1]);
  else if (kmin < 3)
    snprintf(why, why_len,
             "amct: kernel %" PRId64 "x%" PRId64 " has a side under 3",
             l->kernel_size[0], l->kernel_size[1]);
  else if (kmin * cmin < 16)
    snprintf(why, why_len,
             "amct: min(kernel)·min(channels) = %" PRId64 " is under 16",
             kmin * cmin);
  else if (kmin < 7 && cmin < 64)
    snprintf(why, why_len,
             "amct: kernel side %" PRId64 " < 7 with min(channels) %" PRId64
             " < 64",
             kmin, cmin);
  else
    return true;
  return false;
}

core_order core_amct_order(const decomp_layer *l) {
  bool sc = !(l->out_channels < l->in_channels); /* SC*: Cout >= Cin */
  bool fk = l->kernel_size[0] <= l->kernel_size[1]; /* *FK: kh <= kw */
  return sc == fk ? CORE_ORDER_VERTICAL_FIRST : CORE_ORDER_HORIZONTAL_FIRST;
}

unsigned core_policy_methods(const decomp_policy *p, const decomp_layer *l) {
  if (core_layer_is_linear(l))
    return p->types & CORE_TYPE_LINEAR ? CORE_METHODS_LINEAR : 0;
  if (!core_layer_is_conv(l) || !(p->types & CORE_TYPE_CONV2D))
    return 0;
  unsigned m = p->methods & CORE_METHODS_CHANNEL;
  if (l->kernel_size[0] > 1 && l->kernel_size[1] > 1)
    m |= p->methods & CORE_METHODS_SPATIAL;
  return m;
}

bool core_policy_eligible(const decomp_policy *p, const decomp_layer *l,
                          char *why, size_t why_len) {
  if (!core_layer_is_decomposable(l)) {
    snprintf(why, why_len, "not a Conv2d or Linear");
    return false;
  }
  bool linear = core_layer_is_linear(l);
  if (!(p->types & (linear ? CORE_TYPE_LINEAR : CORE_TYPE_CONV2D))) {
    snprintf(why, why_len,
             "%s layers are not among the policy's types (\"types\": "
             "[\"Conv2d\", \"Linear\"] takes both)",
             linear ? "Linear" : "Conv2d");
    return false;
  }
  if (!core_policy_methods(p, l)) {
    /* A conv with a side of 1 and the spatial method only. */
    core_layer_view v;
    core_layer_view_init(l, CORE_ORDER_VERTICAL_FIRST, &v, why, why_len);
    return false;
  }
  bool included = false;
  for (size_t i = 0; i < p->ninclude && !included; i++)
    included = core_glob_match(p->include[i], l->name);
  if (!included) {
    snprintf(why, why_len, "not matched by include");
    return false;
  }
  for (size_t i = 0; i < p->nexclude; i++)
    if (core_glob_match(p->exclude[i], l->name)) {
      snprintf(why, why_len, "excluded by \"%.100s\"", p->exclude[i]);
      return false;
    }
  const struct override *o = override_for(p, l->name);
  if (o && o->kind == RULE_SKIP) {
    snprintf(why, why_len, "skipped by override \"%.100s\"", o->glob);
    return false;
  }
  if (p->kind == POL_AMCT && !core_amct_eligible(l, why, why_len))
    return false;
  return true;
}

int core_policy_order(const decomp_policy *p) { return p->order; }

double core_policy_max_slowdown(const decomp_policy *p) {
  return p->max_slowdown > 0 ? p->max_slowdown : 1.0;
}

bool core_policy_by_latency(const decomp_policy *p) {
  return p->kind == POL_BUDGET && p->by_latency;
}

int core_policy_layer_order(const decomp_policy *p, const decomp_layer *l) {
  if (p->order >= 0)
    return p->order;
  if (p->kind == POL_AMCT && core_layer_is_conv(l))
    return (int)core_amct_order(l);
  return -1;
}

int core_policy_compute_bits(const decomp_policy *p, decomp_dtype weights) {
  if (p->compute)
    return p->compute;
  if (p->kind == POL_AMCT || weights == DECOMP_DTYPE_F64)
    return 64;
  return 32;
}

/* The rule that decides a layer's rank: its override's or the policy's. */
static rule_kind rule_for(const decomp_policy *p, const decomp_layer *l,
                          const struct override **ov) {
  const struct override *o = override_for(p, l->name);
  *ov = o && o->kind != RULE_POLICY ? o : NULL;
  return *ov ? (*ov)->kind : RULE_POLICY;
}

bool core_policy_needs_spectrum(const decomp_policy *p,
                                const decomp_layer *l) {
  char why[160];
  if (!core_policy_eligible(p, l, why, sizeof why))
    return false;
  const struct override *o;
  switch (rule_for(p, l, &o)) {
  case RULE_RANK:
  case RULE_RATIO:
  case RULE_SKIP:
    return false;
  case RULE_ENERGY:
  case RULE_MAX_ERROR:
    return true;
  default:
    return p->kind != POL_FIXED && p->kind != POL_RATIO;
  }
}

/* --- per-layer rank rules ----------------------------------------------- */

/* Energy of the rank-i components summed over the groups: e[i], i <
 * max_rank (non-increasing, as each group's run is). Returns their sum. */
static double rank_energies(const core_layer_view *v, double *e) {
  int64_t k = v->max_rank, g = v->groups > 0 ? v->groups : 1;
  double total = 0;
  for (int64_t i = 0; i < k; i++) {
    double s = 0;
    for (int64_t j = 0; j < g; j++) {
      double x = v->sigma[j * k + i];
      s += x * x;
    }
    e[i] = s;
    total += s;
  }
  return total;
}

int64_t core_rank_for_energy(const double *e, int64_t k, double total,
                             double keep) {
  if (!(total > 0))
    return 1;
  double cum = 0, want = keep * total;
  for (int64_t i = 0; i < k; i++) {
    cum += e[i];
    if (cum >= want)
      return i + 1;
  }
  return k;
}

int64_t core_rank_for_error(const double *e, int64_t k, double total,
                            double bound) {
  if (!(total > 0))
    return 1;
  /* Discarded energy from the tail up, so that small tails are exact. */
  double allowed = bound * bound * total, tail = 0;
  int64_t r = k;
  while (r > 1 && tail + e[r - 1] <= allowed) {
    tail += e[r - 1];
    r--;
  }
  return r;
}

int64_t core_amct_rank(int64_t evbmf, const decomp_layer *l) {
  int64_t kmin = min64(l->kernel_size[0], l->kernel_size[1]);
  int64_t cmin = min64(l->in_channels, l->out_channels);
  double L = (double)(kmin * cmin);
  double d = cmin >= 256 ? 4.0 : 6.0;
  double lo = L / (d + 1.0), hi = L / d;
  double r = (double)evbmf;
  if (r > hi)
    r = hi;
  if (r < lo)
    r = lo;
  /* Python's round(): halves go to the even neighbour. */
  int64_t q = (int64_t)nearbyint(r / 16.0) * 16;
  if (q < 16)
    q = 16;
  if ((double)q < 0.9 * r)
    q += 16;
  return q;
}

/* EVBMF count of a layer: the largest over its groups (the pair keeps one
 * rank for every group). */
static int64_t layer_evbmf(const core_layer_view *v) {
  int64_t rows, cols;
  core_view_matrix(v, &rows, &cols);
  int64_t best = 0, g = v->groups > 0 ? v->groups : 1;
  for (int64_t j = 0; j < g; j++) {
    int64_t r = core_evbmf_rank(v->sigma + j * v->max_rank, v->max_rank, rows,
                                cols, NULL);
    if (r > best)
      best = r;
  }
  return best;
}

/* Whether rank R makes the layer cheaper in the metric (`params` or MACs). */
static bool cheaper(const core_layer_view *v, int64_t R, bool params) {
  if (params)
    return (double)R * v->params_per_rank + v->params_bias < v->params_before;
  return (double)R * v->macs_per_rank < v->macs_before;
}

static void not_cheaper(core_rank_decision *d, const core_layer_view *v,
                        int64_t R, bool params) {
  if (params)
    snprintf(d->reason, sizeof d->reason,
             "rank %" PRId64 " would not make it cheaper (%.0f params -> "
             "%.0f)",
             R, v->params_before,
             (double)R * v->params_per_rank + v->params_bias);
  else
    snprintf(d->reason, sizeof d->reason,
             "rank %" PRId64 " would not make it cheaper (%.0f MACs -> %.0f)",
             R, v->macs_before, (double)R * v->macs_per_rank);
  d->rank = 0;
}

/* One layer under a per-layer rule (`kind`, `o` for overrides). `e` has
 * room for max_rank values. */
static int choose_one(decomp_ctx *ctx, const decomp_policy *p,
                      const core_layer_view *v, rule_kind kind,
                      const struct override *o, double *e,
                      core_rank_decision *d) {
  const decomp_layer *l = v->layer;
  int64_t k = v->max_rank, R = 0;
  bool need_sigma =
      kind == RULE_ENERGY || kind == RULE_MAX_ERROR ||
      (kind == RULE_POLICY && p->kind != POL_FIXED && p->kind != POL_RATIO);
  double total = 0;
  if (need_sigma) {
    if (!v->sigma)
      return core_fail(ctx, DECOMP_ERR_INTERNAL,
                       "%s: policy %s needs the singular values", l->name,
                       pol_names[p->kind]);
    total = rank_energies(v, e);
    if (!isfinite(total))
      return core_fail(ctx, DECOMP_ERR_NONFINITE,
                       "%s: singular values are not finite", l->name);
  }
  bool check_cost = p->require_cheaper;
  switch (kind) {
  case RULE_RANK: R = min64(o->rank, k); break;
  case RULE_RATIO: R = (int64_t)ceil(o->value * (double)k - 1e-9); break;
  case RULE_ENERGY: R = core_rank_for_energy(e, k, total, o->value); break;
  case RULE_MAX_ERROR: R = core_rank_for_error(e, k, total, o->value); break;
  default:
    switch (p->kind) {
    case POL_FIXED: R = min64(p->rank, k); break;
    case POL_RATIO: R = (int64_t)ceil(p->ratio * (double)k - 1e-9); break;
    case POL_ENERGY: R = core_rank_for_energy(e, k, total, p->energy); break;
    case POL_MAX_ERROR:
      R = core_rank_for_error(e, k, total, p->max_error);
      break;
    case POL_VBMF:
      R = layer_evbmf(v);
      if (R == 0) {
        snprintf(d->reason, sizeof d->reason,
                 "vbmf: no component above the noise level (EVBMF rank 0)");
        d->rank = 0;
        return DECOMP_OK;
      }
      break;
    case POL_AMCT: {
      int64_t ev = layer_evbmf(v);
      R = core_amct_rank(ev, l);
      core_log(ctx, DECOMP_LOG_DEBUG, "policy",
               "layer=%s amct evbmf=%" PRId64 " rank=%" PRId64, l->name, ev,
               R);
      /* The reference keeps its rank whatever it costs. */
      check_cost = false;
      break;
    }
    default:
      break;
    }
  }
  if (R < 1)
    R = 1;
  if (R > k)
    R = k;
  if (check_cost && !cheaper(v, R, false)) {
    not_cheaper(d, v, R, false);
    return DECOMP_OK;
  }
  d->rank = R;
  d->reason[0] = '\0';
  return DECOMP_OK;
}

/* --- budget ------------------------------------------------------------- */

/* One candidate the budget manages: gains g[i] = e[i]/total
 * (non-increasing), prefix values V(R) = Σ_{i<R} g[i], cost per rank c (+ a
 * fixed part a) and the cost b of leaving its layer alone; ranks r0..rc
 * keep the quality floor and make it cheaper. Candidates of one layer are
 * adjacent and share `group`. */
struct bl {
  size_t view, group;
  double *g, *V;
  double c, a, b;
  const core_curve *curve; /* latency budget: the cost by rank, not c·R + a */
  int64_t r0, rc;
  bool lossless; /* all-zero kernel: any rank keeps everything */
};

static double bl_value(const struct bl *x, int64_t R) {
  return x->lossless ? 1.0 : x->V[R];
}

static double bl_cost(const struct bl *x, int64_t R) {
  if (!R)
    return x->b;
  return x->curve ? core_curve_at(x->curve, R) : (double)R * x->c + x->a;
}

/* The candidate's best rank at price λ (at least its floor r0), and what
 * that choice is worth: value − λ·cost. */
static int64_t bl_choose(const struct bl *x, double lambda, double *worth) {
  if (x->curve) { /* a measured curve: no closed form, scan its ranks */
    int64_t best = x->r0;
    double bw = bl_value(x, best) - lambda * bl_cost(x, best);
    for (int64_t R = x->r0 + 1; R <= x->rc; R++) {
      double w = bl_value(x, R) - lambda * bl_cost(x, R);
      if (w > bw) {
        bw = w;
        best = R;
      }
    }
    *worth = bw;
    return best;
  }
  /* Largest R ≤ rc with g[R−1] > λ·c, at least r0. */
  int64_t lo = 0, hi = x->rc; /* count of gains above the price */
  double t = lambda * x->c;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo + 1) / 2;
    if (x->g[mid - 1] > t)
      lo = mid;
    else
      hi = mid - 1;
  }
  int64_t R = lo < x->r0 ? x->r0 : lo;
  *worth = bl_value(x, R) - lambda * bl_cost(x, R);
  return R;
}

/* Each layer's choice at price λ: the candidate and rank worth the most, or
 * none (Rs all 0: left alone) when leaving it is worth more. Returns the
 * total cost. */
static double total_cost(const struct bl *bs, size_t m, double lambda,
                         int64_t *Rs) {
  double c = 0;
  for (size_t i = 0; i < m;) {
    size_t j = i, best = m;
    double best_worth = 1.0 - lambda * bs[i].b; /* alone */
    int64_t best_R = 0;
    for (; j < m && bs[j].group == bs[i].group; j++) {
      double w;
      int64_t R = bl_choose(&bs[j], lambda, &w);
      if (w > best_worth) {
        best_worth = w;
        best = j;
        best_R = R;
      }
      if (Rs)
        Rs[j] = 0;
    }
    if (best < m) {
      if (Rs)
        Rs[best] = best_R;
      c += bl_cost(&bs[best], best_R);
    } else {
      c += bs[i].b;
    }
    i = j;
  }
  return c;
}

/* Bit patterns of non-negative doubles order like the values. */
static uint64_t dbits(double x) {
  uint64_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}
static double bitsd(uint64_t u) {
  double x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* Views [i, j) are the candidates of one layer (the same `layer`). */
static size_t group_end(const core_layer_view *views, size_t n, size_t i) {
  size_t j = i + 1;
  while (j < n && views[j].layer == views[i].layer)
    j++;
  return j;
}

static int choose_group(decomp_ctx *ctx, const decomp_policy *p,
                        const core_layer_view *views, size_t i, size_t j,
                        rule_kind kind, const struct override *o, double *e,
                        core_rank_decision *out);

static int choose_budget(decomp_ctx *ctx, const decomp_policy *p,
                         const core_layer_view *views, size_t n,
                         const core_rest *rest, core_rank_decision *out) {
  bool params = p->by_params, timed = p->by_latency;
  const char *unit = timed ? "seconds" : params ? "params" : "MACs";
  struct bl *bs = calloc(n ? n : 1, sizeof *bs);
  int64_t *Rs = calloc(n ? n : 1, sizeof *Rs);
  double *e = NULL;
  int64_t kmax = 1;
  size_t m = 0, groups = 0;
  int rc = DECOMP_OK;
  if (!bs || !Rs)
    goto nomem;
  for (size_t i = 0; i < n; i++)
    kmax = max64(kmax, views[i].max_rank);
  if (!(e = malloc((size_t)kmax * sizeof *e)))
    goto nomem;

  bool any_profile = false;
  for (size_t i = 0; i < n; i++)
    any_profile = any_profile || views[i].profiled;
  if (timed && n && !any_profile) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_POLICY,
                   "policy: budget latency_reduction needs a latency profile "
                   "(decompd.profile) of the model");
    goto fail;
  }
  double before = timed ? rest->latency : params ? rest->params : rest->macs;
  double fixed = before;
  double floor_err2 = p->max_layer_error * p->max_layer_error;
  char why[160];
  for (size_t i = 0; i < n;) {
    size_t j = group_end(views, n, i), gid = groups++;
    const core_layer_view *v0 = &views[i];
    for (size_t c = i; c < j; c++) {
      out[c].rank = 0;
      out[c].reason[0] = '\0';
    }
    if (timed && !v0->profiled) {
      /* Its time is unknown: not in the target, left alone. */
      for (size_t c = i; c < j; c++)
        snprintf(out[c].reason, sizeof out[c].reason,
                 "budget: not in the latency profile");
      i = j;
      continue;
    }
    double b = timed    ? v0->latency_before
               : params ? v0->params_before
                        : v0->macs_before;
    before += b;
    bool ok = core_policy_eligible(p, v0->layer, why, sizeof why);
    if (!ok || v0->max_rank <= 0) {
      for (size_t c = i; c < j; c++)
        snprintf(out[c].reason, sizeof out[c].reason, "%s",
                 ok ? "no rank to split" : why);
      fixed += b;
      i = j;
      continue;
    }
    const struct override *o;
    rule_kind kind = rule_for(p, v0->layer, &o);
    if (kind != RULE_POLICY) {
      if ((rc = choose_group(ctx, p, views, i, j, kind, o, e, out)))
        goto fail;
      double cost = b;
      for (size_t c = i; c < j; c++)
        if (out[c].rank)
          cost = timed    ? (views[c].latency ? core_curve_at(views[c].latency,
                                                              out[c].rank)
                                              : b)
                 : params ? (double)out[c].rank * views[c].params_per_rank +
                                views[c].params_bias
                          : (double)out[c].rank * views[c].macs_per_rank;
      fixed += cost;
      i = j;
      continue;
    }
    size_t first = m;
    for (size_t c = i; c < j; c++) {
      const core_layer_view *v = &views[c];
      core_rank_decision *d = &out[c];
      if (!v->sigma) {
        rc = core_fail(ctx, DECOMP_ERR_INTERNAL,
                       "%s: policy budget needs the singular values",
                       v->layer->name);
        goto fail;
      }
      if (timed && !v->latency) {
        snprintf(d->reason, sizeof d->reason,
                 "budget: the profile did not measure %s",
                 core_method_name(v->method));
        continue;
      }
      struct bl *x = &bs[m];
      x->view = c;
      x->group = gid;
      x->c = params ? v->params_per_rank : v->macs_per_rank;
      x->a = params ? v->params_bias : 0;
      x->b = b;
      x->curve = timed ? v->latency : NULL;
      /* Ranks that make it cheaper (for a measured curve: faster, and
       * within the ranks it was measured at). */
      int64_t rc_ = x->curve ? min64(v->max_rank, core_curve_max_rank(x->curve))
                             : v->max_rank;
      while (rc_ >= 1 && !(bl_cost(x, rc_) < x->b))
        rc_--;
      /* A MAC or parameter budget on a profiled layer: no rank the
       * profile predicts slower than max_slowdown × the layer (the
       * predicted time grows with rank, so that caps the rank). */
      double limit = core_policy_max_slowdown(p) * v->latency_before;
      bool too_slow = false;
      if (!timed && v->latency)
        while (rc_ >= 1 && core_curve_at(v->latency, rc_) > limit) {
          rc_--;
          too_slow = true;
        }
      if (rc_ < 1 && too_slow) {
        snprintf(d->reason, sizeof d->reason,
                 "the profile predicts %s at rank 1 takes %.3g ms, the layer "
                 "%.3g ms (max_slowdown %.3g)",
                 core_method_name(v->method),
                 core_curve_at(v->latency, 1) * 1e3, v->latency_before * 1e3,
                 core_policy_max_slowdown(p));
        continue;
      }
      if (rc_ < 1) {
        if (x->curve)
          snprintf(d->reason, sizeof d->reason,
                   "the profile predicts %s at rank 1 takes %.3g ms, the "
                   "layer %.3g ms: never faster",
                   core_method_name(v->method), bl_cost(x, 1) * 1e3,
                   b * 1e3);
        else
          not_cheaper(d, v, 1, params);
        continue;
      }
      x->rc = rc_;
      if (!(x->g = malloc((size_t)v->max_rank * sizeof *x->g)) ||
          !(x->V = malloc(((size_t)v->max_rank + 1) * sizeof *x->V))) {
        free(x->g);
        free(x->V);
        x->g = x->V = NULL;
        goto nomem;
      }
      m++;
      double tot = rank_energies(v, x->g);
      if (!isfinite(tot)) {
        rc = core_fail(ctx, DECOMP_ERR_NONFINITE,
                       "%s: singular values are not finite", v->layer->name);
        goto fail;
      }
      x->lossless = !(tot > 0);
      x->V[0] = 0;
      for (int64_t r = 0; r < v->max_rank; r++) {
        x->g[r] = x->lossless ? 0 : x->g[r] / tot;
        x->V[r + 1] = x->V[r] + x->g[r];
      }
      /* The quality floor: the smallest rank whose relative error
       * (√(1 − V(R))) is within max_layer_error. */
      x->r0 = 1;
      while (x->r0 < v->max_rank && 1.0 - bl_value(x, x->r0) > floor_err2)
        x->r0++;
      if (x->r0 > x->rc) {
        snprintf(d->reason, sizeof d->reason,
                 "budget: no rank within the quality floor (relative error "
                 "<= %.3g) makes it cheaper",
                 p->max_layer_error);
        free(x->g);
        free(x->V);
        x->g = x->V = NULL;
        m--;
      }
    }
    if (m == first)
      fixed += b;
    i = j;
  }

  double budget = before / p->reduction;
  /* The cheapest configuration within the floor: every managed layer with
   * its cheapest candidate at the floor rank. */
  double floor_cost = fixed;
  for (size_t i = 0; i < m;) {
    size_t j = i, cheapest = i;
    for (; j < m && bs[j].group == bs[i].group; j++)
      if (bl_cost(&bs[j], bs[j].r0) < bl_cost(&bs[cheapest], bs[cheapest].r0))
        cheapest = j;
    floor_cost += bl_cost(&bs[cheapest], bs[cheapest].r0);
    for (size_t c = i; c < j; c++)
      Rs[c] = c == cheapest ? bs[c].r0 : 0;
    i = j;
  }
  double lambda = 0;
  bool reached = true;
  if (m == 0) {
    /* nothing to spend on */
  } else if (floor_cost > budget) {
    reached = false; /* Rs: the floor, as set above */
  } else {
    /* A price high enough that every layer sits at its floor. */
    double hi = 0;
    for (size_t i = 0; i < m; i++) {
      const struct bl *x = &bs[i];
      double t1 = 0;
      if (x->curve) { /* the steepest gain per second along the curve */
        for (int64_t R = x->r0; R < x->rc; R++) {
          double dc = bl_cost(x, R + 1) - bl_cost(x, R);
          if (dc > 0)
            t1 = fmax(t1, x->g[R] / dc);
        }
      } else if (x->r0 < x->rc) {
        t1 = x->g[x->r0] / x->c;
      }
      double t2 = (1.0 - bl_value(x, x->r0)) / (x->b - bl_cost(x, x->r0));
      hi = fmax(hi, fmax(t1, t2));
    }
    hi = hi * 4 + DBL_MIN;
    /* Smallest price whose choice fits the budget (cost falls as the price
     * rises); bisection over the bit patterns is exact and deterministic. */
    uint64_t lo_b = 0, hi_b = dbits(hi);
    if (fixed + total_cost(bs, m, 0, NULL) <= budget)
      hi_b = 0;
    while (lo_b < hi_b) {
      uint64_t mid = lo_b + (hi_b - lo_b) / 2;
      if (fixed + total_cost(bs, m, bitsd(mid), NULL) <= budget)
        hi_b = mid;
      else
        lo_b = mid + 1;
    }
    lambda = bitsd(hi_b);
    double cost = fixed + total_cost(bs, m, lambda, Rs);
    /* Spend what is left one rank at a time, best gain per cost first. */
    for (;;) {
      size_t best = m;
      double best_ratio = -1;
      double best_dc = 0;
      for (size_t i = 0; i < m; i++) {
        const struct bl *x = &bs[i];
        if (Rs[i] == 0 || Rs[i] >= x->rc)
          continue;
        double dc = bl_cost(x, Rs[i] + 1) - bl_cost(x, Rs[i]);
        if (cost + dc > budget)
          continue;
        double r = dc > 0 ? x->g[Rs[i]] / dc : INFINITY;
        if (r > best_ratio) {
          best_ratio = r;
          best = i;
          best_dc = dc;
        }
      }
      if (best == m || best_ratio <= 0)
        break;
      Rs[best]++;
      cost += best_dc;
    }
  }

  double after = fixed;
  for (size_t i = 0; i < m;) {
    size_t j = i, chosen = m;
    for (; j < m && bs[j].group == bs[i].group; j++)
      if (Rs[j])
        chosen = j;
    after += chosen < m ? bl_cost(&bs[chosen], Rs[chosen]) : bs[i].b;
    for (size_t c = i; c < j; c++) {
      core_rank_decision *d = &out[bs[c].view];
      d->rank = Rs[c];
      if (Rs[c])
        d->reason[0] = '\0';
      else if (chosen < m)
        snprintf(d->reason, sizeof d->reason, "%s keeps more per %s saved",
                 core_method_name(views[bs[chosen].view].method), unit);
      else
        snprintf(d->reason, sizeof d->reason,
                 "budget: target %.3gx reached without it (less energy kept "
                 "per %s saved than elsewhere)",
                 p->reduction, unit);
    }
    i = j;
  }
  if (!reached) {
    double got = after > 0 ? before / after : 0.0;
    if (p->strict) {
      rc = core_fail(ctx, DECOMP_ERR_OUT_OF_REACH,
                     "budget: target %.3gx in %s is out of reach: at most "
                     "%.3gx with no layer beyond relative error %.3g "
                     "(max_layer_error)",
                     p->reduction, unit, got, p->max_layer_error);
      goto fail;
    }
    core_log(ctx, DECOMP_LOG_WARN, "policy",
             "budget: target %.3gx in %s is out of reach; reached %.3gx "
             "with every eligible layer at its quality floor (relative "
             "error <= %.3g, max_layer_error); \"strict\": true makes this "
             "an error",
             p->reduction, unit, got, p->max_layer_error);
  }
  core_log(ctx, DECOMP_LOG_INFO, "policy",
           "budget: target=%.3gx metric=%s before=%.6g after=%.6g "
           "reached=%.4gx layers=%zu candidates=%zu price=%.6g",
           p->reduction, unit, before, after, after > 0 ? before / after : 0.0,
           groups, m, lambda);
  goto done;
nomem:
  rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
fail:
done:
  for (size_t i = 0; bs && i < m; i++) {
    free(bs[i].g);
    free(bs[i].V);
  }
  free(bs);
  free(Rs);
  free(e);
  return rc;
}

/* One layer's candidates [i, j) under a per-layer rule: each gets its
 * rank; the one with the fewest MACs after keeps it (the first on a tie),
 * the others are told why not. */
static int choose_group(decomp_ctx *ctx, const decomp_policy *p,
                        const core_layer_view *views, size_t i, size_t j,
                        rule_kind kind, const struct override *o, double *e,
                        core_rank_decision *out) {
  size_t best = j;
  double best_cost = INFINITY;
  /* With a profile of every candidate, "cheaper" is the predicted time. */
  bool timed = true;
  for (size_t c = i; c < j; c++)
    timed = timed && views[c].latency;
  for (size_t c = i; c < j; c++) {
    int rc = choose_one(ctx, p, &views[c], kind, o, e, &out[c]);
    if (rc)
      return rc;
    const core_layer_view *v = &views[c];
    if (out[c].rank > 0 && v->latency) {
      double t = core_curve_at(v->latency, out[c].rank);
      double limit = core_policy_max_slowdown(p) * v->latency_before;
      if (t > limit) {
        snprintf(out[c].reason, sizeof out[c].reason,
                 "the profile predicts %s at rank %" PRId64 " takes %.3g ms, "
                 "the layer %.3g ms (max_slowdown %.3g)",
                 core_method_name(v->method), out[c].rank, t * 1e3,
                 v->latency_before * 1e3, core_policy_max_slowdown(p));
        out[c].rank = 0;
        continue;
      }
    }
    double cost = timed && out[c].rank > 0
                      ? core_curve_at(v->latency, out[c].rank)
                      : (double)out[c].rank * v->macs_per_rank;
    if (out[c].rank > 0 && cost < best_cost) {
      best_cost = cost;
      best = c;
    }
  }
  for (size_t c = i; c < j; c++)
    if (c != best && out[c].rank > 0) {
      out[c].rank = 0;
      snprintf(out[c].reason, sizeof out[c].reason,
               "%s is cheaper at the rank the policy asks for",
               core_method_name(views[best].method));
    }
  return DECOMP_OK;
}

/* --- choosing ----------------------------------------------------------- */

int core_policy_choose_in(decomp_ctx *ctx, const decomp_policy *p,
                          const core_layer_view *views, size_t n,
                          double rest_macs, double rest_params,
                          core_rank_decision *out) {
  if (!p || (n && (!views || !out)))
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "core_policy_choose: NULL argument");
  core_rest rest = {.macs = rest_macs, .params = rest_params};
  return core_policy_choose_rest(ctx, p, views, n, &rest, out);
}

int core_policy_choose_rest(decomp_ctx *ctx, const decomp_policy *p,
                            const core_layer_view *views, size_t n,
                            const core_rest *rest, core_rank_decision *out) {
  if (!p || !rest || (n && (!views || !out)))
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "core_policy_choose: NULL argument");
  if (p->kind == POL_BUDGET)
    return choose_budget(ctx, p, views, n, rest, out);
  int64_t kmax = 1;
  for (size_t i = 0; i < n; i++)
    kmax = max64(kmax, views[i].max_rank);
  double *e = malloc((size_t)kmax * sizeof *e);
  if (!e)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  int rc = DECOMP_OK;
  char why[160];
  for (size_t i = 0; i < n && !rc;) {
    size_t j = group_end(views, n, i);
    const core_layer_view *v = &views[i];
    for (size_t c = i; c < j; c++) {
      out[c].rank = 0;
      out[c].reason[0] = '\0';
    }
    bool ok = core_policy_eligible(p, v->layer, why, sizeof why);
    if (!ok || v->max_rank <= 0) {
      for (size_t c = i; c < j; c++)
        snprintf(out[c].reason, sizeof out[c].reason, "%s",
                 ok ? "no rank to split" : why);
      i = j;
      continue;
    }
    if (p->kind == POL_AMCT && p->order < 0 &&
        v->order != core_amct_order(v->layer))
      core_log(ctx, DECOMP_LOG_WARN, "policy",
               "layer=%s amct mode wants the other order; ranks come from "
               "the spectrum of the order given",
               v->layer->name);
    const struct override *o;
    rule_kind kind = rule_for(p, v->layer, &o);
    rc = choose_group(ctx, p, views, i, j, kind, o, e, out);
    i = j;
  }
  free(e);
  return rc;
}

int core_policy_choose(decomp_ctx *ctx, const decomp_policy *p,
                       const core_layer_view *views, size_t n,
                       core_rank_decision *out) {
  return core_policy_choose_in(ctx, p, views, n, 0, 0, out);
}
