/* digest.c — SHA-256 of local files for decompctl (the only CLI file that
 * includes OpenSSL). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "cli.h"

bool cli_file_digest(const char *path, char out[72]) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
  static unsigned char buf[1 << 20];
  ssize_t n = 0;
  while (ok && (n = read(fd, buf, sizeof buf)) > 0)
    ok = EVP_DigestUpdate(md, buf, (size_t)n) == 1;
  if (n < 0)
    ok = false;
  unsigned char d[32];
  unsigned int dlen = 0;
  ok = ok && EVP_DigestFinal_ex(md, d, &dlen) == 1 && dlen == 32;
  EVP_MD_CTX_free(md);
  close(fd);
  if (!ok)
    return false;
  int k = snprintf(out, 72, "sha256:");
  for (int i = 0; i < 32; i++)
    k += snprintf(out + k, 72 - (size_t)k, "%02x", d[i]);
  return true;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

bool cli_weights_digest(const char *path, char out[72]) {
  struct stat st;
  size_t plen = strlen(path);
  bool dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
  if (!dir && !(plen > 5 && strcmp(path + plen - 5, ".json") == 0))
    return cli_file_digest(path, out);
  /* A sharded checkpoint: the digest of its manifest, one line per file,
   * "<digest> <name>\n", the index first, then the shards by name. */
  char folder[4096], index[4096];
  if (dir) {
    snprintf(folder, sizeof folder, "%s", path);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", path);
  } else {
    snprintf(index, sizeof index, "%s", path);
    snprintf(folder, sizeof folder, "%s", path);
    char *slash = strrchr(folder, '/');
    if (slash)
      *slash = '\0';
    else
      strcpy(folder, ".");
  }
  json_t *root = json_load_file(index, 0, NULL);
  json_t *map = json_object_get(root, "weight_map");
  size_t n = 0;
  const char **names = calloc(json_object_size(map) + 1, sizeof *names);
  char *manifest = NULL;
  size_t mlen = 0;
  FILE *m = open_memstream(&manifest, &mlen);
  bool ok = root && json_is_object(map) && names && m;
  const char *k;
  json_t *v;
  if (ok) {
    json_object_foreach(map, k, v) {
      const char *s = json_string_value(v);
      if (!s || strchr(s, '/')) { /* the engine refuses it with a message */
        ok = false;
        break;
      }
      names[n++] = s;
    }
  }
  if (ok)
    qsort(names, n, sizeof *names, cmp_str);
  char d[72];
  ok = ok && cli_file_digest(index, d);
  if (ok)
    fprintf(m, "%s model.safetensors.index.json\n", d);
  for (size_t i = 0; ok && i < n; i++) {
    if (i > 0 && strcmp(names[i], names[i - 1]) == 0)
      continue;
    char sp[8192];
    snprintf(sp, sizeof sp, "%s/%s", folder, names[i]);
    ok = cli_file_digest(sp, d);
    if (ok)
      fprintf(m, "%s %s\n", d, names[i]);
  }
  if (m)
    fclose(m);
  if (ok) {
    unsigned char h[32];
    unsigned int hl = 0;
    ok = EVP_Digest(manifest, mlen, h, &hl, EVP_sha256(), NULL) == 1 &&
         hl == 32;
    int w = snprintf(out, 72, "sha256:");
    for (int i = 0; ok && i < 32; i++)
      w += snprintf(out + w, 72 - (size_t)w, "%02x", h[i]);
  }
  free(manifest);
  free(names);
  json_decref(root);
  return ok;
}
