/* SPDX-License-Identifier: MIT */
/*
 * tokenizer.h - text to token ids and back, from the vocabulary a GGUF file
 * carries in its tokenizer.ggml.* keys.
 *
 * Two kinds: SentencePiece-style ("llama": score-driven merges over
 * characters, U+2581 for spaces, <0xNN> byte fallback) and byte-level BPE
 * ("gpt2": ranked merges over bytes mapped to printable characters, after a
 * pre-tokenizer regex chosen by tokenizer.ggml.pre). Special tokens in text
 * are recognised only when the caller passes TOK_PARSE_SPECIAL.
 */
#ifndef KVCHAIN_TOKENIZER_H
#define KVCHAIN_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gguf_file;
struct tokenizer;

enum tok_kind {
	TOK_KIND_SPM,		/* tokenizer.ggml.model = "llama" */
	TOK_KIND_BPE,		/* tokenizer.ggml.model = "gpt2" */
};

enum tok_pre {
	TOK_PRE_GPT2,		/* "default", "gpt2" or missing */
	TOK_PRE_LLAMA3,		/* "llama3", "llama-bpe" */
	TOK_PRE_QWEN2,		/* "qwen2" */
};

/* Token types, numbered as tokenizer.ggml.token_type numbers them. */
enum tok_type {
	TOK_TYPE_NORMAL = 1,
	TOK_TYPE_UNKNOWN = 2,
	TOK_TYPE_CONTROL = 3,
	TOK_TYPE_USER_DEFINED = 4,
	TOK_TYPE_UNUSED = 5,
	TOK_TYPE_BYTE = 6,
};

/*
 * Everything a tokenizer is built from. The arrays are copied, so they need
 * not outlive tok_create. Token and merge strings are (pointer, length)
 * pairs and may hold any bytes.
 */
struct tok_spec {
	enum tok_kind kind;
	enum tok_pre pre;
	uint32_t n_vocab;
	const char *const *tokens;	/* (n_vocab) */
	const uint32_t *token_lens;	/* (n_vocab) bytes */
	const float *scores;		/* (n_vocab), may be NULL for BPE */
	const int32_t *types;		/* (n_vocab) enum tok_type, may be NULL */
	uint32_t n_merges;		/* BPE only: "left right", best first */
	const char *const *merges;	/* (n_merges) */
	const uint32_t *merge_lens;	/* (n_merges) bytes */
	int32_t bos_id;			/* -1 if none */
	int32_t eos_id;			/* -1 if none */
	int32_t unk_id;			/* -1 if none */
	int32_t pad_id;			/* -1 if none */
	bool add_bos;			/* tokenizer.ggml.add_bos_token */
	bool add_eos;			/* tokenizer.ggml.add_eos_token */
	bool add_space_prefix;		/* tokenizer.ggml.add_space_prefix */
};

/* Builds a tokenizer from @spec. Returns 0 or a negative errno, with a
 * message in @err naming the bad field or token. */
int tok_create(const struct tok_spec *spec, struct tokenizer **out,
	       char *err, size_t errlen);

/* Builds a tokenizer from the tokenizer.ggml.* keys of @file. */
int tok_load_gguf(const struct gguf_file *file, struct tokenizer **out,
		  char *err, size_t errlen);

void tok_free(struct tokenizer *tok);

enum tok_kind tok_get_kind(const struct tokenizer *tok);
uint32_t tok_n_vocab(const struct tokenizer *tok);
int32_t tok_bos(const struct tokenizer *tok);	/* -1 if none */
int32_t tok_eos(const struct tokenizer *tok);	/* -1 if none */
bool tok_is_control(const struct tokenizer *tok, int32_t id);

/* Flags of tok_encode. */
#define TOK_ADD_SPECIAL   0x1u	/* add BOS/EOS where the metadata says to */
#define TOK_PARSE_SPECIAL 0x2u	/* recognise control and user-defined token
				 * texts ("<s>") in the input as tokens */
#define TOK_NO_SPACE_PREFIX 0x4u /* do not add the SPM leading space even
				 * if the metadata asks for it */

/*
 * Encodes @len bytes of @text (any bytes; invalid UTF-8 is encoded through
 * byte tokens) into at most @cap ids. Returns the number of ids the whole
 * text needs, which may exceed @cap (then only @cap were written and the
 * caller may retry with a larger array), or a negative errno: -EINVAL when
 * a byte cannot be represented by the vocabulary, -ENOMEM.
 */
int tok_encode(const struct tokenizer *tok, const char *text, size_t len,
	       unsigned flags, int32_t *ids, size_t cap);

/*
 * Writes the bytes token @id stands for into @buf (at most @cap bytes, no
 * NUL). Control tokens give no bytes. For SPM, U+2581 becomes a space and
 * byte tokens give their byte. Returns the byte count needed (may exceed
 * @cap), or -EINVAL for an id outside the vocabulary.
 */
int tok_token_to_piece(const struct tokenizer *tok, int32_t id, char *buf,
		       size_t cap);

/* Flags of tok_decode. */
#define TOK_DECODE_KEEP_LEADING_SPACE 0x1u /* keep the SPM space prefix */

/*
 * Decodes @n ids into @buf (at most @cap bytes, NUL-terminated when room is
 * left). Drops the leading space an SPM tokenizer with add_space_prefix put
 * before the first token, so decode(encode(s)) == s. Returns the byte count
 * (excluding the NUL; may exceed @cap) or -EINVAL for a bad id.
 */
int tok_decode(const struct tokenizer *tok, const int32_t *ids, size_t n,
	       unsigned flags, char *buf, size_t cap);

/* Returns the id of the token whose text is exactly @text, or -1. */
int32_t tok_find(const struct tokenizer *tok, const char *text, size_t len);

#endif /* KVCHAIN_TOKENIZER_H */
