/* shard_read.c — sharded safetensors checkpoints in (the Hugging Face
 * layout): an index document, `{"metadata": {"total_size": N},
 * "weight_map": {tensor: shard file}}`, binds several safetensors files into
 * one state dict.
 *
 * Every shard is mapped and read by the single-file reader (safetensors.c),
 * so each of its checks applies per shard; the set keeps every mapping and
 * borrows its tensors from them, nothing is copied. The index itself is held
 * to: shard names that are plain file names (no '/', not "." or "..", ending
 * in ".safetensors"), every tensor in exactly one shard and in the shard the
 * map names, every mapped tensor present, no shard given that the map does
 * not name, and total_size (when given) equal to the tensors' bytes. Errors
 * are DECOMP_ERR_BAD_SHARD_INDEX naming the tensor and the shard(s); a
 * shard's own defects keep the reader's code, prefixed with the shard name.
 *
 * Two ways in: decomp_weights_open_sharded (the index text plus each shard's
 * path, as a service holding shards as separate blobs has them) and
 * decomp_weights_open on a folder or on its index file, where the shards are
 * looked up by name in the index's folder only. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core.h"

#define INDEX_MAX ((size_t)100 * 1000 * 1000)
#define SHARD_SUFFIX ".safetensors"

struct shard {
  const char *name;  /* borrowed from the index JSON */
  const char *first; /* the first tensor the map puts in it (for messages) */
  const char *path;  /* where it is; NULL until given */
  size_t tensors;    /* how many the map puts in it */
};

bool core_shard_name_ok(const char *name, const char **why) {
  size_t n = strlen(name), sl = strlen(SHARD_SUFFIX);
  *why = NULL;
  if (n == 0)
    *why = "is empty";
  else if (n > 255)
    *why = "is longer than 255 bytes";
  else if (strchr(name, '/'))
    *why = "holds a '/' (shards must be plain file names in the index's "
           "folder)";
  else if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
           strstr(name, ".."))
    *why = "holds \"..\" (shards must be plain file names in the index's "
           "folder)";
  else if (n <= sl || strcmp(name + n - sl, SHARD_SUFFIX) != 0)
    *why = "does not end in \".safetensors\"";
  for (size_t i = 0; !*why && i < n; i++)
    if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
      *why = "holds a control character";
  return *why == NULL;
}

static struct shard *shard_find(struct shard *s, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(s[i].name, name) == 0)
      return &s[i];
  return NULL;
}

int core_shard_index_parse(decomp_ctx *ctx, const char *text, size_t len,
                           json_t **out_root, int64_t *out_total) {
  if (len > INDEX_MAX)
    return core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "index: %zu bytes, over the 100 MB limit", len);
  json_error_t jerr;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  int rc = DECOMP_OK;
  if (!root)
    return core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "index: not JSON: line %d column %d: %s", jerr.line,
                     jerr.column, jerr.text);
  json_t *map = json_object_get(root, "weight_map");
  json_t *meta = json_object_get(root, "metadata");
  *out_total = -1;
  if (!json_is_object(root) || !json_is_object(map)) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                   "index: not an object with a \"weight_map\" object");
    goto fail;
  }
  if (json_object_size(map) == 0) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                   "index: weight_map is empty");
    goto fail;
  }
  if (meta && !json_is_null(meta)) {
    json_t *ts = json_object_get(meta, "total_size");
    if (!json_is_object(meta) ||
        (ts && (!json_is_integer(ts) || json_integer_value(ts) < 0))) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "index: metadata is not an object whose total_size is "
                     "a non-negative integer");
      goto fail;
    }
    if (ts)
      *out_total = (int64_t)json_integer_value(ts);
  }
  const char *k;
  json_t *v;
  json_object_foreach(map, k, v) {
    const char *why;
    if (!*k) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "index: weight_map holds an empty tensor name");
      goto fail;
    }
    if (!json_is_string(v)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "index: weight_map: %.200s: the shard is not a string", k);
      goto fail;
    }
    if (!core_shard_name_ok(json_string_value(v), &why)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "index: weight_map: %.200s: shard name \"%.200s\" %s", k,
                     json_string_value(v), why);
      goto fail;
    }
  }
  *out_root = root;
  return DECOMP_OK;
fail:
  json_decref(root);
  return rc;
}

