/* resume.c — the pure rules of a resumed download (unit-tested alone):
 * parsing Content-Range, how much of a partial file to keep, and what a
 * 2xx answer to a Range request means for the file being written. The
 * fetcher (fetch.c) applies them; the Python client mirrors them. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client_internal.h"

static bool parse_i64(const char **p, int64_t *out) {
  const char *s = *p;
  if (!isdigit((unsigned char)*s))
    return false;
  int64_t v = 0;
  while (isdigit((unsigned char)*s)) {
    int d = *s - '0';
    if (v > (INT64_MAX - d) / 10)
      return false;
    v = v * 10 + d;
    s++;
  }
  *p = s;
  *out = v;
  return true;
}

bool client_parse_content_range(const char *h, int64_t *a, int64_t *b,
                                int64_t *total) {
  if (!h || strncasecmp(h, "bytes", 5) != 0)
    return false;
  const char *p = h + 5;
  while (*p == ' ')
    p++;
  if (!parse_i64(&p, a) || *p++ != '-' || !parse_i64(&p, b) || *p++ != '/')
    return false;
  if (*p == '*') {
    *total = -1;
    p++;
  } else if (!parse_i64(&p, total)) {
    return false;
  }
  while (*p == ' ')
    p++;
  if (*p || *b < *a || (*total >= 0 && *b >= *total))
    return false;
  return true;
}

int64_t client_resume_from(int64_t have, int64_t size) {
  return have > 0 && have < size ? have : 0;
}

client_answer client_resume_answer(long status, const char *content_range,
                                   int64_t from, int64_t size) {
  if (status == 200)
    return CLIENT_ANSWER_RESTART;
  if (status != 206 || from <= 0)
    return CLIENT_ANSWER_BAD;
  int64_t a, b, total;
  if (!client_parse_content_range(content_range, &a, &b, &total))
    return CLIENT_ANSWER_BAD;
  if (a != from || b != size - 1 || (total >= 0 && total != size))
    return CLIENT_ANSWER_BAD;
  return CLIENT_ANSWER_APPEND;
}
