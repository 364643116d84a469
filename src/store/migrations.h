/* migrations.h — the schema migrations embedded into the binary at build
 * time (from migrations/NNNN_*.sql by embed_migrations.py), so a deployed
 * daemon never depends on finding its SQL files on disk. */
#ifndef DECOMPD_STORE_MIGRATIONS_H
#define DECOMPD_STORE_MIGRATIONS_H

typedef struct store_migration {
  int version;      /* NNNN: 1, 2, … in order; PRAGMA user_version after it */
  const char *name; /* the file name's "what" part */
  const char *sql;  /* the whole file */
} store_migration;

extern const store_migration STORE_MIGRATIONS[];
extern const int STORE_MIGRATION_COUNT; /* = the newest schema version */

/* The same steps in PostgreSQL's dialect (migrations/postgresql/, same
 * numbers and names: a test checks both lists match), applied in order
 * under the schema_version table. */
extern const store_migration STORE_PG_MIGRATIONS[];
extern const int STORE_PG_MIGRATION_COUNT;

#endif
