/* text.h — text that ends up in JSON answers: is it UTF-8, may it be a
 * label, and how to show bytes that are not UTF-8.
 *
 * JSON strings are Unicode, so jansson refuses to build a string from bytes
 * that are not UTF-8. Text a client sends for keeping (model and token
 * names) is checked before anything is stored (text_label_ok); text echoed
 * back or read from the store (error details, stored names and messages) is
 * escaped on the way out (text_escape, text_json), so building an answer
 * never fails on it. */
#ifndef DECOMPD_SERVER_TEXT_H
#define DECOMPD_SERVER_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* Whether the `n` bytes at `s` are well-formed UTF-8 (no overlong forms, no
 * surrogates, nothing past U+10FFFF; NUL bytes count as invalid). */
bool text_utf8_valid(const char *s, size_t n);

/* Whether `s` may be a label (a model's or a token's name): at most 255
 * bytes of UTF-8 and no control characters (C0, DEL, C1). When it may not,
 * *why (optional) says why, as a phrase ("is not valid UTF-8"). */
bool text_label_ok(const char *s, const char **why);

/* Copy `in` into `out` (`outlen` > 0), keeping well-formed UTF-8 and
 * writing each other byte as the four characters \xNN; always
 * NUL-terminated, never cutting a character or an escape in two (what does
 * not fit is dropped). Returns `out`. */
char *text_escape(const char *in, char *out, size_t outlen);

/* A JSON string of `s` (NULL: ""), escaped as text_escape when it is not
 * UTF-8 (text stored before it was checked, a message quoting a hostile
 * file); NULL only when out of memory. */
json_t *text_json(const char *s);

#endif
