/* task.c — one decomposition cut into tasks that several machines share
 * (DESIGN "Across machines"): the records each stage hands the next, and
 * the decomp_task_* functions that make and check them. The arithmetic is
 * the run's own (run.h, decompose.c); this file only carries its state
 * across: phase 1's spectra, the plan (the policy's decisions), phase 2's
 * factors, and the assembly of the single run's output from them.
 *
 * Every record is a safetensors buffer: float64 tensors hold the numbers
 * (so they come back bit for bit), the factors are held as the output
 * writes them, and the metadata key "decompd_task" holds a JSON text
 * saying what the record is, which job it belongs to (a key over
 * everything that decides the output), and per layer what the tensors
 * mean. A record is checked against the job before any of it is used. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "run.h"

#define TASK_FORMAT "decompd.task"
#define TASK_META   "decompd_task"

/* --- the job key --------------------------------------------------------- */

/* FNV-1a, 64 bits: it tells apart records of different jobs or plans
 * handed over by mistake; it is no defence against forgery. */
typedef struct hash {
  uint64_t h;
} hash;

static void hash_bytes(hash *x, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    x->h ^= b[i];
    x->h *= 0x100000001b3ull;
  }
}

/* A string and its end (so "ab","c" differs from "a","bc"); NULL is
 * hashed unlike "". */
static void hash_str(hash *x, const char *s) {
  if (!s) {
    hash_bytes(x, "\1", 1);
    return;
  }
  hash_bytes(x, s, strlen(s) + 1);
}

static void hash_i64(hash *x, int64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (unsigned char)((uint64_t)v >> (8 * i));
  hash_bytes(x, b, 8);
}

