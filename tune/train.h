/* SPDX-License-Identifier: MIT */
/*
 * train.h - the training pass of kvchain-tune: a forward pass over a whole
 * FTHSS layout (tune/layout.h) with the cascade mask, the cross-entropy
 * loss on the trained output spans, and the backward pass down to the
 * soft-prompt embeddings. The base model is frozen: no weight gradients
 * are computed or stored.
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
 * (NULL for one thread). Memory grows with max_len as (n_layers + 12) *
 * max_len * d_model plus 4 * max_len * d_ff values, and two F32 (or F64)
 * copies of one layer's weights. Returns NULL when out of memory or for a
 * zero max_len.
 */
struct tune_ctx *tune_ctx_create(const struct model *model,
				 struct kern_pool *pool, uint32_t max_len,
				 enum tune_precision precision);
void tune_ctx_free(struct tune_ctx *ctx);

/*
 * Runs layout @lay through the model: prompt slot i takes its rows from
 * prompts[i] (lay->spans[i].n rows of d_model floats), content spans their
 * token embeddings. Stores in *loss the mean cross-entropy over every
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

#endif /* KVCHAIN_TUNE_TRAIN_H */
