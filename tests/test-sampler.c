/* SPDX-License-Identifier: MIT */
/*
 * test-sampler.c - checks sampling (greedy, temperature, top-k, top-p,
 * min-p, seeds) on hand-made logits, and the generation loop's stop
 * conditions (stop strings, stop tokens, token limit) on a test model.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cunit-main.h"
#include "generate.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"
#include "testmodel.h"
#include "tokenizer.h"

#define N_DRAWS 20000

static void draw_counts(const struct sampler_params *p, const float *logits,
			uint32_t n, int *counts)
{
	struct sampler *s = sampler_create(p, n);
	int i;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	memset(counts, 0, n * sizeof(int));
	for (i = 0; i < N_DRAWS; i++) {
		int32_t id = sampler_sample(s, logits);

		CU_ASSERT_FATAL(id >= 0 && (uint32_t)id < n);
		counts[id]++;
	}
	sampler_free(s);
}

static void test_greedy(void)
{
	static const float logits[] = { 0.5f, 3.0f, -1.0f, 3.0f, 2.9f };
	struct sampler_params p;
	struct sampler *s;

	sampler_params_default(&p);
	s = sampler_create(&p, 5);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	/* Equal maxima at ids 1 and 3: the lower id wins. */
	CU_ASSERT_EQUAL(sampler_sample(s, logits), 1);
	sampler_free(s);
}

/* Draw frequencies follow softmax(logits / T) within 4 standard errors. */
static void test_temperature_frequencies(void)
{
	static const float logits[] = { 1.0f, 2.0f, 0.0f, 1.5f };
	struct sampler_params p;
	int counts[4], i;
	double z = 0.0, prob[4];

	sampler_params_default(&p);
	p.temperature = 0.7f;
	p.seed = 42;
	for (i = 0; i < 4; i++)
		z += exp(logits[i] / 0.7);
	draw_counts(&p, logits, 4, counts);
	for (i = 0; i < 4; i++) {
		double sigma;

		prob[i] = exp(logits[i] / 0.7) / z;
		sigma = sqrt(N_DRAWS * prob[i] * (1 - prob[i]));
		CU_ASSERT(fabs(counts[i] - N_DRAWS * prob[i]) < 4 * sigma);
	}
}

static void test_top_k(void)
{
	static const float logits[] = { 1.0f, 2.0f, 0.0f, 1.5f, 1.9f };
	struct sampler_params p;
	int counts[5];

	sampler_params_default(&p);
	p.temperature = 1.0f;
	p.top_k = 2;
	draw_counts(&p, logits, 5, counts);
	CU_ASSERT(counts[1] > 0);
	CU_ASSERT(counts[4] > 0);
	CU_ASSERT_EQUAL(counts[0], 0);
	CU_ASSERT_EQUAL(counts[2], 0);
	CU_ASSERT_EQUAL(counts[3], 0);
}

static void test_top_p(void)
{
	/* Probabilities about 0.64, 0.24, 0.09, 0.03: p = 0.8 keeps two. */
	static const float logits[] = { 3.0f, 2.0f, 1.0f, 0.0f };
	struct sampler_params p;
	int counts[4];

	sampler_params_default(&p);
	p.temperature = 1.0f;
	p.top_p = 0.8f;
	draw_counts(&p, logits, 4, counts);
	CU_ASSERT(counts[0] > 0);
	CU_ASSERT(counts[1] > 0);
	CU_ASSERT_EQUAL(counts[2], 0);
	CU_ASSERT_EQUAL(counts[3], 0);
}

static void test_min_p(void)
{
	/* Relative to the best: 1, 0.37, 0.14, 0.05; min_p 0.2 keeps two. */
	static const float logits[] = { 3.0f, 2.0f, 1.0f, 0.0f };
	struct sampler_params p;
	int counts[4];

	sampler_params_default(&p);
	p.temperature = 1.0f;
	p.min_p = 0.2f;
	draw_counts(&p, logits, 4, counts);
	CU_ASSERT(counts[0] > 0);
	CU_ASSERT(counts[1] > 0);
	CU_ASSERT_EQUAL(counts[2], 0);
	CU_ASSERT_EQUAL(counts[3], 0);
}

static void test_seed_repeats(void)
{
	static const float logits[] = { 1.0f, 1.1f, 0.9f, 1.05f, 1.0f };
	struct sampler_params p;
	struct sampler *a, *b, *c;
	int i, same_as_other_seed = 0;

	sampler_params_default(&p);
	p.temperature = 1.0f;
	p.seed = 1234;
	a = sampler_create(&p, 5);
	b = sampler_create(&p, 5);
	p.seed = 1235;
	c = sampler_create(&p, 5);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	for (i = 0; i < 200; i++) {
		int32_t x = sampler_sample(a, logits);

		CU_ASSERT_EQUAL(x, sampler_sample(b, logits));
		same_as_other_seed += x == sampler_sample(c, logits);
	}
	CU_ASSERT(same_as_other_seed < 200);
	sampler_free(a);
	sampler_free(b);
	sampler_free(c);
}

