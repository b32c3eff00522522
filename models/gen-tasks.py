#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Generate the synthetic tasks of the demo model, seeded, standard library only.

Every fact is about a made-up creature ("the zorble") or a made-up person
("Mira"). Names come from a fixed pool split three ways, so the train, dev
and test splits use disjoint names and test questions never name anything
seen in training. Attribute values (colours, foods, ...) are small closed
sets shared by all splits. The words are few, so a model of a few million
weights can learn the language.

Files written into --out (JSON Lines, one object a line):

  single-{train,dev,test}.jsonl  single-round "compress then answer":
      I_ALL  the question ("What colour is the zorble?")
      I_A    a few short documents of facts, with distractors
      O_A    the sentence of I_A that answers the question
      O_B    the answer, one word
  multi-{train,dev,test}.jsonl   multi-round "reason and recall", two hops:
      I_ALL  the question ("Who is the friend of the owner of the zorble?")
      I_B    the facts, which only the recall stage B reads
      O_1A   reasoning step 1 ("Find the owner of the zorble.")
      O_1B   the fact recalled for it ("The zorble belongs to Mira.")
      O_2A   reasoning step 2 ("Find the friend of Mira.")
      O_2B   the fact recalled for it ("The friend of Mira is Tobin.")
      O_3A   the answer, one word ("Tobin")
  corpus.jsonl   pretraining text, {"text": ...} objects built from the
      train split's names only: the same tasks with plain instruction words
      ("compress:", "answer:", "reason:") where the stage prompts will sit.
"""

import argparse
import json
import os
import random
import sys

SPLITS = ("train", "dev", "test")

# Name pools: creature names are two syllables and an ending, person names
# a capitalised consonant-vowel pattern. Each split takes its own share.
ONSETS = "b d f g k l m n p r s t v z".split()
VOWELS = "a e i o u".split()
CODAS = ["", "r", "n", "l"]
ENDINGS = "ble bit dle nip mog rax lin per tok vel".split()
PERSON_ENDS = ["a", "o", "i", "in", "an", "el", "is"]

COLOURS = "red blue green yellow black white orange purple grey brown".split()
FOODS = "apples fish bread rice grass honey nuts seeds cheese berries".split()
HOMES = "forest river cave desert valley mountain lake city island garden".split()
LEGS = "two three four five six seven eight nine ten".split()

# Attributes of a creature: (name, values, fact template, question template).
# In the templates {e} is the creature and {v} the value.
ATTRIBUTES = [
    ("colour", COLOURS, "The {e} is {v}.", "What colour is the {e}?"),
    ("food", FOODS, "The {e} eats {v}.", "What does the {e} eat?"),
    ("home", HOMES, "The {e} lives in the {v}.", "Where does the {e} live?"),
    ("legs", LEGS, "The {e} has {v} legs.", "How many legs does the {e} have?"),
    ("owner", None, "The {e} belongs to {v}.", "Who owns the {e}?"),
]
FRIEND_FACT = "The friend of {p} is {q}."

# Share of each split in the name pools.
POOL_SHARES = {"train": 0.7, "dev": 0.15, "test": 0.15}


def creature_names():
    """Return every creature name the syllable pools can build, sorted."""
    names = set()
    for onset in ONSETS:
        for vowel in VOWELS:
            for coda in CODAS:
                for ending in ENDINGS:
                    names.add(onset + vowel + coda + ending)
    return sorted(names)


def person_names():
    """Return every person name the syllable pools can build, sorted."""
    names = set()
    for first in ONSETS:
        for vowel in VOWELS:
            for second in ONSETS:
                if second == first:
                    continue
                for end in PERSON_ENDS:
                    names.add((first + vowel + second + end).capitalize())
    return sorted(names)


def split_pool(names, rng):
    """Shuffle @names with @rng and cut them into disjoint per-split lists."""
    names = list(names)
    rng.shuffle(names)
    n_train = int(len(names) * POOL_SHARES["train"])
    n_dev = int(len(names) * POOL_SHARES["dev"])
    return {
        "train": names[:n_train],
        "dev": names[n_train:n_train + n_dev],
        "test": names[n_train + n_dev:],
    }


class World:
    """Draws creatures, people and their facts from one split's names."""

    def __init__(self, creatures, people, rng):
        self.creatures = creatures
        self.people = people
        self.rng = rng

    def draw_creatures(self, n):
        return self.rng.sample(self.creatures, n)

    def draw_people(self, n):
        return self.rng.sample(self.people, n)

    def value(self, attribute):
        values = attribute[1]
        if values is None:
            return self.rng.choice(self.people)
        return self.rng.choice(values)


