/* SPDX-License-Identifier: MIT */
/*
 * testvocab.c - the made-up vocabularies behind the test models and the
 * tokenizer tests: one SentencePiece-style ("llama") and one byte-level BPE
 * ("gpt2"), each a few hundred tokens, built once into static storage.
 *
 * The merged pieces and their scores or ranks are few enough to follow by
 * hand. test-tokenizer.c derives its expected encodings from them, so a
 * change here needs the matching change there.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "testvocab.h"

#define SP "\xe2\x96\x81"	/* U+2581, SentencePiece's space */

#define SPM_MAX_TOKENS 640
#define BPE_MAX_TOKENS 384

struct vocab_store {
	const char *tokens[SPM_MAX_TOKENS];
	uint32_t lens[SPM_MAX_TOKENS];
	float scores[SPM_MAX_TOKENS];
	int32_t types[SPM_MAX_TOKENS];
	uint32_t n;
	char pool[8192];	/* token texts, NUL-separated */
	size_t pool_used;
};

/* The pieces SPM merges can build, with their scores: a higher score
 * merges first. Single characters are added separately. */
static const struct {
	const char *text;
	float score;
} spm_pieces[] = {
	/* "▁hello": ll, then llo, then he, then hello, then ▁hello. */
	{ "he", -5.0f }, { "el", -8.0f }, { "ll", -4.0f }, { "lo", -9.0f },
	{ "llo", -3.0f }, { "hello", -2.0f }, { SP "hello", -1.0f },
	{ SP "he", -6.0f },
	/* "▁the": he, then the, then ▁the; th loses to he. */
	{ "th", -7.0f }, { "the", -6.5f }, { SP "the", -0.5f },
	/* "▁world": or beats wo, then ld, orld, world, ▁world. */
	{ "wo", -14.0f }, { "or", -13.0f }, { "ld", -16.0f },
	{ "orld", -3.0f }, { "world", -2.5f }, { SP "world", -1.5f },
	/* "ing": ng beats in, then ing. */
	{ "in", -30.0f }, { "ng", -25.0f }, { "ing", -12.0f },
	/* Digits: 23 beats 12, then 123. */
	{ "12", -20.0f }, { "23", -15.0f }, { "123", -10.0f },
	/* Space runs: pairs of U+2581, then four of them. */
	{ SP SP, -50.0f }, { SP SP SP SP, -40.0f },
	/* CJK words. */
	{ "你好", -21.0f }, { "世界", -22.0f },
};

/* Multi-byte characters the SPM vocabulary has. Emoji and combining marks
 * are left out on purpose so they go through byte fallback. */
static const char *const spm_chars[] = {
	"é", "ü", "ñ", "ß", "€", "—", "你", "好", "世", "界", "日", "本",
};

/*
 * BPE merges in rank order (rank 0 first), in byte-level text: Ġ is the
 * space, Ċ the newline, and "ä½ł" / "å¥½" are the UTF-8 bytes of 你 / 好.
 * Each merge adds its concatenation as the next token.
 */
static const char *const bpe_merges[] = {
	"Ġ t", "h e", "Ġt he",			/* 0-2: " the" */
	"i n", "in g",				/* 3-4: "ing" */
	"Ġ Ġ",					/* 5: two spaces */
	"l l", "he ll", "hell o", "Ġ hello",	/* 6-9: "hello" */
	"o r", "w or", "l d", "wor ld", "Ġ world", /* 10-14: "world" */
	"3 4", "1 2", "12 3", "4 5",		/* 15-18: digits */
	"Ċ Ċ",					/* 19: two newlines */
	"ĠĠ ĠĠ",				/* 20: four spaces */
	"ä ½", "ä½ ł", "å ¥", "å¥ ½", "ä½ł å¥½",	/* 21-25: 你好 */
	"' t", "d o", "do n", "Ġ don",		/* 26-29: "don't" */
	"' T", "D O", "DO N",			/* 30-32: "DON'T" */
	"Ã ©", "c a", "ca f", "caf Ã©",		/* 33-36: "café" */
	"' s", "' hello",			/* 37-38 */
};

/* Tokens that no merge builds, after the merge tokens. Only llama3's
 * whole-word lookup can produce them. */
static const char *const bpe_unmerged[] = { "xyz" };

#define N_BPE_MERGES (sizeof(bpe_merges) / sizeof(bpe_merges[0]))

static struct vocab_store spm_store, bpe_store;
static uint32_t bpe_merge_lens[N_BPE_MERGES];
static struct tok_spec spm_spec, bpe_specs[3];
static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool built;

static bool add(struct vocab_store *s, const char *text, size_t len,
		float score, int32_t type)
{
	if (s->n == SPM_MAX_TOKENS || s->pool_used + len + 1 > sizeof(s->pool))
		return false;
	memcpy(s->pool + s->pool_used, text, len);
	s->pool[s->pool_used + len] = '\0';
	s->tokens[s->n] = s->pool + s->pool_used;
	s->lens[s->n] = (uint32_t)len;
	s->scores[s->n] = score;
	s->types[s->n] = type;
	s->pool_used += len + 1;
	s->n++;
	return true;
}

static bool add_str(struct vocab_store *s, const char *text, float score,
		    int32_t type)
{
	return add(s, text, strlen(text), score, type);
}

/*
 * SPM: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..258, <|user|> 259, then
 * "▁", the printable ASCII characters alone and after "▁", a few
 * multi-byte characters and the merged pieces.
 */
