#!/usr/bin/env python3
"""The two migration lists are one ordered list in two dialects:
migrations/NNNN_what.sql (SQLite) and migrations/postgresql/NNNN_what.sql
(PostgreSQL) must hold the same numbers with the same names, and each
folder's files must all be embedded by src/store/meson.build (a step
written in one dialect and forgotten in the other, or left out of the
build, fails here rather than on a deployment).

Usage: check_migrations_match.py SOURCE_ROOT
"""
import os
import re
import sys

NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def steps(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        m = NAME.match(f)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def main():
    root = sys.argv[1]
    sqlite = steps(os.path.join(root, "migrations"))
    pg = steps(os.path.join(root, "migrations", "postgresql"))
    errors = []
    for v in sorted(set(sqlite) | set(pg)):
        if v not in pg:
            errors.append("%04d_%s has no PostgreSQL step" % (v, sqlite[v]))
        elif v not in sqlite:
            errors.append("postgresql/%04d_%s has no SQLite step" % (v, pg[v]))
        elif sqlite[v] != pg[v]:
            errors.append("%04d: '%s' (SQLite) but '%s' (PostgreSQL)"
                          % (v, sqlite[v], pg[v]))
    if sorted(sqlite) != list(range(1, len(sqlite) + 1)):
        errors.append("SQLite steps are not 1..%d: %s" % (len(sqlite), sorted(sqlite)))
    build = open(os.path.join(root, "src", "store", "meson.build")).read()
    for v, name in sqlite.items():
        if "migrations/%04d_%s.sql" % (v, name) not in build:
            errors.append("%04d_%s.sql is not embedded (src/store/meson.build)" % (v, name))
    for v, name in pg.items():
        if "migrations/postgresql/%04d_%s.sql" % (v, name) not in build:
            errors.append("postgresql/%04d_%s.sql is not embedded" % (v, name))
    for e in errors:
        print("migrations:", e)
    if not errors:
        print("migrations: %d steps in both dialects" % len(sqlite))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