def fact(attribute, creature, value):
    return attribute[2].format(e=creature, v=value)


def join_documents(documents):
    return " ".join("[%d] %s" % (i + 1, " ".join(d))
                    for i, d in enumerate(documents))


def make_single(world, n_docs, facts_per_doc, rivals):
    """Build one compress-then-answer example as a dict of segments.

    The asked creature's document contains the answer fact and other facts
    about it. The other documents are about other creatures; @rivals of
    them (at most all) also state the asked attribute with their own
    value, so only the document about the asked creature answers the
    question, and telling it from a rival takes reading the name.
    """
    rng = world.rng
    creatures = world.draw_creatures(n_docs)
    asked = rng.choice(ATTRIBUTES)
    documents = []
    answer_fact = answer = None
    for i, creature in enumerate(creatures):
        others = [a for a in ATTRIBUTES if a is not asked]
        if i <= rivals:
            attributes = [asked] + rng.sample(others, facts_per_doc - 1)
        else:
            attributes = rng.sample(others, facts_per_doc)
        rng.shuffle(attributes)
        sentences = []
        for attribute in attributes:
            value = world.value(attribute)
            sentences.append(fact(attribute, creature, value))
            if i == 0 and attribute is asked:
                answer_fact, answer = sentences[-1], value
        documents.append(sentences)
    rng.shuffle(documents)
    return {
        "I_ALL": asked[3].format(e=creatures[0]),
        "I_A": join_documents(documents),
        "O_A": answer_fact,
        "O_B": answer,
    }


def make_multi(world, n_distractors):
    """Build one two-hop reason-and-recall example as a dict of segments.

    Two question kinds: "Who is the friend of the owner of the X?" (owner,
    then friend) and "What colour/food/... is the pet of P?" (the creature
    P owns, then its attribute). Distractor facts share the relations and
    names of the chain, so each hop has to read the right fact. Each
    subject has at most one value per relation, so no fact contradicts
    another.
    """
    rng = world.rng
    creatures = world.draw_creatures(3)
    people = world.draw_people(4)
    owner = ATTRIBUTES[4]
    facts = {}  # (subject, relation) -> sentence, first one wins

    def add(subject, relation, sentence):
        facts.setdefault((subject, relation), sentence)

    creature, person = creatures[0], people[0]
    hop1 = fact(owner, creature, person)
    add(creature, "owner", hop1)
    if rng.random() < 0.5:
        friend = people[1]
        hop2 = FRIEND_FACT.format(p=person, q=friend)
        add(person, "friend", hop2)
        question = "Who is the friend of the owner of the %s?" % creature
        steps = ("Find the owner of the %s." % creature,
                 "Find the friend of %s." % person)
        answer = friend
        # another creature's owner and friends of the other people
        add(creatures[1], "owner", fact(owner, creatures[1], people[2]))
        add(people[2], "friend", FRIEND_FACT.format(p=people[2], q=people[3]))
        add(friend, "friend", FRIEND_FACT.format(p=friend, q=people[2]))
    else:
        attribute = rng.choice(ATTRIBUTES[:4])
        answer = world.value(attribute)
        hop2 = fact(attribute, creature, answer)
        add(creature, attribute[0], hop2)
        question = attribute[3].format(e="pet of " + person)
        steps = ("Find the pet of %s." % person,
                 "Find the %s of the %s." % (attribute[0], creature))
        # another pet with another owner, and the same attribute of the
        # creatures the question does not name
        add(creatures[1], "owner", fact(owner, creatures[1], people[1]))
        for other in creatures[1:]:
            add(other, attribute[0],
                fact(attribute, other, world.value(attribute)))
    for _ in range(n_distractors):
        attribute = rng.choice(ATTRIBUTES[:4])
        subject = rng.choice(creatures)
        add(subject, attribute[0],
            fact(attribute, subject, world.value(attribute)))
    sentences = list(facts.values())
    rng.shuffle(sentences)
    return {
        "I_ALL": question,
        "I_B": " ".join(sentences),
        "O_1A": steps[0],
        "O_1B": hop1,
        "O_2A": steps[1],
        "O_2B": hop2,
        "O_3A": answer,
    }


def compress_text(ex):
    return "compress: question %s\npassages %s\nanswer sentence: %s" % (
        ex["I_ALL"], ex["I_A"], ex["O_A"])


def answer_text(ex):
    return "answer: question %s\ncontext %s\nanswer: %s" % (
        ex["I_ALL"], ex["O_A"], ex["O_B"])


