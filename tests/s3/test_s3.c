/* test_s3.c — the store's S3 client (src/store/s3.c) against a real
 * S3-compatible server on loopback. test_s3.py starts the server (s3rver)
 * and runs one test case of this program at a time (CK_RUN_CASE), with:
 *   S3_ENDPOINT       http://127.0.0.1:PORT of the server, behind a proxy
 *                     that checks SigV4 signatures as S3 does
 *   S3_DIRECT_ENDPOINT  the server itself (s3rver checks no signature and
 *                     no x-amz-content-sha256)
 *   S3_BUCKET         a bucket that exists there
 *   S3_DIR            the server's data folder (to tamper with an object)
 *   S3_DEAD_ENDPOINT  http://127.0.0.1:PORT where nothing listens
 *   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY  the server's credentials
 * Every case works under a prefix of its own, so each runs alone. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "digest.h"
#include "s3.h"
#include "store.h"

#define MiB (1 << 20)

static char tmpdir[256];
static char prefix[128];

static const char *env(const char *name) {
  const char *v = getenv(name);
  ck_assert_msg(v && *v, "%s is not set: run through test_s3.py", name);
  return v;
}

static void setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/decompd-s3-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  snprintf(prefix, sizeof prefix, "t%ld-%d", (long)getpid(), rand());
}

static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
}

static s3_config config(void) {
  return (s3_config){.endpoint = env("S3_ENDPOINT"),
                     .bucket = env("S3_BUCKET"),
                     .prefix = prefix,
                     .part_size = S3_PART_MIN};
}

static s3_bucket *open_bucket(void) {
  s3_config cfg = config();
  s3_bucket *b = NULL;
  int rc = s3_open(&cfg, &b);
  ck_assert_msg(rc == DECOMP_OK, "s3_open: %d %s", rc, store_errmsg());
  return b;
}

/* `n` bytes that differ with `seed`. */
static unsigned char *pattern(size_t n, unsigned seed) {
  unsigned char *p = malloc(n);
  ck_assert_ptr_nonnull(p);
  uint32_t x = 2463534242u ^ seed;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = (unsigned char)x;
  }
  return p;
}

static void hex_of(const void *p, size_t n, char out[65]) {
  ck_assert(store_sha256_hex(p, n, out));
}

/* A file in tmpdir holding `p`, opened for reading at its start. */
static int file_with(const char *name, const void *p, size_t n) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
  ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
  return fd;
}

/* The whole content of `fd` (malloc'd), its length in *n. */
static unsigned char *slurp(int fd, size_t *n) {
  struct stat st;
  ck_assert_int_eq(fstat(fd, &st), 0);
  unsigned char *p = malloc((size_t)st.st_size + 1);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(pread(fd, p, (size_t)st.st_size, 0), st.st_size);
  *n = (size_t)st.st_size;
  return p;
}

static void put_bytes(s3_bucket *b, const char *key, const void *p, size_t n) {
  char hex[65];
  hex_of(p, n, hex);
  int fd = file_with("put", p, n);
  int rc = s3_put_fd(b, key, fd, (int64_t)n, hex, NULL);
  ck_assert_msg(rc == DECOMP_OK, "put %s: %d %s", key, rc, store_errmsg());
  close(fd);
}

/* Get `key` whole, checked against the digest of `want`, and compare. */
static void get_equals(s3_bucket *b, const char *key, const void *want,
                       size_t n, const char *file) {
  char hex[65], path[512];
  hex_of(want, n, hex);
  snprintf(path, sizeof path, "%s/%s", tmpdir, file);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ck_assert_int_ge(fd, 0);
  int64_t wrote = -1;
  int rc = s3_get_fd(b, key, 0, -1, fd, hex, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "get %s: %d %s", key, rc, store_errmsg());
  ck_assert_int_eq(wrote, (int64_t)n);
  size_t got_n;
  unsigned char *got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, n);
  ck_assert(memcmp(got, want, n) == 0);
  free(got);
  close(fd);
}

