#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Score a demo base model on the test split with plain instruction words.

Runs tools/kvchain-run (greedy) on the first --n examples of each task of
the test split, laid out as the pretraining corpus lays them out
(models/gen-tasks.py), and prints exact match per task:

  compress  "compress: question Q\\npassages I_A\\nanswer sentence:" -> O_A
  answer    "answer: question Q\\ncontext O_A\\nanswer:"               -> O_B
  reason    "reason: question Q\\nfacts I_B\\nstep:" -> the steps, recalled
            facts and "answer: O_3A" lines; scored on the answer line and,
            separately, on every line at once

The test split's names never occur in the corpus, so copying a name right
means reading it from the prompt. Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys


def generate(args, prompt, n_tokens, stop_newline):
    """Return kvchain-run's greedy continuation of @prompt."""
    # Pretraining fed every text after BOS, so the prompt starts with one
    # whatever the model's add_bos_token is.
    cmd = [args.run, "-m", args.model, "-p", "<s>" + prompt, "--special",
           "--no-bos", "-n", str(n_tokens), "-t", str(args.threads), "-q"]
    if stop_newline:
        cmd += ["--stop", "\n"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=False)
    if done.returncode:
        sys.exit("probe: kvchain-run exited %d: %s"
                 % (done.returncode, done.stderr.decode(errors="replace")))
    return done.stdout.decode("utf-8", errors="replace")


def load(path, n):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def reason_reference(ex):
    return ("%s\nrecall: %s\nstep: %s\nrecall: %s\nanswer: %s"
            % (ex["O_1A"], ex["O_1B"], ex["O_2A"], ex["O_2B"], ex["O_3A"]))


def probe_single(args, examples, samples):
    hits = {"compress": 0, "answer": 0}
    for i, ex in enumerate(examples):
        prompt = "compress: question %s\npassages %s\nanswer sentence:" % (
            ex["I_ALL"], ex["I_A"])
        out = generate(args, prompt, 32, True).strip()
        hits["compress"] += out == ex["O_A"]
        if i < samples:
            print("compress  %-40s -> %-34s (want %s)"
                  % (ex["I_ALL"], out, ex["O_A"]))
        prompt = "answer: question %s\ncontext %s\nanswer:" % (
            ex["I_ALL"], ex["O_A"])
        out = generate(args, prompt, 8, True).strip()
        hits["answer"] += out == ex["O_B"]
        if i < samples:
            print("answer    %-40s -> %-34s (want %s)"
                  % (ex["I_ALL"], out, ex["O_B"]))
    return hits


def probe_multi(args, examples, samples):
    hits = {"reason": 0, "reason-all": 0}
    for i, ex in enumerate(examples):
        prompt = "reason: question %s\nfacts %s\nstep:" % (
            ex["I_ALL"], ex["I_B"])
        out = generate(args, prompt, 96, False).strip()
        lines = out.split("\n")
        answer = ""
        for line in lines:
            if line.startswith("answer:"):
                answer = line[len("answer:"):].strip()
                break
        hits["reason"] += answer == ex["O_3A"]
        hits["reason-all"] += out == reason_reference(ex)
        if i < samples:
            print("reason    %-40s -> %s (want %s)"
                  % (ex["I_ALL"], out.replace("\n", " | "), ex["O_3A"]))
    return hits


def main(argv):
    p = argparse.ArgumentParser(
        description="Score a demo base model on the test split with "
                    "plain instruction words.")
    p.add_argument("--run", required=True, help="path of kvchain-run")
    p.add_argument("-m", "--model", required=True, help="GGUF model")
    p.add_argument("-d", "--data", required=True,
                   help="folder of gen-tasks.py's files")
    p.add_argument("-n", type=int, default=50,
                   help="test examples per task (default 50)")
    p.add_argument("--samples", type=int, default=3,
                   help="examples per task to print (default 3)")
    p.add_argument("-t", "--threads", type=int, default=1,
                   help="kvchain-run threads (default 1)")
    args = p.parse_args(argv)
    single = load(os.path.join(args.data, "single-test.jsonl"), args.n)
    multi = load(os.path.join(args.data, "multi-test.jsonl"), args.n)
    hits = probe_single(args, single, args.samples)
    hits.update(probe_multi(args, multi, args.samples))
    for task, n in (("compress", len(single)), ("answer", len(single)),
                    ("reason", len(multi)), ("reason-all", len(multi))):
        print("%-10s exact match %3d/%d = %.2f"
              % (task, hits[task], n, hits[task] / max(n, 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
