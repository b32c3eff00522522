#!/bin/sh
# The demo chain. Builds what is missing and starts kvchaind on the demo
# model (or uses a running daemon). For each question it runs stage A
# (compress the passages into the sentence that answers) and stage B
# (answer from that sentence) as two processes. Stage B reads stage A's
# KV through the segment handle stage A printed. Prints the question, O_A,
# O_B and the timings, and stops the daemon it started.
#
# usage: scripts/demo.sh [-m MODEL.gguf] [-a PROMPT_A -b PROMPT_B]
#                        [--hard-a TEXT --hard-b TEXT] [-q QUESTIONS.jsonl]
#                        [-s SOCKET] [-n N]
#
#   -m FILE      base model (default models/demo/base.gguf)
#   -a, -b DIR   PEFT prompt adapters of stages A and B (default: the demo's
#                FTHSS prompts with the demo model, hard prompts with
#                another). The chain always shares KV, so classic prompts
#                here run the naive way of docs/results.md.
#   --hard-a, --hard-b TEXT
#                hard prompts, used when no adapters are given (default:
#                the demo's instruction words)
#   -q FILE      JSON Lines with I_ALL, I_A and, to be checked, O_B
#                (default models/demo/questions.jsonl)
#   -s SOCKET    use the kvchaind already serving on SOCKET
#   -n N         questions to run (default 5)
#
# Exits 0 when every question ran, whatever the answers; 1 otherwise.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
demo=$top/models/demo

model=$demo/base.gguf
prompt_a=""
prompt_b=""
# The instruction words the demo model was pretrained with; $(...) drops
# their final newline.
hard_a="$(cat "$demo/words-A.txt")
"
hard_b="$(cat "$demo/words-B.txt")
"
questions=$demo/questions.jsonl
socket=""
count=5

die() {
	echo "demo: $*" >&2
	exit 1
}

need_arg() {
	[ "$#" -ge 2 ] || die "$1 needs a value; see the top of scripts/demo.sh"
}

while [ "$#" -gt 0 ]; do
	case $1 in
	-m) need_arg "$@"; model=$2 ;;
	-a) need_arg "$@"; prompt_a=$2 ;;
	-b) need_arg "$@"; prompt_b=$2 ;;
	--hard-a) need_arg "$@"; hard_a=$2 ;;
	--hard-b) need_arg "$@"; hard_b=$2 ;;
	-q) need_arg "$@"; questions=$2 ;;
	-s) need_arg "$@"; socket=$2 ;;
	-n) need_arg "$@"; count=$2 ;;
	-h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1'; see the top of scripts/demo.sh" ;;
	esac
	shift 2
done
if { [ -n "$prompt_a" ] && [ -z "$prompt_b" ]; } ||
   { [ -z "$prompt_a" ] && [ -n "$prompt_b" ]; }; then
	die "give both -a and -b, or neither"
fi
# The demo's FTHSS prompts fit the demo model only; another model gets
# hard prompts unless -a and -b name tuned ones.
if [ -z "$prompt_a" ] && [ -f "$model" ] &&
   [ "$(realpath "$model")" = "$(realpath "$demo/base.gguf")" ]; then
	prompt_a=$demo/prompts/fthss/A
	prompt_b=$demo/prompts/fthss/B
fi
case $count in
''|*[!0-9]*|0) die "-n wants a count of questions of 1 or more, got '$count'" ;;
esac
[ -f "$model" ] || die "$model: no such file"
[ -f "$questions" ] || die "$questions: no such file"
for p in "$prompt_a" "$prompt_b"; do
	[ -z "$p" ] || [ -d "$p" ] || die "$p: no such prompt folder"
done
[ -z "$socket" ] || [ -S "$socket" ] || die "$socket: no kvchaind socket there"
command -v python3 >/dev/null || die "python3 is required (scripts/deps.sh installs it)"

