/* SPDX-License-Identifier: MIT */
/*
 * random-prompt.h - seeded random soft prompts for trying chains without
 * trained adapters. The kvchain tool, the example stages and the
 * in-process test program share this one definition, so the same seed
 * gives the same embeddings bit for bit in every process.
 */
#ifndef KVCHAIN_RANDOM_PROMPT_H
#define KVCHAIN_RANDOM_PROMPT_H

#include <stddef.h>
#include <stdint.h>

/*
 * Fills @count floats with values uniform in [-0.05, 0.05) from a
 * splitmix64 stream started at @seed. Every step is exact or a single
 * IEEE rounding, so the values do not depend on the compiler.
 */
static inline void random_prompt_fill(float *embd, size_t count,
				      uint64_t seed)
{
	uint64_t x = seed, z;
	size_t i;

	for (i = 0; i < count; i++) {
		x += 0x9e3779b97f4a7c15ull;
		z = x;
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		embd[i] = ((float)(z >> 40) / 16777216.0f - 0.5f) * 0.1f;
	}
}

#endif /* KVCHAIN_RANDOM_PROMPT_H */
