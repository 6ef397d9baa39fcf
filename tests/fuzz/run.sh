#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang, ASan + UBSan) and runs each for SECONDS on a scratch copy of its
# committed seed corpus (tests/fuzz/corpus/<target>: valid inputs and the crash reproductions of the reliability
# issue). Exit status 1 on any finding (a crash, a sanitizer report, a leak of an exception other than xtr::Error);
# the reproducer is left in BUILD_DIR. Two harnesses build and run at a time (XTR_FUZZ_JOBS).
#   tests/fuzz/run.sh [BUILD_DIR (build-fuzz)] [SECONDS (20)]
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$(mkdir -p "${1:-build-fuzz}" && cd "${1:-build-fuzz}" && pwd)
seconds=${2:-20}
flags=(-std=c++20 -O1 -g -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$src/include" -I/usr/include/eigen3)
targets=(json safetensors archive checkpoint description)
jobs_max=${XTR_FUZZ_JOBS:-2}  # harnesses built, then run, this many at a time (each is single-threaded)
throttle() {  # waits until fewer than $1 background jobs run (each records its own status in a file)
  while (($(jobs -rp | wc -l) >= $1)); do wait -n || true; done
}
built=()
for t in "${targets[@]}"; do
  if [[ ! "$out/fuzz_$t" -nt "$src/tests/fuzz/fuzz_$t.cpp" ]] || [[ -n "$(find "$src/include" -newer "$out/fuzz_$t" -print -quit)" ]]; then
    echo "building fuzz_$t"
    rm -f "$out/fuzz_$t" "$out/fuzz_$t.build"
    { clang++ "${flags[@]}" "$src/tests/fuzz/fuzz_$t.cpp" -o "$out/fuzz_$t" -lz; echo $? > "$out/fuzz_$t.build"; } &
    built+=("$t")
    throttle "$jobs_max"
  fi
done
wait
for t in "${built[@]}"; do
  if [[ "$(cat "$out/fuzz_$t.build" 2>/dev/null)" != 0 ]]; then echo "building fuzz_$t failed"; exit 1; fi
done
run_one() {  # $1: target; its status in $out/fuzz_$1.status
  local t=$1 work="$out/corpus_$1"
  rm -rf "$work" && mkdir -p "$work" && cp "$src/tests/fuzz/corpus/$t/"* "$work/"
  if ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
     "$out/fuzz_$t" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=3072 -timeout=20 \
     -artifact_prefix="$out/$t-" "$work" > "$out/fuzz_$t.log" 2>&1; then
    echo 0 > "$out/fuzz_$t.status"
  else
    echo 1 > "$out/fuzz_$t.status"
  fi
}
for t in "${targets[@]}"; do
  rm -f "$out/fuzz_$t.status"
  run_one "$t" &
  throttle "$jobs_max"
done
wait
status=0
for t in "${targets[@]}"; do
  if [[ "$(cat "$out/fuzz_$t.status" 2>/dev/null)" == 0 ]]; then
    echo "fuzz_$t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$out/fuzz_$t.log" | tail -1), no finding"
  else
    echo "fuzz_$t: FINDING (log $out/fuzz_$t.log)"
    tail -40 "$out/fuzz_$t.log"
    status=1
  fi
done
exit $status