static void hex_of(uint64_t h, char out[17]) {
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static uint64_t digest_of(const void *p, size_t n) {
  hash x = {0xcbf29ce484222325ull};
  hash_bytes(&x, p, n);
  return x.h;
}

/* The job key: the spec and the policy (canonical texts), the options that
 * shape the output (threads, record_spectra, source, calibration, profile)
 * and every tensor's name, dtype and shape. The weights' data is known by
 * opts->source_digest only. */
static int job_key(struct run *R, char out[17]) {
  const decomp_options *o = R->opts;
  hash x = {0xcbf29ce484222325ull};
  char *spec = decomp_spec_to_json(R->spec);
  char *pol = decomp_policy_to_json(R->policy);
  if (!spec || !pol) {
    free(spec);
    free(pol);
    return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  hash_str(&x, TASK_FORMAT "/1");
  hash_str(&x, spec);
  hash_str(&x, pol);
  free(spec);
  free(pol);
  hash_i64(&x, o && o->threads > 0 ? o->threads : 0);
  hash_i64(&x, o && o->record_spectra);
  hash_str(&x, o ? o->source_digest : NULL);
  hash_str(&x, o && o->source_format
                   ? o->source_format
                   : decomp_format_name(decomp_weights_format(R->w)));
  hash_i64(&x, (int64_t)core_calib_count(R->calib));
  hash_str(&x, o && o->calibration ? o->calibration_digest : NULL);
  hash_str(&x, o ? o->profile : NULL);
  hash_str(&x, o && o->profile ? o->profile_digest : NULL);
  for (size_t i = 0; i < decomp_weights_count(R->w); i++) {
    const decomp_tensor *t = decomp_weights_at(R->w, i);
    hash_str(&x, t->name);
    hash_i64(&x, t->dtype);
    for (int d = 0; d < t->ndim; d++)
      hash_i64(&x, t->shape[d]);
    hash_i64(&x, -1);
  }
  hex_of(x.h, out);
  return DECOMP_OK;
}

/* --- writing a record ---------------------------------------------------- */

/* A record being made: its tensors (data borrowed until written) and its
 * metadata document. */
typedef struct rec_out {
  core_st_item *items;
  const void **data;
  char **names;
  void **owned; /* data the record holds (copies, factors handed over) */
  size_t n, cap;
  json_t *doc, *layers;
} rec_out;

static int rec_init(struct run *R, rec_out *o, const char *kind) {
  char key[17];
  int rc = job_key(R, key);
  if (rc != DECOMP_OK)
    return rc;
  *o = (rec_out){0};
  o->layers = json_array();
  o->doc = json_pack("{s:s,s:i,s:s,s:s}", "format", TASK_FORMAT, "version", 1,
                     "kind", kind, "job", key);
  if (!o->layers || !o->doc ||
      json_object_set(o->doc, "layers", o->layers) != 0)
    return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
  return DECOMP_OK;
}

static void rec_free(rec_out *o) {
  for (size_t i = 0; i < o->n; i++) {
    free(o->names[i]);
    free(o->owned[i]);
  }
  free(o->names);
  free(o->owned);
  free(o->items);
  free(o->data);
  json_decref(o->doc);
  json_decref(o->layers);
}

/* Add a dense tensor NAME (prefix + suffix) of `dt` and `shape`. */
static int rec_add(decomp_ctx *ctx, rec_out *o, const char *prefix,
                   const char *suffix, decomp_dtype dt, int ndim,
                   const int64_t *shape, const void *data) {
  if (o->n == o->cap) {
    size_t cap = o->cap ? 2 * o->cap : 16;
    core_st_item *it = realloc(o->items, cap * sizeof *it);
    if (it)
      o->items = it;
    const void **d = realloc(o->data, cap * sizeof *d);
    if (d)
      o->data = d;
    char **nm = realloc(o->names, cap * sizeof *nm);
    if (nm)
      o->names = nm;
    void **ow = realloc(o->owned, cap * sizeof *ow);
    if (ow)
      o->owned = ow;
    if (!it || !d || !nm || !ow)
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    o->cap = cap;
  }
  size_t lp = strlen(prefix), ls = strlen(suffix);
  char *name = malloc(lp + ls + 1);
  if (!name)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  memcpy(name, prefix, lp);
  memcpy(name + lp, suffix, ls + 1);
  core_st_item *it = &o->items[o->n];
  *it = (core_st_item){
      .name = name, .dtype = dt, .ndim = ndim, .nbytes = decomp_dtype_size(dt)};
  for (int d = 0; d < ndim; d++) {
    it->shape[d] = shape[d];
    it->nbytes *= (uint64_t)shape[d];
  }
  o->names[o->n] = name;
  o->owned[o->n] = NULL;
  o->data[o->n++] = data;
  return DECOMP_OK;
}

/* Add NAME (prefix + suffix), a copy of n float64 values. */
static int rec_add_f64(decomp_ctx *ctx, rec_out *o, const char *prefix,
                       const char *suffix, const double *v, int64_t n) {
  double *copy = malloc((size_t)n * sizeof *copy);
  if (!copy)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  memcpy(copy, v, (size_t)n * sizeof *copy);
  int rc = rec_add(ctx, o, prefix, suffix, DECOMP_DTYPE_F64, 1, &n, copy);
  if (rc != DECOMP_OK) {
    free(copy);
    return rc;
  }
  o->owned[o->n - 1] = copy;
  return DECOMP_OK;
}

/* The record as one safetensors buffer (free with decomp_free). */
static int rec_finish(decomp_ctx *ctx, rec_out *o, int64_t peak, void **out,
                      size_t *out_len) {
  char *doc = NULL, *text = NULL;
  json_t *meta = NULL;
  size_t tlen = 0, hlen = 0;
  int rc = DECOMP_OK;
  if (json_object_set_new(o->doc, "peak_rss_bytes", json_integer(peak)) ||
      !(doc = json_dumps(o->doc, JSON_COMPACT | JSON_PRESERVE_ORDER)) ||
      !(meta = json_pack("{s:s}", TASK_META, doc)) ||
      !(text = json_dumps(meta, JSON_COMPACT))) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  free(doc);
  doc = NULL;
  char *head = NULL;
  if ((rc = core_st_header(ctx, o->items, o->n, text, &head, &tlen, &hlen)) !=
      DECOMP_OK)
    goto done;
  size_t len = 8 + hlen;
  for (size_t i = 0; i < o->n; i++)
    len += (size_t)o->items[i].nbytes;
  unsigned char *buf = malloc(len);
  if (!buf) {
    free(head);
    rc = core_fail(ctx, DECOMP_ERR_NOMEM,
                   "out of memory for a %zu-byte "
                   "task record",
                   len);
    goto done;
  }
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  memcpy(buf + 8, head, tlen);
  memset(buf + 8 + tlen, ' ', hlen - tlen);
  free(head);
  size_t at = 8 + hlen;
  for (size_t i = 0; i < o->n; i++) {
    if (o->items[i].nbytes)
      memcpy(buf + at, o->data[i], (size_t)o->items[i].nbytes);
    at += (size_t)o->items[i].nbytes;
    /* What the record owns goes as soon as it is in: the peak is about one
     * copy of the data, not two. */
    free(o->owned[i]);
    o->owned[i] = NULL;
  }
  *out = buf;
  *out_len = len;
done:
  free(doc);
  free(text);
  json_decref(meta);
  return rc;
}

/* Phase 1's results of a candidate layer: each candidate's method, order,
 * spectrum shape, and tensors NAME/c/energy ([‖W‖², ‖W·S‖²]) and, when
 * computed, NAME/c/sigma ([groups, k]). */
static int rec_add_spectra(decomp_ctx *ctx, rec_out *o, const struct layer *L,
                           json_t *entry) {
  json_t *cands = json_array();
  if (!cands || json_object_set_new(entry, "candidates", cands))
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  const char *name = L->info.layer->name;
  for (int c = 0; c < L->ncand; c++) {
    const core_factors *f = &L->cfac[c];
    char sfx[32];
    json_t *e = json_pack("{s:s,s:s,s:I,s:I,s:b}", "method",
                          core_method_name(L->cand[c].method), "order",
                          core_order_name(L->cand[c].order), "groups",
                          (json_int_t)f->groups, "k", (json_int_t)f->k, "sigma",
                          f->sigma != NULL);
    if (!e || json_array_append_new(cands, e))
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    snprintf(sfx, sizeof sfx, "/%d/energy", c);
    double en[2] = {f->energy_total, f->out_total};
    int rc = rec_add_f64(ctx, o, name, sfx, en, 2);
    if (rc == DECOMP_OK && f->sigma) {
      int64_t shp[2] = {f->groups, f->k};
      snprintf(sfx, sizeof sfx, "/%d/sigma", c);
      rc = rec_add(ctx, o, name, sfx, DECOMP_DTYPE_F64, 2, shp, f->sigma);
    }
    if (rc != DECOMP_OK)
      return rc;
  }
  return DECOMP_OK;
}

/* --- reading a record ---------------------------------------------------- */

/* A record handed back: its tensors (borrowing the caller's buffer), its
 * document and its layers. */
typedef struct rec_in {
  decomp_weights *w;
  json_t *doc, *layers;
  int64_t peak;
  char what[320]; /* "spectra record 2 (layer conv1)", … for messages */
} rec_in;

static void rec_in_free(rec_in *in) {
  decomp_weights_free(in->w);
  json_decref(in->doc);
  *in = (rec_in){0};
}

/* Open record `buf` as a `kind` record of this job (made from the plan
 * whose digest is `plan`, when given). */
static int rec_open(struct run *R, const void *buf, size_t len,
                    const char *path, const char *kind, const char *what,
                    const char *plan, rec_in *in) {
  decomp_ctx *ctx = R->ctx;
  char key[17];
  int rc = job_key(R, key);
  *in = (rec_in){0};
  snprintf(in->what, sizeof in->what, "%s", what);
  if (rc != DECOMP_OK)
    return rc;
  if (path) { /* mapped, its pages given back as its layers are written */
    if ((rc = decomp_weights_open(ctx, path, &in->w)) != DECOMP_OK)
      return rc == DECOMP_ERR_IO || rc == DECOMP_ERR_NOMEM
                 ? rc
                 : core_fail(ctx, DECOMP_ERR_BAD_TASK, "%s (%s): %s", what,
                             path, decomp_errmsg(ctx));
    if (decomp_weights_format(in->w) != DECOMP_FORMAT_SAFETENSORS ||
        decomp_weights_shard_count(in->w) != 0) {
      rec_in_free(in);
      return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                       "%s (%s): not a task record (a safetensors file)", what,
                       path);
    }
  } else {
    if (!buf || decomp_detect_format(buf, len) != DECOMP_FORMAT_SAFETENSORS)
      return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                       "%s: not a task record (a safetensors buffer)", what);
    if ((rc = decomp_weights_open_memory(ctx, buf, len, &in->w)) != DECOMP_OK)
      return core_fail(ctx, DECOMP_ERR_BAD_TASK, "%s: %s", what,
                       decomp_errmsg(ctx));
  }
  const char *meta = decomp_weights_metadata(in->w);
  json_t *m = meta ? json_loads(meta, 0, NULL) : NULL;
  const char *text = json_string_value(json_object_get(m, TASK_META));
  in->doc = text ? json_loads(text, 0, NULL) : NULL;
  json_decref(m);
  const char *fmt = json_string_value(json_object_get(in->doc, "format"));
  const char *k = json_string_value(json_object_get(in->doc, "kind"));
  const char *job = json_string_value(json_object_get(in->doc, "job"));
  in->layers = json_object_get(in->doc, "layers");
  /* Messages name the record's layers. */
  size_t nl = json_array_size(in->layers);
  const char *l0 =
      json_string_value(json_object_get(json_array_get(in->layers, 0), "name"));
  if (l0 && nl == 1)
    snprintf(in->what, sizeof in->what, "%s (layer %s)", what, l0);
  else if (l0)
    snprintf(in->what, sizeof in->what, "%s (layers %s and %zu more)", what, l0,
             nl - 1);
  what = in->what;
  in->peak = json_integer_value(json_object_get(in->doc, "peak_rss_bytes"));
  if (!fmt || strcmp(fmt, TASK_FORMAT) != 0 || !k || !job ||
      json_integer_value(json_object_get(in->doc, "version")) != 1 ||
      !json_is_array(in->layers))
    rc = core_fail(ctx, DECOMP_ERR_BAD_TASK,
                   "%s: not a decompd task record (version 1)", what);
  else if (strcmp(k, kind) != 0)
    rc = core_fail(ctx, DECOMP_ERR_BAD_TASK,
                   "%s: a %s record where a %s record is expected", what, k,
                   kind);
  else if (strcmp(job, key) != 0)
    rc = core_fail(ctx, DECOMP_ERR_BAD_TASK,
                   "%s: made for another job (job key %s, this job's %s: "
                   "spec, policy, options or weights differ)",
                   what, job, key);
  else if (plan) {
    const char *p = json_string_value(json_object_get(in->doc, "plan"));
    if (!p || strcmp(p, plan) != 0)
      rc = core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "%s: made from another plan (plan %s, this one %s)", what,
                     p ? p : "none", plan);
  }
  if (rc != DECOMP_OK)
    rec_in_free(in);
  return rc;
}

