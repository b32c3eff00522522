#!/bin/sh
# Builds the demo chain's base model and prompts from nothing, with fixed
# seeds, in these steps:
#   - gen-tasks.py: the synthetic tasks and pretraining corpora;
#   - mkvocab.py: a byte-level BPE vocabulary from the first corpus;
#   - mkbase: a llama GGUF with random weights and that vocabulary;
#   - kvchain-tune pretrain: every weight, in six stages;
#   - probe.py: the text-trained model with plain instruction words;
#   - kvchain-tune train: the stage prompts, FTHSS and classic;
#   - kvchain-tune eval: the three ways on the test splits.
# Prints and saves the time of each step. Needs python3 and no network,
# and takes about an hour on two cores. The files of models/demo/ come out
# as $DEMO_DIR/base.gguf, prompts/ and the logs. See models/README.md.
#
# Settings come from the environment:
#   BUILD_DIR     kvchain build folder (default: build/ of the source tree)
#   DEMO_DIR      where every file goes (default: $BUILD_DIR/demo)
#   DEMO_BUILD=no use the binaries already in $BUILD_DIR, do not run make
#   DEMO_THREADS  worker threads (default 2)
#   DEMO_PROBE_N  test examples per task that probe.py scores (default 50)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
out=${DEMO_DIR:-$build/demo}
threads=${DEMO_THREADS:-2}
probe_n=${DEMO_PROBE_N:-50}
seed=1

# The base model: 1.1 million weights (0.26 million of them in the
# embedding and output matrices). Copying a name from the input, which
# every task needs, appeared only after about 2000 steps in trial runs of
# this setup.
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

# The corpora of the later pretraining stages: the same tasks and names
# (seed 1), more compress texts, 2 then 3 documents, then the chain's own
# framing with instruction words where the prompts will sit. The last one,
# data-demo/, is the demo chain's task: only the asked creature's document
# states the asked attribute (--rivals 0), and the two-hop texts come as
# the classic chain's stages read them. Its task files are what the
# prompts are trained and scored on.
step data-2 python3 "$top/models/gen-tasks.py" -o "$out/data-2" \
	--seed "$seed" --corpus-mix 3,1,1 --docs 2
step data-3 python3 "$top/models/gen-tasks.py" -o "$out/data-3" \
	--seed "$seed" --corpus-mix 3,1,1
step data-chain python3 "$top/models/gen-tasks.py" -o "$out/data-chain" \
	--seed "$seed" --corpus-format chain --corpus-mix 3,1,0
step data-demo python3 "$top/models/gen-tasks.py" -o "$out/data-demo" \
	--seed "$seed" --corpus-format chain --corpus-mix 3,1,1 --rivals 0

# Runs kvchain-tune pretrain as step $1 from model $2 for $3 steps. The
# peak learning rate is $4, the window seed $5, the warm-up $6 and the
# loss $7 (all or outputs). The other arguments are the corpora.
pretrain() {
	name=$1 from=$2 steps=$3 lr=$4 window_seed=$5 warmup=$6 loss=$7
	shift 7
	for corpus in "$@"; do
		set -- "$@" -d "$corpus"
		shift
	done
	step "$name" "$build/tune/kvchain-tune" pretrain -m "$from" "$@" \
		-o "$out/$name.gguf" --steps "$steps" -b 8 --seq-len 128 \
		--lr "$lr" --seed "$window_seed" --warmup "$warmup" \
		--loss "$loss" --log-every 25 -t "$threads"
	grep '^step=' "$out/$name.log" | tail -n 1
}

pretrain pretrain-1 "$out/init.gguf" 4000 3e-3 1 0.05 all "$out/data/corpus.jsonl"
pretrain pretrain-2 "$out/pretrain-1.gguf" 1500 2e-3 2 0.03 all "$out/data-2/corpus.jsonl"
pretrain pretrain-3 "$out/pretrain-2.gguf" 3400 2e-3 3 0.03 all "$out/data-3/corpus.jsonl"
pretrain pretrain-4 "$out/pretrain-3.gguf" 1100 1e-3 4 0.03 all "$out/data-3/corpus.jsonl"
pretrain pretrain-5 "$out/pretrain-4.gguf" 3000 1.5e-3 4 0.02 all "$out/data-chain/corpus.jsonl"
pretrain pretrain-6 "$out/pretrain-5.gguf" 4000 1.5e-3 5 0.02 outputs \
	"$out/data-demo/corpus.jsonl" "$out/data-demo/corpus-multi-A.jsonl" \
	"$out/data-demo/corpus-multi-B.jsonl"
cp "$out/pretrain-6.gguf" "$out/base.gguf"

