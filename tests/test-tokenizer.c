/* SPDX-License-Identifier: MIT */
/*
 * test-tokenizer.c - unit tests of the SPM and BPE tokenizers.
 *
 * Covered: hand-derived encodings of the testvocab.c vocabularies, the
 * differences between the gpt2, llama3 and qwen2 pre-tokenizers, special
 * tokens, BOS/EOS, decode round trips over awkward and random bytes, spec
 * validation and loading from GGUF metadata.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cunit-main.h"

#include "gguf.h"
#include "testvocab.h"
#include "tokenizer.h"

#define SP "\xe2\x96\x81"	/* U+2581 */

static struct tokenizer *make_tok(enum tok_kind kind, enum tok_pre pre)
{
	const struct tok_spec *spec = testvocab_get(kind, pre);
	struct tokenizer *tok = NULL;
	char err[256] = "";
	int ret;

	if (!spec)
		return NULL;
	ret = tok_create(spec, &tok, err, sizeof(err));
	if (ret)
		fprintf(stderr, "tok_create: %s\n", err);
	return tok;
}

static void print_ids(const struct tokenizer *tok, const char *label,
		      const int32_t *ids, size_t n)
{
	char piece[64];
	size_t i;

	fprintf(stderr, "  %s:", label);
	for (i = 0; i < n; i++) {
		int len = tok_token_to_piece(tok, ids[i], piece,
					     sizeof(piece) - 1);

		if (len < 0 || len >= (int)sizeof(piece))
			len = 0;
		piece[len] = '\0';
		fprintf(stderr, " %d(%s)", ids[i], piece);
	}
	fprintf(stderr, "\n");
}

/*
 * Checks that @text encodes to the tokens whose texts are @want (ending
 * with NULL). Each wanted text must be in the vocabulary.
 */
static void expect_tokens(const struct tokenizer *tok, const char *text,
			  size_t len, unsigned flags, const char *const *want)
{
	int32_t got[64], exp[64];
	size_t n_exp = 0, i;
	int n;

	CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
	for (; want[n_exp]; n_exp++) {
		exp[n_exp] = tok_find(tok, want[n_exp], strlen(want[n_exp]));
		if (exp[n_exp] < 0)
			fprintf(stderr, "\nnot in the vocabulary: \"%s\"\n",
				want[n_exp]);
		CU_ASSERT_FATAL(exp[n_exp] >= 0);
	}
	n = tok_encode(tok, text, len, flags, got, 64);
	CU_ASSERT_EQUAL(n, (int)n_exp);
	if (n != (int)n_exp || (n > 0 && memcmp(got, exp, n_exp * 4))) {
		fprintf(stderr, "\nencoding of \"%.*s\" differs\n", (int)len,
			text);
		print_ids(tok, "got", got, n < 0 ? 0 : (size_t)n);
		print_ids(tok, "want", exp, n_exp);
	}
	for (i = 0; i < n_exp && (int)i < n; i++)
		CU_ASSERT_EQUAL(got[i], exp[i]);
}

#define EXPECT(tok, text, flags, ...)                                  \
	expect_tokens(tok, text, sizeof(text) - 1, flags,              \
		      (const char *const[]){ __VA_ARGS__, NULL })
#define EXPECT_NONE(tok, text, flags)                                  \
	expect_tokens(tok, text, sizeof(text) - 1, flags,              \
		      (const char *const[]){ NULL })

/*
 * Encodes @len bytes of @s with @enc_flags, decodes with @dec_flags and
 * checks the result is @want.
 */
static void roundtrip_to(const struct tokenizer *tok, const char *s,
			 size_t len, unsigned enc_flags, unsigned dec_flags,
			 const char *want, size_t want_len)
{
	int32_t *ids;
	char *out;
	int n, m;

	n = tok_encode(tok, s, len, enc_flags, NULL, 0);
	CU_ASSERT_FATAL(n >= 0);
	ids = malloc(((size_t)n + 1) * sizeof(*ids));
	CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
	CU_ASSERT_EQUAL(tok_encode(tok, s, len, enc_flags, ids, (size_t)n), n);
	m = tok_decode(tok, ids, (size_t)n, dec_flags, NULL, 0);
	CU_ASSERT_EQUAL(m, (int)want_len);
	out = malloc(want_len + 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(out);
	m = tok_decode(tok, ids, (size_t)n, dec_flags, out, want_len + 1);
	CU_ASSERT_EQUAL(m, (int)want_len);
	if (m == (int)want_len) {
		bool same = !memcmp(out, want, want_len);

		if (!same && len < 200)
			fprintf(stderr,
				"\nround trip of \"%.*s\" gave \"%.*s\"\n",
				(int)len, s, m, out);
		CU_ASSERT_TRUE(same);
		CU_ASSERT_EQUAL(out[want_len], '\0');
	}
	free(out);
	free(ids);
}

static void roundtrip(const struct tokenizer *tok, const char *s, size_t len,
		      unsigned enc_flags)
{
	roundtrip_to(tok, s, len, enc_flags, 0, s, len);
}

/* ==== SPM: hand-derived encodings ==== */

/*
 * The SPM vocabulary (testvocab.c) scores "▁x" pairs -100 and the merged
 * pieces between -0.5 and -50, so words merge inside before taking their
 * leading "▁". The input always gains one "▁" in front.
 */
static void test_spm_words(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);

	/* ll (-4) first, then llo (-3), he (-5), hello (-2), ▁hello (-1). */
	EXPECT(tok, "hello", 0, SP "hello");
	/* Both words merge fully; the "▁" inside the text starts "▁world":
	 * or (-13) beats wo (-14), then ld, orld, world, ▁world. */
	EXPECT(tok, "hello world", 0, SP "hello", SP "world");
	/* No "He" piece: ll and llo merge, "▁H" (-100) is the only pair
	 * left at the front, and "e" stays alone. */
	EXPECT(tok, "Hello", 0, SP "H", "e", "llo");
	/* he (-5) beats th (-7), then the (-6.5) and ▁the (-0.5). */
	EXPECT(tok, "the", 0, SP "the");
	/* ng (-25) beats in (-30), then ing (-12); "▁s" (-100) merges last
	 * because "sing" is no piece. */
	EXPECT(tok, "sing", 0, SP "s", "ing");
	/* wo (-14) is the best pair; "▁wo" and "wow" are no pieces, so "▁w"
	 * never gets its chance. */
	EXPECT(tok, "wow", 0, SP, "wo", "w");
	/* Without the space prefix the bare pieces win. */
	EXPECT(tok, "hello", TOK_NO_SPACE_PREFIX, "hello");
	EXPECT(tok, "the", TOK_NO_SPACE_PREFIX, "the");
	/* The second space joins "world"; the one between them is alone
	 * because "▁▁" (-50) lost to "▁world" (-1.5), which took its right
	 * neighbour. */
	EXPECT(tok, "hello  world", 0, SP "hello", SP, SP "world");
	tok_free(tok);
}

