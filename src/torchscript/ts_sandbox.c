/* ts_sandbox.c — decomp_torchscript_read (decomp/torchscript.h): run
 * decompd-ts-reader on an archive in a child process with limits, and open
 * what it wrote.
 *
 * A TorchScript archive runs its own code while it loads, so the caller's
 * process never loads one. The child gets its own process group (so a kill
 * reaches anything it starts), RLIMIT_AS / RLIMIT_CPU / RLIMIT_FSIZE /
 * RLIMIT_NOFILE / RLIMIT_CORE=0, a minimal environment (one thread per pool,
 * few malloc arenas, so the address-space limit measures the model and not
 * the thread count), stdin and stdout on /dev/null, stderr on a pipe the
 * parent reads (keeping the last 16 KiB), every other descriptor closed, and
 * PR_SET_PDEATHSIG so it dies with the parent. The parent waits with a
 * wall-clock deadline and kills the whole group when it passes. The work
 * folder (mkdtemp) is removed on every path; the weights stay readable
 * because they are mapped before the file is unlinked.
 *
 * Plain C: no libtorch here. Built in every configuration; without the
 * `torchscript` feature it only reports that the build cannot read
 * TorchScript. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "decomp/decomp.h"
#include "decomp/torchscript.h"
#include "ts_exit.h"

#ifndef DECOMP_TS_READER_PATH
#define DECOMP_TS_READER_PATH "/usr/local/libexec/decompd/decompd-ts-reader"
#endif

#define TS_GIB             ((uint64_t)1 << 30)
#define TS_DEFAULT_SECONDS 120.0
#define TS_STDERR_KEEP     16384 /* bytes of the reader's stderr kept */
#define TS_SPEC_MAX        ((size_t)64 << 20) /* largest spec.json accepted */
#define TS_NOFILE          64
#define TS_POLL_MS         50

bool decomp_torchscript_supported(void) {
#ifdef DECOMP_HAVE_TORCHSCRIPT
  return true;
#else
  return false;
#endif
}

const char *decomp_torchscript_reader_path(void) {
  return DECOMP_TS_READER_PATH;
}

#ifdef DECOMP_HAVE_TORCHSCRIPT

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The last TS_STDERR_KEEP bytes of the reader's stderr. */
typedef struct tail_buf {
  char data[TS_STDERR_KEEP];
  size_t len;
} tail_buf;

static void tail_add(tail_buf *t, const char *p, size_t n) {
  if (n > sizeof t->data) {
    p += n - sizeof t->data;
    n = sizeof t->data;
  }
  if (t->len + n > sizeof t->data) {
    size_t drop = t->len + n - sizeof t->data;
    memmove(t->data, t->data + drop, t->len - drop);
    t->len -= drop;
  }
  memcpy(t->data + t->len, p, n);
  t->len += n;
}

/* The reader's message: its last "error: " line, else its last non-empty
 * line, control characters replaced, at most `cap` bytes. */
static void tail_message(const tail_buf *t, char *out, size_t cap) {
  const char *best = NULL, *last = NULL;
  size_t best_len = 0, last_len = 0;
  size_t i = 0;
  while (i < t->len) {
    size_t j = i;
    while (j < t->len && t->data[j] != '\n')
      j++;
    const char *line = t->data + i;
    size_t len = j - i;
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
      len--;
    if (len) {
      last = line;
      last_len = len;
      if (len > 7 && memcmp(line, "error: ", 7) == 0) {
        best = line + 7;
        best_len = len - 7;
      }
    }
    i = j + 1;
  }
  if (!best) {
    best = last;
    best_len = last_len;
  }
  size_t k = 0;
  for (size_t m = 0; best && m < best_len && k + 1 < cap; m++) {
    unsigned char c = (unsigned char)best[m];
    out[k++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
  }
  out[k] = '\0';
  if (k == 0)
    snprintf(out, cap, "no message");
}

static bool tail_has(const tail_buf *t, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= t->len; i++)
    if (memcmp(t->data + i, needle, n) == 0)
      return true;
  return false;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)ftw;
  if (flag == FTW_DP)
    rmdir(path);
  else
    unlink(path);
  return 0;
}

