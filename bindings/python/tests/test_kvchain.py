# SPDX-License-Identifier: MIT
"""Tests of the kvchain Python binding against running test daemons.

tests/test-python.sh starts the daemons and sets:
  KVCHAIN_TEST_SOCKET    a daemon with room to spare
  KVCHAIN_TEST_TIGHT     one with n_ctx 32, 2 segments per uid, TTL 0
  KVCHAIN_TEST_FULL      one whose KV arena holds 2 blocks
  KVCHAIN_TEST_FOREIGN   one running as another user (unset: skipped)
  KVCHAIN_TEST_DIR       O_A and O_B of the chain run in one process
                         (tests/chain-inproc), files o_a and o_b
"""

import os
import struct
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import kvchain  # noqa: E402
from two_stage import random_prompt, to_bytes  # noqa: E402

SOCKET = os.environ["KVCHAIN_TEST_SOCKET"]
TIGHT = os.environ["KVCHAIN_TEST_TIGHT"]
FULL = os.environ["KVCHAIN_TEST_FULL"]
FOREIGN = os.environ.get("KVCHAIN_TEST_FOREIGN")
EXPECTED = os.environ["KVCHAIN_TEST_DIR"]

I_ALL = "What colour is the sky on a clear day?"
I_A = "Passage: the sky looks blue because air scatters blue light most."
GEN = {"max_tokens": 24, "ignore_eos": True}


def expected(name):
    with open(os.path.join(EXPECTED, name), "rb") as f:
        return f.read()


