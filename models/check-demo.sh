#!/bin/sh
# Runs the demo model's pipeline at toy size: gen-tasks.py is reproducible
# and keeps the splits' names apart, every answer is copied from its input,
# mkvocab.py's vocabulary passes mkbase's tokenizer checks, and the model
# mkbase writes loads in kvchain-run and trains with kvchain-tune pretrain.
set -u
build=${top_builddir:-.}
src=${top_srcdir:-$(dirname "$0")/..}
mkbase="$build/models/mkbase"
run="$build/tools/kvchain-run"
tune="$build/tune/kvchain-tune"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
[ -x "$mkbase" ] && [ -x "$run" ] && [ -x "$tune" ] ||
	{ echo "SKIP: binaries not built"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
failures=0

fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

gen() {
	python3 "$src/models/gen-tasks.py" --train 40 --dev 20 --test 20 \
		--corpus 300 "$@"
}

# ---- Data: same seed, same bytes; another seed, other bytes
gen -o "$dir/a" --seed 7 || fail "gen-tasks.py exited $?"
gen -o "$dir/b" --seed 7 || fail "gen-tasks.py exited $?"
gen -o "$dir/c" --seed 8 || fail "gen-tasks.py exited $?"
for f in single-train single-test multi-dev corpus; do
	cmp -s "$dir/a/$f.jsonl" "$dir/b/$f.jsonl" ||
		fail "$f.jsonl differs between two runs with seed 7"
	cmp -s "$dir/a/$f.jsonl" "$dir/c/$f.jsonl" &&
		fail "$f.jsonl is the same with seeds 7 and 8"
done

# ---- Data: counts, keys, copied answers, disjoint names
python3 - "$dir/a" <<'EOF' || fail "data checks"
import json, re, sys
d = sys.argv[1]
bad = 0
def check(cond, what):
    global bad
    if not cond:
        print("data: " + what)
        bad += 1
def rows(name):
    with open("%s/%s.jsonl" % (d, name)) as f:
        return [json.loads(line) for line in f]
# creatures are "the xxx", people are capitalised; both made up
def names(examples):
    found = set()
    for ex in examples:
        for v in ex.values():
            found |= set(re.findall(r"\bthe ([a-z]+(?:ble|bit|dle|nip|mog|rax|lin|per|tok|vel))\b", v))
            found |= set(re.findall(r"\b(?!The\b|Find\b|What\b|Who\b|Where\b|How\b)([A-Z][a-z]+)\b", v))
    return found
split_names = {}
for split, n in (("train", 40), ("dev", 20), ("test", 20)):
    single, multi = rows("single-" + split), rows("multi-" + split)
    check(len(single) == n, "single-%s has %d examples" % (split, len(single)))
    check(len(multi) == n, "multi-%s has %d examples" % (split, len(multi)))
    for ex in single:
        check(sorted(ex) == ["I_A", "I_ALL", "O_A", "O_B"], "single keys %s" % sorted(ex))
        check(ex["O_A"] in ex["I_A"], "O_A not in I_A: %s" % ex["O_A"])
        check(ex["O_B"] in ex["O_A"].rstrip(".").split(), "O_B not in O_A: %s" % ex["O_B"])
        check(len(ex["O_B"].split()) == 1, "O_B is not one word: %s" % ex["O_B"])
    for ex in multi:
        check(sorted(ex) == ["I_ALL", "I_B", "O_1A", "O_1B", "O_2A", "O_2B", "O_3A"], "multi keys %s" % sorted(ex))
        check(ex["O_1B"] in ex["I_B"], "O_1B not in I_B: %s" % ex["O_1B"])
        check(ex["O_2B"] in ex["I_B"], "O_2B not in I_B: %s" % ex["O_2B"])
        check(ex["O_3A"] in ex["O_2B"], "O_3A not in O_2B: %s" % ex["O_3A"])
        facts = ex["I_B"].split(". ")
        check(len(facts) == len(set(facts)), "repeated fact in %s" % ex["I_B"])
    split_names[split] = names(single + multi)
    check(len(split_names[split]) > 20, "only %d names in %s" % (len(split_names[split]), split))
for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
    common = split_names[a] & split_names[b]
    check(not common, "names in both %s and %s: %s" % (a, b, sorted(common)[:5]))
corpus = rows("corpus")
check(len(corpus) == 900, "corpus has %d texts" % len(corpus))
starts = {t["text"].split(":")[0] for t in corpus}
check(starts == {"compress", "answer", "reason"}, "corpus instruction words %s" % starts)
corpus_names = names([{"t": t["text"]} for t in corpus])
check(not corpus_names & split_names["test"], "test names in the corpus")
sys.exit(1 if bad else 0)
EOF

# ---- Vocabulary and model: mkbase checks the tokenizer, kvchain-run loads
python3 "$src/models/mkvocab.py" "$dir/a/corpus.jsonl" -o "$dir/vocab.json" \
	--size 400 >/dev/null || fail "mkvocab.py exited $?"
"$mkbase" --vocab "$dir/vocab.json" -o "$dir/init.gguf" --dim 32 --layers 2 \
	--heads 2 --kv-heads 1 --ff 64 --ctx 256 --seed 3 2>"$dir/err" ||
	fail "mkbase exited $?: $(cat "$dir/err")"
"$run" -m "$dir/init.gguf" -p "answer: question Who owns the zorble?" -n 4 \
	--print-ids >/dev/null 2>"$dir/err" ||
	fail "kvchain-run exited $?: $(cat "$dir/err")"
grep -q "prompt" "$dir/err" || fail "kvchain-run printed no prompt ids: $(cat "$dir/err")"
python3 - "$dir/vocab.json" <<'EOF' || fail "vocabulary checks"
import json, sys
v = json.load(open(sys.argv[1]))
ok = len(v["tokens"]) == 400 and len(v["merges"]) == 400 - 258
ok &= len(set(v["tokens"])) == len(v["tokens"])
ok &= all(len(c["ids"]) > 0 for c in v["checks"])
sys.exit(0 if ok else 1)
EOF

# ---- A vocabulary whose check ids are wrong makes no model
python3 - "$dir/vocab.json" "$dir/wrong.json" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
v["checks"][0]["ids"][0] += 1
json.dump(v, open(sys.argv[2], "w"))
EOF
"$mkbase" --vocab "$dir/wrong.json" -o "$dir/wrong.gguf" --dim 32 \
	--layers 1 --heads 2 --kv-heads 1 --ff 64 2>"$dir/err" &&
	fail "mkbase accepted check ids the tokenizer does not give"
grep -q "checks\[0\]" "$dir/err" || fail "mkbase did not name the failed check: $(cat "$dir/err")"
[ -e "$dir/wrong.gguf" ] && fail "mkbase wrote a model after a failed check"

# ---- Pretraining runs on the corpus and its model loads
"$tune" pretrain -m "$dir/init.gguf" -d "$dir/a/corpus.jsonl" \
	-o "$dir/base.gguf" --steps 4 -b 2 --seq-len 32 --log-every 1 -t 1 \
	>"$dir/log" 2>"$dir/err" || fail "pretrain exited $?: $(cat "$dir/err")"
"$run" -m "$dir/base.gguf" -p "answer: question" -n 2 >/dev/null 2>"$dir/err" ||
	fail "kvchain-run on the pretrained model exited $?: $(cat "$dir/err")"

[ "$failures" -eq 0 ] || exit 1
echo "PASS: demo pipeline at toy size"
