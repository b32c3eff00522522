#!/bin/sh
# Compares kvchain-run with reference outputs dumped from llama.cpp for the
# same GGUF file: prompt token ids, 64 greedy token ids, and the largest
# absolute logit difference over every step, with an F32 KV cache and one
# thread.
#
# usage: bench/compare-llamacpp.sh MODEL.gguf REFDIR...
# Each REFDIR holds prompt.txt, prompt_tokens.txt and gen_ids.txt ("id<TAB>
# piece" per line) and logits_step000.txt ... (one logit per line, line i
# for token i; step 0 is after the prompt, step N after generated token
# N-1). Prints one line per REFDIR and exits 1 if any ids differ or a logit
# differs by more than 1e-3.
set -eu
build=${BUILD_DIR:-$(cd "$(dirname "$0")/.." && pwd)/build}
if [ $# -lt 2 ] || [ "$1" = --help ] || [ "$1" = -h ]; then
	echo "usage: $0 MODEL.gguf REFDIR..." >&2
	echo "Each REFDIR holds prompt.txt, prompt_tokens.txt, gen_ids.txt and logits_stepNNN.txt" >&2
	echo "dumped from llama.cpp for MODEL.gguf (see the comment at the top of this script)." >&2
	[ $# -ge 1 ] && { [ "$1" = --help ] || [ "$1" = -h ]; } && exit 0
	exit 2
fi
model=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0

for ref in "$@"; do
	n=$(wc -l <"$ref/gen_ids.txt")
	"$build/tools/kvchain-run" -m "$model" -p "$(cat "$ref/prompt.txt")" \
		-n "$n" --temp 0 --kv-type f32 -t 1 --ignore-eos --print-ids \
		--logits "$tmp/logits" -q >"$tmp/text" 2>"$tmp/ids"
	sed -n 's/^prompt ids: //p' "$tmp/ids" | tr ' ' '\n' >"$tmp/prompt_ours"
	sed -n 's/^generated ids: //p' "$tmp/ids" | tr ' ' '\n' >"$tmp/gen_ours"
	cut -f1 "$ref/prompt_tokens.txt" >"$tmp/prompt_ref"
	cut -f1 "$ref/gen_ids.txt" >"$tmp/gen_ref"
	prompt_ok=yes
	gen_ok=yes
	cmp -s "$tmp/prompt_ours" "$tmp/prompt_ref" || prompt_ok=no
	cmp -s "$tmp/gen_ours" "$tmp/gen_ref" || gen_ok=no

	# Largest |ours - llama.cpp| over every step that both have.
	steps=0
	worst=0
	for f in "$ref"/logits_step*.txt; do
		row=$((steps + 1))
		d=$(sed -n "${row}p" "$tmp/logits" | tr ' ' '\n' | paste - "$f" |
			awk 'BEGIN { m = 0 } { d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d }
			     END { if (NR == 0) print "inf"; else printf "%.3g\n", m }')
		worst=$(awk -v a="$worst" -v b="$d" 'BEGIN { print (b == "inf" || b + 0 > a + 0) ? b : a }')
		steps=$row
	done
	logits_ok=$(awk -v w="$worst" 'BEGIN { print (w != "inf" && w + 0 <= 1e-3) ? "yes" : "no" }')
	echo "$(basename "$ref"): prompt ids match: $prompt_ok; $n greedy ids match: $gen_ok; max |logit diff| over $steps steps: $worst (<= 1e-3: $logits_ok)"
	[ "$prompt_ok$gen_ok$logits_ok" = yesyesyes ] || status=1
done
exit $status
