/* SPDX-License-Identifier: MIT */
/*
 * train-internal.h - the two builds of the training pass (train-f32.c and
 * train-f64.c, both compiling train-impl.h) as train.c calls them. The
 * arguments are checked by train.c before these run.
 */
#ifndef KVCHAIN_TUNE_TRAIN_INTERNAL_H
#define KVCHAIN_TUNE_TRAIN_INTERNAL_H

#include "train.h"

/* Attention shape: query head h reads kv head h / (n_heads / n_kv_heads). */
struct tune_att_dims {
	uint32_t n_heads;
	uint32_t n_kv_heads;
	uint32_t head_dim;
};

/*
 * Largest memory for the activations of every layer, which spare the
 * backward pass a second forward pass; above it the backward pass
 * recomputes them layer by layer. tune_ctx_create reads it, and tests set
 * it to 0 to run the recomputing path. The default of 1 GiB is a fixed
 * guess, not measured against the machine: a ~100M-weight model (d_model
 * 1024, d_ff 2816, 12 layers) keeps them up to about 1700 positions.
 */
extern size_t tune_keep_acts_bytes;

void *tune_core_create_f32(const struct model *model, struct kern_pool *pool,
			   uint32_t max_len);
void tune_core_free_f32(void *core);
int tune_core_forward_f32(void *core, const struct tune_layout *lay,
			  const float *const *prompts, double *loss,
			  float *logits);
int tune_core_backward_f32(void *core, double *const *grads,
			    const struct tune_grads *wg);

void *tune_core_create_f64(const struct model *model, struct kern_pool *pool,
			   uint32_t max_len);
void tune_core_free_f64(void *core);
int tune_core_forward_f64(void *core, const struct tune_layout *lay,
			  const float *const *prompts, double *loss,
			  float *logits);
int tune_core_backward_f64(void *core, double *const *grads,
			    const struct tune_grads *wg);

#endif /* KVCHAIN_TUNE_TRAIN_INTERNAL_H */
