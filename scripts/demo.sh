#!/bin/sh
# Builds what is missing, writes a small seeded test model, and generates
# text from it with kvchain-run. Any arguments go to kvchain-run.
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
echo "model: $model (random weights, so the text is gibberish)" >&2
exec "$build/tools/kvchain-run" -m "$model" -p "Hello world, the" -n 48 \
	--temp 0.8 --top-k 40 --seed 1 "$@"
