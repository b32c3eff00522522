/* SPDX-License-Identifier: MIT */
/*
 * test-segment.c - FTHSS inference in the engine: paged KV with reference
 * counts, segments of spans, views and the cascade mask, prompt sharing,
 * drop and fork, recompute mode, and calls that must fail without a trace.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cunit-main.h"
#include "kvstore.h"
#include "model.h"
#include "prompt.h"
#include "segment.h"
#include "testmodel.h"
#include "tokenizer.h"

#define BLOCK_TOKENS 4
#define N_CTX 256
#define N_PROMPT 5

static char model_path[] = "/tmp/kvchain-test-segment-XXXXXX";
static struct model *model;

/* One engine over a store of @n_blocks blocks, and its memory. */
struct fixture {
	void *mem;
	struct kv_store *store;
	struct engine *eng;
	struct kern_pool *pool;
};

static int fixture_init(struct fixture *f, enum kern_type type,
			uint32_t n_blocks)
{
	size_t bytes = kv_store_block_bytes(model, type, BLOCK_TOKENS) * n_blocks;

	memset(f, 0, sizeof(*f));
	f->mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!f->mem)
		return -ENOMEM;
	if (kv_store_create(f->mem, bytes, model, type, BLOCK_TOKENS,
			    &f->store) < 0)
		return -EINVAL;
	f->pool = kern_pool_create(2);
	f->eng = engine_create(model, f->store, f->pool, 8, N_CTX);
	return f->eng ? 0 : -ENOMEM;
}

static void fixture_free(struct fixture *f)
{
	engine_destroy(f->eng);
	kern_pool_destroy(f->pool);
	kv_store_destroy(f->store);
	free(f->mem);
}

static uint32_t free_blocks(const struct fixture *f)
{
	struct kv_store_stats st;

	kv_store_get_stats(f->store, &st);
	return st.n_free;
}

/* A soft prompt of seeded values in [-0.5, 0.5). */
static struct stage_prompt *soft_prompt(uint32_t n, uint32_t seed)
{
	struct stage_prompt *p = calloc(1, sizeof(*p));
	uint32_t i, x = seed * 2654435761u + 1;

	p->soft = true;
	p->n = n;
	p->d_model = model->cfg.d_model;
	p->embd = malloc((size_t)n * p->d_model * sizeof(float));
	for (i = 0; i < n * p->d_model; i++) {
		x = x * 1664525u + 1013904223u;
		p->embd[i] = (float)(x >> 8) / (float)(1u << 24) - 0.5f;
	}
	return p;
}

static struct stage_prompt *hard_prompt(const int32_t *ids, uint32_t n)
{
	struct stage_prompt *p = calloc(1, sizeof(*p));

	p->n = n;
	p->tokens = malloc((size_t)n * sizeof(int32_t));
	memcpy(p->tokens, ids, (size_t)n * sizeof(int32_t));
	return p;
}

static void free_prompt(struct stage_prompt *p)
{
	free(p->embd);
	free(p->tokens);
	free(p);
}

static void make_ids(int32_t *ids, uint32_t n, uint32_t seed)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		ids[i] = (int32_t)(3 + (i * 37 + seed * 101) % (model->cfg.n_vocab - 3));
}

/* Collects generated ids and every logits row sampled from. */
struct trace {
	int32_t ids[64];
	int n_ids;
	float *rows;		/* (64, n_vocab) */
	int n_rows;
};

static int on_text(void *arg, int32_t id, const char *text, size_t len)
{
	struct trace *t = arg;

	if (id >= 0 && t->n_ids < 64)
		t->ids[t->n_ids++] = id;
	return 0;
}

static void on_logits(void *arg, const float *logits, uint32_t n)
{
	struct trace *t = arg;

	if (t->n_rows < 64)
		memcpy(t->rows + (size_t)t->n_rows++ * n, logits, n * sizeof(float));
}

static void trace_init(struct trace *t)
{
	memset(t, 0, sizeof(*t));
	t->rows = calloc((size_t)64 * model->cfg.n_vocab, sizeof(float));
}

