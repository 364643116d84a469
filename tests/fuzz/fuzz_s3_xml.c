/* fuzz_s3_xml.c — libFuzzer target for the XML of S3 answers
 * (src/store/s3_xml.c), which comes from a service over the network.
 * Besides not crashing or reading outside the input, it checks what the
 * store's S3 client relies on: a decoded text is never longer than its
 * raw text, and a text escaped by s3_xml_escape decodes back to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "s3_xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void round_trip(const char *text) {
  char *esc = s3_xml_escape(text);
  if (!esc)
    return;
  size_t n = strlen(esc);
  char *doc = malloc(n + 8);
  if (doc) {
    memcpy(doc, "<K>", 3);
    memcpy(doc + 3, esc, n);
    memcpy(doc + 3 + n, "</K>", 4);
    char *back = s3_xml_text(doc, doc + n + 7, "K");
    if (!back || strcmp(back, text) != 0)
      abort();
    free(back);
    free(doc);
  }
  free(esc);
}

static void text(const char *s, const char *end, const char *tag) {
  const char *a, *z;
  char *t = s3_xml_text(s, end, tag);
  if (!t)
    return;
  if (!s3_xml_span(s, end, tag, &a, &z) || strlen(t) > (size_t)(z - a))
    abort();
  /* a raw NUL ends the C string early; the rest is what s3.c sees */
  round_trip(t);
  free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* an exact-size copy, not NUL-terminated: ASan sees any read past it */
  char *doc = malloc(size ? size : 1);
  if (!doc)
    return 0;
  memcpy(doc, data, size);
  const char *end = doc + size;
  static const char *tags[] = {"Code",        "Message",
                               "UploadId",    "IsTruncated",
                               "Key",         "NextContinuationToken"};
  for (size_t i = 0; i < sizeof tags / sizeof *tags; i++)
    text(doc, end, tags[i]);
  /* a listing's walk, as s3_list does it */
  const char *p = doc, *a, *z;
  while (s3_xml_span(p, end, "Contents", &a, &z)) {
    text(a, z, "Key");
    text(a, z, "Size");
    p = z + strlen("</Contents>");
  }
  free(doc);
  return 0;
}