/* Read one shard into `w`, checking its tensors against the map. */
static int read_shard(decomp_ctx *ctx, json_t *map, const struct shard *s,
                      bool first, decomp_weights *w, char **meta,
                      bool *meta_differs, size_t *seen, uint64_t *bytes) {
  void *buf;
  size_t len;
  int rc = core_map_file(ctx, s->path, &buf, &len);
  if (rc != DECOMP_OK)
    return core_fail(ctx, rc == DECOMP_ERR_IO ? DECOMP_ERR_BAD_SHARD_INDEX : rc,
                     "shard %s (the index puts %s in it): %s", s->name,
                     s->first, decomp_errmsg(ctx));
  if ((rc = core_weights_keep(w, buf, len, core_unmap)) != DECOMP_OK)
    return rc;
  decomp_weights *one;
  if ((rc = decomp_weights_new(ctx, &one)) != DECOMP_OK)
    return rc;
  if ((rc = core_safetensors_read(ctx, buf, len, one)) != DECOMP_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", decomp_errmsg(ctx));
    decomp_weights_free(one);
    return core_fail(ctx, rc, "shard %s: %s", s->name, msg);
  }
  /* The per-shard set only lends its names; `w` keeps the mapping. */
  for (size_t i = 0; rc == DECOMP_OK && i < decomp_weights_count(one); i++) {
    const decomp_tensor *t = decomp_weights_at(one, i);
    const decomp_tensor *dup = decomp_weights_find(w, t->name);
    const char *want = json_string_value(json_object_get(map, t->name));
    if (dup)
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                       "tensor %.200s is in two shards: %s (the index's) and "
                       "%s",
                       t->name, want ? want : "?", s->name);
    else if (!want)
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                       "tensor %.200s is in shard %s but not in the index's "
                       "weight_map",
                       t->name, s->name);
    else if (strcmp(want, s->name) != 0)
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                       "tensor %.200s is in shard %s, but the index puts it in "
                       "%s",
                       t->name, s->name, want);
    else if ((rc = decomp_weights_add(w, t)) == DECOMP_OK) {
      *bytes += t->storage_nbytes;
      (*seen)++;
    }
  }
  const char *m = decomp_weights_metadata(one);
  if (rc != DECOMP_OK) {
    decomp_weights_free(one);
    return rc;
  }
  if (first && m) {
    if (!(*meta = strdup(m))) {
      decomp_weights_free(one);
      return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    }
  } else if (!first &&
             ((m == NULL) != (*meta == NULL) || (m && strcmp(m, *meta)))) {
    *meta_differs = true;
  }
  decomp_weights_free(one);
  return DECOMP_OK;
}

int decomp_weights_open_sharded(decomp_ctx *ctx, const char *index_json,
                                size_t len, size_t nshards,
                                const char *const *names,
                                const char *const *paths,
                                decomp_weights **out) {
  if (!index_json || !out || (nshards && (!names || !paths)))
    return core_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "open_sharded: index, shard names and paths are "
                     "required");
  json_t *root = NULL;
  int64_t total = -1;
  int rc = core_shard_index_parse(ctx, index_json, len, &root, &total);
  if (rc != DECOMP_OK)
    return rc;
  json_t *map = json_object_get(root, "weight_map");
  struct shard *sh = calloc(json_object_size(map), sizeof *sh);
  decomp_weights *w = NULL;
  char *meta = NULL;
  bool meta_differs = false;
  size_t ns = 0, seen = 0;
  uint64_t bytes = 0;
  if (!sh || (rc = decomp_weights_new(ctx, &w)) != DECOMP_OK) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  /* The shards in the order the map first names them. */
  const char *k;
  json_t *v;
  json_object_foreach(map, k, v) {
    const char *name = json_string_value(v);
    struct shard *s = shard_find(sh, ns, name);
    if (!s) {
      s = &sh[ns++];
      s->name = name;
      s->first = k;
    }
    s->tensors++;
  }
  for (size_t i = 0; i < nshards; i++) {
    const char *why;
    if (!names[i] || !paths[i] || !core_shard_name_ok(names[i], &why)) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "shard \"%.200s\": %s", names[i] ? names[i] : "(null)",
                     paths[i] ? why : "no path");
      goto done;
    }
    struct shard *s = shard_find(sh, ns, names[i]);
    if (!s) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "shard %s is not referenced by the index's weight_map",
                     names[i]);
      goto done;
    }
    if (s->path) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "shard %s is given twice", names[i]);
      goto done;
    }
    s->path = paths[i];
  }
  for (size_t i = 0; i < ns; i++) {
    if (!sh[i].path) {
      rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                     "shard %s (the index puts %s in it) is missing",
                     sh[i].name, sh[i].first);
      goto done;
    }
    if ((rc = read_shard(ctx, map, &sh[i], i == 0, w, &meta, &meta_differs,
                         &seen, &bytes)) != DECOMP_OK)
      goto done;
  }
  if (seen != json_object_size(map)) {
    /* Some mapped tensor is in no shard: name the first. */
    json_object_foreach(map, k, v) {
      if (!decomp_weights_find(w, k)) {
        rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                       "tensor %.200s: the index puts it in shard %s, which "
                       "does not hold it",
                       k, json_string_value(v));
        goto done;
      }
    }
  }
  if (total >= 0 && (uint64_t)total != bytes) {
    rc = core_fail(ctx, DECOMP_ERR_BAD_SHARD_INDEX,
                   "index: metadata.total_size is %lld bytes, the shards' "
                   "tensors hold %llu",
                   (long long)total, (unsigned long long)bytes);
    goto done;
  }
  if (meta_differs)
    core_log(ctx, DECOMP_LOG_INFO, "safetensors",
             "shards carry different __metadata__: none kept");
  else if (meta && (rc = decomp_weights_set_metadata(w, meta)) != DECOMP_OK)
    goto done;
  core_weights_set_format(w, DECOMP_FORMAT_SAFETENSORS);
  core_weights_set_shards(w, ns);
  core_clear(ctx);
  *out = w;
  w = NULL;