static void greedy(struct gen_params *p, uint32_t max_tokens,
		   struct trace *t)
{
	memset(p, 0, sizeof(*p));
	sampler_params_default(&p->sampling);
	p->max_tokens = max_tokens;
	p->ignore_eos = true;
	p->on_logits = on_logits;
	p->logits_arg = t;
}

/* ---- Equivalence ------------------------------------------------------ */

/*
 * Appends whose views name every earlier span give the logits of one plain
 * causal forward over the concatenated tokens.
 */
static void check_equivalence(enum kern_type type, double tol)
{
	struct fixture f;
	struct chain *chain;
	struct segment *seg;
	struct stage_prompt *p;
	struct kv_cache cache;
	struct forward_ctx *ctx;
	int32_t all[64];
	uint32_t lens[3] = { 6, 9, 5 }, pos = N_PROMPT, i, s, n_vocab;
	uint32_t view_ids[8];
	float *want, *got;
	double worst = 0.0;

	n_vocab = model->cfg.n_vocab;
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, type, 64), 0);
	make_ids(all, 64, 1);
	p = hard_prompt(all, N_PROMPT);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)&p, 1, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);

	/* the plain forward over the same tokens, one position at a time */
	CU_ASSERT_EQUAL_FATAL(kv_cache_init(&cache, model, 64, type), 0);
	ctx = forward_ctx_create(model, 1, 64, NULL);
	want = malloc((size_t)64 * n_vocab * sizeof(float));
	got = malloc(n_vocab * sizeof(float));
	for (i = 0; i < N_PROMPT + 20; i++)
		CU_ASSERT_EQUAL(model_forward(ctx, &cache, all + i, NULL, 1, i,
					      want + (size_t)i * n_vocab, false), 0);

	for (s = 0; s < 3; s++) {
		uint32_t id;
		struct span_view view = { view_ids, s + 1 };

		for (i = 0; i <= s; i++)
			view_ids[i] = i;
		CU_ASSERT_EQUAL_FATAL(segment_append_tokens(seg, s == 0 ? SPAN_SHARED_INPUT : SPAN_STAGE_INPUT, 0,
							    all + pos, lens[s], &view, &id, got), 0);
		CU_ASSERT_EQUAL(id, s + 1);
		pos += lens[s];
		for (i = 0; i < n_vocab; i++) {
			double e = fabs(got[i] - want[(size_t)(pos - 1) * n_vocab + i]);

			if (e > worst)
				worst = e;
		}
	}
	printf("\n    %s KV: max |logit difference| %.3g (bound %.3g)",
	       kern_type_name(type), worst, tol);
	CU_ASSERT(worst <= tol);

	free(want);
	free(got);
	forward_ctx_free(ctx);
	kv_cache_free(&cache);
	segment_release(seg);
	chain_release(chain);
	free_prompt(p);
	fixture_free(&f);
}

static void test_equivalence(void)
{
	/* Same kernels, but chunks of 8 against single tokens. */
	check_equivalence(KERN_TYPE_F32, 1e-4);
	check_equivalence(KERN_TYPE_F16, 1e-4);
	check_equivalence(KERN_TYPE_Q8_0, 1e-4);
}

/* ---- Isolation -------------------------------------------------------- */

/*
 * Runs [P_A, P_B, I_ALL, I_A, O_A, O_B] where A reads only I_ALL (an
 * explicit view, so O_A does not depend on I_A), and returns B's trace.
 */
static void run_chain(const int32_t *i_all, const int32_t *i_a,
		      struct trace *b)
{
	struct fixture f;
	struct stage_prompt *p[2] = { soft_prompt(N_PROMPT, 1), soft_prompt(N_PROMPT, 2) };
	struct chain *chain;
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	struct trace a;
	uint32_t a_view_ids[1] = { 2 }, out_a;
	struct span_view a_view = { a_view_ids, 1 };

	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F32, 64), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, i_all, 6, NULL, NULL, NULL), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, i_a, 8, NULL, NULL, NULL), 0);
	trace_init(&a);
	greedy(&gp, 4, &a);
	CU_ASSERT_EQUAL(segment_generate(seg, 0, &gp, &a_view, on_text, &a, &out_a, &st), 0);
	greedy(&gp, 6, b);
	CU_ASSERT_EQUAL(segment_generate(seg, 1, &gp, NULL, on_text, b, NULL, &st), 0);
	free(a.rows);
	segment_release(seg);
	chain_release(chain);
	free_prompt(p[0]);
	free_prompt(p[1]);
	fixture_free(&f);
}

