#!/bin/sh
# Runs the demo chain (models/demo: base model, FTHSS prompts) through
# kvchaind on the first three questions of models/demo/questions.jsonl,
# stage A and stage B as two processes passing the segment handle, and
# checks that
# - each O_B equals the expected O_B after lower-casing and dropping
#   punctuation, as kvchain-tune eval scores exact match;
# - O_B equals, byte for byte, what kvchain-tune eval's shared way
#   generates for the same question in one process.
set -u
build=${top_builddir:-.}
src=${top_srcdir:-$(dirname "$0")/..}
daemon="$build/daemon/kvchaind"
stage_a="$build/examples/chain-stage-a"
stage_b="$build/examples/chain-stage-b"
tune="$build/tune/kvchain-tune"
demo="$src/models/demo"
for bin in "$daemon" "$stage_a" "$stage_b" "$tune"; do
	[ -x "$bin" ] || { echo "SKIP: $bin is not built"; exit 77; }
done
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }

dir=$(mktemp -d)
daemon_pid=
cleanup() {
	[ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

head -n 3 "$demo/questions.jsonl" >"$dir/q.jsonl"
# One file per field: I_ALL, I_A and the reference O_B.
python3 - "$dir" <<'EOF' || { echo "FAIL: cannot read the questions"; exit 1; }
import json, sys
d = sys.argv[1]
with open(d + "/q.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
assert len(rows) == 3, "expected 3 questions"
for i, ex in enumerate(rows, 1):
    for key in ("I_ALL", "I_A", "O_B"):
        with open("%s/%d.%s" % (d, i, key), "w", encoding="utf-8") as f:
            f.write(ex[key])
EOF

# In one process: the shared way's O_B.
"$tune" eval -m "$demo/base.gguf" -d "$dir/q.jsonl" -n 32 -t 2 \
	-p "$demo/prompts/fthss/A" -p "$demo/prompts/fthss/B" \
	--write-predictions "$dir/pred.jsonl" >"$dir/eval.out" 2>&1 ||
	{ echo "FAIL: kvchain-tune eval: $(cat "$dir/eval.out")"; exit 1; }
python3 - "$dir" <<'EOF' || { echo "FAIL: cannot read eval's predictions"; exit 1; }
import json, sys
d = sys.argv[1]
with open(d + "/pred.jsonl", encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
        with open("%s/%d.inproc" % (d, i), "w", encoding="utf-8") as out:
            out.write(json.loads(line)["O_B"])
EOF

sock="$dir/kvchaind.sock"
# F32 KV, as kvchain-tune eval keeps it, so both run the same arithmetic.
"$daemon" --model "$demo/base.gguf" --socket "$sock" --arena-mib 32 \
	--kv-type f32 --log-level warn 2>"$dir/daemon.log" &
daemon_pid=$!
tries=0
while [ ! -S "$sock" ]; do
	tries=$((tries + 1))
	if [ "$tries" -gt 300 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
		echo "FAIL: kvchaind did not start: $(cat "$dir/daemon.log")"
		exit 1
	fi
	sleep 0.1
done
export KVCHAIN_TIMEOUT_MS=30000

normal() {
	tr '[:upper:]' '[:lower:]' | tr -d '[:punct:]' |
		sed 's/^[[:space:]]*//; s/[[:space:]]*$//'
}

for i in 1 2 3; do
	"$stage_a" --socket "$sock" --i-all "$(cat "$dir/$i.I_ALL")" \
		--i-a "$(cat "$dir/$i.I_A")" --max-tokens 32 \
		"$demo/prompts/fthss/A" "$demo/prompts/fthss/B" \
		>"$dir/handle" 2>"$dir/a.err" ||
		{ fail "question $i: stage A exited $?: $(cat "$dir/a.err")"; continue; }
	"$stage_b" --socket "$sock" --max-tokens 32 "$(cat "$dir/handle")" \
		>"$dir/$i.daemon" 2>"$dir/b.err" ||
		{ fail "question $i: stage B exited $?: $(cat "$dir/b.err")"; continue; }
	# stage B ends its output with a newline
	o_b=$(cat "$dir/$i.daemon")
	want=$(normal <"$dir/$i.O_B")
	[ "$(printf '%s' "$o_b" | normal)" = "$want" ] ||
		fail "question $i ($(cat "$dir/$i.I_ALL")): O_B '$o_b', expected '$(cat "$dir/$i.O_B")'; O_A was: $(sed -n 's/^O_A: //p' "$dir/a.err")"
	[ "$o_b" = "$(cat "$dir/$i.inproc")" ] ||
		fail "question $i: O_B through kvchaind '$o_b' differs from the in-process chain's '$(cat "$dir/$i.inproc")'"
done

kill -TERM "$daemon_pid"
wait "$daemon_pid" || fail "kvchaind exited $? on SIGTERM"
daemon_pid=

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: demo chain, 3 questions right through kvchaind"
