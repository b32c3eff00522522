/* SPDX-License-Identifier: MIT */
/*
 * reference.h - an independent, deliberately simple double-precision
 * forward pass of llama and qwen2 GGUF models, used by the tests to check
 * the engine's logits. It shares only the GGUF parser with the engine.
 */
#ifndef KVCHAIN_REFERENCE_H
#define KVCHAIN_REFERENCE_H

#include <stdint.h>

struct ref_model;

/* Loads @path, dequantising every weight to doubles. Returns 0 or -1. */
int ref_model_load(const char *path, struct ref_model **out);
void ref_model_free(struct ref_model *m);

int ref_n_vocab(const struct ref_model *m);

/*
 * Runs @tokens (n_tok) from position 0 with a full causal mask and writes
 * n_tok rows of n_vocab logits into @logits. Returns 0 or -1.
 */
int ref_forward(const struct ref_model *m, const int32_t *tokens, int n_tok,
		double *logits);

#endif /* KVCHAIN_REFERENCE_H */
