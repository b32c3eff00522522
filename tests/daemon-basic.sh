#!/bin/sh
# SPDX-License-Identifier: MIT
# daemon-basic.sh - starts kvchaind on a test model and drives it with
# tests/daemon-client over the socket and the shared rings. The scenarios
# cover every request, hostile input, a corrupted ring, a client killed
# mid-generation, quotas, a peer rejected by the allow list, a bad
# settings file, and SIGTERM. Every pass
# runs once with --event-loop io_uring and once with --event-loop epoll;
# the io_uring pass is skipped when this system forbids io_uring.
# Exits 0 (pass), 1 (fail) or 77 (skip).
set -u

builddir=${top_builddir:-$(cd "$(dirname "$0")/.." && pwd)}
daemon=$builddir/daemon/kvchaind
client=$builddir/tests/daemon-client
mkmodel=$builddir/tests/mkmodel
for f in "$daemon" "$client" "$mkmodel"; do
	if [ ! -x "$f" ]; then
		echo "SKIP: $f is not built"
		exit 77
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/daemon-basic.XXXXXX") || exit 1
daemon_pid=
cleanup() {
	# only the daemon this script started, by its id
	if [ -n "$daemon_pid" ]; then
		kill -KILL "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*"
	[ -f "$tmp/daemon.log" ] && sed 's/^/  daemon: /' "$tmp/daemon.log" | tail -n 40
	exit 1
}

"$mkmodel" -o "$tmp/model.gguf" --ctx 2048 >/dev/null || fail "mkmodel"
sock=$tmp/run/kvchaind.sock
cat >"$tmp/kvchain.conf" <<CONF
# settings of the test daemon
model = $tmp/model.gguf
socket = $sock
arena_mib = 16
threads = 2
segment_ttl_seconds = 0
max_segments_per_uid = 8
max_tokens_per_uid = 4000
ring_kib = 256
max_message_kib = 64
log_level = debug
CONF

# A daemon with a 1 MiB arena and a 3 s TTL, for eviction and expiry.
sed -e 's/^arena_mib = .*/arena_mib = 1/' \
	-e 's/^segment_ttl_seconds = .*/segment_ttl_seconds = 3/' \
	-e 's/^max_tokens_per_uid = .*/max_tokens_per_uid = 65536/' \
	"$tmp/kvchain.conf" >"$tmp/small.conf"

# A bad value stops the daemon at start, naming file, line, key and value.
printf 'arena_mib = 16\nthreads = lots\n' >"$tmp/bad.conf"
if "$daemon" -c "$tmp/bad.conf" --model "$tmp/model.gguf" \
	>"$tmp/bad.log" 2>&1; then
	fail "kvchaind started with an invalid settings file"
fi
grep -q "$tmp/bad.conf:2: key 'threads': invalid value 'lots'" "$tmp/bad.log" ||
	fail "the settings error does not name file, line and key: $(cat "$tmp/bad.log")"

# Starts kvchaind with event loop $1 and settings file $2 (default
# kvchain.conf); returns 2 if io_uring is forbidden.
start_daemon() {
	rm -f "$tmp/daemon.log"
	"$daemon" -c "${2:-$tmp/kvchain.conf}" --event-loop "$1" \
		>"$tmp/daemon.log" 2>&1 &
	daemon_pid=$!
	i=0
	while [ ! -S "$sock" ]; do
		if ! kill -0 "$daemon_pid" 2>/dev/null; then
			wait "$daemon_pid" 2>/dev/null
			daemon_pid=
			grep -q "cannot set up io_uring" "$tmp/daemon.log" && return 2
			fail "kvchaind ($1) exited at start"
		fi
		i=$((i + 1))
		[ $i -gt 200 ] && fail "kvchaind ($1) did not create its socket in 20 s"
		sleep 0.1
	done
	grep -q "$1 event loop" "$tmp/daemon.log" ||
		fail "kvchaind did not start the $1 event loop"
	return 0
}

run_client() {
	timeout 30 "$client" "$sock" "$1" || fail "$loop: scenario $1"
	kill -0 "$daemon_pid" 2>/dev/null || fail "$loop: kvchaind died during $1"
}

# SIGTERM: exit 0 (LeakSanitizer would fail it), socket removed.
stop_daemon() {
	kill -TERM "$daemon_pid"
	wait "$daemon_pid"
	rc=$?
	daemon_pid=
	[ $rc -eq 0 ] || fail "$loop: kvchaind exited $rc after SIGTERM"
	[ ! -e "$sock" ] || fail "$loop: the socket is still there after SIGTERM"
	grep -q "stopped" "$tmp/daemon.log" || fail "$loop: no stop line in the log"
	if grep -q -e "AddressSanitizer" -e "runtime error" "$tmp/daemon.log"; then
		fail "$loop: sanitizer report"
	fi
}

passes=0
for loop in io_uring epoll; do
	start_daemon "$loop"
	if [ $? -eq 2 ]; then
		echo "SKIP: io_uring is not permitted here; its pass is skipped"
		continue
	fi
	for scenario in basic malformed ring kill batch quota; do
		run_client "$scenario"
	done

	# A peer outside the allow lists gets KVC_EPERM. The socket is opened
	# to everyone for this step only, so the daemon's check is what stops
	# the peer.
	if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
		chmod 0755 "$tmp" "$tmp/run"
		chmod 0666 "$sock"
		timeout 30 setpriv --reuid=65534 --regid=65534 --clear-groups \
			"$client" "$sock" refused || fail "$loop: scenario refused"
		grep -q "connection refused: uid 65534" "$tmp/daemon.log" ||
			fail "$loop: the refused peer was not logged"
	else
		echo "note: not root or no setpriv; the refused-peer step is skipped"
	fi

	grep -q "left during its Generate; the job is discarded" "$tmp/daemon.log" ||
		fail "$loop: the killed client's generation was not discarded"
	stop_daemon

	start_daemon "$loop" "$tmp/small.conf"
	run_client evict
	grep -q "KV arena full: evicting unheld segment" "$tmp/daemon.log" ||
		fail "$loop: no eviction in the log"
	stop_daemon
	echo "PASS: $loop"
	passes=$((passes + 1))
done
[ $passes -gt 0 ] || exit 77
exit 0
