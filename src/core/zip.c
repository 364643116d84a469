/* zip.c — the zip reader and writer of torch.save archives (see zip.h).
 *
 * The reader trusts nothing in the file: every count, size and offset is
 * checked against the buffer before use, with overflow-checked arithmetic,
 * and data ranges may not overlap headers, each other, or the central
 * directory. The writer mirrors PyTorch's (miniz-based) writer: stored
 * entries, the local header padded with an extra field ("FB") so data starts
 * on a 64-byte boundary, fixed timestamps so equal inputs give equal bytes. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zip.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_EOCD64_LOC 0x07064b50u

#define LOCAL_SIZE 30u
#define CENTRAL_SIZE 46u
#define EOCD_SIZE 22u
#define EOCD64_SIZE 56u
#define EOCD64_LOC_SIZE 20u

#define ALIGN 64u

static uint16_t rd16(const unsigned char *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t rd32(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
         ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const unsigned char *p) {
  return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32);
}

/* Whether [off, off+n) lies inside a buffer of `len` bytes. */
static bool in_range(uint64_t off, uint64_t n, uint64_t len) {
  return off <= len && n <= len - off;
}

/* The ZIP64 extended-information extra field: replaces, in order, the
 * fields whose 32-bit value is all ones. */
static int zip64_extra(decomp_ctx *ctx, const unsigned char *ex, size_t exlen,
                       zip_entry *e, bool need_size, bool need_csize,
                       bool need_off, const char *what) {
  size_t p = 0;
  while (p + 4 <= exlen) {
    uint16_t id = rd16(ex + p), sz = rd16(ex + p + 2);
    if (sz > exlen - p - 4)
      return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                       "%s: extra field runs past its header", what);
    if (id == 1) {
      const unsigned char *f = ex + p + 4;
      size_t left = sz;
      if (need_size) {
        if (left < 8)
          goto short_field;
        e->size = rd64(f);
        f += 8;
        left -= 8;
      }
      if (need_csize) {
        if (left < 8)
          goto short_field;
        e->csize = rd64(f);
        f += 8;
        left -= 8;
      }
      if (need_off) {
        if (left < 8)
          goto short_field;
        e->header_offset = rd64(f);
      }
      return DECOMP_OK;
    }
    p += 4u + sz;
  }
  if (need_size || need_csize || need_off)
    return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "%s: ZIP64 sizes announced but no ZIP64 extra field",
                     what);
  return DECOMP_OK;
short_field:
  return core_fail(ctx, DECOMP_ERR_BAD_ZIP, "%s: ZIP64 extra field too short",
                   what);
}

