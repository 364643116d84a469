/* decomp/torchscript.h — TorchScript intake: read a torch.jit.save archive
 * into a weight set and a layer spec, safely.
 *
 * Loading a TorchScript archive runs code the archive carries (the
 * __setstate__ methods of its classes run inside torch.jit.load), so the
 * archive is never loaded in the calling process. decomp_torchscript_read
 * runs the reader program, decompd-ts-reader (built with libtorch when the
 * `torchscript` meson feature is on), in a child process of its own process
 * group, in a private temporary folder, with limits on its address space,
 * CPU time, wall-clock time, open files and output size, no core dumps,
 * stdin from /dev/null and stderr captured for the error message. The reader
 * itself, once its two output files are created, confines itself with
 * Landlock where the kernel has it (no file created, written or removed
 * anywhere; reads only of the archive and the system's library and kernel
 * trees; no TCP; no signals to other processes), because TorchScript code
 * can call torch.save and torch.from_file. A corrupt, broken or hostile
 * archive then fails with DECOMP_ERR_BAD_TORCHSCRIPT; it can neither crash
 * nor hang the caller.
 *
 *   decomp_weights *w;  decomp_spec *spec;
 *   if (decomp_torchscript_read(ctx, "scripted.pt", NULL, &w, &spec) == 0)
 *     decomp_decompose(ctx, w, spec, policy, NULL, &result);
 *
 * The reader is found at limits->reader_path, else at $DECOMPD_TS_READER,
 * else at the path it is installed to (LIBEXECDIR/decompd/decompd-ts-reader,
 * fixed at build time: decomp_torchscript_reader_path()).
 *
 * Thread-safety: decomp_torchscript_read may run on several threads at
 * once (each with its own ctx). It forks; the child only calls
 * async-signal-safe functions before exec. It waits for its own child by
 * pid, so the program must not set SIGCHLD to SIG_IGN. */
#ifndef DECOMP_TORCHSCRIPT_H
#define DECOMP_TORCHSCRIPT_H

#include <stdbool.h>
#include <stdint.h>

#include "decomp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits of one read; zero fields take the defaults. */
typedef struct decomp_ts_limits {
  /* Address-space limit of the reader process (RLIMIT_AS), bytes. Default:
   * 2 GiB (libtorch itself maps about 1 GiB) + 4 × the archive's size, and
   * at least 4 GiB. The same bound caps the size of the files it writes. */
  uint64_t memory_bytes;
  /* Wall-clock limit, seconds; the CPU-time limit is the same. Default 120. */
  double time_seconds;
  /* The reader program; NULL: $DECOMPD_TS_READER, else the installed one. */
  const char *reader_path;
  /* Where the private work folder is made; NULL: $TMPDIR, else /tmp. The
   * folder is always removed before the call returns. */
  const char *tmpdir;
  /* Polled about every 50 ms while the reader runs; returning non-zero
   * kills it and the call fails with DECOMP_ERR_CANCELLED. May be NULL. */
  int (*cancel)(void *user);
  void *cancel_user;
} decomp_ts_limits;

/* Read the TorchScript archive at `archive_path`.
 *
 * On success *out_weights holds every parameter and buffer of the model
 * under its state-dict name, in module.state_dict() order (format
 * DECOMP_FORMAT_TORCHSCRIPT), and *out_spec the layer spec: every module
 * holding parameters of its own, under its first name — torch.nn.Conv2d
 * layers with all their fields (in_channels, out_channels, kernel_size,
 * stride, padding, dilation, groups, bias, padding_mode), other modules with
 * their class name — as python/decompd's layer_spec() gives for the live
 * module. Both work for scripted and traced archives (traced: the conv
 * fields come from the recorded forward graph; see src/torchscript/).
 * `limits` may be NULL (all defaults). Both outputs are the caller's; free
 * them with decomp_weights_free and decomp_spec_free.
 *
 * Failures (message in decomp_errmsg(ctx)):
 *   DECOMP_ERR_TORCHSCRIPT      this build has no TorchScript support, or
 *                               the reader program cannot be found or run;
 *   DECOMP_ERR_BAD_TORCHSCRIPT  the archive failed to load ("TorchScript
 *                               load failed: …"), or the reader exceeded its
 *                               time or memory limit, or crashed;
 *   DECOMP_ERR_UNSUPPORTED_DTYPE a tensor of a dtype decompd cannot hold
 *                               (complex, quantized, sparse);
 *   DECOMP_ERR_CANCELLED, DECOMP_ERR_IO, DECOMP_ERR_NOMEM,
 *   DECOMP_ERR_INVALID_ARGUMENT. */
int decomp_torchscript_read(decomp_ctx *ctx, const char *archive_path,
                            const decomp_ts_limits *limits,
                            decomp_weights **out_weights,
                            decomp_spec **out_spec);

/* Whether this build was made with TorchScript support (the reader program
 * may still be missing at run time). */
bool decomp_torchscript_supported(void);

/* Where the reader is installed (fixed at build time); static string. */
const char *decomp_torchscript_reader_path(void);

#ifdef __cplusplus
}
#endif
#endif
