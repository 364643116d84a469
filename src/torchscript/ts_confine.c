/* ts_confine.c — Landlock self-confinement of decompd-ts-reader (see
 * ts_confine.h). The constants and structs are those of the kernel's stable
 * Landlock ABI, spelled out here so that the build does not depend on how
 * new the installed kernel headers are (Debian 12 ships 6.1's, ABI 2). */
#include "ts_confine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule       445
#define __NR_landlock_restrict_self  446
#endif

#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH      1

#define LL_FS_EXECUTE          (1ULL << 0)
#define LL_FS_WRITE_FILE       (1ULL << 1)
#define LL_FS_READ_FILE        (1ULL << 2)
#define LL_FS_READ_DIR         (1ULL << 3)
#define LL_FS_ABI1             ((1ULL << 13) - 1) /* EXECUTE … MAKE_SYM */
#define LL_FS_REFER            (1ULL << 13)       /* ABI 2 */
#define LL_FS_TRUNCATE         (1ULL << 14)       /* ABI 3 */
#define LL_FS_IOCTL_DEV        (1ULL << 15)       /* ABI 5 */
#define LL_NET_BIND_TCP        (1ULL << 0)        /* ABI 4 */
#define LL_NET_CONNECT_TCP     (1ULL << 1)
#define LL_SCOPE_ABSTRACT_UNIX (1ULL << 0) /* ABI 6 */
#define LL_SCOPE_SIGNAL        (1ULL << 1)

struct ll_ruleset_attr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net; /* ABI 4 */
  uint64_t scoped;             /* ABI 6 */
};

struct ll_path_beneath_attr {
  uint64_t allowed_access;
  int32_t parent_fd;
} __attribute__((packed));

/* Read-only trees: libraries (libtorch may dlopen), and the kernel's views
 * of this process and the CPU. Other processes' /proc entries stay closed:
 * Landlock denies ptrace-mode access across domains. */
static const char *const read_trees[] = {"/usr",  "/lib", "/lib64",
                                         "/proc", "/sys", "/dev"};

static int allow(int ruleset, const char *path, uint64_t access) {
  int fd = open(path, O_PATH | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? 0 : -1;
  struct ll_path_beneath_attr pb = {.allowed_access = access, .parent_fd = fd};
  long r =
      syscall(__NR_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &pb, 0);
  close(fd);
  return r == 0 ? 0 : -1;
}

int ts_confine(const char *archive, char *note, size_t notelen) {
  long abi =
      syscall(__NR_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
  if (abi < 1) {
    snprintf(note, notelen,
             "Landlock is not available (%s); the archive's code may write "
             "and read files as this user",
             strerror(errno));
    return 0;
  }
  struct ll_ruleset_attr attr = {.handled_access_fs = LL_FS_ABI1};
  size_t attr_size = sizeof attr.handled_access_fs;
  if (abi >= 2)
    attr.handled_access_fs |= LL_FS_REFER;
  if (abi >= 3)
    attr.handled_access_fs |= LL_FS_TRUNCATE;
  if (abi >= 5)
    attr.handled_access_fs |= LL_FS_IOCTL_DEV;
  if (abi >= 4) {
    attr.handled_access_net = LL_NET_BIND_TCP | LL_NET_CONNECT_TCP;
    attr_size = offsetof(struct ll_ruleset_attr, scoped);
  }
  if (abi >= 6) {
    attr.scoped = LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL;
    attr_size = sizeof attr;
  }
  int rs = (int)syscall(__NR_landlock_create_ruleset, &attr, attr_size, 0);
  if (rs < 0) {
    snprintf(note, notelen, "landlock_create_ruleset: %s", strerror(errno));
    return -1;
  }
  const uint64_t tree = LL_FS_READ_FILE | LL_FS_READ_DIR | LL_FS_EXECUTE;
  for (size_t i = 0; i < sizeof read_trees / sizeof read_trees[0]; i++) {
    if (allow(rs, read_trees[i], tree) != 0) {
      snprintf(note, notelen, "landlock rule %s: %s", read_trees[i],
               strerror(errno));
      close(rs);
      return -1;
    }
  }
  if (allow(rs, "/etc/ld.so.cache", LL_FS_READ_FILE) != 0 ||
      allow(rs, archive, LL_FS_READ_FILE) != 0) {
    snprintf(note, notelen, "landlock rule %s: %s", archive, strerror(errno));
    close(rs);
    return -1;
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(__NR_landlock_restrict_self, rs, 0) != 0) {
    snprintf(note, notelen, "landlock_restrict_self: %s", strerror(errno));
    close(rs);
    return -1;
  }
  close(rs);
  return (int)abi;
}
