/* SPDX-License-Identifier: MIT */
/*
 * fuzz-safetensors.c - libFuzzer target for the PEFT adapter reader. Each
 * input is an adapter_model.safetensors file, parsed by
 * stage_prompt_parse_safetensors for a model of d_model 4 and an
 * adapter_config.json of num_virtual_tokens 2. A parse that succeeds must
 * return 1 to 16 prompts of 2 finite rows of 4 floats. Every float is read,
 * so ASan checks the whole buffers. A failed parse must leave no prompts and a
 * one-line, NUL-terminated message. scripts/fuzz.sh builds and runs it.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"

#define FUZZ_D_MODEL 4
#define FUZZ_VIRTUAL_TOKENS 2

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile float sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct stage_prompt *out[PROMPT_MAX_STAGES] = { NULL };
	uint32_t n = 0, i, j;
	char err[256];
	float sum = 0;

	memset(err, 'x', sizeof(err));
	if (stage_prompt_parse_safetensors(data, size, "fuzz.safetensors",
					   FUZZ_D_MODEL, FUZZ_VIRTUAL_TOKENS,
					   out, &n, err, sizeof(err))) {
		if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n') ||
		    !err[0] || n != 0)
			abort();
		for (i = 0; i < PROMPT_MAX_STAGES; i++)
			if (out[i])
				abort();
		return 0;
	}

	if (n < 1 || n > PROMPT_MAX_STAGES)
		abort();
	for (i = 0; i < n; i++) {
		const struct stage_prompt *p = out[i];

		if (!p || !p->soft || p->n != FUZZ_VIRTUAL_TOKENS ||
		    p->d_model != FUZZ_D_MODEL || !p->embd || p->tokens)
			abort();
		for (j = 0; j < FUZZ_VIRTUAL_TOKENS * FUZZ_D_MODEL; j++) {
			if (!isfinite(p->embd[j]))
				abort();
			sum += p->embd[j];
		}
	}
	sink = sum;
	for (i = 0; i < n; i++)
		stage_prompt_free(out[i]);
	return 0;
}
