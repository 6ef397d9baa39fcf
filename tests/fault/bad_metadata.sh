#!/usr/bin/env bash
# Issue 13's metadata reproductions: a checkpoint whose own metadata holds "abc" or a negative number where train_enwik8
# reads a count (val_position, step) must be refused with the key and the text named, and a non-zero exit below 128.
# Only the metadata changes, so the file is otherwise intact (CRC-32C covers tensor data, not metadata).
#   bad_metadata.sh TRAIN_ENWIK8 WORK_DIR
set -u
exe=$1
dir=$2
mkdir -p "$dir"
ck="$dir/meta.safetensors"
args=(--dim 32 --depth 1 --heads 2 --seq-len 32 --batch-size 2 --validate-every 1 --val-batches 1 --generate-length 0)
"$exe" "${args[@]}" --num-batches 1 --save "$ck" > "$dir/first.log" 2>&1 || { echo "the first run failed"; cat "$dir/first.log"; exit 1; }
fail=0
# KEY's quoted decimal value in the safetensors JSON header becomes "abc" (letters) or "-1" (negative)
check() {
  local key=$1 kind=$2 bad="$dir/bad-$1-$2.safetensors"
  # the JSON header is rewritten and its 8-byte length prefix with it (tensor offsets count from the header's end)
  KEY=$key KIND=$kind perl -e '
    binmode STDIN; binmode STDOUT; local $/; my $file = <STDIN>;
    my ($k, $kind) = ($ENV{KEY}, $ENV{KIND});
    my $n = unpack("Q<", substr($file, 0, 8)); my $header = substr($file, 8, $n);
    $header =~ s/("\Q$k\E":")\d+"/$1 . ($kind eq "letters" ? "abc" : "-1") . "\""/e or die "no key $k\n";
    print pack("Q<", length($header)), $header, substr($file, 8 + $n);' < "$ck" > "$bad" ||
    { echo "cannot edit $key"; fail=1; return; }
  "$exe" "${args[@]}" --num-batches 2 --resume "$bad" > "$dir/resume.log" 2>&1
  local rc=$?
  if ((rc == 0 || rc >= 128)); then
    echo "$key = $kind: exit status $rc (want 1..127)"; cat "$dir/resume.log"; fail=1
  elif ! grep -q "'$key'.* is not a count: '" "$dir/resume.log"; then
    echo "$key = $kind: the error does not name the key and the text"; cat "$dir/resume.log"; fail=1
  else
    echo "$key = $kind: $(grep -o "'$key'.*" "$dir/resume.log" | head -1) (exit $rc)"
  fi
}
for key in val_position step; do
  for kind in letters negative; do check "$key" "$kind"; done
done
((fail == 0)) && echo "metadata counts that are not counts are refused, naming the key and the text"
exit $fail
