/* digest.c — SHA-256 of local files for decompctl (the only CLI file that
 * includes OpenSSL). */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

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
