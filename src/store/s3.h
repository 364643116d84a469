/* s3.h — a small client for one bucket of an S3-compatible object store
 * (AWS S3, MinIO, Ceph RGW, s3rver…), for the blob store of a cluster.
 *
 * Requests are path-style (ENDPOINT/BUCKET/PREFIX/KEY) and signed by
 * libcurl's own AWS Signature Version 4 (CURLOPT_AWS_SIGV4,
 * "aws:amz:REGION:s3"); s3.c is the only file of the store that includes
 * curl.h. Bodies stream between the object store and file descriptors:
 * nothing is held in memory but a buffer and the XML of one answer.
 *
 * Fallible functions return a decomp_error code (DECOMP_OK on success) and
 * leave the detail on the calling thread (store_errmsg()), naming the
 * endpoint, the bucket and the key; messages never carry the secret key.
 *   DECOMP_ERR_CONNECT            nothing answered at the endpoint
 *   DECOMP_ERR_TIMEOUT            the endpoint stopped answering
 *   DECOMP_ERR_TRANSFER           the connection broke during a transfer
 *   DECOMP_ERR_STORE              the service refused: wrong credentials,
 *                                 no such bucket, or any other S3 error
 *                                 (its Code is in the message)
 *   DECOMP_ERR_NOT_FOUND          no such key (s3_get_fd)
 *   DECOMP_ERR_RANGE_NOT_SATISFIABLE  an offset past the object's end
 *   DECOMP_ERR_UPLOAD_DIGEST      s3_put_fd sent bytes of another digest
 *   DECOMP_ERR_DIGEST_MISMATCH    s3_get_fd received bytes of another digest
 *   DECOMP_ERR_IO                 reading or writing the caller's fd failed
 *   DECOMP_ERR_INVALID_ARGUMENT   a bad key, configuration or argument
 *   DECOMP_ERR_NOMEM
 *
 * Nothing is retried here: a caller retries what failed with CONNECT,
 * TIMEOUT, TRANSFER or an S3 503 SlowDown (a GET resumes from what
 * *out_written says), since only it knows whether its fd can be read again.
 *
 * Thread safety: one s3_bucket may be used by any number of threads at
 * once. Each call borrows an easy handle of its own from the bucket's pool
 * (which keeps connections open between calls); the handles share only the
 * DNS cache and TLS sessions, never a connection.
 */
#ifndef DECOMPD_STORE_S3_H
#define DECOMPD_STORE_S3_H

#include <stdbool.h>
#include <stdint.h>

#include "decomp/errors.h"

/* The smallest part S3 accepts in a multipart upload (but the last). */
#define S3_PART_MIN ((int64_t)5 << 20)
/* part_size when the configuration leaves it 0. */
#define S3_PART_DEFAULT ((int64_t)64 << 20)

/* Where the bucket is and how to reach it. Strings are borrowed during
 * s3_open only (it copies them). */
typedef struct s3_config {
  /* "http://127.0.0.1:9000", "https://s3.eu-west-1.amazonaws.com"; a
   * trailing '/' is ignored. Required. */
  const char *endpoint;
  /* The signing region ("us-east-1" when NULL or ""). */
  const char *region;
  /* The bucket's name. Required. */
  const char *bucket;
  /* Folder inside the bucket that every key lives under ("" or NULL: the
   * bucket's root); leading and trailing '/' are ignored. */
  const char *prefix;
  /* Credentials; NULL or "" takes $AWS_ACCESS_KEY_ID and
   * $AWS_SECRET_ACCESS_KEY. */
  const char *access_key;
  const char *secret_key;
  /* Objects larger than this go up as a multipart upload in parts of this
   * size (0: S3_PART_DEFAULT; at least S3_PART_MIN). Raised as needed to
   * keep an upload within S3's 10,000 parts. */
  int64_t part_size;
  /* Keys per page of s3_list (0: 1000, S3's largest page). */
  int list_page;
} s3_config;

typedef struct s3_bucket s3_bucket;

