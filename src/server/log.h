/* log.h — the daemon's log: one `key=value` line per event on stderr, with
 * time, level, topic and request id; the level is checked before anything
 * is formatted. */
#ifndef DECOMPD_SERVER_LOG_H
#define DECOMPD_SERVER_LOG_H

#include <stdbool.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

void log_set_level(int level);
/* "error", "warn", "info", "debug" → level, or -1. */
int log_level_from_name(const char *name);
bool log_enabled(int level);

/* Log `fmt` (more key=value pairs) under `topic`; `req` may be NULL. Use
 * log_q() for values that may hold spaces or quotes. */
void log_event(int level, const char *topic, const char *req, const char *fmt,
               ...) __attribute__((format(printf, 4, 5)));

/* `s` as a double-quoted, escaped value (control chars dropped), in one of
 * a few thread-local buffers: valid for the next few log_q calls. */
const char *log_q(const char *s);

#define LOG(level, topic, req, ...)                                            \
  do {                                                                         \
    if (log_enabled(level))                                                    \
      log_event(level, topic, req, __VA_ARGS__);                               \
  } while (0)

#endif