static void test_spm_digits(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);

	/* 23 (-15) beats 12 (-20), then 1+23 makes 123 (-10). "▁1" (-100)
	 * was queued but is stale by then, and "▁123" is no piece. */
	EXPECT(tok, "123", 0, SP, "123");
	/* As above, and "4", "5" have no pieces together. */
	EXPECT(tok, "12345", 0, SP, "123", "4", "5");
	/* Two equal "12" pairs: both merge, "1212" is no piece. */
	EXPECT(tok, "1212", 0, SP, "12", "12");
	tok_free(tok);
}

static void test_spm_spaces(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);

	/* One space plus the prefix: "▁▁". */
	EXPECT(tok, " ", 0, SP SP);
	/* Three "▁": the two "▁▁" pairs tie, and the leftmost wins. */
	EXPECT(tok, "  ", 0, SP SP, SP);
	/* Five "▁": pairs at 0 and 2 merge, then "▁▁▁▁" (-40). */
	EXPECT(tok, "    ", 0, SP SP SP SP, SP);
	/* Empty text gives nothing, not even the prefix. */
	EXPECT_NONE(tok, "", 0);
	tok_free(tok);
}

static void test_spm_fallback(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);

	/* The emoji is not in the vocabulary: its four UTF-8 bytes. */
	EXPECT(tok, "\xf0\x9f\x98\x80", 0, SP, "<0xF0>", "<0x9F>", "<0x98>",
	       "<0x80>");
	/* 你好 (-21) and 世界 (-22); "▁你好" is no piece. */
	EXPECT(tok, "你好世界", 0, SP, "你好", "世界");
	/* é is a character of the vocabulary; only "▁c" merges. */
	EXPECT(tok, "café", 0, SP "c", "a", "f", "é");
	/* The combining acute accent U+0301 is not: bytes CC 81. */
	EXPECT(tok, "e\xcc\x81", 0, SP "e", "<0xCC>", "<0x81>");
	/* An invalid byte is a symbol of its own and falls back. */
	EXPECT(tok, "\xff", 0, SP, "<0xFF>");
	/* A truncated 3-byte sequence: two invalid bytes. */
	EXPECT(tok, "\xe2\x82", 0, SP, "<0xE2>", "<0x82>");
	/* Tab, newline and NUL have no character tokens. */
	EXPECT(tok, "a\tb", 0, SP "a", "<0x09>", "b");
	EXPECT(tok, "a\nb", 0, SP "a", "<0x0A>", "b");
	EXPECT(tok, "a\0b", 0, SP "a", "<0x00>", "b");
	tok_free(tok);
}

static void test_spm_special(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);

	/* As plain text "<s>" is three characters; only "▁<" merges. */
	EXPECT(tok, "<s>", 0, SP "<", "s", ">");
	EXPECT(tok, "<s>", TOK_PARSE_SPECIAL, "<s>");
	EXPECT(tok, "<s></s>", TOK_PARSE_SPECIAL, "<s>", "</s>");
	/* The text after a special token gets no prefix: "there" becomes
	 * he, then "the" (-6.5); "r" and "e" have no piece. */
	EXPECT(tok, "hi<s>there", TOK_PARSE_SPECIAL, SP "h", "i", "<s>",
	       "the", "r", "e");
	/* Unparsed, the same "the" forms inside the text. */
	EXPECT(tok, "hi<s>there", 0, SP "h", "i", "<", "s", ">", "the", "r",
	       "e");
	/* User-defined tokens are parsed like control ones. */
	EXPECT(tok, "<|user|>hi", TOK_PARSE_SPECIAL, "<|user|>", "h", "i");
	/* The vocabulary sets add_bos but not add_eos. */
	EXPECT(tok, "hello", TOK_ADD_SPECIAL, "<s>", SP "hello");
	EXPECT(tok, "", TOK_ADD_SPECIAL, "<s>");
	EXPECT(tok, "<s>", TOK_ADD_SPECIAL | TOK_PARSE_SPECIAL, "<s>", "<s>");
	tok_free(tok);
}

/* ==== BPE: hand-derived encodings ==== */

/*
 * The BPE vocabulary (testvocab.c) has ids 0..255 for the byte-level
 * characters and one token per merge, and merge ranks follow the order of
 * bpe_merges[]. Ġ is the space, Ċ the newline.
 */
static void test_bpe_words(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);

	/* he (rank 1), ll (6), he+ll (7), hell+o (8). */
	EXPECT(tok, "hello", 0, "hello");
	/* The pre-token " hello" keeps its space; Ġ+hello is rank 9. */
	EXPECT(tok, " hello", 0, "Ġhello");
	/* or (10), wor (11), ld (12), world (13), Ġworld (14). */
	EXPECT(tok, "hello world", 0, "hello", "Ġworld");
	/* he merges but no merge makes "t he" without the space. */
	EXPECT(tok, "the", 0, "t", "he");
	/* Ġt (0) then Ġt+he (2). */
	EXPECT(tok, " the", 0, "Ġthe");
	/* Both "in" pairs tie at rank 3 and merge left to right, then both
	 * "ing" (4). */
	EXPECT(tok, "singing", 0, "s", "ing", "ing");
	/* Ã+© (33) is the best rank, then c+a (34), ca+f (35) and
	 * caf+Ã© (36). */
	EXPECT(tok, "café", 0, "cafÃ©");
	/* ä½ł is 你 and å¥½ is 好; both build, then merge 25 joins them. */
	EXPECT(tok, "你好", 0, "ä½łå¥½");
	/* gpt2 keeps the space with the letters, and no merge takes Ġ with
	 * 你好. */
	EXPECT(tok, " 你好", 0, "Ġ", "ä½łå¥½");
	/* "it" and "'s" are pre-tokens; "' s" is merge 37. */
	EXPECT(tok, "it's", 0, "i", "t", "'s");
	/* add_bos and add_eos are false in this vocabulary, so
	 * TOK_ADD_SPECIAL adds nothing. */
	EXPECT(tok, "hello", TOK_ADD_SPECIAL, "hello");
	tok_free(tok);
}