done:
  decomp_weights_free(w);
  free(meta);
  free(sh);
  json_decref(root);
  return rc;
}

/* Whether `name` looks like one of the Hub's shards (NAME-00001-of-00003
 * .safetensors): such a file beside an index that does not name it is an
 * unreferenced shard. Other .safetensors files (a consolidated copy) are
 * not the index's business. */
static bool looks_like_shard(const char *name) {
  size_t n = strlen(name), sl = strlen(SHARD_SUFFIX);
  if (n <= sl || strcmp(name + n - sl, SHARD_SUFFIX) != 0 || name[0] == '.')
    return false;
  const char *of = strstr(name, "-of-");
  return of != NULL && of > name;
}

int core_shard_open_index_file(decomp_ctx *ctx, const char *index_path,
                               decomp_weights **out) {
  char *dir = strdup(index_path);
  char **names = NULL, **paths = NULL;
  size_t n = 0, cap = 0;
  char *text = NULL;
  DIR *d = NULL;
  int rc = DECOMP_OK;
  if (!dir)
    return core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
  char *slash = strrchr(dir, '/');
  if (slash == dir)
    dir[1] = '\0';
  else if (slash)
    *slash = '\0';
  else
    strcpy(dir, ".");
  FILE *f = fopen(index_path, "rbe");
  struct stat st;
  size_t len = 0;
  if (!f || fstat(fileno(f), &st) != 0) {
    rc = core_fail(ctx, DECOMP_ERR_IO, "%s: %s", index_path, strerror(errno));
    if (f)
      fclose(f);
    goto done;
  }
  /* One byte more than the limit, so an over-long file shows as such. */
  size_t want = (size_t)st.st_size < INDEX_MAX ? (size_t)st.st_size + 1
                                               : INDEX_MAX + 1;
  text = malloc(want);
  if (text)
    len = fread(text, 1, want, f);
  bool err = ferror(f);
  fclose(f);
  if (!text) {
    rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }
  if (err) {
    rc = core_fail(ctx, DECOMP_ERR_IO, "%s: read error", index_path);
    goto done;
  }
  /* The shards are the files of the index's folder: those the map names
   * (by plain name, checked by the parser), and any other shard-like file,
   * which the open refuses as unreferenced. */
  json_t *root = NULL;
  int64_t total;
  if ((rc = core_shard_index_parse(ctx, text, len, &root, &total)) !=
      DECOMP_OK)
    goto done;
  json_t *map = json_object_get(root, "weight_map");
  if (!(d = opendir(dir))) {
    json_decref(root);
    rc = core_fail(ctx, DECOMP_ERR_IO, "%s: %s", dir, strerror(errno));
    goto done;
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    bool named = false;
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
      if (strcmp(json_string_value(v), e->d_name) == 0) {
        named = true;
        break;
      }
    }
    if (!named && !looks_like_shard(e->d_name))
      continue;
    if (n == cap) {
      size_t nc = cap ? 2 * cap : 16;
      char **a = realloc(names, nc * sizeof *a), **b;
      if (a)
        names = a;
      b = a ? realloc(paths, nc * sizeof *b) : NULL;
      if (!b) {
        json_decref(root);
        rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
        goto done;
      }
      paths = b;
      cap = nc;
    }
    names[n] = strdup(e->d_name);
    paths[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
    if (!names[n] || !paths[n]) {
      free(names[n]);
      free(paths[n]);
      json_decref(root);
      rc = core_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
      goto done;
    }
    sprintf(paths[n], "%s/%s", dir, e->d_name);
    n++;
  }
  json_decref(root);
  rc = decomp_weights_open_sharded(ctx, text, len, n,
                                   (const char *const *)names,
                                   (const char *const *)paths, out);
done:
  if (d)
    closedir(d);
  for (size_t i = 0; i < n; i++) {
    free(names[i]);
    free(paths[i]);
  }
  free(names);
  free(paths);
  free(text);
  free(dir);
  return rc;
}
