/* test_store.c — decompd's store (src/store): blobs (hash on the fly,
 * commit, dedup, nothing left by an aborted upload), migrations and the
 * too-new refusal, models and their calibrations, tokens, the job queue
 * (idempotent submit, FIFO claim, progress, cancel, requeue after a crash,
 * delete), resumable partial uploads, loose blobs and sharded models. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue.h"
#include "store.h"
#include "store_int.h" /* the blob bookkeeping the store does itself */

static char dir[256];

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/decompd-store-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static int count_files(const char *sub) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "find '%s/%s' -type f | wc -l", dir, sub);
  FILE *p = popen(cmd, "r");
  int n = -1;
  ck_assert_int_eq(fscanf(p, "%d", &n), 1);
  pclose(p);
  return n;
}

static store *open_owner(int *requeued) {
  store *s = NULL;
  int rc = store_open(dir, true, &s, requeued);
  ck_assert_msg(rc == DECOMP_OK, "store_open: %s", store_errmsg());
  return s;
}

static void put_blob(store *s, const char *text, char digest[STORE_DIGEST_LEN]) {
  store_upload *u;
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, text, strlen(text)), DECOMP_OK);
  ck_assert_int_eq(store_upload_finish(u, digest), DECOMP_OK);
  ck_assert_int_eq(store_upload_commit(u), DECOMP_OK);
  store_upload_free(u);
}

/* A finished upload of `text` (hashed, not yet in the blob folder), for
 * the calls that commit it with their row. */
static store_upload *upload_of(store *s, const char *text,
                               char digest[STORE_DIGEST_LEN]) {
  store_upload *u;
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, text, strlen(text)), DECOMP_OK);
  ck_assert_int_eq(store_upload_finish(u, digest), DECOMP_OK);
  return u;
}

/* Attach `text` to model `id` as its attachment `kind` (store_model_attach
 * with an upload of it); digest gets the blob's digest. */
static int attach_text(store *s, const char *id, store_attachment kind,
                       const char *text, int64_t layers,
                       char digest[STORE_DIGEST_LEN],
                       char old[STORE_DIGEST_LEN]) {
  store_upload *u = upload_of(s, text, digest);
  int rc = store_model_attach(s, id, kind, u, layers, (int64_t)strlen(text),
                              old);
  store_upload_free(u);
  return rc;
}

/* Commit `text` as the weights of model `m` (its digest set here). */
static int model_put(store *s, const char *text, store_model *m,
                     bool *created) {
  store_upload *u = upload_of(s, text, m->digest);
  int rc = store_model_put(s, u, m, created);
  store_upload_free(u);
  return rc;
}

START_TEST(upload_hashes_on_the_fly_and_commits_by_digest) {
  store *s = open_owner(NULL);
  store_upload *u;
  char digest[STORE_DIGEST_LEN];
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, "a", 1), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, "bc", 2), DECOMP_OK);
  ck_assert_int_eq(store_upload_size(u), 3);
  ck_assert_int_eq(store_upload_finish(u, digest), DECOMP_OK);
  ck_assert_str_eq(digest, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a3"
                           "96177a9cb410ff61f20015ad");
  ck_assert_int_eq(count_files("blobs"), 0); /* nothing until commit */
  ck_assert_int_eq(store_upload_commit(u), DECOMP_OK);
  store_upload_free(u);
  char path[512];
  snprintf(path, sizeof path, "%s/blobs/sha256/ba/ba7816bf8f01cfea414140de5dae"
                              "2223b00361a396177a9cb410ff61f20015ad", dir);
  ck_assert_int_eq(access(path, R_OK), 0);
  int fd;
  int64_t size;
  ck_assert_int_eq(store_blob_open(s, digest, &fd, &size), DECOMP_OK);
  ck_assert_int_eq(size, 3);
  close(fd);
  /* the same bytes again: one blob, the temp file dropped */
  put_blob(s, "abc", digest);
  ck_assert_int_eq(count_files("blobs"), 1);
  ck_assert_int_eq(count_files("tmp"), 0);
  store_close(s);
}
END_TEST

START_TEST(aborted_upload_leaves_nothing) {
  store *s = open_owner(NULL);
  store_upload *u;
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  ck_assert_int_eq(store_upload_write(u, "partial", 7), DECOMP_OK);
  ck_assert_int_eq(count_files("tmp"), 1);
  store_upload_free(u);
  ck_assert_int_eq(count_files("tmp"), 0);
  ck_assert_int_eq(count_files("blobs"), 0);
  /* a crash leaves a temp file: the next owner removes it */
  ck_assert_int_eq(store_upload_begin(s, &u), DECOMP_OK);
  store_close(s);
  ck_assert_int_eq(count_files("tmp"), 1);
  s = open_owner(NULL);
  ck_assert_int_eq(count_files("tmp"), 0);
  store_close(s);
  store_upload_free(u); /* its file is gone already; free must not care */
}
END_TEST

START_TEST(migrations_apply_once_and_a_newer_db_is_refused) {
  store *s = open_owner(NULL);
  int v = store_schema_version(s);
  ck_assert_int_ge(v, 1);
  store_close(s);
  s = open_owner(NULL); /* again: nothing to apply */
  ck_assert_int_eq(store_schema_version(s), v);
  store_close(s);
  /* user_version lives at byte 60 of the database header (big-endian). */
  char path[400];
  snprintf(path, sizeof path, "%s/decompd.db", dir);
  int fd = open(path, O_RDWR);
  ck_assert_int_ge(fd, 0);
  unsigned char nv[4] = {0, 0, 0x27, 0x0f}; /* 9999 */
  ck_assert_int_eq(pwrite(fd, nv, 4, 60), 4);
  close(fd);
  s = NULL;
  ck_assert_int_eq(store_open(dir, true, &s, NULL), DECOMP_ERR_DB_TOO_NEW);
  ck_assert_ptr_null(s);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), "9999"));
}
END_TEST

