#!/bin/sh
# Builds the demo base model from nothing, with fixed seeds. The steps:
# generate the synthetic tasks and the pretraining corpus (gen-tasks.py),
# train a byte-level BPE vocabulary on the corpus (mkvocab.py), write a
# llama GGUF with random weights and that vocabulary (mkbase), pretrain
# every weight (kvchain-tune pretrain), and score the result on the test
# split with plain instruction words (probe.py). Prints and saves the time
# of each step. Needs python3 and no network. See models/README.md.
#
# Settings come from the environment:
#   BUILD_DIR     kvchain build folder (default: build/ of the source tree)
#   DEMO_DIR      where every file goes (default: $BUILD_DIR/demo)
#   DEMO_BUILD=no use the binaries already in $BUILD_DIR, do not run make
#   DEMO_STEPS    pretrain optimiser steps (default 4000)
#   DEMO_THREADS  worker threads (default 2)
#   DEMO_PROBE_N  test examples per task that probe.py scores (default 50)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
out=${DEMO_DIR:-$build/demo}
steps=${DEMO_STEPS:-4000}
threads=${DEMO_THREADS:-2}
probe_n=${DEMO_PROBE_N:-50}
seed=1

# The base model: 1.1 million weights (0.26 million of them in the
# embedding and output matrices), so pretraining takes minutes on two
# cores. Copying a name from the input, which every task needs, appeared
# only after about 2000 steps in trial runs of this setup.
dim=128
layers=4
heads=4
ff=384
ctx=1024

command -v python3 >/dev/null || { echo "build-demo: python3 is required" >&2; exit 1; }
if [ "${DEMO_BUILD:-yes}" != no ]; then
	"$top/scripts/build.sh"
fi
for prog in models/mkbase tune/kvchain-tune tools/kvchain-run; do
	[ -x "$build/$prog" ] || { echo "build-demo: $build/$prog is missing; build kvchain first" >&2; exit 1; }
done
mkdir -p "$out"
timings="$out/timings.txt"
: >"$timings"

now() {
	date +%s.%N
}

# Runs "$@" as step $1 (a name), logs its output to $out/$1.log and
# appends its wall time in seconds to $timings.
step() {
	name=$1
	shift
	echo "== $name"
	start=$(now)
	if ! "$@" >"$out/$name.log" 2>&1; then
		echo "build-demo: step $name failed; its log:" >&2
		tail -n 20 "$out/$name.log" >&2
		exit 1
	fi
	end=$(now)
	awk -v n="$name" -v a="$start" -v b="$end" \
		'BEGIN { printf "%-10s %8.1f s\n", n, b - a }' | tee -a "$timings"
}

step data python3 "$top/models/gen-tasks.py" -o "$out/data" --seed "$seed" \
	--corpus-mix 1,3,1
step vocab python3 "$top/models/mkvocab.py" "$out/data/corpus.jsonl" \
	-o "$out/vocab.json" --size 1024
step init "$build/models/mkbase" --vocab "$out/vocab.json" \
	-o "$out/init.gguf" --dim "$dim" --layers "$layers" --heads "$heads" \
	--kv-heads "$heads" --ff "$ff" --ctx "$ctx" --seed "$seed"
step pretrain "$build/tune/kvchain-tune" pretrain -m "$out/init.gguf" \
	-d "$out/data/corpus.jsonl" -o "$out/base.gguf" --steps "$steps" \
	-b 8 --seq-len 128 --lr 3e-3 --warmup 0.05 --seed "$seed" \
	--log-every 25 -t "$threads"
grep '^step=' "$out/pretrain.log" | tail -n 1
echo "== sample: kvchain-run on a name no training text has"
"$build/tools/kvchain-run" -m "$out/base.gguf" -n 8 -t "$threads" -q \
	-p "$(printf 'answer: question What colour is the zorble?\ncontext The zorble is red.\nanswer:')"
echo
step probe python3 "$top/models/probe.py" --run "$build/tools/kvchain-run" \
	-m "$out/base.gguf" -d "$out/data" -n "$probe_n" -t "$threads"
cat "$out/probe.log"

# TODO: train the stage prompts (kvchain-tune train) on
# $out/data/single-train.jsonl and multi-train.jsonl, and score them with
# kvchain-tune eval on the test split.

echo "== done: $out/base.gguf; step times in $timings"