static void test_isolation(void)
{
	int32_t i_all[6], i_a[8], i_a2[8], i_all2[6];
	struct trace base, changed_a, changed_all;
	size_t bytes = (size_t)6 * model->cfg.n_vocab * sizeof(float);

	make_ids(i_all, 6, 3);
	make_ids(i_a, 8, 4);
	make_ids(i_a2, 8, 5);
	make_ids(i_all2, 6, 6);
	trace_init(&base);
	trace_init(&changed_a);
	trace_init(&changed_all);
	run_chain(i_all, i_a, &base);
	run_chain(i_all, i_a2, &changed_a);
	run_chain(i_all2, i_a, &changed_all);
	CU_ASSERT_EQUAL(base.n_rows, 6);
	CU_ASSERT_EQUAL(changed_a.n_rows, 6);
	/* I_A is outside B's view: B's logits are the same, bit for bit. */
	CU_ASSERT_EQUAL(memcmp(base.rows, changed_a.rows, bytes), 0);
	/* I_ALL is inside it: they change. */
	CU_ASSERT_NOT_EQUAL(memcmp(base.rows, changed_all.rows, bytes), 0);
	free(base.rows);
	free(changed_a.rows);
	free(changed_all.rows);
}

/* ---- Prompt sharing --------------------------------------------------- */

static void test_prompt_sharing(void)
{
	struct fixture f;
	int32_t ids[N_PROMPT];
	struct stage_prompt *p[2];
	struct chain *chain;
	struct segment *s1, *s2;
	struct span_info info;
	struct kv_cache cache;
	struct forward_ctx *ctx;
	uint32_t before, b, layer, t, kv_dim;
	int differ = 0;

	make_ids(ids, N_PROMPT, 9);
	p[0] = hard_prompt(ids, N_PROMPT);
	p[1] = soft_prompt(N_PROMPT, 4);
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F32, 64), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	before = free_blocks(&f);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &s1), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &s2), 0);

	/* two segments add references, not blocks */
	CU_ASSERT_EQUAL(free_blocks(&f), before);
	CU_ASSERT_EQUAL_FATAL(segment_span_info(s1, 0, &info), 0);
	CU_ASSERT_EQUAL(info.n_blocks, (N_PROMPT + BLOCK_TOKENS - 1) / BLOCK_TOKENS);
	for (b = 0; b < info.n_blocks; b++)
		CU_ASSERT_EQUAL(kv_block_refcount(f.store, info.blocks[b]), 3);

	/* the shared slot of stage 0 contains what a fresh sequence computes */
	CU_ASSERT_EQUAL_FATAL(kv_cache_init(&cache, model, 16, KERN_TYPE_F32), 0);
	ctx = forward_ctx_create(model, 8, 16, NULL);
	CU_ASSERT_EQUAL(model_forward(ctx, &cache, ids, NULL, N_PROMPT, 0, NULL, false), 0);
	kv_dim = model->cfg.n_kv_heads * model->cfg.head_dim;
	for (layer = 0; layer < model->cfg.n_layers; layer++) {
		for (t = 0; t < N_PROMPT; t++) {
			const float *shared_k = kv_block_row(f.store, info.blocks[t / BLOCK_TOKENS], layer, t % BLOCK_TOKENS, false);
			const float *shared_v = kv_block_row(f.store, info.blocks[t / BLOCK_TOKENS], layer, t % BLOCK_TOKENS, true);
			const float *inline_k = (const float *)(cache.k + ((size_t)layer * 16 + t) * cache.row_bytes);
			const float *inline_v = (const float *)(cache.v + ((size_t)layer * 16 + t) * cache.row_bytes);
			uint32_t i;

			for (i = 0; i < kv_dim; i++)
				differ += fabsf(shared_k[i] - inline_k[i]) > 1e-5f ||
					  fabsf(shared_v[i] - inline_v[i]) > 1e-5f;
		}
	}
	CU_ASSERT_EQUAL(differ, 0);

	/* releasing everything returns every block */
	segment_release(s1);
	segment_release(s2);
	chain_release(chain);
	CU_ASSERT_EQUAL(free_blocks(&f), 64);
	forward_ctx_free(ctx);
	kv_cache_free(&cache);
	free_prompt(p[0]);
	free_prompt(p[1]);
	fixture_free(&f);
}

