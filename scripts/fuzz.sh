#!/bin/sh
# SPDX-License-Identifier: MIT
#
# fuzz.sh - builds a libFuzzer target with clang, ASan and UBSan straight
# from the sources, seeds its corpus and fuzzes. Targets:
#   gguf         the GGUF reader (tests/fuzz-gguf.c), seeded with a hand-made
#                minimal file and a few tests/mkmodel outputs
#   safetensors  the PEFT adapter reader (tests/fuzz-safetensors.c), seeded
#                with small F32, F16 and BF16 adapter_model.safetensors files
#   ring         the shared-memory ring reader and region header check
#                (tests/fuzz-ring.c), seeded with an empty and a one-message ring
#
# Usage: scripts/fuzz.sh [SECONDS]      (default 60)
# Environment:
#   FUZZ_TARGET  gguf, safetensors or ring (default gguf)
#   FUZZ_DIR  work folder for the binary, corpus and crashes
#             (default ./fuzz-TARGET under the current folder)
#   JOBS      parallel fuzzing processes (default 1)
# Exits 0 when the run ends without a crash; a crash leaves its input in
# $FUZZ_DIR/crashes and exits nonzero.

set -eu

seconds=${1:-60}
case $seconds in
''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 1 ;;
esac
target=${FUZZ_TARGET:-gguf}
case $target in
gguf|safetensors|ring) ;;
*) echo "fuzz.sh: FUZZ_TARGET must be gguf, safetensors or ring, got '$target'" >&2; exit 1 ;;
esac
src=$(cd "$(dirname "$0")/.." && pwd)
work=${FUZZ_DIR:-$PWD/fuzz-$target}
jobs=${JOBS:-1}

# clang with its libFuzzer runtime, from Debian packages.
have_fuzzer() {
	echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
		clang -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null
}
if ! command -v clang >/dev/null 2>&1 || ! have_fuzzer; then
	echo "fuzz.sh: installing clang and its fuzzer runtime (apt-get)"
	apt-get install -y clang libclang-rt-dev >/dev/null 2>&1 ||
		apt-get install -y clang libclang-rt-14-dev
	have_fuzzer || { echo "fuzz.sh: clang cannot link -fsanitize=fuzzer" >&2; exit 1; }
fi

mkdir -p "$work/obj" "$work/corpus" "$work/crashes"

# A config.h in place of the one configure writes.
{
	echo '#define _GNU_SOURCE 1'
	[ "$(uname -m)" = x86_64 ] && echo '#define KVC_X86_64 1'
} >"$work/obj/config.h"

cflags="-g -O1 -std=c11 -DHAVE_CONFIG_H -I$work/obj -I$src/kernels -I$src/engine -I$src/tests"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

# The kernels are linked whole because types.c calls into the dispatch
# table. Each x86 file gets the instruction-set flags it is written for.
kernel_objs=""
for f in types scalar dispatch pool; do
	clang $cflags $san -c "$src/kernels/$f.c" -o "$work/obj/$f.o"
	kernel_objs="$kernel_objs $work/obj/$f.o"
done
if [ "$(uname -m)" = x86_64 ]; then
	clang $cflags $san -mavx2 -mfma -mf16c \
		-c "$src/kernels/arch/x86/avx2.c" -o "$work/obj/avx2.o"
	clang $cflags $san -mavx512f -mavx512bw -mavx512vl -mavx512dq \
		-mavx512vnni -mavx2 -mfma -mf16c \
		-c "$src/kernels/arch/x86/avx512.c" -o "$work/obj/avx512.o"
	kernel_objs="$kernel_objs $work/obj/avx2.o $work/obj/avx512.o"
fi

# Writes $1 as 8 little-endian bytes, the safetensors header length.
le64() {
	n=$1
	for _ in 1 2 3 4 5 6 7 8; do
		# shellcheck disable=SC2059 # the format is an octal escape
		printf "\\$(printf '%03o' $((n % 256)))"
		n=$((n / 256))
	done
}

