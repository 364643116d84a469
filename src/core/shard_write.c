/* shard_write.c — safetensors output written as a stream: one file, or
 * Hugging Face shards (NAME-00001-of-0000N.safetensors) plus their index.
 *
 * Every tensor's dtype and shape is known before its data (a decomposed
 * layer's factor shapes follow from its rank), so the layout is planned up
 * front: tensors in the given order, a new shard when the next tensor would
 * take the current one past shard_bytes (as the Hub's tools pack them; a
 * tensor larger than the limit gets a shard of its own). Each file is
 * created beside its final name as a temporary, sized, and given its
 * header at once; tensors are then written at their planned offsets in any
 * order, as they become available, so nothing is held until the end. Commit
 * fsyncs and renames every file (the index last); on failure or free
 * without commit nothing is left behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core.h"

#define COPY_CHUNK ((size_t)8 << 20)
#define SHARD_INDEX_NAME DECOMP_ARTIFACT_INDEX

struct st_file {
  char *final, *tmp;  /* paths */
  char *name;         /* file name in the folder */
  int fd;
  bool renamed;
};

struct core_st_out {
  decomp_ctx *ctx;
  char *dir;
  core_st_item *items;    /* copied (names borrowed) */
  size_t n;
  size_t *file_of;        /* per item: its file */
  uint64_t *offset;       /* per item: its data's offset in that file */
  struct st_file *files;  /* nfiles, then the index (when sharded) */
  size_t nfiles;
  bool sharded;
  char *index_text;       /* the index document (sharded) */
  bool committed;
};

static char *path_join(const char *dir, const char *name) {
  char *p = malloc(strlen(dir) + strlen(name) + 2);
  if (p)
    sprintf(p, "%s/%s", dir, name);
  return p;
}

static int io_fail(decomp_ctx *ctx, const char *what, const char *path,
                   int e) {
  return core_fail(ctx, e == ENOSPC ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO,
                   "%s: %s: %s", path, what, strerror(e));
}

/* Make f's temporary file beside its final name. */
static int file_create(decomp_ctx *ctx, const char *dir, struct st_file *f) {
  f->fd = -1;
  f->final = path_join(dir, f->name);
  f->tmp = malloc(strlen(dir) + strlen(f->name) + 16);
  if (!f->final || !f->tmp)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  sprintf(f->tmp, "%s/.%s.tmp-XXXXXX", dir, f->name);
  f->fd = mkostemp(f->tmp, O_CLOEXEC);
  if (f->fd < 0) {
    int e = errno;
    free(f->tmp);
    f->tmp = NULL;
    return io_fail(ctx, "cannot create a temporary file", f->final, e);
  }
  return DECOMP_OK;
}

static int pwrite_all(decomp_ctx *ctx, const struct st_file *f,
                      const void *buf, size_t len, uint64_t at) {
  const char *p = buf;
  while (len > 0) {
    ssize_t k = pwrite(f->fd, p, len, (off_t)at);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      return io_fail(ctx, "write", f->final, errno);
    }
    p += k;
    at += (uint64_t)k;
    len -= (size_t)k;
  }
  return DECOMP_OK;
}