START_TEST(one_owner_per_data_dir) {
  store *s = open_owner(NULL), *t = NULL;
  ck_assert_int_eq(store_open(dir, true, &t, NULL), DECOMP_ERR_UNAVAILABLE);
  ck_assert_int_eq(store_open(dir, false, &t, NULL), DECOMP_OK); /* tools */
  store_close(t);
  store_close(s);
}
END_TEST

START_TEST(models_dedup_by_digest_and_delete_collects_the_blob) {
  store *s = open_owner(NULL);
  store_model m = {0}, m2 = {0}, got;
  bool created;
  snprintf(m.name, sizeof m.name, "first");
  snprintf(m.format, sizeof m.format, "pth");
  m.size = 7;
  m.tensors = 1;
  ck_assert_int_eq(model_put(s, "weights", &m, &created), DECOMP_OK);
  ck_assert(created);
  ck_assert_int_eq(strncmp(m.id, "m_", 2), 0);
  m2 = m;
  snprintf(m2.name, sizeof m2.name, "second");
  ck_assert_int_eq(model_put(s, "weights", &m2, &created), DECOMP_OK);
  ck_assert(!created);
  ck_assert_str_eq(m2.id, m.id);
  ck_assert_str_eq(m2.name, "first");
  ck_assert_int_eq(store_model_get(s, m.id, &got), DECOMP_OK);
  ck_assert_str_eq(got.digest, m.digest);
  ck_assert_int_eq(store_model_get(s, "m_nope", &got), DECOMP_ERR_NOT_FOUND);
  store_model *list;
  size_t n;
  ck_assert_int_eq(store_model_list(s, &list, &n), DECOMP_OK);
  ck_assert_uint_eq(n, 1);
  free(list);

  /* in use by a queued job: refused */
  store_job j = {0};
  snprintf(j.model_id, sizeof j.model_id, "%s", m.id);
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "key1", &j, &created), DECOMP_OK);
  ck_assert_int_eq(store_model_delete(s, m.id), DECOMP_ERR_CONFLICT);
  store_job c;
  ck_assert_int_eq(store_job_cancel(s, j.id, &c), DECOMP_OK);
  ck_assert_int_eq(c.state, STORE_JOB_CANCELLED);
  store_job_clear(&c);
  store_job_clear(&j);
  /* the delete collects the blob with the row */
  ck_assert_int_eq(count_files("blobs"), 1);
  ck_assert_int_eq(store_model_delete(s, m.id), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), 0);
  ck_assert_int_eq(store_model_delete(s, m.id), DECOMP_ERR_NOT_FOUND);
  /* no job is queued on a model that is gone */
  snprintf(j.model_id, sizeof j.model_id, "%s", m.id);
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "key2", &j, &created),
                   DECOMP_ERR_NOT_FOUND);
  store_close(s);
}
END_TEST

/* store_blob_read gives a small blob whole, NUL-terminated, and refuses
 * one over its bound or one that is not there. */
START_TEST(blob_read_is_bounded) {
  store *s = open_owner(NULL);
  char digest[STORE_DIGEST_LEN];
  put_blob(s, "{\"format\": \"decompd.profile\"}", digest);
  char *text = NULL;
  size_t len = 0;
  ck_assert_int_eq(store_blob_read(s, digest, 64, &text, &len), DECOMP_OK);
  ck_assert_str_eq(text, "{\"format\": \"decompd.profile\"}");
  ck_assert_uint_eq(len, strlen(text));
  free(text);
  ck_assert_int_eq(store_blob_read(s, digest, 28, &text, NULL),
                   DECOMP_ERR_TOO_LARGE);
  ck_assert_ptr_null(text);
  ck_assert_int_eq(store_blob_read(s, digest, 29, &text, NULL), DECOMP_OK);
  free(text);
  ck_assert_int_eq(store_blob_read(s,
                                   "sha256:"
                                   "0000000000000000000000000000000000000000"
                                   "000000000000000000000000",
                                   64, &text, NULL),
                   DECOMP_ERR_NOT_FOUND);
  ck_assert_ptr_null(text);
  store_close(s);
}
END_TEST

/* A latency profile is attached the way a calibration is, beside it: a job
 * naming it keeps its blob through a replace, a detach and the model's
 * delete; a job's profile must be the model's attached one when the job is
 * new; the job's delete hands back its calibration and its profile. */
