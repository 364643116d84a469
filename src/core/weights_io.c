/* weights_io.c — weight files in and out: telling formats apart, opening a
 * file or buffer with the right reader, and saving atomically (temporary
 * file in the target's folder, fsync, rename, so the target is either the
 * whole new file or untouched, and no temporary is left behind). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zip.h"

static bool is_zip(const unsigned char *b, size_t len) {
  return len >= 4 && b[0] == 'P' && b[1] == 'K' &&
         ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6));
}

/* safetensors starts with a little-endian header length and '{'. */
static bool is_safetensors(const unsigned char *b, size_t len) {
  return len >= 10 && b[8] == '{';
}

/* The kind of a zip: TorchScript when it holds constants.pkl, .pth when it
 * holds data.pkl (in the first entry's folder). */
static decomp_format zip_kind(const void *buf, size_t len) {
  zip_archive z;
  if (zip_open(NULL, buf, len, &z) != DECOMP_OK)
    return DECOMP_FORMAT_UNKNOWN;
  decomp_format f = DECOMP_FORMAT_UNKNOWN;
  bool data_pkl = false;
  for (size_t i = 0; i < z.n; i++) {
    const zip_entry *e = &z.entries[i];
    const char *slash = memchr(e->name, '/', e->name_len);
    if (!slash)
      continue;
    size_t rest = e->name_len - (size_t)(slash + 1 - e->name);
    if (rest == 13 && memcmp(slash + 1, "constants.pkl", 13) == 0) {
      f = DECOMP_FORMAT_TORCHSCRIPT;
      break;
    }
    if (rest == 8 && memcmp(slash + 1, "data.pkl", 8) == 0)
      data_pkl = true;
  }
  if (f == DECOMP_FORMAT_UNKNOWN && data_pkl)
    f = DECOMP_FORMAT_PTH;
  zip_close(&z);
  return f;
}

decomp_format decomp_detect_format(const void *buf, size_t len) {
  const unsigned char *b = buf;
  if (!b)
    return DECOMP_FORMAT_UNKNOWN;
  if (is_zip(b, len))
    return zip_kind(buf, len);
  if (is_safetensors(b, len))
    return DECOMP_FORMAT_SAFETENSORS;
  return DECOMP_FORMAT_UNKNOWN;
}

static int read_any(decomp_ctx *ctx, const void *buf, size_t len,
                    decomp_weights *w) {
  const unsigned char *b = buf;
  if (is_zip(b, len)) {
    if (zip_kind(buf, len) == DECOMP_FORMAT_TORCHSCRIPT)
      return core_fail(ctx, DECOMP_ERR_TORCHSCRIPT,
                       "a TorchScript archive (torch.jit.save): this build "
                       "cannot read TorchScript; upload a state dict saved "
                       "with torch.save(model.state_dict(), path)");
    return core_pth_read(ctx, buf, len, w); /* detailed zip errors */
  }
  if (is_safetensors(b, len))
    return core_safetensors_read(ctx, buf, len, w);
  if (len >= 2 && b[0] == 0x80 && b[1] <= 5)
    return core_fail(ctx, DECOMP_ERR_UNKNOWN_FORMAT,
                     "a bare pickle (the legacy torch.save format of PyTorch "
                     "< 1.6): load it and save again with a current "
                     "torch.save");
  return core_fail(ctx, DECOMP_ERR_UNKNOWN_FORMAT,
                   "not a torch.save (.pth) archive nor a safetensors file");
}

int decomp_weights_open_memory(decomp_ctx *ctx, const void *buf, size_t len,
                               decomp_weights **out) {
  if (!buf || !out)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "no buffer");
  decomp_weights *w;
  int rc = decomp_weights_new(ctx, &w);
  if (rc)
    return rc;
  rc = read_any(ctx, buf, len, w);
  if (rc) {
    decomp_weights_free(w);
    return rc;
  }
  core_clear(ctx);
  *out = w;
  return DECOMP_OK;
}

#define INDEX_NAME DECOMP_ARTIFACT_INDEX

/* A sharded checkpoint: a folder holding INDEX_NAME, or an index file
 * (a name ending in ".json": no weight file starts like JSON text). */
static int open_sharded_path(decomp_ctx *ctx, const char *path, bool is_dir,
                             decomp_weights **out) {
  char *index = malloc(strlen(path) + sizeof INDEX_NAME + 1);
  if (!index)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  if (is_dir)
    sprintf(index, "%s/%s", path, INDEX_NAME);
  else
    strcpy(index, path);
  struct stat st;
  int rc;
  if (is_dir && stat(index, &st) != 0)
    rc = core_fail(ctx, DECOMP_ERR_IO,
                   "%s: a folder without %s (a sharded checkpoint needs its "
                   "index)",
                   path, INDEX_NAME);
  else
    rc = core_shard_open_index_file(ctx, index, out);
  if (rc != DECOMP_OK && strncmp(decomp_errmsg(ctx), index, strlen(index))) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", decomp_errmsg(ctx));
    core_fail(ctx, rc, "%s: %s", index, msg);
  }
  free(index);
  return rc;
}

