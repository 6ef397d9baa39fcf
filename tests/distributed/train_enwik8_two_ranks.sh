#!/usr/bin/env bash
# issue 14: `mpirun -np 2 train_enwik8 --batch-size 4 …` logs the same train_loss per step (float tolerance) as
# `train_enwik8 --batch-size 8 …` with the same seed, logs once, and its checkpoint (rank 0's) resumes on two ranks.
#   train_enwik8_two_ranks.sh MPIEXEC TRAIN_ENWIK8 WORK_DIR
set -u
mpiexec=$1
exe=$2
dir=$3
mkdir -p "$dir"
rm -f "$dir"/*.jsonl "$dir"/*.safetensors
args=(--dim 64 --depth 2 --heads 2 --seq-len 64 --gradient-accumulate-every 2 --num-batches 12 --validate-every 6
      --generate-every 12 --generate-length 16 --learning-rate 1e-3 --seed 7)
mpi=(--oversubscribe -np 2)
[[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export XTR_DISTRIBUTED_TIMEOUT=60
OMP_NUM_THREADS=2 timeout 200 "$exe" "${args[@]}" --batch-size 8 --log-jsonl "$dir/one.jsonl" > "$dir/one.log" 2>&1 ||
  { echo "one process failed"; cat "$dir/one.log"; exit 1; }
timeout 200 "$mpiexec" "${mpi[@]}" "$exe" "${args[@]}" --batch-size 4 --threads 1 --log-jsonl "$dir/two.jsonl" \
  --save "$dir/two.safetensors" > "$dir/two.log" 2>&1 || { echo "two ranks failed"; cat "$dir/two.log"; exit 1; }
cat "$dir/two.log"
grep -q "2 ranks x batch 4 = global batch 8" "$dir/two.log" || { echo "no global batch line"; exit 1; }
n=$(grep -c "validation loss" "$dir/two.log")
((n == 2)) || { echo "the log has $n validation lines, want 2 (rank 0 alone logs)"; exit 1; }
# compare train_loss and val_loss row by row
paste -d'\n' "$dir/one.jsonl" "$dir/two.jsonl" | awk '
  function field(line, key,   m) { if (match(line, "\"" key "\": [-0-9.e+]+")) { m = substr(line, RSTART, RLENGTH); sub(/.*: /, "", m); return m + 0 } return "" }
  NR % 2 == 1 { a = $0; next }
  { rows++
    for (k = 1; k <= 2; k++) { key = (k == 1 ? "train_loss" : "val_loss"); x = field(a, key); y = field($0, key)
      if (x == "" && y == "") continue
      d = x - y; if (d < 0) d = -d; if (d > worst) worst = d
      if (d > 2e-4) { printf "row %d %s: one process %s, two ranks %s\n", rows, key, x, y; bad = 1 } } }
  END { printf "%d rows compared, max |difference| %.3g\n", rows, worst; exit bad }' || exit 1
((  $(wc -l < "$dir/one.jsonl") == $(wc -l < "$dir/two.jsonl") )) || { echo "row counts differ"; exit 1; }
# rank 0's checkpoint resumes on two ranks
timeout 200 "$mpiexec" "${mpi[@]}" "$exe" "${args[@]}" --batch-size 4 --threads 1 --num-batches 14 \
  --resume "$dir/two.safetensors" > "$dir/resume.log" 2>&1 || { echo "resume failed"; cat "$dir/resume.log"; exit 1; }
grep -q "resumed from .* at step 12" "$dir/resume.log" || { echo "no resume"; cat "$dir/resume.log"; exit 1; }
echo "2 ranks x batch 4 log the train_loss of 1 process x batch 8 (and resume from rank 0's checkpoint)"