START_TEST(profile_blobs_live_while_a_model_or_job_names_them) {
  store *s = open_owner(NULL);
  store_model m = {0}, got;
  bool created;
  char cal[STORE_DIGEST_LEN], p1[STORE_DIGEST_LEN], p2[STORE_DIGEST_LEN],
      old[STORE_DIGEST_LEN];
  snprintf(m.format, sizeof m.format, "pth");
  ck_assert_int_eq(model_put(s, "weights", &m, &created), DECOMP_OK);
  ck_assert_str_eq(m.profile, "");
  ck_assert_int_eq(store_model_attach(s, m.id, STORE_ATTACH_PROFILE, NULL, 0, 0, old),
                   DECOMP_ERR_NOT_FOUND); /* none to detach */
  ck_assert_int_eq(attach_text(s, m.id, STORE_ATTACH_PROFILE,
                               "{\"profile\": 1}", 3, p1, old),
                   DECOMP_OK);
  ck_assert_str_eq(old, "");
  ck_assert_int_eq(
      attach_text(s, m.id, STORE_ATTACH_CALIBRATION, "gram", 1, cal, old),
      DECOMP_OK);
  ck_assert_int_eq(store_model_get(s, m.id, &got), DECOMP_OK);
  ck_assert_str_eq(got.profile, p1);
  ck_assert_int_eq(got.profile_layers, 3);
  ck_assert_int_eq(got.profile_size, 14);
  ck_assert_str_eq(got.calibration, cal); /* two attachments, apart */
  char p0[STORE_DIGEST_LEN];
  ck_assert_int_eq(attach_text(s, "m_nope", STORE_ATTACH_PROFILE,
                               "{\"profile\": 0}", 3, p0, old),
                   DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(count_files("blobs"), 3); /* its blob collected */

  /* a job with the profile and the calibration */
  store_job j = {0};
  snprintf(j.model_id, sizeof j.model_id, "%s", m.id);
  snprintf(j.profile, sizeof j.profile, "%s", p1);
  snprintf(j.calibration, sizeof j.calibration, "%s", cal);
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "kp1", &j, &created), DECOMP_OK);
  ck_assert(created);
  ck_assert_str_eq(j.profile, p1);
  ck_assert_str_eq(j.calibration, cal);
  char job1[24];
  snprintf(job1, sizeof job1, "%s", j.id);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_get(s, job1, false, &j), DECOMP_OK);
  ck_assert_str_eq(j.profile, p1);
  store_job_clear(&j);

  /* replaced: the job keeps p1; a new job naming p1 is a conflict */
  ck_assert_int_eq(attach_text(s, m.id, STORE_ATTACH_PROFILE,
                               "{\"profile\": 2}", 1, p2, old),
                   DECOMP_OK);
  ck_assert_str_eq(old, p1);
  ck_assert_int_eq(count_files("blobs"), 4); /* the job keeps p1 */
  memset(&j, 0, sizeof j);
  snprintf(j.model_id, sizeof j.model_id, "%s", m.id);
  snprintf(j.profile, sizeof j.profile, "%s", p1);
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "kp1-other", &j, &created),
                   DECOMP_ERR_CONFLICT);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), "profile"));
  ck_assert_ptr_nonnull(strstr(store_errmsg(), p2));
  /* detached: a new job naming any profile is a conflict */
  ck_assert_int_eq(store_model_attach(s, m.id, STORE_ATTACH_PROFILE, NULL, 0, 0, old),
                   DECOMP_OK);
  ck_assert_str_eq(old, p2);
  ck_assert_int_eq(count_files("blobs"), 3); /* p2 was no job's: collected */
  snprintf(j.profile, sizeof j.profile, "%s", p2);
  ck_assert_int_eq(store_job_submit(s, "kp2", &j, &created),
                   DECOMP_ERR_CONFLICT);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), "no profile"));

  /* the model's delete, then the job's: the job's row keeps both blobs
   * until it goes */
  store_job c;
  ck_assert_int_eq(store_job_cancel(s, job1, &c), DECOMP_OK);
  store_job_clear(&c);
  ck_assert_int_eq(attach_text(s, m.id, STORE_ATTACH_PROFILE,
                               "{\"profile\": 1}", 3, p1, old),
                   DECOMP_OK);
  ck_assert_int_eq(store_model_delete(s, m.id), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), 2); /* the job's p1 and cal */
  ck_assert_int_eq(store_job_delete(s, job1), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), 0);
  store_close(s);
}
END_TEST

/* A calibration is a blob the model names; a job submitted with it names
 * it too, so replacing or detaching it (or deleting the model) leaves it
 * for the job, and the last row to go lets it be collected. */
START_TEST(calibration_blobs_live_while_a_model_or_job_names_them) {
  store *s = open_owner(NULL);
  store_model m = {0}, got;
  bool created;
  char cal1[STORE_DIGEST_LEN], cal2[STORE_DIGEST_LEN], old[STORE_DIGEST_LEN];
  snprintf(m.format, sizeof m.format, "pth");
  ck_assert_int_eq(model_put(s, "weights", &m, &created), DECOMP_OK);
  ck_assert_str_eq(m.calibration, "");
  ck_assert_int_eq(store_model_attach(s, m.id, STORE_ATTACH_CALIBRATION, NULL, 0, 0, old),
                   DECOMP_ERR_NOT_FOUND); /* none to detach */
  ck_assert_int_eq(attach_text(s, m.id, STORE_ATTACH_CALIBRATION, "gram one",
                               2, cal1, old),
                   DECOMP_OK);
  ck_assert_str_eq(old, "");
  ck_assert_int_eq(store_model_get(s, m.id, &got), DECOMP_OK);
  ck_assert_str_eq(got.calibration, cal1);
  ck_assert_int_eq(got.calibration_layers, 2);
  ck_assert_int_eq(got.calibration_size, 8);
  ck_assert_int_eq(attach_text(s, "m_nope", STORE_ATTACH_CALIBRATION,
                               "gram one", 2, cal1, old),
                   DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(count_files("blobs"), 2); /* model m still names cal1 */

  /* a job with it, then the model's calibration replaced */
  store_job j = {0};
  snprintf(j.model_id, sizeof j.model_id, "%s", m.id);
  snprintf(j.calibration, sizeof j.calibration, "%s", cal1);
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "kc1", &j, &created), DECOMP_OK);
  ck_assert(created);
  ck_assert_str_eq(j.calibration, cal1);
  char job1[24];
  snprintf(job1, sizeof job1, "%s", j.id);
  store_job_clear(&j);
  ck_assert_int_eq(attach_text(s, m.id, STORE_ATTACH_CALIBRATION, "gram two",
                               1, cal2, old),
                   DECOMP_OK);
  ck_assert_str_eq(old, cal1);
  ck_assert_int_eq(count_files("blobs"), 3); /* the job keeps cal1 */
  /* a new job naming the old one: conflict; the same job again: itself */
  memset(&j, 0, sizeof j);
  snprintf(j.model_id, sizeof j.model_id, "%s", m.id);
  snprintf(j.calibration, sizeof j.calibration, "%s", cal1);
  j.spec = "{}";
  j.policy = "{}";
  ck_assert_int_eq(store_job_submit(s, "kc1-other", &j, &created),
                   DECOMP_ERR_CONFLICT);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), cal2));
  ck_assert_int_eq(store_job_submit(s, "kc1", &j, &created), DECOMP_OK);
  ck_assert(!created);
  ck_assert_str_eq(j.id, job1);
  store_job_clear(&j);

  /* deleting the model collects its weights and cal2; the job holds cal1 */
  store_job c;
  ck_assert_int_eq(store_job_cancel(s, job1, &c), DECOMP_OK);
  store_job_clear(&c);
  ck_assert_int_eq(store_model_delete(s, m.id), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), 1);
  ck_assert_int_eq(store_job_delete(s, job1), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), 0);
  store_close(s);
}
END_TEST

