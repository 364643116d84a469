/* text.c — UTF-8 checks and escapes for text that ends up in JSON answers
 * (see text.h). */
#include <stdlib.h>
#include <string.h>

#include "text.h"

/* Length of the well-formed UTF-8 character at `s` (at most `n` bytes
 * there), or 0 when the bytes there are not one (RFC 3629, Table 3-7 of
 * the Unicode standard). A NUL byte is not one. */
static size_t utf8_char(const unsigned char *s, size_t n) {
  if (n == 0 || s[0] == 0)
    return 0;
  if (s[0] < 0x80)
    return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
  if (s[0] >= 0xc2 && s[0] <= 0xdf) {
    len = 2;
  } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
    len = 3;
    if (s[0] == 0xe0)
      lo = 0xa0; /* overlong */
    else if (s[0] == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
    len = 4;
    if (s[0] == 0xf0)
      lo = 0x90; /* overlong */
    else if (s[0] == 0xf4)
      hi = 0x8f; /* past U+10FFFF */
  } else {
    return 0;
  }
  if (n < len || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  return len;
}

bool text_utf8_valid(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  while (n > 0) {
    size_t k = utf8_char(p, n);
    if (k == 0)
      return false;
    p += k;
    n -= k;
  }
  return true;
}

bool text_label_ok(const char *s, const char **why) {
  const char *w = NULL;
  size_t n = strlen(s);
  const unsigned char *p = (const unsigned char *)s;
  if (n > 255)
    w = "is longer than 255 bytes";
  else if (!text_utf8_valid(s, n))
    w = "is not valid UTF-8";
  for (size_t i = 0; !w && i < n; i++) {
    /* C0 controls and DEL; C1 controls are U+0080..U+009F, 0xc2 0x80..0x9f */
    if (p[i] < 0x20 || p[i] == 0x7f ||
        (p[i] == 0xc2 && i + 1 < n && p[i + 1] <= 0x9f))
      w = "holds a control character";
  }
  if (w && why)
    *why = w;
  return w == NULL;
}

char *text_escape(const char *in, char *out, size_t outlen) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)(in ? in : "");
  size_t left = strlen((const char *)p), o = 0;
  while (left > 0) {
    size_t k = utf8_char(p, left);
    if (k > 0) {
      if (o + k >= outlen)
        break;
      memcpy(out + o, p, k);
      o += k;
      p += k;
      left -= k;
    } else {
      if (o + 4 >= outlen)
        break;
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
      p++;
      left--;
    }
  }
  out[o] = '\0';
  return out;
}

json_t *text_json(const char *s) {
  if (!s)
    s = "";
  size_t n = strlen(s);
  if (text_utf8_valid(s, n))
    return json_stringn(s, n);
  size_t cap = 4 * n + 1; /* every byte escaped, at worst */
  char *buf = malloc(cap);
  if (!buf)
    return NULL;
  json_t *j = json_string(text_escape(s, buf, cap));
  free(buf);
  return j;
}