int decomp_weights_open(decomp_ctx *ctx, const char *path,
                        decomp_weights **out) {
  if (!path || !out)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "no path");
  struct stat st;
  size_t plen = strlen(path);
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return open_sharded_path(ctx, path, true, out);
  if (plen > 5 && strcmp(path + plen - 5, ".json") == 0)
    return open_sharded_path(ctx, path, false, out);
  void *map;
  size_t len;
  int rc = core_map_file(ctx, path, &map, &len);
  if (rc)
    return rc;
  decomp_weights *w;
  rc = decomp_weights_new(ctx, &w);
  if (rc) {
    core_unmap(map, len);
    return rc;
  }
  /* From here the set owns the mapping (released on failure too). */
  if ((rc = core_weights_keep(w, map, len, core_unmap)) ||
      (rc = read_any(ctx, map, len, w))) {
    /* Prefix the message with the file name, keeping the code. */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", decomp_errmsg(ctx));
    core_fail(ctx, rc, "%s: %s", path, msg);
    decomp_weights_free(w);
    return rc;
  }
  core_clear(ctx);
  *out = w;
  return DECOMP_OK;
}

/* The archive folder torch.save would use: the file name without its
 * folder and last extension. */
static void path_stem(const char *path, char *out, size_t cap) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t n = strlen(base);
  const char *dot = strrchr(base, '.');
  if (dot) /* as PyTorch: ".pth" has an empty stem */
    n = (size_t)(dot - base);
  if (n >= cap)
    n = cap - 1;
  memcpy(out, base, n);
  out[n] = '\0';
  if (!*out)
    snprintf(out, cap, "archive");
}

/* The mode a new file gets: 0666 less the process umask (read from /proc,
 * since umask(2) cannot be read without changing it, racing other
 * threads). */
mode_t core_new_file_mode(void) {
  mode_t mask = 022;
  FILE *f = fopen("/proc/self/status", "re");
  if (f) {
    char line[256];
    while (fgets(line, sizeof line, f)) {
      unsigned m;
      if (sscanf(line, "Umask: %o", &m) == 1) {
        mask = (mode_t)m;
        break;
      }
    }
    fclose(f);
  }
  return 0666 & ~mask;
}

int decomp_weights_save(decomp_ctx *ctx, const decomp_weights *w,
                        const char *path, decomp_format fmt) {
  if (!w || !path || !*path)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "no weights or path");
  if (fmt != DECOMP_FORMAT_PTH && fmt != DECOMP_FORMAT_SAFETENSORS)
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "cannot save weights as %s (pth or safetensors)",
                     decomp_format_name(fmt));
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 32);
  if (!tmp)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  /* ".NAME.tmp-XXXXXX" beside the target. */
  const char *slash = strrchr(path, '/');
  size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
  memcpy(tmp, path, dirlen);
  snprintf(tmp + dirlen, plen - dirlen + 32, ".%s.tmp-XXXXXX", path + dirlen);
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    free(tmp);
    return core_fail(ctx, e == ENOSPC ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO,
                     "%s: cannot create a temporary file: %s", path,
                     strerror(e));
  }
  int rc;
  if (fmt == DECOMP_FORMAT_PTH) {
    char stem[256];
    path_stem(path, stem, sizeof stem);
    rc = core_pth_write(ctx, w, fd, stem);
  } else {
    rc = core_safetensors_write(ctx, w, fd);
  }
  if (rc == DECOMP_OK && fchmod(fd, core_new_file_mode()) != 0)
    rc = core_fail(ctx, DECOMP_ERR_IO, "%s: chmod: %s", path, strerror(errno));
  if (rc == DECOMP_OK && fsync(fd) != 0)
    rc = core_fail(ctx, errno == ENOSPC ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO,
                   "%s: fsync: %s", path, strerror(errno));
  if (close(fd) != 0 && rc == DECOMP_OK)
    rc = core_fail(ctx, errno == ENOSPC ? DECOMP_ERR_DISK_FULL : DECOMP_ERR_IO,
                   "%s: close: %s", path, strerror(errno));
  if (rc == DECOMP_OK && rename(tmp, path) != 0)
    rc = core_fail(ctx, DECOMP_ERR_IO, "%s: rename: %s", path,
                   strerror(errno));
  if (rc != DECOMP_OK) {
    unlink(tmp);
    free(tmp);
    return rc;
  }
  free(tmp);
  /* Make the rename itself durable. */
  char *dir = strndup(path, dirlen ? dirlen : 0);
  if (dir) {
    int dfd = open(dirlen ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    free(dir);
  }
  core_clear(ctx);
  return DECOMP_OK;
}
