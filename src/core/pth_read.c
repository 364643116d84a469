/* pth_read.c — reading torch.save archives: the restricted unpickler of
 * `data.pkl` and the mapping of its tensors onto the archive's stored
 * entries.
 *
 * The unpickler is an interpreter of a small subset of the pickle machine,
 * enough for a state dict (what torch.load(weights_only=True) accepts, minus
 * what a state dict never holds). It never calls anything: GLOBAL only names
 * one of a fixed list (collections.OrderedDict, torch._utils.
 * _rebuild_tensor_v2, the torch.*Storage types), REDUCE only builds an empty
 * OrderedDict or records a tensor's arguments, BUILD only keeps the
 * `_metadata` attribute. Any other global or opcode is refused with its
 * offset in data.pkl. The stack, the mark stack and the memo are bounded;
 * nothing recurses on the input except the metadata conversion, which has a
 * depth and a node budget. Tensors are checked against their storage entry
 * (declared element count, offset, shape, strides, overflow) and point into
 * the archive buffer, which the caller keeps alive. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "zip.h"

#define STACK_MAX (1u << 20)   /* values on the stack */
#define MARKS_MAX (1u << 12)   /* nested MARKs */
#define MEMO_MAX (1u << 22)    /* memo indices */
#define META_DEPTH 32          /* nesting of the _metadata value */
#define META_NODES (1u << 20)  /* values visited converting _metadata */

enum okind {
  O_NONE,
  O_BOOL,
  O_INT,
  O_FLOAT,
  O_STR,
  O_TUPLE,
  O_LIST,
  O_DICT,
  O_ODICT,
  O_GLOBAL,
  O_STORAGE,
  O_TENSOR,
};

static const char *kind_name[] = {
    "None",  "bool",        "int",         "float",   "str",    "tuple",
    "list",  "dict",        "OrderedDict", "global",  "storage", "tensor",
};

enum gkind { G_ODICT, G_REBUILD, G_STORAGE };

typedef struct pobj {
  enum okind kind;
  enum gkind global;       /* O_GLOBAL */
  decomp_dtype dtype;      /* O_GLOBAL storage type, O_STORAGE */
  int64_t i;               /* O_INT, O_BOOL */
  double f;                /* O_FLOAT */
  const char *s;           /* O_STR (into data.pkl), O_STORAGE key */
  size_t slen;
  struct pobj **items;     /* tuple, list; dict: key, value, key, … */
  size_t n, cap;
  struct pobj *state;      /* O_ODICT: its _metadata; O_TENSOR: args */
  const unsigned char *data; /* O_STORAGE: entry bytes */
  size_t nbytes;
  size_t op;               /* O_TENSOR: offset of its REDUCE */
} pobj;

typedef struct unpickler {
  decomp_ctx *ctx;
  const unsigned char *p;
  size_t len, pos, op;     /* op: offset of the current opcode */
  pobj **stack;
  size_t sp, stack_cap;
  size_t *marks;
  size_t nmarks, marks_cap;
  pobj **memo;
  size_t memo_cap, memo_count;
  pobj **all;              /* every object made, freed at the end */
  size_t nall, all_cap;
  const zip_archive *z;
  const char *prefix;      /* archive folder, NUL-terminated */
  size_t meta_nodes;
} unpickler;

static int up_fail(unpickler *u, int err, const char *fmt, ...)
    DECOMP_PRINTF(3, 4);

static int up_fail(unpickler *u, int err, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return core_fail(u->ctx, err, "data.pkl offset %zu: %s", u->op, msg);
}

