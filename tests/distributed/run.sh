#!/usr/bin/env bash
# Runs tests/distributed/data_parallel_check under mpirun and judges the outcome (ctest label distributed).
#   run.sh MPIEXEC EXE MODE [RANKS]
# equivalence: exit 0 and the summary line. mismatch / die / hang: the job must end (no hang: a 120 s bound) with a
# non-zero status and the message that names what happened.
set -u
mpiexec=$1
exe=$2
mode=$3
ranks=${4:-2}
args=(--oversubscribe -np "$ranks" -x OMP_NUM_THREADS=1 -x XTR_DISTRIBUTED_TIMEOUT)
[[ $(id -u) -eq 0 ]] && args+=(--allow-run-as-root)
export OMPI_MCA_btl_vader_single_copy_mechanism=none  # containers often forbid the cross-memory-attach syscalls
case $mode in
  hang) export XTR_DISTRIBUTED_TIMEOUT=5 ;;
  *) export XTR_DISTRIBUTED_TIMEOUT=${XTR_DISTRIBUTED_TIMEOUT:-60} ;;
esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
timeout 120 "$mpiexec" "${args[@]}" "$exe" "$mode" > "$log" 2>&1
rc=$?
seconds=$(( $(date +%s) - start ))
cat "$log"
echo "--- mpirun exit status $rc after ${seconds} s"
fail() { echo "FAIL ($mode): $*"; exit 1; }
case $mode in
  equivalence)
    ((rc == 0)) || fail "exit status $rc"
    grep -q "data-parallel training equals one process" "$log" || fail "no summary line" ;;
  mismatch)
    ((rc != 0 && rc != 124)) || fail "exit status $rc (want an error, not success or a hang)"
    grep -q "differs from rank 0's" "$log" || fail "the error does not say the model differs" ;;
  die)
    ((rc != 0 && rc != 124)) || fail "exit status $rc (want an error, not success or a hang)"
    grep -Eq "exited on signal 9|signal 9 \(Killed\)|did not complete within" "$log" || fail "no message about the dead rank" ;;
  hang)
    ((rc != 0 && rc != 124)) || fail "exit status $rc (want an error, not success or a hang)"
    grep -q "did not complete within 5 s: another rank has died or hangs" "$log" || fail "no timeout message" ;;
  *) fail "unknown mode" ;;
esac
echo "PASS ($mode)"
