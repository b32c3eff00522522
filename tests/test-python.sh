#!/bin/sh
# Runs the Python binding's tests (bindings/python/tests/test_kvchain.py)
# against three test daemons on a tests/mkmodel model: one with room to
# spare, one with tight limits (n_ctx 32, 2 segments per uid, TTL 0) and
# one whose KV arena holds 2 blocks; as root, also a fourth running as
# nobody, which must reject this user. The expected chain outputs come from
# tests/chain-inproc. Exits 77 when python3 is missing.
set -u
build=${top_builddir:-.}
src=${top_srcdir:-.}
daemon="$build/daemon/kvchaind"
inproc="$build/tests/chain-inproc"
mkmodel="$build/tests/mkmodel"
lib="$build/libclient/.libs/libkvchain.so.0"
command -v python3 >/dev/null 2>&1 || { echo "SKIP: python3 is missing"; exit 77; }
for f in "$daemon" "$inproc" "$mkmodel" "$lib"; do
	[ -e "$f" ] || { echo "SKIP: $f is not built"; exit 77; }
done

dir=$(mktemp -d)
chmod 755 "$dir"
pids=
cleanup() {
	for pid in $pids; do
		kill -TERM "$pid" 2>/dev/null
	done
	rm -rf "$dir"
}
trap cleanup EXIT

# Starts a daemon on socket $1 with settings file $2 and the rest as its
# command prefix (e.g. setpriv), and waits for its socket.
start_daemon() {
	sock=$1
	conf=$2
	shift 2
	"$@" "$daemon" -c "$conf" --socket "$sock" --log-level warn \
		2>>"$dir/daemons.log" &
	pids="$pids $!"
	tries=0
	until [ -S "$sock" ]; do
		tries=$((tries + 1))
		if [ "$tries" -gt 100 ]; then
			echo "FAIL: the daemon for $sock did not start:"
			cat "$dir/daemons.log"
			exit 1
		fi
		sleep 0.1
	done
}

"$mkmodel" -o "$dir/m.gguf" --seed 3 || { echo "FAIL: mkmodel"; exit 1; }
chmod 644 "$dir/m.gguf"
"$inproc" -m "$dir/m.gguf" -o "$dir" --i-all "What colour is the sky on a clear day?" \
	--i-a "Passage: the sky looks blue because air scatters blue light most." \
	--prompt-tokens 8 --max-tokens-a 24 --max-tokens-b 24 --ignore-eos ||
	{ echo "FAIL: chain-inproc"; exit 1; }

printf 'model = %s\narena_mib = 16\n' "$dir/m.gguf" >"$dir/main.conf"
printf 'model = %s\narena_mib = 1\nn_ctx = 32\nmax_segments_per_uid = 2\nsegment_ttl_seconds = 0\n' \
	"$dir/m.gguf" >"$dir/tight.conf"
printf 'model = %s\narena_mib = 1\nblock_tokens = 2048\n' "$dir/m.gguf" >"$dir/full.conf"
start_daemon "$dir/main.sock" "$dir/main.conf"
start_daemon "$dir/tight.sock" "$dir/tight.conf"
start_daemon "$dir/full.sock" "$dir/full.conf"
KVCHAIN_TEST_FOREIGN=
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1; then
	mkdir -m 777 "$dir/foreign"
	chmod 644 "$dir/main.conf"
	start_daemon "$dir/foreign/k.sock" "$dir/main.conf" \
		setpriv --reuid=65534 --regid=65534 --clear-groups
	KVCHAIN_TEST_FOREIGN="$dir/foreign/k.sock"
fi

# An ASan build of libkvchain loads into python3 only after the runtime.
if ldd "$lib" | grep -q libasan; then
	LD_PRELOAD=$(${CC:-gcc} -print-file-name=libasan.so)
	export LD_PRELOAD
	ASAN_OPTIONS=detect_leaks=0
	export ASAN_OPTIONS
fi
KVCHAIN_LIBRARY=$lib
KVCHAIN_TEST_SOCKET="$dir/main.sock"
KVCHAIN_TEST_TIGHT="$dir/tight.sock"
KVCHAIN_TEST_FULL="$dir/full.sock"
KVCHAIN_TEST_DIR=$dir
export KVCHAIN_LIBRARY KVCHAIN_TEST_SOCKET KVCHAIN_TEST_TIGHT KVCHAIN_TEST_FULL
# no __pycache__ in the source tree
export KVCHAIN_TEST_FOREIGN KVCHAIN_TEST_DIR KVCHAIN_TIMEOUT_MS=30000 PYTHONDONTWRITEBYTECODE=1
python3 "$src/bindings/python/tests/test_kvchain.py"
status=$?
[ "$status" -eq 0 ] || { echo "daemon log:"; cat "$dir/daemons.log"; }
exit "$status"
