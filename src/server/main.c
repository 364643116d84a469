/* main.c — the decompd program: settings, the `serve` lifecycle (store,
 * workers, HTTP, signals), and the admin verbs (`token`, `--routes`).
 *
 * SIGCHLD keeps its default disposition: the TorchScript reader's child
 * process is waited for by pid (decomp/torchscript.h), which SIG_IGN would
 * break.
 *
 * Shutdown on SIGTERM/SIGINT: stop accepting and close connections, stop
 * the workers (a running job is requeued at its next engine progress
 * report: a layer boundary, or inside a long layer within a second), close
 * the store (the WAL is checkpointed), exit 0. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "backend.h"
#include "config.h"
#include "decomp/decomp.h"
#include "decomp/torchscript.h"
#include "http.h"
#include "node.h"
#include "service.h"
#include "log.h"
#include "migrate.h"
#include "text.h"
#include "worker.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: decompd [serve] [--config FILE] [--data-dir DIR] "
          "[--listen HOST:PORT] [--SETTING VALUE]...\n"
          "       decompd token create --role read|submit|admin --name NAME "
          "[--data-dir DIR]\n"
          "       decompd token list [--data-dir DIR]\n"
          "       decompd token revoke --name NAME [--data-dir DIR]\n"
          "       decompd store migrate --from SRC_DATA_DIR [--from-blobs "
          "BLOBS] [--SETTING VALUE]...\n"
          "                (copy an embedded install into the store the "
          "settings name)\n"
          "       decompd check [--config FILE] [--SETTING VALUE]...  (check "
          "the settings, serve nothing)\n"
          "       decompd --routes | --version | --help\n"
          "\n"
          "Serves the decompd REST API (api/openapi.yaml): weight uploads, "
          "decomposition\njobs on a worker pool, artifact downloads. With "
          "no arguments it serves on\n127.0.0.1:8080 from ./var.\n"
          "\n"
          "Settings (lowest to highest precedence: defaults, --config FILE "
          "or\nDECOMPD_CONFIG, DECOMPD_<SETTING> environment variables, "
          "flags; a flag is\nthe setting with '-' for '_', e.g. "
          "--max-upload-bytes 1G):\n");
  for (const config_key *k = CONFIG_KEYS; k->name; k++) {
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", k->name);
    for (char *p = flag + 2; *p; p++)
      if (*p == '_')
        *p = '-';
    fprintf(f, "  %-22s %s\n", flag, k->help);
  }
  fprintf(f,
          "\n"
          "Auth: once a token exists (decompd token create), every route but "
          "/healthz\nand /readyz needs 'Authorization: Bearer TOKEN' with a "
          "role of at least\nthe route's (read < submit < admin; "
          "decompd --routes lists them).\n"
          "\n"
          "store migrate: copies the embedded store in SRC_DATA_DIR (its "
          "SQLite index and\nblob folder, or the blobs --from-blobs names) "
          "into the store the settings\nname (--index postgresql://..., "
          "--blobs s3://...|file:..., --data-dir for this\nnode's own "
          "folder): every model, job (queued or running ones go in "
          "queued),\nartifact and token, with the same ids. Each blob is "
          "hashed again on its way in\n(one that is not its digest stops "
          "it, naming it); a blob the destination has\n(checked by "
          "existence and size) is not copied again. Stop the daemon "
          "serving\nSRC_DATA_DIR first. Cut short, run it again: it goes on "
          "where it stopped; exit\nstatus 0 once everything is there.\n");
}

/* Settings from the file, the environment and the flags; `rest` gets the
 * arguments that are not settings (verbs and their options). */
static int load_config(config *c, int argc, char **argv, char **rest,
                       int *nrest) {
  char err[1024];
  config_defaults(c);
  const char *file = getenv("DECOMPD_CONFIG");
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
      file = argv[i + 1];
  if (file && config_load_file(c, file, err, sizeof err) != 0)
    goto fail;
  if (config_load_env(c, err, sizeof err) != 0)
    goto fail;
  *nrest = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--config") == 0) {
      i++;
      continue;
    }
    char key[64] = "";
    if (strncmp(a, "--", 2) == 0 && strlen(a) < sizeof key + 2) {
      snprintf(key, sizeof key, "%s", a + 2);
      for (char *p = key; *p; p++)
        if (*p == '-')
          *p = '_';
    }
    bool is_setting = false;
    for (const config_key *k = CONFIG_KEYS; k->name && key[0]; k++)
      is_setting = is_setting || strcmp(k->name, key) == 0;
    if (is_setting) {
      if (i + 1 >= argc) {
        snprintf(err, sizeof err, "%s needs a value", a);
        goto fail;
      }
      if (config_set(c, key, argv[++i], err, sizeof err) != 0)
        goto fail;
      continue;
    }
    rest[(*nrest)++] = argv[i];
  }
  log_set_level(c->log_level);
  return 0;