static void remove_tree(const char *dir) {
  if (dir && dir[0])
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/* What the child needs, all prepared before fork so that the child only
 * calls async-signal-safe functions. */
typedef struct child_plan {
  const char *reader;
  char *const *argv;
  char *const *envp;
  const char *workdir;
  int devnull, err_w, exec_w;
  int max_fd; /* close everything from 4 up to this */
  struct rlimit as, cpu, fsize, nofile, core;
  pid_t parent;
} child_plan;

static void child_fail(int exec_w, int err) {
  ssize_t r = write(exec_w, &err, sizeof err);
  (void)r;
  _exit(127);
}

static void child_run(const child_plan *p) {
  setpgid(0, 0);
#ifdef __linux__
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != p->parent)
    _exit(127);
#endif
  /* Signals the parent ignores stay ignored across exec: restore them. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; s++)
    if (s != SIGKILL && s != SIGSTOP)
      sigaction(s, &dfl, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);

  /* 0/1 /dev/null; 2 the stderr pipe; 3 the exec-error pipe (close-on-
   * exec); nothing else survives. Moved out of the way first, since any of
   * them may sit on 0..3 already. */
  int dn = fcntl(p->devnull, F_DUPFD_CLOEXEC, 10);
  int ew = fcntl(p->err_w, F_DUPFD_CLOEXEC, 10);
  int xw = fcntl(p->exec_w, F_DUPFD_CLOEXEC, 10);
  if (dn < 0 || ew < 0 || xw < 0 || dup3(xw, 3, O_CLOEXEC) < 0)
    _exit(127);
  if (dup2(dn, 0) < 0 || dup2(dn, 1) < 0 || dup2(ew, 2) < 0)
    child_fail(3, errno);
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
#endif
    for (int fd = 4; fd <= p->max_fd; fd++)
      close(fd);
  if (chdir(p->workdir) != 0)
    child_fail(3, errno);
  umask(077);
  if (setrlimit(RLIMIT_AS, &p->as) != 0 ||
      setrlimit(RLIMIT_CPU, &p->cpu) != 0 ||
      setrlimit(RLIMIT_FSIZE, &p->fsize) != 0 ||
      setrlimit(RLIMIT_NOFILE, &p->nofile) != 0 ||
      setrlimit(RLIMIT_CORE, &p->core) != 0)
    child_fail(3, errno);
  execve(p->reader, p->argv, p->envp);
  child_fail(3, errno);
}

/* Read all of a small file (at most `max` bytes). */
static int read_small(decomp_ctx *ctx, const char *path, size_t max, char **out,
                      size_t *out_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    return decomp_ctx_fail(ctx, DECOMP_ERR_IO, "TorchScript reader output %s: %s",
                     path, strerror(e));
  }
  if (st.st_size < 0 || (uint64_t)st.st_size > max) {
    close(fd);
    return decomp_ctx_fail(ctx, DECOMP_ERR_TOO_LARGE,
                     "TorchScript reader output %s: over %zu bytes", path, max);
  }
  size_t len = (size_t)st.st_size, got = 0;
  char *buf = malloc(len + 1);
  if (!buf) {
    close(fd);
    return decomp_ctx_fail(ctx, DECOMP_ERR_NOMEM, "out of memory reading %s", path);
  }
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  *out_len = got;
  return DECOMP_OK;
}

static const char *default_tmpdir(const decomp_ts_limits *lim) {
  if (lim && lim->tmpdir && lim->tmpdir[0])
    return lim->tmpdir;
  const char *t = getenv("TMPDIR");
  return t && t[0] == '/' ? t : "/tmp";
}

static const char *reader_path(const decomp_ts_limits *lim) {
  if (lim && lim->reader_path && lim->reader_path[0])
    return lim->reader_path;
  const char *e = getenv("DECOMPD_TS_READER");
  return e && e[0] ? e : DECOMP_TS_READER_PATH;
}

/* Turn the reader's end into an error on ctx (DECOMP_OK when it wrote its
 * output). `cpu_out`: it used up its CPU-time limit (the kernel's SIGKILL
 * at the hard limit looks like any other SIGKILL). */