/* Tensor NAME (prefix + suffix) of the record, or NULL. */
static const decomp_tensor *rec_tensor(const rec_in *in, const char *prefix,
                                       const char *suffix) {
  char name[1024];
  if ((size_t)snprintf(name, sizeof name, "%s%s", prefix, suffix) >=
      sizeof name)
    return NULL;
  return decomp_weights_find(in->w, name);
}

/* Copy float64 tensor NAME (prefix + suffix) of shape [n0] (n1 == 0) or
 * [n0, n1] into dst[n0·n1]; its data may sit unaligned in the buffer. */
static int rec_f64(decomp_ctx *ctx, const rec_in *in, const char *layer,
                   const char *suffix, int64_t n0, int64_t n1, double *dst) {
  const decomp_tensor *t = rec_tensor(in, layer, suffix);
  int nd = n1 ? 2 : 1;
  if (!t || t->dtype != DECOMP_DTYPE_F64 || t->ndim != nd ||
      t->shape[0] != n0 || (n1 && t->shape[1] != n1))
    return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s: tensor %s%s is missing or not float64 "
                     "[%lld%s%.0lld]",
                     in->what, layer, layer, suffix, (long long)n0,
                     n1 ? ", " : "", (long long)n1);
  memcpy(dst, t->data, (size_t)(n0 * (n1 ? n1 : 1)) * sizeof *dst);
  return DECOMP_OK;
}

/* The index of spec layer `name`, or n. */
static size_t layer_index(const struct run *R, const char *name) {
  for (size_t i = 0; name && i < R->n; i++)
    if (strcmp(R->Ls[i].info.layer->name, name) == 0)
      return i;
  return R->n;
}

/* The layer a record's entry is about: it must be one of the spec's
 * candidate layers, not seen before in this stage. */
