/* test_client_unit.c — libdecompclient's pure parts without a server: the
 * cache layout's paths, digests, Content-Range parsing, the resume rules
 * (what to keep of a partial file, what a 200/206 answer means), claiming
 * a leftover partial file by rename, and SHA-256 of a file prefix. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"

/* cache.c reports through client_fail (client.c): a stand-in. */
int client_fail(decomp_client *c, int code, const char *fmt, ...) {
  (void)c;
  (void)fmt;
  return code;
}

#define HEX "ab" "cdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"

START_TEST(blob_and_job_paths) {
  char buf[512];
  ck_assert_int_eq(decomp_client_cache_blob_path("/c", "sha256:" HEX, buf,
                                                 sizeof buf),
                   DECOMP_OK);
  ck_assert_str_eq(buf, "/c/blobs/sha256/ab/" HEX);
  ck_assert_int_eq(decomp_client_cache_blob_path("/c", HEX, buf, sizeof buf),
                   DECOMP_OK);
  ck_assert_str_eq(buf, "/c/blobs/sha256/ab/" HEX);
  /* Malformed digests: upper case, short, other algorithms, traversal. */
  ck_assert_int_ne(decomp_client_cache_blob_path("/c", "sha256:ABCD", buf,
                                                 sizeof buf),
                   DECOMP_OK);
  ck_assert_int_ne(decomp_client_cache_blob_path(
                       "/c", "md5:" HEX, buf, sizeof buf),
                   DECOMP_OK);
  ck_assert_int_ne(decomp_client_cache_blob_path(
                       "/c", "sha256:../../../../etc/passwd", buf, sizeof buf),
                   DECOMP_OK);
  ck_assert_int_ne(decomp_client_cache_blob_path("/c", "sha256:" HEX, buf, 20),
                   DECOMP_OK);
  ck_assert_int_eq(decomp_client_cache_job_path("/c", "j_0123456789abcdef",
                                                buf, sizeof buf),
                   DECOMP_OK);
  ck_assert_str_eq(buf, "/c/jobs/j_0123456789abcdef.json");
  ck_assert_int_ne(decomp_client_cache_job_path("/c", "../x", buf, sizeof buf),
                   DECOMP_OK);
  ck_assert_int_ne(decomp_client_cache_job_path("/c", "", buf, sizeof buf),
                   DECOMP_OK);
}
END_TEST

START_TEST(default_cache_dir_from_env) {
  char buf[512];
  setenv("DECOMPD_CACHE", "/x/cache/", 1);
  ck_assert_int_eq(decomp_client_default_cache_dir(buf, sizeof buf), DECOMP_OK);
  ck_assert_str_eq(buf, "/x/cache");
  unsetenv("DECOMPD_CACHE");
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  ck_assert_int_eq(decomp_client_default_cache_dir(buf, sizeof buf), DECOMP_OK);
  ck_assert_str_eq(buf, "/xdg/decompd");
  unsetenv("XDG_CACHE_HOME");
  setenv("HOME", "/home/u", 1);
  ck_assert_int_eq(decomp_client_default_cache_dir(buf, sizeof buf), DECOMP_OK);
  ck_assert_str_eq(buf, "/home/u/.cache/decompd");
}
END_TEST

START_TEST(content_range) {
  int64_t a, b, t;
  ck_assert(client_parse_content_range("bytes 100-199/200", &a, &b, &t));
  ck_assert(a == 100 && b == 199 && t == 200);
  ck_assert(client_parse_content_range("bytes 0-0/*", &a, &b, &t));
  ck_assert(a == 0 && b == 0 && t == -1);
  ck_assert(!client_parse_content_range("bytes 5-4/10", &a, &b, &t));
  ck_assert(!client_parse_content_range("bytes 0-10/10", &a, &b, &t));
  ck_assert(!client_parse_content_range("bytes */10", &a, &b, &t));
  ck_assert(!client_parse_content_range("items 0-1/2", &a, &b, &t));
  ck_assert(!client_parse_content_range("bytes 0-1/2 junk", &a, &b, &t));
  ck_assert(!client_parse_content_range(
      "bytes 0-99999999999999999999/1", &a, &b, &t));
  ck_assert(!client_parse_content_range("", &a, &b, &t));
  ck_assert(!client_parse_content_range(NULL, &a, &b, &t));
}
END_TEST

START_TEST(resume_rules) {
  ck_assert_int_eq(client_resume_from(0, 100), 0);
  ck_assert_int_eq(client_resume_from(40, 100), 40);
  ck_assert_int_eq(client_resume_from(100, 100), 0); /* hashed by the caller */
  ck_assert_int_eq(client_resume_from(150, 100), 0); /* too long: start over */
  ck_assert_int_eq(client_resume_from(-1, 100), 0);
  /* 206 from where we asked, to the end: append. */
  ck_assert_int_eq(client_resume_answer(206, "bytes 40-99/100", 40, 100),
                   CLIENT_ANSWER_APPEND);
  /* 200: the server sent it all (Range ignored, or If-Range mismatch). */
  ck_assert_int_eq(client_resume_answer(200, "", 40, 100),
                   CLIENT_ANSWER_RESTART);
  ck_assert_int_eq(client_resume_answer(200, "", 0, 100),
                   CLIENT_ANSWER_RESTART);
  /* 206 from elsewhere, short of the end, of another size, unasked. */
  ck_assert_int_eq(client_resume_answer(206, "bytes 0-99/100", 40, 100),
                   CLIENT_ANSWER_BAD);
  ck_assert_int_eq(client_resume_answer(206, "bytes 40-50/100", 40, 100),
                   CLIENT_ANSWER_BAD);
  ck_assert_int_eq(client_resume_answer(206, "bytes 40-99/120", 40, 100),
                   CLIENT_ANSWER_BAD);
  ck_assert_int_eq(client_resume_answer(206, "bytes 0-99/100", 0, 100),
                   CLIENT_ANSWER_BAD);
  ck_assert_int_eq(client_resume_answer(206, "", 40, 100), CLIENT_ANSWER_BAD);
  ck_assert_int_eq(client_resume_answer(304, "", 40, 100), CLIENT_ANSWER_BAD);
}
END_TEST

