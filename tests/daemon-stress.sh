#!/bin/sh
# SPDX-License-Identifier: MIT
# daemon-stress.sh - load test of kvchaind. Starts the daemon on a small
# test model with a 1 s segment TTL, then runs tests/stress-client: 32
# client processes run whole chains for STRESS_SECONDS (default 30) each,
# every output checked against the same chain run in one process. After
# they leave, the daemon's statistics must return to their starting values
# and the daemon must still serve a chain and stop cleanly on SIGTERM.
# Runs once with --event-loop io_uring (skipped where io_uring is
# forbidden) and once with --event-loop epoll.
# Exits 0 (pass), 1 (fail) or 77 (skip).
set -u

builddir=${top_builddir:-$(cd "$(dirname "$0")/.." && pwd)}
daemon=$builddir/daemon/kvchaind
stress=$builddir/tests/stress-client
mkmodel=$builddir/tests/mkmodel
for f in "$daemon" "$stress" "$mkmodel"; do
	if [ ! -x "$f" ]; then
		echo "SKIP: $f is not built"
		exit 77
	fi
done
seconds=${STRESS_SECONDS:-30}
clients=${STRESS_CLIENTS:-32}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/daemon-stress.XXXXXX") || exit 1
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

# Small dimensions, so a chain takes milliseconds even under the
# sanitizers; 512 positions hold a chain's segment with room to spare.
"$mkmodel" -o "$tmp/model.gguf" --ctx 512 --seed 5 >/dev/null || fail "mkmodel"
sock=$tmp/kvchaind.sock
# The engine settings (F16 KV, 16-token blocks, 2 threads, 64-token
# batches) must match what stress-client computes its expected outputs
# with. The quotas are high because all clients run as one uid, and
# released segments count against it until the TTL expires them.
cat >"$tmp/kvchain.conf" <<CONF
model = $tmp/model.gguf
socket = $sock
arena_mib = 64
kv_type = f16
block_tokens = 16
threads = 2
max_batch = 64
segment_ttl_seconds = 1
max_segments_per_uid = 100000
max_tokens_per_uid = 100000000
max_generations_per_uid = 1024
ring_kib = 256
max_message_kib = 64
log_level = warn
CONF

# Starts kvchaind with event loop $1; returns 2 if io_uring is forbidden.
start_daemon() {
	rm -f "$tmp/daemon.log"
	"$daemon" -c "$tmp/kvchain.conf" --event-loop "$1" \
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
	return 0
}

# SIGTERM: exit 0 (LeakSanitizer would fail it) and no sanitizer report.
stop_daemon() {
	kill -TERM "$daemon_pid"
	wait "$daemon_pid"
	rc=$?
	daemon_pid=
	[ $rc -eq 0 ] || fail "$loop: kvchaind exited $rc after SIGTERM"
	if grep -q -e "AddressSanitizer" -e "runtime error" "$tmp/daemon.log"; then
		fail "$loop: sanitizer report"
	fi
}

export KVCHAIN_TIMEOUT_MS=20000
passes=0
for loop in io_uring epoll; do
	start_daemon "$loop"
	if [ $? -eq 2 ]; then
		echo "SKIP: io_uring is not permitted here; its pass is skipped"
		continue
	fi
	timeout $((seconds + 60)) "$stress" --socket "$sock" \
		--model "$tmp/model.gguf" --clients "$clients" \
		--seconds "$seconds" --settle-seconds 15 --label "$loop" ||
		fail "$loop: stress-client failed (status $?)"
	kill -0 "$daemon_pid" 2>/dev/null || fail "$loop: kvchaind died"
	stop_daemon
	passes=$((passes + 1))
done
[ $passes -gt 0 ] || exit 77
exit 0