static int cmp_name(const void *a, const void *b) {
  const zip_entry *x = a, *y = b;
  size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
  int c = memcmp(x->name, y->name, n);
  if (c)
    return c;
  return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

static int cmp_off(const void *a, const void *b) {
  uint64_t x = ((const zip_entry *)a)->header_offset;
  uint64_t y = ((const zip_entry *)b)->header_offset;
  return x < y ? -1 : x > y;
}

/* Find the end of central directory record: the last signature in the
 * final 64 KiB + 22 bytes whose comment fits in the file. */
static bool find_eocd(const unsigned char *b, size_t len, size_t *out) {
  if (len < EOCD_SIZE)
    return false;
  size_t lowest = len > EOCD_SIZE + 0xffffu ? len - EOCD_SIZE - 0xffffu : 0;
  for (size_t i = len - EOCD_SIZE + 1; i-- > lowest;) {
    if (rd32(b + i) == SIG_EOCD &&
        (size_t)rd16(b + i + 20) <= len - i - EOCD_SIZE) {
      *out = i;
      return true;
    }
  }
  return false;
}

static int entry_label(char *dst, size_t cap, const zip_entry *e) {
  size_t n = e->name_len < cap - 1 ? e->name_len : cap - 1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)e->name[i];
    dst[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  dst[n] = '\0';
  return 0;
}

int zip_open(decomp_ctx *ctx, const void *vbuf, size_t len, zip_archive *out) {
  const unsigned char *b = vbuf;
  zip_archive z = {.buf = b, .len = len};
  int rc = DECOMP_OK;
  zip_entry *by_off = NULL;
  size_t eocd;
  if (!find_eocd(b, len, &eocd))
    return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: no end of central directory record (truncated "
                     "file?)");
  uint16_t disk = rd16(b + eocd + 4), cd_disk = rd16(b + eocd + 6);
  uint64_t count_disk = rd16(b + eocd + 8), count = rd16(b + eocd + 10);
  uint64_t cd_size = rd32(b + eocd + 12), cd_off = rd32(b + eocd + 16);
  uint64_t cd_end_limit = eocd; /* the central directory ends before this */
  if (count == 0xffff || count_disk == 0xffff || cd_size == 0xffffffffu ||
      cd_off == 0xffffffffu || disk == 0xffff || cd_disk == 0xffff) {
    if (eocd < EOCD64_LOC_SIZE || rd32(b + eocd - EOCD64_LOC_SIZE) != SIG_EOCD64_LOC)
      return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                       "zip: ZIP64 values without a ZIP64 locator");
    const unsigned char *loc = b + eocd - EOCD64_LOC_SIZE;
    uint64_t off64 = rd64(loc + 8);
    if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
      return core_fail(ctx, DECOMP_ERR_BAD_ZIP, "zip: multi-disk archive");
    if (!in_range(off64, EOCD64_SIZE, eocd - EOCD64_LOC_SIZE) ||
        rd32(b + off64) != SIG_EOCD64)
      return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                       "zip: ZIP64 end record at offset %llu is not inside "
                       "the file",
                       (unsigned long long)off64);
    const unsigned char *r = b + off64;
    disk = (uint16_t)(rd32(r + 16) != 0);
    cd_disk = (uint16_t)(rd32(r + 20) != 0);
    count_disk = rd64(r + 24);
    count = rd64(r + 32);
    cd_size = rd64(r + 40);
    cd_off = rd64(r + 48);
    cd_end_limit = off64;
  }
  if (disk != 0 || cd_disk != 0 || count_disk != count)
    return core_fail(ctx, DECOMP_ERR_BAD_ZIP, "zip: multi-disk archive");
  if (!in_range(cd_off, cd_size, cd_end_limit))
    return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: central directory (offset %llu, %llu bytes) is not "
                     "inside the file of %zu bytes",
                     (unsigned long long)cd_off, (unsigned long long)cd_size,
                     len);
  if (count > cd_size / CENTRAL_SIZE)
    return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: %llu entries cannot fit a central directory of "
                     "%llu bytes",
                     (unsigned long long)count, (unsigned long long)cd_size);
  if (count) {
    z.entries = calloc((size_t)count, sizeof *z.entries);
    z.by_name = malloc((size_t)count * sizeof *z.by_name);
    by_off = malloc((size_t)count * sizeof *by_off);
    if (!z.entries || !z.by_name || !by_off) {
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      goto fail;
    }
  }
  uint64_t p = cd_off, cd_end = cd_off + cd_size;
  for (size_t i = 0; i < count; i++) {
    zip_entry *e = &z.entries[i];
    if (!in_range(p, CENTRAL_SIZE, cd_end) || rd32(b + p) != SIG_CENTRAL) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: central directory entry %zu at offset %llu is "
                     "missing or truncated",
                     i, (unsigned long long)p);
      goto fail;
    }
    const unsigned char *c = b + p;
    e->flags = rd16(c + 8);
    e->method = rd16(c + 10);
    e->crc = rd32(c + 16);
    uint32_t csize = rd32(c + 20), size = rd32(c + 24);
    uint16_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
    uint32_t lho = rd32(c + 42);
    uint64_t rec = (uint64_t)CENTRAL_SIZE + nlen + xlen + clen;
    if (!in_range(p, rec, cd_end)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: central directory entry %zu runs past the "
                     "directory",
                     i);
      goto fail;
    }
    e->name = (const char *)c + CENTRAL_SIZE;
    e->name_len = nlen;
    e->size = size;
    e->csize = csize;
    e->header_offset = lho;
    char label[96];
    entry_label(label, sizeof label, e);
    if (nlen == 0 || memchr(e->name, '\0', nlen)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: central directory entry %zu has an empty or "
                     "invalid name",
                     i);
      goto fail;
    }
    rc = zip64_extra(ctx, c + CENTRAL_SIZE + nlen, xlen, e,
                     size == 0xffffffffu, csize == 0xffffffffu,
                     lho == 0xffffffffu, label);
    if (rc)
      goto fail;
    if (e->flags & 1u) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP, "zip: entry %s is encrypted",
                     label);
      goto fail;
    }
    if (e->method == 0 && e->size != e->csize) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: stored entry %s declares %llu bytes but occupies "
                     "%llu",
                     label, (unsigned long long)e->size,
                     (unsigned long long)e->csize);
      goto fail;
    }
    /* The local header: inside the file, before the central directory,
     * naming the same entry. */
    uint64_t h = e->header_offset;
    if (!in_range(h, LOCAL_SIZE, cd_off) || rd32(b + h) != SIG_LOCAL) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: entry %s: no local header at offset %llu", label,
                     (unsigned long long)h);
      goto fail;
    }
    uint16_t lnlen = rd16(b + h + 26), lxlen = rd16(b + h + 28);
    if (lnlen != nlen || !in_range(h + LOCAL_SIZE, lnlen, cd_off) ||
        memcmp(b + h + LOCAL_SIZE, e->name, nlen) != 0) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: entry %s: local header names another entry", label);
      goto fail;
    }
    e->data_offset = h + LOCAL_SIZE + lnlen + lxlen;
    if (!in_range(e->data_offset, e->csize, cd_off)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: entry %s: %llu bytes at offset %llu run past the "
                     "data area (%llu bytes)",
                     label, (unsigned long long)e->csize,
                     (unsigned long long)e->data_offset,
                     (unsigned long long)cd_off);
      goto fail;
    }
    p += rec;
  }
  z.n = (size_t)count;
  /* Entries may neither share nor overlap their bytes. */
  if (z.n) {
    memcpy(by_off, z.entries, z.n * sizeof *by_off);
    memcpy(z.by_name, z.entries, z.n * sizeof *by_off);
    qsort(by_off, z.n, sizeof *by_off, cmp_off);
    qsort(z.by_name, z.n, sizeof *z.by_name, cmp_name);
  }
  for (size_t i = 1; i < z.n; i++) {
    const zip_entry *a = &by_off[i - 1];
    const zip_entry *e = &by_off[i];
    if (a->data_offset + a->csize > e->header_offset) {
      char label[96];
      entry_label(label, sizeof label, e);
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: entry %s overlaps the entry before it", label);
      goto fail;
    }
  }
  for (size_t i = 1; i < z.n; i++) {
    if (cmp_name(&z.by_name[i - 1], &z.by_name[i]) == 0) {
      char label[96];
      entry_label(label, sizeof label, &z.by_name[i]);
      rc = core_fail(ctx, DECOMP_ERR_BAD_ZIP, "zip: duplicate entry %s",
                     label);
      goto fail;
    }
  }
  free(by_off);
  *out = z;
  return DECOMP_OK;