/* Check that the bucket answers with these credentials (a one-key
 * ListObjectsV2, which needs the permission HEAD bucket needs, and whose
 * error answers, unlike HEAD's, carry S3's error code) and return a handle
 * for it in *out. Failures name the endpoint and the bucket:
 * DECOMP_ERR_CONNECT when nothing listens, DECOMP_ERR_STORE with the S3
 * code for refused credentials (InvalidAccessKeyId, SignatureDoesNotMatch)
 * or a missing bucket (NoSuchBucket). */
int s3_open(const s3_config *cfg, s3_bucket **out);
/* Release the handle and its connections; NULL is fine. Call after every
 * thread using it has returned. */
void s3_close(s3_bucket *b);

/* The endpoint and bucket, "http://host:port bucket NAME", for messages;
 * valid until s3_close. */
const char *s3_where(const s3_bucket *b);

/* Keys are relative to the configured prefix: at most 1024 bytes with the
 * prefix, not empty, no control characters, no leading '/', and no empty,
 * "." or ".." segment. */

/* Store `size` bytes read from `fd` (from its current position, with
 * read(2): a pipe is fine) as `key`, replacing any object of that name.
 * Up to part_size bytes go in one PUT; more go as a multipart upload, which
 * is aborted when any step fails. The SHA-256 of the bytes sent is computed
 * on the way; when `expect_sha256_hex` (64 lowercase hex) is given and they
 * differ, the object does not stay: a single PUT carries the expected
 * digest as its signed payload hash (a service that checks it refuses the
 * PUT) and is deleted if accepted; a multipart upload is aborted before it
 * is completed. Then DECOMP_ERR_UPLOAD_DIGEST. `out_sha256_hex` (65 bytes,
 * may be NULL) receives the digest of what was sent. DECOMP_ERR_IO when
 * `fd` fails or ends before `size` bytes. */
int s3_put_fd(s3_bucket *b, const char *key, int fd, int64_t size,
              const char *expect_sha256_hex, char *out_sha256_hex);

/* Write the object's bytes [offset, offset + len) to `fd` with write(2)
 * (len < 0: to the object's end), through an HTTP Range request: a resume
 * after `offset` bytes, or a partial read. A service that ignores the range
 * and sends the whole object is handled (the head is skipped).
 * *out_written (may be NULL) receives the bytes written, also on failure,
 * so that a caller can resume. With `expect_sha256_hex`, the whole object
 * is checked: `len` must be < 0, and when `offset` > 0 the first `offset`
 * bytes are read back from `fd` itself (pread(2) from position 0: `fd` is
 * then the regular file being resumed, opened for reading too);
 * DECOMP_ERR_DIGEST_MISMATCH when it differs (the caller discards what was
 * written); a resume of a file that is already whole fetches nothing and
 * checks it. DECOMP_ERR_NOT_FOUND when there is no such key,
 * DECOMP_ERR_RANGE_NOT_SATISFIABLE when `offset` is past the end. */
int s3_get_fd(s3_bucket *b, const char *key, int64_t offset, int64_t len,
              int fd, const char *expect_sha256_hex, int64_t *out_written);

/* Whether `key` exists (*exists) and its size (*size, -1 when it does not;
 * either may be NULL). A missing key is not an error. */
int s3_head(s3_bucket *b, const char *key, bool *exists, int64_t *size);

/* Remove `key`; a key that does not exist is not an error. */
int s3_delete(s3_bucket *b, const char *key);

/* Called by s3_list once per key: the key relative to the configured prefix
 * (valid during the call) and its size. Return 0 to go on; any other value
 * stops the listing, and s3_list returns it. */
typedef int (*s3_list_fn)(const char *key, int64_t size, void *user);

/* Call `fn` for every key that starts with `prefix` ("" or NULL: all of
 * them), in the service's order (UTF-8 binary order on S3), following
 * continuation tokens (ListObjectsV2) page after page. */
int s3_list(s3_bucket *b, const char *prefix, s3_list_fn fn, void *user);

#endif
