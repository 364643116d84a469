/* digest.c — SHA-256 through OpenSSL's EVP API (libcrypto), and random ids
 * from getrandom(2). The only file that includes OpenSSL headers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/evp.h>

#include "digest.h"

struct store_sha256 {
  EVP_MD_CTX *md;
};

store_sha256 *store_sha256_new(void) {
  store_sha256 *h = calloc(1, sizeof *h);
  if (!h)
    return NULL;
  h->md = EVP_MD_CTX_new();
  if (!h->md || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
    store_sha256_free(h);
    return NULL;
  }
  return h;
}

bool store_sha256_update(store_sha256 *h, const void *buf, size_t len) {
  return len == 0 || EVP_DigestUpdate(h->md, buf, len) == 1;
}

static void to_hex(const unsigned char *b, size_t n, char *out) {
  static const char hx[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hx[b[i] >> 4];
    out[2 * i + 1] = hx[b[i] & 15];
  }
  out[2 * n] = '\0';
}

bool store_sha256_final(store_sha256 *h, char out[STORE_DIGEST_LEN]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(h->md, md, &n) != 1 || n != 32)
    return false;
  memcpy(out, "sha256:", 7);
  to_hex(md, 32, out + 7);
  return true;
}

void store_sha256_free(store_sha256 *h) {
  if (!h)
    return;
  EVP_MD_CTX_free(h->md);
  free(h);
}

bool store_sha256_hex(const void *buf, size_t len, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32)
    return false;
  to_hex(md, 32, out);
  return true;
}

bool store_digest_valid(const char *s) {
  if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 71)
    return false;
  for (const char *p = s + 7; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
      return false;
  return true;
}

bool store_random(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len > 0) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    p += n;
    len -= (size_t)n;
  }
  return true;
}

bool store_random_id(const char *prefix, size_t nbytes, char *out,
                     size_t outlen) {
  unsigned char b[64];
  size_t pl = strlen(prefix);
  if (nbytes > sizeof b || outlen < pl + 2 * nbytes + 1 ||
      !store_random(b, nbytes))
    return false;
  memcpy(out, prefix, pl);
  to_hex(b, nbytes, out + pl);
  return true;
}
