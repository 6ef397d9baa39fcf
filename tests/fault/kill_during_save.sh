#!/usr/bin/env bash
# Fault injection: a training run that saves a checkpoint every step is killed with SIGKILL at a random moment, ROUNDS
# times; after every kill the checkpoint must load (checksum, finiteness, configuration) and resume.
#   kill_during_save.sh TRAIN_ENWIK8 WORK_DIR [ROUNDS]
set -u
exe=$1
dir=$2
rounds=${3:-12}
mkdir -p "$dir"
ck="$dir/fault.safetensors"
rm -f "$ck" "$ck".tmp.*
args=(--dim 64 --depth 1 --heads 2 --seq-len 64 --batch-size 4 --validate-every 1 --val-batches 1
      --generate-length 0 --save "$ck")
"$exe" "${args[@]}" --num-batches 2 > "$dir/first.log" 2>&1 || { echo "the first run failed"; cat "$dir/first.log"; exit 1; }
for i in $(seq 1 "$rounds"); do
  "$exe" "${args[@]}" --num-batches 1000000 --resume "$ck" > /dev/null 2>&1 &
  pid=$!
  sleep "0.$(( RANDOM % 9 + 1 ))"  # 0.1 … 0.9 s: a save happens every few milliseconds
  kill -KILL "$pid"
  wait "$pid" 2> /dev/null
  if ! "$exe" "${args[@]}" --num-batches 1 --resume "$ck" > "$dir/resume.log" 2>&1; then
    echo "round $i: the checkpoint left by the killed run does not load"
    cat "$dir/resume.log"
    exit 1
  fi
  grep -q "resumed from" "$dir/resume.log" || { echo "round $i: no resume"; cat "$dir/resume.log"; exit 1; }
done
left=$(ls "$ck".tmp.* 2> /dev/null | wc -l)
echo "$rounds kills during checkpoint writes: every checkpoint loaded and resumed ($left temporary file(s) of the last kill left, removed by the next save)"
