#!/bin/sh
# Runs kvchain-run as a user would: generation on a test model, its
# statistics lines, --help, and one-line errors with exit status 1 for bad
# flags and a missing file.
set -u
build=${top_builddir:-.}
run="$build/tools/kvchain-run"
mkmodel="$build/tests/mkmodel"
[ -x "$run" ] && [ -x "$mkmodel" ] || { echo "SKIP: binaries not built"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# head size 16, so a Q8_0 cache (blocks of 32) must be rejected
"$mkmodel" -o "$dir/m.gguf" --arch qwen2 --type Q4_0 --tok bpe --pre qwen2 \
	--dim 128 --layers 2 --heads 8 --kv-heads 2 --ff 256 --seed 5 ||
	{ echo "FAIL: mkmodel"; exit 1; }

# Greedy generation is deterministic, prints text and two speed lines.
"$run" -m "$dir/m.gguf" -p "the quick fox" -n 12 >"$dir/out1" 2>"$dir/err1" ||
	fail "generation exited $?"
"$run" -m "$dir/m.gguf" -p "the quick fox" -n 12 -t 1 >"$dir/out2" 2>/dev/null ||
	fail "one-thread generation exited $?"
cmp -s "$dir/out1" "$dir/out2" || fail "greedy output differs between 2 threads and 1"
[ -s "$dir/out1" ] || fail "no text printed"
grep -q '^prefill: [0-9]* tokens in .* tokens/s' "$dir/err1" || fail "no prefill line"
grep -q '^decode: 12 tokens in .* tokens/s' "$dir/err1" || fail "no decode line for 12 tokens"

# Sampling with a seed repeats; --quiet prints nothing on stderr.
"$run" -m "$dir/m.gguf" -p "x" -n 8 --temp 1 --top-k 10 --seed 9 -q >"$dir/s1" 2>"$dir/serr" || fail "sampling exited $?"
"$run" -m "$dir/m.gguf" -p "x" -n 8 --temp 1 --top-k 10 --seed 9 -q >"$dir/s2" 2>/dev/null
cmp -s "$dir/s1" "$dir/s2" || fail "same seed gave different text"
[ -s "$dir/serr" ] && fail "--quiet printed on stderr"

"$run" --help >"$dir/help" || fail "--help exited $?"
grep -q -- '--kv-type' "$dir/help" || fail "--help does not list --kv-type"

# Errors: exit status 1 and one line naming the problem.
expect_error() {
	pattern=$1
	shift
	"$run" "$@" >/dev/null 2>"$dir/err"
	status=$?
	[ "$status" -eq 1 ] || fail "'$*' exited $status, expected 1"
	[ "$(wc -l <"$dir/err")" -eq 1 ] || fail "'$*' printed $(wc -l <"$dir/err") lines on stderr"
	grep -q -- "$pattern" "$dir/err" || fail "'$*' error lacks '$pattern': $(cat "$dir/err")"
}
expect_error "No such file" -m "$dir/none.gguf" -p hi
expect_error "--tokens" -m "$dir/m.gguf" -p hi -n abc
expect_error "--kv-type" -m "$dir/m.gguf" -p hi --kv-type q4
expect_error "required" -p hi
expect_error "multiple of 32" -m "$dir/m.gguf" -p hi --kv-type q8_0

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: kvchain-run"