static int rec_layer(struct run *R, const rec_in *in, json_t *e, bool *seen,
                     struct layer **out) {
  const char *name = json_string_value(json_object_get(e, "name"));
  size_t i = layer_index(R, name);
  if (i == R->n)
    return core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s is not in the spec", in->what,
                     name ? name : "(no name)");
  if (!R->Ls[i].candidate)
    return core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s is not one this job decomposes (%s)",
                     in->what, name,
                     R->Ls[i].info.skip_reason ? R->Ls[i].info.skip_reason
                                               : "not a candidate");
  if (seen[i])
    return core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s: a second result for it", in->what, name);
  seen[i] = true;
  *out = &R->Ls[i];
  return DECOMP_OK;
}

/* Phase 1's results of layer L from entry `e` (rec_add_spectra's), in
 * place of running phase 1 on it. */
static int load_spectra(struct run *R, const rec_in *in, json_t *e,
                        struct layer *L) {
  const char *name = L->info.layer->name;
  json_t *cands = json_object_get(e, "candidates");
  if (!json_is_array(cands) || json_array_size(cands) != (size_t)L->ncand)
    return core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s: %zu candidates, this job has %d", in->what,
                     name, json_array_size(cands), L->ncand);
  for (int c = 0; c < L->ncand; c++) {
    json_t *x = json_array_get(cands, (size_t)c);
    core_layer_view *v = &L->cand[c];
    const char *method = json_string_value(json_object_get(x, "method"));
    const char *order = json_string_value(json_object_get(x, "order"));
    int64_t g = json_integer_value(json_object_get(x, "groups"));
    int64_t k = json_integer_value(json_object_get(x, "k"));
    bool sig = json_is_true(json_object_get(x, "sigma"));
    if (!method || strcmp(method, core_method_name(v->method)) != 0 || !order ||
        strcmp(order, core_order_name(v->order)) != 0 ||
        g != L->info.layer->groups || k != v->max_rank || sig != L->job_sigma)
      return core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                       "%s: layer %s: candidate %d is %s %s, %lld groups of "
                       "%lld values%s; this job's is %s %s, %lld of %lld%s",
                       in->what, name, c, method ? method : "?",
                       order ? order : "?", (long long)g, (long long)k,
                       sig ? " with its spectrum" : "",
                       core_method_name(v->method), core_order_name(v->order),
                       (long long)L->info.layer->groups, (long long)v->max_rank,
                       L->job_sigma ? " with its spectrum" : "");
    double en[2];
    char sfx[32];
    snprintf(sfx, sizeof sfx, "/%d/energy", c);
    int rc = rec_f64(R->ctx, in, name, sfx, 2, 0, en);
    if (rc != DECOMP_OK)
      return rc;
    core_factors f = {.groups = g,
                      .k = k,
                      .energy_total = en[0],
                      .out_total = en[1],
                      .dtype = L->weight->dtype};
    if (sig) {
      if (!(f.sigma = malloc((size_t)(g * k) * sizeof *f.sigma)))
        return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
      snprintf(sfx, sizeof sfx, "/%d/sigma", c);
      if ((rc = rec_f64(R->ctx, in, name, sfx, g, k, f.sigma)) != DECOMP_OK) {
        free(f.sigma);
        return rc;
      }
    }
    /* As phase 1 leaves them. */
    core_run_set_spectrum(L, c, &f);
  }
  return DECOMP_OK;
}

/* Layer names → a selection over the spec (names NULL: every layer). */
static int select_layers(decomp_ctx *ctx, const decomp_spec *spec,
                         const char *const *names, size_t nnames, bool **out) {
  size_t n = decomp_spec_count(spec);
  bool *sel = calloc(n ? n : 1, sizeof *sel);
  if (!sel)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0; !names && i < n; i++)
    sel[i] = true;
  for (size_t j = 0; names && j < nnames; j++) {
    size_t i = 0;
    for (; names[j] && i < n; i++)
      if (strcmp(decomp_spec_at(spec, i)->name, names[j]) == 0)
        break;
    if (i == n) {
      free(sel);
      return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                       "task: layer %s is not in the spec",
                       names[j] ? names[j] : "(null)");
    }
    sel[i] = true;
  }
  *out = sel;
  return DECOMP_OK;
}

/* The chosen candidate of layer L at dec[c…] (core_run_apply's rule). */
static int chosen_of(const struct layer *L, const core_rank_decision *dec) {
  int chosen = 0;
  for (int x = 0; x < L->ncand; x++)
    if (dec[x].rank > 0)
      chosen = x;
  return chosen;
}

/* Put the plan `buf` in place of phase 1 and the policy's choice: every
 * candidate layer's spectra and decision, then core_run_views and the
 * decisions in R->dec. *digest gets the plan's digest. */
