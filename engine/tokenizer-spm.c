/* SPDX-License-Identifier: MIT */
/*
 * tokenizer-spm.c - the SentencePiece-style tokenizer ("llama" in GGUF).
 *
 * Spaces become U+2581, the text is split into UTF-8 characters, and the
 * adjacent pair whose concatenation is the highest-scoring vocabulary token
 * is merged until no pair is left. A character the vocabulary lacks is
 * written as <0xNN> byte tokens, or as the unknown token when those are
 * missing too.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "tokenizer-internal.h"

#define SPM_SPACE "\xe2\x96\x81"	/* U+2581 LOWER ONE EIGHTH BLOCK */
#define SPM_SPACE_LEN 3

int tok_spm_init(struct tokenizer *tok, char *err, size_t errlen)
{
	char name[8];
	int b;

	for (b = 0; b < 256; b++) {
		int32_t id;

		snprintf(name, sizeof(name), "<0x%02X>", b);
		id = tok_lookup(tok, name, 6);
		if (id >= 0 && tok->vocab[id].type != TOK_TYPE_BYTE)
			id = -1;
		tok->byte_ids[b] = id;
	}
	return 0;
}

/* Returns the id of the ordinary token @text, or -1. Control, byte and
 * user-defined tokens are never the result of a merge. */
static int32_t spm_piece_id(const struct tokenizer *tok, const char *text,
			    size_t len)
{
	int32_t id = tok_lookup(tok, text, len);

	if (id < 0 || tok->vocab[id].type != TOK_TYPE_NORMAL)
		return -1;
	return id;
}

/* Queues the merge of symbols @left and @right if the vocabulary has it. */
static int spm_try_pair(const struct tokenizer *tok, const char *text,
			struct tok_scratch *s, int32_t left, int32_t right)
{
	const struct tok_symbol *l, *r;
	struct tok_bigram bg;
	int32_t id;

	if (left < 0 || right < 0)
		return 0;
	l = &s->symbols[left];
	r = &s->symbols[right];
	id = spm_piece_id(tok, text + l->start, (size_t)l->len + r->len);
	if (id < 0)
		return 0;
	bg.priority = -(double)tok->vocab[id].score;
	bg.left = (uint32_t)left;
	bg.right = (uint32_t)right;
	bg.left_len = l->len;
	bg.right_len = r->len;
	bg.merged = id;
	return tok_heap_push(&s->heap, &bg);
}

/* Copies @text into the scratch buffer with spaces as U+2581, after one
 * U+2581 when @space_prefix. Returns the new length or -ENOMEM.
 * NOTE: a U+2581 already in the input is indistinguishable from a space
 * afterwards and decodes as one, as in SentencePiece. */
static long spm_escape(const char *text, size_t len, bool space_prefix,
		       struct tok_scratch *s)
{
	size_t n = space_prefix ? SPM_SPACE_LEN : 0, i;

	for (i = 0; i < len; i++)
		n += text[i] == ' ' ? SPM_SPACE_LEN : 1;
	if (tok_scratch_buf(s, n))
		return -ENOMEM;
	n = 0;
	if (space_prefix) {
		memcpy(s->buf, SPM_SPACE, SPM_SPACE_LEN);
		n = SPM_SPACE_LEN;
	}
	for (i = 0; i < len; i++) {
		if (text[i] == ' ') {
			memcpy(s->buf + n, SPM_SPACE, SPM_SPACE_LEN);
			n += SPM_SPACE_LEN;
		} else {
			s->buf[n++] = text[i];
		}
	}
	return (long)n;
}

/* Emits one final symbol: its token, else its bytes, else unk. */
static int spm_emit(const struct tokenizer *tok, const char *text, size_t len,
		    struct tok_out *out)
{
	int32_t id = spm_piece_id(tok, text, len);
	size_t i;

	if (id >= 0) {
		tok_out_push(out, id);
		return 0;
	}
	for (i = 0; i < len; i++)
		if (tok->byte_ids[(unsigned char)text[i]] < 0)
			break;
	if (i == len) {
		for (i = 0; i < len; i++) {
			unsigned char c = (unsigned char)text[i];

			tok_out_push(out, tok->byte_ids[c]);
		}
		return 0;
	}
	if (tok->unk_id < 0)
		return -EINVAL;
	tok_out_push(out, tok->unk_id);
	return 0;
}