echo "== sample: kvchain-run on a name no training text has"
"$build/tools/kvchain-run" -m "$out/base.gguf" -n 8 -t "$threads" -q \
	--special -p "$(printf 'answer: question context answer:\nWhat colour is the zorble?\nThe zorble is red.\n<s>')"
echo
step probe python3 "$top/models/probe.py" --run "$build/tools/kvchain-run" \
	-m "$out/pretrain-4.gguf" -d "$out/data" -n "$probe_n" -t "$threads"
cat "$out/probe.log"

# The single-round stage prompts, from the same train split. FTHSS trains
# A, then B with the cascade mask reading A's KV. The classic chain tunes
# each stage alone on its own text, B on the reference O_A as text. Each
# prompt starts from its instruction words, so before training it is the
# hard prompt the base model was pretrained with.
# The words end with a newline, which $(...) drops.
a_words="$(cat "$out/data-demo/words-A.txt")
"
b_words="$(cat "$out/data-demo/words-B.txt")
"
ma_words="$(cat "$out/data-demo/words-multi-A.txt")
"
mb_words="$(cat "$out/data-demo/words-multi-B.txt")
"
# Each prompt has as many virtual tokens as its words have tokens.
count_tokens() {
	"$build/tools/kvchain-run" -m "$out/base.gguf" -p "$1" --no-bos -n 1 \
		--print-ids -q 2>&1 >/dev/null |
		awk '/^prompt ids:/ { print NF - 2; exit }'
}
a_len=$(count_tokens "$a_words")
b_len=$(count_tokens "$b_words")
ma_len=$(count_tokens "$ma_words")
mb_len=$(count_tokens "$mb_words")
# The stages of a multi-round chain train jointly with one prompt length,
# so the shorter words repeat to fill it.
m_len=$((ma_len > mb_len ? ma_len : mb_len))
tune() {
	name=$1
	shift
	step "$name" "$build/tune/kvchain-tune" train -m "$out/base.gguf" \
		--seed "$seed" -b 8 --log-every 25 -t "$threads" "$@"
	grep '^stage=' "$out/$name.log" | tail -n 1
}
rm -rf "$out/prompts"
mkdir -p "$out/prompts"
tune fthss-A -d "$out/data-demo/single-train.jsonl" -o "$out/prompts/fthss-A" \
	-s A -n "$a_len" --init-text "$a_words" --lr 1e-2 --epochs 1
tune fthss-B -d "$out/data-demo/single-train.jsonl" -o "$out/prompts/fthss-B" \
	-s B --prompts-in "$out/prompts/fthss-A/A" -n "$b_len" \
	--init-text "$b_words" --lr 1e-2 --epochs 1
tune classic-A -d "$out/data-demo/classic-A-train.jsonl" \
	-o "$out/prompts/classic-A" -n "$a_len" --init-text "$a_words" \
	--lr 1e-2 --epochs 1
tune classic-B -d "$out/data-demo/classic-B-train.jsonl" \
	-o "$out/prompts/classic-B" -n "$b_len" --init-text "$b_words" \
	--lr 1e-2 --epochs 1

# The multi-round chain: FTHSS trains both prompts jointly on every round;
# the classic chain tunes each stage alone on each of its rounds' text.
tune fthss-multi -d "$out/data-demo/multi-train.jsonl" \
	-o "$out/prompts/fthss-multi" -n "$m_len" --init-text "$ma_words" \
	--init-text "$mb_words" --lr 1e-2 --epochs 6
tune classic-multi-A -d "$out/data-demo/classic-multi-A-train.jsonl" \
	-o "$out/prompts/classic-multi-A" -n "$ma_len" \
	--init-text "$ma_words" --lr 1e-2 --epochs 1
tune classic-multi-B -d "$out/data-demo/classic-multi-B-train.jsonl" \
	-o "$out/prompts/classic-multi-B" -n "$mb_len" \
	--init-text "$mb_words" --lr 1e-2 --epochs 1

# The comparison of docs/results.md: the three ways on the test splits.
step eval "$build/tune/kvchain-tune" eval -m "$out/base.gguf" \
	-d "$out/data-demo/single-test.jsonl" -n 32 -t "$threads" \
	-p "$out/prompts/fthss-A/A" -p "$out/prompts/fthss-B/B" \
	--classic "$out/prompts/classic-A/A" --classic "$out/prompts/classic-B/A"
cat "$out/eval.log"
step eval-multi "$build/tune/kvchain-tune" eval -m "$out/base.gguf" \
	-d "$out/data-demo/multi-test.jsonl" -n 32 -t "$threads" \
	-p "$out/prompts/fthss-multi/AB" \
	--classic "$out/prompts/classic-multi-A/A" \
	--classic "$out/prompts/classic-multi-B/A"
cat "$out/eval-multi.log"

echo "== done: $out/base.gguf and $out/prompts; step times in $timings"
