/* test_store_hardening.c — the store's answers to a hostile or unlucky
 * world, below the HTTP layer: messages without server paths (store_scrub),
 * the owner's start-up cleanup of every temp name, the reserve file kept
 * for deletes on a full disk, a job never queued on a missing model, and
 * the retry of failed and cancelled jobs. (A real full disk is in
 * tests/integration/test_disk_full.py.) */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue.h"
#include "store.h"

static char dir[256];

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/decompd-hard-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static store *open_store(bool owner) {
  store *s = NULL;
  int rc = store_open(dir, owner, &s, NULL);
  ck_assert_msg(rc == DECOMP_OK, "store_open: %s", store_errmsg());
  return s;
}

static void put_model(store *s, const char *bytes, store_model *m) {
  store_upload *u;
  bool created;
  memset(m, 0, sizeof *m);
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, bytes, strlen(bytes)), DECOMP_OK);
  ck_assert_int_eq(store_upload_finish(u, m->digest), DECOMP_OK);
  snprintf(m->format, sizeof m->format, "pth");
  ck_assert_int_eq(store_model_put(s, u, m, &created), DECOMP_OK);
  store_upload_free(u);
}

static void submit(store *s, const char *model, const char *key, char id[24]) {
  store_job j = {0};
  bool created;
  snprintf(j.model_id, sizeof j.model_id, "%s", model);
  j.spec = "{\"layers\":[]}";
  j.policy = "{\"name\":\"budget\"}";
  ck_assert_int_eq(store_job_submit(s, key, &j, &created), DECOMP_OK);
  memcpy(id, j.id, 24);
  store_job_clear(&j);
}

START_TEST(scrub_replaces_data_dir_paths_by_what_they_are) {
  store *s = open_store(true);
  char real[4096], in[16384], out[1024];
  ck_assert_ptr_nonnull(realpath(dir, real));
  const char *hex =
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  snprintf(in, sizeof in,
           "write %s/tmp/upload-0123: No space left on device; open "
           "%s/blobs/sha256/ba/%s: gone (%s/tmp/.j_1-out.pth.tmp-x) "
           "%s/decompd.db-wal, %s and %s/other; %sx/tmp/y stays",
           dir, real, hex, dir, real, dir, dir, dir);
  store_scrub(s, in, out, sizeof out);
  char want[2048];
  snprintf(want, sizeof want,
           "write the upload: No space left on device; open blob "
           "sha256:%s: gone (a temp file) the database, the data dir and a "
           "file in the data dir; %sx/tmp/y stays",
           hex, dir);
  ck_assert_str_eq(out, want);
  /* a buffer too small is cut, never overrun */
  char tiny[12];
  store_scrub(s, in, tiny, sizeof tiny);
  ck_assert_uint_le(strlen(tiny), sizeof tiny - 1);
  store_close(s);
}
END_TEST

START_TEST(owner_start_removes_every_temp_name_and_keeps_the_reserve) {
  store *s = open_store(true);
  store_close(s);
  const char *names[] = {".j_0-out.pth.tmp-Abc123", ".hidden", "upload-1",
                         "j_0-out.json"};
  char p[512];
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/tmp/%s", dir, names[i]);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs("left by a killed daemon", f);
    fclose(f);
  }
  snprintf(p, sizeof p, "%s/tmp/.decompd-ts-x", dir);
  ck_assert_int_eq(mkdir(p, 0700), 0);
  /* a tool (not the owner) leaves them alone */
  s = open_store(false);
  ck_assert(!store_reserve_ok(s));
  store_close(s);
  snprintf(p, sizeof p, "%s/tmp/.hidden", dir);
  ck_assert_int_eq(access(p, F_OK), 0);
  s = open_store(true);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s/tmp')\"", dir);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert(store_reserve_ok(s));
  struct stat st;
  snprintf(p, sizeof p, "%s/decompd.reserve", dir);
  ck_assert_int_eq(stat(p, &st), 0);
  ck_assert_int_eq(st.st_size, 4 << 20);
  ck_assert_int_ge((long long)st.st_blocks * 512, 4 << 20);
  store_close(s);
}
END_TEST

START_TEST(no_job_is_queued_on_a_missing_model) {
  store *s = open_store(true);
  store_job j = {0};
  bool created;
  snprintf(j.model_id, sizeof j.model_id, "m_0000000000000000");
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "k", &j, &created),
                   DECOMP_ERR_NOT_FOUND);
  int64_t counts[STORE_JOB_STATE_COUNT];
  ck_assert_int_eq(store_job_counts(s, counts), DECOMP_OK);
  ck_assert_int_eq(counts[STORE_JOB_QUEUED], 0);
  store_close(s);
}
END_TEST