fail:
  free(by_off);
  zip_close(&z);
  return rc;
}

void zip_close(zip_archive *z) {
  if (!z)
    return;
  free(z->entries);
  free(z->by_name);
  z->entries = NULL;
  z->by_name = NULL;
  z->n = 0;
}

const zip_entry *zip_find(const zip_archive *z, const char *name) {
  size_t nlen = strlen(name), lo = 0, hi = z->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const zip_entry *e = &z->by_name[mid];
    size_t n = e->name_len < nlen ? e->name_len : nlen;
    int c = memcmp(e->name, name, n);
    if (c == 0)
      c = e->name_len < nlen ? -1 : e->name_len > nlen;
    if (c == 0)
      return e;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

int zip_data(decomp_ctx *ctx, const zip_archive *z, const zip_entry *e,
             const unsigned char **out, size_t *out_len) {
  if (e->method != 0) {
    char label[96];
    entry_label(label, sizeof label, e);
    return core_fail(ctx, DECOMP_ERR_BAD_ZIP,
                     "zip: entry %s is compressed (method %u); torch.save "
                     "archives store entries uncompressed, re-save the file "
                     "with torch.save",
                     label, e->method);
  }
  *out = z->buf + e->data_offset;
  *out_len = (size_t)e->size;
  return DECOMP_OK;
}

/* --- CRC-32, slicing by 8 ----------------------------------------------- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
                        crc_table[0][crc_table[t - 1][i] & 0xff];
}

uint32_t zip_crc32(uint32_t crc, const void *vp, size_t n) {
  pthread_once(&crc_once, crc_init);
  const unsigned char *p = vp;
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t lo = c ^ rd32(p), hi = rd32(p + 4);
    c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
        crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
        crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
        crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--)
    c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return ~c;
}

/* --- writer ------------------------------------------------------------- */

struct zip_wentry {
  char *name;
  uint64_t size;
  uint64_t header_offset;
  uint32_t crc;
};

static void wr16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}
static void wr32(unsigned char *p, uint32_t v) {
  wr16(p, (uint16_t)v);
  wr16(p + 2, (uint16_t)(v >> 16));
}
static void wr64(unsigned char *p, uint64_t v) {
  wr32(p, (uint32_t)v);
  wr32(p + 4, (uint32_t)(v >> 32));
}