dir=$(mktemp -d)
daemon_pid=""
cleanup() {
	if [ -n "$daemon_pid" ]; then
		kill "$daemon_pid" 2>/dev/null || true
		wait "$daemon_pid" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# One question per file: I_ALL, I_A and the expected O_B (maybe empty).
python3 - "$questions" "$count" "$dir" <<'EOF'
import json, os, sys
path, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
n = 0
with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
        if n == count:
            break
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except ValueError as e:
            sys.exit("demo: %s:%d: invalid JSON: %s" % (path, line_no, e))
        if not (isinstance(ex, dict) and isinstance(ex.get("I_ALL"), str)
                and isinstance(ex.get("I_A"), str)
                and isinstance(ex.get("O_B", ""), str)):
            sys.exit("demo: %s:%d: expected an object with the strings "
                     "I_ALL, I_A and, optionally, O_B" % (path, line_no))
        n += 1
        for name, key in (("q", "I_ALL"), ("a", "I_A"), ("ref", "O_B")):
            with open(os.path.join(out, "%d.%s" % (n, name)), "w",
                      encoding="utf-8") as f_out:
                f_out.write(ex.get(key, ""))
if n == 0:
    sys.exit("demo: %s has no questions" % path)
EOF

now() {
	date +%s.%N
}

start=$(now)
"$top/scripts/build.sh"
awk -v a="$start" -v b="$(now)" \
	'BEGIN { printf "build: %.1f s (only what was missing)\n", b - a }'

if [ -z "$socket" ]; then
	socket=$dir/kvchaind.sock
	"$build/daemon/kvchaind" --model "$model" --socket "$socket" \
		--arena-mib 64 --log-level warn 2>"$dir/kvchaind.log" &
	daemon_pid=$!
	tries=0
	while [ ! -S "$socket" ]; do
		tries=$((tries + 1))
		if [ "$tries" -gt 200 ] || ! kill -0 "$daemon_pid" 2>/dev/null; then
			echo "demo: kvchaind did not start; its log:" >&2
			cat "$dir/kvchaind.log" >&2
			exit 1
		fi
		sleep 0.05
	done
	echo "kvchaind: serving $model on $socket (pid $daemon_pid)"
else
	echo "kvchaind: using the daemon on $socket"
fi
if [ -n "$prompt_a" ]; then
	echo "prompts: $prompt_a, $prompt_b"
	set -- "$prompt_a" "$prompt_b"
else
	echo "prompts: hard, as text"
	set -- --hard-a "$hard_a" --hard-b "$hard_b"
fi

# Lower case, no punctuation and no surrounding blanks, as exact match
# scores.
normal() {
	tr '[:upper:]' '[:lower:]' | tr -d '[:punct:]' |
		sed 's/^[[:space:]]*//; s/[[:space:]]*$//'
}

asked=0
right=0
checked=0
i=1
while [ -f "$dir/$i.q" ]; do
	asked=$((asked + 1))
	echo
	echo "Q$i: $(cat "$dir/$i.q")"
	echo "    passages: $(cat "$dir/$i.a")"
	t0=$(now)
	if ! "$build/examples/chain-stage-a" --socket "$socket" --timings \
		--i-all "$(cat "$dir/$i.q")" --i-a "$(cat "$dir/$i.a")" \
		--max-tokens 32 "$@" >"$dir/handle" 2>"$dir/a.err"; then
		cat "$dir/a.err" >&2
		die "stage A failed on question $i"
	fi
	o_a=$(sed -n 's/^O_A: //p' "$dir/a.err")
	a_time=$(sed -n 's/^stage A: \([0-9.]*\) ms.*/\1/p' "$dir/a.err")
	handle=$(cat "$dir/handle")
	if ! o_b=$("$build/examples/chain-stage-b" --socket "$socket" \
		--timings --max-tokens 16 "$handle" 2>"$dir/b.err"); then
		cat "$dir/b.err" >&2
		die "stage B failed on question $i"
	fi
	t1=$(now)
	b_first=$(sed -n 's/^stage B: first token \([0-9.]*\) ms.*/\1/p' "$dir/b.err")
	b_time=$(sed -n 's/.*O_B in \([0-9.]*\) ms.*/\1/p' "$dir/b.err")
	echo "    O_A (stage A process): $o_a"
	echo "    O_B (stage B process, attached to segment $handle): $(printf '%s' "$o_b" | tr '\n' ' ')"
	if [ -s "$dir/$i.ref" ]; then
		checked=$((checked + 1))
		if [ "$(printf '%s' "$o_b" | normal)" = "$(normal <"$dir/$i.ref")" ]; then
			right=$((right + 1))
			echo "    right (expected: $(cat "$dir/$i.ref"))"
		else
			echo "    wrong (expected: $(cat "$dir/$i.ref"))"
		fi
	fi
	awk -v a="$a_time" -v f="$b_first" -v b="$b_time" -v s="$t0" -v e="$t1" \
		'BEGIN { printf "    time: stage A %.1f ms; stage B first token %.2f ms, all %.2f ms; both processes %.0f ms\n", a, f, b, (e - s) * 1e3 }'
	i=$((i + 1))
done
echo
if [ "$checked" -gt 0 ]; then
	echo "$right of $checked answers right"
fi
