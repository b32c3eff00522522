#!/bin/sh
# Runs a two-stage chain through kvchaind with libkvchain clients and
# checks it against the same chain run in one process (tests/chain-inproc):
# - stage A and stage B as two example programs passing the handle;
# - the same chain as kvchain shell commands;
# - stage B the classic way (its prompt, then I_ALL's and O_A's text as
#   inputs of a one-stage chain) against engine_generate_recompute.
# Every output must match byte for byte. Also checks the kvchain tool's
# error lines and exit codes, and that the daemon exits 0 on SIGTERM.
# The daemon part runs with --event-loop io_uring and with epoll.
set -u
build=${top_builddir:-.}
daemon="$build/daemon/kvchaind"
kvchain="$build/tools/kvchain"
stage_a="$build/examples/chain-stage-a"
stage_b="$build/examples/chain-stage-b"
inproc="$build/tests/chain-inproc"
mkmodel="$build/tests/mkmodel"
for bin in "$daemon" "$kvchain" "$stage_a" "$stage_b" "$inproc" "$mkmodel"; do
	[ -x "$bin" ] || { echo "SKIP: $bin is not built"; exit 77; }
done

dir=$(mktemp -d)
daemon_pid=
cleanup() {
	[ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
failures=0
loop=
fail() {
	echo "FAIL: ${loop:+$loop: }$*"
	failures=$((failures + 1))
}

# Writes file $1 without its last byte (the newline the tools add).
strip_newline() {
	head -c -1 "$1" >"$1.bare"
}

i_all="What colour is the sky on a clear day?"
i_a="Passage: the sky looks blue because air scatters blue light most."
gen="--max-tokens 24 --ignore-eos"

"$mkmodel" -o "$dir/m.gguf" --seed 3 || { echo "FAIL: mkmodel"; exit 1; }
"$inproc" -m "$dir/m.gguf" -o "$dir" --i-all "$i_all" --i-a "$i_a" \
	--prompt-tokens 8 --max-tokens-a 24 --max-tokens-b 24 --ignore-eos ||
	{ echo "FAIL: chain-inproc"; exit 1; }
for f in o_a o_b o_b_recompute; do
	[ -s "$dir/$f" ] || fail "chain-inproc wrote an empty $f"
done
# O_A goes back to the daemon as text, which cannot hold a NUL byte.
[ "$(tr -d '\000' <"$dir/o_a" | wc -c)" -eq "$(wc -c <"$dir/o_a")" ] ||
	{ echo "FAIL: O_A of this test model contains a NUL byte; pick another --seed"; exit 1; }

export KVCHAIN_TIMEOUT_MS=30000
k() {
	"$kvchain" --socket "$sock" "$@"
}

# Everything from here runs once under each event loop of the daemon; the
# io_uring pass is skipped where io_uring is forbidden.
for loop in io_uring epoll; do
	sock="$dir/$loop.sock"
	"$daemon" --model "$dir/m.gguf" --socket "$sock" --arena-mib 16 \
		--event-loop "$loop" --log-level warn 2>"$dir/daemon.log" &
	daemon_pid=$!
	tries=0
	until [ -S "$sock" ]; do
		tries=$((tries + 1))
		if ! kill -0 "$daemon_pid" 2>/dev/null &&
		    grep -q "cannot set up io_uring" "$dir/daemon.log"; then
			break
		fi
		if [ "$tries" -gt 100 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
			echo "FAIL: the daemon ($loop) did not start:"
			cat "$dir/daemon.log"
			exit 1
		fi
		sleep 0.1
	done
	if [ ! -S "$sock" ]; then
		wait "$daemon_pid"
		daemon_pid=
		echo "SKIP: io_uring is not permitted here; its pass is skipped"
		continue
	fi

	# 1. Two example programs, the handle passed between them.
	handle=$("$stage_a" --socket "$sock" --i-all "$i_all" --i-a "$i_a" \
		--prompt-tokens 8 $gen 2>"$dir/a.err") || fail "chain-stage-a exited $?: $(cat "$dir/a.err")"
	echo "$handle" | grep -qx '[0-9a-f]\{32\}' || fail "chain-stage-a printed '$handle', not a handle"
	"$stage_b" --socket "$sock" $gen "$handle" >"$dir/b.out" 2>"$dir/b.err" ||
		fail "chain-stage-b exited $?: $(cat "$dir/b.err")"
	strip_newline "$dir/b.out"
	cmp -s "$dir/b.out.bare" "$dir/o_b" || fail "stage B through the daemon differs from in-process O_B"

	# 2. The same chain as kvchain commands.
	p_a=$(k prompt-random 8 --seed 1) || fail "prompt-random --seed 1 exited $?"
	p_b=$(k prompt-random 8 --seed 2) || fail "prompt-random --seed 2 exited $?"
	chain=$(k chain "$p_a" "$p_b") || fail "chain exited $?"
	seg=$(k create "$chain") || fail "create exited $?"
	k append "$seg" --shared "$i_all" >/dev/null || fail "append --shared exited $?"
	span_i_a=$(k append "$seg" --stage 0 "$i_a") || fail "append --stage 0 exited $?"
	k generate "$seg" --stage 0 $gen >"$dir/sh_oa" 2>"$dir/sh_oa.err" || fail "generate --stage 0 exited $?"
	grep -q '^span [0-9]*: 24 tokens' "$dir/sh_oa.err" || fail "generate printed no span line: $(cat "$dir/sh_oa.err")"
	k drop "$seg" "$span_i_a" || fail "drop exited $?"
	k generate "$seg" --stage 1 $gen >"$dir/sh_ob" 2>/dev/null || fail "generate --stage 1 exited $?"
	strip_newline "$dir/sh_oa"
	strip_newline "$dir/sh_ob"
	cmp -s "$dir/sh_oa.bare" "$dir/o_a" || fail "kvchain O_A differs from in-process O_A"
	cmp -s "$dir/sh_ob.bare" "$dir/o_b" || fail "kvchain O_B differs from in-process O_B"

	# A dropped span cannot be dropped again; a fork shares the spans.
	k drop "$seg" "$span_i_a" 2>"$dir/err" && fail "dropping a dropped span succeeded"
	fork=$(k fork "$seg") || fail "fork exited $?"
	[ "$fork" != "$seg" ] || fail "fork returned the same handle"
	k release "$fork" || fail "release exited $?"

	# 3. Recompute: stage B's prompt alone, I_ALL and O_A as its inputs.
	chain_b=$(k chain "$p_b") || fail "one-stage chain exited $?"
	seg_b=$(k create "$chain_b") || fail "create of the one-stage chain exited $?"
	k append "$seg_b" --stage 0 "$i_all" >/dev/null || fail "recompute append of I_ALL exited $?"
	k append "$seg_b" --stage 0 - <"$dir/sh_oa.bare" >/dev/null || fail "recompute append of O_A exited $?"
	k generate "$seg_b" --stage 0 $gen >"$dir/re_ob" 2>/dev/null || fail "recompute generate exited $?"
	strip_newline "$dir/re_ob"
	cmp -s "$dir/re_ob.bare" "$dir/o_b_recompute" || fail "recompute O_B differs from engine_generate_recompute"

	# 4. The tool's errors: one line, exit 1 for failed requests, 2 for usage.
	expect_error() {
		want=$1
		pattern=$2
		shift 2
		"$kvchain" --socket "$sock" "$@" >/dev/null 2>"$dir/err"
		status=$?
		[ "$status" -eq "$want" ] || fail "'kvchain $*' exited $status, expected $want"
		[ "$(wc -l <"$dir/err")" -eq 1 ] || fail "'kvchain $*' printed $(wc -l <"$dir/err") lines on stderr"
		grep -q -- "$pattern" "$dir/err" || fail "'kvchain $*' error lacks '$pattern': $(cat "$dir/err")"
	}
	expect_error 1 "unknown segment handle" append 0123456789abcdef0123456789abcdef --shared hi
	expect_error 1 "not found" chain 999999
	expect_error 2 "invalid handle" generate zz --stage 0
	expect_error 2 "exactly one of" append "$seg" hi
	expect_error 2 "unknown command" frobnicate
	"$kvchain" --socket "$dir/none.sock" stats >/dev/null 2>"$dir/err"
	[ $? -eq 1 ] || fail "stats on a missing socket did not exit 1"
	grep -q "cannot connect to $dir/none.sock" "$dir/err" || fail "missing-socket error: $(cat "$dir/err")"

	k stats >"$dir/stats" || fail "stats exited $?"
	grep -q '^segments' "$dir/stats" || fail "stats printed no segments line"

	# 5. The daemon stops cleanly on SIGTERM.
	kill -TERM "$daemon_pid"
	wait "$daemon_pid"
	status=$?
	daemon_pid=
	[ "$status" -eq 0 ] || { fail "kvchaind exited $status after SIGTERM"; cat "$dir/daemon.log"; }
done
loop=

if [ "$failures" -ne 0 ]; then
	exit 1
fi
echo "PASS: client chain"
