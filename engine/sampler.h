/* SPDX-License-Identifier: MIT */
/*
 * sampler.h - picks the next token from a row of logits: greedy, or
 * temperature with top-k, top-p and min-p filtering, from a seeded
 * generator so a run repeats exactly.
 */
#ifndef KVCHAIN_SAMPLER_H
#define KVCHAIN_SAMPLER_H

#include <stdint.h>

struct sampler_params {
	float temperature;	/* 0 or less: greedy (argmax) */
	uint32_t top_k;		/* keep the k most likely; 0 keeps all */
	float top_p;		/* keep the smallest set with mass >= p; 1 keeps all */
	float min_p;		/* drop tokens below min_p * max prob; 0 keeps all */
	uint64_t seed;
};

/* Fills @params with greedy sampling and neutral filters. */
void sampler_params_default(struct sampler_params *params);

struct sampler;

/*
 * Creates a sampler over @n_vocab logits. Returns NULL when out of memory
 * or when a parameter is out of range (top_p or min_p outside [0, 1], a
 * temperature that is not a number).
 */
struct sampler *sampler_create(const struct sampler_params *params,
			       uint32_t n_vocab);
void sampler_free(struct sampler *s);

/*
 * Returns the sampled token id. The filters apply in this order:
 * temperature, top-k, softmax, top-p, min-p, then a draw from what is left.
 * Greedy sampling returns the lowest id among equal maximum logits.
 */
int32_t sampler_sample(struct sampler *s, const float *logits);

#endif /* KVCHAIN_SAMPLER_H */