START_TEST(tokens_are_found_by_hash_with_their_role) {
  store *s = open_owner(NULL);
  bool any = true;
  ck_assert_int_eq(store_token_any(s, &any), DECOMP_OK);
  ck_assert(!any);
  char id[24], name[256];
  ck_assert_int_eq(store_token_put(s, "ci", STORE_ROLE_SUBMIT, "aa11", id),
                   DECOMP_OK);
  ck_assert_int_eq(store_token_put(s, "ci", STORE_ROLE_READ, "bb22", id),
                   DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(store_token_any(s, &any), DECOMP_OK);
  ck_assert(any);
  int role;
  ck_assert_int_eq(store_token_role(s, "aa11", &role, name), DECOMP_OK);
  ck_assert_int_eq(role, STORE_ROLE_SUBMIT);
  ck_assert_str_eq(name, "ci");
  ck_assert_int_eq(store_token_role(s, "cc33", &role, name), DECOMP_OK);
  ck_assert_int_eq(role, STORE_ROLE_NONE);
  ck_assert_int_eq(store_token_delete(s, "ci"), DECOMP_OK);
  ck_assert_int_eq(store_token_delete(s, "ci"), DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(store_role_from_name("admin"), STORE_ROLE_ADMIN);
  ck_assert_int_eq(store_role_from_name("root"), -1);
  store_close(s);
}
END_TEST

/* A model for jobs to run on; its id. */
static void some_model(store *s, char id[24]) {
  store_model m = {0};
  bool created;
  snprintf(m.format, sizeof m.format, "pth");
  ck_assert_int_eq(model_put(s, "some weights", &m, &created), DECOMP_OK);
  memcpy(id, m.id, 24);
}

static char model_x[24];

static void submit(store *s, const char *key, char id[24], bool want_created) {
  store_job j = {0};
  bool created;
  snprintf(j.model_id, sizeof j.model_id, "%s", model_x);
  j.spec = "{\"layers\":[]}";
  j.policy = "{\"name\":\"budget\"}";
  ck_assert_int_eq(store_job_submit(s, key, &j, &created), DECOMP_OK);
  ck_assert_int_eq(created, want_created);
  ck_assert_int_eq(j.state == STORE_JOB_QUEUED || !want_created, 1);
  ck_assert_str_eq(j.spec, "{\"layers\":[]}");
  memcpy(id, j.id, 24);
  store_job_clear(&j);
}

START_TEST(queue_is_idempotent_fifo_and_survives_a_crash) {
  store *s = open_owner(NULL);
  char a[24], b[24], again[24];
  some_model(s, model_x);
  submit(s, "ka", a, true);
  submit(s, "kb", b, true);
  submit(s, "ka", again, false);
  ck_assert_str_eq(again, a);

  store_job j;
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  ck_assert_str_eq(j.id, a); /* oldest first */
  ck_assert_int_eq(j.state, STORE_JOB_RUNNING);
  ck_assert_int_eq(j.attempts, 1);
  ck_assert_ptr_nonnull(j.spec);
  store_job_clear(&j);
  store_job_layer l = {.index = 0, .rank = 8, .max_rank = 27, .seconds = 0.5};
  snprintf(l.name, sizeof l.name, "conv1");
  ck_assert_int_eq(store_job_progress(s, a, 3, &l), DECOMP_OK);
  ck_assert_int_eq(store_job_get(s, a, false, &j), DECOMP_OK);
  ck_assert_int_eq(j.layers_done, 1);
  ck_assert_int_eq(j.layers_total, 3);
  store_job_clear(&j);

  /* the process dies with `a` running: the next owner requeues it */
  store_close(s);
  int requeued = -1;
  s = open_owner(&requeued);
  ck_assert_int_eq(requeued, 1);
  ck_assert_int_eq(store_job_get(s, a, false, &j), DECOMP_OK);
  ck_assert_int_eq(j.state, STORE_JOB_QUEUED);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  ck_assert_str_eq(j.id, a);
  ck_assert_int_eq(j.attempts, 2);
  ck_assert_int_eq(j.layers_done, 0);
  store_job_clear(&j);
  store_job_layer *ls;
  size_t nl;
  ck_assert_int_eq(store_job_layers(s, a, &ls, &nl), DECOMP_OK);
  ck_assert_uint_eq(nl, 0); /* the old attempt's rows were dropped */
  free(ls);

  store_artifact art = {0};
  snprintf(art.name, sizeof art.name, "decompose_info.json");
  snprintf(art.media_type, sizeof art.media_type, "application/json");
  /* the job's output file, hashed by the worker, is moved into the blob
   * folder with the row that names it */
  char path[512];
  snprintf(path, sizeof path, "%s/%s-out.json", store_tmp_dir(s), a);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs("{}", f);
  fclose(f);
  ck_assert_int_eq(store_blob_hash_file(path, art.digest, &art.size),
                   DECOMP_OK);
  ck_assert_int_eq(art.size, 2);
  int blobs_before = count_files("blobs");
  const char *paths[] = {path};
  ck_assert_int_eq(store_job_succeed(s, a, &art, paths, 1), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), blobs_before + 1);
  ck_assert_int_ne(access(path, F_OK), 0); /* moved, not copied */
  store_artifact got;
  ck_assert_int_eq(store_artifact_get(s, a, "decompose_info.json", &got),
                   DECOMP_OK);
  ck_assert_str_eq(got.digest, art.digest);

  /* b: running, then a user cancel is flagged for its worker */
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  ck_assert_str_eq(j.id, b);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_ERR_NOT_FOUND);
  bool yes = true;
  ck_assert_int_eq(store_job_cancel_requested(s, b, &yes), DECOMP_OK);
  ck_assert(!yes);
  ck_assert_int_eq(store_job_cancel(s, b, &j), DECOMP_OK);
  ck_assert_int_eq(j.state, STORE_JOB_RUNNING);
  ck_assert(j.cancel_requested);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_cancel_requested(s, b, &yes), DECOMP_OK);
  ck_assert(yes);
  ck_assert_int_eq(store_job_delete(s, b), DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(store_job_fail(s, b, DECOMP_ERR_SVD_FAILED, "conv1: no"),
                   DECOMP_OK);
  ck_assert_int_eq(store_job_get(s, b, false, &j), DECOMP_OK);
  ck_assert_int_eq(j.state, STORE_JOB_FAILED);
  ck_assert_str_eq(j.error_code, "svd_failed");
  ck_assert_str_eq(j.error_message, "conv1: no");
  store_job_clear(&j);
  ck_assert_int_eq(store_job_cancel(s, a, &j), DECOMP_ERR_CONFLICT);

  int64_t counts[STORE_JOB_STATE_COUNT];
  ck_assert_int_eq(store_job_counts(s, counts), DECOMP_OK);
  ck_assert_int_eq(counts[STORE_JOB_SUCCEEDED], 1);
  ck_assert_int_eq(counts[STORE_JOB_FAILED], 1);

  store_job *v;
  size_t n;
  ck_assert_int_eq(store_job_list(s, -1, 0, 1, &v, &n), DECOMP_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(v[0].id, b); /* newest first */
  int64_t cursor = v[0].seq;
  store_job_clear(&v[0]);
  free(v);
  ck_assert_int_eq(store_job_list(s, -1, cursor, 10, &v, &n), DECOMP_OK);
  ck_assert_uint_eq(n, 1);
  ck_assert_str_eq(v[0].id, a);
  store_job_clear(&v[0]);
  free(v);
  ck_assert_int_eq(store_job_list(s, STORE_JOB_QUEUED, 0, 10, &v, &n),
                   DECOMP_OK);
  ck_assert_uint_eq(n, 0);
  free(v);

  ck_assert_int_eq(store_job_delete(s, a), DECOMP_OK);
  ck_assert_int_eq(count_files("blobs"), blobs_before); /* collected */
  ck_assert_int_eq(store_job_get(s, a, false, &j), DECOMP_ERR_NOT_FOUND);
  store_close(s);
}
END_TEST


static int wakes;
static void count_wake(void *arg) {
  (void)arg;
  wakes++;
}

START_TEST(a_queued_job_calls_the_wake_up_once_and_an_existing_one_does_not) {
  store *s = open_owner(NULL);
  some_model(s, model_x);
  wakes = 0;
  store_set_wake(s, count_wake, NULL);
  char a[24], again[24], b[24];
  submit(s, "kw", a, true);
  ck_assert_int_eq(wakes, 1);
  submit(s, "kw", again, false); /* the same job: nothing new to claim */
  ck_assert_int_eq(wakes, 1);
  store_job j;
  ck_assert_int_eq(store_job_claim(s, &j), DECOMP_OK);
  store_job_clear(&j);
  ck_assert_int_eq(store_job_fail(s, a, DECOMP_ERR_IO, "lost"), DECOMP_OK);
  ck_assert_int_eq(wakes, 1);
  bool requeued = false;
  ck_assert_int_eq(store_job_retry(s, a, &j, &requeued), DECOMP_OK);
  ck_assert(requeued);
  store_job_clear(&j);
  ck_assert_int_eq(wakes, 2); /* back in the queue */
  store_set_wake(s, NULL, NULL);
  submit(s, "kw2", b, true);
  ck_assert_int_eq(wakes, 2); /* removed */
  store_close(s);
}
END_TEST

static void sha_of(const char *text, char digest[STORE_DIGEST_LEN]) {
  char hex[65];
  ck_assert(store_sha256_hex(text, strlen(text), hex));
  snprintf(digest, STORE_DIGEST_LEN, "sha256:%s", hex);
}

START_TEST(partial_uploads_resume_at_their_offset_and_verify_whole) {
  store *s = open_owner(NULL);
  const char *text = "0123456789abcdefghij";
  char digest[STORE_DIGEST_LEN];
  sha_of(text, digest);
  store_partial *p = NULL, *q = NULL;
  int64_t have = 0;
  ck_assert_int_eq(store_partial_offset(s, digest, &have),
                   DECOMP_ERR_NOT_FOUND);
  /* resuming what does not exist says where to start: 0 */
  ck_assert_int_eq(store_partial_open(s, digest, 5, &p, &have),
                   DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(have, 0);
  ck_assert_int_eq(count_files("partial"), 0);
  ck_assert_int_eq(store_partial_open(s, digest, 0, &p, NULL), DECOMP_OK);
  /* one writer at a time */
  ck_assert_int_eq(store_partial_open(s, digest, 0, &q, NULL),
                   DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(store_partial_write(p, text, 8), DECOMP_OK);
  store_partial_free(p); /* a request that ended: the bytes stay */
  ck_assert_int_eq(store_partial_offset(s, digest, &have), DECOMP_OK);
  ck_assert_int_eq(have, 8);
  ck_assert_int_eq(store_partial_open(s, digest, 9, &p, &have),
                   DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(have, 8);
  ck_assert_int_eq(store_partial_open(s, digest, 8, &p, NULL), DECOMP_OK);
  ck_assert_int_eq(store_partial_write(p, text + 8, strlen(text) - 8),
                   DECOMP_OK);
  ck_assert_int_eq(store_partial_size(p), (int64_t)strlen(text));
  ck_assert_int_eq(store_partial_appended(p), (int64_t)strlen(text) - 8);
  ck_assert_int_eq(store_partial_verify(p), DECOMP_OK);
  ck_assert_int_eq(store_partial_commit(p), DECOMP_OK);
  store_partial_free(p);
  ck_assert_int_eq(count_files("partial"), 0);
  char *back = NULL;
  ck_assert_int_eq(store_blob_read(s, digest, 100, &back, NULL), DECOMP_OK);
  ck_assert_str_eq(back, text);
  free(back);

  /* bytes that are not the digest: refused, and nothing kept */
  char other[STORE_DIGEST_LEN];
  sha_of("something else", other);
  ck_assert_int_eq(store_partial_open(s, other, 0, &p, NULL), DECOMP_OK);
  ck_assert_int_eq(store_partial_write(p, text, strlen(text)), DECOMP_OK);
  ck_assert_int_eq(store_partial_verify(p), DECOMP_ERR_UPLOAD_DIGEST);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), digest));
  store_partial_free(p);
  ck_assert_int_eq(count_files("partial"), 0);
  ck_assert_int_eq(store_blob_read(s, other, 100, &back, NULL),
                   DECOMP_ERR_NOT_FOUND);
  /* a digest that is not one never makes a file name */
  ck_assert_int_eq(store_partial_open(s, "sha256:../../x", 0, &p, NULL),
                   DECOMP_ERR_INVALID_ARGUMENT);
  store_close(s);
}
END_TEST

START_TEST(shards_live_while_their_model_does_and_loose_blobs_for_the_ttl) {
  store *s = open_owner(NULL);
  char a[STORE_DIGEST_LEN], b[STORE_DIGEST_LEN], doc[STORE_DIGEST_LEN],
      stray[STORE_DIGEST_LEN];
  put_blob(s, "shard a", a);
  put_blob(s, "shard b", b);
  put_blob(s, "stray", stray);
  put_blob(s, "{\"index\":{}}", doc);
  int64_t len = 0;
  ck_assert_int_eq(store_loose_blob_refresh(s, a, &len), DECOMP_OK);
  ck_assert_int_eq(len, 7);
  ck_assert_int_eq(store_loose_blob_refresh(s, b, &len), DECOMP_OK);
  ck_assert_int_eq(store_loose_blob_refresh(s, stray, &len), DECOMP_OK);
  ck_assert_int_eq(len, 5);
  /* a loose blob is not collected while it is young */
  store_blob_lock(s);
  ck_assert_int_eq(store_blob_gc(s, stray), DECOMP_OK);
  store_blob_unlock(s);
  ck_assert_int_eq(count_files("blobs"), 4);

  store_model m = {0};
  snprintf(m.digest, sizeof m.digest, "%s", doc);
  snprintf(m.format, sizeof m.format, "safetensors-sharded");
  m.size = 14;
  m.tensors = 2;
  store_shard sh[2] = {{"model-00001-of-00002.safetensors", "", 7},
                       {"model-00002-of-00002.safetensors", "", 7}};
  snprintf(sh[0].digest, sizeof sh[0].digest, "%s", a);
  snprintf(sh[1].digest, sizeof sh[1].digest, "%s", b);
  bool created = false;
  store_upload *du = upload_of(s, "{\"index\":{}}", m.digest);
  ck_assert_int_eq(store_model_put_sharded(s, du, &m, sh, 2, &created),
                   DECOMP_OK);
  store_upload_free(du);
  ck_assert(created);
  store_model again = m;
  du = upload_of(s, "{\"index\":{}}", again.digest);
  ck_assert_int_eq(store_model_put_sharded(s, du, &again, sh, 2, &created),
                   DECOMP_OK);
  store_upload_free(du);
  ck_assert(!created);
  ck_assert_str_eq(again.id, m.id);
  /* a shard whose blob is not in the store: refused, naming it */
  store_model m3 = {0};
  snprintf(m3.format, sizeof m3.format, "safetensors-sharded");
  store_shard lost = {"lost.safetensors", "", 1};
  snprintf(lost.digest, sizeof lost.digest, "sha256:%064d", 7);
  du = upload_of(s, "{\"index\":3}", m3.digest);
  ck_assert_int_eq(store_model_put_sharded(s, du, &m3, &lost, 1, &created),
                   DECOMP_ERR_BAD_SHARD_INDEX);
  store_upload_free(du);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), "shard lost.safetensors"));
  store_shard *got = NULL;
  size_t n = 0;
  ck_assert_int_eq(store_model_shards(s, m.id, &got, &n), DECOMP_OK);
  ck_assert_int_eq(n, 2);
  ck_assert_str_eq(got[1].name, sh[1].name);
  ck_assert_str_eq(got[1].digest, b);
  free(got);

  /* past the ttl: the stray goes, the model's shards stay */
  int np = -1, nb = -1;
  ck_assert_int_eq(store_uploads_sweep(s, -1000, &np, &nb), DECOMP_OK);
  ck_assert_int_eq(np, 0);
  ck_assert_int_eq(nb, 1);
  ck_assert_int_eq(count_files("blobs"), 3);
  /* a collected blob is not refreshed: its uploader sends it again */
  ck_assert_int_eq(store_loose_blob_refresh(s, stray, &len),
                   DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(count_files("blobs"), 3);

  /* the model deleted: its rows go, and so do its blobs */
  ck_assert_int_eq(store_model_delete(s, m.id), DECOMP_OK);
  ck_assert_int_eq(store_model_shards(s, m.id, &got, &n), DECOMP_OK);
  ck_assert_int_eq(n, 0);
  ck_assert_int_eq(count_files("blobs"), 0);
  store_close(s);
}
END_TEST