fail:
  fprintf(stderr, "decompd: %s\n", err);
  return -1;
}

static const char *opt(char **rest, int n, const char *name) {
  for (int i = 0; i + 1 < n; i++)
    if (strcmp(rest[i], name) == 0)
      return rest[i + 1];
  return NULL;
}

/* The store the settings name: the index's backend, the blobs' place. */
static int open_store(const config *c, bool owner, store **s, int *requeued) {
  const store_options o = {.data_dir = c->data_dir,
                           .owner = owner,
                           .index = c->index,
                           .node_id = c->node_id,
                           .lease_seconds = c->lease_seconds,
                           .blobs = c->blobs,
                           .s3_endpoint = c->s3_endpoint,
                           .s3_region = c->s3_region,
                           .s3_access_key = c->s3_access_key_id,
                           .s3_secret_key = c->s3_secret_access_key};
  return store_open_with(&o, s, requeued);
}

static int cmd_token(const config *c, char **rest, int n) {
  const char *verb = n > 1 ? rest[1] : "";
  store *s = NULL;
  int rc = open_store(c, false, &s, NULL);
  if (rc != DECOMP_OK) {
    fprintf(stderr, "decompd: %s\n", store_errmsg());
    return 1;
  }
  int status = 0;
  if (strcmp(verb, "create") == 0) {
    const char *role = opt(rest, n, "--role"), *name = opt(rest, n, "--name");
    int r = role ? store_role_from_name(role) : -1;
    char token[96];
    const char *why = NULL;
    if (r < 0 || !name || !*name) {
      fprintf(stderr, "decompd: token create needs --role read|submit|admin "
                      "and --name NAME\n");
      status = 2;
    } else if (!text_label_ok(name, &why)) {
      /* The name is echoed in answers (403 details) and logs. */
      fprintf(stderr, "decompd: the token name %s (at most 255 bytes of "
                      "UTF-8, no control characters)\n", why);
      status = 2;
    } else if ((rc = auth_token_create(s, name, r, token, sizeof token)) !=
               DECOMP_OK) {
      fprintf(stderr, "decompd: %s\n", store_errmsg());
      status = 1;
    } else {
      printf("%s\n", token);
      fprintf(stderr, "decompd: token '%s' (%s) created; it is shown only "
                      "once\n", name, role);
    }
  } else if (strcmp(verb, "list") == 0) {
    store_token *v = NULL;
    size_t cnt = 0;
    if (store_token_list(s, &v, &cnt) != DECOMP_OK) {
      fprintf(stderr, "decompd: %s\n", store_errmsg());
      status = 1;
    }
    for (size_t i = 0; i < cnt; i++)
      printf("%s\t%s\t%s\n", v[i].id, store_role_name(v[i].role), v[i].name);
    free(v);
  } else if (strcmp(verb, "revoke") == 0) {
    const char *name = opt(rest, n, "--name");
    if (!name) {
      fprintf(stderr, "decompd: token revoke needs --name NAME\n");
      status = 2;
    } else if (store_token_delete(s, name) != DECOMP_OK) {
      fprintf(stderr, "decompd: %s\n", store_errmsg());
      status = 1;
    }
  } else {
    usage(stderr);
    status = 2;
  }
  store_close(s);
  return status;
}

/* Progress of a migration on stderr: a line per row and blob handled
 * (and every 64 MiB of a long blob), and a summary at the end. */
static void migrate_report(const store_migrate_stats *st, bool final,
                           void *arg) {
  (void)arg;
  fprintf(stderr,
          "decompd: migrate: %smodels %zu/%zu, jobs %zu/%zu, tokens "
          "%zu/%zu, blobs %zu/%zu (%zu copied, %zu there already), %.1f of "
          "%.1f MiB copied; new: %zu models, %zu jobs, %zu tokens\n",
          final ? "done: " : "", st->models_done, st->models_total,
          st->jobs_done, st->jobs_total, st->tokens_done, st->tokens_total,
          st->blobs_done, st->blobs_total, st->blobs_copied,
          st->blobs_present, (double)st->bytes_copied / 1048576.0,
          (double)st->bytes_total / 1048576.0, st->models_new, st->jobs_new,
          st->tokens_new);
}