/* ---- The cascade mask as a matrix ------------------------------------- */

static void check_mask(struct segment *seg, const char *const *want, size_t n)
{
	uint8_t *mask = malloc(n * n);
	size_t q, k;
	int wrong = 0;

	CU_ASSERT_EQUAL_FATAL(segment_n_positions(seg), n);
	CU_ASSERT_EQUAL_FATAL(segment_mask(seg, mask, n), 0);
	for (q = 0; q < n; q++) {
		for (k = 0; k < n; k++) {
			if (mask[q * n + k] != (want[q][k] == '1')) {
				printf("\n    mask[%zu][%zu] is %d", q, k, mask[q * n + k]);
				wrong++;
			}
		}
	}
	CU_ASSERT_EQUAL(wrong, 0);
	free(mask);
}

/* Two-token spans everywhere; outputs are BOS + one generated token. */
static void test_mask_single_round(void)
{
	/*
	 * Positions: P_A 0-1, P_B 2-3, I_ALL 4-5, I_A 6-7, O_A 8-9, O_B 10-11.
	 * I_A reads P_A and I_ALL; O_A reads P_A, I_ALL, I_A; O_B reads P_B,
	 * I_ALL and O_A but not I_A.
	 */
	static const char *const want[] = {
		"100000000000",	/* P_A */
		"110000000000",
		"001000000000",	/* P_B */
		"001100000000",
		"000010000000",	/* I_ALL */
		"000011000000",
		"110011100000",	/* I_A */
		"110011110000",
		"110011111000",	/* O_A */
		"110011111100",
		"001111001110",	/* O_B */
		"001111001111",
	};
	struct fixture f;
	struct stage_prompt *p[2] = { soft_prompt(2, 1), soft_prompt(2, 2) };
	struct chain *chain;
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	struct trace t;
	int32_t ids[2] = { 5, 6 };

	trace_init(&t);
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F16, 64), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, ids, 2, NULL, NULL, NULL), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, ids, 2, NULL, NULL, NULL), 0);
	greedy(&gp, 1, &t);
	CU_ASSERT_EQUAL(segment_generate(seg, 0, &gp, NULL, on_text, &t, NULL, &st), 0);
	t.n_rows = 0;
	CU_ASSERT_EQUAL(segment_generate(seg, 1, &gp, NULL, on_text, &t, NULL, &st), 0);
	check_mask(seg, want, 12);
	segment_release(seg);
	chain_release(chain);
	free_prompt(p[0]);
	free_prompt(p[1]);
	free(t.rows);
	fixture_free(&f);
}

static void test_mask_multi_round(void)
{
	/*
	 * Positions: P_A 0-1, P_B 2-3, I_ALL 4-5, O_1A 6-7, O_1B 8-9,
	 * O_2A 10-11, O_2B 12-13. Each output reads its own prompt, I_ALL
	 * and every earlier output.
	 */
	static const char *const want[] = {
		"10000000000000",	/* P_A */
		"11000000000000",
		"00100000000000",	/* P_B */
		"00110000000000",
		"00001000000000",	/* I_ALL */
		"00001100000000",
		"11001110000000",	/* O_1A */
		"11001111000000",
		"00111111100000",	/* O_1B */
		"00111111110000",
		"11001111111000",	/* O_2A */
		"11001111111100",
		"00111111111110",	/* O_2B */
		"00111111111111",
	};
	struct fixture f;
	struct stage_prompt *p[2] = { soft_prompt(2, 1), soft_prompt(2, 2) };
	struct chain *chain;
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	struct trace t;
	int32_t ids[2] = { 5, 6 };
	int round;

	trace_init(&t);
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F16, 64), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, ids, 2, NULL, NULL, NULL), 0);
	greedy(&gp, 1, &t);
	for (round = 0; round < 4; round++) {
		t.n_rows = 0;
		CU_ASSERT_EQUAL(segment_generate(seg, (uint32_t)(round % 2), &gp, NULL, on_text, &t, NULL, &st), 0);
	}
	check_mask(seg, want, 14);
	segment_release(seg);
	chain_release(chain);
	free_prompt(p[0]);
	free_prompt(p[1]);
	free(t.rows);
	fixture_free(&f);
}

