#!/bin/sh
# Installs what is missing, builds kvchain with warnings as errors and the
# address and undefined-behaviour sanitizers in build-check/, and runs
# every test. Ends with one line "N passed, N failed".
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build-check}

"$top/scripts/deps.sh"
(cd "$top" && autoreconf -fi >/dev/null 2>&1)
rm -rf "$build"
mkdir -p "$build"
cd "$build"
"$top/configure" -q --enable-werror --enable-sanitizers
make -j"$(nproc)" >/dev/null
status=0
make -j"$(nproc)" check >/dev/null 2>&1 || status=$?

# Show each test's result, the logs of failures, and the totals.
trs_files=$(find . -name '*.trs' | sort)
for trs in $trs_files; do
	name=${trs%.trs}
	result=$(sed -n 's/^:test-result: //p' "$trs")
	echo "$result: $name"
	if [ "$result" = FAIL ] || [ "$result" = ERROR ]; then
		tail -n 40 "$name.log"
	fi
done
# shellcheck disable=SC2086 # one path per word
passed=$(grep -l '^:test-result: PASS' $trs_files 2>/dev/null | wc -l)
# shellcheck disable=SC2086
failed=$(grep -l '^:test-result: \(FAIL\|ERROR\|XPASS\)' $trs_files 2>/dev/null | wc -l)
# shellcheck disable=SC2086
skipped=$(grep -l '^:test-result: SKIP' $trs_files 2>/dev/null | wc -l)
[ "$failed" -eq 0 ] && [ "$status" -ne 0 ] && failed=1
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