class Chain(unittest.TestCase):
    def setUp(self):
        self.conn = kvchain.connect(SOCKET, "test_kvchain")
        self.d_model = self.conn.server_info().d_model
        self.prompts = [self.conn.prompt_soft(
            random_prompt(8 * self.d_model, seed), self.d_model)
            for seed in (1, 2)]
        self.chain = self.conn.chain_create(self.prompts)

    def tearDown(self):
        self.conn.close()

    def test_server_info(self):
        info = self.conn.server_info()
        self.assertEqual(info.protocol_version, 1)
        self.assertEqual(info.model_name, "m.gguf")
        self.assertGreater(info.d_model, 0)
        self.assertGreater(info.n_vocab, 0)
        self.assertGreater(info.n_ctx, 0)

    def run_stage_a(self, seg):
        seg.append_text(I_ALL, shared=True)
        i_a = seg.append_text(I_A, stage=0)
        gen = seg.generate(0, **GEN)
        pairs = list(gen)
        return i_a, pairs, gen.result

    def test_chain_matches_inproc(self):
        with self.conn.segment_create(self.chain) as seg:
            i_a, pairs, result = self.run_stage_a(seg)
            self.assertEqual(len(pairs), 24)
            self.assertTrue(all(isinstance(i, int) for i, _ in pairs))
            text_a = to_bytes("".join(t for _, t in pairs))
            self.assertEqual(text_a, expected("o_a"))
            self.assertEqual(result.n_generated, 24)
            self.assertEqual(result.stop_reason, "max_tokens")
            seg.drop(i_a)
            text_b, result_b = seg.generate_text(1, **GEN)
            self.assertEqual(to_bytes(text_b), expected("o_b"))
            self.assertNotEqual(result_b.span_id, result.span_id)

    def test_fork_generates_alike(self):
        with self.conn.segment_create(self.chain) as seg:
            i_a, _, _ = self.run_stage_a(seg)
            seg.drop(i_a)
            with seg.fork() as fork:
                self.assertNotEqual(fork.handle, seg.handle)
                via_callback, _ = fork.generate_blocking(1, **GEN)
                via_text, _ = seg.generate_text(1, **GEN)
                self.assertEqual(via_callback, via_text)
                self.assertEqual(to_bytes(via_text), expected("o_b"))

    def test_prompt_from_bytes(self):
        floats = random_prompt(8 * self.d_model, 1)
        raw = struct.pack(f"{len(floats)}f", *floats)
        rows = [floats[r * self.d_model:(r + 1) * self.d_model]
                for r in range(8)]
        outputs = []
        for prompt in (self.conn.prompt_soft(raw),
                       self.conn.prompt_soft(rows),
                       self.conn.prompt_soft(floats)):
            chain = self.conn.chain_create([prompt])
            with self.conn.segment_create(chain) as seg:
                seg.append_text(I_ALL, stage=0)
                outputs.append(seg.generate_text(0, **GEN)[0])
        self.assertEqual(outputs[0], outputs[1])
        self.assertEqual(outputs[0], outputs[2])

    def test_text_prompt_tokens_and_view(self):
        prompt = self.conn.prompt_text("Answer briefly.")
        chain = self.conn.chain_create([prompt])
        with self.conn.segment_create(chain) as seg:
            first = seg.append_tokens([5, 6, 7], shared=True)
            second = seg.append_text("hello", stage=0, view=[])
            self.assertNotEqual(first, second)
            text, result = seg.generate_text(0, max_tokens=4,
                                             ignore_eos=True,
                                             view=[first, second])
            self.assertEqual(result.n_generated, 4)

    def test_handle_text_round_trip(self):
        with self.conn.segment_create(self.chain) as seg:
            text = str(seg.handle)
            self.assertRegex(text, r"^[0-9a-f]{32}$")
            self.assertEqual(kvchain.Handle.parse(text), seg.handle)

    def test_iterator_break_cancels(self):
        with self.conn.segment_create(self.chain) as seg:
            seg.append_text(I_ALL, shared=True)
            gen = seg.generate(0, max_tokens=200, ignore_eos=True)
            taken = 0
            for _ in gen:
                taken += 1
                if taken == 2:
                    break
            self.assertIsNone(gen.result)
            # the connection is free again at once
            self.assertGreaterEqual(self.conn.stats().segments, 1)

    def test_stats_count_generated_tokens(self):
        before = self.conn.stats().tokens_generated
        with self.conn.segment_create(self.chain) as seg:
            seg.append_text(I_ALL, shared=True)
            seg.generate_text(0, max_tokens=5, ignore_eos=True)
        st = self.conn.stats()
        self.assertGreaterEqual(st.tokens_generated, before + 5)
        self.assertGreater(st.blocks_total, 0)
        self.assertGreater(st.block_bytes, 0)

    def test_two_processes_pass_handle(self):
        example = os.path.join(HERE, "..", "examples", "two_stage.py")
        run = subprocess.run(
            [sys.executable, example, "--socket", SOCKET,
             "--max-tokens", "24", "--ignore-eos"],
            capture_output=True, timeout=60, check=False)
        self.assertEqual(run.returncode, 0,
                         run.stderr.decode(errors="replace"))
        self.assertEqual(run.stdout, expected("o_b") + b"\n")
        self.assertIn(b"O_A: " + expected("o_a") + b"\n", run.stderr)