/* A printable copy of untrusted bytes for messages. */
static void printable(char *dst, size_t cap, const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 4 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    dst[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  if (n && k + 4 >= cap && k >= 3) {
    dst[k - 3] = dst[k - 2] = dst[k - 1] = '.';
  }
  dst[k] = '\0';
}

static pobj *obj_new(unpickler *u, enum okind kind) {
  if (u->nall == u->all_cap) {
    size_t cap = u->all_cap ? 2 * u->all_cap : 256;
    pobj **a = realloc(u->all, cap * sizeof *a);
    if (!a)
      return NULL;
    u->all = a;
    u->all_cap = cap;
  }
  pobj *o = calloc(1, sizeof *o);
  if (!o)
    return NULL;
  o->kind = kind;
  u->all[u->nall++] = o;
  return o;
}

static bool obj_append(pobj *o, pobj *item) {
  if (o->n == o->cap) {
    size_t cap = o->cap ? 2 * o->cap : 8;
    pobj **it = realloc(o->items, cap * sizeof *it);
    if (!it)
      return false;
    o->items = it;
    o->cap = cap;
  }
  o->items[o->n++] = item;
  return true;
}

static void up_free(unpickler *u) {
  for (size_t i = 0; i < u->nall; i++) {
    free(u->all[i]->items);
    free(u->all[i]);
  }
  free(u->all);
  free(u->stack);
  free(u->marks);
  free(u->memo);
}

static int nomem(unpickler *u) {
  return core_fail(u->ctx, DECOMP_ERR_NOMEM, "out of memory");
}

static size_t frame_base(const unpickler *u) {
  return u->nmarks ? u->marks[u->nmarks - 1] : 0;
}

static int push(unpickler *u, pobj *o) {
  if (!o)
    return nomem(u);
  if (u->sp == u->stack_cap) {
    if (u->stack_cap >= STACK_MAX)
      return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                     "stack deeper than %u values", STACK_MAX);
    size_t cap = u->stack_cap ? 2 * u->stack_cap : 256;
    pobj **s = realloc(u->stack, cap * sizeof *s);
    if (!s)
      return nomem(u);
    u->stack = s;
    u->stack_cap = cap;
  }
  u->stack[u->sp++] = o;
  return DECOMP_OK;
}

static int pop(unpickler *u, pobj **out) {
  if (u->sp <= frame_base(u))
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "stack underflow");
  *out = u->stack[--u->sp];
  return DECOMP_OK;
}

static int top(unpickler *u, pobj **out) {
  if (u->sp <= frame_base(u))
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "stack underflow");
  *out = u->stack[u->sp - 1];
  return DECOMP_OK;
}

static int need(unpickler *u, size_t n) {
  if (n > u->len - u->pos)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "pickle is truncated");
  return DECOMP_OK;
}

static uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}

static int memo_put(unpickler *u, size_t idx) {
  pobj *o;
  int rc = top(u, &o);
  if (rc)
    return rc;
  if (idx >= MEMO_MAX)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "memo index %zu over the limit",
                   idx);
  if (idx >= u->memo_cap) {
    size_t cap = u->memo_cap ? u->memo_cap : 256;
    while (cap <= idx)
      cap *= 2;
    pobj **m = realloc(u->memo, cap * sizeof *m);
    if (!m)
      return nomem(u);
    memset(m + u->memo_cap, 0, (cap - u->memo_cap) * sizeof *m);
    u->memo = m;
    u->memo_cap = cap;
  }
  if (!u->memo[idx])
    u->memo_count++;
  u->memo[idx] = o;
  return DECOMP_OK;
}

static int memo_get(unpickler *u, size_t idx) {
  if (idx >= u->memo_cap || !u->memo[idx])
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "memo entry %zu is not set", idx);
  return push(u, u->memo[idx]);
}

/* Pop everything down to the last MARK into a new tuple/list-like object. */
static int pop_mark(unpickler *u, enum okind kind, pobj **out) {
  if (!u->nmarks)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "no MARK on the stack");
  size_t base = u->marks[--u->nmarks];
  pobj *o = obj_new(u, kind);
  if (!o)
    return nomem(u);
  size_t n = u->sp - base;
  if (n) {
    o->items = malloc(n * sizeof *o->items);
    if (!o->items)
      return nomem(u);
    memcpy(o->items, u->stack + base, n * sizeof *o->items);
    o->n = o->cap = n;
  }
  u->sp = base;
  *out = o;
  return DECOMP_OK;
}

static const struct {
  const char *name;
  decomp_dtype dtype;
} storage_types[] = {
    {"FloatStorage", DECOMP_DTYPE_F32},    {"HalfStorage", DECOMP_DTYPE_F16},
    {"BFloat16Storage", DECOMP_DTYPE_BF16}, {"DoubleStorage", DECOMP_DTYPE_F64},
    {"LongStorage", DECOMP_DTYPE_I64},     {"IntStorage", DECOMP_DTYPE_I32},
    {"ShortStorage", DECOMP_DTYPE_I16},    {"CharStorage", DECOMP_DTYPE_I8},
    {"ByteStorage", DECOMP_DTYPE_U8},      {"BoolStorage", DECOMP_DTYPE_BOOL},
};

