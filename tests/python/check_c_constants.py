"""python/decompd/_c_constants.py must be what the headers generate.

meson regenerates the file into the build dir from include/decomp/*.h at
build time (python/meson.build, scripts/gen_py_constants.py); this compares
that with the committed copy and, when they differ, prints the diff and the
command that brings the committed file up to date.

    check_c_constants.py COMMITTED GENERATED
"""
import difflib
import sys


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    committed, generated = argv[1], argv[2]
    with open(committed, encoding="utf-8") as f:
        old = f.read().splitlines(keepends=True)
    with open(generated, encoding="utf-8") as f:
        new = f.read().splitlines(keepends=True)
    if old == new:
        print(f"{committed}: up to date with include/decomp/*.h")
        return 0
    sys.stdout.writelines(difflib.unified_diff(
        old, new, fromfile=committed + " (committed)",
        tofile=generated + " (from the headers)"))
    print(f"\nFAIL {committed} differs from what the headers generate. "
          f"Regenerate it from the source tree with\n\n"
          f"    /usr/bin/python3 scripts/gen_py_constants.py\n\n"
          f"and commit it (never edit it by hand).")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