static char dir[256];

static void mkfile(const char *name, size_t size) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "wb");
  ck_assert_ptr_nonnull(f);
  for (size_t i = 0; i < size; i++)
    fputc((int)(i & 0xff), f);
  fclose(f);
}

static int count_parts(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "ls '%s' | grep -c '\\.part$'", dir);
  FILE *p = popen(cmd, "r");
  int n = -1;
  ck_assert_int_eq(fscanf(p, "%d", &n), 1);
  pclose(p);
  return n;
}

START_TEST(partial_claim_takes_the_largest_by_rename) {
  snprintf(dir, sizeof dir, "/tmp/decompd-client-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[1024];
  int64_t have = -1;
  /* Nothing there: a new empty unique file. */
  int fd = client_partial_claim(dir, HEX, path, sizeof path, &have);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(have, 0);
  ck_assert_ptr_nonnull(strstr(path, "/" HEX "."));
  close(fd);
  unlink(path);
  /* Two leftovers of this blob, one of another: the largest of ours is
   * renamed to a new name (so no other fetch can take it too). */
  mkfile(HEX ".1-a.part", 10);
  mkfile(HEX ".2-b.part", 30);
  mkfile("ff" HEX ".3-c.part", 50);
  mkfile(HEX ".not-a-part", 70);
  fd = client_partial_claim(dir, HEX, path, sizeof path, &have);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(have, 30);
  char old[512];
  snprintf(old, sizeof old, "%s/" HEX ".2-b.part", dir);
  ck_assert_int_ne(access(old, F_OK), 0);
  ck_assert_int_eq(access(path, F_OK), 0);
  ck_assert_str_ne(path, old);
  /* Its first bytes hash like the same bytes in memory. */
  client_sha *h = client_sha_new();
  ck_assert_int_eq(client_sha_fd(h, fd, 20), 0);
  char a[65], b[65];
  client_sha_final(h, a);
  unsigned char mem[20];
  for (int i = 0; i < 20; i++)
    mem[i] = (unsigned char)i;
  client_sha_update(h, mem, sizeof mem);
  client_sha_final(h, b);
  ck_assert_str_eq(a, b);
  /* Asking for more than the file holds is an error (EIO). */
  ck_assert_int_eq(client_sha_fd(h, fd, 31), EIO);
  client_sha_free(h);
  close(fd);
  ck_assert_int_eq(count_parts(), 3);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(digest_hex_and_errno) {
  char hex[65];
  ck_assert(client_digest_hex("sha256:" HEX, hex));
  ck_assert_str_eq(hex, HEX);
  ck_assert(!client_digest_hex("sha256:" HEX "0", hex));
  ck_assert(!client_digest_hex(NULL, hex));
  ck_assert_int_eq(client_errno_code(ENOSPC), DECOMP_ERR_DISK_FULL);
  ck_assert_int_eq(client_errno_code(EDQUOT), DECOMP_ERR_DISK_FULL);
  ck_assert_int_eq(client_errno_code(EACCES), DECOMP_ERR_IO);
  /* sha256("") */
  client_sha *h = client_sha_new();
  client_sha_final(h, hex);
  ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca4959"
                        "91b7852b855");
  client_sha_free(h);
}
END_TEST

START_TEST(artifact_names_are_plain_file_names) {
  const char *why;
  const char *good[] = {"decompose_info.json", "decomposed_weights.pth",
                        "model.safetensors.index.json",
                        "model-00001-of-00012.safetensors", "a b", "x..y"};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    ck_assert_msg(client_artifact_name_ok(good[i], 64, &why), "%s", good[i]);
    ck_assert_ptr_null(why);
  }
  const char *bad[] = {"", ".", "..", "../x", "a/b", "/etc/passwd", ".hidden",
                       "a\\b", "a\nb", "tab\there", "del\x7f"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ck_assert_msg(!client_artifact_name_ok(bad[i], 64, &why), "%s", bad[i]);
    ck_assert_ptr_nonnull(why);
  }
  ck_assert(!client_artifact_name_ok(NULL, 64, &why));
  char longname[70];
  memset(longname, 'a', sizeof longname - 1);
  longname[69] = '\0';
  ck_assert(!client_artifact_name_ok(longname, 64, &why));
  longname[64] = '\0';
  ck_assert(!client_artifact_name_ok(longname, 64, &why)); /* 64 + NUL */
  longname[63] = '\0';
  ck_assert(client_artifact_name_ok(longname, 64, &why)); /* fits */
}
END_TEST

int main(void) {
  Suite *s = suite_create("client");
  TCase *tc = tcase_create("pure");
  tcase_add_test(tc, blob_and_job_paths);
  tcase_add_test(tc, default_cache_dir_from_env);
  tcase_add_test(tc, content_range);
  tcase_add_test(tc, resume_rules);
  tcase_add_test(tc, partial_claim_takes_the_largest_by_rename);
  tcase_add_test(tc, digest_hex_and_errno);
  tcase_add_test(tc, artifact_names_are_plain_file_names);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
