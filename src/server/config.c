/* config.c — parsing and validating the daemon's settings from the file,
 * the environment and flags (precedence in config.h). Sizes accept K, M, G,
 * T (powers of 1024) suffixes: max_upload_bytes = 4G. */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

const config_key CONFIG_KEYS[] = {
    {"data_dir", "folder of the blobs and the database (./var)"},
    {"blobs", "where blobs live: file:PATH, a folder the nodes may share, "
              "or s3://BUCKET/PREFIX (file:DATA_DIR/blobs)"},
    {"s3_endpoint", "S3-compatible object store URL for blobs = s3://… "
                    "(https://s3.REGION.amazonaws.com)"},
    {"s3_region", "its signing region (us-east-1)"},
    {"s3_access_key_id", "its access key ($AWS_ACCESS_KEY_ID)"},
    {"s3_secret_access_key", "its secret key ($AWS_SECRET_ACCESS_KEY)"},
    {"listen", "HOST:PORT to serve on (127.0.0.1:8080; port 0: any free)"},
    {"max_upload_bytes", "largest accepted upload, e.g. 4G (4G)"},
    {"max_json_bytes", "largest accepted JSON body (16M)"},
    {"upload_ttl", "seconds an abandoned partial upload or unbound shard "
                   "blob is kept (86400)"},
    {"shard_bytes", "output shard size for sharded models' jobs (5000000000)"},
    {"workers", "decomposition worker threads (0: one per core)"},
    {"blas_threads", "cores each job may use (0: cores / workers)"},
    {"http_threads", "HTTP thread pool size (4)"},
    {"max_connections", "open connections at most (1024)"},
    {"connection_timeout", "seconds an idle connection is kept (60)"},
    {"index", "where jobs and the index live: sqlite (in data_dir) or a "
              "postgresql:// URI shared by several daemons (sqlite)"},
    {"node_id", "this daemon's name among those sharing a PostgreSQL index "
                "(the host name)"},
    {"lease_seconds", "seconds a node's claim on a job lasts without its "
                      "heartbeat (30; PostgreSQL)"},
    {"spread_jobs", "spread each job's layers as tasks over every node's "
                    "workers: yes or no (yes; PostgreSQL)"},
    {"log_level", "error, warn, info or debug (info)"},
    {"torchscript_timeout",
     "seconds a job's TorchScript reader may run (120)"},
    {"torchscript_memory",
     "TorchScript reader's memory limit (0: 2G + 4 x archive, >= 4G)"},
    {NULL, NULL},
};

void config_defaults(config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->data_dir, sizeof c->data_dir, "./var");
  snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
  c->listen_port = 8080;
  c->max_upload_bytes = (int64_t)4 << 30;
  c->max_json_bytes = (int64_t)16 << 20;
  c->http_threads = 4;
  c->max_connections = 1024;
  c->connection_timeout = 60;
  c->log_level = LOG_INFO;
  c->torchscript_timeout = 120;
  c->torchscript_memory = 0;
  c->upload_ttl = 86400;
  c->shard_bytes = 5000000000;
  snprintf(c->index, sizeof c->index, "sqlite");
  c->lease_seconds = 30;
  c->spread_jobs = true;
}

static int parse_size(const char *v, int64_t *out) {
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || end == v || n < 0)
    return -1;
  int shift = 0;
  switch (toupper((unsigned char)*end)) {
  case 'K': shift = 10; end++; break;
  case 'M': shift = 20; end++; break;
  case 'G': shift = 30; end++; break;
  case 'T': shift = 40; end++; break;
  default: break;
  }
  if (*end == 'i' || *end == 'B')
    end++;
  if (*end == 'B')
    end++;
  if (*end || (shift && n > (INT64_MAX >> shift)))
    return -1;
  *out = (int64_t)n << shift;
  return 0;
}

static int parse_int(const char *v, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || end == v || *end || n < lo || n > hi)
    return -1;
  *out = (int)n;
  return 0;
}

static int parse_listen(config *c, const char *v) {
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v)
    return -1;
  size_t hl = (size_t)(colon - v);
  if (v[0] == '[' && colon[-1] == ']') { /* [::1]:8080 */
    v++;
    hl -= 2;
  }
  int port;
  if (hl >= sizeof c->listen_host || parse_int(colon + 1, 0, 65535, &port))
    return -1;
  memcpy(c->listen_host, v, hl);
  c->listen_host[hl] = '\0';
  c->listen_port = port;
  return 0;
}

