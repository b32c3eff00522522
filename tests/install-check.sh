#!/bin/sh
# Installs the build into a DESTDIR and checks what a user gets:
# - every file in its directory: kvchaind, kvchain, kvchain-run,
#   libkvchain.so with soname libkvchain.so.0, kvchain.h, libkvchain.pc,
#   the man pages, the systemd units, the sysusers.d file and the Python
#   package (when configure found python3);
# - libkvchain.so exports exactly the kvc_* names of libkvchain.map, each
#   at version KVCHAIN_0.1;
# - a program built with nothing but `pkg-config --cflags --libs
#   libkvchain` runs a short chain against the installed kvchaind;
# - `systemd-analyze verify` accepts the units (skipped without it);
# - `make uninstall` removes every file it installed.
set -u
build=${top_builddir:-.}
mkmodel="$build/tests/mkmodel"
[ -x "$mkmodel" ] || { echo "SKIP: $mkmodel is not built"; exit 77; }
for tool in pkg-config nm readelf "${CC:-cc}"; do
	command -v "$tool" >/dev/null 2>&1 || { echo "SKIP: $tool is missing"; exit 77; }
done

dir=$(mktemp -d)
dest="$dir/root"
daemon_pid=
cleanup() {
	[ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# Runs make in the build tree, apart from any make that runs this test
# (whose flags would print directories and share its job server).
submake() {
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory -C "$build" "$@"
}

# Prints the expanded value of an installation directory variable.
dir_of() {
	printf 'print:\n\t@echo $(%s)\n' "$1" >"$dir/print.mk"
	submake -f Makefile -f "$dir/print.mk" print
}

submake install DESTDIR="$dest" >"$dir/install.log" 2>&1 ||
	{ echo "FAIL: make install:"; tail -20 "$dir/install.log"; exit 1; }
sbindir=$(dir_of sbindir)
bindir=$(dir_of bindir)
libdir=$(dir_of libdir)
includedir=$(dir_of includedir)
pkgconfigdir=$(dir_of pkgconfigdir)
mandir=$(dir_of mandir)
unitdir=$(dir_of systemdsystemunitdir)
sysusersdir=$(dir_of sysusersdir)

# 1. Every file where it belongs.
for f in "$sbindir/kvchaind" "$bindir/kvchain" "$bindir/kvchain-run"; do
	[ -x "$dest$f" ] || fail "$f is not installed as a program"
done
for f in "$includedir/kvchain.h" "$pkgconfigdir/libkvchain.pc" \
	"$mandir/man8/kvchaind.8" "$mandir/man1/kvchain.1" \
	"$mandir/man1/kvchain-run.1" "$mandir/man1/kvchain-tune.1" \
	"$mandir/man3/libkvchain.3" "$mandir/man5/kvchain.conf.5"; do
	[ -f "$dest$f" ] || fail "$f is not installed"
done
if [ "$unitdir" != no ]; then
	for f in "$unitdir/kvchaind.service" "$unitdir/kvchaind.socket" \
		"$sysusersdir/kvchain.conf"; do
		[ -f "$dest$f" ] || fail "$f is not installed"
	done
	grep -qx "ExecStart=$sbindir/kvchaind --socket /run/kvchain/kvchaind.sock" \
		"$dest$unitdir/kvchaind.service" ||
		fail "kvchaind.service does not start $sbindir/kvchaind"
fi
pydir=$(dir_of kvchain_pythondir)
if [ -n "$pydir" ]; then
	[ -f "$dest$pydir/__init__.py" ] || fail "the Python package is not installed in $pydir"
fi
lib="$dest$libdir/libkvchain.so.0"
[ -f "$lib" ] || { fail "$libdir/libkvchain.so.0 is not installed"; exit 1; }
[ -L "$dest$libdir/libkvchain.so" ] || fail "$libdir/libkvchain.so is not a symbolic link"
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libkvchain.so.0 ] || fail "soname is '$soname', expected libkvchain.so.0"

# 2. Exports: the map's names, nothing else, each at KVCHAIN_0.1.
map="${top_srcdir:-.}/libclient/libkvchain.map"
sed -n 's/^[[:space:]]*\(kvc_[a-z_0-9]*\);$/\1/p' "$map" | sort >"$dir/want"
nm -D --defined-only --with-symbol-versions "$lib" |
	awk '$2 != "A" { print $3 }' >"$dir/exports"
sed 's/@.*//' "$dir/exports" | sort >"$dir/got"
[ -s "$dir/want" ] || fail "found no names in $map"
cmp -s "$dir/want" "$dir/got" ||
	fail "exports differ from libkvchain.map: $(diff "$dir/want" "$dir/got" | grep '^[<>]' | tr '\n' ' ')"
grep -v '@@KVCHAIN_0\.1$' "$dir/exports" >"$dir/unversioned"
[ -s "$dir/unversioned" ] && fail "exports without version KVCHAIN_0.1: $(cat "$dir/unversioned")"

# 3. A program built only through pkg-config, against the installed daemon.
cat >"$dir/chain.c" <<'EOF'
#include <kvchain.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	struct kvc_gen_params params;
	struct kvc_gen_result result = { .struct_size = sizeof(result) };
	uint64_t prompt, chain;
	kvc_conn *conn;
	kvc_handle h;
	char *text;
	size_t len;
	int rc;

	if (argc != 2)
		return 2;
	rc = kvc_connect(argv[1], "install-check", &conn);
	if (rc < 0) {
		fprintf(stderr, "connect: %s\n", kvc_strerror(rc));
		return 1;
	}
	if ((rc = kvc_prompt_text(conn, "Answer briefly.", &prompt)) < 0 ||
	    (rc = kvc_chain_create(conn, &prompt, 1, &chain)) < 0 ||
	    (rc = kvc_segment_create(conn, chain, &h)) < 0 ||
	    (rc = kvc_append_text(conn, &h, KVC_STAGE_INPUT, 0, "Why?", 4,
				  NULL, 0, NULL)) < 0) {
		fprintf(stderr, "%s: %s\n", kvc_strerror(rc), kvc_last_error(conn));
		return 1;
	}
	kvc_gen_params_init(&params);
	params.max_tokens = 6;
	params.ignore_eos = 1;
	rc = kvc_generate_text(conn, &h, 0, &params, &text, &len, &result);
	if (rc < 0) {
		fprintf(stderr, "generate: %s: %s\n", kvc_strerror(rc),
			kvc_last_error(conn));
		return 1;
	}
	printf("%u tokens, %zu bytes\n", result.n_generated, len);
	kvc_free(text);
	kvc_disconnect(conn);
	return 0;
}
EOF
PKG_CONFIG_PATH="$dest$pkgconfigdir"
export PKG_CONFIG_PATH
flags=$(pkg-config --define-variable=prefix="$dest$(dir_of prefix)" --cflags --libs libkvchain) ||
	fail "pkg-config does not find libkvchain"
