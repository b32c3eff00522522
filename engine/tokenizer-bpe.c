/* SPDX-License-Identifier: MIT */
/*
 * tokenizer-bpe.c - the byte-level BPE tokenizer ("gpt2" in GGUF).
 *
 * The pre-tokenizer's regular expression (PCRE2 in UTF mode with Unicode
 * properties) cuts the text into pre-tokens. Each byte of a pre-token
 * becomes its GPT-2 byte-level character, and adjacent pairs are merged in
 * merge-rank order until no ranked pair is left.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-internal.h"

/*
 * Pre-tokenizer patterns, as published with the GPT-2, Llama 3 and Qwen2
 * tokenizers. They differ in contractions (case), in how a letter run may
 * take one leading non-letter, and in digit runs: unlimited, up to three,
 * or one at a time.
 */
static const char *const pre_patterns[] = {
	[TOK_PRE_GPT2] =
		"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+"
		"| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
	[TOK_PRE_LLAMA3] =
		"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
		"|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
		"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
	[TOK_PRE_QWEN2] =
		"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
		"|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
		"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

static const char *const pre_names[] = {
	[TOK_PRE_GPT2] = "gpt2",
	[TOK_PRE_LLAMA3] = "llama3",
	[TOK_PRE_QWEN2] = "qwen2",
};

/* ==== The GPT-2 byte-level alphabet ==== */

/* Bytes that stand for themselves: printable Latin-1 except the space and
 * the soft hyphen. The other 68 map to U+0100 onwards, in byte order. */
static bool byte_is_printable(unsigned b)
{
	return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) ||
	       b >= 0xae;
}

static unsigned byte_to_cp(unsigned b)
{
	if (byte_is_printable(b))
		return b;
	if (b <= 0x20)
		return 0x100 + b;		/* 0x100..0x120 */
	if (b <= 0xa0)
		return 0x100 + 33 + (b - 0x7f);	/* 0x121..0x142 */
	return 0x100 + 67;			/* 0xad -> 0x143 */
}

/* Returns the byte code point @cp stands for, or -1. */
static int cp_to_byte(unsigned cp)
{
	unsigned i;

	if (cp < 0x100)
		return byte_is_printable(cp) ? (int)cp : -1;
	i = cp - 0x100;
	if (i <= 32)
		return (int)i;
	if (i <= 66)
		return (int)(i - 33 + 0x7f);
	if (i == 67)
		return 0xad;
	return -1;
}

/* Writes the UTF-8 of a code point below U+0800; returns its length. */
static size_t put_cp(unsigned cp, char *out)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	out[0] = (char)(0xc0 | (cp >> 6));
	out[1] = (char)(0x80 | (cp & 0x3f));
	return 2;
}

/* ==== Merge table ==== */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

static struct tok_merge_slot *merge_slot(const struct tok_merge_map *map,
					 uint64_t key)
{
	uint32_t i = (uint32_t)mix64(key) & map->mask;

	while (map->slots[i].key != UINT64_MAX && map->slots[i].key != key)
		i = (i + 1) & map->mask;
	return &map->slots[i];
}

static int merge_map_alloc(struct tok_merge_map *map, uint32_t n)
{
	uint32_t cap = 16, i;

	while (cap < 2ull * n) {
		if (cap > UINT32_MAX / 2)
			return -ENOMEM;
		cap *= 2;
	}
	map->slots = malloc(cap * sizeof(*map->slots));
	if (!map->slots)
		return -ENOMEM;
	for (i = 0; i < cap; i++)
		map->slots[i].key = UINT64_MAX;
	map->mask = cap - 1;
	return 0;
}

/* Checks merge @i ("left right") and adds it; an earlier merge of the
 * same pair keeps its better rank. */
