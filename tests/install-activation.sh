#!/bin/sh
# Starts kvchaind the way systemd starts kvchaind.service behind
# kvchaind.socket (tests/sd-launch plays the service manager) and checks:
# - READY=1 comes after STATUS=loading, and a client is served on the
#   passed socket as soon as it arrives; the daemon binds no socket itself;
# - WATCHDOG=1 keep-alives arrive at about half the watchdog interval;
# - SIGHUP sends RELOADING=1 then READY=1, applies segment_ttl_seconds and
#   log_level, names arena_mib as needing a restart, and survives a bad file;
# - SIGTERM sends STOPPING=1, exits 0 and leaves the manager's socket path;
# - LISTEN_PID of another process is ignored (and an abstract
#   NOTIFY_SOCKET works), and a passed stream socket is rejected with a
#   message.
set -u
build=${top_builddir:-.}
daemon="$build/daemon/kvchaind"
kvchain="$build/tools/kvchain"
launch="$build/tests/sd-launch"
mkmodel="$build/tests/mkmodel"
for bin in "$daemon" "$kvchain" "$launch" "$mkmodel"; do
	[ -x "$bin" ] || { echo "SKIP: $bin is not built"; exit 77; }
done

dir=$(mktemp -d)
launch_pid=
cleanup() {
	[ -n "$launch_pid" ] && kill -TERM "$launch_pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
failures=0
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# Waits up to 20 s for a line matching $2 in file $1; the count of such
# lines must reach $3 (default 1).
wait_for() {
	want=${3:-1}
	tries=0
	while :; do
		count=$(grep -c -- "$2" "$1" 2>/dev/null)
		[ "${count:-0}" -ge "$want" ] && break
		tries=$((tries + 1))
		[ "$tries" -gt 400 ] && return 1
		sleep 0.05
	done
	return 0
}

# Prints the line number of the first line matching $2 in $1 (0: none).
line_of() {
	n=$(grep -n -m1 -- "$2" "$1" | cut -d: -f1)
	echo "${n:-0}"
}

"$mkmodel" -o "$dir/m.gguf" --seed 5 || { echo "FAIL: mkmodel"; exit 1; }
cat >"$dir/kvchain.conf" <<EOF
model = $dir/m.gguf
arena_mib = 16
log_level = info
EOF

# 1. Start as the service manager would, with a 400 ms watchdog.
log="$dir/notify.log"
"$launch" --notify "$dir/notify.sock" --log "$log" \
	--listen "$dir/passed.sock" --watchdog-usec 400000 -- \
	"$daemon" -c "$dir/kvchain.conf" --socket "$dir/own.sock" \
	2>"$dir/daemon.log" &
launch_pid=$!
wait_for "$log" ' READY=1$' || { fail "no READY=1 within 20 s"; cat "$dir/daemon.log"; exit 1; }
KVCHAIN_TIMEOUT_MS=2000 "$kvchain" --socket "$dir/passed.sock" stats >"$dir/stats" 2>&1 ||
	fail "stats on the passed socket right after READY=1 failed: $(cat "$dir/stats")"
grep -q "^model *m.gguf" "$dir/stats" || fail "stats names no model m.gguf: $(cat "$dir/stats")"
[ -e "$dir/own.sock" ] && fail "the daemon bound its own socket although one was passed"
mainpid=$(sed -n 's/^0 MAINPID=//p' "$log")
loading=$(line_of "$log" ' STATUS=loading model ')
ready=$(line_of "$log" ' READY=1$')
[ "$loading" -gt 0 ] || fail "no STATUS=loading line"
[ "$loading" -lt "$ready" ] || fail "STATUS=loading (line $loading) is not before READY=1 (line $ready)"
grep -q ' STATUS=serving model m.gguf on ' "$log" || fail "no STATUS=serving line: $(cat "$log")"
grep -q 'passed by the service manager' "$dir/daemon.log" ||
	fail "the start line does not say the socket was passed"

# 2. Keep-alives every 200 ms: at least 4 more within 1.5 s.
before=$(grep -c ' WATCHDOG=1$' "$log")
sleep 1.5
after=$(grep -c ' WATCHDOG=1$' "$log")
[ $((after - before)) -ge 4 ] || fail "$((after - before)) WATCHDOG=1 in 1.5 s, expected at least 4"

# 3. SIGHUP: live keys change, the others are named, a bad file is survived.
cat >"$dir/kvchain.conf" <<EOF
model = $dir/m.gguf
arena_mib = 32
log_level = debug
segment_ttl_seconds = 7
EOF
kill -HUP "$mainpid"
wait_for "$log" ' READY=1$' 2 || fail "no READY=1 after SIGHUP"
reloading=$(grep -n ' RELOADING=1$' "$log" | head -1 | cut -d: -f1)
second_ready=$(grep -n ' READY=1$' "$log" | sed -n 2p | cut -d: -f1)
[ -n "$reloading" ] || fail "no RELOADING=1 after SIGHUP"
[ -n "$reloading" ] && [ -n "$second_ready" ] && [ "$reloading" -lt "$second_ready" ] ||
	fail "RELOADING=1 does not come before the second READY=1"
grep -q 'reload: segment_ttl_seconds is now 7 (was 300)' "$dir/daemon.log" ||
	fail "segment_ttl_seconds was not reloaded: $(cat "$dir/daemon.log")"
grep -q 'reload: log_level changed' "$dir/daemon.log" || fail "log_level was not reloaded"
grep -q 'reload: arena_mib changed, but it takes effect only after a restart' "$dir/daemon.log" ||
	fail "arena_mib is not named as needing a restart"
grep -q 'reload: model changed' "$dir/daemon.log" && fail "an unchanged model is reported as changed"

echo "segment_ttl_seconds = soon" >>"$dir/kvchain.conf"
kill -HUP "$mainpid"
wait_for "$log" ' READY=1$' 3 || fail "no READY=1 after a SIGHUP with a bad file"
grep -q "kvchain.conf:5: key 'segment_ttl_seconds': invalid value 'soon'" "$dir/daemon.log" ||
	fail "the bad value is not named: $(tail -3 "$dir/daemon.log")"
grep -q 'reload failed; the daemon keeps its running settings' "$dir/daemon.log" ||
	fail "no 'reload failed' line"
KVCHAIN_TIMEOUT_MS=2000 "$kvchain" --socket "$dir/passed.sock" stats >/dev/null 2>&1 ||
	fail "stats after the failed reload failed"

# 4. SIGTERM.
kill -TERM "$mainpid"
wait "$launch_pid"
status=$?
launch_pid=
[ "$status" -eq 0 ] || fail "kvchaind exited $status after SIGTERM: $(tail -5 "$dir/daemon.log")"
grep -q ' STOPPING=1$' "$log" || fail "no STOPPING=1"
[ -S "$dir/passed.sock" ] || fail "the daemon removed the socket path the manager owns"

# 5. LISTEN_PID of another process: the daemon binds its own socket.
# The notification socket is abstract this time ('@' in NOTIFY_SOCKET).
"$launch" --notify "@kvchain-test-$$" --log "$dir/n2.log" \
	--listen "$dir/p2.sock" --foreign-pid -- \
	"$daemon" --model "$dir/m.gguf" --arena-mib 16 --socket "$dir/own2.sock" \
	--log-level warn 2>"$dir/d2.log" &
launch_pid=$!
if wait_for "$dir/n2.log" ' READY=1$'; then
	[ -S "$dir/own2.sock" ] || fail "with a foreign LISTEN_PID the daemon did not bind its own socket"
	"$kvchain" --socket "$dir/own2.sock" stats >/dev/null 2>&1 ||
		fail "stats on the daemon's own socket failed"
	kill -TERM "$(sed -n 's/^0 MAINPID=//p' "$dir/n2.log")"
else
	fail "no READY=1 with a foreign LISTEN_PID: $(cat "$dir/d2.log")"
fi
wait "$launch_pid"
launch_pid=

# 6. A passed stream socket is rejected before the model loads.
"$launch" --notify "$dir/n3.sock" --log "$dir/n3.log" \
	--listen-stream "$dir/p3.sock" -- \
	"$daemon" --model "$dir/m.gguf" --socket "$dir/own3.sock" 2>"$dir/d3.log"
status=$?
[ "$status" -eq 1 ] || fail "a passed stream socket: exit $status, expected 1"
grep -q 'not a listening AF_UNIX SOCK_SEQPACKET socket' "$dir/d3.log" ||
	fail "a passed stream socket: no message naming the type: $(cat "$dir/d3.log")"
grep -q ' READY=1$' "$dir/n3.log" && fail "READY=1 sent although the socket was rejected"

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: socket activation, readiness, watchdog and reload"