/* ---- Drop and fork ----------------------------------------------------- */

static void test_drop_and_fork(void)
{
	struct fixture f;
	struct stage_prompt *p[2] = { soft_prompt(N_PROMPT, 1), soft_prompt(N_PROMPT, 2) };
	struct chain *chain;
	struct segment *seg, *kept, *fork;
	struct kv_store_stats before, after;
	struct span_info info;
	struct gen_params gp;
	struct gen_stats st;
	struct trace a, b_kept, b_dropped, b_fork;
	int32_t i_all[6], i_a[10];
	uint32_t id_a, n_spans;

	make_ids(i_all, 6, 1);
	make_ids(i_a, 10, 2);
	trace_init(&a);
	trace_init(&b_kept);
	trace_init(&b_dropped);
	trace_init(&b_fork);
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F16, 64), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, i_all, 6, NULL, NULL, NULL), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, i_a, 10, NULL, &id_a, NULL), 0);
	greedy(&gp, 5, &a);
	CU_ASSERT_EQUAL(segment_generate(seg, 0, &gp, NULL, on_text, &a, NULL, &st), 0);

	/* B on a fork that keeps I_A, and on the original after dropping it */
	CU_ASSERT_EQUAL_FATAL(segment_fork(seg, &kept), 0);
	CU_ASSERT_EQUAL_FATAL(segment_span_info(seg, id_a, &info), 0);
	CU_ASSERT_EQUAL(kv_block_refcount(f.store, info.blocks[0]), 2);
	kv_store_get_stats(f.store, &before);
	CU_ASSERT_EQUAL(segment_drop(kept, id_a), 0);
	kv_store_get_stats(f.store, &after);
	/* the original still references I_A, so no block returns yet */
	CU_ASSERT_EQUAL(after.n_free, before.n_free);
	segment_release(kept);

	kv_store_get_stats(f.store, &before);
	CU_ASSERT_EQUAL(segment_drop(seg, id_a), 0);
	kv_store_get_stats(f.store, &after);
	CU_ASSERT_EQUAL(after.n_free, before.n_free + (10 + BLOCK_TOKENS - 1) / BLOCK_TOKENS);
	CU_ASSERT_EQUAL(after.n_frees, before.n_frees + (10 + BLOCK_TOKENS - 1) / BLOCK_TOKENS);
	CU_ASSERT_EQUAL(segment_drop(seg, id_a), -ENOENT);

	/* B generates the same with I_A dropped as a fork that kept it would */
	CU_ASSERT_EQUAL_FATAL(segment_fork(seg, &fork), 0);
	greedy(&gp, 6, &b_fork);
	CU_ASSERT_EQUAL(segment_generate(fork, 1, &gp, NULL, on_text, &b_fork, NULL, &st), 0);
	n_spans = segment_n_spans(seg);
	greedy(&gp, 6, &b_dropped);
	CU_ASSERT_EQUAL(segment_generate(seg, 1, &gp, NULL, on_text, &b_dropped, NULL, &st), 0);
	/* the fork's generation did not add to the original */
	CU_ASSERT_EQUAL(segment_n_spans(seg), n_spans + 1);
	CU_ASSERT_EQUAL(b_dropped.n_ids, 6);
	CU_ASSERT_EQUAL(memcmp(b_dropped.ids, b_fork.ids, sizeof(b_fork.ids)), 0);
	segment_release(fork);

	/* and the same as a segment where I_A was never dropped */
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &kept), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(kept, SPAN_SHARED_INPUT, 0, i_all, 6, NULL, NULL, NULL), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(kept, SPAN_STAGE_INPUT, 0, i_a, 10, NULL, NULL, NULL), 0);
	a.n_rows = 0;
	greedy(&gp, 5, &a);
	CU_ASSERT_EQUAL(segment_generate(kept, 0, &gp, NULL, on_text, &a, NULL, &st), 0);
	greedy(&gp, 6, &b_kept);
	CU_ASSERT_EQUAL(segment_generate(kept, 1, &gp, NULL, on_text, &b_kept, NULL, &st), 0);
	CU_ASSERT_EQUAL(memcmp(b_dropped.ids, b_kept.ids, sizeof(b_kept.ids)), 0);
	segment_release(kept);

	segment_release(seg);
	chain_release(chain);
	CU_ASSERT_EQUAL(free_blocks(&f), 64);
	free(a.rows);
	free(b_kept.rows);
	free(b_dropped.rows);
	free(b_fork.rows);
	free_prompt(p[0]);
	free_prompt(p[1]);
	fixture_free(&f);
}