/* DOS date 1980-01-01 00:00: fixed so equal inputs give equal files. */
#define DOS_TIME 0
#define DOS_DATE 0x21

void zip_writer_init(zip_writer *zw, decomp_ctx *ctx, int fd) {
  *zw = (zip_writer){.ctx = ctx, .fd = fd};
}

void zip_writer_free(zip_writer *zw) {
  for (size_t i = 0; i < zw->n; i++)
    free(zw->entries[i].name);
  free(zw->entries);
  zw->entries = NULL;
  zw->n = zw->cap = 0;
}

static int zw_write(zip_writer *zw, const void *p, size_t n) {
  int rc = core_write_all(zw->ctx, zw->fd, p, n);
  if (rc == DECOMP_OK)
    zw->pos += n;
  return rc;
}

int zip_writer_begin(zip_writer *zw, const char *name, uint64_t size) {
  if (zw->open_entry)
    return core_fail(zw->ctx, DECOMP_ERR_INTERNAL, "zip: entry still open");
  size_t nlen = strlen(name);
  if (nlen == 0 || nlen > 0xffff)
    return core_fail(zw->ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "zip: entry name of %zu bytes", nlen);
  if (zw->n == zw->cap) {
    size_t cap = zw->cap ? 2 * zw->cap : 16;
    struct zip_wentry *e = realloc(zw->entries, cap * sizeof *e);
    if (!e)
      return core_fail(zw->ctx, DECOMP_ERR_NOMEM, "out of memory");
    zw->entries = e;
    zw->cap = cap;
  }
  char *copy = strdup(name);
  if (!copy)
    return core_fail(zw->ctx, DECOMP_ERR_NOMEM, "out of memory");
  bool z64 = zw->force_zip64 || size >= 0xffffffffu;
  /* Local header, [ZIP64 sizes], then "FB" padding up to the alignment. */
  unsigned char h[LOCAL_SIZE + 20 + 4 + ALIGN];
  size_t xlen = z64 ? 20 : 0;
  uint64_t start = zw->pos + LOCAL_SIZE + nlen + xlen + 4;
  size_t pad = (size_t)((ALIGN - start % ALIGN) % ALIGN);
  xlen += 4 + pad;
  wr32(h, SIG_LOCAL);
  wr16(h + 4, z64 ? 45 : 20);
  wr16(h + 6, 0);
  wr16(h + 8, 0);
  wr16(h + 10, DOS_TIME);
  wr16(h + 12, DOS_DATE);
  wr32(h + 14, 0); /* CRC, patched by zip_writer_end */
  wr32(h + 18, z64 ? 0xffffffffu : (uint32_t)size);
  wr32(h + 22, z64 ? 0xffffffffu : (uint32_t)size);
  wr16(h + 26, (uint16_t)nlen);
  wr16(h + 28, (uint16_t)xlen);
  int rc = zw_write(zw, h, LOCAL_SIZE);
  if (rc == DECOMP_OK)
    rc = zw_write(zw, name, nlen);
  size_t x = 0;
  if (z64) {
    wr16(h + x, 1);
    wr16(h + x + 2, 16);
    wr64(h + x + 4, size);
    wr64(h + x + 12, size);
    x += 20;
  }
  wr16(h + x, 0x4246); /* "FB" */
  wr16(h + x + 2, (uint16_t)pad);
  memset(h + x + 4, 'Z', pad);
  x += 4 + pad;
  uint64_t header_offset = zw->pos - LOCAL_SIZE - nlen;
  if (rc == DECOMP_OK)
    rc = zw_write(zw, h, x);
  if (rc != DECOMP_OK) {
    free(copy);
    return rc;
  }
  zw->entries[zw->n++] =
      (struct zip_wentry){.name = copy, .size = size,
                          .header_offset = header_offset};
  zw->open_entry = true;
  zw->crc = 0;
  zw->written = 0;
  return DECOMP_OK;
}

