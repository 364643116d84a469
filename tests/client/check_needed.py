"""The client library (and the store) must not need the engine.

libdecompclient links the common error table (src/common), not libdecomp,
so a program that only talks to the service does not load OpenBLAS, LAPACK
or gfortran. This reads each file's dynamic section with readelf and fails
with --no-engine when its NEEDED list names one of them; with --exports
when the file does not export the functions of decomp/errors.h (the public
ABI that decompctl, client programs and the Python ctypes loader rely on).

    check_needed.py READELF [--no-engine] [--exports] FILE...
"""
import argparse
import re
import subprocess
import sys

FORBIDDEN = re.compile(
    r"^lib(decomp|decomp_torchscript|openblas|blas|cblas|lapack|lapacke|"
    r"gfortran)\.so(\.|$)")
ERROR_TABLE = ("decomp_strerror", "decomp_error_code",
               "decomp_error_http_status", "decomp_error_from_code")


def readelf(tool, *args):
    r = subprocess.run([tool, "-W", *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{tool} {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def needed(tool, path):
    libs = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                      readelf(tool, "-d", path))
    if not libs:
        sys.exit(f"{path}: no NEEDED entries at all; is it a dynamic ELF "
                 f"file?")
    return libs


def exported(tool, path):
    names = set()
    for line in readelf(tool, "--dyn-syms", path).splitlines():
        f = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(f) >= 8 and f[3] == "FUNC" and f[4] in ("GLOBAL", "WEAK") \
                and f[6] != "UND":
            names.add(f[7].split("@")[0])
    return names


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("readelf")
    ap.add_argument("--no-engine", action="store_true",
                    help="fail when NEEDED names libdecomp, OpenBLAS, LAPACK")
    ap.add_argument("--exports", action="store_true",
                    help="fail unless the decomp/errors.h functions are "
                         "exported")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args(argv[1:])
    if not (a.no_engine or a.exports):
        ap.error("nothing to check: give --no-engine and/or --exports")
    bad = 0
    for path in a.files:
        libs = needed(a.readelf, path)
        print(f"{path}: NEEDED {' '.join(libs)}")
        for lib in libs if a.no_engine else []:
            if FORBIDDEN.match(lib):
                print(f"FAIL {path} needs {lib}: it must link the common "
                      f"error table (src/common, common_dep), not the "
                      f"engine")
                bad += 1
        if a.exports:
            have = exported(a.readelf, path)
            missing = [s for s in ERROR_TABLE if s not in have]
            if missing:
                print(f"FAIL {path} does not export {', '.join(missing)} "
                      f"(decomp/errors.h is part of its ABI; see its .map)")
                bad += 1
            else:
                print(f"{path}: exports {', '.join(ERROR_TABLE)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