/* ---- Bad calls leave no trace ---------------------------------------- */

struct snapshot {
	uint32_t n_spans;
	uint32_t n_positions;
	uint32_t n_free;
};

static void snap(const struct fixture *f, const struct segment *seg,
		 struct snapshot *s)
{
	s->n_spans = segment_n_spans(seg);
	s->n_positions = segment_n_positions(seg);
	s->n_free = free_blocks(f);
}

static int unchanged(const struct fixture *f, const struct segment *seg,
		     const struct snapshot *s)
{
	struct snapshot now;

	snap(f, seg, &now);
	return now.n_spans == s->n_spans && now.n_positions == s->n_positions &&
	       now.n_free == s->n_free;
}

static void test_bad_calls(void)
{
	struct fixture f;
	struct stage_prompt *p[2] = { soft_prompt(N_PROMPT, 1), soft_prompt(N_PROMPT, 2) };
	struct stage_prompt *wide;
	struct chain *chain, *bad;
	struct segment *seg;
	struct snapshot s;
	struct gen_params gp;
	struct gen_stats st;
	struct trace t;
	int32_t ids[N_CTX];
	uint32_t ids_view[2], dropped;
	struct span_view view = { ids_view, 1 };
	char err[256];

	trace_init(&t);
	make_ids(ids, N_CTX, 7);
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F16, 40), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, ids, 4, NULL, NULL, NULL), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, ids, 4, NULL, &dropped, NULL), 0);
	CU_ASSERT_EQUAL(segment_drop(seg, dropped), 0);
	snap(&f, seg, &s);

	/* unknown span in a view */
	ids_view[0] = 99;
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 1, ids, 4, &view, NULL, NULL), -ENOENT);
	CU_ASSERT(unchanged(&f, seg, &s));
	/* a view naming the span this call would create */
	ids_view[0] = segment_n_spans(seg);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 1, ids, 4, &view, NULL, NULL), -ENOENT);
	CU_ASSERT(unchanged(&f, seg, &s));
	/* a dropped span */
	ids_view[0] = dropped;
	greedy(&gp, 3, &t);
	CU_ASSERT_EQUAL(segment_generate(seg, 1, &gp, &view, on_text, &t, NULL, &st), -ENOENT);
	CU_ASSERT(unchanged(&f, seg, &s));
	/* stage out of range, bad kind, token out of range */
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 2, ids, 4, NULL, NULL, NULL), -EINVAL);
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_PROMPT, 0, ids, 4, NULL, NULL, NULL), -EINVAL);
	ids[0] = (int32_t)model->cfg.n_vocab;
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, ids, 4, NULL, NULL, NULL), -EINVAL);
	ids[0] = 3;
	CU_ASSERT(unchanged(&f, seg, &s));
	/* context length exceeded */
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, ids, N_CTX, NULL, NULL, NULL), -E2BIG);
	CU_ASSERT(unchanged(&f, seg, &s));
	/* the store out of blocks: 40 blocks of 4 cannot take 200 tokens */
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, ids, 200, NULL, NULL, NULL), -ENOSPC);
	CU_ASSERT(unchanged(&f, seg, &s));
	greedy(&gp, 200, &t);
	CU_ASSERT_EQUAL(segment_generate(seg, 0, &gp, NULL, on_text, &t, NULL, &st), -ENOSPC);
	CU_ASSERT(unchanged(&f, seg, &s));
	/* a prompt whose width differs from d_model */
	wide = soft_prompt(N_PROMPT, 3);
	wide->d_model = model->cfg.d_model + 1;
	CU_ASSERT_EQUAL(chain_create(f.eng, (const struct stage_prompt *const *)&wide, 1, &bad, err, sizeof(err)), -EINVAL);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "d_model"));
	CU_ASSERT(unchanged(&f, seg, &s));
	/* dropping a prompt slot */
	CU_ASSERT_EQUAL(segment_drop(seg, 0), -EINVAL);
	CU_ASSERT(unchanged(&f, seg, &s));

	/* after all that, a good call still works */
	CU_ASSERT_EQUAL(segment_append_tokens(seg, SPAN_STAGE_INPUT, 1, ids, 4, NULL, NULL, NULL), 0);
	free_prompt(wide);
	segment_release(seg);
	chain_release(chain);
	CU_ASSERT_EQUAL(free_blocks(&f), 40);
	free(t.rows);
	free_prompt(p[0]);
	free_prompt(p[1]);
	fixture_free(&f);
}

