#!/usr/bin/env bash
# The one script for a machine with a GPU (issue 16, item 7): builds the CUDA kernels and their tests there with nvcc
# and the host compiler (no CMake configure: the GPU image has CUDA, not Eigen, Boost or zlib), runs every on-device
# test, and writes the logs under $OUT. Budget: inside 8 minutes on the 16-core H200 machine, so that one lent machine
# (15 minutes of device time a session) can run it twice.
#   here:   tests/cuda/device_carry.sh                 (Eigen and Boost.Hana headers into .device/include)
#   device: run(command="tests/cuda/device_check.sh", carry=[".device"], timeout_s=540)
# Exit status: that of the tests (0: every CUDA check passed).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${OUT:-device-out}
mkdir -p "$out"
headers=${XTR_DEVICE_HEADERS:-.device/include}
build=build-device
mkdir -p "$build"
start=$SECONDS

{ nvidia-smi; nvcc --version; g++ --version | head -1; } >"$out/machine.txt" 2>&1

# The flags of cmake/XtrCuda.cmake (warnings as errors) and of the project's C++ targets.
cuda_flags=(-std=c++20 -O3 -arch=sm_90 --expt-relaxed-constexpr -Werror=all-warnings -diag-suppress=554
            -Xcompiler=-Wall,-Wextra,-Werror,-fopenmp -Iinclude -Ikernels -isystem "$headers" -isystem "$headers/eigen3")
cxx_flags=(-std=gnu++20 -O3 -march=native -fopenmp -Wall -Wextra -Wno-unused-parameter
           -Wno-missing-field-initializers -Iinclude -Ikernels -isystem "$headers" -isystem "$headers/eigen3"
           -isystem /usr/local/cuda/include)
pids=()
for unit in kernels/*.cu; do
  nvcc "${cuda_flags[@]}" -c "$unit" -o "$build/$(basename "$unit" .cu).o" >"$out/build-$(basename "$unit" .cu).log" 2>&1 &
  pids+=($!)
done
# NCCL (kernels/nccl.cpp, data-parallel training over NCCL): built and run when the image has it.
nccl_header=$(ls /usr/local/cuda/include/nccl.h /usr/include/nccl.h /usr/local/include/nccl.h 2>/dev/null | head -1)
for unit in kernels/*.cpp; do
  if [[ -z $nccl_header && $unit == kernels/nccl*.cpp ]]; then echo "no nccl.h: $unit not built" >>"$out/build-skipped.log"; continue; fi
  g++ "${cxx_flags[@]}" -c "$unit" -o "$build/$(basename "$unit" .cpp).o" >"$out/build-$(basename "$unit" .cpp).log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$out"/build-*.log >"$out/build.log"
rm -f "$out"/build-*.log
if [[ $status -ne 0 ]]; then
  echo "FAIL: the build (see $out/build.log)"
  tail -50 "$out/build.log"
  exit 1
fi
kernel_objects=()
for o in "$build"/*.o; do
  [[ $o == *cuda_bench.o || $o == *cuda_tests.o || $o == *cuda_backend_tests.o || $o == *nccl*.o ]] || kernel_objects+=("$o")
done
cuda_libs=(-L/usr/local/cuda/lib64 -lcublasLt -lcudart)
{ g++ -fopenmp -o "$build/xtr_cuda_tests" "$build/cuda_tests.o" "$build/cuda_backend_tests.o" "${kernel_objects[@]}" \
      "${cuda_libs[@]}" &&
  g++ "${cxx_flags[@]}" -o "$build/cuda_bench" bench/cuda_bench.cpp "${kernel_objects[@]}" "${cuda_libs[@]}"; } \
  >>"$out/build.log" 2>&1 || { echo "FAIL: the link"; tail -30 "$out/build.log"; exit 1; }
if [[ -n $nccl_header ]]; then
  g++ -fopenmp -o "$build/xtr_nccl_tests" "$build/nccl_tests.o" "$build/nccl.o" "${kernel_objects[@]}" \
      "${cuda_libs[@]}" -L/usr/local/cuda/lib -lnccl >>"$out/build.log" 2>&1 || echo "FAIL: the NCCL link (see build.log)"
fi
echo "built in $((SECONDS - start)) s"

OMP_NUM_THREADS=8 timeout 300 "./$build/xtr_cuda_tests" 2>&1 | tee "$out/cuda_tests.log"
status=${PIPESTATUS[0]}
echo "device_check: tests exit $status after $((SECONDS - start)) s" | tee -a "$out/cuda_tests.log"
# Data-parallel training over NCCL, one process (NCCL refuses two ranks on one GPU): its checks against plain training.
if [[ -x $build/xtr_nccl_tests ]]; then
  OMP_NUM_THREADS=8 timeout 120 "./$build/xtr_nccl_tests" 2>&1 | tee "$out/nccl_tests.log"
  ((PIPESTATUS[0] == 0)) || status=1
else
  echo "xtr_nccl_tests not built (no nccl.h or its link failed)" | tee "$out/nccl_tests.log"
fi

# GPU benchmarks (JSON lines), each bounded; the tests' verdict is the script's exit status.
for args in "--bench gemm" "--bench generate_kv --config enwik8 --steps 2" "--bench train_step --config enwik8 --steps 3" \
            "--bench train_step --config gpt2_small --steps 2"; do
  remaining=$((450 - (SECONDS - start)))
  if ((remaining < 20)); then echo "skipped (time): cuda_bench $args" | tee -a "$out/bench.log"; continue; fi
  # shellcheck disable=SC2086
  timeout "$remaining" "./$build/cuda_bench" $args >>"$out/bench.jsonl" 2>>"$out/bench.log" ||
    echo "cuda_bench $args: exit $?" | tee -a "$out/bench.log"
done
cat "$out/bench.jsonl" 2>/dev/null
echo "device_check: done after $((SECONDS - start)) s"
exit "$status"