static int load_plan(struct run *R, const void *buf, size_t len,
                     char digest[17], int64_t *peak) {
  rec_in in;
  bool *seen = calloc(R->n ? R->n : 1, sizeof *seen);
  core_rank_decision *d = calloc(R->n ? R->n : 1, sizeof *d);
  int *chosen = calloc(R->n ? R->n : 1, sizeof *chosen);
  int rc;
  if (!seen || !d || !chosen) {
    free(seen);
    free(d);
    free(chosen);
    return core_fail(R->ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  if ((rc = rec_open(R, buf, len, NULL, "plan", "plan", NULL, &in)) !=
      DECOMP_OK)
    goto out;
  hex_of(digest_of(buf, len), digest);
  *peak = in.peak;
  size_t x;
  json_t *e;
  json_array_foreach(in.layers, x, e) {
    struct layer *L;
    if ((rc = rec_layer(R, &in, e, seen, &L)) != DECOMP_OK ||
        (rc = load_spectra(R, &in, e, L)) != DECOMP_OK)
      goto out;
    size_t i = (size_t)(L - R->Ls);
    json_int_t c = json_integer_value(json_object_get(e, "chosen"));
    json_int_t rank = json_integer_value(json_object_get(e, "rank"));
    const char *why = json_string_value(json_object_get(e, "reason"));
    if (c < 0 || c >= L->ncand || rank < 0 || rank > L->cand[c].max_rank ||
        (rank == 0 && c != 0) || !why)
      rc = core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                     "plan: layer %s: candidate %lld at rank %lld is not a "
                     "decision this layer can take",
                     L->info.layer->name, (long long)c, (long long)rank);
    if (rc != DECOMP_OK)
      goto out;
    chosen[i] = (int)c;
    d[i].rank = rank;
    snprintf(d[i].reason, sizeof d[i].reason, "%s", why);
  }
  for (size_t i = 0; i < R->n; i++)
    if (R->Ls[i].candidate && !seen[i]) {
      rc = core_fail(R->ctx, DECOMP_ERR_BAD_TASK,
                     "plan: layer %s is missing from it",
                     R->Ls[i].info.layer->name);
      goto out;
    }
  if ((rc = core_run_views(R)) != DECOMP_OK)
    goto out;
  for (size_t i = 0, c = 0; i < R->n; i++) {
    if (!R->Ls[i].candidate)
      continue;
    R->dec[c + (size_t)chosen[i]] = d[i];
    c += (size_t)R->Ls[i].ncand;
  }
out:
  rec_in_free(&in);
  free(seen);
  free(d);
  free(chosen);
  return rc;
}

static int64_t peak_max(int64_t a, int64_t b) {
  return a > b ? a : b;
}

/* --- the tasks ------------------------------------------------------------ */

int decomp_task_spectra(decomp_ctx *ctx, const decomp_weights *w,
                        const decomp_spec *spec, const decomp_policy *policy,
                        const decomp_options *opts, const char *const *layers,
                        size_t nlayers, void **out, size_t *out_len) {
  if (!w || !spec || !policy || !out || !out_len)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "task_spectra: weights, spec, policy and out are "
                     "required");
  bool *sel = NULL;
  struct run R;
  rec_out o = {0};
  int rc = select_layers(ctx, spec, layers, nlayers, &sel);
  if (rc != DECOMP_OK)
    return rc;
  if ((rc = core_run_open(&R, ctx, w, spec, policy, opts, sel)) != DECOMP_OK) {
    free(sel);
    return rc;
  }
  if ((rc = core_run_phase(&R, 1)) != DECOMP_OK ||
      (rc = rec_init(&R, &o, "spectra")) != DECOMP_OK)
    goto out;
  for (size_t i = 0; i < R.n; i++) {
    struct layer *L = &R.Ls[i];
    if (!L->candidate || !sel[i])
      continue;
    json_t *e = json_pack("{s:s}", "name", L->info.layer->name);
    if (!e || json_array_append_new(o.layers, e)) {
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      goto out;
    }
    if ((rc = rec_add_spectra(ctx, &o, L, e)) != DECOMP_OK)
      goto out;
  }
  rc = rec_finish(ctx, &o, core_peak_rss_bytes(), out, out_len);
out:
  rec_free(&o);
  core_run_close(&R);
  free(sel);
  return rc;
}

int decomp_task_plan(decomp_ctx *ctx, const decomp_weights *w,
                     const decomp_spec *spec, const decomp_policy *policy,
                     const decomp_options *opts, const void *const *records,
                     const size_t *lens, size_t nrecords, void **out,
                     size_t *out_len) {
  if (!w || !spec || !policy || !out || !out_len ||
      (nrecords && (!records || !lens)))
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "task_plan: weights, spec, policy, records and out are "
                     "required");
  struct run R;
  rec_out o = {0};
  bool *none = calloc(decomp_spec_count(spec) + 1, sizeof *none);
  bool *seen = calloc(decomp_spec_count(spec) + 1, sizeof *seen);
  int64_t peak = core_peak_rss_bytes();
  int rc;
  if (!none || !seen) {
    free(none);
    free(seen);
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  if ((rc = core_run_open(&R, ctx, w, spec, policy, opts, none)) != DECOMP_OK) {
    free(none);
    free(seen);
    return rc;
  }
  /* Phase 1 from the records, in place of running it. */
  for (size_t r = 0; r < nrecords; r++) {
    rec_in in;
    char what[48];
    snprintf(what, sizeof what, "spectra record %zu", r);
    if ((rc = rec_open(&R, records[r], lens[r], NULL, "spectra", what, NULL,
                       &in)) != DECOMP_OK)
      goto out;
    peak = peak_max(peak, in.peak);
    size_t x;
    json_t *e;
    json_array_foreach(in.layers, x, e) {
      struct layer *L;
      if ((rc = rec_layer(&R, &in, e, seen, &L)) != DECOMP_OK ||
          (rc = load_spectra(&R, &in, e, L)) != DECOMP_OK)
        break;
    }
    rec_in_free(&in);
    if (rc != DECOMP_OK)
      goto out;
  }
  for (size_t i = 0; i < R.n; i++)
    if (R.Ls[i].candidate && !seen[i]) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "layer %s: no spectra record (every layer the job "
                     "decomposes needs one before the plan)",
                     R.Ls[i].info.layer->name);
      goto out;
    }
  if ((rc = core_run_views(&R)) != DECOMP_OK ||
      (rc = core_run_choose(&R)) != DECOMP_OK ||
      (rc = rec_init(&R, &o, "plan")) != DECOMP_OK)
    goto out;
  for (size_t i = 0, c = 0; i < R.n; i++) {
    struct layer *L = &R.Ls[i];
    if (!L->candidate)
      continue;
    int chosen = chosen_of(L, &R.dec[c]);
    const core_rank_decision *d = &R.dec[c + (size_t)chosen];
    c += (size_t)L->ncand;
    json_t *e = json_pack("{s:s,s:i,s:I,s:s}", "name", L->info.layer->name,
                          "chosen", chosen, "rank", (json_int_t)d->rank,
                          "reason", d->rank > 0 ? "" : d->reason);
    if (!e || json_array_append_new(o.layers, e)) {
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      goto out;
    }
    if ((rc = rec_add_spectra(ctx, &o, L, e)) != DECOMP_OK)
      goto out;
  }
  rc = rec_finish(ctx, &o, peak, out, out_len);
  /* The layers the plan leaves alone are reported here: no factors task
   * has them, and a single run reports them with the others. */
  if (rc == DECOMP_OK) {
    int rc2 = core_run_apply(&R, none);
    if (rc2 == DECOMP_OK)
      rc2 = core_run_report_left_alone(&R);
    if (rc2 != DECOMP_OK) {
      decomp_free(*out);
      *out = NULL;
      rc = rc2;
    }
  }