class Errors(unittest.TestCase):
    """One failing call per exception class, each with its code."""

    def assert_code(self, ctx, cls, code):
        self.assertIsInstance(ctx.exception, cls)
        self.assertIsInstance(ctx.exception, kvchain.KvchainError)
        self.assertEqual(ctx.exception.code, code)

    def test_invalid_argument(self):
        with self.assertRaises(kvchain.InvalidArgumentError) as ctx:
            kvchain.Handle.parse("zz")
        self.assert_code(ctx, kvchain.InvalidArgumentError, -1)

    def test_transport_missing_socket(self):
        with self.assertRaises(kvchain.TransportError) as ctx:
            kvchain.connect(SOCKET + ".missing")
        self.assert_code(ctx, kvchain.TransportError, -3)

    def test_not_found_prompt(self):
        with kvchain.connect(SOCKET) as conn:
            with self.assertRaises(kvchain.NotFoundError) as ctx:
                conn.chain_create([999999])
            self.assert_code(ctx, kvchain.NotFoundError, -5)
            self.assertIn("999999", ctx.exception.message)

    def test_handle_unknown(self):
        with kvchain.connect(SOCKET) as conn:
            with self.assertRaises(kvchain.HandleError) as ctx:
                conn.attach("0123456789abcdef0123456789abcdef")
            self.assert_code(ctx, kvchain.HandleError, -6)

    def test_handle_released_by_context_manager(self):
        with kvchain.connect(TIGHT) as conn:
            chain = conn.chain_create([conn.prompt_text("hi")])
            with conn.segment_create(chain) as seg:
                handle = seg.handle
            self.assertFalse(seg.held)
            # TTL 0: the daemon forgets the segment within its 100 ms
            # housekeeping period
            time.sleep(0.5)
            with self.assertRaises(kvchain.HandleError) as ctx:
                conn.attach(handle)
            self.assert_code(ctx, kvchain.HandleError, -7)

    def test_quota_segments(self):
        with kvchain.connect(TIGHT) as conn:
            # segments of earlier tests expire within 100 ms (TTL 0)
            deadline = time.monotonic() + 2
            while conn.stats().segments and time.monotonic() < deadline:
                time.sleep(0.05)
            chain = conn.chain_create([conn.prompt_text("hi")])
            with conn.segment_create(chain), conn.segment_create(chain):
                with self.assertRaises(kvchain.QuotaError) as ctx:
                    conn.segment_create(chain)
                self.assert_code(ctx, kvchain.QuotaError, -10)
                self.assertIn("max_segments_per_uid", ctx.exception.message)

    def test_context_full(self):
        with kvchain.connect(TIGHT) as conn:
            chain = conn.chain_create([conn.prompt_text("hi")])
            with conn.segment_create(chain) as seg:
                with self.assertRaises(kvchain.ContextError) as ctx:
                    seg.append_text("word " * 200, shared=True)
                self.assert_code(ctx, kvchain.ContextError, -11)

    def test_resource_arena_full(self):
        with kvchain.connect(FULL) as conn:
            chain = conn.chain_create([conn.prompt_text("hi")])
            with conn.segment_create(chain) as one, \
                    conn.segment_create(chain) as two:
                with self.assertRaises(kvchain.ResourceError) as ctx:
                    one.append_text("word", shared=True)
                    two.append_text("word", shared=True)
                self.assert_code(ctx, kvchain.ResourceError, -12)

    def test_dimension_mismatch(self):
        with kvchain.connect(SOCKET) as conn:
            width = conn.server_info().d_model + 1
            with self.assertRaises(kvchain.DimensionError) as ctx:
                conn.prompt_soft([[0.0] * width] * 2)
            self.assert_code(ctx, kvchain.DimensionError, -13)

    def test_canceled_by_callback(self):
        with kvchain.connect(SOCKET) as conn:
            chain = conn.chain_create([conn.prompt_text("hi")])
            with conn.segment_create(chain) as seg:
                seg.append_text(I_ALL, shared=True)
                seen = []
                with self.assertRaises(kvchain.CanceledError) as ctx:
                    seg.generate_blocking(
                        0, on_token=lambda i, t: seen.append(i) or
                        len(seen) == 3, max_tokens=50, ignore_eos=True)
                self.assert_code(ctx, kvchain.CanceledError, -17)
                self.assertEqual(len(seen), 3)

    @unittest.skipUnless(FOREIGN, "needs root to run a daemon as another user")
    def test_access_denied(self):
        try:
            kvchain.connect(FOREIGN)
        except kvchain.AccessError as e:
            self.assertEqual(e.code, -9)
            self.assertEqual(e.name, "KVC_EPERM")
        else:
            self.fail("a peer the daemon does not allow connected")

    def test_code_families(self):
        families = {
            kvchain.InvalidArgumentError: [-1],
            kvchain.ResourceError: [-2, -12],
            kvchain.TransportError: [-3, -4, -14, -15, -16],
            kvchain.NotFoundError: [-5],
            kvchain.HandleError: [-6, -7, -8],
            kvchain.AccessError: [-9],
            kvchain.QuotaError: [-10],
            kvchain.ContextError: [-11],
            kvchain.DimensionError: [-13],
            kvchain.CanceledError: [-17],
        }
        for cls, codes in families.items():
            for code in codes:
                err = kvchain._error(code, "m")
                self.assertIs(type(err), cls, code)
                self.assertEqual(err.code, code)
                self.assertTrue(err.name.startswith("KVC_E"), err.name)
                self.assertNotEqual(kvchain.strerror(code), "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
