#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Train a byte-level BPE vocabulary on a text corpus, standard library only.

The vocabulary is the GPT-2 kind that kvchain's engine reads from a GGUF
file with tokenizer.ggml.model "gpt2" and pre-tokenizer "default": text is
split by the GPT-2 pre-tokenizer pattern, each piece's bytes are mapped to
printable characters (space becomes U+0120), and ranked merges join
adjacent symbols. Ids: <s> (BOS) 0, </s> (EOS) 1, the 256 byte symbols in
byte order, then one token per merge, in merge order.

Training is the usual greedy one: count adjacent symbol pairs over the
corpus' pieces, weighted by piece frequency, merge the most frequent pair
(ties go to the pair that sorts first, so a run is reproducible), and
repeat until the vocabulary has --size tokens or no pair occurs twice.

The output is a JSON file that models/mkbase turns into a GGUF model:
  {"model": "gpt2", "pre": "default", "bos": 0, "eos": 1,
   "tokens": [...], "types": [...], "merges": ["a b", ...],
   "checks": [{"text": ..., "ids": [...]}, ...]}
with types numbered as tokenizer.ggml.token_type numbers them, and checks
of texts with the ids these merges give them.
"""

import argparse
import collections
import json
import os
import re
import sys

# The GPT-2 pre-tokenizer pattern. Python's re has no \p{L} or \p{N}, so
# letters are [^\W\d_] and numbers \d, which agree with \p{L} and \p{N} on
# ASCII text such as the demo corpus.
PRE_TOKENIZER = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")

TYPE_NORMAL = 1
TYPE_CONTROL = 3
SPECIALS = ["<s>", "</s>"]

# Texts outside any corpus for the checks: a name no split has, digits,
# punctuation runs, spaces and letters beyond ASCII.
CHECK_TEXTS = [
    "answer: question What colour is the zorble? context The zorble is "
    "red. answer:",
    "Line one\n\n  two  spaces, 42 apples; caf\u00e9 \u00fcber\t--ok?!",
]


def byte_symbols():
    """Return the printable character GPT-2 assigns to each byte value."""
    keep = (list(range(ord("!"), ord("~") + 1)) +
            list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1)))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def read_texts(path, limit):
    """Yield the "text" values of a JSON Lines file, at most @limit."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit and n > limit:
                return
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit("mkvocab: %s:%d: invalid JSON: %s" % (path, n, e))
            if not isinstance(row, dict) or \
                    not isinstance(row.get("text"), str):
                sys.exit('mkvocab: %s:%d: expected an object with a string '
                         '"text"' % (path, n))
            yield row["text"]


def count_pieces(texts, symbols):
    """Count the corpus' pre-tokenized pieces as tuples of byte symbols."""
    counts = collections.Counter()
    for text in texts:
        for piece in PRE_TOKENIZER.findall(text):
            counts[piece] += 1
    return {tuple(symbols[b] for b in piece.encode("utf-8")): n
            for piece, n in counts.items()}


def train(words, n_merges):
    """Learn up to @n_merges merges over @words (symbol tuple -> count).

    Keeps pair counts and, per pair, the words that contain it, so each
    merge only revisits the words it changes.
    """
    words = [[list(w), n] for w, n in words.items()]
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for i, (w, n) in enumerate(words):
        for a, b in zip(w, w[1:]):
            pairs[a, b] += n
            where[a, b].add(i)
    merges = []
    while len(merges) < n_merges and pairs:
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best[1] < 2:
            break
        (a, b), _ = best
        merges.append((a, b))
        joined = a + b
        for i in sorted(where.pop((a, b), ())):
            w, n = words[i]
            for x, y in zip(w, w[1:]):
                pairs[x, y] -= n
                if pairs[x, y] <= 0:
                    del pairs[x, y]
            out = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(joined)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i][0] = out
            for x, y in zip(out, out[1:]):
                pairs[x, y] += n
                where[x, y].add(i)
        pairs.pop((a, b), None)
    return merges


def encode(text, symbols, ranks, ids):
    """Encode @text with the learned merges, lowest rank first."""
    out = []
    for piece in PRE_TOKENIZER.findall(text):
        w = [symbols[b] for b in piece.encode("utf-8")]
        while len(w) > 1:
            pair = min(zip(w, w[1:]),
                       key=lambda p: ranks.get(p, len(ranks)))
            if pair not in ranks:
                break
            merged = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == pair:
                    merged.append(w[j] + w[j + 1])
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            w = merged
        out += [ids[s] for s in w]
    return out


def build(texts, size, n_checks):
    """Train the vocabulary and encode a few texts as checks for mkbase.

    mkbase encodes each check's text with kvchain's own tokenizer and stops
    unless it gets the same ids, so a vocabulary the engine would split
    differently never becomes a model.
    """
    texts = list(texts)
    symbols = byte_symbols()
    words = count_pieces(texts, symbols)
    n_merges = size - len(SPECIALS) - len(symbols)
    merges = train(words, n_merges)
    tokens = SPECIALS + symbols + [a + b for a, b in merges]
    types = [TYPE_CONTROL] * len(SPECIALS) + \
        [TYPE_NORMAL] * (len(tokens) - len(SPECIALS))
    ranks = {m: i for i, m in enumerate(merges)}
    ids = {t: i for i, t in enumerate(tokens) if types[i] == TYPE_NORMAL}
    samples = texts[:n_checks] + CHECK_TEXTS
    return {
        "model": "gpt2",
        "pre": "default",
        "bos": 0,
        "eos": 1,
        "tokens": tokens,
        "types": types,
        "merges": ["%s %s" % m for m in merges],
        "checks": [{"text": t, "ids": encode(t, symbols, ranks, ids)}
                   for t in samples],
    }


def main(argv):
    p = argparse.ArgumentParser(
        description="Train a byte-level BPE vocabulary on a JSON Lines "
                    'corpus of {"text": ...} objects.')
    p.add_argument("corpus", help="JSON Lines file of {\"text\": ...}")
    p.add_argument("-o", "--out", required=True,
                   help="vocabulary JSON file to write")
    p.add_argument("--size", type=int, default=1024,
                   help="tokens in the vocabulary, specials and the 256 "
                        "byte symbols included (default 1024)")
    p.add_argument("--checks", type=int, default=16,
                   help="corpus texts to store, with their ids, as checks "
                        "of the engine's tokenizer (default 16)")
    p.add_argument("--max-texts", type=int, default=0,
                   help="read at most this many texts (default: all)")
    args = p.parse_args(argv)
    if args.size < len(SPECIALS) + 256:
        p.error("--size must be at least %d" % (len(SPECIALS) + 256))
    vocab = build(read_texts(args.corpus, args.max_texts), args.size,
                  args.checks)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
        f.write("\n")
    os.replace(tmp, args.out)
    print("mkvocab: %d tokens, %d merges" %
          (len(vocab["tokens"]), len(vocab["merges"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