int config_set(config *c, const char *key, const char *value, char *err,
               size_t errlen) {
  int bad = 0;
  if (strcmp(key, "data_dir") == 0) {
    if (!*value || strlen(value) >= sizeof c->data_dir)
      bad = 1;
    else
      snprintf(c->data_dir, sizeof c->data_dir, "%s", value);
  } else if (strcmp(key, "blobs") == 0) {
    bool file = strncmp(value, "file:", 5) == 0 && value[5];
    bool s3 = strncmp(value, "s3://", 5) == 0 && value[5] && value[5] != '/';
    if ((!file && !s3) || strlen(value) >= sizeof c->blobs)
      bad = 1;
    else
      snprintf(c->blobs, sizeof c->blobs, "%s", value);
  } else if (strcmp(key, "s3_endpoint") == 0) {
    bad = (strncmp(value, "http://", 7) != 0 &&
           strncmp(value, "https://", 8) != 0) ||
          strlen(value) >= sizeof c->s3_endpoint;
    if (!bad)
      snprintf(c->s3_endpoint, sizeof c->s3_endpoint, "%s", value);
  } else if (strcmp(key, "s3_region") == 0) {
    bad = !*value || strlen(value) >= sizeof c->s3_region;
    if (!bad)
      snprintf(c->s3_region, sizeof c->s3_region, "%s", value);
  } else if (strcmp(key, "s3_access_key_id") == 0) {
    bad = !*value || strlen(value) >= sizeof c->s3_access_key_id;
    if (!bad)
      snprintf(c->s3_access_key_id, sizeof c->s3_access_key_id, "%s", value);
  } else if (strcmp(key, "s3_secret_access_key") == 0) {
    bad = !*value || strlen(value) >= sizeof c->s3_secret_access_key;
    if (!bad)
      snprintf(c->s3_secret_access_key, sizeof c->s3_secret_access_key, "%s",
               value);
  } else if (strcmp(key, "listen") == 0) {
    bad = parse_listen(c, value);
  } else if (strcmp(key, "max_upload_bytes") == 0) {
    bad = parse_size(value, &c->max_upload_bytes) || c->max_upload_bytes < 1;
  } else if (strcmp(key, "max_json_bytes") == 0) {
    bad = parse_size(value, &c->max_json_bytes) || c->max_json_bytes < 1024;
  } else if (strcmp(key, "workers") == 0) {
    bad = parse_int(value, 0, 1024, &c->workers);
  } else if (strcmp(key, "blas_threads") == 0) {
    bad = parse_int(value, 0, 1024, &c->blas_threads);
  } else if (strcmp(key, "http_threads") == 0) {
    bad = parse_int(value, 0, 1024, &c->http_threads);
  } else if (strcmp(key, "max_connections") == 0) {
    bad = parse_int(value, 1, 1000000, &c->max_connections);
  } else if (strcmp(key, "connection_timeout") == 0) {
    bad = parse_int(value, 1, 86400, &c->connection_timeout);
  } else if (strcmp(key, "torchscript_timeout") == 0) {
    bad = parse_int(value, 1, 86400, &c->torchscript_timeout);
  } else if (strcmp(key, "torchscript_memory") == 0) {
    /* 0: the library's default; otherwise at least 64 MiB */
    bad = parse_size(value, &c->torchscript_memory) ||
          (c->torchscript_memory != 0 && c->torchscript_memory < (64 << 20));
  } else if (strcmp(key, "upload_ttl") == 0) {
    bad = parse_int(value, 1, 365 * 86400, &c->upload_ttl);
  } else if (strcmp(key, "shard_bytes") == 0) {
    bad = parse_size(value, &c->shard_bytes) || c->shard_bytes < 1;
  } else if (strcmp(key, "index") == 0) {
    /* the password a URI may hold is never echoed: not in this message */
    bool ok = strcmp(value, "sqlite") == 0 ||
              strncmp(value, "postgresql://", 13) == 0 ||
              strncmp(value, "postgres://", 11) == 0;
    if (!ok || strlen(value) >= sizeof c->index) {
      snprintf(err, errlen,
               "bad value for index: 'sqlite' or a postgresql:// URI");
      return -1;
    }
    snprintf(c->index, sizeof c->index, "%s", value);
  } else if (strcmp(key, "node_id") == 0) {
    size_t n = strlen(value);
    bad = n == 0 || n >= sizeof c->node_id ||
          strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                        "0123456789._-") != n ||
          strcmp(value, ".") == 0 || strcmp(value, "..") == 0;
    if (!bad)
      snprintf(c->node_id, sizeof c->node_id, "%s", value);
  } else if (strcmp(key, "lease_seconds") == 0) {
    bad = parse_int(value, 1, 3600, &c->lease_seconds);
  } else if (strcmp(key, "spread_jobs") == 0) {
    bool yes = strcmp(value, "yes") == 0 || strcmp(value, "true") == 0;
    bad = !yes && strcmp(value, "no") != 0 && strcmp(value, "false") != 0;
    c->spread_jobs = yes;
  } else if (strcmp(key, "log_level") == 0) {
    c->log_level = log_level_from_name(value);
    bad = c->log_level < 0;
  } else {
    snprintf(err, errlen, "unknown setting '%s'", key);
    return -1;
  }
  if (bad) {
    /* a secret is never echoed */
    snprintf(err, errlen, "bad value for %s: '%s'", key,
             strstr(key, "secret") ? "…" : value);
    return -1;
  }
  return 0;
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1]))
    *--e = '\0';
  return s;
}

int config_load_file(config *c, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  char line[4096];
  int lineno = 0, rc = 0;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    char *s = trim(line);
    if (!*s || *s == '#')
      continue;
    char *eq = strchr(s, '=');
    if (!eq) {
      snprintf(err, errlen, "%s:%d: expected key = value", path, lineno);
      rc = -1;
      break;
    }
    *eq = '\0';
    char *key = trim(s), *val = trim(eq + 1);
    size_t vl = strlen(val);
    if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
      val[vl - 1] = '\0';
      val++;
    }
    char e2[512];
    if (config_set(c, key, val, e2, sizeof e2) != 0) {
      snprintf(err, errlen, "%s:%d: %s", path, lineno, e2);
      rc = -1;
    }
  }
  fclose(f);
  return rc;
}

int config_load_env(config *c, char *err, size_t errlen) {
  for (const config_key *k = CONFIG_KEYS; k->name; k++) {
    char env[64] = "DECOMPD_";
    size_t o = strlen(env);
    for (const char *p = k->name; *p && o < sizeof env - 1; p++)
      env[o++] = (char)toupper((unsigned char)*p);
    env[o] = '\0';
    const char *v = getenv(env);
    if (!v)
      continue;
    char e2[512];
    if (config_set(c, k->name, v, e2, sizeof e2) != 0) {
      snprintf(err, errlen, "%s: %s", env, e2);
      return -1;
    }
  }
  return 0;
}
