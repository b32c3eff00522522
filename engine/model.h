/* SPDX-License-Identifier: MIT */
/*
 * model.h - a GGUF transformer of the llama or qwen2 architecture: its
 * hyper-parameters, its weights (pointers into the mapped file), its
 * tokenizer, and the forward pass over a KV cache.
 */
#ifndef KVCHAIN_MODEL_H
#define KVCHAIN_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

struct gguf_file;
struct tokenizer;

enum model_arch {
	MODEL_ARCH_LLAMA,
	MODEL_ARCH_QWEN2,
};

struct model_config {
	enum model_arch arch;
	uint32_t n_vocab;
	uint32_t d_model;
	uint32_t n_layers;
	uint32_t n_heads;
	uint32_t n_kv_heads;
	uint32_t head_dim;	/* d_model / n_heads */
	uint32_t d_ff;
	uint32_t n_ctx_train;	/* context_length key */
	float rms_eps;
	float rope_theta;
};

/* A weight matrix in the file: rows of n_in elements of @type. */
struct model_matrix {
	const void *data;	/* (n_out, n_in) in the mapping */
	enum kern_type type;
	uint32_t n_in;
	uint32_t n_out;
};

struct model_layer {
	float *attn_norm;	/* (d_model) */
	struct model_matrix wq;	/* (n_heads * head_dim, d_model) */
	struct model_matrix wk;	/* (n_kv_heads * head_dim, d_model) */
	struct model_matrix wv;	/* (n_kv_heads * head_dim, d_model) */
	struct model_matrix wo;	/* (d_model, n_heads * head_dim) */
	float *bq;		/* (n_heads * head_dim), qwen2 only, else NULL */
	float *bk;		/* (n_kv_heads * head_dim) */
	float *bv;		/* (n_kv_heads * head_dim) */
	float *ffn_norm;	/* (d_model) */
	struct model_matrix w_gate; /* (d_ff, d_model) */
	struct model_matrix w_up;   /* (d_ff, d_model) */
	struct model_matrix w_down; /* (d_model, d_ff) */
};

struct model {
	struct model_config cfg;
	struct gguf_file *file;
	struct tokenizer *tok;
	struct kern_rope rope;
	struct model_matrix tok_embd;	/* (n_vocab, d_model) */
	struct model_matrix output;	/* (n_vocab, d_model), tok_embd if tied */
	float *output_norm;		/* (d_model) */
	struct model_layer *layers;	/* (n_layers) */
};

/*
 * Maps the GGUF file at @path and builds the model and its tokenizer. On
 * failure returns a negative errno and a one-line message in @err naming
 * the file and the missing or invalid key or tensor.
 */
int model_load(const char *path, struct model **out, char *err,
	       size_t errlen);
void model_free(struct model *model);

/* Writes row @id of the token embedding as floats into @out (d_model). */
void model_embed(const struct model *model, int32_t id, float *out);

/* ---- KV cache -------------------------------------------------------- */

/*
 * A contiguous KV cache for one sequence: for each layer, n_ctx rows of
 * kv_dim elements of @type for keys and the same for values.
 */
struct kv_cache {
	enum kern_type type;	/* F32, F16 or Q8_0 */
	uint32_t n_ctx;
	uint32_t n_layers;
	size_t row_bytes;	/* bytes of one kv_dim row */
	uint8_t *k;		/* (n_layers, n_ctx, kv_dim) */
	uint8_t *v;		/* (n_layers, n_ctx, kv_dim) */
};

/*
 * Allocates a cache for @n_ctx positions of @model. Returns 0, -EINVAL for
 * an unsupported type (Q8_0 needs head_dim to be a multiple of 32, the
 * other types any head_dim) or a zero length, or -ENOMEM.
 */
int kv_cache_init(struct kv_cache *cache, const struct model *model,
		  uint32_t n_ctx, enum kern_type type);
void kv_cache_free(struct kv_cache *cache);

/* ---- Forward pass ---------------------------------------------------- */

struct forward_ctx;

/*
 * Creates the scratch buffers of a forward pass that handles up to
 * @max_batch tokens per call and @n_ctx positions, running its kernels on
 * @pool (may be NULL for one thread). Returns NULL when out of memory.
 */
struct forward_ctx *forward_ctx_create(const struct model *model,
				       uint32_t max_batch, uint32_t n_ctx,
				       struct kern_pool *pool);
void forward_ctx_free(struct forward_ctx *ctx);

/* At most this many key runs may be visible to one token. */
#define FORWARD_MAX_RUNS 4096

/*
 * Where a forward pass stores keys and values, and which keys each new token
 * attends to. Token t of a call (0-based over the whole call) sits at
 * position pos0 + t. Both callbacks must only read shared state, because
 * worker threads call them concurrently.
 */
struct kv_target {
	enum kern_type type;	/* element type of the rows: F32, F16, Q8_0 */
	void *arg;
	/* Returns the key row (value row if @value) of new token @t in @layer. */
	void *(*row)(void *arg, uint32_t layer, uint32_t t, bool value);
	/*
	 * Fills at most @cap runs with the keys new token @t attends to in
	 * @layer, its own key included, and returns how many it filled, or a
	 * negative errno if they do not fit.
	 */
	int (*runs)(void *arg, uint32_t layer, uint32_t t,
		    struct kern_kv_run *runs, int cap);
};

/*
 * Runs @n_tok tokens through the model like model_forward, but stores keys
 * and values and chooses the visible keys through @target. At most n_ctx
 * keys (of forward_ctx_create) may be visible to one token. Returns 0,
 * -EINVAL for an id outside the vocabulary or a target whose runs do not
 * fit (then rows may already have been written).
 */
int model_forward_target(struct forward_ctx *ctx,
			 const struct kv_target *target,
			 const int32_t *tokens, const float *embd,
			 uint32_t n_tok, uint32_t pos0, float *logits,
			 bool all_logits);

/* One sequence's share of a batched forward pass. */
struct forward_seq {
	const struct kv_target *target;
	const int32_t *tokens;	/* (n_tok), or NULL to use embd */
	const float *embd;	/* (n_tok, d_model) */
	uint32_t n_tok;
	uint32_t t0;		/* index the target gives the first token */
	uint32_t pos0;		/* position of the first token */
	float *logits;		/* n_vocab logits of the last token, or NULL */
};

/*
 * Runs several sequences, each into its own target, in one forward pass,
 * so every weight is read once for all of them. At most max_batch tokens
 * in all. Returns 0, -EINVAL for a bad id or an empty sequence, -E2BIG
 * for too many tokens, or a target's error.
 */
int model_forward_batch(struct forward_ctx *ctx,
			const struct forward_seq *seqs, uint32_t n_seqs);

/*
 * Runs @n_tok tokens at positions pos0 .. pos0 + n_tok - 1 through the
 * model, writing their keys and values into @cache and attending causally
 * to every position before them. Inputs are token ids @tokens, or, when
 * @tokens is NULL, rows of d_model floats in @embd (soft-prompt vectors).
 * Longer inputs than the context's max_batch are run in chunks.
 *
 * Writes the logits (n_vocab floats per row) of the last token into
 * @logits, or of every token when @all_logits is true (n_tok rows).
 * @logits may be NULL. Returns 0, -EINVAL for an id outside the vocabulary,
 * or -ENOSPC when the positions do not fit the cache.
 */
int model_forward(struct forward_ctx *ctx, struct kv_cache *cache,
		  const int32_t *tokens, const float *embd, uint32_t n_tok,
		  uint32_t pos0, float *logits, bool all_logits);

#endif /* KVCHAIN_MODEL_H */
