#!/bin/sh
# Runs kvchain-tune as a user would, on a tiny random model: bad data and
# prompt files (exit 1, file, line and key named, nothing written), an
# example longer than --max-len (reported, skipped), the loss falling on a
# copy task, kill -9 and --resume against an uninterrupted run (prompt
# files equal byte for byte), and eval's table, whose shared-mode EM and
# F1 must be 1 when the references are the shared mode's own outputs.
set -u
build=${top_builddir:-.}
tune="$build/tune/kvchain-tune"
mkmodel="$build/tests/mkmodel"
[ -x "$tune" ] && [ -x "$mkmodel" ] || { echo "SKIP: binaries not built"; exit 77; }
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
failures=0

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

"$mkmodel" -o "$dir/m.gguf" --seed 3 >/dev/null || { echo "FAIL: mkmodel"; exit 1; }
"$mkmodel" -o "$dir/narrow.gguf" --dim 32 --heads 4 --kv-heads 2 --ff 64 --seed 4 >/dev/null ||
	{ echo "FAIL: mkmodel narrow"; exit 1; }

# The copy task: stage B must repeat the word stage A wrote; B never sees
# I_A, so the word reaches it only through O_A.
: >"$dir/copy.jsonl"
for w in hello world the ing 123 12 he or; do
	printf '{"I_ALL": "copy", "I_A": "%s", "O_A": "%s", "O_B": "%s"}\n' "$w" "$w" "$w" >>"$dir/copy.jsonl"
done

# ---- Bad input: exit 1, one message naming file, line and key, no output
expect_error() {
	pattern=$1
	shift
	rm -rf "$dir/out"
	"$tune" "$@" >/dev/null 2>"$dir/err"
	status=$?
	[ "$status" -eq 1 ] || fail "'$*' exited $status, expected 1"
	grep -q -- "$pattern" "$dir/err" || fail "'$*': error lacks '$pattern': $(cat "$dir/err")"
	[ -e "$dir/out" ] && fail "'$*' wrote $dir/out"
}

printf '%s\n' '{"I_ALL": "q", "O_A": "a", "O_B": "b"}' '{"I_ALL": "q", "O_A": "a"}' >"$dir/missing.jsonl"
expect_error "missing.jsonl:2: missing key O_B" train -m "$dir/m.gguf" -d "$dir/missing.jsonl" -o "$dir/out"

printf '%s\n' '{"I_ALL": "q", "O_A": "a", "answer": "b"}' >"$dir/unknown.jsonl"
expect_error 'unknown.jsonl:1: unknown key "answer"' train -m "$dir/m.gguf" -d "$dir/unknown.jsonl" -o "$dir/out"

printf '%s\n' '{"O_A": "a"}' '' '{"O_A": "a",}' >"$dir/broken.jsonl"
expect_error "broken.jsonl:3: invalid JSON" train -m "$dir/m.gguf" -d "$dir/broken.jsonl" -o "$dir/out"

printf '%s\n' '{"I_ALL": "q", "O_A": "a"}' '{"I_ALL": "q", "O_A": ""}' >"$dir/empty.jsonl"
expect_error "empty.jsonl:2: key O_A: empty output" train -m "$dir/m.gguf" -d "$dir/empty.jsonl" -o "$dir/out"

# the same missing key in a pretty-printed array, found by its line
printf '%s\n' '[' '  {"O_A": "a",' '   "O_B": "b"},' '  {' '    "O_A": "a"' '  }' ']' >"$dir/array.json"
expect_error "array.json:4: missing key O_B" train -m "$dir/m.gguf" -d "$dir/array.json" -o "$dir/out"

expect_error "needs the prompt of stage A" train -m "$dir/m.gguf" -d "$dir/copy.jsonl" -o "$dir/out" --stage B

# a prompt trained for a 32-wide model frozen into a 64-wide one
"$tune" train -m "$dir/narrow.gguf" -d "$dir/copy.jsonl" -o "$dir/narrow" -n 4 -b 8 --epochs 1 --stage A >/dev/null 2>&1 ||
	fail "training on the narrow model exited $?"
expect_error "narrow/A.*width\|narrow/A.*d_model\|narrow/A.*32" train -m "$dir/m.gguf" -d "$dir/copy.jsonl" -o "$dir/out" \
	--stage B --prompts-in "$dir/narrow/A"