static bool eq(const char *s, size_t n, const char *lit) {
  return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static int push_global(unpickler *u, const char *mod, size_t mlen,
                       const char *name, size_t nlen) {
  pobj *g = obj_new(u, O_GLOBAL);
  if (!g)
    return nomem(u);
  if (eq(mod, mlen, "collections") && eq(name, nlen, "OrderedDict")) {
    g->global = G_ODICT;
    return push(u, g);
  }
  if (eq(mod, mlen, "torch._utils") && eq(name, nlen, "_rebuild_tensor_v2")) {
    g->global = G_REBUILD;
    return push(u, g);
  }
  if (eq(mod, mlen, "torch")) {
    for (size_t i = 0; i < sizeof storage_types / sizeof *storage_types; i++) {
      if (eq(name, nlen, storage_types[i].name)) {
        g->global = G_STORAGE;
        g->dtype = storage_types[i].dtype;
        return push(u, g);
      }
    }
  }
  char m[80], n[80];
  printable(m, sizeof m, mod, mlen);
  printable(n, sizeof n, name, nlen);
  return up_fail(u, DECOMP_ERR_FORBIDDEN_GLOBAL, "global %s %s is not allowed",
                 m, n);
}

/* One newline-terminated field of GLOBAL. */
static int read_line(unpickler *u, const char **s, size_t *n) {
  const unsigned char *start = u->p + u->pos;
  size_t left = u->len - u->pos, cap = left < 512 ? left : 512;
  const unsigned char *nl = memchr(start, '\n', cap);
  if (!nl)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "GLOBAL name is not terminated");
  *s = (const char *)start;
  *n = (size_t)(nl - start);
  u->pos += *n + 1;
  return DECOMP_OK;
}

static int op_global_name(pobj *o) {
  return o->kind == O_GLOBAL ? (int)o->global : -1;
}

static const char *global_text(const pobj *g) {
  if (g->global == G_ODICT)
    return "collections OrderedDict";
  if (g->global == G_REBUILD)
    return "torch._utils _rebuild_tensor_v2";
  for (size_t i = 0; i < sizeof storage_types / sizeof *storage_types; i++)
    if (storage_types[i].dtype == g->dtype)
      return storage_types[i].name;
  return "?";
}

static int op_reduce(unpickler *u) {
  pobj *args = NULL, *fn = NULL;
  int rc = pop(u, &args);
  if (rc == DECOMP_OK)
    rc = top(u, &fn);
  if (rc)
    return rc;
  if (fn->kind != O_GLOBAL)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "REDUCE calls a %s",
                   kind_name[fn->kind]);
  if (args->kind != O_TUPLE)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "REDUCE arguments are a %s, not a tuple",
                   kind_name[args->kind]);
  pobj *r;
  switch (op_global_name(fn)) {
  case G_ODICT:
    if (args->n != 0)
      return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                     "OrderedDict called with %zu arguments (expected none)",
                     args->n);
    r = obj_new(u, O_ODICT);
    break;
  case G_REBUILD:
    if (args->n != 6 && args->n != 7)
      return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                     "_rebuild_tensor_v2 called with %zu arguments", args->n);
    r = obj_new(u, O_TENSOR);
    if (r) {
      r->state = args;
      r->op = u->op;
    }
    break;
  default:
    return up_fail(u, DECOMP_ERR_FORBIDDEN_GLOBAL,
                   "global torch %s cannot be called", global_text(fn));
  }
  if (!r)
    return nomem(u);
  u->stack[u->sp - 1] = r;
  return DECOMP_OK;
}

static int op_build(unpickler *u) {
  pobj *state = NULL, *inst = NULL;
  int rc = pop(u, &state);
  if (rc == DECOMP_OK)
    rc = top(u, &inst);
  if (rc)
    return rc;
  if (inst->kind != O_ODICT)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "BUILD on a %s (only an OrderedDict's attributes are "
                   "accepted)",
                   kind_name[inst->kind]);
  if (state->kind != O_DICT && state->kind != O_ODICT)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "BUILD state is a %s, not a dict", kind_name[state->kind]);
  for (size_t i = 0; i + 1 < state->n; i += 2) {
    const pobj *k = state->items[i];
    if (k->kind == O_STR && eq(k->s, k->slen, "_metadata"))
      inst->state = state->items[i + 1];
    /* Other attributes are dropped: a state dict has none. */
  }
  return DECOMP_OK;
}

