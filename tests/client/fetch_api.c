/* fetch_api.c — libdecompclient's fetch calls driven from C, for
 * test_fetch_many.py: `fetch_api URL CACHE JOB MODE [PARALLEL]` prints one
 * JSON line: the call's code and message, the files, and what the progress
 * callback saw (how often, whether always on the calling thread, and the
 * call's last totals). MODE "fixed" calls decomp_client_fetch (its fixed
 * array), "with" decomp_client_fetch_with. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decomp/client.h"

struct seen {
  pthread_t caller;
  long calls;
  bool other_thread;
  decomp_client_progress last;
};

static int on_progress(void *user, const decomp_client_progress *p) {
  struct seen *s = user;
  s->calls++;
  if (!pthread_equal(pthread_self(), s->caller))
    s->other_thread = true;
  s->last = *p;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 5)
    return 2;
  decomp_client *c;
  if (decomp_client_new(argv[1], "", &c) != DECOMP_OK ||
      decomp_client_set_cache_dir(c, argv[2]) != DECOMP_OK)
    return 2;
  struct seen s = {.caller = pthread_self()};
  decomp_client_set_progress(c, on_progress, &s);
  decomp_client_file fixed[DECOMP_CLIENT_MAX_ARTIFACTS], *files = fixed;
  size_t n = 0;
  int rc;
  if (strcmp(argv[4], "fixed") == 0) {
    rc = decomp_client_fetch(c, argv[3], NULL, NULL, fixed, &n);
  } else {
    decomp_client_fetch_options o = {0};
    o.parallel = argc > 5 ? atoi(argv[5]) : 0;
    rc = decomp_client_fetch_with(c, argv[3], &o, &files, &n);
  }
  printf("{\"rc\": %d, \"message\": \"", rc);
  for (const char *m = decomp_client_errmsg(c); *m; m++)
    if (*m == '"' || *m == '\\')
      printf("\\%c", *m);
    else if ((unsigned char)*m >= 0x20)
      putchar(*m);
  printf("\", \"files\": [");
  for (size_t i = 0; i < n; i++)
    printf("%s[\"%s\", \"%s\"]", i ? ", " : "", files[i].name, files[i].path);
  printf("], \"progress_calls\": %ld, \"other_thread\": %s, "
         "\"files_done\": %zu, \"files_total\": %zu, \"all_done\": %lld, "
         "\"all_total\": %lld}\n",
         s.calls, s.other_thread ? "true" : "false", s.last.files_done,
         s.last.files_total, (long long)s.last.all_done,
         (long long)s.last.all_total);
  if (files != fixed)
    decomp_client_file_list_free(files);
  decomp_client_free(c);
  return 0;
}