static void test_invalid_params(void)
{
	struct sampler_params p;

	sampler_params_default(&p);
	p.top_p = 1.5f;
	CU_ASSERT_PTR_NULL(sampler_create(&p, 4));
	sampler_params_default(&p);
	p.min_p = -0.1f;
	CU_ASSERT_PTR_NULL(sampler_create(&p, 4));
	sampler_params_default(&p);
	p.temperature = NAN;
	CU_ASSERT_PTR_NULL(sampler_create(&p, 4));
	sampler_params_default(&p);
	CU_ASSERT_PTR_NULL(sampler_create(&p, 0));
}

/* ---- Generation loop on a test model --------------------------------- */

static char model_path[] = "/tmp/kvchain-test-sampler-XXXXXX";
static struct model *model;

struct collected {
	char text[4096];
	size_t len;
	int32_t ids[256];
	int n_ids;
};

static int collect(void *arg, int32_t id, const char *text, size_t len)
{
	struct collected *c = arg;

	if (id >= 0 && c->n_ids < 256)
		c->ids[c->n_ids++] = id;
	if (c->len + len < sizeof(c->text)) {
		memcpy(c->text + c->len, text, len);
		c->len += len;
		c->text[c->len] = '\0';
	}
	return 0;
}

static int run(const struct gen_params *params, struct collected *out,
	       struct gen_stats *stats)
{
	static const int32_t prompt[] = { 5, 9, 14, 3 };
	struct kv_cache cache;
	struct forward_ctx *ctx;
	int rc;

	memset(out, 0, sizeof(*out));
	if (kv_cache_init(&cache, model, 128, KERN_TYPE_F32) < 0)
		return -1;
	ctx = forward_ctx_create(model, 16, 128, NULL);
	if (!ctx) {
		kv_cache_free(&cache);
		return -1;
	}
	rc = generate(ctx, &cache, model, prompt, 4, params, collect, out,
		      stats);
	forward_ctx_free(ctx);
	kv_cache_free(&cache);
	return rc;
}

static void test_stop_conditions(void)
{
	struct gen_params p = { .max_tokens = 40, .ignore_eos = true };
	struct collected full, cut;
	struct gen_stats st;
	char stop[8];
	const char *stops[1] = { stop };
	size_t at;

	sampler_params_default(&p.sampling);
	CU_ASSERT_EQUAL_FATAL(run(&p, &full, &st), 0);
	CU_ASSERT_EQUAL(st.n_generated, 40);
	CU_ASSERT_EQUAL(st.stop, GEN_STOP_MAX_TOKENS);
	CU_ASSERT_EQUAL(full.n_ids, 40);
	CU_ASSERT_FATAL(full.len >= 8);

	/* Stop string: the three bytes found at the middle of the text. */
	at = full.len / 2;
	memcpy(stop, full.text + at, 3);
	stop[3] = '\0';
	/* a NUL byte would end the stop string early */
	CU_ASSERT_FATAL(memchr(stop, '\0', 3) == NULL);
	p.stop_strings = stops;
	p.n_stop_strings = 1;
	CU_ASSERT_EQUAL_FATAL(run(&p, &cut, &st), 0);
	CU_ASSERT_EQUAL(st.stop, GEN_STOP_STRING);
	/* The output is the text before the first occurrence of the stop. */
	at = (size_t)((const char *)memmem(full.text, full.len, stop, 3) - full.text);
	CU_ASSERT_EQUAL(cut.len, at);
	CU_ASSERT_EQUAL(memcmp(cut.text, full.text, at), 0);

	/* Stop token: the fifth generated id ends the run before it. */
	p.n_stop_strings = 0;
	p.stop_tokens = &full.ids[4];
	p.n_stop_tokens = 1;
	CU_ASSERT_EQUAL_FATAL(run(&p, &cut, &st), 0);
	CU_ASSERT_EQUAL(st.stop, GEN_STOP_TOKEN);
	CU_ASSERT(cut.n_ids <= 4);
	CU_ASSERT_EQUAL(memcmp(cut.ids, full.ids, cut.n_ids * sizeof(int32_t)), 0);

	/* Token limit. */
	p.n_stop_tokens = 0;
	p.max_tokens = 7;
	CU_ASSERT_EQUAL_FATAL(run(&p, &cut, &st), 0);
	CU_ASSERT_EQUAL(st.n_generated, 7);
	CU_ASSERT_EQUAL(memcmp(cut.ids, full.ids, 7 * sizeof(int32_t)), 0);
}

static int setup(void)
{
	struct testmodel_opts o;
	char err[256];
	int fd;

	kern_init();
	fd = mkstemp(model_path);
	if (fd < 0)
		return 1;
	close(fd);
	testmodel_defaults(&o);
	o.seed = 3;
	if (testmodel_write(model_path, &o, err, sizeof(err)) < 0 ||
	    model_load(model_path, &model, err, sizeof(err)) < 0) {
		fprintf(stderr, "test model: %s\n", err);
		return 1;
	}
	return 0;
}

static void teardown(void)
{
	model_free(model);
	unlink(model_path);
}

static const struct test_case sampler_cases[] = {
	{ "greedy ties", test_greedy },
	{ "temperature frequencies", test_temperature_frequencies },
	{ "top-k", test_top_k },
	{ "top-p", test_top_p },
	{ "min-p", test_min_p },
	{ "seed repeats", test_seed_repeats },
	{ "invalid params", test_invalid_params },
	{ NULL, NULL },
};

static const struct test_case generate_cases[] = {
	{ "stop conditions", test_stop_conditions },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "sampler", sampler_cases },
	{ "generate", generate_cases },
};

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