static int op_persid(unpickler *u) {
  pobj *pid = NULL;
  int rc = pop(u, &pid);
  if (rc)
    return rc;
  if (pid->kind != O_TUPLE || pid->n != 5)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "persistent id is not a 5-tuple ('storage', type, key, "
                   "location, numel)");
  pobj **f = pid->items;
  if (f[0]->kind != O_STR || !eq(f[0]->s, f[0]->slen, "storage"))
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "persistent id is not a storage");
  if (f[1]->kind != O_GLOBAL || f[1]->global != G_STORAGE)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "persistent id's type is not a torch storage type");
  if (f[2]->kind != O_STR || f[2]->slen == 0 || f[2]->slen > 256 ||
      memchr(f[2]->s, '\0', f[2]->slen) || memchr(f[2]->s, '/', f[2]->slen))
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "storage key is invalid");
  if (f[3]->kind != O_STR)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "storage location is not a str");
  if (f[4]->kind != O_INT || f[4]->i < 0)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "storage element count is not a non-negative int");
  char key[260], name[600];
  memcpy(key, f[2]->s, f[2]->slen);
  key[f[2]->slen] = '\0';
  char shown[80];
  printable(shown, sizeof shown, key, strlen(key));
  snprintf(name, sizeof name, "%s/data/%s", u->prefix, key);
  const zip_entry *e = zip_find(u->z, name);
  if (!e)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "storage data/%s is not in the archive", shown);
  const unsigned char *data;
  size_t len;
  rc = zip_data(u->ctx, u->z, e, &data, &len);
  if (rc)
    return rc;
  decomp_dtype dt = f[1]->dtype;
  size_t isz = decomp_dtype_size(dt), nbytes;
  if (!core_mul_size((size_t)f[4]->i, isz, &nbytes) || nbytes != len)
    return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                   "storage data/%s declares %lld elements of %s, the entry "
                   "holds %zu bytes",
                   shown, (long long)f[4]->i, decomp_dtype_name(dt), len);
  pobj *s = obj_new(u, O_STORAGE);
  if (!s)
    return nomem(u);
  s->dtype = dt;
  s->data = data;
  s->nbytes = nbytes;
  s->s = f[2]->s;
  s->slen = f[2]->slen;
  return push(u, s);
}

static int op_setitems(unpickler *u, pobj *d, pobj **kv, size_t n) {
  if (d->kind != O_DICT && d->kind != O_ODICT)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "SETITEM on a %s",
                   kind_name[d->kind]);
  if (n % 2)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "SETITEMS with an odd count");
  for (size_t i = 0; i < n; i++)
    if (!obj_append(d, kv[i]))
      return nomem(u);
  return DECOMP_OK;
}

static int op_appends(unpickler *u, pobj *l, pobj **v, size_t n) {
  if (l->kind != O_LIST)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "APPEND on a %s",
                   kind_name[l->kind]);
  for (size_t i = 0; i < n; i++)
    if (!obj_append(l, v[i]))
      return nomem(u);
  return DECOMP_OK;
}

static const char *opcode_name(unsigned char c) {
  switch (c) {
  case 'i': return "INST";
  case 'o': return "OBJ";
  case 0x81: return "NEWOBJ";
  case 0x92: return "NEWOBJ_EX";
  case 'P': return "PERSID";
  case 'I': return "INT";
  case 'L': return "LONG";
  case 'S': return "STRING";
  case 'V': return "UNICODE";
  case 'F': return "FLOAT";
  case 'T': return "BINSTRING";
  case 'U': return "SHORT_BINSTRING";
  case 'B': return "BINBYTES";
  case 'C': return "SHORT_BINBYTES";
  case 0x8e: return "BINBYTES8";
  case 0x8d: return "BINUNICODE8";
  case 0x8b: return "LONG4";
  case 'l': return "LIST";
  case 'd': return "DICT";
  case 0x8f: return "EMPTY_SET";
  case 0x90: return "ADDITEMS";
  case 0x91: return "FROZENSET";
  case 'p': return "PUT";
  case 'g': return "GET";
  case '2': return "DUP";
  case '0': return "POP";
  case '1': return "POP_MARK";
  case 0x82: return "EXT1";
  case 0x83: return "EXT2";
  case 0x84: return "EXT4";
  case 0x96: return "BYTEARRAY8";
  case 0x97: return "NEXT_BUFFER";
  case 0x98: return "READONLY_BUFFER";
  default: return "unknown";
  }
}

