#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A two-stage chain as two Python processes that pass a segment handle.

Stage A (this process) registers two stage prompts, creates the chain and
a segment, appends the shared question (I_ALL) and its own passage (I_A),
generates its output O_A and drops I_A, which stage B never reads. It then
starts stage B as a second process with the handle, and holds the segment
until B is done. Stage B attaches by the handle and generates O_B as stage
1, reading the KV of I_ALL and O_A that stage A left: nothing is encoded
again.

Without --peft the prompts are seeded random soft prompts (seeds 1 and 2),
the same values as the C examples' examples/random-prompt.h, so both give
the same output on the same daemon. Stage B's text goes to standard
output, stage A's to standard error.

    python3 two_stage.py --socket /run/kvchain/kvchaind.sock
"""

import argparse
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                ".."))
import kvchain  # noqa: E402  (after the path to the package next door)

# float32 0.1, as the C code writes 0.1f
_TENTH = struct.unpack("f", struct.pack("f", 0.1))[0]
_MASK = (1 << 64) - 1


def random_prompt(count, seed):
    """Return count float32 values uniform in [-0.05, 0.05) from a
    splitmix64 stream started at seed, bit for bit as random_prompt_fill
    in examples/random-prompt.h computes them."""
    values = []
    x = seed
    for _ in range(count):
        x = (x + 0x9E3779B97F4A7C15) & _MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        # (z >> 40) / 2^24 - 0.5 is exact; the product of two 24-bit
        # significands is exact in a double, so one rounding to float32
        # gives what the float multiply gives.
        v = ((z >> 40) / 16777216.0 - 0.5) * _TENTH
        values.append(struct.unpack("f", struct.pack("f", v))[0])
    return values


def to_bytes(text):
    """Return generated text as the bytes the daemon sent."""
    return text.encode("utf-8", "surrogateescape")


def stage_a(args):
    with kvchain.connect(args.socket, "two_stage.py A") as conn:
        d_model = conn.server_info().d_model
        if args.peft:
            prompts = conn.prompt_peft(args.peft)
        else:
            prompts = [conn.prompt_soft(random_prompt(
                args.prompt_tokens * d_model, seed), d_model)
                for seed in (1, 2)]
        chain = conn.chain_create(prompts[:2])
        with conn.segment_create(chain) as seg:
            seg.append_text(args.i_all, shared=True)
            i_a = seg.append_text(args.i_a, stage=0)
            o_a = seg.generate(0, max_tokens=args.max_tokens,
                               ignore_eos=args.ignore_eos)
            text_a = "".join(text for _, text in o_a)
            sys.stderr.buffer.write(b"O_A: " + to_bytes(text_a) + b"\n")
            sys.stderr.flush()
            seg.drop(i_a)

            # Stage B runs while this connection still holds the segment.
            cmd = [sys.executable, os.path.abspath(__file__),
                   "--max-tokens", str(args.max_tokens),
                   "--stage-b", str(seg.handle)]
            if args.socket:
                cmd += ["--socket", args.socket]
            if args.ignore_eos:
                cmd.append("--ignore-eos")
            return subprocess.run(cmd, check=False).returncode


def stage_b(args):
    with kvchain.connect(args.socket, "two_stage.py B") as conn:
        with conn.attach(args.stage_b) as seg:
            text, result = seg.generate_text(1, max_tokens=args.max_tokens,
                                             ignore_eos=args.ignore_eos)
    sys.stdout.buffer.write(to_bytes(text) + b"\n")
    sys.stdout.flush()
    print(f"O_B: span {result.span_id}, {result.n_generated} tokens, "
          f"stopped by {result.stop_reason}", file=sys.stderr)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--socket", help="kvchaind's control socket "
                        "(default: libkvchain's, see libkvchain(3))")
    parser.add_argument("--i-all", default="What colour is the sky on a "
                        "clear day?", help="the shared question")
    parser.add_argument("--i-a", default="Passage: the sky looks blue "
                        "because air scatters blue light most.",
                        help="stage A's passage")
    parser.add_argument("--prompt-tokens", type=int, default=8,
                        help="virtual tokens of each random prompt")
    parser.add_argument("--peft", help="a PEFT adapter folder holding "
                        "both stages' prompts, in place of random ones")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="tokens each stage generates at most")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="generate past the end-of-sequence token")
    parser.add_argument("--stage-b", metavar="HANDLE",
                        help="run stage B on this segment (as stage A "
                        "does by itself)")
    args = parser.parse_args()
    try:
        return stage_b(args) if args.stage_b else stage_a(args)
    except kvchain.KvchainError as e:
        print(f"two_stage.py: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