START_TEST(abandoned_partials_are_swept_unless_held) {
  store *s = open_owner(NULL);
  char d1[STORE_DIGEST_LEN], d2[STORE_DIGEST_LEN];
  sha_of("one", d1);
  sha_of("two", d2);
  store_partial *p1 = NULL, *p2 = NULL;
  ck_assert_int_eq(store_partial_open(s, d1, 0, &p1, NULL), DECOMP_OK);
  ck_assert_int_eq(store_partial_write(p1, "on", 2), DECOMP_OK);
  store_partial_free(p1);
  ck_assert_int_eq(store_partial_open(s, d2, 0, &p2, NULL), DECOMP_OK);
  ck_assert_int_eq(store_partial_write(p2, "tw", 2), DECOMP_OK);
  int np = -1;
  /* young: kept */
  ck_assert_int_eq(store_uploads_sweep(s, 3600 * 1000, &np, NULL), DECOMP_OK);
  ck_assert_int_eq(np, 0);
  /* old, but the second is being written: only the first goes */
  ck_assert_int_eq(store_uploads_sweep(s, -1000, &np, NULL), DECOMP_OK);
  ck_assert_int_eq(np, 1);
  int64_t have = 0;
  ck_assert_int_eq(store_partial_offset(s, d1, &have), DECOMP_ERR_NOT_FOUND);
  ck_assert_int_eq(store_partial_offset(s, d2, &have), DECOMP_OK);
  store_partial_free(p2);
  store_close(s);
}
END_TEST