out:
  rec_free(&o);
  core_run_close(&R);
  free(none);
  free(seen);
  return rc;
}

int decomp_task_factors(decomp_ctx *ctx, const decomp_weights *w,
                        const decomp_spec *spec, const decomp_policy *policy,
                        const decomp_options *opts, const void *plan,
                        size_t plan_len, const char *const *layers,
                        size_t nlayers, void **out, size_t *out_len) {
  if (!w || !spec || !policy || !plan || !out || !out_len)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "task_factors: weights, spec, policy, plan and out are "
                     "required");
  bool *sel = NULL;
  bool *none = calloc(decomp_spec_count(spec) + 1, sizeof *none);
  struct run R;
  rec_out o = {0};
  char digest[17];
  int64_t plan_peak = 0;
  int rc = none ? select_layers(ctx, spec, layers, nlayers, &sel)
                : core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  if (rc != DECOMP_OK ||
      (rc = core_run_open(&R, ctx, w, spec, policy, opts, none)) != DECOMP_OK) {
    free(none);
    free(sel);
    return rc;
  }
  if ((rc = load_plan(&R, plan, plan_len, digest, &plan_peak)) != DECOMP_OK ||
      (rc = core_run_apply(&R, sel)) != DECOMP_OK ||
      (rc = core_run_phase(&R, 2)) != DECOMP_OK ||
      (rc = rec_init(&R, &o, "factors")) != DECOMP_OK)
    goto out;
  if (json_object_set_new(o.doc, "plan", json_string(digest))) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < R.n; i++) {
    struct layer *L = &R.Ls[i];
    const core_factors *f = &L->fac;
    const char *name = L->info.layer->name;
    if (!sel[i] || L->info.rank <= 0)
      continue;
    json_t *e = json_pack("{s:s,s:I,s:s,s:s,s:I,s:I,s:b}", "name", name, "rank",
                          (json_int_t)L->info.rank, "method",
                          core_method_name(L->info.view.method), "order",
                          core_order_name(L->info.view.order), "groups",
                          (json_int_t)f->groups, "k", (json_int_t)f->k, "sigma",
                          f->sigma != NULL);
    if (!e || json_array_append_new(o.layers, e)) {
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      goto out;
    }
    double en[4] = {f->energy_total, f->energy_discarded, f->out_total,
                    f->out_discarded};
    int64_t shp[2] = {f->groups, f->k};
    if ((rc = rec_add_f64(ctx, &o, name, "/energy", en, 4)) != DECOMP_OK ||
        (f->sigma && (rc = rec_add(ctx, &o, name, "/sigma", DECOMP_DTYPE_F64, 2,
                                   shp, f->sigma)) != DECOMP_OK) ||
        (rc = rec_add(ctx, &o, name, ".0.weight", f->dtype, f->ndim,
                      f->first_shape, f->first)) != DECOMP_OK)
      goto out;
    o.owned[o.n - 1] = L->fac.first; /* the record's now */
    L->fac.first = NULL;
    if ((rc = rec_add(ctx, &o, name, ".1.weight", f->dtype, f->ndim,
                      f->second_shape, f->second)) != DECOMP_OK)
      goto out;
    o.owned[o.n - 1] = L->fac.second;
    L->fac.second = NULL;
  }
  rc = rec_finish(ctx, &o, core_peak_rss_bytes(), out, out_len);
out:
  rec_free(&o);
  core_run_close(&R);
  free(none);
  free(sel);
  return rc;
}

/* One decomposed layer's phase-2 result, checked against the plan: its
 * factors (borrowed from the record) and what the info file says of it
 * put in place. */