static int judge(decomp_ctx *ctx, int status, bool timed_out, bool cancelled,
                 bool cpu_out, double seconds, uint64_t mem,
                 const tail_buf *tail) {
  char msg[640];
  tail_message(tail, msg, sizeof msg);
  unsigned long long mib = (unsigned long long)(mem >> 20);
  bool oom = tail_has(tail, "can't allocate memory") ||
             tail_has(tail, "bad_alloc") || tail_has(tail, "out of memory");
  if (cancelled)
    return decomp_ctx_fail(ctx, DECOMP_ERR_CANCELLED, "TorchScript reader cancelled");
  if (timed_out)
    return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                     "TorchScript reader exceeded its %g s time limit",
                     seconds);
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    if (sig == SIGXCPU || (sig == SIGKILL && cpu_out))
      return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                       "TorchScript reader exceeded its %g s time limit "
                       "(CPU time)",
                       seconds);
    if (sig == SIGXFSZ)
      return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                       "TorchScript reader exceeded its output size limit "
                       "(%llu MiB)",
                       mib);
    if (oom)
      return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                       "TorchScript reader exceeded its memory limit "
                       "(%llu MiB)",
                       mib);
    return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                     "TorchScript reader crashed (signal %d, %s): %s", sig,
                     strsignal(sig), msg);
  }
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  switch (code) {
  case TS_EXIT_OK:
    return DECOMP_OK;
  case TS_EXIT_LOAD:
    if (oom)
      return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                       "TorchScript reader exceeded its memory limit "
                       "(%llu MiB): %s",
                       mib, msg);
    return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                     "TorchScript load failed: %s", msg);
  case TS_EXIT_UNSUPPORTED:
    return decomp_ctx_fail(ctx,
                     strstr(msg, "dtype") ? DECOMP_ERR_UNSUPPORTED_DTYPE
                                          : DECOMP_ERR_BAD_TORCHSCRIPT,
                     "TorchScript archive not supported: %s", msg);
  case TS_EXIT_NOMEM:
    return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                     "TorchScript reader exceeded its memory limit "
                     "(%llu MiB): %s",
                     mib, msg);
  case TS_EXIT_IO:
    return decomp_ctx_fail(ctx, DECOMP_ERR_IO,
                     "TorchScript reader could not write its output: %s", msg);
  default:
    return decomp_ctx_fail(ctx, DECOMP_ERR_BAD_TORCHSCRIPT,
                     "TorchScript reader failed (exit status %d): %s", code,
                     msg);
  }
}