static void test_bpe_spaces(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);

	/* At the end of the text \s+(?!\S) takes all three spaces; the two
	 * ĠĠ pairs tie and the leftmost merges. */
	EXPECT(tok, "   ", 0, "ĠĠ", "Ġ");
	/* Four: two ĠĠ, then ĠĠĠĠ (20). */
	EXPECT(tok, "    ", 0, "ĠĠĠĠ");
	/* Before a letter \s+(?!\S) leaves one space for " b". */
	EXPECT(tok, "a   b", 0, "a", "ĠĠ", "Ġ", "b");
	EXPECT_NONE(tok, "", 0);
	tok_free(tok);
}

static void test_bpe_bytes(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);

	/* F0 9F 98 80: ð stands for itself, the other three are shifted to
	 * U+0141, U+013A and U+0122. No merge joins them. */
	EXPECT(tok, "\xf0\x9f\x98\x80", 0, "ð", "Ł", "ĺ", "Ģ");
	/* A lone continuation byte is its own pre-token. */
	EXPECT(tok, "\x80", 0, "Ģ");
	/* 0xFF is invalid UTF-8 and splits "a" from "b"; its byte-level
	 * character is ÿ. */
	EXPECT(tok, "a\xff" "b", 0, "a", "ÿ", "b");
	/* NUL is punctuation to the pattern; byte 0 is U+0100. */
	EXPECT(tok, "a\0b", 0, "a", "Ā", "b");
	/* An overlong "/" (C0 AF) is two invalid bytes, each a pre-token;
	 * both are printable Latin-1, so their characters are À and ¯. */
	EXPECT(tok, "\xc0\xaf", 0, "À", "¯");
	tok_free(tok);
}

static void test_bpe_special(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);

	EXPECT(tok, "<|im_start|>hello<|im_end|>", TOK_PARSE_SPECIAL,
	       "<|im_start|>", "hello", "<|im_end|>");
	EXPECT(tok, "<|endoftext|>", TOK_PARSE_SPECIAL, "<|endoftext|>");
	/* As text: "<|", "endoftext", "|>" under gpt2; only d+o (27)
	 * merges inside. */
	EXPECT(tok, "<|endoftext|>", 0, "<", "|", "e", "n", "do", "f", "t",
	       "e", "x", "t", "|", ">");
	tok_free(tok);
}

/* ==== BPE: the three pre-tokenizers ==== */

static void test_pre_digits(void)
{
	struct tokenizer *gpt2 = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);
	struct tokenizer *llama3 = make_tok(TOK_KIND_BPE, TOK_PRE_LLAMA3);
	struct tokenizer *qwen2 = make_tok(TOK_KIND_BPE, TOK_PRE_QWEN2);

	/* gpt2 keeps the run: 3+4 (rank 15) beats 1+2 (16), which leaves
	 * no "12 3" pair, and 4+5 (18) lost its 4. */
	EXPECT(gpt2, "12345", 0, "12", "34", "5");
	/* llama3 cuts "123" + "45": 12 then 123, and 45. */
	EXPECT(llama3, "12345", 0, "123", "45");
	/* qwen2 makes every digit a pre-token. */
	EXPECT(qwen2, "12345", 0, "1", "2", "3", "4", "5");
	tok_free(gpt2);
	tok_free(llama3);
	tok_free(qwen2);
}

static void test_pre_contractions(void)
{
	struct tokenizer *gpt2 = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);
	struct tokenizer *llama3 = make_tok(TOK_KIND_BPE, TOK_PRE_LLAMA3);
	struct tokenizer *qwen2 = make_tok(TOK_KIND_BPE, TOK_PRE_QWEN2);

	/* Lower case: every pattern splits "don" + "'t". */
	EXPECT(gpt2, "don't", 0, "don", "'t");
	EXPECT(llama3, "don't", 0, "don", "'t");
	EXPECT(qwen2, "don't", 0, "don", "'t");
	EXPECT(gpt2, " don't", 0, "Ġdon", "'t");
	/* gpt2's contractions are lower case only: "'" and "T" part. */
	EXPECT(gpt2, "DON'T", 0, "DON", "'", "T");
	EXPECT(llama3, "DON'T", 0, "DON", "'T");
	EXPECT(qwen2, "DON'T", 0, "DON", "'T");
	/* llama3 lets a letter run take one leading punctuation mark;
	 * gpt2 cuts it off. */
	EXPECT(gpt2, "'hello", 0, "'", "hello");
	EXPECT(llama3, "'hello", 0, "'hello");
	tok_free(gpt2);
	tok_free(llama3);
	tok_free(qwen2);
}

static void test_pre_whole_word(void)
{
	struct tokenizer *gpt2 = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);
	struct tokenizer *llama3 = make_tok(TOK_KIND_BPE, TOK_PRE_LLAMA3);
	struct tokenizer *qwen2 = make_tok(TOK_KIND_BPE, TOK_PRE_QWEN2);

	/* "xyz" is a token that no merge builds: llama3 looks the whole
	 * pre-token up first, the others only merge. */
	EXPECT(llama3, "xyz", 0, "xyz");
	EXPECT(gpt2, "xyz", 0, "x", "y", "z");
	EXPECT(qwen2, "xyz", 0, "x", "y", "z");
	/* " xyz" is no token, so llama3 merges as usual. */
	EXPECT(llama3, " xyz", 0, "Ġ", "x", "y", "z");
	tok_free(gpt2);
	tok_free(llama3);
	tok_free(qwen2);
}

static void test_pre_newlines(void)
{
	struct tokenizer *gpt2 = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);
	struct tokenizer *llama3 = make_tok(TOK_KIND_BPE, TOK_PRE_LLAMA3);
	struct tokenizer *qwen2 = make_tok(TOK_KIND_BPE, TOK_PRE_QWEN2);

	/* gpt2: \s+(?!\S) backs off to one newline, then \s+ takes the
	 * other, so the two newlines are in different pre-tokens and ĊĊ (19)
	 * cannot merge. */
	EXPECT(gpt2, "hello\n\nworld", 0, "hello", "Ċ", "Ċ", "world");
	/* llama3 and qwen2: \s*[\r\n]+ takes both. */
	EXPECT(llama3, "hello\n\nworld", 0, "hello", "ĊĊ", "world");
	EXPECT(qwen2, "hello\n\nworld", 0, "hello", "ĊĊ", "world");
	tok_free(gpt2);
	tok_free(llama3);
	tok_free(qwen2);
}

