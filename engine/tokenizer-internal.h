/* SPDX-License-Identifier: MIT */
/*
 * tokenizer-internal.h - the tokenizer object and the helpers its three
 * files share: tokenizer.c (vocabulary, special tokens, encode and decode
 * drivers), tokenizer-spm.c (SentencePiece-style merges) and
 * tokenizer-bpe.c (byte-level BPE with a PCRE2 pre-tokenizer).
 */
#ifndef KVCHAIN_TOKENIZER_INTERNAL_H
#define KVCHAIN_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* Maximum text length tok_encode accepts, so symbol indices fit in an int32_t
 * even after SPM turns each space into a 3-byte U+2581. */
#define TOK_MAX_TEXT ((size_t)INT32_MAX / 4)

/* Maximum token text length tok_create accepts, so a piece length fits in
 * an int. */
#define TOK_MAX_TOKEN_LEN (1u << 20)

struct tok_token {
	const char *text;	/* into tokenizer.pool, NUL-terminated */
	uint32_t len;		/* bytes, excluding the NUL */
	float score;
	int32_t type;		/* enum tok_type */
};

/* Open-addressing table from token text to id. */
struct tok_text_map {
	uint32_t *slots;	/* (mask + 1) id + 1, 0 for an empty slot */
	uint32_t mask;
};

/* Open-addressing table from a BPE pair (left id, right id) to its merge. */
struct tok_merge_slot {
	uint64_t key;		/* left << 32 | right; UINT64_MAX when empty */
	uint32_t rank;		/* 0 is merged first */
	int32_t merged;		/* id of the concatenation */
};

struct tok_merge_map {
	struct tok_merge_slot *slots;	/* (mask + 1) */
	uint32_t mask;
};

struct tokenizer {
	enum tok_kind kind;
	enum tok_pre pre;
	uint32_t n_vocab;
	struct tok_token *vocab;	/* (n_vocab) */
	char *pool;			/* every token text, NUL-separated */
	struct tok_text_map text_map;

	int32_t bos_id, eos_id, unk_id, pad_id;
	bool add_bos, add_eos, add_space_prefix;

	/* Control and user-defined tokens, longest text first. */
	int32_t *specials;		/* (n_specials) */
	uint32_t n_specials;
	uint8_t special_first[32];	/* bitmap of their first bytes */

	/* SPM: the <0xNN> token of each byte; BPE: the byte-level character
	 * token of each byte. -1 where the vocabulary has none. */
	int32_t byte_ids[256];

	/* BPE only. */
	struct tok_merge_map merge_map;
	void *regex;			/* pcre2_code_8 */
};

/* Growing list of output ids: counts every id but stores only @cap. */
struct tok_out {
	int32_t *ids;
	size_t cap;
	size_t n;
};

static inline void tok_out_push(struct tok_out *out, int32_t id)
{
	if (out->n < out->cap)
		out->ids[out->n] = id;
	out->n++;
}

/*
 * A run of text that merging treats as one unit, in a doubly linked list
 * over an array. A symbol that was merged into its left neighbour has
 * len 0.
 */
struct tok_symbol {
	uint32_t start;		/* byte offset into the text being merged */
	uint32_t len;		/* bytes */
	int32_t prev, next;	/* indices, -1 at either end */
	int32_t id;		/* BPE: the token id; SPM: unused */
};

/*
 * A candidate merge of two adjacent symbols. @left_len and @right_len are
 * the lengths the symbols had when the candidate was queued, so a candidate
 * that an earlier merge made stale is recognised when it is popped.
 */
struct tok_bigram {
	double priority;	/* lower pops first */
	uint32_t left, right;	/* symbol indices */
	uint32_t left_len, right_len;
	int32_t merged;		/* BPE: the merged id; SPM: unused */
};

/* Binary min-heap of bigrams by (priority, left), so ties go leftmost. */
struct tok_heap {
	struct tok_bigram *items;
	size_t n, cap;
};

/* Scratch arrays one tok_encode call reuses across pieces. */
struct tok_scratch {
	struct tok_symbol *symbols;
	size_t symbols_cap;
	struct tok_heap heap;
	char *buf;
	size_t buf_cap;
};

int tok_heap_push(struct tok_heap *heap, const struct tok_bigram *item);
bool tok_heap_pop(struct tok_heap *heap, struct tok_bigram *item);

int tok_scratch_symbols(struct tok_scratch *scratch, size_t n);
int tok_scratch_buf(struct tok_scratch *scratch, size_t n);

/* Returns the length (1 to 4) of the valid UTF-8 sequence at @s, or 0 when
 * the bytes there are not one (overlong, surrogate, above U+10FFFF,
 * truncated or a stray continuation byte). */
size_t tok_utf8_len(const unsigned char *s, size_t n);

/* Returns the id of the token with text @text, or -1. */
int32_t tok_lookup(const struct tokenizer *tok, const char *text,
		   size_t len);

/* Formats @len bytes of @s for an error message: quoted, non-printable
 * bytes as \xNN, cut at about 40 bytes. Returns @buf. */
const char *tok_quote(const char *s, size_t len, char *buf, size_t cap);

/* tokenizer-spm.c */
int tok_spm_init(struct tokenizer *tok, char *err, size_t errlen);
int tok_spm_encode(const struct tokenizer *tok, const char *text, size_t len,
		   bool space_prefix, struct tok_scratch *scratch,
		   struct tok_out *out);
int tok_spm_piece(const struct tokenizer *tok, int32_t id, char *buf,
		  size_t cap);

/* tokenizer-bpe.c */
int tok_bpe_init(struct tokenizer *tok, const struct tok_spec *spec,
		 char *err, size_t errlen);
void tok_bpe_free(struct tokenizer *tok);
int tok_bpe_encode(const struct tokenizer *tok, const char *text, size_t len,
		   struct tok_scratch *scratch, struct tok_out *out);
int tok_bpe_piece(const struct tokenizer *tok, int32_t id, char *buf,
		  size_t cap);

#endif /* KVCHAIN_TOKENIZER_INTERNAL_H */