int zip_writer_data(zip_writer *zw, const void *p, size_t n) {
  if (!zw->open_entry)
    return core_fail(zw->ctx, DECOMP_ERR_INTERNAL, "zip: no open entry");
  struct zip_wentry *e = &zw->entries[zw->n - 1];
  if (n > e->size - zw->written)
    return core_fail(zw->ctx, DECOMP_ERR_INTERNAL,
                     "zip: entry %s: more data than announced", e->name);
  zw->crc = zip_crc32(zw->crc, p, n);
  zw->written += n;
  return zw_write(zw, p, n);
}

int zip_writer_end(zip_writer *zw) {
  if (!zw->open_entry)
    return core_fail(zw->ctx, DECOMP_ERR_INTERNAL, "zip: no open entry");
  struct zip_wentry *e = &zw->entries[zw->n - 1];
  if (zw->written != e->size)
    return core_fail(zw->ctx, DECOMP_ERR_INTERNAL,
                     "zip: entry %s: %llu bytes written of %llu", e->name,
                     (unsigned long long)zw->written,
                     (unsigned long long)e->size);
  e->crc = zw->crc;
  zw->open_entry = false;
  unsigned char c[4];
  wr32(c, e->crc);
  off_t at = (off_t)(e->header_offset + 14);
  for (;;) {
    ssize_t k = pwrite(zw->fd, c, 4, at);
    if (k == 4)
      break;
    if (k < 0 && errno == EINTR)
      continue;
    return core_fail(zw->ctx, DECOMP_ERR_IO, "write: %s",
                     k < 0 ? strerror(errno) : "short write");
  }
  return DECOMP_OK;
}

int zip_writer_add(zip_writer *zw, const char *name, const void *p,
                   size_t n) {
  int rc = zip_writer_begin(zw, name, n);
  if (rc == DECOMP_OK && n)
    rc = zip_writer_data(zw, p, n);
  if (rc == DECOMP_OK)
    rc = zip_writer_end(zw);
  return rc;
}