/* ==== Round trips ==== */

#define S(x) { x, sizeof(x) - 1 }

static const struct {
	const char *s;
	size_t len;
} corpus[] = {
	S(""), S(" "), S("  "), S("   a  "), S(" leading"), S("trailing "),
	S("a  b   c    d"), S("\n"), S("\t"), S("\r\n"), S("\n\n\n"),
	S(" \t\n \r\n\n  x \t"), S("hello world"), S("Hello, World!"),
	S("12345678901234567890"), S("3.14159 2,718"),
	S("\xf0\x9f\x98\x80"), S("a\xf0\x9f\x98\x80 b"), S("你好世界"),
	S("日本語のテキスト"), S("e\xcc\x81"), S("café naïve"),
	S("\x80"), S("\xe2\x82"), S("a\xe2\x82z"), S("\xff"), S("\xfe\xff"),
	S("\xc0\xaf"), S("\xe0\x80\xaf"), S("\xed\xa0\x80"),
	S("\xf4\x90\x80\x80"), S("\xf0\x9f\x98"), S("a\0b"), S("\0"),
	S("don't DON'T it's"), S("\xc2\xa0nbsp\xe2\x80\x83"),
	S("<s>"), S("</s>"), S("<|im_start|>"), S("<|user|>"),
	S("<|endoftext|>"), S("<unk>"), S("<0x41>"),
};

#define N_CORPUS (sizeof(corpus) / sizeof(corpus[0]))

static void roundtrip_corpus(enum tok_kind kind, enum tok_pre pre)
{
	struct tokenizer *tok = make_tok(kind, pre);
	size_t i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
	for (i = 0; i < N_CORPUS; i++) {
		roundtrip(tok, corpus[i].s, corpus[i].len, 0);
		roundtrip(tok, corpus[i].s, corpus[i].len, TOK_ADD_SPECIAL);
	}
	tok_free(tok);
}

static void test_roundtrip_spm(void)
{
	roundtrip_corpus(TOK_KIND_SPM, 0);
}

static void test_roundtrip_gpt2(void)
{
	roundtrip_corpus(TOK_KIND_BPE, TOK_PRE_GPT2);
}

static void test_roundtrip_llama3(void)
{
	roundtrip_corpus(TOK_KIND_BPE, TOK_PRE_LLAMA3);
}

static void test_roundtrip_qwen2(void)
{
	roundtrip_corpus(TOK_KIND_BPE, TOK_PRE_QWEN2);
}

/* With TOK_PARSE_SPECIAL, control tokens decode to nothing and
 * user-defined ones to their text. */
static void test_roundtrip_special(void)
{
	struct tokenizer *spm = make_tok(TOK_KIND_SPM, 0);
	struct tokenizer *bpe = make_tok(TOK_KIND_BPE, TOK_PRE_LLAMA3);
	static const char spm_in[] = "a <s> b</s><|user|> c <unk>";
	static const char spm_out[] = "a  b<|user|> c <unk>";
	static const char bpe_in[] =
		"<|im_start|>user\nhi<|im_end|><|endoftext|> <s>";
	static const char bpe_out[] = "<|im_start|>user\nhi <s>";

	CU_ASSERT_PTR_NOT_NULL_FATAL(spm);
	CU_ASSERT_PTR_NOT_NULL_FATAL(bpe);
	roundtrip_to(spm, spm_in, sizeof(spm_in) - 1, TOK_PARSE_SPECIAL, 0,
		     spm_out, sizeof(spm_out) - 1);
	roundtrip_to(bpe, bpe_in, sizeof(bpe_in) - 1, TOK_PARSE_SPECIAL, 0,
		     bpe_out, sizeof(bpe_out) - 1);
	/* Without the flag the same texts come back whole. */
	roundtrip(spm, spm_in, sizeof(spm_in) - 1, 0);
	roundtrip(bpe, bpe_in, sizeof(bpe_in) - 1, 0);
	tok_free(spm);
	tok_free(bpe);
}