/* The same folder, resolved; false when either is missing. */
static bool same_dir(const char *a, const char *b) {
  char ra[4096], rb[4096];
  return realpath(a, ra) && realpath(b, rb) && strcmp(ra, rb) == 0;
}

static int cmd_store(const config *c, char **rest, int n) {
  const char *verb = n > 1 ? rest[1] : "";
  if (strcmp(verb, "migrate") != 0) {
    usage(stderr);
    return 2;
  }
  const char *from = opt(rest, n, "--from");
  const char *from_blobs = opt(rest, n, "--from-blobs");
  for (int i = 2; i < n; i++) {
    if ((strcmp(rest[i], "--from") == 0 ||
         strcmp(rest[i], "--from-blobs") == 0) &&
        i + 1 < n) {
      i++;
      continue;
    }
    fprintf(stderr, "decompd: store migrate: unknown argument '%s'\n",
            rest[i]);
    return 2;
  }
  if (!from || !from[0]) {
    fprintf(stderr, "decompd: store migrate needs --from SRC_DATA_DIR (the "
                    "embedded store to copy)\n");
    return 2;
  }
  const store_backend *dbe = store_backend_for_index(c->index);
  if (dbe == &store_backend_sqlite && same_dir(from, c->data_dir)) {
    fprintf(stderr,
            "decompd: store migrate: the destination is the source (%s): "
            "name the destination with --index postgresql://... or another "
            "--data-dir\n",
            from);
    return 2;
  }
  store *src = NULL, *dst = NULL;
  int lock_fd = -1, status = 1;
  int64_t t0 = store_now_ms();
  if (store_migrate_open_source(from, from_blobs, &src, &lock_fd) !=
      DECOMP_OK) {
    fprintf(stderr, "decompd: store migrate: %s\n", store_errmsg());
    goto out;
  }
  if (open_store(c, false, &dst, NULL) != DECOMP_OK) {
    fprintf(stderr, "decompd: store migrate: destination: %s\n",
            store_errmsg());
    goto out;
  }
  store_migrate_stats st;
  if (store_migrate(src, dst, migrate_report, NULL, &st) != DECOMP_OK) {
    fprintf(stderr,
            "decompd: store migrate: %s\ndecompd: store migrate: stopped "
            "after models %zu/%zu, jobs %zu/%zu, tokens %zu/%zu; run it "
            "again to go on\n",
            store_errmsg(), st.models_done, st.models_total, st.jobs_done,
            st.jobs_total, st.tokens_done, st.tokens_total);
    goto out;
  }
  fprintf(stderr, "decompd: store migrate: everything is in %s (%s), in %.1f s\n",
          store_backend_of(dst)->name,
          c->blobs[0] ? c->blobs : "file:DATA_DIR/blobs",
          (double)(store_now_ms() - t0) / 1000.0);
  status = 0;
out:
  store_close(dst);
  store_migrate_close_source(src, lock_fd);
  return status;
}