static int add_merge(struct tokenizer *tok, uint32_t i, const char *text,
		     uint32_t len, char *tmp, char *err, size_t errlen)
{
	const char *sp = memchr(text, ' ', len);
	size_t llen, rlen;
	int32_t left, right, merged;
	struct tok_merge_slot *slot;
	char q[64];
	const char *why;

	if (!sp || sp == text || sp + 1 == text + len) {
		why = "is not two tokens separated by a space";
		goto out_invalid;
	}
	llen = (size_t)(sp - text);
	rlen = len - llen - 1;
	left = tok_lookup(tok, text, llen);
	right = tok_lookup(tok, sp + 1, rlen);
	if (left < 0) {
		why = "has a left part that is not in the vocabulary";
		goto out_invalid;
	}
	if (right < 0) {
		why = "has a right part that is not in the vocabulary";
		goto out_invalid;
	}
	memcpy(tmp, text, llen);
	memcpy(tmp + llen, sp + 1, rlen);
	merged = tok_lookup(tok, tmp, llen + rlen);
	if (merged < 0) {
		why = "makes a token that is not in the vocabulary";
		goto out_invalid;
	}

	slot = merge_slot(&tok->merge_map,
			  (uint64_t)(uint32_t)left << 32 | (uint32_t)right);
	if (slot->key == UINT64_MAX) {
		slot->key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
		slot->rank = i;
		slot->merged = merged;
	}
	return 0;

out_invalid:
	if (err && errlen)
		snprintf(err, errlen, "tokenizer: merge %u %s %s", i,
			 tok_quote(text, len, q, sizeof(q)), why);
	return -EINVAL;
}

static int build_merges(struct tokenizer *tok, const struct tok_spec *spec,
			char *err, size_t errlen)
{
	uint32_t i, max_len = 0;
	char *tmp;
	int ret = 0;

	if (merge_map_alloc(&tok->merge_map, spec->n_merges))
		goto out_nomem;
	for (i = 0; i < spec->n_merges; i++)
		if (spec->merge_lens[i] > max_len)
			max_len = spec->merge_lens[i];
	tmp = malloc((size_t)max_len + 1);
	if (!tmp)
		goto out_nomem;
	for (i = 0; i < spec->n_merges && !ret; i++) {
		if (!spec->merges[i]) {
			if (err && errlen)
				snprintf(err, errlen,
					 "tokenizer: merge %u has no text", i);
			ret = -EINVAL;
			break;
		}
		ret = add_merge(tok, i, spec->merges[i], spec->merge_lens[i],
				tmp, err, errlen);
	}
	free(tmp);
	return ret;

out_nomem:
	if (err && errlen)
		snprintf(err, errlen, "tokenizer: out of memory");
	return -ENOMEM;
}

/* ==== Set-up ==== */

int tok_bpe_init(struct tokenizer *tok, const struct tok_spec *spec,
		 char *err, size_t errlen)
{
	PCRE2_UCHAR msg[128];
	PCRE2_SIZE where;
	pcre2_code *re;
	int code, ret;
	unsigned b;

	/* A byte whose character the vocabulary lacks is reported by
	 * tok_encode (-EINVAL) when some text needs it. */
	for (b = 0; b < 256; b++) {
		char utf8[2];
		size_t n = put_cp(byte_to_cp(b), utf8);

		tok->byte_ids[b] = tok_lookup(tok, utf8, n);
	}

	ret = build_merges(tok, spec, err, errlen);
	if (ret)
		return ret;

	re = pcre2_compile((PCRE2_SPTR)pre_patterns[tok->pre],
			   PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
			   &where, NULL);
	if (!re) {
		pcre2_get_error_message(code, msg, sizeof(msg));
		if (err && errlen)
			snprintf(err, errlen,
				 "tokenizer: the %s pre-tokenizer pattern failed to compile at offset %zu: %s",
				 pre_names[tok->pre], (size_t)where,
				 (const char *)msg);
		return -EINVAL;
	}
	/* Without JIT support pcre2_match runs the interpreter instead. */
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
	tok->regex = re;
	return 0;
}

void tok_bpe_free(struct tokenizer *tok)
{
	pcre2_code_free(tok->regex);
	tok->regex = NULL;
	free(tok->merge_map.slots);
	tok->merge_map.slots = NULL;
}

/* ==== Encoding ==== */