static uint64_t xorshift(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* 100 kB of random bytes, and 20 kB drawn from spaces, digits, letters,
 * punctuation and multi-byte characters, through every tokenizer. */
static void test_roundtrip_random(void)
{
	static const char *const parts[] = {
		" ", "  ", "\n", "\t", "\r\n", "0", "7", "1", "a", "h", "e",
		"l", "o", "w", "r", "d", "'", "'s", "!", ".", "你", "好",
		"\xf0\x9f\x98\x80", "é", "\xcc\x81", "<s>", "<|im_end|>",
	};
	const size_t n_parts = sizeof(parts) / sizeof(parts[0]);
	const size_t n_rand = 100 * 1024, n_mix = 20 * 1024;
	uint64_t state = 0x9e3779b97f4a7c15ull;
	char *rnd = malloc(n_rand), *mix = malloc(n_mix + 8);
	size_t i, mix_len = 0;
	int k;

	CU_ASSERT_PTR_NOT_NULL_FATAL(rnd);
	CU_ASSERT_PTR_NOT_NULL_FATAL(mix);
	for (i = 0; i < n_rand; i++)
		rnd[i] = (char)(xorshift(&state) >> 56);
	while (mix_len < n_mix) {
		const char *p = parts[xorshift(&state) % n_parts];
		size_t len = strlen(p);

		memcpy(mix + mix_len, p, len);
		mix_len += len;
	}

	for (k = -1; k < 3; k++) {
		struct tokenizer *tok = k < 0 ?
			make_tok(TOK_KIND_SPM, 0) :
			make_tok(TOK_KIND_BPE, (enum tok_pre)k);

		CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
		roundtrip(tok, rnd, n_rand, 0);
		roundtrip(tok, mix, mix_len, 0);
		/* Control tokens decode to nothing, so with parsing these
		 * runs only check that encoding succeeds. */
		CU_ASSERT(tok_encode(tok, mix, mix_len,
				     TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL |
				     TOK_NO_SPACE_PREFIX, NULL, 0) > 0);
		CU_ASSERT(tok_encode(tok, rnd, n_rand, TOK_PARSE_SPECIAL,
				     NULL, 0) > 0);
		tok_free(tok);
	}
	free(rnd);
	free(mix);
}

/* Long runs of one character class: 50 000 spaces before a letter, the
 * same of newlines and of digits, each one pre-token or nearly so. */
static void test_roundtrip_long_runs(void)
{
	static const char fill[] = { ' ', '\n', '7', 'a' };
	const size_t n = 50000;
	char *s = malloc(n + 1);
	size_t f;
	int k;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	for (f = 0; f < sizeof(fill); f++) {
		memset(s, fill[f], n);
		s[n] = 'x';
		for (k = -1; k < 3; k++) {
			struct tokenizer *tok = k < 0 ?
				make_tok(TOK_KIND_SPM, 0) :
				make_tok(TOK_KIND_BPE, (enum tok_pre)k);

			CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
			roundtrip(tok, s, n + 1, 0);
			tok_free(tok);
		}
	}
	free(s);
}

/* ==== Flags, decoding and the API edges ==== */

static struct tokenizer *make_from(const struct tok_spec *spec)
{
	struct tokenizer *tok = NULL;
	char err[256] = "";

	if (tok_create(spec, &tok, err, sizeof(err)))
		fprintf(stderr, "tok_create: %s\n", err);
	return tok;
}

static void test_bos_eos(void)
{
	struct tok_spec spec = *testvocab_get(TOK_KIND_SPM, 0);
	struct tokenizer *tok;

	/* Both flags set: BOS, the text, EOS. */
	spec.add_eos = true;
	tok = make_from(&spec);
	EXPECT(tok, "hello", TOK_ADD_SPECIAL, "<s>", SP "hello", "</s>");
	EXPECT(tok, "hello", 0, SP "hello");
	tok_free(tok);

	/* EOS only. */
	spec.add_bos = false;
	tok = make_from(&spec);
	EXPECT(tok, "hello", TOK_ADD_SPECIAL, SP "hello", "</s>");
	tok_free(tok);

	/* add_bos without a BOS id adds nothing. */
	spec.add_bos = true;
	spec.add_eos = false;
	spec.bos_id = -1;
	tok = make_from(&spec);
	EXPECT(tok, "hello", TOK_ADD_SPECIAL, SP "hello");
	CU_ASSERT_EQUAL(tok_bos(tok), -1);
	tok_free(tok);

	/* BPE with add_bos set uses <|endoftext|> as BOS. */
	spec = *testvocab_get(TOK_KIND_BPE, TOK_PRE_GPT2);
	spec.add_bos = true;
	tok = make_from(&spec);
	EXPECT(tok, "hello", TOK_ADD_SPECIAL, "<|endoftext|>", "hello");
	tok_free(tok);
}

static void test_capacity(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);
	int32_t ids[8] = { -7, -7, -7, -7, -7, -7, -7, -7 };
	char buf[8];
	int n;

	CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
	/* "12345" needs four ids; room for two writes two. */
	CU_ASSERT_EQUAL(tok_encode(tok, "12345", 5, 0, NULL, 0), 4);
	CU_ASSERT_EQUAL(tok_encode(tok, "12345", 5, 0, ids, 2), 4);
	CU_ASSERT_EQUAL(ids[0], tok_find(tok, SP, 3));
	CU_ASSERT_EQUAL(ids[1], tok_find(tok, "123", 3));
	CU_ASSERT_EQUAL(ids[2], -7);

	/* Decoding reports the full length and stops at the buffer. */
	n = tok_encode(tok, "hello world", 11, 0, ids, 8);
	CU_ASSERT_EQUAL(n, 2);
	memset(buf, 'x', sizeof(buf));
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 2, 0, buf, 4), 11);
	CU_ASSERT_EQUAL(memcmp(buf, "hell", 4), 0);
	CU_ASSERT_EQUAL(buf[4], 'x');
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 2, 0, NULL, 0), 11);
	tok_free(tok);
}

static void test_pieces(void)
{
	struct tokenizer *spm = make_tok(TOK_KIND_SPM, 0);
	struct tokenizer *bpe = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);
	char buf[32];

	CU_ASSERT_PTR_NOT_NULL_FATAL(spm);
	CU_ASSERT_PTR_NOT_NULL_FATAL(bpe);
	CU_ASSERT_EQUAL(tok_token_to_piece(spm, tok_find(spm, SP "hello", 8),
					   buf, sizeof(buf)), 6);
	CU_ASSERT_EQUAL(memcmp(buf, " hello", 6), 0);
	CU_ASSERT_EQUAL(tok_token_to_piece(spm, tok_find(spm, "<0x41>", 6),
					   buf, sizeof(buf)), 1);
	CU_ASSERT_EQUAL(buf[0], 'A');
	CU_ASSERT_EQUAL(tok_token_to_piece(spm, 1, buf, sizeof(buf)), 0);
	CU_ASSERT_EQUAL(tok_token_to_piece(spm, tok_find(spm, "<|user|>", 8),
					   buf, sizeof(buf)), 8);
	CU_ASSERT_EQUAL(memcmp(buf, "<|user|>", 8), 0);

	CU_ASSERT_EQUAL(tok_token_to_piece(bpe, tok_find(bpe, "Ġhello", 7),
					   buf, sizeof(buf)), 6);
	CU_ASSERT_EQUAL(memcmp(buf, " hello", 6), 0);
	CU_ASSERT_EQUAL(tok_token_to_piece(bpe, tok_find(bpe, "ä½ł", 6), buf,
					   sizeof(buf)), 3);
	CU_ASSERT_EQUAL(memcmp(buf, "你", 3), 0);
	CU_ASSERT_EQUAL(tok_token_to_piece(bpe, 256, buf, sizeof(buf)), 0);
	CU_ASSERT_EQUAL(tok_token_to_piece(bpe, 257, buf, sizeof(buf)), 12);
	CU_ASSERT_EQUAL(memcmp(buf, "<|im_start|>", 12), 0);
	tok_free(spm);
	tok_free(bpe);
}

static void test_leading_space(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_SPM, 0);
	int32_t ids[3];
	char buf[32];

	CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
	ids[0] = tok_find(tok, SP "hello", 8);
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 1, 0, buf, sizeof(buf)), 5);
	CU_ASSERT_STRING_EQUAL(buf, "hello");
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 1, TOK_DECODE_KEEP_LEADING_SPACE,
				   buf, sizeof(buf)), 6);
	CU_ASSERT_STRING_EQUAL(buf, " hello");
	/* A leading BOS gives no bytes, so the space after it is dropped. */
	ids[0] = 1;
	ids[1] = tok_find(tok, SP "hello", 8);
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 2, 0, buf, sizeof(buf)), 5);
	CU_ASSERT_STRING_EQUAL(buf, "hello");
	/* After a user-defined token the space is text and stays. */
	ids[0] = tok_find(tok, "<|user|>", 8);
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 2, 0, buf, sizeof(buf)), 14);
	CU_ASSERT_STRING_EQUAL(buf, "<|user|> hello");
	tok_free(tok);
}