static int run(unpickler *u, pobj **result) {
  int rc = DECOMP_OK;
  pobj *a = NULL, *b = NULL, *o = NULL;
  for (;;) {
    if (u->pos >= u->len) {
      u->op = u->pos;
      return up_fail(u, DECOMP_ERR_BAD_PICKLE, "pickle ends without STOP");
    }
    u->op = u->pos;
    unsigned char c = u->p[u->pos++];
    switch (c) {
    case 0x80: /* PROTO */
      if ((rc = need(u, 1)))
        return rc;
      if (u->p[u->pos] > 5)
        return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                       "pickle protocol %u is not supported", u->p[u->pos]);
      u->pos++;
      break;
    case 0x95: /* FRAME: advisory, the data follows inline */
      if ((rc = need(u, 8)))
        return rc;
      u->pos += 8;
      break;
    case 'c': { /* GLOBAL */
      const char *m, *n;
      size_t ml, nl;
      if ((rc = read_line(u, &m, &ml)) || (rc = read_line(u, &n, &nl)))
        return rc;
      rc = push_global(u, m, ml, n, nl);
      break;
    }
    case 0x93: /* STACK_GLOBAL */
      if ((rc = pop(u, &b)) || (rc = pop(u, &a)))
        return rc;
      if (a->kind != O_STR || b->kind != O_STR)
        return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                       "STACK_GLOBAL needs two strings");
      rc = push_global(u, a->s, a->slen, b->s, b->slen);
      break;
    case 'q': /* BINPUT */
      if ((rc = need(u, 1)))
        return rc;
      rc = memo_put(u, u->p[u->pos++]);
      break;
    case 'r': /* LONG_BINPUT */
      if ((rc = need(u, 4)))
        return rc;
      rc = memo_put(u, le32(u->p + u->pos));
      u->pos += 4;
      break;
    case 0x94: /* MEMOIZE */
      rc = memo_put(u, u->memo_count);
      break;
    case 'h': /* BINGET */
      if ((rc = need(u, 1)))
        return rc;
      rc = memo_get(u, u->p[u->pos++]);
      break;
    case 'j': /* LONG_BINGET */
      if ((rc = need(u, 4)))
        return rc;
      rc = memo_get(u, le32(u->p + u->pos));
      u->pos += 4;
      break;
    case '(': /* MARK */
      if (u->nmarks == MARKS_MAX)
        return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                       "more than %u nested MARKs", MARKS_MAX);
      if (u->nmarks == u->marks_cap) {
        size_t cap = u->marks_cap ? 2 * u->marks_cap : 64;
        size_t *m = realloc(u->marks, cap * sizeof *m);
        if (!m)
          return nomem(u);
        u->marks = m;
        u->marks_cap = cap;
      }
      u->marks[u->nmarks++] = u->sp;
      break;
    case 't': /* TUPLE */
      if ((rc = pop_mark(u, O_TUPLE, &o)))
        return rc;
      rc = push(u, o);
      break;
    case ')': /* EMPTY_TUPLE */
      rc = push(u, obj_new(u, O_TUPLE));
      break;
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: { /* TUPLE3 */
      size_t n = (size_t)(c - 0x84);
      if (u->sp < frame_base(u) + n)
        return up_fail(u, DECOMP_ERR_BAD_PICKLE, "stack underflow");
      o = obj_new(u, O_TUPLE);
      if (!o || !(o->items = malloc(n * sizeof *o->items)))
        return nomem(u);
      memcpy(o->items, u->stack + u->sp - n, n * sizeof *o->items);
      o->n = o->cap = n;
      u->sp -= n;
      rc = push(u, o);
      break;
    }
    case '}': /* EMPTY_DICT */
      rc = push(u, obj_new(u, O_DICT));
      break;
    case ']': /* EMPTY_LIST */
      rc = push(u, obj_new(u, O_LIST));
      break;
    case 's': { /* SETITEM */
      pobj *kv[2] = {NULL, NULL};
      if ((rc = pop(u, &kv[1])) || (rc = pop(u, &kv[0])) || (rc = top(u, &o)))
        return rc;
      rc = op_setitems(u, o, kv, 2);
      break;
    }
    case 'u': /* SETITEMS */
    case 'e': { /* APPENDS */
      if (!u->nmarks)
        return up_fail(u, DECOMP_ERR_BAD_PICKLE, "no MARK on the stack");
      size_t base = u->marks[u->nmarks - 1];
      if (base == 0 || (u->nmarks > 1 && base <= u->marks[u->nmarks - 2]))
        return up_fail(u, DECOMP_ERR_BAD_PICKLE, "stack underflow");
      o = u->stack[base - 1];
      rc = c == 'u' ? op_setitems(u, o, u->stack + base, u->sp - base)
                    : op_appends(u, o, u->stack + base, u->sp - base);
      u->sp = base;
      u->nmarks--;
      break;
    }
    case 'a': /* APPEND */
      if ((rc = pop(u, &a)) || (rc = top(u, &o)))
        return rc;
      rc = op_appends(u, o, &a, 1);
      break;
    case 'X':    /* BINUNICODE */
    case 0x8c: { /* SHORT_BINUNICODE */
      size_t w = c == 'X' ? 4 : 1, n;
      if ((rc = need(u, w)))
        return rc;
      n = c == 'X' ? le32(u->p + u->pos) : u->p[u->pos];
      u->pos += w;
      if ((rc = need(u, n)))
        return rc;
      o = obj_new(u, O_STR);
      if (!o)
        return nomem(u);
      o->s = (const char *)u->p + u->pos;
      o->slen = n;
      u->pos += n;
      rc = push(u, o);
      break;
    }
    case 'J': /* BININT */
    case 'K': /* BININT1 */
    case 'M': { /* BININT2 */
      size_t w = c == 'J' ? 4 : c == 'K' ? 1 : 2;
      if ((rc = need(u, w)))
        return rc;
      const unsigned char *q = u->p + u->pos;
      o = obj_new(u, O_INT);
      if (!o)
        return nomem(u);
      o->i = c == 'J' ? (int64_t)(int32_t)le32(q)
             : c == 'K' ? q[0]
                        : (int64_t)(q[0] | (q[1] << 8));
      u->pos += w;
      rc = push(u, o);
      break;
    }
    case 0x8a: { /* LONG1: little-endian two's complement */
      if ((rc = need(u, 1)))
        return rc;
      size_t n = u->p[u->pos++];
      if ((rc = need(u, n)))
        return rc;
      if (n > 8)
        return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                       "integer of %zu bytes is too large", n);
      uint64_t v = 0;
      for (size_t k = 0; k < n; k++)
        v |= (uint64_t)u->p[u->pos + k] << (8 * k);
      if (n && n < 8 && (u->p[u->pos + n - 1] & 0x80))
        v |= ~(uint64_t)0 << (8 * n); /* sign-extend */
      u->pos += n;
      o = obj_new(u, O_INT);
      if (!o)
        return nomem(u);
      memcpy(&o->i, &v, sizeof v);
      rc = push(u, o);
      break;
    }
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
      o = obj_new(u, O_BOOL);
      if (o)
        o->i = c == 0x88;
      rc = push(u, o);
      break;
    case 'N': /* NONE */
      rc = push(u, obj_new(u, O_NONE));
      break;
    case 'G': { /* BINFLOAT: big-endian double */
      if ((rc = need(u, 8)))
        return rc;
      uint64_t v = 0;
      for (int k = 0; k < 8; k++)
        v = (v << 8) | u->p[u->pos + (size_t)k];
      u->pos += 8;
      o = obj_new(u, O_FLOAT);
      if (o)
        memcpy(&o->f, &v, sizeof v);
      rc = push(u, o);
      break;
    }
    case 'R':
      rc = op_reduce(u);
      break;
    case 'b':
      rc = op_build(u);
      break;
    case 'Q':
      rc = op_persid(u);
      break;
    case '.': /* STOP */
      if ((rc = pop(u, result)))
        return rc;
      return DECOMP_OK;
    default:
      return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                     "opcode 0x%02x (%s) is not allowed", c, opcode_name(c));
    }
    if (rc)
      return rc;
  }
}