static int bpe_try_pair(const struct tokenizer *tok, struct tok_scratch *s,
			int32_t left, int32_t right)
{
	const struct tok_symbol *l, *r;
	const struct tok_merge_slot *slot;
	struct tok_bigram bg;

	if (left < 0 || right < 0)
		return 0;
	l = &s->symbols[left];
	r = &s->symbols[right];
	slot = merge_slot(&tok->merge_map,
			  (uint64_t)(uint32_t)l->id << 32 | (uint32_t)r->id);
	if (slot->key == UINT64_MAX)
		return 0;
	bg.priority = slot->rank;
	bg.left = (uint32_t)left;
	bg.right = (uint32_t)right;
	bg.left_len = l->len;
	bg.right_len = r->len;
	bg.merged = slot->merged;
	return tok_heap_push(&s->heap, &bg);
}

/*
 * Returns the ordinary token whose text is the whole pre-token @w in
 * byte-level characters, or -1.
 */
static int32_t bpe_whole_word(const struct tokenizer *tok,
			      const unsigned char *w, size_t n,
			      struct tok_scratch *s)
{
	size_t len = 0, i;
	int32_t id;

	if (tok_scratch_buf(s, 2 * n))
		return -1;
	for (i = 0; i < n; i++)
		len += put_cp(byte_to_cp(w[i]), s->buf + len);
	id = tok_lookup(tok, s->buf, len);
	if (id < 0 || tok->vocab[id].type != TOK_TYPE_NORMAL)
		return -1;
	return id;
}

/*
 * Encodes one pre-token. Every merge result is a vocabulary token
 * (tok_create checked that), so only single bytes can be missing, and
 * those make the text unrepresentable.
 */
static int bpe_word(const struct tokenizer *tok, const unsigned char *w,
		    size_t n, struct tok_scratch *s, struct tok_out *out)
{
	struct tok_bigram bg;
	int32_t i;
	int ret;

	/* llama3 takes a pre-token that is itself a token whole, without
	 * merging (ignore_merges in Hugging Face tokenizers; llama.cpp does
	 * the same for this pre-tokenizer). */
	if (tok->pre == TOK_PRE_LLAMA3 && n > 1) {
		int32_t id = bpe_whole_word(tok, w, n, s);

		if (id >= 0) {
			tok_out_push(out, id);
			return 0;
		}
	}

	if (tok_scratch_symbols(s, n))
		return -ENOMEM;
	for (i = 0; i < (int32_t)n; i++) {
		struct tok_symbol *sym = &s->symbols[i];

		sym->id = tok->byte_ids[w[i]];
		if (sym->id < 0)
			return -EINVAL;
		sym->start = (uint32_t)i;
		sym->len = 1;
		sym->prev = i - 1;
		sym->next = i + 1 < (int32_t)n ? i + 1 : -1;
	}

	s->heap.n = 0;
	for (i = 0; i + 1 < (int32_t)n; i++) {
		ret = bpe_try_pair(tok, s, i, i + 1);
		if (ret)
			return ret;
	}

	/* Lowest rank first; skip pairs that an earlier merge changed. */
	while (tok_heap_pop(&s->heap, &bg)) {
		struct tok_symbol *l = &s->symbols[bg.left];
		struct tok_symbol *r = &s->symbols[bg.right];

		if (l->len != bg.left_len || r->len != bg.right_len ||
		    l->next != (int32_t)bg.right)
			continue;
		l->id = bg.merged;
		l->len += r->len;
		r->len = 0;
		l->next = r->next;
		if (r->next >= 0)
			s->symbols[r->next].prev = (int32_t)bg.left;
		ret = bpe_try_pair(tok, s, l->prev, (int32_t)bg.left);
		if (!ret)
			ret = bpe_try_pair(tok, s, (int32_t)bg.left, l->next);
		if (ret)
			return ret;
	}

	for (i = 0; i >= 0; i = s->symbols[i].next)
		tok_out_push(out, s->symbols[i].id);
	return 0;
}