static int load_factors(struct run *R, const rec_in *in, json_t *e,
                        struct layer *L, const decomp_tensor **first,
                        const decomp_tensor **second) {
  decomp_ctx *ctx = R->ctx;
  const char *name = L->info.layer->name;
  const core_layer_view *v = &L->info.view;
  if (L->info.rank <= 0)
    return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s: the plan leaves it alone (%s), yet a "
                     "result has factors for it",
                     in->what, name, L->info.skip_reason);
  json_int_t rank = json_integer_value(json_object_get(e, "rank"));
  const char *method = json_string_value(json_object_get(e, "method"));
  const char *order = json_string_value(json_object_get(e, "order"));
  int64_t g = json_integer_value(json_object_get(e, "groups"));
  int64_t k = json_integer_value(json_object_get(e, "k"));
  bool sig = json_is_true(json_object_get(e, "sigma"));
  if (rank != L->info.rank)
    return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s: factors at rank %lld, the plan says %lld",
                     in->what, name, (long long)rank, (long long)L->info.rank);
  if (!method || strcmp(method, core_method_name(v->method)) != 0 || !order ||
      strcmp(order, core_order_name(v->order)) != 0 ||
      g != L->info.layer->groups || k != v->max_rank)
    return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "%s: layer %s: factors by %s %s, the plan says %s %s",
                     in->what, name, method ? method : "?", order ? order : "?",
                     core_method_name(v->method), core_order_name(v->order));
  int ndim;
  int64_t shp[2][4];
  core_run_factor_shapes(L, L->info.rank, &ndim, shp[0], shp[1]);
  const decomp_tensor *t[2] = {rec_tensor(in, name, ".0.weight"),
                               rec_tensor(in, name, ".1.weight")};
  for (int c = 0; c < 2; c++) {
    bool ok = t[c] && t[c]->dtype == L->weight->dtype && t[c]->ndim == ndim &&
              decomp_tensor_is_contiguous(t[c]);
    for (int d = 0; ok && d < ndim; d++)
      ok = t[c]->shape[d] == shp[c][d];
    if (!ok)
      return core_fail(ctx, DECOMP_ERR_BAD_TASK,
                       "%s: layer %s: %s.%d.weight is missing or not %s "
                       "[%lld, %lld%s] as rank %lld gives",
                       in->what, name, name, c,
                       decomp_dtype_name(L->weight->dtype),
                       (long long)shp[c][0], (long long)shp[c][1],
                       ndim == 4 ? ", …" : "", (long long)L->info.rank);
  }
  double en[4];
  double *sigma = NULL;
  int rc = rec_f64(ctx, in, name, "/energy", 4, 0, en);
  if (rc == DECOMP_OK && sig) {
    if (!(sigma = malloc((size_t)(g * k) * sizeof *sigma)))
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    rc = rec_f64(ctx, in, name, "/sigma", g, k, sigma);
  }
  if (rc != DECOMP_OK) {
    free(sigma);
    return rc;
  }
  /* As phase 2 leaves the layer (layer_run_ at rank R). */
  free(L->fac.sigma);
  L->fac.sigma = sigma;
  L->info.sigma = sigma;
  L->info.energy_total = en[0];
  L->info.energy_discarded = en[1];
  L->info.out_total = en[2];
  L->info.out_discarded = en[3];
  first[0] = t[0];
  second[0] = t[1];
  return DECOMP_OK;
}

/* decomp_task_assemble with the results as buffers (results, lens) or as
 * files (paths). */
static int assemble(decomp_ctx *ctx, const decomp_weights *w,
                    const decomp_spec *spec, const decomp_policy *policy,
                    const decomp_options *opts, const void *plan,
                    size_t plan_len, const void *const *results,
                    const size_t *lens, const char *const *paths,
                    size_t nresults, const char *out_dir,
                    const decomp_save_options *save, char **out_info,
                    char **out_files) {
  if (!w || !spec || !policy || !plan || !out_dir || !*out_dir || !out_info ||
      (nresults && !paths && (!results || !lens)))
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "task_assemble: weights, spec, policy, plan, results, "
                     "out_dir and out_info are required");
  if (save && save->single_name) {
    const char *why;
    if (!core_shard_name_ok(save->single_name, &why))
      return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                       "task_assemble: file name \"%s\" %s", save->single_name,
                       why);
  }
  size_t n = decomp_spec_count(spec);
  bool *none = calloc(n + 1, sizeof *none), *seen = calloc(n + 1, sizeof *seen);
  const decomp_tensor **first = calloc(n + 1, sizeof *first);
  const decomp_tensor **second = calloc(n + 1, sizeof *second);
  size_t *from = calloc(n + 1, sizeof *from); /* the record of layer i */
  rec_in *ins = calloc(nresults + 1, sizeof *ins);
  struct run R = {0};
  bool open = false;
  core_st_out *sout = NULL;
  char **snames = NULL, *info = NULL, *files = NULL, digest[17];
  int64_t peak = core_peak_rss_bytes(), plan_peak = 0;
  int rc;
  if (!none || !seen || !first || !second || !from || !ins) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto out;
  }
  if ((rc = core_run_open(&R, ctx, w, spec, policy, opts, none)) != DECOMP_OK)
    goto out;
  open = true;
  if ((rc = load_plan(&R, plan, plan_len, digest, &plan_peak)) != DECOMP_OK ||
      (rc = core_run_apply(&R, none)) != DECOMP_OK)
    goto out;
  peak = peak_max(peak, plan_peak);
  /* Every result checked, and every decomposed layer's found, before a
   * byte is written. */
  for (size_t r = 0; r < nresults; r++) {
    char what[48];
    snprintf(what, sizeof what, "factors record %zu", r);
    if ((rc = rec_open(&R, paths ? NULL : results[r], paths ? 0 : lens[r],
                       paths ? paths[r] : NULL, "factors", what, digest,
                       &ins[r])) != DECOMP_OK)
      goto out;
    peak = peak_max(peak, ins[r].peak);
    size_t x;
    json_t *e;
    json_array_foreach(ins[r].layers, x, e) {
      struct layer *L;
      if ((rc = rec_layer(&R, &ins[r], e, seen, &L)) != DECOMP_OK)
        goto out;
      size_t i = (size_t)(L - R.Ls);
      if ((rc = load_factors(&R, &ins[r], e, L, &first[i], &second[i])) !=
          DECOMP_OK)
        goto out;
      from[i] = r;
    }
  }
  for (size_t i = 0; i < n; i++)
    if (R.Ls[i].info.rank > 0 && !first[i]) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_TASK,
                     "layer %s: no factors result (the plan decomposes it at "
                     "rank %lld)",
                     R.Ls[i].info.layer->name, (long long)R.Ls[i].info.rank);
      goto out;
    }
  if ((rc = core_run_stream_open(&R, out_dir, save, &sout, &snames)) !=
      DECOMP_OK)
    goto out;
  for (size_t i = 0; i < n && rc == DECOMP_OK; i++) {
    struct layer *L = &R.Ls[i];
    if (!first[i])
      continue;
    size_t isz = decomp_dtype_size(first[i]->dtype);
    rc = core_st_out_write(L->out, L->out_item, first[i]->data,
                           (size_t)decomp_tensor_numel(first[i]) * isz);
    if (rc == DECOMP_OK)
      rc = core_st_out_write(L->out, L->out_item + 1, second[i]->data,
                             (size_t)decomp_tensor_numel(second[i]) * isz);
    /* A mapped record's pages of this layer back (a no-op for buffers). */
    core_weights_drop_pages(ins[from[i]].w, first[i]->data,
                            (size_t)decomp_tensor_numel(first[i]) * isz);
    core_weights_drop_pages(ins[from[i]].w, second[i]->data,
                            (size_t)decomp_tensor_numel(second[i]) * isz);
  }
  if (rc != DECOMP_OK ||
      (rc = core_run_info(&R, peak_max(peak, core_peak_rss_bytes()), &info)) !=
          DECOMP_OK ||
      (rc = core_st_out_commit(sout, &files)) != DECOMP_OK)
    goto out;
  *out_info = info;
  info = NULL;
  if (out_files) {
    *out_files = files;
    files = NULL;
  }