START_TEST(put_then_get_round_trips_bytes_and_digest) {
  s3_bucket *b = open_bucket();
  size_t n = 3 * MiB + 17;
  unsigned char *data = pattern(n, 1);
  char hex[65], sent[65];
  hex_of(data, n, hex);
  int fd = file_with("src", data, n);
  ck_assert_int_eq(s3_put_fd(b, "blobs/one.bin", fd, (int64_t)n, hex, sent),
                   DECOMP_OK);
  ck_assert_str_eq(sent, hex);
  close(fd);
  get_equals(b, "blobs/one.bin", data, n, "dst");
  /* an empty object too */
  put_bytes(b, "blobs/empty", "", 0);
  get_equals(b, "blobs/empty", "", 0, "dst-empty");
  free(data);
  s3_close(b);
}
END_TEST

typedef struct listed {
  char keys[64][64];
  int64_t sizes[64];
  int n;
} listed;

static int collect(const char *key, int64_t size, void *user) {
  listed *l = user;
  ck_assert_int_lt(l->n, 64);
  snprintf(l->keys[l->n], sizeof l->keys[0], "%s", key);
  l->sizes[l->n++] = size;
  return 0;
}

START_TEST(keys_with_spaces_and_symbols_round_trip) {
  s3_bucket *b = open_bucket();
  /* in S3's (binary) order, for the listing below */
  const char *keys[] = {"odd/a b+c=d&e", "odd/caf\xc3\xa9 (1)",
                        "odd/lt<gt>quot\"amp&amp;",
                        "odd/percent%41,semi;colon:", "odd/tilde~star*quote'"};
  for (unsigned i = 0; i < sizeof keys / sizeof *keys; i++) {
    unsigned char *data = pattern(1000 + i, 10 + i);
    put_bytes(b, keys[i], data, 1000 + i);
    get_equals(b, keys[i], data, 1000 + i, "dst");
    bool exists = false;
    int64_t size = 0;
    ck_assert_int_eq(s3_head(b, keys[i], &exists, &size), DECOMP_OK);
    ck_assert(exists);
    ck_assert_int_eq(size, 1000 + i);
    free(data);
  }
  /* the listing's XML gives the same names back */
  listed l = {0};
  ck_assert_int_eq(s3_list(b, "odd/", collect, &l), DECOMP_OK);
  ck_assert_int_eq(l.n, 5);
  for (int i = 0; i < 5; i++) {
    ck_assert_str_eq(l.keys[i], keys[i]);
    ck_assert_int_eq(l.sizes[i], 1000 + i);
  }
  s3_close(b);
}
END_TEST

