#!/bin/sh
# Builds what is missing, writes a small seeded test model, generates text
# from it in one process with kvchain-run, then runs a two-stage chain
# through kvchaind as two client processes that pass KV by handle. The
# model's weights are random, so its text is noise: the demo shows the
# plumbing. Arguments go to kvchain-run.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}

"$top/scripts/build.sh"
model="$build/demo-model.gguf"
if [ ! -f "$model" ]; then
	"$build/tests/mkmodel" -o "$model" --arch llama --type Q8_0 --tok bpe \
		--pre llama3 --dim 256 --layers 4 --heads 4 --kv-heads 2 --ff 768 \
		--ctx 512 --seed 1
fi

# Random weights emit arbitrary bytes; show control bytes as '?'.
printable() {
	LC_ALL=C tr -c '[:print:]\n' '?'
}

echo "== one process: kvchain-run on $model (random weights)"
"$build/tools/kvchain-run" -m "$model" -p "Hello world, the" -n 32 \
	--temp 0.8 --top-k 40 --seed 1 "$@" | printable

echo
echo "== two processes: kvchaind, then stage A and stage B passing a handle"
dir=$(mktemp -d)
daemon_pid=""
cleanup() {
	[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
"$build/daemon/kvchaind" --model "$model" --socket "$dir/kvchaind.sock" \
	--arena-mib 64 --log-level warn 2>"$dir/kvchaind.log" &
daemon_pid=$!
tries=0
while [ ! -S "$dir/kvchaind.sock" ]; do
	tries=$((tries + 1))
	if [ "$tries" -gt 100 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
		echo "kvchaind did not start; its log:" >&2
		cat "$dir/kvchaind.log" >&2
		exit 1
	fi
	sleep 0.1
done
# stage A prints O_A on stderr and the handle on stdout
"$build/examples/chain-stage-a" --socket "$dir/kvchaind.sock" \
	--max-tokens 24 --ignore-eos 2>&1 >"$dir/handle" | printable
handle=$(cat "$dir/handle")
echo "stage A wrote O_A into segment $handle and exited"
echo "O_B: $("$build/examples/chain-stage-b" --socket "$dir/kvchaind.sock" "$handle" | printable)"