int tok_spm_encode(const struct tokenizer *tok, const char *text, size_t len,
		   bool space_prefix, struct tok_scratch *s,
		   struct tok_out *out)
{
	const unsigned char *u;
	struct tok_bigram bg;
	size_t n = 0, pos = 0;
	long blen;
	int32_t i;
	int ret;

	blen = spm_escape(text, len, space_prefix, s);
	if (blen < 0)
		return (int)blen;
	if (tok_scratch_symbols(s, (size_t)blen))
		return -ENOMEM;
	u = (const unsigned char *)s->buf;

	/* One symbol per UTF-8 character, and one per invalid byte. */
	while (pos < (size_t)blen) {
		size_t clen = tok_utf8_len(u + pos, (size_t)blen - pos);
		struct tok_symbol *sym = &s->symbols[n];

		if (!clen)
			clen = 1;
		sym->start = (uint32_t)pos;
		sym->len = (uint32_t)clen;
		sym->prev = (int32_t)n - 1;
		sym->next = pos + clen < (size_t)blen ? (int32_t)n + 1 : -1;
		sym->id = -1;
		pos += clen;
		n++;
	}

	s->heap.n = 0;
	for (i = 0; i + 1 < (int32_t)n; i++) {
		ret = spm_try_pair(tok, s->buf, s, i, i + 1);
		if (ret)
			return ret;
	}

	/* Best score first. A popped pair whose symbols changed since it was
	 * queued is stale and skipped. */
	while (tok_heap_pop(&s->heap, &bg)) {
		struct tok_symbol *l = &s->symbols[bg.left];
		struct tok_symbol *r = &s->symbols[bg.right];

		if (l->len != bg.left_len || r->len != bg.right_len ||
		    l->next != (int32_t)bg.right)
			continue;
		l->len += r->len;
		r->len = 0;
		l->next = r->next;
		if (r->next >= 0)
			s->symbols[r->next].prev = (int32_t)bg.left;
		ret = spm_try_pair(tok, s->buf, s, l->prev, (int32_t)bg.left);
		if (!ret)
			ret = spm_try_pair(tok, s->buf, s, (int32_t)bg.left,
					   l->next);
		if (ret)
			return ret;
	}

	for (i = 0; i >= 0; i = s->symbols[i].next) {
		const struct tok_symbol *sym = &s->symbols[i];

		ret = spm_emit(tok, s->buf + sym->start, sym->len, out);
		if (ret)
			return ret;
	}
	return 0;
}

static void put(char *buf, size_t cap, size_t *n, const void *src, size_t k)
{
	if (*n < cap)
		memcpy(buf + *n, src, k < cap - *n ? k : cap - *n);
	*n += k;
}

/* Returns the byte NN of a "<0xNN>" text, or -1. */
static int parse_byte_token(const char *text, uint32_t len)
{
	unsigned v = 0;
	int i;

	if (len != 6 || memcmp(text, "<0x", 3) || text[5] != '>')
		return -1;
	for (i = 3; i < 5; i++) {
		char c = text[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else
			return -1;
	}
	return (int)v;
}

int tok_spm_piece(const struct tokenizer *tok, int32_t id, char *buf,
		  size_t cap)
{
	const struct tok_token *t = &tok->vocab[id];
	size_t n = 0, i;

	switch (t->type) {
	case TOK_TYPE_CONTROL:
		return 0;
	case TOK_TYPE_BYTE: {
		int b = parse_byte_token(t->text, t->len);

		if (b >= 0) {
			char c = (char)b;

			put(buf, cap, &n, &c, 1);
			return 1;
		}
		break;
	}
	case TOK_TYPE_USER_DEFINED:
		put(buf, cap, &n, t->text, t->len);
		return (int)n;
	default:
		break;
	}

	for (i = 0; i < t->len; i++) {
		if (i + SPM_SPACE_LEN <= t->len &&
		    !memcmp(t->text + i, SPM_SPACE, SPM_SPACE_LEN)) {
			put(buf, cap, &n, " ", 1);
			i += SPM_SPACE_LEN - 1;
		} else {
			put(buf, cap, &n, t->text + i, 1);
		}
	}
	return (int)n;
}