/* The import entries (decompd store migrate) on the embedded backend: rows
 * written verbatim (ids, times, states), each once however often it is
 * imported, a blob they name checked, and another row with the same
 * digest, request key or token name refused. */
START_TEST(imports_are_verbatim_idempotent_and_refuse_conflicts) {
  store *s = open_owner(NULL);
  char d[STORE_DIGEST_LEN], missing[STORE_DIGEST_LEN];
  put_blob(s, "imported weights", d);
  sha_of("never stored", missing);
  bool created = false;

  store_model_record r = {.spec = "{\"layers\":[]}", .archive_spec = NULL};
  snprintf(r.m.id, sizeof r.m.id, "m_0123456789abcdef");
  snprintf(r.m.digest, sizeof r.m.digest, "%s", d);
  snprintf(r.m.name, sizeof r.m.name, "net");
  snprintf(r.m.format, sizeof r.m.format, "pth");
  r.m.size = 16;
  r.m.tensors = 3;
  r.m.created_at = 1234;
  ck_assert_int_eq(store_model_import(s, &r, &created), DECOMP_OK);
  ck_assert(created);
  store_model m;
  ck_assert_int_eq(store_model_get(s, r.m.id, &m), DECOMP_OK);
  ck_assert_str_eq(m.digest, d);
  ck_assert_int_eq(m.created_at, 1234);
  ck_assert_int_eq(m.tensors, 3);
  ck_assert(m.has_spec);
  ck_assert_str_eq(m.calibration, "");
  ck_assert_int_eq(store_model_import(s, &r, &created), DECOMP_OK);
  ck_assert(!created);
  store_model_record other = r;
  snprintf(other.m.id, sizeof other.m.id, "m_fedcba9876543210");
  ck_assert_int_eq(store_model_import(s, &other, &created),
                   DECOMP_ERR_CONFLICT);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), "another model has its digest"));
  snprintf(other.m.digest, sizeof other.m.digest, "%s", missing);
  ck_assert_int_eq(store_model_import(s, &other, &created),
                   DECOMP_ERR_NOT_FOUND);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), missing));
  ck_assert_int_eq(store_model_get(s, other.m.id, &m), DECOMP_ERR_NOT_FOUND);

  char key[65];
  memset(key, 'a', 64);
  key[64] = '\0';
  store_job_layer l = {.index = 0, .rank = 4, .max_rank = 16, .seconds = 0.5};
  snprintf(l.name, sizeof l.name, "conv1");
  store_artifact a = {.size = 16};
  snprintf(a.name, sizeof a.name, "decomposed_weights.pth");
  snprintf(a.digest, sizeof a.digest, "%s", d);
  snprintf(a.media_type, sizeof a.media_type, "application/octet-stream");
  store_job_record jr = {.request_key = key, .layers = &l, .nlayers = 1,
                         .artifacts = &a, .nartifacts = 1};
  snprintf(jr.j.id, sizeof jr.j.id, "j_0123456789abcdef");
  snprintf(jr.j.model_id, sizeof jr.j.model_id, "%s", r.m.id);
  jr.j.state = STORE_JOB_SUCCEEDED;
  jr.j.attempts = 2;
  jr.j.layers_total = jr.j.layers_done = 1;
  jr.j.spec = "{\"layers\":[]}";
  jr.j.policy = "{\"name\":\"budget\"}";
  jr.j.created_at = 10;
  jr.j.started_at = 20;
  jr.j.finished_at = 30;
  jr.j.peak_rss_bytes = 4096;
  ck_assert_int_eq(store_job_import(s, &jr, &created), DECOMP_OK);
  ck_assert(created);
  store_job j;
  ck_assert_int_eq(store_job_get(s, jr.j.id, true, &j), DECOMP_OK);
  ck_assert_int_eq(j.state, STORE_JOB_SUCCEEDED);
  ck_assert_int_eq(j.attempts, 2);
  ck_assert_int_eq(j.created_at, 10);
  ck_assert_int_eq(j.started_at, 20);
  ck_assert_int_eq(j.finished_at, 30);
  ck_assert_int_eq(j.peak_rss_bytes, 4096);
  ck_assert_str_eq(j.policy, jr.j.policy);
  store_job_clear(&j);
  char got[65];
  ck_assert_int_eq(store_job_request_key(s, jr.j.id, got), DECOMP_OK);
  ck_assert_str_eq(got, key);
  store_job_layer *lv = NULL;
  store_artifact *av = NULL;
  size_t nl = 0, na = 0;
  ck_assert_int_eq(store_job_layers(s, jr.j.id, &lv, &nl), DECOMP_OK);
  ck_assert_int_eq(nl, 1);
  ck_assert_str_eq(lv[0].name, "conv1");
  ck_assert_int_eq(lv[0].rank, 4);
  free(lv);
  ck_assert_int_eq(store_artifact_list(s, jr.j.id, &av, &na), DECOMP_OK);
  ck_assert_int_eq(na, 1);
  ck_assert_str_eq(av[0].digest, d);
  free(av);
  ck_assert_int_eq(store_job_import(s, &jr, &created), DECOMP_OK);
  ck_assert(!created);
  store_job_record jo = jr;
  snprintf(jo.j.id, sizeof jo.j.id, "j_fedcba9876543210");
  ck_assert_int_eq(store_job_import(s, &jo, &created), DECOMP_ERR_CONFLICT);
  ck_assert_ptr_nonnull(strstr(store_errmsg(), "request key"));
  /* a finished job may have outlived its model; a queued one may not */
  char key2[65];
  memset(key2, 'b', 64);
  key2[64] = '\0';
  jo.request_key = key2;
  jo.nartifacts = 0;
  snprintf(jo.j.model_id, sizeof jo.j.model_id, "m_0000000000000000");
  jo.j.state = STORE_JOB_QUEUED;
  ck_assert_int_eq(store_job_import(s, &jo, &created), DECOMP_ERR_NOT_FOUND);
  jo.j.state = STORE_JOB_FAILED;
  ck_assert_int_eq(store_job_import(s, &jo, &created), DECOMP_OK);
  ck_assert(created);

  store_token t = {.role = STORE_ROLE_ADMIN, .created_at = 99};
  snprintf(t.id, sizeof t.id, "t_01234567");
  snprintf(t.name, sizeof t.name, "ci");
  char hash[65];
  memset(hash, 'c', 64);
  hash[64] = '\0';
  ck_assert_int_eq(store_token_import(s, &t, hash, &created), DECOMP_OK);
  ck_assert(created);
  int role = 0;
  ck_assert_int_eq(store_token_role(s, hash, &role, NULL), DECOMP_OK);
  ck_assert_int_eq(role, STORE_ROLE_ADMIN);
  ck_assert_int_eq(store_token_hash(s, t.id, got), DECOMP_OK);
  ck_assert_str_eq(got, hash);
  ck_assert_int_eq(store_token_import(s, &t, hash, &created), DECOMP_OK);
  ck_assert(!created);
  store_token t2 = t;
  snprintf(t2.id, sizeof t2.id, "t_89abcdef");
  ck_assert_int_eq(store_token_import(s, &t2, hash, &created),
                   DECOMP_ERR_CONFLICT);
  ck_assert_int_eq(store_token_hash(s, t2.id, got), DECOMP_ERR_NOT_FOUND);
  store_close(s);
}
END_TEST