static void test_longest_special(void)
{
	static const char *const texts[] = {
		"<unk>", SP, "a", "b", "<", ">", "<a>", "<a>b",
	};
	static const uint32_t lens[] = { 5, 3, 1, 1, 1, 1, 3, 4 };
	static const float scores[8] = { 0 };
	static const int32_t types[] = {
		TOK_TYPE_UNKNOWN, 1, 1, 1, 1, 1, TOK_TYPE_CONTROL,
		TOK_TYPE_USER_DEFINED,
	};
	struct tok_spec spec = {
		.kind = TOK_KIND_SPM, .n_vocab = 8, .tokens = texts,
		.token_lens = lens, .scores = scores, .types = types,
		.bos_id = -1, .eos_id = -1, .unk_id = 0, .pad_id = -1,
		.add_space_prefix = true,
	};
	struct tokenizer *tok = make_from(&spec);

	/* "<a>b" is longer than "<a>", so it wins where both match. */
	EXPECT(tok, "<a>b<a>", TOK_PARSE_SPECIAL, "<a>b", "<a>");
	/* No byte tokens: "c" becomes <unk>. */
	EXPECT(tok, "acb", 0, SP, "a", "<unk>", "b");
	tok_free(tok);

	/* Without an unknown token either, "c" cannot be encoded. */
	spec.unk_id = -1;
	tok = make_from(&spec);
	CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
	CU_ASSERT_EQUAL(tok_encode(tok, "acb", 3, 0, NULL, 0), -EINVAL);
	tok_free(tok);
}

static void test_getters(void)
{
	struct tokenizer *spm = make_tok(TOK_KIND_SPM, 0);
	struct tokenizer *bpe = make_tok(TOK_KIND_BPE, TOK_PRE_QWEN2);
	const struct tok_spec *spec = testvocab_get(TOK_KIND_SPM, 0);

	CU_ASSERT_PTR_NOT_NULL_FATAL(spm);
	CU_ASSERT_PTR_NOT_NULL_FATAL(bpe);
	CU_ASSERT_EQUAL(tok_get_kind(spm), TOK_KIND_SPM);
	CU_ASSERT_EQUAL(tok_get_kind(bpe), TOK_KIND_BPE);
	CU_ASSERT_EQUAL(tok_n_vocab(spm), spec->n_vocab);
	CU_ASSERT_EQUAL(tok_bos(spm), 1);
	CU_ASSERT_EQUAL(tok_eos(spm), 2);
	CU_ASSERT_EQUAL(tok_eos(bpe), 256);
	CU_ASSERT_TRUE(tok_is_control(spm, 1));
	CU_ASSERT_FALSE(tok_is_control(spm, 0));
	CU_ASSERT_FALSE(tok_is_control(spm, -1));
	CU_ASSERT_FALSE(tok_is_control(spm, (int32_t)spec->n_vocab));
	CU_ASSERT_TRUE(tok_is_control(bpe, 258));
	CU_ASSERT_FALSE(tok_is_control(bpe, 257));
	CU_ASSERT_EQUAL(tok_find(spm, "<s>", 3), 1);
	CU_ASSERT_EQUAL(tok_find(spm, "<0x00>", 6), 3);
	CU_ASSERT_EQUAL(tok_find(spm, "no such token", 13), -1);
	CU_ASSERT_EQUAL(tok_find(bpe, "a", 1), 'a');
	tok_free(spm);
	tok_free(bpe);
}

/* ==== Errors ==== */

static int create_err(const struct tok_spec *spec, char *err, size_t len)
{
	struct tokenizer *tok = (struct tokenizer *)&tok;
	int ret;

	err[0] = '\0';
	ret = tok_create(spec, &tok, err, len);
	if (!ret)
		tok_free(tok);
	else
		CU_ASSERT_PTR_NULL(tok);
	return ret;
}

static void test_bad_merges(void)
{
	struct tok_spec spec = *testvocab_get(TOK_KIND_BPE, TOK_PRE_GPT2);
	const char *merges[3] = { "h e", NULL, NULL };
	uint32_t lens[3] = { 3, 0, 0 };
	char err[256];

	spec.merges = merges;
	spec.merge_lens = lens;
	spec.n_merges = 2;

	/* The right part "zz" is no token. */
	merges[1] = "q zz";
	lens[1] = 4;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "merge 1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "q zz"));

	/* Both parts are tokens but "ho" is not. */
	merges[1] = "h o";
	lens[1] = 3;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "merge 1"));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "h o"));

	/* No space between the parts. */
	merges[1] = "hello";
	lens[1] = 5;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "merge 1"));

	/* A space at the end leaves the right part empty. */
	merges[1] = "h ";
	lens[1] = 2;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);

	/* The first merge alone is fine. */
	spec.n_merges = 1;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), 0);
}

static void test_bad_ids(void)
{
	struct tok_spec spec = *testvocab_get(TOK_KIND_SPM, 0);
	char err[256];

	spec.bos_id = (int32_t)spec.n_vocab;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "bos"));
	spec.bos_id = -2;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	spec.bos_id = 1;
	spec.eos_id = INT32_MAX;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "eos"));
	spec.eos_id = 2;
	spec.unk_id = (int32_t)spec.n_vocab + 5;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	spec.unk_id = 0;
	spec.pad_id = (int32_t)spec.n_vocab;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	spec.pad_id = -1;
	spec.n_vocab = 0;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
}

static void test_bad_tokens(void)
{
	const struct tok_spec *base = testvocab_get(TOK_KIND_SPM, 0);
	struct tok_spec spec = *base;
	uint32_t *lens = malloc(base->n_vocab * sizeof(*lens));
	int32_t *types = malloc(base->n_vocab * sizeof(*types));
	char err[256];

	CU_ASSERT_PTR_NOT_NULL_FATAL(lens);
	CU_ASSERT_PTR_NOT_NULL_FATAL(types);
	memcpy(lens, base->token_lens, base->n_vocab * sizeof(*lens));
	memcpy(types, base->types, base->n_vocab * sizeof(*types));
	spec.token_lens = lens;
	spec.types = types;

	/* An empty token text is rejected and named. */
	lens[300] = 0;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "token 300"));
	lens[300] = base->token_lens[300];

	/* So is a type outside 1..6. */
	types[7] = 9;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "token 7"));
	types[7] = base->types[7];

	/* SPM needs scores. */
	spec.scores = NULL;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), -EINVAL);
	spec.scores = base->scores;
	CU_ASSERT_EQUAL(create_err(&spec, err, sizeof(err)), 0);
	free(lens);
	free(types);
}