/* --- from pickled values to tensors and metadata ------------------------- */

static bool utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t k;
    uint32_t cp;
    if (c < 0x80) {
      if (c == 0)
        return false;
      i++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      k = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      k = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      k = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i <= k)
      return false;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80)
        return false;
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) ||
        (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += k + 1;
  }
  return true;
}

static int tensor_add(unpickler *u, decomp_weights *w, const char *name,
                      const pobj *t) {
  u->op = t->op;
  pobj **a = t->state->items;
  const pobj *st = a[0];
  if (st->kind != O_STORAGE)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "%s: first argument of _rebuild_tensor_v2 is a %s, not a "
                   "storage",
                   name, kind_name[st->kind]);
  if (a[1]->kind != O_INT || a[1]->i < 0)
    return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                   "%s: storage offset is not a non-negative int", name);
  const pobj *size = a[2], *stride = a[3];
  if (size->kind != O_TUPLE || stride->kind != O_TUPLE ||
      size->n != stride->n)
    return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                   "%s: size and stride are not tuples of the same length",
                   name);
  if (size->n > DECOMP_MAX_DIMS)
    return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                   "%s: %zu dimensions (at most %d)", name, size->n,
                   DECOMP_MAX_DIMS);
  decomp_tensor tt = {.name = name, .dtype = st->dtype, .ndim = (int)size->n,
                      .offset = a[1]->i};
  size_t numel = 1;
  for (size_t d = 0; d < size->n; d++) {
    const pobj *s = size->items[d], *k = stride->items[d];
    if (s->kind != O_INT || k->kind != O_INT || s->i < 0 || k->i < 0)
      return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                     "%s: size or stride of dimension %zu is not a "
                     "non-negative int",
                     name, d);
    tt.shape[d] = s->i;
    tt.stride[d] = k->i;
    if (!core_mul_size(numel, (size_t)s->i, &numel) ||
        numel > (size_t)INT64_MAX)
      return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                     "%s: shape's element count overflows", name);
  }
  size_t need_bytes;
  if (!core_tensor_extent(&tt, &need_bytes))
    return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                   "%s: offset and strides overflow the storage", name);
  char key[80];
  printable(key, sizeof key, st->s, st->slen);
  if (need_bytes > st->nbytes)
    return up_fail(u, DECOMP_ERR_BAD_TENSOR,
                   "%s: tensor needs %zu bytes, storage data/%s has %zu", name,
                   need_bytes, key, st->nbytes);
  size_t isz = decomp_dtype_size(st->dtype);
  tt.storage = st->data;
  tt.storage_nbytes = st->nbytes;
  tt.data = numel ? st->data + (size_t)tt.offset * isz : st->data;
  return decomp_weights_add(w, &tt);
}

