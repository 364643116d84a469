/* test_store_backend.c — the store as a table of functions (backend.h):
 * store_open opens the embedded backend; every call goes through the table
 * the handle was opened with (a wrapper backend counts the calls it sees,
 * and a failure it injects reaches the caller with its message); a table
 * built for another interface version is refused, naming both versions. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "queue.h"
#include "store.h"
#include "store_int.h" /* store_fail, as a backend's files use it */

static char dir[256];

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/decompd-store-backend-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* A wrapper over the embedded backend: its own table (a copy of the
 * embedded one) with a few entries replaced by ones that count the calls
 * and can fail on purpose, else hand on to the embedded entries. */
static store_backend counting;

/* The options of the serving daemon's store on `dir`. */
#define OWNER(dir) ((store_options){.data_dir = (dir), .owner = true})
static int model_get_calls, job_claim_calls, blob_open_calls;
static int fail_model_get; /* 0, or the code model_get fails with */

static int counting_model_get(store *s, const char *id, store_model *out) {
  model_get_calls++;
  if (fail_model_get)
    return store_fail(fail_model_get, "counting backend: model %s: injected",
                      id);
  return store_backend_sqlite.model_get(s, id, out);
}

static int counting_job_claim(store *s, store_job *out) {
  job_claim_calls++;
  return store_backend_sqlite.job_claim(s, out);
}

static int counting_blob_open(store *s, const char *digest, int *fd,
                              int64_t *size) {
  blob_open_calls++;
  return store_backend_sqlite.blob_open(s, digest, fd, size);
}

/* Commit `text` as the weights of model `m` (its digest set here). */
static int model_put(store *s, const char *text, store_model *m,
                     bool *created) {
  store_upload *u;
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, text, strlen(text)), DECOMP_OK);
  ck_assert_int_eq(store_upload_finish(u, m->digest), DECOMP_OK);
  int rc = store_model_put(s, u, m, created);
  store_upload_free(u);
  return rc;
}

static void counting_init(void) {
  counting = store_backend_sqlite;
  counting.name = "counting";
  counting.model_get = counting_model_get;
  counting.job_claim = counting_job_claim;
  counting.blob_open = counting_blob_open;
  model_get_calls = job_claim_calls = blob_open_calls = 0;
  fail_model_get = 0;
}

START_TEST(store_open_opens_the_embedded_backend) {
  store *s = NULL;
  ck_assert_int_eq(store_open(dir, true, &s, NULL), DECOMP_OK);
  ck_assert_ptr_eq(store_backend_of(s), &store_backend_sqlite);
  ck_assert_str_eq(store_backend_of(s)->name, "sqlite");
  ck_assert_int_eq(store_backend_of(s)->version, STORE_BACKEND_VERSION);
  store_close(s);
}
END_TEST

START_TEST(calls_dispatch_through_the_handles_table) {
  counting_init();
  store *s = NULL;
  int rc = store_open_backend(&counting, &OWNER(dir), &s, NULL);
  ck_assert_msg(rc == DECOMP_OK, "store_open_backend: %s", store_errmsg());
  ck_assert_ptr_eq(store_backend_of(s), &counting);

  /* A model put through the embedded entry is read back through ours. */
  store_model m = {0};
  snprintf(m.name, sizeof m.name, "net");
  snprintf(m.format, sizeof m.format, "pth");
  bool created = false;
  ck_assert_int_eq(model_put(s, "weights", &m, &created), DECOMP_OK);
  ck_assert(created);
  store_model got;
  ck_assert_int_eq(store_model_get(s, m.id, &got), DECOMP_OK);
  ck_assert_str_eq(got.name, "net");
  ck_assert_int_eq(model_get_calls, 1);

  /* The queue and the blobs go through it too (the model's blob is there,
   * and a digest that names none is refused). */
  store_job j;
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(job_claim_calls, 1);
  int fd = -1;
  int64_t size = 0;
  ck_assert_int_eq(store_blob_open(s, m.digest, &fd, &size), DECOMP_OK);
  ck_assert_int_eq(size, 7);
  close(fd);
  char none[STORE_DIGEST_LEN];
  snprintf(none, sizeof none, "sha256:%064d", 1);
  ck_assert_int_eq(store_blob_open(s, none, &fd, &size), DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(blob_open_calls, 2);
  ck_assert_int_eq(model_get_calls, 1);
  store_close(s);
}
END_TEST

START_TEST(a_failure_in_the_backend_reaches_the_caller) {
  counting_init();
  fail_model_get = DECOMP_ERR_UNAVAILABLE;
  store *s = NULL;
  ck_assert_int_eq(store_open_backend(&counting, &OWNER(dir), &s, NULL),
                   DECOMP_OK);
  store_model m = {0};
  snprintf(m.format, sizeof m.format, "pth");
  bool created = false;
  ck_assert_int_eq(model_put(s, "other weights", &m, &created), DECOMP_OK);
  store_model got;
  /* The model exists, but our entry fails: the caller sees the backend's
   * code and message, not the embedded store's row. */
  ck_assert_int_eq(store_model_get(s, m.id, &got), DECOMP_ERR_UNAVAILABLE);
  char want[128];
  snprintf(want, sizeof want, "counting backend: model %s: injected", m.id);
  ck_assert_str_eq(store_errmsg(), want);
  ck_assert_int_eq(model_get_calls, 1);
  store_close(s);
}
END_TEST

START_TEST(a_table_of_another_version_is_refused) {
  counting_init();
  int versions[] = {STORE_BACKEND_VERSION + 1, 0, -1};
  for (size_t i = 0; i < sizeof versions / sizeof *versions; i++) {
    counting.version = versions[i];
    store *s = (store *)&counting; /* must be reset to NULL */
    int rc = store_open_backend(&counting, &OWNER(dir), &s, NULL);
    ck_assert_int_eq(rc, DECOMP_ERR_STORE);
    ck_assert_ptr_null(s);
    char want[128];
    snprintf(want, sizeof want,
             "store backend counting: interface version %d, this decompd "
             "speaks version %d",
             versions[i], STORE_BACKEND_VERSION);
    ck_assert_str_eq(store_errmsg(), want);
  }
  /* Nothing was opened: the data dir is not held by anyone. */
  store *s = NULL;
  ck_assert_int_eq(store_open(dir, true, &s, NULL), DECOMP_OK);
  store_close(s);
}
END_TEST

int main(void) {
  Suite *s = suite_create("store_backend");
  TCase *tc = tcase_create("backend");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, store_open_opens_the_embedded_backend);
  tcase_add_test(tc, calls_dispatch_through_the_handles_table);
  tcase_add_test(tc, a_failure_in_the_backend_reaches_the_caller);
  tcase_add_test(tc, a_table_of_another_version_is_refused);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