/* Size the file and write its header: `k` items from `first`. */
static int file_start(core_st_out *o, struct st_file *f, size_t first,
                      size_t k, const char *metadata) {
  char *text = NULL;
  size_t tlen, hlen;
  int rc = core_st_header(o->ctx, o->items + first, k, metadata, &text, &tlen,
                          &hlen);
  if (rc != DECOMP_OK)
    return rc;
  uint64_t data = 0;
  for (size_t i = first; i < first + k; i++) {
    o->offset[i] = 8 + hlen + data;
    data += o->items[i].nbytes;
  }
  uint64_t size = 8 + hlen + data;
  /* Reserve the blocks now: a full disk shows before the work, not after. */
  int e = fallocate(f->fd, 0, 0, (off_t)size);
  if (e != 0 && (errno == EOPNOTSUPP || errno == ENOSYS))
    e = ftruncate(f->fd, (off_t)size);
  if (e != 0) {
    rc = io_fail(o->ctx, "cannot reserve space", f->final, errno);
    goto done;
  }
  unsigned char head[8];
  for (int i = 0; i < 8; i++)
    head[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  char *hdr = malloc(hlen);
  if (!hdr) {
    rc = core_fail(o->ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  memcpy(hdr, text, tlen);
  memset(hdr + tlen, ' ', hlen - tlen);
  if ((rc = pwrite_all(o->ctx, f, head, 8, 0)) == DECOMP_OK)
    rc = pwrite_all(o->ctx, f, hdr, hlen, 8);
  free(hdr);
done:
  free(text);
  return rc;
}

static int build_index(core_st_out *o) {
  uint64_t total = 0;
  json_t *map = json_object(), *root = NULL;
  if (!map)
    goto nomem;
  for (size_t i = 0; i < o->n; i++) {
    total += o->items[i].nbytes;
    if (json_object_set_new(map, o->items[i].name,
                            json_string(o->files[o->file_of[i]].name)))
      goto nomem;
  }
  root = json_pack("{s:{s:I}, s:o}", "metadata", "total_size",
                   (json_int_t)total, "weight_map", map);
  map = NULL;
  if (!root ||
      !(o->index_text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER)))
    goto nomem;
  json_decref(root);
  return DECOMP_OK;
nomem:
  json_decref(map);
  json_decref(root);
  return core_fail(o->ctx, DECOMP_ERR_NOMEM, "out of memory");
}

int core_st_out_open(decomp_ctx *ctx, const char *dir, const char *single_name,
                     const core_st_item *items, size_t n,
                     const char *metadata, uint64_t shard_bytes, bool sharded,
                     core_st_out **out) {
  if (n > ((size_t)1 << 40))
    return core_fail(ctx, DECOMP_ERR_TOO_LARGE, "%zu tensors", n);
  core_st_out *o = calloc(1, sizeof *o);
  int rc = DECOMP_OK;
  if (!o)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  o->ctx = ctx;
  o->n = n;
  o->dir = strdup(dir);
  o->items = calloc(n ? n : 1, sizeof *o->items);
  o->file_of = calloc(n ? n : 1, sizeof *o->file_of);
  o->offset = calloc(n ? n : 1, sizeof *o->offset);
  o->files = calloc(n + 2, sizeof *o->files);
  if (!o->dir || !o->items || !o->file_of || !o->offset || !o->files)
    goto nomem;
  for (size_t i = 0; i < n + 2; i++)
    o->files[i].fd = -1;
  for (size_t i = 0; i < n; i++)
    o->items[i] = items[i];
  /* Plan: greedy packing in order. */
  uint64_t fill = 0, total = 0;
  size_t nf = 1;
  for (size_t i = 0; i < n; i++) {
    uint64_t b = items[i].nbytes;
    if (fill > 0 && fill + b > shard_bytes) {
      nf++;
      fill = 0;
    }
    o->file_of[i] = nf - 1;
    fill += b;
    total += b;
  }
  o->sharded = sharded || nf > 1;
  if (!o->sharded) {
    nf = 1;
    if (!(o->files[0].name = strdup(single_name ? single_name
                                                : "model.safetensors")))
      goto nomem;
  } else {
    if (nf > 99999) {
      rc = core_fail(ctx, DECOMP_ERR_TOO_LARGE,
                     "%llu bytes in shards of %llu would be %zu shards (at "
                     "most 99999)",
                     (unsigned long long)total,
                     (unsigned long long)shard_bytes, nf);
      goto fail;
    }
    for (size_t f = 0; f < nf; f++) {
      char name[64];
      snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", f + 1,
               nf);
      if (!(o->files[f].name = strdup(name)))
        goto nomem;
    }
  }
  o->nfiles = nf;
  size_t first = 0;
  for (size_t f = 0; f < nf; f++) {
    size_t k = 0;
    while (first + k < n && o->file_of[first + k] == f)
      k++;
    if ((rc = file_create(ctx, dir, &o->files[f])) != DECOMP_OK ||
        (rc = file_start(o, &o->files[f], first, k, metadata)) != DECOMP_OK)
      goto fail;
    first += k;
  }
  if (o->sharded) {
    struct st_file *ix = &o->files[nf];
    if (!(ix->name = strdup(SHARD_INDEX_NAME)))
      goto nomem;
    if ((rc = build_index(o)) != DECOMP_OK ||
        (rc = file_create(ctx, dir, ix)) != DECOMP_OK ||
        (rc = pwrite_all(ctx, ix, o->index_text, strlen(o->index_text), 0)) !=
            DECOMP_OK)
      goto fail;
  }
  *out = o;
  return DECOMP_OK;
nomem:
  rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
fail:
  core_st_out_free(o);
  return rc;
}

uint64_t core_st_out_nbytes(const core_st_out *o, size_t item) {
  return o->items[item].nbytes;
}

int core_st_out_write(core_st_out *o, size_t item, const void *buf,
                      size_t len) {
  if (item >= o->n || len != o->items[item].nbytes)
    return core_fail(o->ctx, DECOMP_ERR_INTERNAL,
                     "%s: %zu bytes for a tensor of %llu",
                     item < o->n ? o->items[item].name : "?", len,
                     item < o->n ? (unsigned long long)o->items[item].nbytes
                                 : 0ull);
  return pwrite_all(o->ctx, &o->files[o->file_of[item]], buf, len,
                    o->offset[item]);
}

int core_st_out_copy(core_st_out *o, size_t item, const decomp_tensor *t,
                     const decomp_weights *src) {
  const struct st_file *f = &o->files[o->file_of[item]];
  uint64_t at = o->offset[item], len = o->items[item].nbytes;
  size_t isz = decomp_dtype_size(t->dtype);
  if ((uint64_t)decomp_tensor_numel(t) * isz != len)
    return core_fail(o->ctx, DECOMP_ERR_INTERNAL, "%s: size changed",
                     t->name);
  if (len == 0)
    return DECOMP_OK;
  if (decomp_tensor_is_contiguous(t)) {
    /* In slices, each given back to the page cache once written, so a
     * copied embedding never sits whole in RSS. */
    const unsigned char *p = t->data;
    for (uint64_t done = 0; done < len;) {
      size_t k = len - done < COPY_CHUNK ? (size_t)(len - done) : COPY_CHUNK;
      int rc = pwrite_all(o->ctx, f, p + done, k, at + done);
      if (rc != DECOMP_OK)
        return rc;
      core_weights_drop_pages(src, p + done, k);
      done += k;
    }
    return DECOMP_OK;
  }
  if (lseek(f->fd, (off_t)at, SEEK_SET) < 0)
    return io_fail(o->ctx, "seek", f->final, errno);
  unsigned char *gbuf = malloc(CORE_GATHER_BYTES);
  if (!gbuf)
    return core_fail(o->ctx, DECOMP_ERR_NOMEM, "out of memory");
  int rc = core_safetensors_write_tensor(o->ctx, f->fd, t, gbuf);
  free(gbuf);
  if (rc != DECOMP_OK) /* the message says write: name the file */
    return core_fail(o->ctx, rc, "%s: %s", f->final, decomp_errmsg(o->ctx));
  core_weights_drop_pages(src, t->storage, t->storage_nbytes);
  return DECOMP_OK;
}

static int file_finish(core_st_out *o, struct st_file *f) {
  if (fchmod(f->fd, core_new_file_mode()) != 0)
    return io_fail(o->ctx, "chmod", f->final, errno);
  if (fsync(f->fd) != 0)
    return io_fail(o->ctx, "fsync", f->final, errno);
  int e = close(f->fd);
  f->fd = -1;
  if (e != 0)
    return io_fail(o->ctx, "close", f->final, errno);
  return DECOMP_OK;
}

/* Whether `name` is one of the shards this writer names
 * (model-00001-of-00003.safetensors). */
static bool own_shard_name(const char *name) {
  unsigned a, b;
  int end = 0;
  return strlen(name) == strlen("model-00001-of-00001.safetensors") &&
         sscanf(name, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 &&
         name[end] == '\0';
}

/* After a commit: the shards and index an earlier run wrote in the folder
 * that this output does not have (more shards before, or sharded before and
 * one file now) are removed, so the folder holds one checkpoint. Only this
 * writer's own names are touched. */
static void remove_stale(core_st_out *o) {
  DIR *d = opendir(o->dir);
  if (!d)
    return;
  struct dirent *e;
  while ((e = readdir(d))) {
    bool stale = own_shard_name(e->d_name) ||
                 (!o->sharded && strcmp(e->d_name, SHARD_INDEX_NAME) == 0);
    for (size_t i = 0; stale && i < o->nfiles + (o->sharded ? 1 : 0); i++)
      stale = strcmp(e->d_name, o->files[i].name) != 0;
    if (!stale)
      continue;
    char *p = path_join(o->dir, e->d_name);
    if (p && unlink(p) == 0)
      core_log(o->ctx, DECOMP_LOG_INFO, "io",
               "removed %s, left by an earlier run", e->d_name);
    free(p);
  }
  closedir(d);
}

int core_st_out_commit(core_st_out *o, char **files_json) {
  size_t all = o->nfiles + (o->sharded ? 1 : 0);
  int rc = DECOMP_OK;
  json_t *names = json_array();
  if (!names)
    return core_fail(o->ctx, DECOMP_ERR_NOMEM, "out of memory");
  for (size_t i = 0; i < all && rc == DECOMP_OK; i++)
    rc = file_finish(o, &o->files[i]);
  /* The index last: a reader that sees it sees every shard. */
  for (size_t i = 0; i < all && rc == DECOMP_OK; i++) {
    struct st_file *f = &o->files[i];
    if (rename(f->tmp, f->final) != 0)
      rc = io_fail(o->ctx, "rename", f->final, errno);
    else
      f->renamed = true;
    if (json_array_append_new(names, json_string(f->name)))
      rc = core_fail(o->ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  if (rc == DECOMP_OK) {
    remove_stale(o);
    int dfd = open(o->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    if (files_json &&
        !(*files_json = json_dumps(names, JSON_COMPACT)))
      rc = core_fail(o->ctx, DECOMP_ERR_NOMEM, "out of memory");
  }
  json_decref(names);
  if (rc == DECOMP_OK)
    o->committed = true;
  return rc;
}

void core_st_out_free(core_st_out *o) {
  if (!o)
    return;
  for (size_t i = 0; o->files && i < o->nfiles + 2; i++) {
    struct st_file *f = &o->files[i];
    if (f->fd >= 0)
      close(f->fd);
    if (!o->committed) {
      if (f->renamed)
        unlink(f->final);
      else if (f->tmp)
        unlink(f->tmp);
    }
    free(f->final);
    free(f->tmp);
    free(f->name);
  }
  free(o->files);
  free(o->items);
  free(o->file_of);
  free(o->offset);
  free(o->index_text);
  free(o->dir);
  free(o);
}