static bool build_spm(void)
{
	struct vocab_store *s = &spm_store;
	char text[16];
	bool ok = true;
	size_t i;
	int c;

	ok &= add_str(s, "<unk>", 0.0f, TOK_TYPE_UNKNOWN);
	ok &= add_str(s, "<s>", 0.0f, TOK_TYPE_CONTROL);
	ok &= add_str(s, "</s>", 0.0f, TOK_TYPE_CONTROL);
	for (c = 0; c < 256; c++) {
		snprintf(text, sizeof(text), "<0x%02X>", c);
		ok &= add_str(s, text, 0.0f, TOK_TYPE_BYTE);
	}
	ok &= add_str(s, "<|user|>", 0.0f, TOK_TYPE_USER_DEFINED);

	/* Single characters never result from a merge, so their scores only
	 * need to be low; every "▁x" pair scores the same, -100. */
	ok &= add_str(s, SP, -1000.0f, TOK_TYPE_NORMAL);
	for (c = 0x21; c < 0x7f; c++) {
		text[0] = (char)c;
		ok &= add(s, text, 1, -1000.0f - (float)c, TOK_TYPE_NORMAL);
	}
	for (c = 0x21; c < 0x7f; c++) {
		memcpy(text, SP, 3);
		text[3] = (char)c;
		ok &= add(s, text, 4, -100.0f, TOK_TYPE_NORMAL);
	}
	for (i = 0; i < sizeof(spm_chars) / sizeof(spm_chars[0]); i++)
		ok &= add_str(s, spm_chars[i], -1000.0f, TOK_TYPE_NORMAL);
	for (i = 0; i < sizeof(spm_pieces) / sizeof(spm_pieces[0]); i++)
		ok &= add_str(s, spm_pieces[i].text, spm_pieces[i].score,
			      TOK_TYPE_NORMAL);

	spm_spec = (struct tok_spec){
		.kind = TOK_KIND_SPM,
		.pre = TOK_PRE_GPT2,
		.n_vocab = s->n,
		.tokens = s->tokens,
		.token_lens = s->lens,
		.scores = s->scores,
		.types = s->types,
		.bos_id = 1,
		.eos_id = 2,
		.unk_id = 0,
		.pad_id = -1,
		.add_bos = true,
		.add_eos = false,
		.add_space_prefix = true,
	};
	return ok;
}

/* The GPT-2 byte-level character of byte @b, as UTF-8; returns its length.
 * Printable Latin-1 bytes other than the space and the soft hyphen stand
 * for themselves; the other 68 bytes take U+0100 onwards in byte order. */
static size_t byte_char(unsigned b, char *out)
{
	unsigned cp, shifted = 0, i;

	for (i = 0; i < b; i++)
		if (!((i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) ||
		      i >= 0xae))
			shifted++;
	if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae)
		cp = b;
	else
		cp = 0x100 + shifted;
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	out[0] = (char)(0xc0 | (cp >> 6));
	out[1] = (char)(0x80 | (cp & 0x3f));
	return 2;
}

/*
 * BPE: the 256 byte-level characters as ids 0..255 in byte order, then
 * <|endoftext|> 256 (control), <|im_start|> 257 (user-defined),
 * <|im_end|> 258 (control), then one token per merge, 259 onwards, then
 * bpe_unmerged[].
 */
static bool build_bpe(void)
{
	struct vocab_store *s = &bpe_store;
	char text[64];
	bool ok = true;
	unsigned b;
	size_t i;
	int k;

	for (b = 0; b < 256; b++)
		ok &= add(s, text, byte_char(b, text), 0.0f, TOK_TYPE_NORMAL);
	ok &= add_str(s, "<|endoftext|>", 0.0f, TOK_TYPE_CONTROL);
	ok &= add_str(s, "<|im_start|>", 0.0f, TOK_TYPE_USER_DEFINED);
	ok &= add_str(s, "<|im_end|>", 0.0f, TOK_TYPE_CONTROL);
	for (i = 0; i < N_BPE_MERGES; i++) {
		const char *m = bpe_merges[i];
		const char *sp = strchr(m, ' ');
		size_t llen = (size_t)(sp - m), rlen = strlen(sp + 1);

		memcpy(text, m, llen);
		memcpy(text + llen, sp + 1, rlen);
		ok &= add(s, text, llen + rlen, 0.0f, TOK_TYPE_NORMAL);
		bpe_merge_lens[i] = (uint32_t)strlen(m);
	}
	for (i = 0; i < sizeof(bpe_unmerged) / sizeof(bpe_unmerged[0]); i++)
		ok &= add_str(s, bpe_unmerged[i], 0.0f, TOK_TYPE_NORMAL);

	for (k = 0; k < 3; k++) {
		bpe_specs[k] = (struct tok_spec){
			.kind = TOK_KIND_BPE,
			.pre = (enum tok_pre)k,
			.n_vocab = s->n,
			.tokens = s->tokens,
			.token_lens = s->lens,
			.scores = NULL,
			.types = s->types,
			.n_merges = N_BPE_MERGES,
			.merges = bpe_merges,
			.merge_lens = bpe_merge_lens,
			.bos_id = 256,
			.eos_id = 256,
			.unk_id = -1,
			.pad_id = -1,
			.add_bos = false,
			.add_eos = false,
			.add_space_prefix = false,
		};
	}
	return ok && s->n <= BPE_MAX_TOKENS;
}

static void build(void)
{
	built = build_spm() && build_bpe();
}

const struct tok_spec *testvocab_get(enum tok_kind kind, enum tok_pre pre)
{
	if (pthread_once(&once, build) || !built)
		return NULL;
	if (kind == TOK_KIND_SPM)
		return &spm_spec;
	if (kind != TOK_KIND_BPE || (int)pre < 0 || (int)pre > TOK_PRE_QWEN2)
		return NULL;
	return &bpe_specs[pre];
}
