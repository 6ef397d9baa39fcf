#!/usr/bin/env bash
# Every CUDA translation unit in kernels/ compiled with ptxas's report (-Xptxas -v) for each target architecture; fails
# when any kernel spills registers to local memory or has a stack frame (local memory too: e.g. a register array
# indexed by a run-time value), or when the report cannot be read. No GPU needed. Registered in ctest as cuda.spills
# (tests/CMakeLists.txt) with the nvcc flags of xtr_cuda_kernels (XTR_CUDA_FLAGS, cmake/XtrCuda.cmake).
#   usage: check_spills.sh NVCC ARCHS SOURCE_DIR [NVCC FLAGS...]     ARCHS: comma-separated, e.g. 90 or 80,90
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 NVCC ARCHS SOURCE_DIR [NVCC FLAGS...]" >&2
  exit 2
fi
nvcc=$1 archs=$2 source=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
shopt -s nullglob
units=("$source"/kernels/*.cu)
if [[ ${#units[@]} -eq 0 ]]; then
  echo "FAIL: no .cu files under $source/kernels" >&2
  exit 1
fi
for arch in ${archs//,/ }; do
  arch=${arch%-real}
  arch=${arch%-virtual}
  if [[ ! $arch =~ ^[0-9]+a?$ ]]; then  # all, all-major, native: check the project's default
    echo "note: architecture '$arch' names no single sm; checking sm_90"
    arch=90
  fi
  for unit in "${units[@]}"; do
    name=$(basename "$unit" .cu)
    log="$work/$name.sm_$arch.log"
    if ! "$nvcc" -std=c++20 -arch="sm_$arch" -I"$source/include" "$@" -Xptxas -v -c "$unit" -o "$work/$name.o" \
        >"$log" 2>&1; then
      echo "FAIL: $name.cu does not compile for sm_$arch:" >&2
      cat "$log" >&2
      status=1
      continue
    fi
    # ptxas prints, per kernel: "Compiling entry function '<mangled>' for 'sm_90'", then
    # "<a> bytes stack frame, <b> bytes spill stores, <c> bytes spill loads".
    kernels=$(grep -c "Compiling entry function" "$log" || true)
    reports=$(grep -c "bytes stack frame" "$log" || true)
    if [[ $kernels -eq 0 || $kernels -ne $reports ]]; then
      echo "FAIL: $name.cu sm_$arch: $kernels kernels but $reports ptxas reports; cannot read:" >&2
      cat "$log" >&2
      status=1
      continue
    fi
    bad=$(awk '
      /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); kernel = substr($0, RSTART + 1, RLENGTH - 2) }
      /bytes stack frame/ {
        n = split($0, w, /[ ,]+/)
        for (i = 1; i <= n; ++i) if (w[i] ~ /^[0-9]+$/) v[++k] = w[i]
        if (v[k - 2] + 0 > 0 || v[k - 1] + 0 > 0 || v[k] + 0 > 0)
          printf "  %s: %s bytes stack frame, %s bytes spill stores, %s bytes spill loads\n", kernel, v[k - 2], v[k - 1], v[k]
        k = 0
      }' "$log")
    if [[ -n $bad ]]; then
      echo "FAIL: $name.cu sm_$arch uses local memory:" >&2
      echo "$bad" >&2
      status=1
    else
      echo "ok: $name.cu sm_$arch: $kernels kernels, 0 bytes stack frame, 0 bytes spill"
    fi
  done
done
exit $status