static int match_error(int rc)
{
	return rc == PCRE2_ERROR_NOMEMORY || rc == PCRE2_ERROR_JIT_STACKLIMIT ||
	       rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_MATCHLIMIT ?
	       -ENOMEM : -EINVAL;
}

/* Splits a run of valid UTF-8 into pre-tokens and encodes each. Text the
 * pattern does not match (none of the three patterns leaves any) is
 * encoded as one pre-token all the same. */
static int bpe_run(const struct tokenizer *tok, const unsigned char *run,
		   size_t len, pcre2_match_data *md, struct tok_scratch *s,
		   struct tok_out *out)
{
	size_t pos = 0;
	int ret;

	while (pos < len) {
		PCRE2_SIZE *ov;
		size_t start, end;
		int rc;

		rc = pcre2_match(tok->regex, run, len, pos, PCRE2_NO_UTF_CHECK,
				 md, NULL);
		if (rc == PCRE2_ERROR_NOMATCH)
			return bpe_word(tok, run + pos, len - pos, s, out);
		if (rc < 0)
			return match_error(rc);
		ov = pcre2_get_ovector_pointer(md);
		start = ov[0];
		end = ov[1];
		if (start > pos) {
			ret = bpe_word(tok, run + pos, start - pos, s, out);
			if (ret)
				return ret;
		}
		if (end == start)	/* an empty match: take one character */
			end = start + tok_utf8_len(run + start, len - start);
		ret = bpe_word(tok, run + start, end - start, s, out);
		if (ret)
			return ret;
		pos = end;
	}
	return 0;
}

/*
 * PCRE2 in UTF mode must only see valid UTF-8, so the text is cut into
 * valid runs for the pattern, and each invalid byte is a pre-token of its
 * own.
 */
int tok_bpe_encode(const struct tokenizer *tok, const char *text, size_t len,
		   struct tok_scratch *s, struct tok_out *out)
{
	const unsigned char *u = (const unsigned char *)text;
	pcre2_match_data *md;
	size_t pos = 0;
	int ret = 0;

	md = pcre2_match_data_create_from_pattern(tok->regex, NULL);
	if (!md)
		return -ENOMEM;
	while (pos < len && !ret) {
		size_t end = pos, clen;

		while (end < len && (clen = tok_utf8_len(u + end, len - end)))
			end += clen;
		if (end > pos) {
			ret = bpe_run(tok, u + pos, end - pos, md, s, out);
			pos = end;
		} else {
			ret = bpe_word(tok, u + pos, 1, s, out);
			pos++;
		}
	}
	pcre2_match_data_free(md);
	return ret;
}

/* ==== Decoding ==== */

static void put(char *buf, size_t cap, size_t *n, const void *src, size_t k)
{
	if (*n < cap)
		memcpy(buf + *n, src, k < cap - *n ? k : cap - *n);
	*n += k;
}

/* Control tokens give nothing and user-defined ones their text. Any other
 * token maps its byte-level characters back to bytes and copies a
 * character outside that alphabet unchanged. */
int tok_bpe_piece(const struct tokenizer *tok, int32_t id, char *buf,
		  size_t cap)
{
	const struct tok_token *t = &tok->vocab[id];
	const unsigned char *u = (const unsigned char *)t->text;
	size_t n = 0, i = 0;

	if (t->type == TOK_TYPE_CONTROL)
		return 0;
	if (t->type == TOK_TYPE_USER_DEFINED) {
		put(buf, cap, &n, t->text, t->len);
		return (int)n;
	}
	while (i < t->len) {
		size_t clen = tok_utf8_len(u + i, t->len - i);
		int b = -1;

		if (clen == 1)
			b = cp_to_byte(u[i]);
		else if (clen == 2)
			b = cp_to_byte((unsigned)(u[i] & 0x1f) << 6 |
				       (u[i + 1] & 0x3f));
		if (!clen)
			clen = 1;
		if (b >= 0) {
			char c = (char)b;

			put(buf, cap, &n, &c, 1);
		} else {
			put(buf, cap, &n, u + i, clen);
		}
		i += clen;
	}
	return (int)n;
}