static json_t *to_json(unpickler *u, const pobj *o, int depth, int *rc) {
  if (++u->meta_nodes > META_NODES || depth > META_DEPTH) {
    *rc = up_fail(u, DECOMP_ERR_BAD_PICKLE,
                  "_metadata is nested too deeply or too large");
    return NULL;
  }
  json_t *j = NULL;
  switch (o->kind) {
  case O_NONE:
    return json_null();
  case O_BOOL:
    return json_boolean(o->i);
  case O_INT:
    return json_integer(o->i);
  case O_FLOAT:
    if (!isfinite(o->f))
      break;
    return json_real(o->f);
  case O_STR:
    if (!utf8_valid((const unsigned char *)o->s, o->slen))
      break;
    return json_stringn(o->s, o->slen);
  case O_TUPLE:
  case O_LIST:
    j = json_array();
    for (size_t i = 0; j && i < o->n; i++) {
      json_t *v = to_json(u, o->items[i], depth + 1, rc);
      if (!v || json_array_append_new(j, v)) {
        json_decref(j);
        return NULL;
      }
    }
    return j;
  case O_DICT:
  case O_ODICT:
    j = json_object();
    for (size_t i = 0; j && i + 1 < o->n; i += 2) {
      const pobj *k = o->items[i];
      if (k->kind != O_STR || !utf8_valid((const unsigned char *)k->s, k->slen)) {
        json_decref(j);
        *rc = up_fail(u, DECOMP_ERR_BAD_PICKLE,
                      "_metadata has a key that is not a string");
        return NULL;
      }
      json_t *v = to_json(u, o->items[i + 1], depth + 1, rc);
      char *ks = strndup(k->s, k->slen);
      if (!v || !ks || json_object_set_new(j, ks, v)) {
        free(ks);
        json_decref(j);
        return NULL;
      }
      free(ks);
    }
    return j;
  default:
    break;
  }
  if (*rc == DECOMP_OK)
    *rc = up_fail(u, DECOMP_ERR_BAD_PICKLE, "_metadata holds a %s",
                  kind_name[o->kind]);
  return NULL;
}