# ---- Too long: reported with file and line, skipped, the rest trains
cp "$dir/copy.jsonl" "$dir/long.jsonl"
printf '{"I_ALL": "%s", "O_A": "x", "O_B": "y"}\n' "$(printf 'the world %.0s' 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)" >>"$dir/long.jsonl"
sed -i 's/"I_A": "[^"]*", //' "$dir/long.jsonl"
rm -rf "$dir/out"
"$tune" train -m "$dir/m.gguf" -d "$dir/long.jsonl" -o "$dir/out" -n 4 -b 8 --epochs 1 --stage A --max-len 24 \
	>/dev/null 2>"$dir/err" || fail "training with one long example exited $?"
grep -q "long.jsonl:9: example 8 needs .* positions, more than --max-len 24; skipped" "$dir/err" ||
	fail "long example not reported: $(cat "$dir/err")"
grep -q "stage A: 8 examples" "$dir/err" || fail "long example not skipped: $(cat "$dir/err")"

# ---- Loss falls: 30 epochs of both stages
"$tune" train -m "$dir/m.gguf" -d "$dir/copy.jsonl" -o "$dir/trained" -n 8 -b 4 --epochs 30 --lr 0.1 --seed 1 \
	>"$dir/log" 2>"$dir/err" || fail "training exited $?: $(cat "$dir/err")"
[ -f "$dir/trained/A/adapter_model.safetensors" ] || fail "no adapter for stage A"
[ -f "$dir/trained/B/adapter_config.json" ] || fail "no adapter for stage B"
grep -q '^stage=B step=60/60 epoch=30 loss=[0-9.]* lr=[0-9.e-]* tokens/s=[0-9.]* grad_norm=' "$dir/log" ||
	fail "no final metrics line for stage B"
# With random weights a prompt lowers stage B's loss from about 5.9 to
# about 2.2 in 60 steps; a zero or sign-flipped gradient stays above 5.
first=$(grep '^stage=B' "$dir/log" | head -n 1 | sed 's/.* loss=\([0-9.]*\).*/\1/')
last=$(grep '^stage=B' "$dir/log" | tail -n 1 | sed 's/.* loss=\([0-9.]*\).*/\1/')
echo "stage B loss: first step $first, last step $last"
awk -v f="$first" -v l="$last" 'BEGIN { exit !(l < 0.6 * f) }' ||
	fail "stage B loss fell from $first to $last only, expected below 60%"

# ---- Kill -9 and resume give the same prompt as an uninterrupted run
opts="-m $dir/m.gguf -d $dir/copy.jsonl -n 8 -b 1 --epochs 40 --lr 0.05 --seed 7 --stage A --checkpoint-every 3 -t 1"
# shellcheck disable=SC2086
"$tune" train $opts -o "$dir/whole" >/dev/null 2>&1 || fail "uninterrupted run exited $?"
# shellcheck disable=SC2086
"$tune" train $opts -o "$dir/killed" >"$dir/klog" 2>/dev/null &
pid=$!
tries=0
while ! grep -q '^stage=A step=20/' "$dir/klog" 2>/dev/null && [ $tries -lt 2000 ]; do
	sleep 0.01
	tries=$((tries + 1))
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
pid=
[ -e "$dir/killed/A" ] && fail "the run finished before it was killed; make it longer"
[ -f "$dir/killed/checkpoint" ] || fail "no checkpoint after the kill"
# shellcheck disable=SC2086
"$tune" train $opts -o "$dir/killed" --resume >"$dir/rlog" 2>"$dir/rerr" || fail "resume exited $?"
grep -q "resuming at step" "$dir/rerr" || fail "resume did not start from the checkpoint: $(cat "$dir/rerr")"
cmp -s "$dir/whole/A/adapter_model.safetensors" "$dir/killed/A/adapter_model.safetensors" ||
	fail "resumed prompt differs from the uninterrupted one"

# a checkpoint for other options is rejected
rm -rf "$dir/out2"
cp -r "$dir/killed" "$dir/out2"
"$tune" train -m "$dir/m.gguf" -d "$dir/copy.jsonl" -n 8 -b 2 --stage A -o "$dir/out2" --resume >/dev/null 2>"$dir/err"
[ $? -eq 1 ] || fail "resume with other options did not exit 1"
grep -q "other data, model or options" "$dir/err" || fail "no message for a mismatched checkpoint: $(cat "$dir/err")"

# ---- Eval: the table, and EM 1 against the shared mode's own outputs
"$tune" eval -m "$dir/m.gguf" -d "$dir/copy.jsonl" -p "$dir/trained/A" -p "$dir/trained/B" -n 6 \
	--write-predictions "$dir/pred.jsonl" >"$dir/table" 2>"$dir/err" || fail "eval exited $?: $(cat "$dir/err")"
grep -q '^| way | examples | EM | F1 | stage-B time to first token (ms) | chain time (ms) | peak KV bytes |$' "$dir/table" ||
	fail "no table header: $(cat "$dir/table")"