def reason_text(ex):
    return ("reason: question %s\nfacts %s\nstep: %s\nrecall: %s\n"
            "step: %s\nrecall: %s\nanswer: %s"
            % (ex["I_ALL"], ex["I_B"], ex["O_1A"], ex["O_1B"], ex["O_2A"],
               ex["O_2B"], ex["O_3A"]))


# The words that stand where each stage's prompt will sit, in the corpus of
# --corpus-format chain and as the hard prompts of the demo chain. Each
# ends with a newline, so the question after it starts a new word.
COMPRESS_WORDS = "compress: question passages answer sentence:\n"
ANSWER_WORDS = "answer: question context answer:\n"
REASON_WORDS = "reason: question step:\n"
RECALL_WORDS = "recall: facts\n"


def chain_rows(world, args):
    """Lay out new examples as kvchaind frames a chain's stages, one stage
    per row in the single-stage FTHSS format (I_ALL, I_A, O_A), with the
    stage's instruction words before the question:

      compress  I_ALL question, I_A the documents, O_A the answer sentence
      answer    I_ALL question, I_A the answer sentence as text, O_A the
                short answer (what the text-passing chain's last stage
                reads)

    --corpus-mix C,A,R sets the share of each; the R reason texts are
    multi-round chains and go to multi_rows() instead.
    """
    n_compress, n_answer, _ = (args.corpus * w for w in args.mix)
    rows = []
    for _ in range(n_compress):
        ex = make_single(world, args.docs, args.facts, args.rivals)
        rows.append({"I_ALL": COMPRESS_WORDS + ex["I_ALL"],
                     "I_A": ex["I_A"], "O_A": ex["O_A"]})
    for _ in range(n_answer):
        ex = make_single(world, args.docs, args.facts, args.rivals)
        rows.append({"I_ALL": ANSWER_WORDS + ex["I_ALL"],
                     "I_A": ex["O_A"], "O_A": ex["O_B"]})
    world.rng.shuffle(rows)
    return rows


def multi_rows(world, args):
    """Lay out new two-hop examples as the classic chain's stages read them,
    one output per row (classic_multi()), with the stage's instruction words
    before the question. Returns the rows of stage A and of stage B, whose
    keys differ (B has its input I_B as I_A).
    """
    examples = [make_multi(world, args.distractors)
                for _ in range(args.corpus * args.mix[2])]
    rows = classic_multi(examples)
    for stage, words in (("A", REASON_WORDS), ("B", RECALL_WORDS)):
        for row in rows[stage]:
            row["I_ALL"] = words + row["I_ALL"]
    return rows["A"], rows["B"]


def classic_multi(examples):
    """Split multi-round examples into the single-stage rows each stage of
    the classic chain is tuned on: for every output, I_ALL followed by the
    earlier outputs as text, and for stage B its input I_B as I_A.
    """
    rows = {"A": [], "B": []}
    for ex in examples:
        before = ex["I_ALL"]
        for key in ("O_1A", "O_1B", "O_2A", "O_2B", "O_3A"):
            stage = key[-1]
            row = {"I_ALL": before}
            if stage == "B":
                row["I_A"] = ex["I_B"]
            row["O_A"] = ex[key]
            rows[stage].append(row)
            before += "\n" + ex[key]
    return rows