START_TEST(multipart_upload_of_12mib_in_5mib_parts_round_trips) {
  s3_bucket *b = open_bucket(); /* part_size = S3_PART_MIN: 3 parts */
  size_t n = 12 * MiB + 5;
  unsigned char *data = pattern(n, 2);
  char hex[65], sent[65];
  hex_of(data, n, hex);
  int fd = file_with("src", data, n);
  int rc = s3_put_fd(b, "big/twelve", fd, (int64_t)n, hex, sent);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  ck_assert_str_eq(sent, hex);
  close(fd);
  bool exists = false;
  int64_t size = 0;
  ck_assert_int_eq(s3_head(b, "big/twelve", &exists, &size), DECOMP_OK);
  ck_assert(exists);
  ck_assert_int_eq(size, (int64_t)n);
  get_equals(b, "big/twelve", data, n, "dst");
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(multipart_upload_streams_from_a_pipe) {
  s3_bucket *b = open_bucket();
  size_t n = 6 * MiB + 1; /* two parts */
  unsigned char *data = pattern(n, 3);
  char hex[65];
  hex_of(data, n, hex);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(p[0]);
    size_t at = 0;
    while (at < n) {
      ssize_t w = write(p[1], data + at, n - at);
      if (w <= 0)
        _exit(1);
      at += (size_t)w;
    }
    _exit(0);
  }
  close(p[1]);
  int rc = s3_put_fd(b, "pipe/six", p[0], (int64_t)n, hex, NULL);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  close(p[0]);
  get_equals(b, "pipe/six", data, n, "dst");
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(range_get_resumes_from_an_offset_with_the_tail_bytes) {
  s3_bucket *b = open_bucket();
  size_t n = 2 * MiB + 333;
  unsigned char *data = pattern(n, 4);
  char hex[65];
  hex_of(data, n, hex);
  put_bytes(b, "r/obj", data, n);

  /* a download cut after `cut` bytes resumes: the file then holds the
   * whole object, checked against its digest */
  size_t cut = 1234567;
  int fd = file_with("partial", data, cut);
  ck_assert_int_eq(lseek(fd, 0, SEEK_END), (off_t)cut);
  int64_t wrote = 0;
  int rc = s3_get_fd(b, "r/obj", (int64_t)cut, -1, fd, hex, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  ck_assert_int_eq(wrote, (int64_t)(n - cut));
  size_t got_n;
  unsigned char *got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, n);
  ck_assert(memcmp(got, data, n) == 0);
  free(got);
  close(fd);

  /* a partial read: bytes [offset, offset + len) only */
  fd = file_with("slice", "", 0);
  rc = s3_get_fd(b, "r/obj", 1000, 4096, fd, NULL, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  ck_assert_int_eq(wrote, 4096);
  got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, 4096);
  ck_assert(memcmp(got, data + 1000, 4096) == 0);
  free(got);
  close(fd);

  /* the tail alone equals the object's last bytes */
  fd = file_with("tail", "", 0);
  rc = s3_get_fd(b, "r/obj", (int64_t)(n - 10), -1, fd, NULL, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, 10);
  ck_assert(memcmp(got, data + n - 10, 10) == 0);
  free(got);
  close(fd);

  /* resuming a file that is already whole fetches nothing and checks it */
  fd = file_with("whole", data, n);
  ck_assert_int_eq(lseek(fd, 0, SEEK_END), (off_t)n);
  rc = s3_get_fd(b, "r/obj", (int64_t)n, -1, fd, hex, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "%d %s", rc, store_errmsg());
  ck_assert_int_eq(wrote, 0);
  close(fd);

  /* an offset past the end */
  fd = file_with("past", "", 0);
  rc = s3_get_fd(b, "r/obj", (int64_t)n + 5, -1, fd, NULL, NULL);
  ck_assert_msg(rc == DECOMP_ERR_RANGE_NOT_SATISFIABLE, "%d %s", rc,
                store_errmsg());
  close(fd);
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(get_broken_mid_transfer_says_how_much_it_wrote_and_resumes) {
  /* the proxy cuts a plain GET of a "cut-" object half-way */
  s3_bucket *b = open_bucket();
  size_t n = MiB + 7;
  unsigned char *data = pattern(n, 8);
  char hex[65];
  hex_of(data, n, hex);
  put_bytes(b, "c/cut-obj", data, n);
  int fd = file_with("dst", "", 0);
  int64_t wrote = -1;
  int rc = s3_get_fd(b, "c/cut-obj", 0, -1, fd, hex, &wrote);
  ck_assert_msg(rc == DECOMP_ERR_TRANSFER, "%d %s", rc, store_errmsg());
  ck_assert_msg(strstr(store_errmsg(), "c/cut-obj"), "%s", store_errmsg());
  ck_assert_int_gt(wrote, 0);
  ck_assert_int_lt(wrote, (int64_t)n);
  ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), wrote);
  /* resume where it stopped; the whole object is checked */
  int64_t more = -1;
  rc = s3_get_fd(b, "c/cut-obj", wrote, -1, fd, hex, &more);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  ck_assert_int_eq(wrote + more, (int64_t)n);
  size_t got_n;
  unsigned char *got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, n);
  ck_assert(memcmp(got, data, n) == 0);
  free(got);
  close(fd);
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(range_ignored_by_the_service_still_yields_just_the_asked_bytes) {
  /* the proxy drops the Range header of a "norange-" object: s3rver
   * answers 200 with all of it */
  s3_bucket *b = open_bucket();
  size_t n = 300000;
  unsigned char *data = pattern(n, 9);
  char hex[65];
  hex_of(data, n, hex);
  put_bytes(b, "n/norange-obj", data, n);
  int fd = file_with("slice", "", 0);
  int64_t wrote = 0;
  int rc = s3_get_fd(b, "n/norange-obj", 5000, 777, fd, NULL, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  ck_assert_int_eq(wrote, 777);
  size_t got_n;
  unsigned char *got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, 777);
  ck_assert(memcmp(got, data + 5000, 777) == 0);
  free(got);
  close(fd);
  /* a resume checked against the whole object's digest */
  fd = file_with("resume", data, 100000);
  ck_assert_int_eq(lseek(fd, 0, SEEK_END), 100000);
  rc = s3_get_fd(b, "n/norange-obj", 100000, -1, fd, hex, &wrote);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  got = slurp(fd, &got_n);
  ck_assert_int_eq(got_n, n);
  ck_assert(memcmp(got, data, n) == 0);
  free(got);
  close(fd);
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(multipart_part_failure_aborts_the_upload_and_leaves_no_object) {
  /* the proxy fails part 2 of a "failpart2-" object with a 500; test_s3.py
   * checks that the upload was aborted (DELETE ?uploadId=) */
  s3_bucket *b = open_bucket();
  size_t n = 11 * MiB;
  unsigned char *data = pattern(n, 10);
  int fd = file_with("src", data, n);
  int rc = s3_put_fd(b, "f/failpart2-obj", fd, (int64_t)n, NULL, NULL);
  ck_assert_msg(rc == DECOMP_ERR_STORE, "%d %s", rc, store_errmsg());
  ck_assert_msg(strstr(store_errmsg(), "part 2 of 3") &&
                    strstr(store_errmsg(), "InternalError"),
                "%s", store_errmsg());
  bool exists = true;
  ck_assert_int_eq(s3_head(b, "f/failpart2-obj", &exists, NULL), DECOMP_OK);
  ck_assert(!exists);
  close(fd);
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(head_of_a_missing_key_says_absent_and_get_says_not_found) {
  s3_bucket *b = open_bucket();
  bool exists = true;
  int64_t size = 0;
  ck_assert_int_eq(s3_head(b, "no/such/key", &exists, &size), DECOMP_OK);
  ck_assert(!exists);
  ck_assert_int_eq(size, -1);
  int fd = file_with("dst", "", 0);
  int rc = s3_get_fd(b, "no/such/key", 0, -1, fd, NULL, NULL);
  ck_assert_int_eq(rc, DECOMP_ERR_NOT_FOUND);
  ck_assert_msg(strstr(store_errmsg(), "no/such/key"), "%s", store_errmsg());
  close(fd);
  s3_close(b);
}
END_TEST

START_TEST(delete_removes_the_key_and_deleting_again_is_fine) {
  s3_bucket *b = open_bucket();
  put_bytes(b, "d/victim", "hello", 5);
  bool exists = false;
  ck_assert_int_eq(s3_head(b, "d/victim", &exists, NULL), DECOMP_OK);
  ck_assert(exists);
  ck_assert_int_eq(s3_delete(b, "d/victim"), DECOMP_OK);
  ck_assert_int_eq(s3_head(b, "d/victim", &exists, NULL), DECOMP_OK);
  ck_assert(!exists);
  ck_assert_int_eq(s3_delete(b, "d/victim"), DECOMP_OK);
  s3_close(b);
}
END_TEST

static int stop_at_3(const char *key, int64_t size, void *user) {
  (void)key;
  (void)size;
  int *n = user;
  return ++*n == 3 ? 77 : 0;
}

START_TEST(list_follows_continuation_tokens_past_one_page) {
  s3_config cfg = config();
  cfg.list_page = 3; /* 11 keys: 4 pages */
  s3_bucket *b = NULL;
  ck_assert_int_eq(s3_open(&cfg, &b), DECOMP_OK);
  char key[64];
  for (int i = 0; i < 11; i++) {
    snprintf(key, sizeof key, "l/k%02d", i);
    put_bytes(b, key, "0123456789abcdef", (size_t)i);
  }
  put_bytes(b, "other/x", "x", 1);
  listed l = {0};
  int rc = s3_list(b, "l/", collect, &l);
  ck_assert_msg(rc == DECOMP_OK, "%s", store_errmsg());
  ck_assert_int_eq(l.n, 11);
  for (int i = 0; i < 11; i++) {
    snprintf(key, sizeof key, "l/k%02d", i);
    ck_assert_str_eq(l.keys[i], key);
    ck_assert_int_eq(l.sizes[i], i);
  }
  /* everything under the bucket's prefix, and nothing outside it */
  memset(&l, 0, sizeof l);
  ck_assert_int_eq(s3_list(b, NULL, collect, &l), DECOMP_OK);
  ck_assert_int_eq(l.n, 12);
  ck_assert_str_eq(l.keys[11], "other/x");
  /* a callback stops the listing with its own value */
  int seen = 0;
  ck_assert_int_eq(s3_list(b, "l/", stop_at_3, &seen), 77);
  ck_assert_int_eq(seen, 3);
  s3_close(b);
}
END_TEST

typedef struct worker {
  s3_bucket *b;
  int id;
  int failures;
  char msg[512];
} worker;

static void *work(void *arg) {
  worker *w = arg;
  char key[64], path[512], hex[65];
  for (int round = 0; round < 3; round++) {
    size_t n = 300000 + (size_t)(w->id * 1000 + round);
    unsigned char *data = pattern(n, (unsigned)(100 + w->id * 10 + round));
    hex_of(data, n, hex);
    snprintf(key, sizeof key, "threads/w%d/r%d", w->id, round);
    snprintf(path, sizeof path, "%s/w%d-r%d", tmpdir, w->id, round);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write(fd, data, n) == (ssize_t)n &&
              lseek(fd, 0, SEEK_SET) == 0 &&
              s3_put_fd(w->b, key, fd, (int64_t)n, hex, NULL) == DECOMP_OK &&
              ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0 &&
              s3_get_fd(w->b, key, 0, -1, fd, hex, NULL) == DECOMP_OK;
    if (ok) {
      unsigned char *back = malloc(n);
      ok = back && pread(fd, back, n, 0) == (ssize_t)n &&
           memcmp(back, data, n) == 0;
      free(back);
    }
    if (!ok) {
      w->failures++;
      snprintf(w->msg, sizeof w->msg, "%s: %s", key, store_errmsg());
    }
    if (fd >= 0)
      close(fd);
    free(data);
  }
  return NULL;
}

START_TEST(eight_threads_put_and_get_at_once_on_one_handle) {
  s3_bucket *b = open_bucket();
  pthread_t t[8];
  worker w[8];
  for (int i = 0; i < 8; i++) {
    w[i] = (worker){.b = b, .id = i};
    ck_assert_int_eq(pthread_create(&t[i], NULL, work, &w[i]), 0);
  }
  for (int i = 0; i < 8; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 8; i++)
    ck_assert_msg(w[i].failures == 0, "worker %d: %s", i, w[i].msg);
  listed l = {0};
  ck_assert_int_eq(s3_list(b, "threads/", collect, &l), DECOMP_OK);
  ck_assert_int_eq(l.n, 24);
  s3_close(b);
}
END_TEST

START_TEST(put_with_a_wrong_expected_digest_is_refused_and_leaves_no_object) {
  s3_bucket *b = open_bucket();
  char wrong[65];
  memset(wrong, 'a', 64);
  wrong[64] = '\0';
  /* a single PUT, and a multipart upload */
  size_t sizes[] = {4096, 6 * MiB};
  const char *keys[] = {"bad/single", "bad/multi"};
  for (int i = 0; i < 2; i++) {
    unsigned char *data = pattern(sizes[i], 5);
    char hex[65], sent[65];
    hex_of(data, sizes[i], hex);
    int fd = file_with("src", data, sizes[i]);
    int rc = s3_put_fd(b, keys[i], fd, (int64_t)sizes[i], wrong, sent);
    ck_assert_msg(rc == DECOMP_ERR_UPLOAD_DIGEST, "%d %s", rc, store_errmsg());
    ck_assert_str_eq(sent, hex);
    ck_assert_msg(strstr(store_errmsg(), hex) && strstr(store_errmsg(), wrong),
                  "%s", store_errmsg());
    bool exists = true;
    ck_assert_int_eq(s3_head(b, keys[i], &exists, NULL), DECOMP_OK);
    ck_assert_msg(!exists, "%s stayed", keys[i]);
    close(fd);
    free(data);
  }
  s3_close(b);
}
END_TEST

START_TEST(
    put_with_a_wrong_digest_to_a_service_that_does_not_check_is_deleted) {
  /* s3rver itself stores whatever comes: the client's own check deletes */
  s3_config cfg = config();
  cfg.endpoint = env("S3_DIRECT_ENDPOINT");
  s3_bucket *b = NULL;
  ck_assert_int_eq(s3_open(&cfg, &b), DECOMP_OK);
  char wrong[65], hex[65];
  memset(wrong, 'b', 64);
  wrong[64] = '\0';
  unsigned char *data = pattern(4096, 7);
  hex_of(data, 4096, hex);
  int fd = file_with("src", data, 4096);
  int rc = s3_put_fd(b, "bad/accepted", fd, 4096, wrong, NULL);
  ck_assert_msg(rc == DECOMP_ERR_UPLOAD_DIGEST, "%d %s", rc, store_errmsg());
  ck_assert_msg(strstr(store_errmsg(), "the object was deleted") &&
                    strstr(store_errmsg(), hex),
                "%s", store_errmsg());
  bool exists = true;
  ck_assert_int_eq(s3_head(b, "bad/accepted", &exists, NULL), DECOMP_OK);
  ck_assert(!exists);
  close(fd);
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(put_of_a_file_shorter_than_its_size_fails_and_leaves_no_object) {
  s3_bucket *b = open_bucket();
  int fd = file_with("short", "12345", 5);
  int rc = s3_put_fd(b, "short/one", fd, 10, NULL, NULL);
  ck_assert_msg(rc == DECOMP_ERR_IO, "%d %s", rc, store_errmsg());
  ck_assert_msg(strstr(store_errmsg(), "5 of 10"), "%s", store_errmsg());
  bool exists = true;
  ck_assert_int_eq(s3_head(b, "short/one", &exists, NULL), DECOMP_OK);
  ck_assert(!exists);
  close(fd);
  s3_close(b);
}
END_TEST

START_TEST(get_of_a_tampered_object_fails_its_digest) {
  s3_bucket *b = open_bucket();
  size_t n = 100000;
  unsigned char *data = pattern(n, 6);
  char hex[65];
  hex_of(data, n, hex);
  put_bytes(b, "t/obj", data, n);
  /* s3rver keeps an object's bytes in DIR/BUCKET/PREFIX/t/obj._S3rver_object:
   * flip one byte in place, as a disk or a rogue writer would */
  char path[1024];
  snprintf(path, sizeof path, "%s/%s/%s/t/obj._S3rver_object", env("S3_DIR"),
           env("S3_BUCKET"), prefix);
  int sfd = open(path, O_RDWR | O_CLOEXEC);
  ck_assert_msg(sfd >= 0, "%s: %s", path, strerror(errno));
  unsigned char c = (unsigned char)(data[5000] ^ 0xff);
  ck_assert_int_eq(pwrite(sfd, &c, 1, 5000), 1);
  close(sfd);

  int fd = file_with("dst", "", 0);
  int rc = s3_get_fd(b, "t/obj", 0, -1, fd, hex, NULL);
  ck_assert_msg(rc == DECOMP_ERR_DIGEST_MISMATCH, "%d %s", rc, store_errmsg());
  ck_assert_msg(strstr(store_errmsg(), hex) && strstr(store_errmsg(), "t/obj"),
                "%s", store_errmsg());
  /* a resumed download checks the whole object too */
  close(fd);
  fd = file_with("dst2", data, 1000);
  ck_assert_int_eq(lseek(fd, 0, SEEK_END), 1000);
  rc = s3_get_fd(b, "t/obj", 1000, -1, fd, hex, NULL);
  ck_assert_int_eq(rc, DECOMP_ERR_DIGEST_MISMATCH);
  close(fd);
  free(data);
  s3_close(b);
}
END_TEST

START_TEST(wrong_access_key_is_refused_naming_the_endpoint_and_s3_code) {
  s3_config cfg = config();
  cfg.access_key = "NOSUCHKEY";
  cfg.secret_key = "not-the-secret-0123";
  s3_bucket *b = NULL;
  int rc = s3_open(&cfg, &b);
  ck_assert_int_eq(rc, DECOMP_ERR_STORE);
  ck_assert_ptr_null(b);
  const char *m = store_errmsg();
  ck_assert_msg(strstr(m, cfg.endpoint) && strstr(m, cfg.bucket) &&
                    strstr(m, "403") && strstr(m, "InvalidAccessKeyId"),
                "%s", m);
  ck_assert_msg(!strstr(m, "not-the-secret"), "the secret leaked: %s", m);
}
END_TEST

START_TEST(wrong_secret_key_is_refused_with_signature_does_not_match) {
  s3_config cfg = config();
  cfg.access_key = "S3RVER";
  cfg.secret_key = "not-the-secret-4567";
  s3_bucket *b = NULL;
  int rc = s3_open(&cfg, &b);
  ck_assert_int_eq(rc, DECOMP_ERR_STORE);
  const char *m = store_errmsg();
  ck_assert_msg(strstr(m, cfg.endpoint) && strstr(m, "403") &&
                    strstr(m, "SignatureDoesNotMatch") &&
                    strstr(m, "credentials from the configuration"),
                "%s", m);
  ck_assert_msg(!strstr(m, "not-the-secret"), "the secret leaked: %s", m);
}
END_TEST

START_TEST(missing_bucket_is_refused_naming_the_bucket) {
  s3_config cfg = config();
  cfg.bucket = "no-such-bucket-here";
  s3_bucket *b = NULL;
  int rc = s3_open(&cfg, &b);
  ck_assert_int_eq(rc, DECOMP_ERR_STORE);
  const char *m = store_errmsg();
  ck_assert_msg(strstr(m, "bucket no-such-bucket-here") &&
                    strstr(m, "NoSuchBucket") && strstr(m, cfg.endpoint),
                "%s", m);
}
END_TEST

START_TEST(nothing_listening_is_refused_naming_the_endpoint) {
  s3_config cfg = config();
  cfg.endpoint = env("S3_DEAD_ENDPOINT");
  s3_bucket *b = NULL;
  int rc = s3_open(&cfg, &b);
  ck_assert_int_eq(rc, DECOMP_ERR_CONNECT);
  const char *m = store_errmsg();
  ck_assert_msg(strstr(m, cfg.endpoint) && strstr(m, "could not connect"), "%s",
                m);
}
END_TEST

START_TEST(credentials_default_to_the_aws_environment_variables) {
  /* config() leaves the keys empty: test_s3.py put them in the env */
  s3_bucket *b = open_bucket();
  s3_close(b);
  /* without them, s3_open says where it looked (and sends nothing) */
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SECRET_ACCESS_KEY");
  s3_config cfg = config();
  ck_assert_int_eq(s3_open(&cfg, &b), DECOMP_ERR_INVALID_ARGUMENT);
  ck_assert_msg(strstr(store_errmsg(), "AWS_ACCESS_KEY_ID"), "%s",
                store_errmsg());
  /* and explicit keys need no environment */
  cfg.access_key = "S3RVER";
  cfg.secret_key = "S3RVER";
  ck_assert_int_eq(s3_open(&cfg, &b), DECOMP_OK);
  s3_close(b);
}
END_TEST

START_TEST(keys_that_would_not_survive_a_url_are_refused) {
  s3_bucket *b = open_bucket();
  const char *bad[] = {"",       "/abs", "a//b",      "a/./b",
                       "a/../b", "..",   "trailing/", "ctl\x01"};
  for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++) {
    bool exists;
    ck_assert_msg(s3_head(b, bad[i], &exists, NULL) ==
                      DECOMP_ERR_INVALID_ARGUMENT,
                  "key '%s' was accepted", bad[i]);
    ck_assert_int_eq(s3_delete(b, bad[i]), DECOMP_ERR_INVALID_ARGUMENT);
  }
  /* S3's 1024 bytes count the prefix too */
  char long_key[1025];
  memset(long_key, 'k', 1024);
  long_key[1024] = '\0';
  ck_assert_int_eq(s3_delete(b, long_key), DECOMP_ERR_INVALID_ARGUMENT);
  long_key[1024 - strlen(prefix) - 1] = '\0';
  ck_assert_msg(s3_delete(b, long_key) == DECOMP_OK, "%s", store_errmsg());
  s3_close(b);
}
END_TEST

static TCase *one(Suite *s, const char *name, const TTest *t) {
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, t);
  suite_add_tcase(s, tc);
  return tc;
}

int main(void) {
  Suite *s = suite_create("s3");
  /* one case per test: test_s3.py runs each alone (CK_RUN_CASE) */
#define ONE(t) one(s, #t, t)
  ONE(put_then_get_round_trips_bytes_and_digest);
  ONE(keys_with_spaces_and_symbols_round_trip);
  ONE(multipart_upload_of_12mib_in_5mib_parts_round_trips);
  ONE(multipart_upload_streams_from_a_pipe);
  ONE(range_get_resumes_from_an_offset_with_the_tail_bytes);
  ONE(get_broken_mid_transfer_says_how_much_it_wrote_and_resumes);
  ONE(range_ignored_by_the_service_still_yields_just_the_asked_bytes);
  ONE(multipart_part_failure_aborts_the_upload_and_leaves_no_object);
  ONE(head_of_a_missing_key_says_absent_and_get_says_not_found);
  ONE(delete_removes_the_key_and_deleting_again_is_fine);
  ONE(list_follows_continuation_tokens_past_one_page);
  ONE(eight_threads_put_and_get_at_once_on_one_handle);
  ONE(put_with_a_wrong_expected_digest_is_refused_and_leaves_no_object);
  ONE(put_with_a_wrong_digest_to_a_service_that_does_not_check_is_deleted);
  ONE(put_of_a_file_shorter_than_its_size_fails_and_leaves_no_object);
  ONE(get_of_a_tampered_object_fails_its_digest);
  ONE(wrong_access_key_is_refused_naming_the_endpoint_and_s3_code);
  ONE(wrong_secret_key_is_refused_with_signature_does_not_match);
  ONE(missing_bucket_is_refused_naming_the_bucket);
  ONE(nothing_listening_is_refused_naming_the_endpoint);
  ONE(credentials_default_to_the_aws_environment_variables);
  ONE(keys_that_would_not_survive_a_url_are_refused);
#undef ONE
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