static int set_metadata(unpickler *u, decomp_weights *w, const pobj *m) {
  int rc = DECOMP_OK;
  json_t *j = to_json(u, m, 0, &rc);
  if (!j)
    return rc ? rc : nomem(u);
  if (!json_is_object(j)) {
    json_decref(j);
    return up_fail(u, DECOMP_ERR_BAD_PICKLE, "_metadata is not a dict");
  }
  char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(j);
  if (!text)
    return nomem(u);
  rc = decomp_weights_set_metadata(w, text);
  free(text);
  return rc;
}

static int build(unpickler *u, const pobj *root, decomp_weights *w) {
  if (root->kind != O_DICT && root->kind != O_ODICT)
    return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "the pickled object is a %s, not a state dict",
                   kind_name[root->kind]);
  for (size_t i = 0; i + 1 < root->n; i += 2) {
    const pobj *k = root->items[i], *v = root->items[i + 1];
    if (k->kind != O_STR || k->slen == 0 ||
        !utf8_valid((const unsigned char *)k->s, k->slen))
      return up_fail(u, DECOMP_ERR_BAD_PICKLE,
                     "state dict entry %zu has a key that is not a non-empty "
                     "string",
                     i / 2);
    char *name = strndup(k->s, k->slen);
    if (!name)
      return nomem(u);
    int rc;
    if (v->kind != O_TENSOR) {
      char shown[120];
      printable(shown, sizeof shown, name, strlen(name));
      rc = up_fail(u, DECOMP_ERR_BAD_PICKLE,
                   "state dict entry %s is a %s, not a tensor", shown,
                   kind_name[v->kind]);
    } else {
      rc = tensor_add(u, w, name, v);
    }
    free(name);
    if (rc)
      return rc;
  }
  if (root->kind == O_ODICT && root->state)
    return set_metadata(u, w, root->state);
  return DECOMP_OK;
}

int core_pth_read(decomp_ctx *ctx, const void *buf, size_t len,
                  decomp_weights *w) {
  zip_archive z;
  int rc = zip_open(ctx, buf, len, &z);
  if (rc)
    return rc;
  unpickler u = {.ctx = ctx, .z = &z};
  char prefix[256], name[300];
  const zip_entry *first = z.n ? &z.entries[0] : NULL;
  const char *slash = first ? memchr(first->name, '/', first->name_len) : NULL;
  if (!slash || slash == first->name ||
      (size_t)(slash - first->name) >= sizeof prefix) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                   "zip: not a torch.save archive (entries are not in one "
                   "folder)");
    goto done;
  }
  memcpy(prefix, first->name, (size_t)(slash - first->name));
  prefix[slash - first->name] = '\0';
  u.prefix = prefix;
  snprintf(name, sizeof name, "%s/constants.pkl", prefix);
  if (zip_find(&z, name)) {
    rc = core_fail(ctx, DECOMP_ERR_TORCHSCRIPT,
                   "a TorchScript archive (torch.jit.save): this build cannot "
                   "read TorchScript; upload a state dict saved with "
                   "torch.save(model.state_dict(), path)");
    goto done;
  }
  snprintf(name, sizeof name, "%s/byteorder", prefix);
  const zip_entry *bo = zip_find(&z, name);
  const unsigned char *d;
  size_t dlen;
  if (bo) {
    if ((rc = zip_data(ctx, &z, bo, &d, &dlen)))
      goto done;
    if (!(dlen == 6 && memcmp(d, "little", 6) == 0)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_TENSOR,
                     "archive's byteorder is not \"little\"");
      goto done;
    }
  }
  snprintf(name, sizeof name, "%s/data.pkl", prefix);
  const zip_entry *pk = zip_find(&z, name);
  if (!pk) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                   "zip: not a torch.save archive (no %s/data.pkl)", prefix);
    goto done;
  }
  if ((rc = zip_data(ctx, &z, pk, &d, &dlen)))
    goto done;
  u.p = d;
  u.len = dlen;
  pobj *root;
  if ((rc = run(&u, &root)))
    goto done;
  if ((rc = build(&u, root, w)))
    goto done;
  core_weights_set_format(w, DECOMP_FORMAT_PTH);
done:
  up_free(&u);
  zip_close(&z);
  return rc;
}
