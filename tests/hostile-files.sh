#!/bin/sh
# SPDX-License-Identifier: MIT
#
# hostile-files.sh - writes six broken GGUF files (tests/mkmodel output, cut
# short or patched with dd) and checks that kvchain-run rejects each one
# with exit status 1 and exactly one line on stderr naming the bad field.
# Uses only POSIX sh, coreutils and GNU grep, so a fresh Debian can run it.
# Exits 77 (skip) when the programs under test are not built.

: "${top_builddir:=.}"
mkmodel="$top_builddir/tests/mkmodel"
run="$top_builddir/tools/kvchain-run"

for prog in "$mkmodel" "$run"; do
	if [ ! -x "$prog" ]; then
		echo "hostile-files: $prog not built, skipping"
		exit 77
	fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/hostile-files.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

model="$work/model.gguf"
if ! "$mkmodel" -o "$model" --type Q8_0; then
	echo "hostile-files: mkmodel failed"
	exit 1
fi

# Writes the printf-escaped bytes $3 into file $1 at byte offset $2.
patch_bytes() {
	printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# Prints the byte offset of the first occurrence of the string $2 in file $1.
find_offset() {
	grep -obUa -m1 -F "$2" "$1" | head -n1 | cut -d: -f1
}

failures=0

# Runs kvchain-run on file $1 and expects exit status 1 and exactly one line
# on stderr that contains the text $2.
expect_rejected() {
	file=$1
	want=$2
	"$run" -m "$file" -p hi -n 1 >/dev/null 2>"$work/stderr"
	rc=$?
	lines=$(wc -l <"$work/stderr")
	if [ "$rc" -ne 1 ]; then
		echo "FAIL $(basename "$file"): exit status $rc, expected 1"
		failures=$((failures + 1))
	elif [ "$lines" -ne 1 ]; then
		echo "FAIL $(basename "$file"): $lines lines on stderr, expected 1"
		failures=$((failures + 1))
	elif ! grep -qF -- "$want" "$work/stderr"; then
		echo "FAIL $(basename "$file"): stderr does not mention '$want'"
		failures=$((failures + 1))
	else
		echo "ok   $(basename "$file"): $(cat "$work/stderr")"
		return 0
	fi
	sed 's/^/    stderr: /' "$work/stderr"
}

# 1. Cut inside the metadata or the tensor infos. 1000 bytes leave room
#    for n_tensors and n_kv entries of the smallest size, so the cut is
#    found where a key, value or tensor info runs past the end.
head -c 1000 "$model" >"$work/truncated.gguf"
expect_rejected "$work/truncated.gguf" "past end of file"

# 2. The last tensor's data cut short by dropping the last 64 bytes.
size=$(wc -c <"$model")
head -c $((size - 64)) "$model" >"$work/tensor-past-end.gguf"
expect_rejected "$work/tensor-past-end.gguf" "extends past end of file"

# 3. n_tensors (bytes 8..15) = 2^63.
cp "$model" "$work/count-2-63.gguf"
patch_bytes "$work/count-2-63.gguf" 8 '\000\000\000\000\000\000\000\200'
expect_rejected "$work/count-2-63.gguf" "n_tensors"

# 4. The length of general.architecture's value (bytes 56..63: after the
#    24-byte header, the 8-byte key length, 20 key bytes and the 4-byte
#    value type) = 2^40.
cp "$model" "$work/string-length.gguf"
patch_bytes "$work/string-length.gguf" 56 '\000\000\000\000\000\001\000\000'
expect_rejected "$work/string-length.gguf" "string length"

# 5. token_embd.weight's type = 99. After its 17-byte name come n_dims (4
#    bytes) and two 8-byte dimensions, then the type.
cp "$model" "$work/tensor-type.gguf"
at=$(find_offset "$work/tensor-type.gguf" token_embd.weight)
if [ -z "$at" ]; then
	echo "hostile-files: token_embd.weight not found in $model"
	exit 1
fi
patch_bytes "$work/tensor-type.gguf" $((at + 17 + 4 + 16)) '\143\000\000\000'
expect_rejected "$work/tensor-type.gguf" "type 99"

# 6. llama.block_count renamed to llama.block_coun_, so the key is missing
#    but the file is still well formed.
cp "$model" "$work/missing-key.gguf"
at=$(find_offset "$work/missing-key.gguf" llama.block_count)
if [ -z "$at" ]; then
	echo "hostile-files: llama.block_count not found in $model"
	exit 1
fi
patch_bytes "$work/missing-key.gguf" $((at + 16)) '_'
expect_rejected "$work/missing-key.gguf" "llama.block_count"

if [ "$failures" -ne 0 ]; then
	echo "hostile-files: $failures of 6 cases failed"
	exit 1
fi
exit 0
