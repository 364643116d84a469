/* ts_reader.c — decompd-ts-reader ARCHIVE OUTDIR: read a torch.jit.save
 * archive through the libtorch shim and write what decompd needs of it into
 * OUTDIR, for the parent process (ts_sandbox.c) to open:
 *
 *   OUTDIR/weights.safetensors  every parameter and buffer, state_dict order
 *   OUTDIR/spec.json            the layer spec ({"layers": [...]})
 *
 * Loading runs the archive's own code, and TorchScript can write and read
 * files (torch.save, torch.from_file). So the reader creates its two output
 * files first, then confines itself with Landlock (ts_confine.c: no file
 * created, written or removed anywhere, reads only of system trees and the
 * archive, no TCP, no signals out) before it loads anything; and it is meant
 * to run under memory and time limits (decomp_torchscript_read does that).
 * On failure the last line of stderr is "error: <message>" and the exit
 * status says what kind of failure it was (TS_EXIT_* in ts_exit.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "ts_confine.h"
#include "ts_exit.h"
#include "ts_safetensors.h"
#include "ts_shim.h"

static int exit_for(int ts_status) {
  switch (ts_status) {
  case TS_ERR_LOAD:
    return TS_EXIT_LOAD;
  case TS_ERR_UNSUPPORTED:
    return TS_EXIT_UNSUPPORTED;
  case TS_ERR_NOMEM:
    return TS_EXIT_NOMEM;
  default:
    return TS_EXIT_INTERNAL;
  }
}

static json_t *pair(const int64_t v[2]) {
  return json_pack("[I, I]", (json_int_t)v[0], (json_int_t)v[1]);
}

static json_t *layer_json(const ts_layer *l) {
  json_t *o = json_pack("{s:s, s:s}", "name", l->name, "type", l->type);
  if (o && l->is_linear &&
      (json_object_set_new(o, "in_features", json_integer(l->in_channels)) |
       json_object_set_new(o, "out_features", json_integer(l->out_channels)) |
       json_object_set_new(o, "bias", json_boolean(l->bias)))) {
    json_decref(o);
    return NULL;
  }
  if (!o || !l->is_conv)
    return o;
  json_t *padding = l->padding_kind == DECOMP_PADDING_SAME ? json_string("same")
                    : l->padding_kind == DECOMP_PADDING_VALID
                        ? json_string("valid")
                        : pair(l->padding);
  int bad =
      json_object_set_new(o, "in_channels", json_integer(l->in_channels)) |
      json_object_set_new(o, "out_channels", json_integer(l->out_channels)) |
      json_object_set_new(o, "kernel_size", pair(l->kernel_size)) |
      json_object_set_new(o, "stride", pair(l->stride)) |
      json_object_set_new(o, "padding", padding) |
      json_object_set_new(o, "dilation", pair(l->dilation)) |
      json_object_set_new(o, "groups", json_integer(l->groups)) |
      json_object_set_new(o, "bias", json_boolean(l->bias)) |
      json_object_set_new(o, "padding_mode", json_string(l->padding_mode));
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static int write_spec(const ts_model *m, int fd, const char *what) {
  json_t *layers = json_array();
  json_t *root = json_pack("{s:o}", "layers", layers);
  if (!root)
    return TS_EXIT_NOMEM;
  for (size_t i = 0; i < ts_model_layer_count(m); i++) {
    json_t *l = layer_json(ts_model_layer(m, i));
    if (!l || json_array_append_new(layers, l)) {
      json_decref(root);
      return TS_EXIT_NOMEM;
    }
  }
  int rc = json_dumpfd(root, fd, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(root);
  if (rc != 0) {
    fprintf(stderr, "error: %s: %s\n", what, strerror(errno));
    return TS_EXIT_IO;
  }
  return TS_EXIT_OK;
}

/* Create OUTDIR/name for writing (before the confinement, which forbids
 * creating files). */
static int create_out(const char *outdir, const char *name) {
  char path[4096];
  int n = snprintf(path, sizeof path, "%s/%s", outdir, name);
  if (n < 0 || (size_t)n >= sizeof path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
}

static int tensor_data(void *user, size_t i, const void **data, char *err,
                       size_t errlen) {
  int st = ts_model_tensor_data(user, i, data, err, errlen);
  return st == TS_OK ? 0 : exit_for(st);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: decompd-ts-reader ARCHIVE OUTDIR\n"
                    "error: wrong arguments\n");
    return TS_EXIT_USAGE;
  }
  const char *archive = argv[1], *outdir = argv[2];
  char err[1024] = "";
  int wfd = create_out(outdir, "weights.safetensors");
  int sfd = wfd < 0 ? -1 : create_out(outdir, "spec.json");
  if (wfd < 0 || sfd < 0) {
    fprintf(stderr, "error: %s: %s\n", outdir, strerror(errno));
    return TS_EXIT_IO;
  }
  int abi = ts_confine(archive, err, sizeof err);
  if (abi < 0) {
    fprintf(stderr, "error: cannot confine the reader: %s\n", err);
    return TS_EXIT_INTERNAL;
  }
  if (abi == 0)
    fprintf(stderr, "note: %s\n", err);

  ts_model *m = NULL;
  int st = ts_model_load(archive, &m, err, sizeof err);
  if (st != TS_OK) {
    fprintf(stderr, "error: %s\n", err);
    return exit_for(st);
  }
  for (size_t i = 0; i < ts_model_note_count(m); i++)
    fprintf(stderr, "note: %s\n", ts_model_note(m, i));

  size_t n = ts_model_tensor_count(m);
  ts_st_entry *e = calloc(n ? n : 1, sizeof *e);
  int rc = TS_EXIT_NOMEM;
  if (!e) {
    fprintf(stderr, "error: out of memory\n");
    goto done;
  }
  for (size_t i = 0; i < n; i++) {
    const ts_tensor *t = ts_model_tensor(m, i);
    e[i] = (ts_st_entry){t->name, t->dtype, t->ndim, t->shape, t->nbytes};
  }
  rc = ts_st_write(wfd, "weights.safetensors", e, n, tensor_data, m, err,
                   sizeof err);
  if (rc != 0) {
    fprintf(stderr, "error: %s\n", err);
    rc = rc == TS_ST_ERR_IO      ? TS_EXIT_IO
         : rc == TS_ST_ERR_NOMEM ? TS_EXIT_NOMEM
         : rc < 0                ? TS_EXIT_INTERNAL
                                 : rc;
    goto done;
  }
  rc = write_spec(m, sfd, "spec.json");
  if (rc == TS_EXIT_NOMEM)
    fprintf(stderr, "error: out of memory\n");
  if (rc == TS_EXIT_OK && (close(wfd) != 0 || close(sfd) != 0)) {
    fprintf(stderr, "error: %s: %s\n", outdir, strerror(errno));
    rc = TS_EXIT_IO;
  }
  wfd = sfd = -1;
done:
  if (wfd >= 0)
    close(wfd);
  if (sfd >= 0)
    close(sfd);
  free(e);
  ts_model_free(m);
  return rc;
}