int decomp_torchscript_read(decomp_ctx *ctx, const char *archive_path,
                            const decomp_ts_limits *limits,
                            decomp_weights **out_weights,
                            decomp_spec **out_spec) {
  int rc = DECOMP_OK;
  char workdir[PATH_MAX] = "", path[PATH_MAX + 32];
  char *archive = NULL, *spec_text = NULL;
  int devnull = -1, errp[2] = {-1, -1}, execp[2] = {-1, -1};
  pid_t pid = -1;
  decomp_weights *w = NULL;
  decomp_spec *spec = NULL;
  tail_buf *tail = NULL;

  decomp_ctx_clear(ctx);
  if (!archive_path || !out_weights || !out_spec)
    return decomp_ctx_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT,
                     "decomp_torchscript_read: NULL argument");

  const char *reader = reader_path(limits);
  if (access(reader, X_OK) != 0)
    return decomp_ctx_fail(ctx, DECOMP_ERR_TORCHSCRIPT,
                     "TorchScript reader %s: %s (set DECOMPD_TS_READER)",
                     reader, strerror(errno));

  struct stat st;
  archive = realpath(archive_path, NULL);
  if (!archive || stat(archive, &st) != 0) {
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_IO, "%s: %s", archive_path, strerror(errno));
    goto done;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_INVALID_ARGUMENT, "%s: not a regular file",
                   archive_path);
    goto done;
  }

  double seconds = limits && limits->time_seconds > 0 ? limits->time_seconds
                                                      : TS_DEFAULT_SECONDS;
  uint64_t mem = limits ? limits->memory_bytes : 0;
  if (!mem) {
    uint64_t size = (uint64_t)st.st_size;
    mem = size > (UINT64_MAX - 2 * TS_GIB) / 4 ? UINT64_MAX
                                               : 2 * TS_GIB + 4 * size;
    if (mem < 4 * TS_GIB)
      mem = 4 * TS_GIB;
  }

  int n = snprintf(workdir, sizeof workdir, "%s/decompd-ts-XXXXXX",
                   default_tmpdir(limits));
  if (n < 0 || (size_t)n >= sizeof workdir || !mkdtemp(workdir)) {
    int e = errno;
    workdir[0] = '\0';
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_IO, "TorchScript work folder in %s: %s",
                   default_tmpdir(limits), strerror(e));
    goto done;
  }
  tail = calloc(1, sizeof *tail);
  if (!tail) {
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_NOMEM, "out of memory");
    goto done;
  }

  devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0 || pipe2(errp, O_CLOEXEC) != 0 ||
      pipe2(execp, O_CLOEXEC) != 0) {
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_IO, "TorchScript reader pipes: %s",
                   strerror(errno));
    goto done;
  }

  /* The environment: a minimal one, so nothing of the caller's (LD_PRELOAD,
   * PYTORCH_* switches) reaches the reader. */
  char env_home[PATH_MAX + 8], env_tmp[PATH_MAX + 8], env_ld[PATH_MAX + 32];
  snprintf(env_home, sizeof env_home, "HOME=%s", workdir);
  snprintf(env_tmp, sizeof env_tmp, "TMPDIR=%s", workdir);
  char *envp[12];
  int ne = 0;
  envp[ne++] = (char *)"PATH=/usr/bin:/bin";
  envp[ne++] = (char *)"LANG=C";
  envp[ne++] = (char *)"OMP_NUM_THREADS=1";
  envp[ne++] = (char *)"MKL_NUM_THREADS=1";
  envp[ne++] = (char *)"OPENBLAS_NUM_THREADS=1";
  envp[ne++] = (char *)"MALLOC_ARENA_MAX=2";
  envp[ne++] = env_home;
  envp[ne++] = env_tmp;
  const char *ld = getenv("LD_LIBRARY_PATH");
  if (ld && strlen(ld) < PATH_MAX) {
    snprintf(env_ld, sizeof env_ld, "LD_LIBRARY_PATH=%s", ld);
    envp[ne++] = env_ld;
  }
  envp[ne] = NULL;
  char *argv[] = {(char *)"decompd-ts-reader", archive, workdir, NULL};

  child_plan plan = {
      .reader = reader,
      .argv = argv,
      .envp = envp,
      .workdir = workdir,
      .devnull = devnull,
      .err_w = errp[1],
      .exec_w = execp[1],
      .parent = getpid(),
  };
  struct rlimit nof;
  plan.max_fd = getrlimit(RLIMIT_NOFILE, &nof) == 0 &&
                        nof.rlim_cur != RLIM_INFINITY && nof.rlim_cur < 65536
                    ? (int)nof.rlim_cur
                    : 65536;
  rlim_t cpu = (rlim_t)ceil(seconds) + 1;
  plan.as = (struct rlimit){(rlim_t)mem, (rlim_t)mem};
  plan.cpu = (struct rlimit){cpu, cpu + 2};
  plan.fsize = (struct rlimit){(rlim_t)mem, (rlim_t)mem};
  plan.nofile = (struct rlimit){TS_NOFILE, TS_NOFILE};
  plan.core = (struct rlimit){0, 0};

  double start = now_seconds();
  pid = fork();
  if (pid < 0) {
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_TORCHSCRIPT,
                   "cannot start the TorchScript reader: %s", strerror(errno));
    goto done;
  }
  if (pid == 0)
    child_run(&plan); /* never returns */
  setpgid(pid, pid);  /* also from here, so a kill cannot miss the group */
  close(errp[1]);
  errp[1] = -1;
  close(execp[1]);
  execp[1] = -1;

  /* Did exec work? (the pipe closes on exec, or carries errno.) Waited for
   * under the deadline too: a child forked meanwhile by another thread of
   * the caller holds the write end until it execs. */
  int exec_err = 0;
  ssize_t got = 0;
  for (;;) {
    double left = start + seconds - now_seconds();
    struct pollfd xp = {.fd = execp[0], .events = POLLIN};
    int ms = left <= 0 ? 0 : (int)fmin(1000.0 * left, (double)INT_MAX);
    int pr = poll(&xp, 1, ms);
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr > 0)
      got = read(execp[0], &exec_err, sizeof exec_err);
    if (pr > 0 && got < 0 && errno == EINTR)
      continue;
    break;
  }
  if (got == (ssize_t)sizeof exec_err) {
    kill(-pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
    pid = -1;
    rc = decomp_ctx_fail(ctx, DECOMP_ERR_TORCHSCRIPT,
                   "cannot run the TorchScript reader %s: %s", reader,
                   strerror(exec_err));
    goto done;
  }

  fcntl(errp[0], F_SETFL, O_NONBLOCK);
  bool timed_out = false, cancelled = false, exited = false;
  double deadline = start + seconds;
  while (!exited) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* WNOWAIT: the zombie keeps the process group id ours until the
     * group is killed below. */
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        si.si_pid == pid)
      exited = true;
    double left = deadline - now_seconds();
    if (!exited && left <= 0) {
      timed_out = true;
      break;
    }
    if (!exited && limits && limits->cancel &&
        limits->cancel(limits->cancel_user)) {
      cancelled = true;
      break;
    }
    struct pollfd pfd = {.fd = errp[0], .events = POLLIN};
    int ms = exited ? 0 : (int)fmin(TS_POLL_MS, ceil(left * 1000));
    if (errp[0] < 0) {
      if (!exited)
        poll(NULL, 0, ms);
      continue;
    }
    if (poll(&pfd, 1, ms) > 0) {
      char buf[4096];
      /* Bounded, so that a reader flooding stderr cannot keep us from the
       * deadline; a pipe holds 64 KiB, so an exited reader drains fully. */
      for (int k = 0; k < 64; k++) {
        ssize_t r = read(errp[0], buf, sizeof buf);
        if (r > 0) {
          tail_add(tail, buf, (size_t)r);
          continue;
        }
        if (r == 0) {
          close(errp[0]);
          errp[0] = -1;
        }
        break;
      }
    }
  }
  kill(-pid, SIGKILL);
  int status = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR)
    ;
  pid = -1;
  double cpu_used = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  bool cpu_out = cpu_used + 0.5 >= (double)cpu;

  rc = judge(ctx, status, timed_out, cancelled, cpu_out, seconds, mem, tail);
  if (rc != DECOMP_OK)
    goto done;

  snprintf(path, sizeof path, "%s/weights.safetensors", workdir);
  rc = decomp_weights_open(ctx, path, &w);
  if (rc != DECOMP_OK)
    goto done;
  decomp_weights_set_format(w, DECOMP_FORMAT_TORCHSCRIPT);
  snprintf(path, sizeof path, "%s/spec.json", workdir);
  size_t spec_len = 0;
  rc = read_small(ctx, path, TS_SPEC_MAX, &spec_text, &spec_len);
  if (rc != DECOMP_OK)
    goto done;
  rc = decomp_spec_parse(ctx, spec_text, spec_len, &spec);
  if (rc != DECOMP_OK)
    goto done;
  *out_weights = w;
  *out_spec = spec;
  w = NULL;
  spec = NULL;

done:
  if (pid > 0) {
    kill(-pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
      ;
  }
  if (devnull >= 0)
    close(devnull);
  for (int i = 0; i < 2; i++) {
    if (errp[i] >= 0)
      close(errp[i]);
    if (execp[i] >= 0)
      close(execp[i]);
  }
  remove_tree(workdir);
  decomp_weights_free(w);
  decomp_spec_free(spec);
  free(spec_text);
  free(tail);
  free(archive);
  return rc;
}

#else /* !DECOMP_HAVE_TORCHSCRIPT */

int decomp_torchscript_read(decomp_ctx *ctx, const char *archive_path,
                            const decomp_ts_limits *limits,
                            decomp_weights **out_weights,
                            decomp_spec **out_spec) {
  (void)limits;
  (void)out_weights;
  (void)out_spec;
  decomp_ctx_clear(ctx);
  return decomp_ctx_fail(ctx, DECOMP_ERR_TORCHSCRIPT,
                   "%s: this build has no TorchScript support",
                   archive_path ? archive_path : "TorchScript archive");
}

#endif
