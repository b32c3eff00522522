#!/bin/sh
# The chain of chain-stage-a and chain-stage-b as kvchain commands: two
# random stage prompts, stage A reads the question and a passage and
# writes O_A, the passage's KV is dropped, and stage B answers from the
# question and O_A's KV. Each command is its own client process; the
# segment lives between them for the daemon's TTL (300 s by default).
#
# Usage: examples/chain.sh [SOCKET]   (default: as libkvchain chooses)
set -eu
kvchain=${KVCHAIN:-kvchain}
if [ $# -gt 0 ]; then
	kvchain="$kvchain --socket $1"
fi

p_a=$($kvchain prompt-random 8 --seed 1)
p_b=$($kvchain prompt-random 8 --seed 2)
chain=$($kvchain chain "$p_a" "$p_b")
seg=$($kvchain create "$chain")

$kvchain append "$seg" --shared "What colour is the sky on a clear day?" >/dev/null
i_a=$($kvchain append "$seg" --stage 0 \
	"Passage: on a clear day the sky looks blue because air scatters short wavelengths of sunlight the most.")

echo "O_A:"
$kvchain generate "$seg" --stage 0 --max-tokens 32
$kvchain drop "$seg" "$i_a"
echo "O_B:"
$kvchain generate "$seg" --stage 1 --max-tokens 32