static void test_bad_decode(void)
{
	struct tokenizer *tok = make_tok(TOK_KIND_BPE, TOK_PRE_GPT2);
	int32_t ids[2] = { 'a', 0 };
	char buf[16];

	CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
	ids[1] = (int32_t)tok_n_vocab(tok);
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 2, 0, buf, sizeof(buf)), -EINVAL);
	ids[1] = -1;
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 2, 0, buf, sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(tok_token_to_piece(tok, -1, buf, sizeof(buf)),
			-EINVAL);
	CU_ASSERT_EQUAL(tok_token_to_piece(tok, (int32_t)tok_n_vocab(tok),
					   buf, sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(tok_decode(tok, ids, 1, 0, buf, sizeof(buf)), 1);
	tok_free(tok);
}

/* A BPE vocabulary without every byte character cannot encode the bytes
 * it lacks. */
static void test_missing_bytes(void)
{
	static const char *const texts[] = { "a", "b", "ab" };
	static const uint32_t lens[] = { 1, 1, 2 };
	static const char *const merges[] = { "a b" };
	static const uint32_t merge_lens[] = { 3 };
	struct tok_spec spec = {
		.kind = TOK_KIND_BPE, .pre = TOK_PRE_GPT2, .n_vocab = 3,
		.tokens = texts, .token_lens = lens, .n_merges = 1,
		.merges = merges, .merge_lens = merge_lens, .bos_id = -1,
		.eos_id = -1, .unk_id = -1, .pad_id = -1,
	};
	struct tokenizer *tok = make_from(&spec);

	EXPECT(tok, "abba", 0, "ab", "b", "a");
	CU_ASSERT_EQUAL(tok_encode(tok, "abc", 3, 0, NULL, 0), -EINVAL);
	CU_ASSERT_EQUAL(tok_encode(tok, "a b", 3, 0, NULL, 0), -EINVAL);
	tok_free(tok);
}

/* ==== Loading from GGUF ==== */

struct gbuf {
	unsigned char *data;
	size_t len, cap;
};

static void gput(struct gbuf *b, const void *src, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;

		while (cap < b->len + n)
			cap *= 2;
		b->data = realloc(b->data, cap);
		CU_ASSERT_PTR_NOT_NULL_FATAL(b->data);
		b->cap = cap;
	}
	memcpy(b->data + b->len, src, n);
	b->len += n;
}

static void gput_u32(struct gbuf *b, uint32_t v)
{
	gput(b, &v, 4);
}

static void gput_u64(struct gbuf *b, uint64_t v)
{
	gput(b, &v, 8);
}

static void gput_str(struct gbuf *b, const char *s, size_t n)
{
	gput_u64(b, n);
	gput(b, s, n);
}

static void gkey(struct gbuf *b, const char *key, uint32_t type)
{
	gput_str(b, key, strlen(key));
	gput_u32(b, type);
}

#define GG_NO_TOKENS	0x1u	/* leave tokenizer.ggml.tokens out */
#define GG_SHORT_SCORES	0x2u	/* write one score too few */

/* Builds a GGUF v3 file with no tensors carrying @spec's vocabulary under
 * @model and @pre (NULL leaves the key out), altered by GG_* @flags. The
 * add_* keys are left out so their defaults apply. */