# Writes a safetensors file to $1 with header $2 and the data on stdin.
safetensors_seed() {
	le64 ${#2} >"$1"
	printf '%s' "$2" >>"$1"
	cat >>"$1"
}

# Prints $2 as raw bytes $1 times ($2 is a printf format of octal escapes).
repeat() {
	i=0
	while [ "$i" -lt "$1" ]; do
		# shellcheck disable=SC2059 # the format is the bytes
		printf "$2"
		i=$((i + 1))
	done
}

if [ "$target" = ring ]; then
	clang $cflags $san -fsanitize=fuzzer -I"$src/proto" -o "$work/fuzz-ring" \
		"$src/tests/fuzz-ring.c" "$src/proto/ring.c"
	# Seeds: an empty ring, and one holding a single 5-byte message.
	head -c 8 /dev/zero >"$work/corpus/empty"
	printf '\020\000\000\000\000\000\000\000\005\000\000\000hello\000\000\000' \
		>"$work/corpus/one-message"
	# The wrap marker, the header magic and lengths near the limits.
	cat >"$work/ring.dict" <<'EOF'
"\xff\xff\xff\xff"
"hvcr"
"\x00\x04\x00\x00"
"\x01\x04\x00\x00"
"\x00\x10\x00\x00"
EOF
elif [ "$target" = safetensors ]; then
	# prompt.c also calls the tokenizer, which needs the GGUF reader.
	deps="jansson libpcre2-8 libutf8proc"
	# shellcheck disable=SC2046 # pkg-config prints several flags
	clang $cflags $(pkg-config --cflags $deps) $san -fsanitize=fuzzer \
		-o "$work/fuzz-safetensors" "$src/tests/fuzz-safetensors.c" \
		"$src/engine/prompt.c" "$src/engine/tokenizer.c" \
		"$src/engine/tokenizer-spm.c" "$src/engine/tokenizer-bpe.c" \
		"$src/engine/gguf.c" $kernel_objs $(pkg-config --libs $deps) \
		-lm -pthread

	# Seeds for the target's d_model 4 and num_virtual_tokens 2. They are
	# F32 [2, 4] of 0.5, then F16 [4, 4] of 1.0 (two stages) with metadata,
	# then BF16 [2, 4] of -2.0 after a 3-byte tensor, at an odd offset.
	repeat 8 '\000\000\000\077' |
		safetensors_seed "$work/corpus/f32.safetensors" \
		'{"prompt_embeddings":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}}'
	repeat 16 '\000\074' |
		safetensors_seed "$work/corpus/f16.safetensors" \
		'{"__metadata__":{"format":"pt"},"prompt_embeddings":{"dtype":"F16","shape":[4,4],"data_offsets":[0,32]}}    '
	{ printf 'abc'; repeat 8 '\000\300'; } |
		safetensors_seed "$work/corpus/bf16.safetensors" \
		'{"other":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"prompt_embeddings":{"dtype":"BF16","shape":[2,4],"data_offsets":[3,19]}}'

	# Key names, dtypes, a NaN and a header length of 2^63.
	cat >"$work/safetensors.dict" <<'EOF'
"prompt_embeddings"
"__metadata__"
"dtype"
"shape"
"data_offsets"
"\"F32\""
"\"F16\""
"\"BF16\""
"[2,4]"
"[0,32]"
"\x00\x00\xc0\x7f"
"\x00\x00\x00\x00\x00\x00\x00\x80"
EOF
else
	clang $cflags $san -fsanitize=fuzzer -o "$work/fuzz-gguf" \
		"$src/tests/fuzz-gguf.c" "$src/engine/gguf.c" $kernel_objs -lm -pthread

	# Seeds. First a minimal valid v3 file: one string key, general.alignment
	# = 32 and one F32 tensor "t" of 8 elements at offset 0, padded to 32 bytes.
	{
		printf 'GGUF\003\000\000\000'
		printf '\001\000\000\000\000\000\000\000'	# n_tensors
		printf '\002\000\000\000\000\000\000\000'	# n_kv
		printf '\024\000\000\000\000\000\000\000general.architecture'
		printf '\010\000\000\000\005\000\000\000\000\000\000\000llama'
		printf '\021\000\000\000\000\000\000\000general.alignment'
		printf '\004\000\000\000\040\000\000\000'
		printf '\001\000\000\000\000\000\000\000t\001\000\000\000'
		printf '\010\000\000\000\000\000\000\000'			# ne[0]
		printf '\000\000\000\000'					# type F32
		printf '\000\000\000\000\000\000\000\000'		# offset
	} >"$work/corpus/minimal.gguf"
	size=$(wc -c <"$work/corpus/minimal.gguf")
	head -c $(( (32 - size % 32) % 32 + 32 )) /dev/zero >>"$work/corpus/minimal.gguf"

	# Then a few small models from mkmodel, built here from the sources too.
	if clang $cflags -O1 -o "$work/mkmodel" "$src/tests/mkmodel.c" \
		"$src/tests/testmodel.c" "$src/tests/testvocab.c" "$src/engine/gguf.c" \
		$kernel_objs $san -lm -pthread 2>"$work/mkmodel.log"; then
		small="--dim 32 --heads 2 --kv-heads 1 --ff 64 --layers 1"
		"$work/mkmodel" -o "$work/corpus/f32-v3.gguf" $small
		"$work/mkmodel" -o "$work/corpus/q8-v2.gguf" $small --type Q8_0 --gguf-version 2
		"$work/mkmodel" -o "$work/corpus/bpe-qwen2.gguf" $small --arch qwen2 \
			--tok bpe --pre qwen2 --type F16 --tied
		"$work/mkmodel" -o "$work/corpus/q4k-llama3.gguf" --dim 256 --heads 4 \
			--kv-heads 2 --ff 256 --layers 1 --type Q4_K --llama3-rope
	else
		echo "fuzz.sh: mkmodel did not build (see $work/mkmodel.log); fuzzing from the minimal seed only" >&2
	fi

	# Key names and type numbers help the mutator build plausible headers.
	cat >"$work/gguf.dict" <<'EOF'
"GGUF"
"general.alignment"
"general.architecture"
"tokenizer.ggml.tokens"
"\x02\x00\x00\x00"
"\x03\x00\x00\x00"
"\x08\x00\x00\x00"
"\x09\x00\x00\x00"
"\x0c\x00\x00\x00"
"\x0e\x00\x00\x00"
"\xff\xff\xff\xff\xff\xff\xff\xff"
"\x00\x00\x00\x00\x00\x00\x00\x80"
EOF
fi

parallel=""
[ "$jobs" -gt 1 ] && parallel="-jobs=$jobs -workers=$jobs"
cd "$work"
# shellcheck disable=SC2086 # $parallel is empty or two flags
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	"./fuzz-$target" -max_total_time="$seconds" -max_len=1048576 \
	-dict="$target.dict" -artifact_prefix=crashes/ -print_final_stats=1 \
	$parallel corpus
