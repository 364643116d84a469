#!/usr/bin/env bash
# Fuzz libdecomp's parsers with libFuzzer under ASan + UBSan.
#
#   tests/fuzz/run-fuzz.sh SECONDS [TARGET...]
#
# Builds (once) a clang build dir, $FUZZ_BUILD_DIR or build-fuzz/, with
# -fsanitize=fuzzer-no-link on every object (coverage feedback from the
# library, not only the target) and -Db_sanitize=address,undefined, then runs
# each TARGET (default: every fuzz_*.c here) for SECONDS seconds on a working
# copy of its seed corpus (build-fuzz/fuzz-corpus/NAME; the checked-in seeds
# are never modified). Crashes go to tests/fuzz/artifacts/ (git-ignored).
# Prints one line per target with its duration, runs and result; exits
# non-zero if any target found a crash.
set -uo pipefail
secs=${1:?usage: run-fuzz.sh SECONDS [TARGET...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${FUZZ_BUILD_DIR:-$top/build-fuzz}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$here"/fuzz_*.c; do
    n=$(basename "$f" .c)
    targets+=("${n#fuzz_}")
  done
fi

if [ ! -f "$build/build.ninja" ]; then
  CC=clang CFLAGS="-fsanitize=fuzzer-no-link" \
    meson setup "$build" "$top" -Db_sanitize=address,undefined \
    -Db_lundef=false -Dbuildtype=debugoptimized -Dtorchscript=disabled \
    >/dev/null || exit 1
fi
ninja -C "$build" $(printf 'tests/fuzz/fuzz_%s ' "${targets[@]}") || exit 1

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
mkdir -p "$here/artifacts"
fail=0
summary=()
for t in "${targets[@]}"; do
  work="$build/fuzz-corpus/$t"
  mkdir -p "$work"
  log="$build/fuzz-$t.log"
  start=$(date +%s)
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$t-" \
    "$work" "$here/corpus/$t" >"$log" 2>&1
  rc=$?
  end=$(date +%s)
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ $rc -eq 0 ]; then res=clean; else res="FAILED (rc $rc, see $log)"; fail=1; fi
  summary+=("fuzz_$t: $((end - start)) s, ${runs:-?} runs, ${cov:-cov: ?}, $res")
  echo "${summary[-1]}"
done
echo "---"
printf '%s\n' "${summary[@]}"
exit $fail
