/* SPDX-License-Identifier: MIT */
/*
 * sampler.c - token sampling: greedy, temperature, top-k, top-p and min-p,
 * with a xoshiro256** generator seeded through splitmix64.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

struct candidate {
	int32_t id;
	float value;	/* logit, then probability */
};

struct sampler {
	struct sampler_params params;
	uint32_t n_vocab;
	uint64_t state[4];
	struct candidate *cand;	/* (n_vocab) */
};

void sampler_params_default(struct sampler_params *params)
{
	params->temperature = 0.0f;
	params->top_k = 0;
	params->top_p = 1.0f;
	params->min_p = 0.0f;
	params->seed = 0;
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(struct sampler *s)
{
	uint64_t *st = s->state;
	uint64_t result = rotl(st[1] * 5, 7) * 9;
	uint64_t t = st[1] << 17;

	st[2] ^= st[0];
	st[3] ^= st[1];
	st[1] ^= st[2];
	st[0] ^= st[3];
	st[2] ^= t;
	st[3] = rotl(st[3], 45);
	return result;
}

/* Returns a uniform double in [0, 1). */
static double next_unit(struct sampler *s)
{
	return (next_u64(s) >> 11) * 0x1.0p-53;
}

struct sampler *sampler_create(const struct sampler_params *params,
			       uint32_t n_vocab)
{
	struct sampler *s;
	uint64_t seed = params->seed;
	int i;

	if (n_vocab == 0 || isnan(params->temperature) ||
	    !(params->top_p >= 0.0f && params->top_p <= 1.0f) ||
	    !(params->min_p >= 0.0f && params->min_p <= 1.0f))
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
	if (!s->cand) {
		free(s);
		return NULL;
	}
	s->params = *params;
	s->n_vocab = n_vocab;
	for (i = 0; i < 4; i++)
		s->state[i] = splitmix64(&seed);
	return s;
}

void sampler_free(struct sampler *s)
{
	if (!s)
		return;
	free(s->cand);
	free(s);
}

static int32_t argmax(const float *logits, uint32_t n)
{
	uint32_t i, best = 0;

	for (i = 1; i < n; i++)
		if (logits[i] > logits[best])
			best = i;
	return (int32_t)best;
}

/* Orders by descending value, then ascending id, so ties are stable. */
static int by_value_desc(const void *pa, const void *pb)
{
	const struct candidate *a = pa, *b = pb;

	if (a->value > b->value)
		return -1;
	if (a->value < b->value)
		return 1;
	return (a->id > b->id) - (a->id < b->id);
}

int32_t sampler_sample(struct sampler *s, const float *logits)
{
	const struct sampler_params *p = &s->params;
	struct candidate *c = s->cand;
	uint32_t n = s->n_vocab, i, keep;
	double sum, cum, r, max;

	if (!(p->temperature > 0.0f))
		return argmax(logits, n);

	/* temperature, then sort so every filter is a prefix */
	for (i = 0; i < n; i++) {
		c[i].id = (int32_t)i;
		c[i].value = logits[i] / p->temperature;
	}
	qsort(c, n, sizeof(*c), by_value_desc);

	/* top-k */
	keep = n;
	if (p->top_k > 0 && p->top_k < keep)
		keep = p->top_k;

	/* softmax over what is left; c[0] has the largest value */
	max = c[0].value;
	sum = 0.0;
	for (i = 0; i < keep; i++) {
		c[i].value = (float)exp((double)c[i].value - max);
		sum += c[i].value;
	}
	for (i = 0; i < keep; i++)
		c[i].value = (float)(c[i].value / sum);

	/* top-p: the shortest prefix whose mass reaches p */
	if (p->top_p < 1.0f) {
		cum = 0.0;
		for (i = 0; i < keep; i++) {
			cum += c[i].value;
			if (cum >= p->top_p) {
				keep = i + 1;
				break;
			}
		}
	}

	/* min-p: drop tokens far less likely than the best one */
	if (p->min_p > 0.0f) {
		float floor_p = p->min_p * c[0].value;

		for (i = 1; i < keep; i++)
			if (c[i].value < floor_p)
				break;
		keep = i;
	}

	/* draw from the survivors, renormalised */
	sum = 0.0;
	for (i = 0; i < keep; i++)
		sum += c[i].value;
	r = next_unit(s) * sum;
	cum = 0.0;
	for (i = 0; i < keep; i++) {
		cum += c[i].value;
		if (r < cum)
			return c[i].id;
	}
	return c[keep - 1].id;
}
