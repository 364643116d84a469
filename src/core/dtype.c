/* dtype.c — element types: sizes, names, and conversion of floating tensors
 * (any strides, F32/F16/BF16/F64) to and from dense float/double arrays. */
#include <math.h>
#include <string.h>

#include "core.h"

static const struct {
  const char *name;
  size_t size;
  bool is_float;
} dtypes[DECOMP_DTYPE_COUNT] = {
    [DECOMP_DTYPE_F32] = {"F32", 4, true},
    [DECOMP_DTYPE_F16] = {"F16", 2, true},
    [DECOMP_DTYPE_BF16] = {"BF16", 2, true},
    [DECOMP_DTYPE_F64] = {"F64", 8, true},
    [DECOMP_DTYPE_I64] = {"I64", 8, false},
    [DECOMP_DTYPE_I32] = {"I32", 4, false},
    [DECOMP_DTYPE_I16] = {"I16", 2, false},
    [DECOMP_DTYPE_I8] = {"I8", 1, false},
    [DECOMP_DTYPE_U8] = {"U8", 1, false},
    [DECOMP_DTYPE_BOOL] = {"BOOL", 1, false},
};

static bool valid(decomp_dtype dt) {
  return (unsigned)dt < DECOMP_DTYPE_COUNT;
}

size_t decomp_dtype_size(decomp_dtype dt) {
  return valid(dt) ? dtypes[dt].size : 0;
}

const char *decomp_dtype_name(decomp_dtype dt) {
  return valid(dt) ? dtypes[dt].name : "invalid";
}

bool decomp_dtype_is_float(decomp_dtype dt) {
  return valid(dt) && dtypes[dt].is_float;
}

float core_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while (!(man & 0x400u));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t core_float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) /* Inf or NaN (keep a quiet NaN) */
    return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to Inf */
    return (uint16_t)(sign | 0x7c00u);
  if (absx < 0x38800000u) { /* below the smallest normal half: subnormal */
    if (absx < 0x33000000u) /* < 2^-25 rounds to zero */
      return (uint16_t)sign;
    uint32_t e = absx >> 23;
    uint32_t man = (absx & 0x7fffffu) | 0x800000u;
    /* value = man·2^(e-150); in units of the half subnormal 2^-24 that is
     * man·2^(e-126), and e <= 112 here so the shift is >= 14. */
    uint32_t shift = 126 - e;
    uint32_t q = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
      q++;
    return (uint16_t)(sign | q);
  }
  uint32_t e = (absx >> 23) - 127 + 15;
  uint32_t man = absx & 0x7fffffu;
  uint32_t h = (e << 10) | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
    h++; /* may carry into the exponent, which is right */
  return (uint16_t)(sign | h);
}

float core_bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t core_float_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
    return (uint16_t)((x >> 16) | 0x40u);
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;
  return (uint16_t)(x >> 16);
}

double core_load_f64(const void *p, decomp_dtype dt) {
  switch (dt) {
  case DECOMP_DTYPE_F32: {
    float v;
    memcpy(&v, p, 4);
    return v;
  }
  case DECOMP_DTYPE_F64: {
    double v;
    memcpy(&v, p, 8);
    return v;
  }
  case DECOMP_DTYPE_F16: {
    uint16_t v;
    memcpy(&v, p, 2);
    return core_half_to_float(v);
  }
  case DECOMP_DTYPE_BF16: {
    uint16_t v;
    memcpy(&v, p, 2);
    return core_bf16_to_float(v);
  }
  case DECOMP_DTYPE_I64: {
    int64_t v;
    memcpy(&v, p, 8);
    return (double)v;
  }
  case DECOMP_DTYPE_I32: {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
  }
  default:
    return 0;
  }
}

static bool gather(const decomp_tensor *t, double *d64, float *d32) {
  if (!decomp_dtype_is_float(t->dtype))
    return false;
  size_t isz = decomp_dtype_size(t->dtype);
  int64_t n = decomp_tensor_numel(t);
  if (n == 0)
    return true;
  const unsigned char *base = t->data;
  if (decomp_tensor_is_contiguous(t) && t->dtype == DECOMP_DTYPE_F32 && d32) {
    memcpy(d32, base, (size_t)n * 4);
    return true;
  }
  if (decomp_tensor_is_contiguous(t) && t->dtype == DECOMP_DTYPE_F64 && d64) {
    memcpy(d64, base, (size_t)n * 8);
    return true;
  }
  /* Half precision (a checkpoint's usual dtype), contiguous: element by
   * element without the general walk below (a LLaMA-7B MLP matrix, 45M
   * values, in a tenth of the time). */
  if (decomp_tensor_is_contiguous(t) && (t->dtype == DECOMP_DTYPE_F16 ||
                                         t->dtype == DECOMP_DTYPE_BF16)) {
    const uint16_t *h = (const uint16_t *)base;
    bool bf = t->dtype == DECOMP_DTYPE_BF16;
    for (int64_t k = 0; k < n; k++) {
      float v = bf ? core_bf16_to_float(h[k]) : core_half_to_float(h[k]);
      if (d64)
        d64[k] = v;
      else
        d32[k] = v;
    }
    return true;
  }
  int64_t idx[DECOMP_MAX_DIMS] = {0};
  int64_t off = 0;
  for (int64_t k = 0; k < n; k++) {
    double v = core_load_f64(base + (size_t)off * isz, t->dtype);
    if (d64)
      d64[k] = v;
    else
      d32[k] = (float)v;
    for (int dim = t->ndim - 1; dim >= 0; dim--) {
      idx[dim]++;
      off += t->stride[dim];
      if (idx[dim] < t->shape[dim])
        break;
      off -= t->stride[dim] * t->shape[dim];
      idx[dim] = 0;
    }
  }
  return true;
}

bool core_tensor_to_f64(const decomp_tensor *t, double *dst) {
  return gather(t, dst, NULL);
}

bool core_tensor_to_f32(const decomp_tensor *t, float *dst) {
  return gather(t, NULL, dst);
}

static void store(double v, decomp_dtype dt, unsigned char *p) {
  switch (dt) {
  case DECOMP_DTYPE_F32: {
    float f = (float)v;
    memcpy(p, &f, 4);
    break;
  }
  case DECOMP_DTYPE_F64:
    memcpy(p, &v, 8);
    break;
  case DECOMP_DTYPE_F16: {
    uint16_t h = core_float_to_half((float)v);
    memcpy(p, &h, 2);
    break;
  }
  case DECOMP_DTYPE_BF16: {
    uint16_t h = core_float_to_bf16((float)v);
    memcpy(p, &h, 2);
    break;
  }
  default:
    break;
  }
}

void core_f64_to_dtype(const double *src, size_t n, decomp_dtype dt,
                       void *dst) {
  size_t isz = decomp_dtype_size(dt);
  for (size_t i = 0; i < n; i++)
    store(src[i], dt, (unsigned char *)dst + i * isz);
}

void core_f32_to_dtype(const float *src, size_t n, decomp_dtype dt,
                       void *dst) {
  if (dt == DECOMP_DTYPE_F32) {
    memcpy(dst, src, n * 4);
    return;
  }
  size_t isz = decomp_dtype_size(dt);
  for (size_t i = 0; i < n; i++)
    store(src[i], dt, (unsigned char *)dst + i * isz);
}

double core_dtype_round(decomp_dtype dt, double v) {
  unsigned char b[8];
  store(v, dt, b);
  return core_load_f64(b, dt);
}