static int serve(const config *c) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  /* Block before any thread starts so that only sigwait() below sees them. */
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  store *s = NULL;
  worker_pool *pool = NULL;
  http_server *h = NULL;
  service *sv = NULL;
  node_beat *beat = NULL;
  int requeued = 0, port = 0, status = 1;
  int rc = open_store(c, true, &s, &requeued);
  if (rc != DECOMP_OK) {
    LOG(LOG_ERROR, "main", NULL, "event=store_open_failed code=%s error=%s",
        decomp_error_code(rc), log_q(store_errmsg()));
    goto out;
  }
  LOG(LOG_INFO, "main", NULL,
      "event=store_open data_dir=%s index=%s blobs=%s schema_version=%d "
      "requeued=%d reserve=%s",
      log_q(c->data_dir), store_backend_of(s)->name,
      log_q(c->blobs[0] ? c->blobs : "file:DATA_DIR/blobs"),
      store_schema_version(s), requeued, store_reserve_ok(s) ? "yes" : "no");
  /* What abandoned resumable uploads left (and uploaded shards no model
   * bound) over upload_ttl; PUT /v1/blobs sweeps again as it goes. */
  int swept_partials = 0, swept_blobs = 0;
  if (store_uploads_sweep(s, (int64_t)c->upload_ttl * 1000, &swept_partials,
                          &swept_blobs) != DECOMP_OK)
    LOG(LOG_WARN, "main", NULL, "event=upload_sweep_failed error=%s",
        log_q(store_errmsg()));
  else if (swept_partials || swept_blobs)
    LOG(LOG_INFO, "main", NULL,
        "event=upload_sweep partials=%d blobs=%d ttl=%d", swept_partials,
        swept_blobs, c->upload_ttl);
  worker_ts_limits ts = {.time_seconds = c->torchscript_timeout,
                         .memory_bytes = (uint64_t)c->torchscript_memory};
  if ((rc = worker_pool_start(s, c->workers, c->blas_threads, &ts, &pool)) !=
      DECOMP_OK)
    goto out;
  worker_pool_set_shard_bytes(pool, (uint64_t)c->shard_bytes);
  worker_pool_set_spread(pool, c->spread_jobs);
  if (decomp_torchscript_supported()) {
    const char *reader = worker_ts_reader();
    LOG(LOG_INFO, "main", NULL,
        "event=torchscript supported=yes reader=%s available=%s "
        "timeout=%d memory=%lld",
        log_q(reader), access(reader, X_OK) == 0 ? "yes" : "no",
        c->torchscript_timeout, (long long)c->torchscript_memory);
  } else {
    LOG(LOG_INFO, "main", NULL, "event=torchscript supported=no");
  }
  if ((rc = service_new(s, c, &sv)) != DECOMP_OK ||
      (rc = http_start(c, sv, &h, &port)) != DECOMP_OK)
    goto out;
  char node_id[128], address[300];
  const store_options no = {.node_id = c->node_id};
  store_node_name(&no, node_id, sizeof node_id);
  snprintf(address, sizeof address, "%s:%d", c->listen_host, port);
  if ((rc = node_start(s, node_id, address, pool, &beat)) != DECOMP_OK)
    goto out;
  LOG(LOG_INFO, "main", NULL,
      "event=listening addr=%s:%d version=" DECOMP_VERSION
      " max_upload_bytes=%lld",
      c->listen_host, port, (long long)c->max_upload_bytes);

  int sig = 0;
  sigwait(&set, &sig);
  LOG(LOG_INFO, "main", NULL, "event=stopping signal=%s",
      sig == SIGTERM ? "TERM" : "INT");
  status = 0;
out:
  http_stop(h);
  service_free(sv);
  node_stop(beat);
  worker_pool_stop(pool);
  store_close(s);
  LOG(LOG_INFO, "main", NULL, "event=stopped status=%d", status);
  return status;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(argv[i], "--version") == 0) {
      printf("decompd " DECOMP_VERSION "\n");
      return 0;
    }
    if (strcmp(argv[i], "--routes") == 0) {
      for (const http_route *r = HTTP_ROUTES; r->method; r++)
        printf("%s %s %s\n", r->method, r->pattern,
               store_role_name(r->role));
      return 0;
    }
  }
  config c;
  char **rest = calloc((size_t)argc + 1, sizeof *rest);
  int nrest = 0;
  if (!rest || load_config(&c, argc, argv, rest, &nrest) != 0) {
    free(rest);
    return 2;
  }
  int status;
  if (nrest > 0 && strcmp(rest[0], "token") == 0) {
    status = cmd_token(&c, rest, nrest);
  } else if (nrest > 0 && strcmp(rest[0], "store") == 0) {
    status = cmd_store(&c, rest, nrest);
  } else if (nrest == 1 && strcmp(rest[0], "check") == 0) {
    /* every setting was parsed and checked above; the servers named
     * (PostgreSQL, the object store) are not contacted */
    printf("decompd: settings ok: data_dir=%s index=%s blobs=%s\n",
           c.data_dir, c.index[0] ? c.index : "sqlite",
           c.blobs[0] ? c.blobs : "file:DATA_DIR/blobs");
    status = 0;
  } else if (nrest == 0 || (nrest == 1 && strcmp(rest[0], "serve") == 0)) {
    status = serve(&c);
  } else {
    fprintf(stderr, "decompd: unknown argument '%s'\n", rest[0]);
    usage(stderr);
    status = 2;
  }
  free(rest);
  return status;
}
