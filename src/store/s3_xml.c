/* s3_xml.c — finding an element of an S3 answer, decoding its text, and
 * escaping text for the documents s3.c sends (s3_xml.h). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3_xml.h"

bool s3_xml_span(const char *s, const char *end, const char *tag,
                 const char **a, const char **z) {
  char open[64], close[64];
  snprintf(open, sizeof open, "<%s>", tag);
  snprintf(close, sizeof close, "</%s>", tag);
  size_t ol = strlen(open), cl = strlen(close);
  *a = *z = NULL;
  for (const char *p = s; p && end - p >= (ptrdiff_t)ol; p++)
    if (memcmp(p, open, ol) == 0) {
      *a = p + ol;
      break;
    }
  if (!*a)
    return false;
  for (const char *p = *a; end - p >= (ptrdiff_t)cl; p++)
    if (memcmp(p, close, cl) == 0) {
      *z = p;
      return true;
    }
  *a = NULL;
  return false;
}

/* The UTF-8 of code point `cp` at `out`; its length, 0 when `cp` is not a
 * character XML allows in text. The reference it came from (&#N; at least
 * 4 bytes) is never shorter than its UTF-8 (at most 4). */
static size_t utf8(unsigned long cp, char *out) {
  if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
    return 0;
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

char *s3_xml_text(const char *s, const char *end, const char *tag) {
  const char *a, *z;
  if (!s || !s3_xml_span(s, end, tag, &a, &z))
    return NULL;
  char *out = malloc((size_t)(z - a) + 1), *o = out;
  if (!out)
    return NULL;
  for (const char *p = a; p < z;) {
    if (*p != '&') {
      *o++ = *p++;
      continue;
    }
    const char *semi = memchr(p, ';', (size_t)(z - p));
    size_t n = semi ? (size_t)(semi - p - 1) : 0; /* the name's length */
    const char *e = p + 1;
    if (!semi || n > 11)
      goto bad;
    if (n == 3 && !memcmp(e, "amp", 3))
      *o++ = '&';
    else if (n == 2 && !memcmp(e, "lt", 2))
      *o++ = '<';
    else if (n == 2 && !memcmp(e, "gt", 2))
      *o++ = '>';
    else if (n == 4 && !memcmp(e, "quot", 4))
      *o++ = '"';
    else if (n == 4 && !memcmp(e, "apos", 4))
      *o++ = '\'';
    else if (n >= 2 && e[0] == '#') {
      char num[12] = {0};
      memcpy(num, e + 1, n - 1);
      bool hex = num[0] == 'x';
      const char *digits = hex ? num + 1 : num;
      if (!*digits || strspn(digits, hex ? "0123456789abcdefABCDEF"
                                         : "0123456789") != strlen(digits))
        goto bad;
      size_t len = utf8(strtoul(digits, NULL, hex ? 16 : 10), o);
      if (!len)
        goto bad;
      o += len;
    } else
      goto bad;
    p = semi + 1;
  }
  *o = '\0';
  return out;
bad:
  free(out);
  return NULL;
}

char *s3_xml_escape(const char *s) {
  size_t n = 1;
  for (const char *p = s; *p; p++)
    n += *p == '&' ? 5 : *p == '<' || *p == '>' ? 4 : *p == '"' ? 6 : 1;
  char *out = malloc(n), *o = out;
  if (!out)
    return NULL;
  for (const char *p = s; *p; p++) {
    const char *e = *p == '&'   ? "&amp;"
                    : *p == '<' ? "&lt;"
                    : *p == '>' ? "&gt;"
                    : *p == '"' ? "&quot;"
                                : NULL;
    if (e) {
      memcpy(o, e, strlen(e));
      o += strlen(e);
    } else
      *o++ = *p;
  }
  *o = '\0';
  return out;
}
