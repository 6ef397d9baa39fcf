#!/usr/bin/env bash
# Data-parallel scaling on this machine: 1 and 2 ranks (1 OpenMP thread each) of bench/data_parallel_bench for the
# small and enwik8 configs; JSON lines, then a summary with the weak-scaling efficiency
# (tokens/s with N ranks ÷ N × tokens/s with one) and the fraction of the all-reduce hidden behind backward.
#   tools/bench_distributed.sh [BUILD_DIR] [CONFIGS...]
set -euo pipefail
build=${1:-build}
shift || true
configs=("${@:-small enwik8}")
read -r -a configs <<< "${configs[*]}"
exe=$build/bench/data_parallel_bench
mpi=(--oversubscribe -x OMP_NUM_THREADS=1)
[[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)
export OMPI_MCA_btl_vader_single_copy_mechanism=none
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for c in "${configs[@]}"; do
  for n in 1 2; do mpirun "${mpi[@]}" -np "$n" "$exe" --config "$c" | tee -a "$out"; done
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["config"], r["ranks"]): r for r in rows}
print("| config | ranks | tokens/s | efficiency | step s | backward s | all-reduce s (no overlap) | exposed s (overlap) | hidden | bus GB/s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (c, n), r in sorted(by.items()):
    one = by.get((c, 1))
    eff = r["tokens_per_s"] / (n * one["tokens_per_s"]) if one else float("nan")
    print(f'| {c} | {n} | {r["tokens_per_s"]:.0f} | {eff:.2f} | {r["step_s"]:.3f} | {r["backward_s"]:.3f} | '
          f'{r["allreduce_s_no_overlap"]:.3f} | {r["exposed_allreduce_s"]:.3f} | {r["hidden_fraction"]:.2f} | '
          f'{r["allreduce_busbw_gb_s"]:.2f} |')
PY