int zip_writer_finish(zip_writer *zw) {
  if (zw->open_entry)
    return core_fail(zw->ctx, DECOMP_ERR_INTERNAL, "zip: entry still open");
  uint64_t cd_off = zw->pos;
  int rc = DECOMP_OK;
  for (size_t i = 0; i < zw->n && rc == DECOMP_OK; i++) {
    const struct zip_wentry *e = &zw->entries[i];
    size_t nlen = strlen(e->name);
    bool big = zw->force_zip64 || e->size >= 0xffffffffu;
    bool far = zw->force_zip64 || e->header_offset >= 0xffffffffu;
    unsigned char c[CENTRAL_SIZE + 28];
    size_t xlen = (big || far) ? 4u + (big ? 16u : 0u) + (far ? 8u : 0u) : 0;
    wr32(c, SIG_CENTRAL);
    wr16(c + 4, (big || far) ? 45 : 20); /* made by */
    wr16(c + 6, (big || far) ? 45 : 20); /* needed */
    wr16(c + 8, 0);
    wr16(c + 10, 0);
    wr16(c + 12, DOS_TIME);
    wr16(c + 14, DOS_DATE);
    wr32(c + 16, e->crc);
    wr32(c + 20, big ? 0xffffffffu : (uint32_t)e->size);
    wr32(c + 24, big ? 0xffffffffu : (uint32_t)e->size);
    wr16(c + 28, (uint16_t)nlen);
    wr16(c + 30, (uint16_t)xlen);
    wr16(c + 32, 0);
    wr16(c + 34, 0);
    wr16(c + 36, 0);
    wr32(c + 38, 0);
    wr32(c + 42, far ? 0xffffffffu : (uint32_t)e->header_offset);
    unsigned char *x = c + CENTRAL_SIZE;
    if (xlen) {
      wr16(x, 1);
      wr16(x + 2, (uint16_t)(xlen - 4));
      x += 4;
      if (big) {
        wr64(x, e->size);
        wr64(x + 8, e->size);
        x += 16;
      }
      if (far)
        wr64(x, e->header_offset);
    }
    rc = zw_write(zw, c, CENTRAL_SIZE);
    if (rc == DECOMP_OK)
      rc = zw_write(zw, e->name, nlen);
    if (rc == DECOMP_OK && xlen)
      rc = zw_write(zw, c + CENTRAL_SIZE, xlen);
  }
  if (rc != DECOMP_OK)
    return rc;
  uint64_t cd_size = zw->pos - cd_off;
  bool z64 = zw->force_zip64 || zw->n >= 0xffff || cd_off >= 0xffffffffu ||
             cd_size >= 0xffffffffu;
  unsigned char t[EOCD64_SIZE + EOCD64_LOC_SIZE + EOCD_SIZE];
  size_t k = 0;
  if (z64) {
    uint64_t off64 = zw->pos;
    wr32(t, SIG_EOCD64);
    wr64(t + 4, EOCD64_SIZE - 12);
    wr16(t + 12, 45);
    wr16(t + 14, 45);
    wr32(t + 16, 0);
    wr32(t + 20, 0);
    wr64(t + 24, zw->n);
    wr64(t + 32, zw->n);
    wr64(t + 40, cd_size);
    wr64(t + 48, cd_off);
    unsigned char *l = t + EOCD64_SIZE;
    wr32(l, SIG_EOCD64_LOC);
    wr32(l + 4, 0);
    wr64(l + 8, off64);
    wr32(l + 16, 1);
    k = EOCD64_SIZE + EOCD64_LOC_SIZE;
  }
  unsigned char *e = t + k;
  wr32(e, SIG_EOCD);
  wr16(e + 4, 0);
  wr16(e + 6, 0);
  wr16(e + 8, z64 ? 0xffff : (uint16_t)zw->n);
  wr16(e + 10, z64 ? 0xffff : (uint16_t)zw->n);
  wr32(e + 12, z64 ? 0xffffffffu : (uint32_t)cd_size);
  wr32(e + 16, z64 ? 0xffffffffu : (uint32_t)cd_off);
  wr16(e + 20, 0);
  return zw_write(zw, t, k + EOCD_SIZE);
}
