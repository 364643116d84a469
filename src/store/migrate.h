/* migrate.h — copying an embedded store (SQLite + its blob folder) into
 * another store, for `decompd store migrate`: every model (plain and
 * sharded, with its spec, archive spec and attachments), every job (every
 * state, with its layers and artifacts), every token (by its hash, so the
 * same tokens keep working), each with the same id and times.
 *
 * Every blob is read from the source and hashed again on its way into the
 * destination (the destination's own upload hashing); bytes that are not
 * their digest stop the migration, naming the blob and what names it, and
 * nothing of that model or job is written. A blob the destination has
 * already (store_loose_blob_refresh: it is stored there, with the size
 * the source's rows give it) is not copied again; what the destination
 * stores was hashed when it was written. Rows go in through the
 * destination's import entries (store_model_import, store_job_import,
 * store_token_import), each in one transaction and idempotent by id, after
 * the blobs they name: a migration cut short at any point (kill -9) and
 * run again ends as one run to the end, and a second run changes nothing.
 * A job queued or running in the source goes in queued. */
#ifndef DECOMPD_STORE_MIGRATE_H
#define DECOMPD_STORE_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* How far a migration is. */
typedef struct store_migrate_stats {
  size_t models_total, models_done, models_new;
  size_t jobs_total, jobs_done, jobs_new;
  size_t tokens_total, tokens_done, tokens_new;
  size_t blobs_total;   /* distinct blobs the source's rows name */
  size_t blobs_done;    /* of them, handled: */
  size_t blobs_copied;  /* copied now, */
  size_t blobs_present; /* or in the destination already */
  int64_t bytes_total;  /* their bytes (as the rows give them) */
  int64_t bytes_copied; /* bytes copied now, the blob under way's too */
} store_migrate_stats;

/* Called after each blob, row and about every 64 MiB of a blob (from the
 * calling thread); `final` once at the end of a successful run. */
typedef void (*store_migrate_report)(const store_migrate_stats *st, bool final,
                                     void *arg);

/* Open the embedded store in `data_dir` (its blobs where `blobs` says, as
 * store_options.blobs) as a migration's source, creating nothing:
 * DECOMP_ERR_NOT_FOUND when `data_dir` is missing or holds no decompd
 * database, DECOMP_ERR_UNAVAILABLE when a daemon serves it (its owner
 * lock, DATA_DIR/decompd.lock); the lock is then held by *lock_fd until
 * store_migrate_close_source, so that none starts on it meanwhile. */
int store_migrate_open_source(const char *data_dir, const char *blobs,
                              store **out, int *lock_fd);
void store_migrate_close_source(store *s, int lock_fd);

/* Copy everything of `src` into `dst` (see above); *st (may be NULL) gets
 * the counts. DECOMP_OK only when every model, job and token of the source
 * is in the destination. */
int store_migrate(store *src, store *dst, store_migrate_report report,
                  void *arg, store_migrate_stats *st);

#endif