START_TEST(retry_requeues_failed_and_cancelled_jobs_as_new_attempts) {
  store *s = open_store(true);
  store_model m;
  put_model(s, "weights", &m);
  char a[24], b[24], c[24];
  submit(s, m.id, "ka", a);
  submit(s, m.id, "kb", b);
  store_job j;
  bool requeued = true;
  /* queued: left as it is */
  ck_assert_int_eq(store_job_retry(s, a, &j, &requeued), DECOMP_OK);
  ck_assert(!requeued);
  ck_assert_int_eq(j.state, STORE_JOB_QUEUED);
  int64_t seq_a = j.seq;
  store_job_clear(&j);
  /* a runs and fails, with a layer done */
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  ck_assert_str_eq(j.id, a);
  store_job_clear(&j);
  store_job_layer l = {.index = 0, .rank = 4, .max_rank = 8, .seconds = 0.1};
  snprintf(l.name, sizeof l.name, "conv");
  ck_assert_int_eq(store_job_progress(s, a, 2, &l), DECOMP_OK);
  ck_assert_int_eq(store_job_fail(s, a, DECOMP_ERR_DISK_FULL, "no space"),
                   DECOMP_OK);
  ck_assert_int_eq(store_job_retry(s, a, &j, &requeued), DECOMP_OK);
  ck_assert(requeued);
  ck_assert_int_eq(j.state, STORE_JOB_QUEUED);
  ck_assert_int_eq(j.attempts, 1);
  ck_assert_int_eq(j.layers_done, 0);
  ck_assert_int_eq(j.layers_total, 0);
  ck_assert_str_eq(j.error_code, "");
  ck_assert_ptr_null(j.error_message);
  ck_assert_int_eq(j.started_at, 0);
  ck_assert_int_eq(j.finished_at, 0);
  ck_assert_int_gt(j.seq, seq_a); /* behind b now */
  store_job_clear(&j);
  store_job_layer *ls;
  size_t nl;
  ck_assert_int_eq(store_job_layers(s, a, &ls, &nl), DECOMP_OK);
  ck_assert_uint_eq(nl, 0);
  free(ls);
  /* the queue takes b first, then a as its second attempt */
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  ck_assert_str_eq(j.id, b);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  ck_assert_str_eq(j.id, a);
  ck_assert_int_eq(j.attempts, 2);
  store_job_clear(&j);
  /* running, being cancelled: not yet */
  ck_assert_int_eq(store_job_cancel(s, a, &j), DECOMP_OK);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_retry(s, a, &j, &requeued), DECOMP_ERR_CONFLICT);
  ck_assert(!requeued);
  ck_assert_int_eq(store_job_cancelled(s, a), DECOMP_OK);
  ck_assert_int_eq(store_job_retry(s, a, &j, &requeued), DECOMP_OK);
  ck_assert(requeued);
  ck_assert(!j.cancel_requested);
  store_job_clear(&j);
  /* succeeded: nothing to retry */
  ck_assert_int_eq(store_job_succeed(s, b, NULL, NULL, 0), DECOMP_OK);
  ck_assert_int_eq(store_job_retry(s, b, &j, &requeued), DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(store_job_retry(s, "j_nope", &j, &requeued),
                   DECOMP_ERR_NOT_FOUND);
  /* a failed job whose model was deleted: conflict, and it stays failed */
  store_model m2;
  put_model(s, "other weights", &m2);
  submit(s, m2.id, "kc", c);
  ck_assert_int_eq(store_job_cancel(s, c, &j), DECOMP_OK);
  store_job_clear(&j);
  ck_assert_int_eq(store_model_delete(s, m2.id), DECOMP_OK);
  ck_assert_int_eq(store_job_retry(s, c, &j, &requeued), DECOMP_ERR_CONFLICT);
  ck_assert(!requeued);
  ck_assert_int_eq(store_job_get(s, c, false, &j), DECOMP_OK);
  ck_assert_int_eq(j.state, STORE_JOB_CANCELLED);
  store_job_clear(&j);
  store_close(s);
}
END_TEST

int main(void) {
  Suite *su = suite_create("store_hardening");
  TCase *tc = tcase_create("store");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, scrub_replaces_data_dir_paths_by_what_they_are);
  tcase_add_test(tc, owner_start_removes_every_temp_name_and_keeps_the_reserve);
  tcase_add_test(tc, no_job_is_queued_on_a_missing_model);
  tcase_add_test(tc, retry_requeues_failed_and_cancelled_jobs_as_new_attempts);
  suite_add_tcase(su, tc);
  SRunner *sr = srunner_create(su);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