def corpus_texts(world, args):
    """Lay out new examples as pretraining text with plain instruction words.

    --corpus-mix sets how many texts of each kind (compress, answer,
    reason) go in per --corpus unit; each text has its own example.
    """
    n_compress, n_answer, n_reason = (args.corpus * w for w in args.mix)
    texts = [compress_text(make_single(world, args.docs, args.facts, args.rivals))
             for _ in range(n_compress)]
    texts += [answer_text(make_single(world, args.docs, args.facts, args.rivals))
              for _ in range(n_answer)]
    texts += [reason_text(make_multi(world, args.distractors))
              for _ in range(n_reason)]
    world.rng.shuffle(texts)
    return texts


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Generate the demo model's synthetic tasks and "
                    "pretraining corpus (JSON Lines).")
    p.add_argument("-o", "--out", required=True,
                   help="folder to write the files into (created)")
    p.add_argument("--seed", type=int, default=1,
                   help="random seed (default 1)")
    p.add_argument("--train", type=int, default=2000,
                   help="examples per task in the train split (default 2000)")
    p.add_argument("--dev", type=int, default=200,
                   help="examples per task in the dev split (default 200)")
    p.add_argument("--test", type=int, default=200,
                   help="examples per task in the test split (default 200)")
    p.add_argument("--corpus", type=int, default=10000,
                   help="texts of the pretraining corpus per --corpus-mix "
                        "unit, about the train split's names (default "
                        "10000)")
    p.add_argument("--corpus-mix", default="1,1,1", metavar="C,A,R",
                   help="texts of each kind per --corpus unit: compress, "
                        "answer, reason (default 1,1,1)")
    p.add_argument("--corpus-format", choices=("text", "chain"),
                   default="text",
                   help="text: plain texts with instruction words "
                        "({\"text\": ...}); chain: rows laid out as "
                        "kvchaind frames a stage, with the instruction "
                        "words before the question (default text)")
    p.add_argument("--docs", type=int, default=3,
                   help="documents in each single-round I_A (default 3)")
    p.add_argument("--rivals", type=int, default=None,
                   help="other documents of each single-round I_A that "
                        "also state the asked attribute (default: all)")
    p.add_argument("--facts", type=int, default=3,
                   help="facts in each document (default 3)")
    p.add_argument("--distractors", type=int, default=3,
                   help="extra attribute facts in each multi-round I_B "
                        "(default 3)")
    args = p.parse_args(argv)
    if not 1 <= args.docs <= 8:
        p.error("--docs must be between 1 and 8")
    if args.rivals is None:
        args.rivals = args.docs - 1
    if args.rivals < 0:
        p.error("--rivals must not be negative")
    # a document without the asked attribute takes its facts from the rest
    if not 1 <= args.facts <= len(ATTRIBUTES) - (args.rivals < args.docs - 1):
        p.error("--facts must be between 1 and %d" % len(ATTRIBUTES))
    try:
        args.mix = [int(w) for w in args.corpus_mix.split(",")]
    except ValueError:
        args.mix = []
    if len(args.mix) != 3 or min(args.mix) < 0:
        p.error("--corpus-mix must be three counts C,A,R of 0 or more")
    for name in ("train", "dev", "test", "corpus", "distractors"):
        if getattr(args, name) < 0:
            p.error("--%s must not be negative" % name)
    return args


def main(argv):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    pool_rng = random.Random(args.seed)
    creatures = split_pool(creature_names(), pool_rng)
    people = split_pool(person_names(), pool_rng)
    sizes = {"train": args.train, "dev": args.dev, "test": args.test}
    for i, split in enumerate(SPLITS):
        # each split and task has its own generator, so changing one size
        # leaves the other files as they were
        world = World(creatures[split], people[split],
                      random.Random("%d/%s/single" % (args.seed, split)))
        single = [make_single(world, args.docs, args.facts, args.rivals)
                  for _ in range(sizes[split])]
        world.rng = random.Random("%d/%s/multi" % (args.seed, split))
        multi = [make_multi(world, args.distractors)
                 for _ in range(sizes[split])]
        write_jsonl(os.path.join(args.out, "single-%s.jsonl" % split), single)
        # each stage of the classic chain is tuned alone on its own text
        write_jsonl(os.path.join(args.out, "classic-A-%s.jsonl" % split),
                    [{"I_ALL": ex["I_ALL"], "I_A": ex["I_A"],
                      "O_A": ex["O_A"]} for ex in single])
        write_jsonl(os.path.join(args.out, "classic-B-%s.jsonl" % split),
                    [{"I_ALL": ex["I_ALL"], "I_A": ex["O_A"],
                      "O_A": ex["O_B"]} for ex in single])
        write_jsonl(os.path.join(args.out, "multi-%s.jsonl" % split), multi)
        for stage, rows in classic_multi(multi).items():
            write_jsonl(os.path.join(args.out, "classic-multi-%s-%s.jsonl"
                                     % (stage, split)), rows)
    world = World(creatures["train"], people["train"],
                  random.Random("%d/corpus" % args.seed))
    if args.corpus_format == "chain":
        rows = chain_rows(world, args)
        # the words stand for the stage prompts: hard prompts as they are,
        # and where tuned prompts start from
        rows_a, rows_b = multi_rows(world, args)
        write_jsonl(os.path.join(args.out, "corpus-multi-A.jsonl"), rows_a)
        write_jsonl(os.path.join(args.out, "corpus-multi-B.jsonl"), rows_b)
        for name, words in (("words-A.txt", COMPRESS_WORDS),
                            ("words-B.txt", ANSWER_WORDS),
                            ("words-multi-A.txt", REASON_WORDS),
                            ("words-multi-B.txt", RECALL_WORDS)):
            with open(os.path.join(args.out, name), "w",
                      encoding="utf-8") as f:
                f.write(words)
    else:
        rows = [{"text": t} for t in corpus_texts(world, args)]
    write_jsonl(os.path.join(args.out, "corpus.jsonl"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