out:
  if (open)
    core_run_close(&R);
  core_st_out_free(sout);
  for (size_t i = 0; snames && snames[i]; i++)
    free(snames[i]);
  free(snames);
  for (size_t r = 0; ins && r < nresults; r++)
    rec_in_free(&ins[r]);
  free(ins);
  free(none);
  free(seen);
  free(first);
  free(second);
  free(from);
  free(info);
  free(files);
  return rc;
}

int decomp_task_assemble(decomp_ctx *ctx, const decomp_weights *w,
                         const decomp_spec *spec, const decomp_policy *policy,
                         const decomp_options *opts, const void *plan,
                         size_t plan_len, const void *const *results,
                         const size_t *lens, size_t nresults,
                         const char *out_dir, const decomp_save_options *save,
                         char **out_info, char **out_files) {
  return assemble(ctx, w, spec, policy, opts, plan, plan_len, results, lens,
                  NULL, nresults, out_dir, save, out_info, out_files);
}

int decomp_task_assemble_files(decomp_ctx *ctx, const decomp_weights *w,
                               const decomp_spec *spec,
                               const decomp_policy *policy,
                               const decomp_options *opts, const void *plan,
                               size_t plan_len, const char *const *paths,
                               size_t nresults, const char *out_dir,
                               const decomp_save_options *save, char **out_info,
                               char **out_files) {
  if (nresults && !paths)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "task_assemble_files: paths are required");
  return assemble(ctx, w, spec, policy, opts, plan, plan_len, NULL, NULL, paths,
                  nresults, out_dir, save, out_info, out_files);
}

/* --- what the queue needs to know ---------------------------------------- */

/* A layer's work as the queue weighs it: m·n·min(m, n) summed over its
 * candidates' groups (the SVD's flops, up to a constant). */
static double layer_cost(const struct layer *L) {
  double cost = 0;
  for (int c = 0; c < L->ncand; c++) {
    int64_t m, n;
    core_view_matrix(&L->cand[c], &m, &n);
    cost += (double)L->info.layer->groups * (double)m * (double)n *
            (double)(m < n ? m : n);
  }
  return cost;
}

int decomp_task_layers(decomp_ctx *ctx, const decomp_weights *w,
                       const decomp_spec *spec, const decomp_policy *policy,
                       const decomp_options *opts, const void *plan,
                       size_t plan_len, char **out_json) {
  if (!w || !spec || !policy || !out_json)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "task_layers: weights, spec, policy and out are "
                     "required");
  size_t n = decomp_spec_count(spec);
  bool *none = calloc(n + 1, sizeof *none);
  struct run R;
  json_t *arr = NULL;
  char digest[17];
  int64_t peak;
  int rc;
  if (!none)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  if ((rc = core_run_open(&R, ctx, w, spec, policy, opts, none)) != DECOMP_OK) {
    free(none);
    return rc;
  }
  if (plan &&
      ((rc = load_plan(&R, plan, plan_len, digest, &peak)) != DECOMP_OK ||
       (rc = core_run_apply(&R, none)) != DECOMP_OK))
    goto out;
  if (!(arr = json_array()))
    goto nomem;
  for (size_t i = 0; i < n; i++) {
    const struct layer *L = &R.Ls[i];
    if (!L->candidate || (plan && L->info.rank <= 0))
      continue;
    json_t *e = json_pack("{s:s,s:f}", "name", L->info.layer->name, "cost",
                          layer_cost(L));
    if (plan && e)
      json_object_set_new(e, "rank", json_integer(L->info.rank));
    if (!e || json_array_append_new(arr, e))
      goto nomem;
  }
  if (!(*out_json = json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER)))
    goto nomem;
  rc = DECOMP_OK;
  goto out;
nomem:
  rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
out:
  json_decref(arr);
  core_run_close(&R);
  free(none);
  return rc;
}
