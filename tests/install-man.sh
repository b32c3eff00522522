#!/bin/sh
# Renders every man page with groff (-ww: all warnings) and fails on any
# warning, then checks that the pages cover what the code has: every
# exported kvc_* function in libkvchain(3), every settings key of
# daemon/conf.c in kvchain.conf(5), and every kvchain command in kvchain(1).
set -u
src=${top_srcdir:-.}
command -v groff >/dev/null 2>&1 || { echo "SKIP: groff is missing (Debian package groff-base)"; exit 77; }
failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

pages="kvchaind.8 kvchain.1 kvchain-run.1 kvchain-tune.1 libkvchain.3 kvchain.conf.5"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for page in $pages; do
	f="$src/man/$page"
	[ -f "$f" ] || { fail "$page is missing"; continue; }
	groff -ww -man -Tutf8 "$f" >"$out" 2>"$out.err"
	[ -s "$out.err" ] && fail "$page: groff warned: $(cat "$out.err")"
	[ -s "$out" ] || fail "$page rendered nothing"
	rm -f "$out.err"
done

# Every exported function is described (as it appears in bold: \fB or .BR).
for fn in $(sed -n 's/^[[:space:]]*\(kvc_[a-z_]*\);$/\1/p' "$src/libclient/libkvchain.map"); do
	grep -q "^\.BR* $fn\b\|[ \"]$fn(" "$src/man/libkvchain.3" ||
		fail "libkvchain(3) does not describe $fn"
done

# Every settings key, numeric (NUM(key, ...)) or named (strcmp(key, "k")).
keys=$(sed -n -e '/#define/d' -e 's/.*NUM(\([a-z_]*\),.*/\1/p' \
	-e 's/.*strcmp(key, "\([a-z_]*\)").*/\1/p' "$src/daemon/conf.c" | sort -u)
[ -n "$keys" ] || fail "found no keys in daemon/conf.c"
for key in $keys; do
	grep -q "^\.BI $key " "$src/man/kvchain.conf.5" ||
		fail "kvchain.conf(5) has no entry for key $key"
done

# Every command of the kvchain tool's command table.
cmds=$(sed -n 's/^[[:space:]]*{ "\([a-z-]*\)", cmd_.*/\1/p' "$src/tools/kvchain.c")
[ -n "$cmds" ] || fail "found no commands in tools/kvchain.c"
for cmd in $cmds; do
	man_cmd=$(echo "$cmd" | sed 's/-/\\\\-/g')
	grep -q "^\.BI* $man_cmd\b" "$src/man/kvchain.1" ||
		fail "kvchain(1) does not describe command $cmd"
done

# Every long option of each program's getopt table, written \-\-name.
check_options() {
	page=$1
	shift
	for f in "$@"; do
		[ -f "$src/$f" ] || continue
		for opt in $(sed -n 's/.*{ *"\([a-z0-9-]*\)", *\(no\|required\|optional\)_argument.*/\1/p' "$src/$f"); do
			man_opt=$(echo "$opt" | sed 's/-/\\\\-/g')
			grep -q -- "\\\\-\\\\-$man_opt\\b" "$src/man/$page" ||
				fail "$page does not describe --$opt of $f"
		done
	done
}
check_options kvchaind.8 daemon/main.c
check_options kvchain-run.1 tools/kvchain-run.c
check_options kvchain.1 tools/kvchain.c
check_options kvchain-tune.1 tune/cmd-train.c tune/cmd-eval.c tune/pretrain-cmd.c

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: man pages render without warnings and cover the code"