# shellcheck disable=SC2086 # the flags are meant to split into words
"${CC:-cc}" -o "$dir/chain" "$dir/chain.c" $flags 2>"$dir/cc.err" ||
	fail "building with pkg-config's flags ($flags) failed: $(cat "$dir/cc.err")"

"$mkmodel" -o "$dir/m.gguf" --seed 4 || { echo "FAIL: mkmodel"; exit 1; }
"$dest$sbindir/kvchaind" --model "$dir/m.gguf" --socket "$dir/k.sock" \
	--arena-mib 8 --log-level warn 2>"$dir/daemon.log" &
daemon_pid=$!
tries=0
until [ -S "$dir/k.sock" ]; do
	tries=$((tries + 1))
	if [ "$tries" -gt 100 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
		echo "FAIL: the installed kvchaind did not start:"
		cat "$dir/daemon.log"
		exit 1
	fi
	sleep 0.1
done
if [ -x "$dir/chain" ]; then
	preload=
	# An ASan build of libkvchain needs the runtime loaded first.
	if ldd "$lib" | grep -q libasan; then
		preload=$(${CC:-cc} -print-file-name=libasan.so)
	fi
	LD_LIBRARY_PATH="$dest$libdir" ldd "$dir/chain" | grep -q "libkvchain.so.0 => $dest$libdir/" ||
		fail "the program does not load the installed libkvchain"
	out=$(LD_PRELOAD="$preload" LD_LIBRARY_PATH="$dest$libdir" "$dir/chain" "$dir/k.sock" 2>&1)
	[ $? -eq 0 ] || fail "the pkg-config program failed: $out"
	echo "$out" | grep -q '^6 tokens, [1-9][0-9]* bytes$' ||
		fail "the pkg-config program printed '$out', expected 6 tokens"
fi
kill -TERM "$daemon_pid"
wait "$daemon_pid" || fail "the installed kvchaind exited $? after SIGTERM"
daemon_pid=

# 4. The units, with ExecStart pointing into the DESTDIR tree.
if [ "$unitdir" != no ] && command -v systemd-analyze >/dev/null 2>&1; then
	mkdir "$dir/units"
	sed "s|^ExecStart=$sbindir/|ExecStart=$dest$sbindir/|" \
		"$dest$unitdir/kvchaind.service" >"$dir/units/kvchaind.service"
	cp "$dest$unitdir/kvchaind.socket" "$dir/units/"
	(cd "$dir/units" && systemd-analyze verify --man=no kvchaind.socket kvchaind.service) \
		>"$dir/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$dir/verify.log")"
	# Warnings about the host's own units are not ours.
	grep 'kvchaind\.' "$dir/verify.log" && fail "systemd-analyze verify warned about the units"
else
	echo "SKIP: systemd-analyze is missing; the units were not verified"
fi

# 5. Uninstall leaves no file behind.
submake uninstall DESTDIR="$dest" >"$dir/uninstall.log" 2>&1 ||
	fail "make uninstall: $(tail -5 "$dir/uninstall.log")"
left=$(find "$dest" -type f -o -type l | sed "s|^$dest||")
[ -z "$left" ] || fail "make uninstall left: $left"

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: install, exports, pkg-config program, units, uninstall"
