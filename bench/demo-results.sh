#!/bin/sh
# Measures the demo chain three ways on the test splits of the
# single-round and the multi-round task, one run of kvchain-tune eval
# each: FTHSS (the FTHSS prompts, shared KV), the classic chain (prompts
# tuned on each stage's own text, text passing) and the naive way (the
# classic prompts with shared KV). Writes eval's tables to
# OUT/results.txt and, when gnuplot is installed, a plot of the time and
# memory figures to OUT/results.png.
#
# usage: bench/demo-results.sh [-n EXAMPLES] [-r RIVALS] [-t THREADS] [OUT]
#   -n  test questions (default 200, the whole split)
#   -r  documents that also state the asked attribute (gen-tasks.py
#       --rivals; default 0, the demo's task)
#   OUT the output folder (default the current one); BUILD_DIR names the
#       kvchain build (default build/ of the source tree)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
demo=$top/models/demo
examples=200
rivals=0
threads=2
while getopts n:r:t:h opt; do
	case $opt in
	n) examples=$OPTARG ;;
	r) rivals=$OPTARG ;;
	t) threads=$OPTARG ;;
	*) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
out=${1:-.}
tune=$build/tune/kvchain-tune
[ -x "$tune" ] || { echo "demo-results: $tune is missing; build kvchain first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "demo-results: python3 is required" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The test splits, as build-demo.sh generates them (seed 1).
python3 "$top/models/gen-tasks.py" -o "$tmp" --seed 1 --train 0 --dev 0 \
	--test "$examples" --corpus 0 --rivals "$rivals"
{
	echo "single-round (compress, then answer):"
	"$tune" eval -m "$demo/base.gguf" -d "$tmp/single-test.jsonl" -n 32 \
		-t "$threads" -p "$demo/prompts/fthss/A" \
		-p "$demo/prompts/fthss/B" --classic "$demo/prompts/classic/A" \
		--classic "$demo/prompts/classic/B"
	echo
	echo "multi-round (reason and recall, two hops):"
	"$tune" eval -m "$demo/base.gguf" -d "$tmp/multi-test.jsonl" -n 32 \
		-t "$threads" -p "$demo/prompts/fthss-multi/AB" \
		--classic "$demo/prompts/classic-multi/A" \
		--classic "$demo/prompts/classic-multi/B"
} | tee "$out/results.txt"

if ! command -v gnuplot >/dev/null; then
	echo "demo-results: gnuplot is not installed; no plot" >&2
	exit 0
fi
# way, last stage's time to first token (ms), chain time (ms), peak KV
# (KiB): the single-round rows, then the multi-round ones
awk -F'|' '/^multi-round/ { task = " (multi)" }
$2 ~ /^ (shared|classic|naive) $/ {
	gsub(/ /, "", $2)
	name = $2 == "shared" ? "FTHSS" : $2 == "classic" ? "classic" : "naive"
	printf "\"%s%s\" %s %s %.1f\n", name, task, $6, $7, $8 / 1024
}' "$out/results.txt" >"$tmp/plot.dat"
gnuplot <<EOF
set terminal pngcairo size 1500,460 font ",10"
set output "$out/results.png"
set multiplot layout 1,3 title "Demo chain, test splits ($examples questions per task), $threads threads"
set xtics rotate by -30
set style data histograms
set style fill solid 0.8 border -1
set boxwidth 0.7
set grid ytics
set yrange [0:*]
unset key
set title "last stage's time to first token (ms)"
plot "$tmp/plot.dat" using 2:xtic(1) lc rgb "#3070b0"
set title "whole-chain time (ms)"
plot "$tmp/plot.dat" using 3:xtic(1) lc rgb "#40a040"
set title "peak KV held (KiB)"
plot "$tmp/plot.dat" using 4:xtic(1) lc rgb "#c06030"
unset multiplot
EOF
echo "demo-results: wrote $out/results.txt and $out/results.png"
