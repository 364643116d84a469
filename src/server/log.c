/* log.c — key=value event lines on stderr (journald and container runtimes
 * collect them). Each line goes out in one write(2), so lines from threads
 * never interleave. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static atomic_int level_now = LOG_INFO;
static const char *const NAMES[] = {"error", "warn", "info", "debug"};

void log_set_level(int level) { atomic_store(&level_now, level); }

int log_level_from_name(const char *name) {
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, NAMES[i]) == 0)
      return i;
  return -1;
}

bool log_enabled(int level) { return level <= atomic_load(&level_now); }

void log_event(int level, const char *topic, const char *req, const char *fmt,
               ...) {
  if (!log_enabled(level))
    return;
  char line[4096];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line,
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s topic=%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                   tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                   NAMES[level < 0 ? 0 : level > 3 ? 3 : level], topic);
  if (req && n < (int)sizeof line)
    n += snprintf(line + n, sizeof line - (size_t)n, " req=%s", req);
  if (n < (int)sizeof line - 1) {
    line[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
  }
  if (n > (int)sizeof line - 2)
    n = (int)sizeof line - 2;
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}

const char *log_q(const char *s) {
  static _Thread_local char bufs[4][1024];
  static _Thread_local int next;
  char *b = bufs[next++ & 3];
  size_t o = 0;
  b[o++] = '"';
  for (; s && *s && o < sizeof bufs[0] - 3; s++) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20 || c == 0x7f)
      continue;
    if (c == '"' || c == '\\')
      b[o++] = '\\';
    b[o++] = (char)c;
  }
  b[o++] = '"';
  b[o] = '\0';
  return b;
}
