#!/usr/bin/env bash
# A command that must be refused: a non-zero exit status below 128 (an error, not a crash or a signal) and output
# matching an extended regular expression (the message naming the value and the limit).
#   refuses.sh REGEX COMMAND [ARG...]
set -u
regex=$1
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
timeout 120 "$@" > "$log" 2>&1
rc=$?
cat "$log"
echo "--- exit status $rc"
if ((rc == 0 || rc >= 124)); then
  echo "FAIL: exit status $rc (want an error: 1..123; 124 is a timeout, 128 and above a signal)"
  exit 1
fi
if ! grep -Eq -- "$regex" "$log"; then
  echo "FAIL: no line matches: $regex"
  exit 1
fi
echo "refused as expected"
