/* error.c — the detail of the last failure on each thread (store_fail,
 * store_errmsg): below every file of the store (the dispatcher, the blob
 * folder, the index), so that none of them needs another for it. */
#include <stdarg.h>
#include <stdio.h>

#include "store_int.h"

static _Thread_local char errbuf[1024];

const char *store_errmsg(void) { return errbuf; }

int store_fail(int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errbuf, sizeof errbuf, fmt, ap);
  va_end(ap);
  return err;
}
