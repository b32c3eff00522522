/* SPDX-License-Identifier: MIT */
/*
 * reference.h - an independent, deliberately simple double-precision
 * forward pass of llama and qwen2 GGUF models, used by the tests to check
 * the engine's logits. It shares only the GGUF parser with the engine.
 */
#ifndef KVCHAIN_REFERENCE_H
#define KVCHAIN_REFERENCE_H

#include <stdbool.h>
#include <stdint.h>

struct ref_model;

/* Loads @path, dequantising every weight to doubles. Returns 0 or -1. */
int ref_model_load(const char *path, struct ref_model **out);
void ref_model_free(struct ref_model *m);

int ref_n_vocab(const struct ref_model *m);

/*
 * Runs @tokens (n_tok) from position 0 with a full causal mask and writes
 * n_tok rows of n_vocab logits into @logits. With @round_activations, the
 * vector each quantised weight matrix multiplies is first rounded to 8 bits
 * per block, as the engine's kernels do (blocks of 32 for Q8_0 and Q4_0,
 * 256 for Q4_K and Q6_K, scale max|x| / 127); without it the math is exact
 * up to double rounding. Returns 0 or -1.
 */
int ref_forward(struct ref_model *m, const int32_t *tokens, int n_tok,
		bool round_activations, double *logits);

#endif /* KVCHAIN_REFERENCE_H */
