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
for trs in tests/*.trs; do
	name=${trs%.trs}
	result=$(sed -n 's/^:test-result: //p' "$trs")
	echo "$result: $name"
	if [ "$result" = FAIL ] || [ "$result" = ERROR ]; then
		tail -n 40 "$name.log"
	fi
done
passed=$(grep -l '^:test-result: PASS' tests/*.trs 2>/dev/null | wc -l)
failed=$(grep -l '^:test-result: \(FAIL\|ERROR\|XPASS\)' tests/*.trs 2>/dev/null | wc -l)
skipped=$(grep -l '^:test-result: SKIP' tests/*.trs 2>/dev/null | wc -l)
[ "$failed" -eq 0 ] && [ "$status" -ne 0 ] && failed=1
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