/* ---- Recompute mode ---------------------------------------------------- */

/*
 * The classic chain gives stage B its prompt, then the texts of I_ALL and
 * O_A as inputs, from scratch; with the same prompt and texts it equals a
 * one-stage segment built by hand.
 */
static void test_recompute(void)
{
	struct fixture f;
	struct stage_prompt *pb = soft_prompt(N_PROMPT, 2);
	const char *texts[2] = { "the question", "the context" };
	size_t lens[2] = { 12, 11 };
	struct chain *chain;
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	struct trace r, h;

	trace_init(&r);
	trace_init(&h);
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F16, 64), 0);
	greedy(&gp, 5, &r);
	CU_ASSERT_EQUAL(engine_generate_recompute(f.eng, pb, texts, lens, 2, &gp, on_text, &r, &st), 0);
	CU_ASSERT_EQUAL(r.n_ids, 5);
	CU_ASSERT_EQUAL(free_blocks(&f), 64);

	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)&pb, 1, &chain, NULL, 0), 0);
	CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg), 0);
	CU_ASSERT_EQUAL(segment_append_text(seg, SPAN_STAGE_INPUT, 0, texts[0], lens[0], NULL, NULL, NULL), 0);
	CU_ASSERT_EQUAL(segment_append_text(seg, SPAN_STAGE_INPUT, 0, texts[1], lens[1], NULL, NULL, NULL), 0);
	greedy(&gp, 5, &h);
	CU_ASSERT_EQUAL(segment_generate(seg, 0, &gp, NULL, on_text, &h, NULL, &st), 0);
	CU_ASSERT_EQUAL(memcmp(r.ids, h.ids, sizeof(h.ids)), 0);
	CU_ASSERT_EQUAL(memcmp(r.rows, h.rows, (size_t)5 * model->cfg.n_vocab * sizeof(float)), 0);
	segment_release(seg);
	chain_release(chain);
	free(r.rows);
	free(h.rows);
	free_prompt(pb);
	fixture_free(&f);
}

/* ---- Step-wise jobs ---------------------------------------------------- */

/*
 * Two segments generating while a third appends a long input, all in the
 * same engine steps, give the tokens each gives alone; a discarded or
 * failed job leaves no trace; a segment with an open job refuses others.
 */
