/* SPDX-License-Identifier: MIT */
/*
 * train.c - the public calls of the training pass: argument checks, then
 * the F32 or F64 build of train-impl.h.
 *
 * NOTE: not there yet (the rest of kvchain-tune lives in cmd-train.c,
 * data.c, optim.c and pretrain*.c):
 * - the added tag tokens of multi-round chains (trained embedding and
 *   output rows);
 * - speed: the attention backward writes the dk and dv rows of every key
 *   for every query. That is memory-bound, about a quarter of a training
 *   step on a ~100M-weight model (bench/bench-tune). Weight transposes
 *   are redone every backward pass instead of kept per layer. Pretrain
 *   runs one sequence per forward pass and keeps F64 gradients and
 *   moments (28 bytes a weight).
 * Quantised weights are dequantised to F32 here, whereas the engine
 * rounds activations to 8 bits before quantised products, so a quantised
 * model trains on slightly different logits than it serves.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>

#include "model.h"
#include "train-internal.h"

size_t tune_keep_acts_bytes = (size_t)1 << 30;

struct tune_ctx {
	const struct model *model;
	uint32_t max_len;
	enum tune_precision precision;
	void *core;
};

struct tune_ctx *tune_ctx_create(const struct model *model,
				 struct kern_pool *pool, uint32_t max_len,
				 enum tune_precision precision)
{
	struct tune_ctx *ctx;

	if (max_len == 0)
		return NULL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return NULL;
	ctx->model = model;
	ctx->max_len = max_len;
	ctx->precision = precision;
	if (precision == TUNE_F64)
		ctx->core = tune_core_create_f64(model, pool, max_len);
	else
		ctx->core = tune_core_create_f32(model, pool, max_len);
	if (!ctx->core) {
		free(ctx);
		return NULL;
	}
	return ctx;
}

void tune_ctx_free(struct tune_ctx *ctx)
{
	if (!ctx)
		return;
	if (ctx->precision == TUNE_F64)
		tune_core_free_f64(ctx->core);
	else
		tune_core_free_f32(ctx->core);
	free(ctx);
}

static bool in_vocab(const struct model *m, int32_t id)
{
	return id >= 0 && (uint32_t)id < m->cfg.n_vocab;
}

/* Checks that every token and stop id of @lay is in the vocabulary. */
static int check_layout(const struct tune_ctx *ctx,
			const struct tune_layout *lay,
			const float *const *prompts)
{
	uint32_t s, j;

	if (lay->n_pos == 0 || (lay->n_stages && !prompts))
		return -EINVAL;
	if (lay->n_pos > ctx->max_len)
		return -E2BIG;
	for (s = 0; s < lay->n_spans; s++) {
		const struct tune_span *sp = &lay->spans[s];

		if ((s < lay->n_stages) != (sp->kind == SPAN_PROMPT))
			return -EINVAL;
		if (sp->kind == SPAN_PROMPT) {
			if (!prompts[s])
				return -EINVAL;
			continue;
		}
		for (j = 0; j < sp->n; j++)
			if (!in_vocab(ctx->model, sp->tokens[j]))
				return -EINVAL;
		if (sp->stop_id >= 0 && !in_vocab(ctx->model, sp->stop_id))
			return -EINVAL;
	}
	return 0;
}

int tune_forward(struct tune_ctx *ctx, const struct tune_layout *lay,
		 const float *const *prompts, double *loss, float *logits)
{
	int rc;

	if ((rc = check_layout(ctx, lay, prompts)) < 0)
		return rc;
	if (ctx->precision == TUNE_F64)
		return tune_core_forward_f64(ctx->core, lay, prompts, loss,
					     logits);
	return tune_core_forward_f32(ctx->core, lay, prompts, loss, logits);
}

int tune_backward(struct tune_ctx *ctx, double *const *grads)
{
	return tune_backward_weights(ctx, grads, NULL);
}

int tune_backward_weights(struct tune_ctx *ctx, double *const *grads,
			  const struct tune_grads *wg)
{
	if (ctx->precision == TUNE_F64)
		return tune_core_backward_f64(ctx->core, grads, wg);
	return tune_core_backward_f32(ctx->core, grads, wg);
}
