#!/bin/sh
# Runs kvchain-tune pretrain as a user would, on a tiny random model. The
# loss must fall on a cycle of words, and kvchain-run must load the written
# file and continue the cycle. Kill -9 and --resume must give the same file
# byte for byte as an uninterrupted run. Bad input must exit 1 with a
# message.
set -u
build=${top_builddir:-.}
tune="$build/tune/kvchain-tune"
mkmodel="$build/tests/mkmodel"
run="$build/tools/kvchain-run"
[ -x "$tune" ] && [ -x "$mkmodel" ] && [ -x "$run" ] ||
	{ echo "SKIP: binaries not built"; exit 77; }
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
failures=0

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

"$mkmodel" -o "$dir/init.gguf" --seed 3 >/dev/null || { echo "FAIL: mkmodel"; exit 1; }
line='{"text": "one two three four five six seven eight nine ten one two three four five six seven eight nine ten"}'
for i in 1 2 3 4 5 6 7 8; do echo "$line"; done >"$dir/text.jsonl"

# ---- The loss falls and the file serves
"$tune" pretrain -m "$dir/init.gguf" -d "$dir/text.jsonl" -o "$dir/out.gguf" \
	--steps 60 --seq-len 32 -b 4 --lr 5e-3 --log-every 10 -t 1 \
	>"$dir/log" 2>"$dir/err" || fail "pretrain exited $?: $(cat "$dir/err")"
first=$(sed -n 's/^step=10\/60 loss=\([0-9.]*\).*/\1/p' "$dir/log")
last=$(sed -n 's/^step=60\/60 loss=\([0-9.]*\).*/\1/p' "$dir/log")
[ -n "$first" ] && [ -n "$last" ] || fail "no metrics lines: $(cat "$dir/log")"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.5 && b < a / 4) }' ||
	fail "loss fell from $first (step 10) to $last (step 60) only"
"$run" -m "$dir/out.gguf" -p "one two three" -n 8 >"$dir/gen" 2>"$dir/err" ||
	fail "kvchain-run exited $?: $(cat "$dir/err")"
grep -q "four five" "$dir/gen" || fail "the trained model does not continue the cycle: $(cat "$dir/gen")"

# ---- Kill -9 and resume give the same model as an uninterrupted run
opts="-m $dir/init.gguf -d $dir/text.jsonl --steps 200 --seq-len 16 -b 2 --seed 5 --checkpoint-every 7 --log-every 1 -t 1"
# shellcheck disable=SC2086
"$tune" pretrain $opts -o "$dir/whole.gguf" >/dev/null 2>&1 || fail "uninterrupted run exited $?"
# shellcheck disable=SC2086
"$tune" pretrain $opts -o "$dir/killed.gguf" >"$dir/klog" 2>/dev/null &
pid=$!
tries=0
while ! grep -q '^step=20/' "$dir/klog" 2>/dev/null && [ $tries -lt 2000 ]; do
	sleep 0.01
	tries=$((tries + 1))
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
pid=
[ -e "$dir/killed.gguf" ] && fail "the run finished before it was killed; make it longer"
[ -f "$dir/killed.gguf.checkpoint" ] || fail "no checkpoint after the kill"
# shellcheck disable=SC2086
"$tune" pretrain $opts -o "$dir/killed.gguf" --resume >/dev/null 2>"$dir/rerr" ||
	fail "resume exited $?: $(cat "$dir/rerr")"
grep -q "resuming at step" "$dir/rerr" || fail "resume did not start from the checkpoint: $(cat "$dir/rerr")"
cmp -s "$dir/whole.gguf" "$dir/killed.gguf" || fail "resumed model differs from the uninterrupted one"

# ---- Bad input: exit 1 and a message naming the problem
expect_error() {
	pattern=$1
	shift
	"$tune" pretrain "$@" >/dev/null 2>"$dir/err"
	status=$?
	[ $status -eq 1 ] || fail "$* exited $status, expected 1"
	grep -q "$pattern" "$dir/err" || fail "$*: no message matching '$pattern': $(cat "$dir/err")"
}
printf '{"text": "fine"}\n{"txt": "typo"}\n' >"$dir/bad.jsonl"
expect_error 'bad.jsonl:2:' -m "$dir/init.gguf" -d "$dir/bad.jsonl" -o "$dir/x.gguf"
expect_error 'fewer than --seq-len' -m "$dir/init.gguf" -d "$dir/text.jsonl" -o "$dir/x.gguf" --seq-len 5000
expect_error 'required' -m "$dir/init.gguf" -o "$dir/x.gguf"
[ -e "$dir/x.gguf" ] && fail "a failed run wrote its output"

[ $failures -eq 0 ] || exit 1
echo "PASS"
