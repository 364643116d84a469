/* s3_xml.h — the little XML that S3 answers with (errors, multipart ids,
 * listings) and the one document s3.c sends (CompleteMultipartUpload).
 * Not a general XML parser: S3's answers are flat enough that an element
 * is found by its name, and their text holds only the five named entities
 * and numeric character references. Inputs are spans [s, end), not
 * NUL-terminated strings: a service's answer may hold any byte. */
#ifndef DECOMPD_STORE_S3_XML_H
#define DECOMPD_STORE_S3_XML_H

#include <stdbool.h>

/* The first <tag>…</tag> in [s, end): true with its raw text in [*a, *z),
 * false (and both NULL) when there is none. `tag` is at most 60 chars. */
bool s3_xml_span(const char *s, const char *end, const char *tag,
                 const char **a, const char **z);

/* The text of the first <tag>…</tag> in [s, end) with its entities
 * decoded, malloc'd and NUL-terminated (never longer than the raw text);
 * NULL when there is none, when an entity is unknown or malformed, or out
 * of memory. `s` may be NULL (no document). */
char *s3_xml_text(const char *s, const char *end, const char *tag);

/* `s` with &, <, > and " escaped for an element's text, malloc'd (NULL when
 * out of memory). */
char *s3_xml_escape(const char *s);

#endif