static void test_batched_jobs(void)
{
	struct fixture f;
	struct stage_prompt *p[2] = { soft_prompt(N_PROMPT, 1), soft_prompt(N_PROMPT, 2) };
	struct chain *chain;
	struct segment *seg[3];
	struct job *jobs[3];
	struct gen_params gp[2];
	struct gen_stats st;
	struct trace alone[2], together[2];
	struct snapshot s;
	int32_t in[2][6], longin[60];
	uint32_t i, steps = 0;

	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, KERN_TYPE_F16, 128), 0);
	CU_ASSERT_EQUAL_FATAL(chain_create(f.eng, (const struct stage_prompt *const *)p, 2, &chain, NULL, 0), 0);
	make_ids(longin, 60, 9);
	for (i = 0; i < 2; i++) {
		make_ids(in[i], 6, 20 + i);
		trace_init(&alone[i]);
		trace_init(&together[i]);
	}

	/* each generation on its own */
	for (i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg[i]), 0);
		CU_ASSERT_EQUAL(segment_append_tokens(seg[i], SPAN_SHARED_INPUT, 0, in[i], 6, NULL, NULL, NULL), 0);
		greedy(&gp[i], 5 + i, &alone[i]);
		CU_ASSERT_EQUAL(segment_generate(seg[i], i, &gp[i], NULL, on_text, &alone[i], NULL, &st), 0);
		segment_release(seg[i]);
	}

	/* both at once, beside a 60-token append that takes several steps */
	for (i = 0; i < 3; i++)
		CU_ASSERT_EQUAL_FATAL(segment_create(chain, &seg[i]), 0);
	for (i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(segment_append_tokens(seg[i], SPAN_SHARED_INPUT, 0, in[i], 6, NULL, NULL, NULL), 0);
		greedy(&gp[i], 5 + i, &together[i]);
		CU_ASSERT_EQUAL_FATAL(job_generate_start(seg[i], i, &gp[i], NULL, on_text, &together[i], &jobs[i]), 0);
	}
	CU_ASSERT_EQUAL_FATAL(job_append_start(seg[2], SPAN_SHARED_INPUT, 0, longin, 60, NULL, &jobs[2]), 0);
	CU_ASSERT_EQUAL(segment_append_tokens(seg[0], SPAN_SHARED_INPUT, 0, in[0], 6, NULL, NULL, NULL), -EBUSY);
	CU_ASSERT_EQUAL(segment_drop(seg[0], 2), -EBUSY);
	while (!job_done(jobs[0]) || !job_done(jobs[1]) || !job_done(jobs[2])) {
		CU_ASSERT_EQUAL_FATAL(engine_step(f.eng, jobs, 3, 10), 0);
		steps++;
	}
	/* 10 rows a step, two of them decodes: the append needs 8 steps */
	CU_ASSERT(steps >= 8);
	for (i = 0; i < 3; i++)
		CU_ASSERT_EQUAL(job_finish(jobs[i], true, NULL, NULL), 0);
	for (i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(together[i].n_ids, alone[i].n_ids);
		CU_ASSERT_EQUAL(memcmp(together[i].ids, alone[i].ids, sizeof(alone[i].ids)), 0);
	}
	CU_ASSERT_EQUAL(segment_n_positions(seg[2]), 2 * N_PROMPT + 60);

	/* a job closed without commit leaves the segment as it was */
	snap(&f, seg[0], &s);
	CU_ASSERT_EQUAL_FATAL(job_generate_start(seg[0], 0, &gp[0], NULL, on_text, &together[0], &jobs[0]), 0);
	CU_ASSERT_EQUAL(engine_step(f.eng, jobs, 1, 0), 0);
	CU_ASSERT_EQUAL(job_finish(jobs[0], false, NULL, NULL), -ECANCELED);
	CU_ASSERT(unchanged(&f, seg[0], &s));

	for (i = 0; i < 3; i++)
		segment_release(seg[i]);
	chain_release(chain);
	CU_ASSERT_EQUAL(free_blocks(&f), 128);
	for (i = 0; i < 2; i++) {
		free(alone[i].rows);
		free(together[i].rows);
	}
	free_prompt(p[0]);
	free_prompt(p[1]);
	fixture_free(&f);
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
	o.n_heads = 2;		/* head_dim 32, so a Q8_0 store works */
	o.n_kv_heads = 1;
	o.n_ctx = N_CTX;
	o.seed = 11;
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

static const struct test_case segment_cases[] = {
	{ "equivalence with plain forward", test_equivalence },
	{ "isolation outside the view", test_isolation },
	{ "prompt sharing", test_prompt_sharing },
	{ "mask single round", test_mask_single_round },
	{ "mask multi round", test_mask_multi_round },
	{ "drop and fork", test_drop_and_fork },
	{ "bad calls", test_bad_calls },
	{ "recompute mode", test_recompute },
	{ "batched jobs", test_batched_jobs },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "segment", segment_cases },
};

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
