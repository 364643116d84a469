/* digest.h — streaming SHA-256, the store's content address. The only
 * interface to the crypto library; callers never see its types. */
#ifndef DECOMPD_STORE_DIGEST_H
#define DECOMPD_STORE_DIGEST_H

#include <stdbool.h>
#include <stddef.h>

/* "sha256:" + 64 lowercase hex + NUL */
#define STORE_DIGEST_LEN 72

typedef struct store_sha256 store_sha256;

/* A fresh hash state, or NULL when out of memory. */
store_sha256 *store_sha256_new(void);
bool store_sha256_update(store_sha256 *h, const void *buf, size_t len);
/* Finish into `out` as "sha256:<hex>"; the state can't be updated after. */
bool store_sha256_final(store_sha256 *h, char out[STORE_DIGEST_LEN]);
void store_sha256_free(store_sha256 *h);

/* One-shot: lowercase hex (64 chars + NUL) of `buf`, without the prefix. */
bool store_sha256_hex(const void *buf, size_t len, char out[65]);

/* Whether `s` is a well-formed "sha256:<64 lowercase hex>". */
bool store_digest_valid(const char *s);

/* Fill `buf` with `len` bytes from the kernel's CSPRNG. */
bool store_random(void *buf, size_t len);
/* `prefix` + 2·nbytes random lowercase hex chars into out (size ≥ strlen
 * (prefix) + 2·nbytes + 1). */
bool store_random_id(const char *prefix, size_t nbytes, char *out,
                     size_t outlen);

#endif
