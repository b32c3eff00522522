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

void *tune_core_create_f32(const struct model *model, struct kern_pool *pool,
			   uint32_t max_len);
void tune_core_free_f32(void *core);
int tune_core_forward_f32(void *core, const struct tune_layout *lay,
			  const float *const *prompts, double *loss,
			  float *logits);
int tune_core_backward_f32(void *core, double *const *grads);

void *tune_core_create_f64(const struct model *model, struct kern_pool *pool,
			   uint32_t max_len);
void tune_core_free_f64(void *core);
int tune_core_forward_f64(void *core, const struct tune_layout *lay,
			  const float *const *prompts, double *loss,
			  float *logits);
int tune_core_backward_f64(void *core, double *const *grads);

#endif /* KVCHAIN_TUNE_TRAIN_INTERNAL_H */