static void build_gguf(struct gbuf *b, const struct tok_spec *spec,
		       const char *model, const char *pre, unsigned flags)
{
	uint64_t n_kv = 0, n_kv_at;
	uint32_t i;

	gput(b, "GGUF", 4);
	gput_u32(b, 3);
	gput_u64(b, 0);		/* tensors */
	n_kv_at = b->len;
	gput_u64(b, 0);		/* patched below */

	gkey(b, "general.architecture", GGUF_TYPE_STRING);
	gput_str(b, "llama", 5);
	n_kv++;
	gkey(b, "tokenizer.ggml.model", GGUF_TYPE_STRING);
	gput_str(b, model, strlen(model));
	n_kv++;
	if (pre) {
		gkey(b, "tokenizer.ggml.pre", GGUF_TYPE_STRING);
		gput_str(b, pre, strlen(pre));
		n_kv++;
	}
	if (!(flags & GG_NO_TOKENS)) {
		gkey(b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
		gput_u32(b, GGUF_TYPE_STRING);
		gput_u64(b, spec->n_vocab);
		for (i = 0; i < spec->n_vocab; i++)
			gput_str(b, spec->tokens[i], spec->token_lens[i]);
		n_kv++;
	}
	if (spec->scores) {
		uint32_t n = spec->n_vocab - !!(flags & GG_SHORT_SCORES);

		gkey(b, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY);
		gput_u32(b, GGUF_TYPE_FLOAT32);
		gput_u64(b, n);
		gput(b, spec->scores, 4 * (size_t)n);
		n_kv++;
	}
	gkey(b, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
	gput_u32(b, GGUF_TYPE_INT32);
	gput_u64(b, spec->n_vocab);
	gput(b, spec->types, 4 * (size_t)spec->n_vocab);
	n_kv++;
	if (spec->n_merges) {
		gkey(b, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY);
		gput_u32(b, GGUF_TYPE_STRING);
		gput_u64(b, spec->n_merges);
		for (i = 0; i < spec->n_merges; i++)
			gput_str(b, spec->merges[i], spec->merge_lens[i]);
		n_kv++;
	}
	if (spec->bos_id >= 0) {
		gkey(b, "tokenizer.ggml.bos_token_id", GGUF_TYPE_UINT32);
		gput_u32(b, (uint32_t)spec->bos_id);
		n_kv++;
	}
	if (spec->eos_id >= 0) {
		gkey(b, "tokenizer.ggml.eos_token_id", GGUF_TYPE_UINT32);
		gput_u32(b, (uint32_t)spec->eos_id);
		n_kv++;
	}
	memcpy(b->data + n_kv_at, &n_kv, 8);
	while (b->len % 32)
		gput(b, "", 1);
}

/* Loads @spec's vocabulary through GGUF; returns the tok_load_gguf result
 * and the tokenizer in *out. */
static int load_via_gguf(const struct tok_spec *spec, const char *model,
			 const char *pre, unsigned flags,
			 struct tokenizer **out, char *err, size_t errlen)
{
	struct gbuf b = { 0 };
	struct gguf_file *file = NULL;
	int ret;

	build_gguf(&b, spec, model, pre, flags);
	ret = gguf_parse(b.data, b.len, &file, err, errlen);
	if (ret)
		fprintf(stderr, "gguf_parse: %s\n", err);
	CU_ASSERT_EQUAL_FATAL(ret, 0);
	err[0] = '\0';
	ret = tok_load_gguf(file, out, err, errlen);
	gguf_close(file);
	free(b.data);
	return ret;
}

static void test_gguf_spm(void)
{
	const struct tok_spec *spec = testvocab_get(TOK_KIND_SPM, 0);
	struct tokenizer *tok = NULL;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(load_via_gguf(spec, "llama", NULL, 0, &tok, err,
					    sizeof(err)), 0);
	CU_ASSERT_EQUAL(tok_get_kind(tok), TOK_KIND_SPM);
	CU_ASSERT_EQUAL(tok_n_vocab(tok), spec->n_vocab);
	/* add_bos and add_space_prefix default to true for SPM. */
	EXPECT(tok, "hello world", TOK_ADD_SPECIAL, "<s>", SP "hello",
	       SP "world");
	EXPECT(tok, "<s>", TOK_PARSE_SPECIAL, "<s>");
	tok_free(tok);
}

static void test_gguf_bpe(void)
{
	const struct tok_spec *spec = testvocab_get(TOK_KIND_BPE, 0);
	struct tokenizer *tok = NULL;
	char err[256];

	/* "qwen2" selects one digit per pre-token; add_bos defaults to
	 * false for BPE. */
	CU_ASSERT_EQUAL_FATAL(load_via_gguf(spec, "gpt2", "qwen2", 0, &tok, err,
					    sizeof(err)), 0);
	CU_ASSERT_EQUAL(tok_get_kind(tok), TOK_KIND_BPE);
	EXPECT(tok, "12345", TOK_ADD_SPECIAL, "1", "2", "3", "4", "5");
	tok_free(tok);

	/* "llama-bpe" selects llama3, whose add_bos defaults to true. */
	CU_ASSERT_EQUAL_FATAL(load_via_gguf(spec, "gpt2", "llama-bpe", 0, &tok,
					    err, sizeof(err)), 0);
	EXPECT(tok, "12345", 0, "123", "45");
	EXPECT(tok, "12345", TOK_ADD_SPECIAL, "<|endoftext|>", "123", "45");
	tok_free(tok);

	/* A missing pre key means gpt2, and add_bos defaults to false. */
	CU_ASSERT_EQUAL_FATAL(load_via_gguf(spec, "gpt2", NULL, 0, &tok, err,
					    sizeof(err)), 0);
	EXPECT(tok, "12345", 0, "12", "34", "5");
	EXPECT(tok, "12345", TOK_ADD_SPECIAL, "12", "34", "5");
	tok_free(tok);
}

static void test_gguf_unknown(void)
{
	const struct tok_spec *spec = testvocab_get(TOK_KIND_BPE, 0);
	struct tokenizer *tok = (struct tokenizer *)&tok;
	char err[256];

	CU_ASSERT_EQUAL(load_via_gguf(spec, "bert", NULL, 0, &tok, err,
				      sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(tok);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "bert"));
	CU_ASSERT_EQUAL(load_via_gguf(spec, "gpt2", "tekken", 0, &tok, err,
				      sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(tok);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "tekken"));
}

static void test_gguf_bad_arrays(void)
{
	const struct tok_spec *spec = testvocab_get(TOK_KIND_SPM, 0);
	struct tokenizer *tok = (struct tokenizer *)&tok;
	char err[256];

	CU_ASSERT_EQUAL(load_via_gguf(spec, "llama", NULL, GG_SHORT_SCORES,
				      &tok, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NULL(tok);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "tokenizer.ggml.scores"));
	CU_ASSERT_EQUAL(load_via_gguf(spec, "llama", NULL, GG_NO_TOKENS, &tok,
				      err, sizeof(err)), -ENOENT);
	CU_ASSERT_PTR_NULL(tok);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "tokenizer.ggml.tokens"));
}

static const struct test_case spm_cases[] = {
	{ "words", test_spm_words },
	{ "digits", test_spm_digits },
	{ "spaces", test_spm_spaces },
	{ "byte fallback", test_spm_fallback },
	{ "special tokens", test_spm_special },
	{ NULL, NULL },
};

static const struct test_case bpe_cases[] = {
	{ "words", test_bpe_words },
	{ "spaces", test_bpe_spaces },
	{ "bytes", test_bpe_bytes },
	{ "special tokens", test_bpe_special },
	{ "pre digits", test_pre_digits },
	{ "pre contractions", test_pre_contractions },
	{ "pre newlines", test_pre_newlines },
	{ "pre whole word", test_pre_whole_word },
	{ NULL, NULL },
};

static const struct test_case roundtrip_cases[] = {
	{ "spm corpus", test_roundtrip_spm },
	{ "gpt2 corpus", test_roundtrip_gpt2 },
	{ "llama3 corpus", test_roundtrip_llama3 },
	{ "qwen2 corpus", test_roundtrip_qwen2 },
	{ "parsed specials", test_roundtrip_special },
	{ "random bytes", test_roundtrip_random },
	{ "long runs", test_roundtrip_long_runs },
	{ NULL, NULL },
};

static const struct test_case api_cases[] = {
	{ "bos and eos", test_bos_eos },
	{ "capacity", test_capacity },
	{ "pieces", test_pieces },
	{ "leading space", test_leading_space },
	{ "longest special", test_longest_special },
	{ "getters", test_getters },
	{ "bad merges", test_bad_merges },
	{ "bad ids", test_bad_ids },
	{ "bad tokens", test_bad_tokens },
	{ "bad decode ids", test_bad_decode },
	{ "missing byte tokens", test_missing_bytes },
	{ NULL, NULL },
};

static const struct test_case gguf_cases[] = {
	{ "spm", test_gguf_spm },
	{ "bpe pre", test_gguf_bpe },
	{ "unknown model", test_gguf_unknown },
	{ "bad arrays", test_gguf_bad_arrays },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "tokenizer spm", spm_cases },
	{ "tokenizer bpe", bpe_cases },
	{ "tokenizer round trip", roundtrip_cases },
	{ "tokenizer api", api_cases },
	{ "tokenizer gguf", gguf_cases },
};

#include "cunit-main.h"