START_TEST(digests_and_ids_are_well_formed) {
  ck_assert(store_digest_valid("sha256:ba7816bf8f01cfea414140de5dae2223b00361a"
                               "396177a9cb410ff61f20015ad"));
  ck_assert(!store_digest_valid("sha256:../../etc/passwd"));
  ck_assert(!store_digest_valid("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A"
                                "396177A9CB410FF61F20015AD"));
  char id[24];
  ck_assert(store_random_id("j_", 8, id, sizeof id));
  ck_assert_uint_eq(strlen(id), 18);
  ck_assert(!store_random_id("j_", 8, id, 10));
}
END_TEST

int main(void) {
  Suite *s = suite_create("store");
  TCase *tc = tcase_create("store");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, upload_hashes_on_the_fly_and_commits_by_digest);
  tcase_add_test(tc, aborted_upload_leaves_nothing);
  tcase_add_test(tc, migrations_apply_once_and_a_newer_db_is_refused);
  tcase_add_test(tc, one_owner_per_data_dir);
  tcase_add_test(tc, models_dedup_by_digest_and_delete_collects_the_blob);
  tcase_add_test(tc, calibration_blobs_live_while_a_model_or_job_names_them);
  tcase_add_test(tc, profile_blobs_live_while_a_model_or_job_names_them);
  tcase_add_test(tc, blob_read_is_bounded);
  tcase_add_test(tc, tokens_are_found_by_hash_with_their_role);
  tcase_add_test(tc, queue_is_idempotent_fifo_and_survives_a_crash);
  tcase_add_test(tc,
                 a_queued_job_calls_the_wake_up_once_and_an_existing_one_does_not);
  tcase_add_test(tc, digests_and_ids_are_well_formed);
  tcase_add_test(tc, partial_uploads_resume_at_their_offset_and_verify_whole);
  tcase_add_test(tc, shards_live_while_their_model_does_and_loose_blobs_for_the_ttl);
  tcase_add_test(tc, abandoned_partials_are_swept_unless_held);
  tcase_add_test(tc, imports_are_verbatim_idempotent_and_refuse_conflicts);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
