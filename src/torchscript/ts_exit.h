/* ts_exit.h — the exit statuses of decompd-ts-reader, shared by the reader
 * (ts_reader.c) and the parent that runs it (ts_sandbox.c). */
#ifndef DECOMP_TS_EXIT_H
#define DECOMP_TS_EXIT_H

enum ts_exit {
  TS_EXIT_OK = 0,
  TS_EXIT_LOAD = 2,        /* the archive failed to load */
  TS_EXIT_UNSUPPORTED = 3, /* loaded, holds what decompd cannot take */
  TS_EXIT_NOMEM = 4,       /* an allocation failed: the memory limit */
  TS_EXIT_IO = 5,          /* writing the output failed */
  TS_EXIT_INTERNAL = 6,
  TS_EXIT_USAGE = 64,
};

#endif