grep -q '^| shared | 8 | [01]\.[0-9]* | [01]\.[0-9]* | [0-9.]* | [0-9.]* | [1-9][0-9]* |$' "$dir/table" || fail "no shared row"
grep -q '^| recompute | 8 | ' "$dir/table" || fail "no recompute row"
grep -q '^| classic \|^| naive ' "$dir/table" && fail "classic or naive row without --classic"
[ "$(wc -l <"$dir/pred.jsonl")" -eq 8 ] || fail "predictions file has $(wc -l <"$dir/pred.jsonl") lines, expected 8"
"$tune" eval -m "$dir/m.gguf" -d "$dir/pred.jsonl" -p "$dir/trained/A" -p "$dir/trained/B" -n 6 >"$dir/table2" 2>"$dir/err" ||
	fail "eval of the predictions exited $?: $(cat "$dir/err")"
grep -q '^| shared | 8 | 1\.0000 | 1\.0000 | ' "$dir/table2" ||
	fail "shared mode does not match its own outputs: $(cat "$dir/table2")"

# The classic ways: given the same prompts, the naive way is the shared
# way, so their scores must agree.
"$tune" eval -m "$dir/m.gguf" -d "$dir/copy.jsonl" -p "$dir/trained/A" -p "$dir/trained/B" -n 6 \
	--classic "$dir/trained/A" --classic "$dir/trained/B" >"$dir/table3" 2>"$dir/err" ||
	fail "eval with --classic exited $?: $(cat "$dir/err")"
grep -q '^| classic | 8 | [01]\.[0-9]* | [01]\.[0-9]* | [0-9.]* | [0-9.]* | [1-9][0-9]* |$' "$dir/table3" ||
	fail "no classic row: $(cat "$dir/table3")"
shared_scores=$(sed -n 's/^| shared | 8 | \([^|]*| [^|]*\)|.*/\1/p' "$dir/table3")
naive_scores=$(sed -n 's/^| naive | 8 | \([^|]*| [^|]*\)|.*/\1/p' "$dir/table3")
[ -n "$shared_scores" ] && [ "$shared_scores" = "$naive_scores" ] ||
	fail "naive way with the shared way's prompts scored '$naive_scores', shared '$shared_scores'"
# A multi-round chain: both prompts train jointly into one adapter, eval
# splits it per stage, scores the last round's output, and the naive way
# with the same prompts again equals the shared way.
printf '%s\n' '{"I_ALL": "one", "I_B": "two", "O_1A": "a", "O_1B": "b", "O_2A": "c"}' \
	'{"I_ALL": "three", "I_B": "four", "O_1A": "d", "O_1B": "e", "O_2A": "f"}' >"$dir/multi.jsonl"
"$tune" train -m "$dir/m.gguf" -d "$dir/multi.jsonl" -o "$dir/multi" -n 4 -b 2 --epochs 1 \
	--init-text "one" --init-text "two" >/dev/null 2>"$dir/err" ||
	fail "multi-round training exited $?: $(cat "$dir/err")"
"$tune" eval -m "$dir/m.gguf" -d "$dir/multi.jsonl" -p "$dir/multi/AB" -n 4 \
	--classic "$dir/multi/AB" >"$dir/table4" 2>"$dir/err" ||
	fail "multi-round eval exited $?: $(cat "$dir/err")"
grep -q '^| way | examples | EM | F1 | stage-A time to first token (ms) | ' "$dir/table4" ||
	fail "the multi-round table does not time stage A, the last round's: $(cat "$dir/table4")"
for way in shared recompute classic naive; do
	grep -q "^| $way | 2 | " "$dir/table4" || fail "no $way row for the multi-round chain"
done
shared_scores=$(sed -n 's/^| shared | 2 | \([^|]*| [^|]*\)|.*/\1/p' "$dir/table4")
naive_scores=$(sed -n 's/^| naive | 2 | \([^|]*| [^|]*\)|.*/\1/p' "$dir/table4")
[ -n "$shared_scores" ] && [ "$shared_scores" = "$naive_scores" ] ||
	fail "multi-round naive way with the shared way's prompts scored '$naive_scores', shared '$shared_scores'"

expect_error "has 2 stages but --classic gave 1" eval -m "$dir/m.gguf" -d "$dir/copy.jsonl" \
	-p "$dir/trained/A" -p "$dir/trained/B" --classic "$dir/trained/A"

expect_error "has 2 stages but --prompts gave 1" eval -m "$dir/m.gguf" -d "$dir/copy.jsonl" -p "$dir/trained/A"

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: kvchain-tune"
