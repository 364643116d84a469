/* zip.h — the zip container of torch.save files: a reader over a buffer
 * that checks every size and offset against it, and a writer to a file
 * descriptor that stores entries with their data 64-byte aligned (as
 * PyTorch's own writer does, padding through an extra field).
 *
 * Only what torch.save archives use is supported: stored (uncompressed)
 * entries, one disk, ZIP64 records when sizes or offsets need them. The CRC
 * is written correctly but never trusted on reading (the reader checks
 * structure, not content). */
#ifndef DECOMP_ZIP_H
#define DECOMP_ZIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* One entry of an archive. `name` points into the archive buffer and is not
 * NUL-terminated. */
typedef struct zip_entry {
  const char *name;
  size_t name_len;
  uint16_t method;        /* 0 stored, 8 deflate, … */
  uint16_t flags;
  uint32_t crc;           /* as declared; never checked on reading */
  uint64_t size;          /* uncompressed size */
  uint64_t csize;         /* size of the data in the file */
  uint64_t header_offset; /* local header */
  uint64_t data_offset;   /* first data byte */
} zip_entry;

typedef struct zip_archive {
  const unsigned char *buf;
  size_t len;
  zip_entry *entries; /* central directory order */
  size_t n;
  zip_entry *by_name; /* the same entries sorted by name, for zip_find */
} zip_archive;

/* Parse the archive in `buf`: end of central directory (ZIP64 too), every
 * central entry, every local header. Entries' headers and data must lie
 * inside the file, before the central directory, without overlapping each
 * other; names must match between central and local headers and be unique.
 * Encrypted entries are refused. Compressed entries are accepted here and
 * refused by zip_data, so that a listing still works. DECOMP_ERR_BAD_ZIP
 * with a message naming what is wrong. */
int zip_open(decomp_ctx *ctx, const void *buf, size_t len, zip_archive *out);
void zip_close(zip_archive *z);

/* The entry named exactly `name`, or NULL. */
const zip_entry *zip_find(const zip_archive *z, const char *name);

/* The bytes of a stored entry (refuses compressed ones with
 * DECOMP_ERR_BAD_ZIP). Borrowed from the archive buffer. */
int zip_data(decomp_ctx *ctx, const zip_archive *z, const zip_entry *e,
             const unsigned char **out, size_t *out_len);

/* CRC-32 (IEEE), continuing from `crc` (0 to start). */
uint32_t zip_crc32(uint32_t crc, const void *p, size_t n);

/* --- writer ------------------------------------------------------------- */

struct zip_wentry;

typedef struct zip_writer {
  decomp_ctx *ctx;
  int fd;
  uint64_t pos;               /* bytes written so far */
  struct zip_wentry *entries;
  size_t n, cap;
  bool force_zip64;           /* write ZIP64 records even when not needed
                                 (tests) */
  bool open_entry;            /* between zip_writer_begin and _end */
  uint32_t crc;               /* of the open entry so far */
  uint64_t written;           /* bytes of the open entry so far */
} zip_writer;

/* Start writing an archive to `fd`, positioned at 0. */
void zip_writer_init(zip_writer *zw, decomp_ctx *ctx, int fd);
/* Begin a stored entry of exactly `size` bytes, its data 64-byte aligned. */
int zip_writer_begin(zip_writer *zw, const char *name, uint64_t size);
/* Append data to the open entry. */
int zip_writer_data(zip_writer *zw, const void *p, size_t n);
/* Close the open entry (checks its size, writes its CRC into the local
 * header). */
int zip_writer_end(zip_writer *zw);
/* begin + data + end. */
int zip_writer_add(zip_writer *zw, const char *name, const void *p, size_t n);
/* Write the central directory and end records. */
int zip_writer_finish(zip_writer *zw);
/* Release the writer's memory (not the fd). */
void zip_writer_free(zip_writer *zw);

#endif
