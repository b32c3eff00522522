/* SPDX-License-Identifier: MIT */
/*
 * train.h - the training pass of kvchain-tune: a forward pass over a whole
 * FTHSS layout (tune/layout.h) with the cascade mask, the cross-entropy
 * loss on the trained output spans, and the backward pass down to the
 * soft-prompt embeddings. Prompt tuning keeps the base model frozen.
 * tune_backward_weights also computes the gradient of every weight tensor,
 * which the pretrain mode uses to build a tiny base model.
 *
 * Two precisions run the same source (tune/train-impl.h). F32 is the
 * trainer proper: its matrix products go through kern_matmul on F32 copies
 * of one layer's weights at a time. F64 makes every value a double and
 * every product a plain loop, which is slow but exact enough for
 * finite-difference checks.
 */
#ifndef KVCHAIN_TUNE_TRAIN_H
#define KVCHAIN_TUNE_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "layout.h"

struct model;

enum tune_precision {
	TUNE_F32,
	TUNE_F64,
};

struct tune_ctx;

/*
 * Creates the buffers of a training pass over layouts of up to @max_len
 * positions of @model, running matrix products and attention on @pool
 * (NULL for one thread). Memory grows with max_len as (n_layers + 13) *
 * max_len * d_model plus 4 * max_len * d_ff values, and two F32 (or F64)
 * copies of one layer's weights. When they fit in tune_keep_acts_bytes
 * (1 GiB), it also keeps every layer's activations, about n_layers *
 * max_len * (4 d_model + 2 q_dim + 2 kv_dim + 3 d_ff) values. That spares
 * the backward pass a second forward pass. Weight gradients add
 * two buffers of max(d_model, d_ff) * max_len values and one as large as
 * the largest weight. Returns NULL when out of memory or for a zero
 * max_len.
 */
struct tune_ctx *tune_ctx_create(const struct model *model,
				 struct kern_pool *pool, uint32_t max_len,
				 enum tune_precision precision);
void tune_ctx_free(struct tune_ctx *ctx);

/*
 * Runs layout @lay through the model: prompt slot i takes its rows from
 * prompts[i] (lay->spans[i].n rows of d_model floats), content spans their
 * token embeddings; @prompts may be NULL for a layout without prompt
 * slots. Without @logits, positions after the last predicted token are
 * skipped, as they cannot change the loss. Stores in *loss the mean cross-entropy over every
 * predicted token of the loss spans, or 0 when there are none. Position t
 * predicts the token at t + 1 inside such a span, and the span's last
 * position predicts its stop_id when that is set. Writes the logits of every
 * position (n_pos rows of n_vocab) into @logits unless it is NULL. Keeps
 * what tune_backward needs. Returns 0, -EINVAL for a token or stop id
 * outside the vocabulary, -E2BIG for more than max_len positions, or
 * -ENOMEM.
 */
int tune_forward(struct tune_ctx *ctx, const struct tune_layout *lay,
		 const float *const *prompts, double *loss, float *logits);

/*
 * Computes the gradient of the last tune_forward's loss with respect to
 * the prompt rows: grads[i] receives spans[i].n rows of d_model values for
 * prompt slot i, or is skipped when NULL. Returns 0, or -EINVAL when no
 * forward pass preceded it.
 */
int tune_backward(struct tune_ctx *ctx, double *const *grads);

/* Gradients of one layer's tensors, each shaped as the tensor. */
struct tune_layer_grads {
	double *attn_norm;	/* (d_model) */
	double *wq;		/* (q_dim, d_model) */
	double *wk;		/* (kv_dim, d_model) */
	double *wv;		/* (kv_dim, d_model) */
	double *wo;		/* (d_model, q_dim) */
	double *bq;		/* (q_dim), qwen2 only, else NULL */
	double *bk;		/* (kv_dim) */
	double *bv;		/* (kv_dim) */
	double *ffn_norm;	/* (d_model) */
	double *w_gate;		/* (d_ff, d_model) */
	double *w_up;		/* (d_ff, d_model) */
	double *w_down;		/* (d_model, d_ff) */
};

/* Gradients of every weight tensor of a model. */
struct tune_grads {
	double *tok_embd;	/* (n_vocab, d_model) */
	double *output;		/* (n_vocab, d_model); tok_embd when tied */
	double *output_norm;	/* (d_model) */
	struct tune_layer_grads *layers; /* (n_layers) */
};

/*
 * As tune_backward, and also adds the gradient of the last forward's loss
 * with respect to every weight into @wg (accumulating, so a batch sums
 * into one set). @grads may be NULL for a layout without prompt slots.
 * Returns 0, -EINVAL when no forward pass preceded it, or -ENOMEM.
 */
int tune_backward_weights(struct tune_ctx *ctx, double *const *grads,
			  const struct tune_grads *wg);

#endif /* KVCHAIN_TUNE_TRAIN_H */
