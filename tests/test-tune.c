/* SPDX-License-Identifier: MIT */
/*
 * test-tune.c - the training pass of kvchain-tune: each operation's
 * backward against central finite differences in double precision, the
 * whole model's prompt gradient the same way on tiny llama and qwen2
 * models, the layout's cascade mask against the engine's segment_mask(),
 * and the training forward's logits against the engine's for the same
 * spans and soft prompts.
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
#include "layout.h"
#include "model.h"
#include "ops.h"
#include "prompt.h"
#include "segment.h"
#include "testmodel.h"
#include "tokenizer.h"
#include "train.h"

/*
 * Operation checks run on doubles with step OP_STEP. For these smooth
 * functions with derivatives of order 1, the central difference is off by
 * about h^2 (1e-10) from truncation and eps / h (1e-11) from rounding, so a
 * relative error bound of 1e-6 has a wide margin, while a wrong term in a
 * backward formula shows as an error of order 1.
 */
#define OP_STEP 1e-5
#define OP_TOL 1e-6

/*
 * Whole-model checks perturb float prompt entries by about MODEL_STEP and
 * divide by the step the floats actually took, so the F64 pass sees
 * exactly the inputs the quotient assumes. Truncation then dominates: h^2
 * times third derivatives through two layers, up to 4.3e-6 relative seen
 * on these models. MODEL_TOL allows about 25 times that and is still far
 * below the error of a wrong backward term (a dropped rmsnorm term or a
 * RoPE backward with the wrong sign gave 1.4 to 2). Entries with gradients
 * below GRAD_FLOOR are compared in absolute terms against it.
 */
#define MODEL_STEP 1e-3
#define MODEL_TOL 1e-4
#define GRAD_FLOOR 1e-4

/*
 * Training forward against engine logits, both F32 weights with an F32 KV
 * store: only float rounding and summation order differ, up to 3.2e-6
 * seen. Logits here lie within about +-5, and a wrong mask moved them by
 * more than 3.
 */
#define LOGIT_TOL 1e-4

/* F32 training gradient against the F64 one, relative to the largest. */
#define F32_GRAD_TOL 1e-3

#define BLOCK_TOKENS 4
#define N_CTX 128

static char llama_path[] = "/tmp/kvchain-test-tune-llama-XXXXXX";
static char qwen2_path[] = "/tmp/kvchain-test-tune-qwen2-XXXXXX";
static char q8_path[] = "/tmp/kvchain-test-tune-q8-XXXXXX";
static struct model *llama;
static struct model *qwen2;
static struct model *llama_q8;	/* Q8_0 weight matrices */

/* ---- Helpers ---------------------------------------------------------- */

static uint64_t rng_state;

/* Returns a seeded value in [-1, 1). */
static double rnd(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (double)(rng_state >> 11) / (double)(1ull << 52) - 1.0;
}

static void fill(double *x, size_t n, double scale)
{
	size_t i;

	for (i = 0; i < n; i++)
		x[i] = scale * rnd();
}

/* Relative error of @got against @want, with @floor below which it is
 * absolute. */
static double rel_err(double got, double want, double floor)
{
	double m = fabs(want) > fabs(got) ? fabs(want) : fabs(got);

	return fabs(got - want) / (m > floor ? m : floor);
}

/* A scalar objective L = sum(c * y) of an operation's outputs y. */
static double weigh(const double *y, const double *c, size_t n)
{
	double s = 0.0;
	size_t i;

	for (i = 0; i < n; i++)
		s += y[i] * c[i];
	return s;
}

/* Computes an operation's objective for the current inputs in @arg. */
typedef double (*objective_fn)(void *arg);

/*
 * Compares @grad with central differences of @f in each x[i] and returns
 * the largest relative error.
 */
static double check_grad(objective_fn f, void *arg, double *x, size_t n,
			 const double *grad)
{
	double worst = 0.0;
	size_t i;

	for (i = 0; i < n; i++) {
		double keep = x[i], lp, lm, e;

		x[i] = keep + OP_STEP;
		lp = f(arg);
		x[i] = keep - OP_STEP;
		lm = f(arg);
		x[i] = keep;
		e = rel_err(grad[i], (lp - lm) / (2 * OP_STEP), 1.0);
		if (e > worst)
			worst = e;
	}
	return worst;
}

/* ---- Operations --------------------------------------------------------- */

#define RMS_N 16

struct rms_case {
	double x[RMS_N], c[RMS_N];
	float w[RMS_N];
};

static double rms_objective(void *arg)
{
	struct rms_case *k = arg;
	double y[RMS_N];

	tune_rmsnorm_forward(y, k->x, k->w, RMS_N, 1e-5);
	return weigh(y, k->c, RMS_N);
}

static void test_op_rmsnorm(void)
{
	struct rms_case k;
	double dx[RMS_N] = { 0 }, e;
	int i;

	rng_state = 1;
	fill(k.x, RMS_N, 1.0);
	fill(k.c, RMS_N, 1.0);
	for (i = 0; i < RMS_N; i++)
		k.w[i] = (float)(1.0 + 0.5 * rnd());
	tune_rmsnorm_backward(dx, k.x, k.w, k.c, RMS_N, 1e-5);
	e = check_grad(rms_objective, &k, k.x, RMS_N, dx);
	printf("\n    rmsnorm: relative error %.2g", e);
	CU_ASSERT(e < OP_TOL);
}

#define ROPE_HEADS 2
#define ROPE_HD 8
#define ROPE_N (ROPE_HEADS * ROPE_HD)

struct rope_case {
	struct kern_rope rope;
	double x[ROPE_N], c[ROPE_N];
	uint32_t pos;
};

static double rope_objective(void *arg)
{
	struct rope_case *k = arg;
	double y[ROPE_N];

	memcpy(y, k->x, sizeof(y));
	tune_rope(&k->rope, y, ROPE_HEADS, ROPE_HD, k->pos, false);
	return weigh(y, k->c, ROPE_N);
}

static void check_rope(bool neox)
{
	struct rope_case k;
	double dx[ROPE_N], e, worst_engine = 0.0;
	float xf[ROPE_N];
	int i;

	rng_state = neox ? 3 : 2;
	CU_ASSERT_EQUAL_FATAL(kern_rope_init(&k.rope, ROPE_HD, neox, 10000.0f,
					     1.0f, NULL, NULL), 0);
	k.pos = 7;
	fill(k.c, ROPE_N, 1.0);
	for (i = 0; i < ROPE_N; i++) {
		xf[i] = (float)rnd();
		k.x[i] = xf[i];
	}

	/* the forward rotates as the engine's kernel does */
	memcpy(dx, k.x, sizeof(dx));
	tune_rope(&k.rope, dx, ROPE_HEADS, ROPE_HD, k.pos, false);
	kern_rope_apply(&k.rope, xf, ROPE_HEADS, ROPE_HD, (int)k.pos);
	for (i = 0; i < ROPE_N; i++)
		if (fabs(dx[i] - xf[i]) > worst_engine)
			worst_engine = fabs(dx[i] - xf[i]);
	CU_ASSERT(worst_engine < 1e-6);

	/* the backward is the inverse rotation of the output gradient */
	memcpy(dx, k.c, sizeof(dx));
	tune_rope(&k.rope, dx, ROPE_HEADS, ROPE_HD, k.pos, true);
	e = check_grad(rope_objective, &k, k.x, ROPE_N, dx);
	printf("\n    rope %s: relative error %.2g, engine difference %.2g",
	       neox ? "neox" : "normal", e, worst_engine);
	CU_ASSERT(e < OP_TOL);
}

static void test_op_rope_normal(void)
{
	check_rope(false);
}

static void test_op_rope_neox(void)
{
	check_rope(true);
}

#define ATT_POS 7
#define ATT_HEADS 4
#define ATT_KV_HEADS 2
#define ATT_HD 4
#define ATT_Q (ATT_POS * ATT_HEADS * ATT_HD)
#define ATT_KV (ATT_POS * ATT_KV_HEADS * ATT_HD)

struct att_case {
	struct tune_att_dims dims;
	struct tune_runs runs;
	uint8_t mask[ATT_POS * ATT_POS];
	double q[ATT_Q], k[ATT_KV], v[ATT_KV], c[ATT_Q];
};

/* Builds runs from a dense mask, one run per stretch of ones. */
static void mask_to_runs(const uint8_t *mask, uint32_t n,
			 struct tune_runs *runs)
{
	uint32_t p, j, r = 0;

	runs->n_pos = n;
	runs->first = malloc((n + 1) * sizeof(uint32_t));
	runs->start = malloc((size_t)n * n * sizeof(uint32_t));
	runs->len = malloc((size_t)n * n * sizeof(uint32_t));
	for (p = 0; p < n; p++) {
		runs->first[p] = r;
		for (j = 0; j < n; j++) {
			if (!mask[p * n + j])
				continue;
			if (j > 0 && mask[p * n + j - 1]) {
				runs->len[r - 1]++;
				continue;
			}
			runs->start[r] = j;
			runs->len[r] = 1;
			r++;
		}
	}
	runs->first[n] = r;
}

static double att_objective(void *arg)
{
	struct att_case *k = arg;
	double o[ATT_Q], lse[ATT_POS * ATT_HEADS], scratch[ATT_POS];

	tune_attention_forward(&k->dims, &k->runs, k->q, k->k, k->v, o, lse,
			       0, ATT_HEADS, scratch);
	return weigh(o, k->c, ATT_Q);
}

/* The masked attention written out densely, as the test's own reference. */
static void dense_attention(const struct att_case *k, double *o)
{
	int p, h, j, i, g, kvd = ATT_KV_HEADS * ATT_HD;

	for (p = 0; p < ATT_POS; p++)
		for (h = 0; h < ATT_HEADS; h++) {
			double w[ATT_POS], mx = -INFINITY, sum = 0.0;

			g = h / (ATT_HEADS / ATT_KV_HEADS);
			for (j = 0; j < ATT_POS; j++) {
				double s = 0.0;

				if (!k->mask[p * ATT_POS + j])
					continue;
				for (i = 0; i < ATT_HD; i++)
					s += k->q[(p * ATT_HEADS + h) * ATT_HD + i] *
					     k->k[j * kvd + g * ATT_HD + i];
				w[j] = s / sqrt((double)ATT_HD);
				if (w[j] > mx)
					mx = w[j];
			}
			for (j = 0; j < ATT_POS; j++)
				if (k->mask[p * ATT_POS + j])
					sum += exp(w[j] - mx);
			for (i = 0; i < ATT_HD; i++) {
				double s = 0.0;

				for (j = 0; j < ATT_POS; j++)
					if (k->mask[p * ATT_POS + j])
						s += exp(w[j] - mx) / sum *
						     k->v[j * kvd + g * ATT_HD + i];
				o[(p * ATT_HEADS + h) * ATT_HD + i] = s;
			}
		}
}

static void test_op_attention(void)
{
	static struct att_case k;
	double o[ATT_Q], want[ATT_Q], lse[ATT_POS * ATT_HEADS];
	double dq[ATT_Q], dk[ATT_KV], dv[ATT_KV], scratch[2 * ATT_POS];
	double eq, ek, ev, ef = 0.0;
	int p, j;

	rng_state = 4;
	k.dims = (struct tune_att_dims){ ATT_HEADS, ATT_KV_HEADS, ATT_HD };
	/* a mask with holes: each query sees itself and some earlier keys */
	for (p = 0; p < ATT_POS; p++)
		for (j = 0; j < ATT_POS; j++)
			k.mask[p * ATT_POS + j] = j == p ||
						  (j < p && (p * 3 + j) % 4 != 0);
	mask_to_runs(k.mask, ATT_POS, &k.runs);
	fill(k.q, ATT_Q, 1.0);
	fill(k.k, ATT_KV, 1.0);
	fill(k.v, ATT_KV, 1.0);
	fill(k.c, ATT_Q, 1.0);

	tune_attention_forward(&k.dims, &k.runs, k.q, k.k, k.v, o, lse, 0,
			       ATT_HEADS, scratch);
	dense_attention(&k, want);
	for (p = 0; p < ATT_Q; p++)
		if (fabs(o[p] - want[p]) > ef)
			ef = fabs(o[p] - want[p]);
	CU_ASSERT(ef < 1e-12);

	tune_attention_backward(&k.dims, &k.runs, k.q, k.k, k.v, lse, k.c, dq,
				dk, dv, 0, ATT_KV_HEADS, scratch);
	eq = check_grad(att_objective, &k, k.q, ATT_Q, dq);
	ek = check_grad(att_objective, &k, k.k, ATT_KV, dk);
	ev = check_grad(att_objective, &k, k.v, ATT_KV, dv);
	printf("\n    attention: forward %.2g, dq %.2g, dk %.2g, dv %.2g",
	       ef, eq, ek, ev);
	CU_ASSERT(eq < OP_TOL);
	CU_ASSERT(ek < OP_TOL);
	CU_ASSERT(ev < OP_TOL);
	tune_runs_free(&k.runs);
}

#define FF_N 12

struct swiglu_case {
	double g[FF_N], u[FF_N], c[FF_N];
};

static double swiglu_objective(void *arg)
{
	struct swiglu_case *k = arg;
	double a[FF_N];

	tune_swiglu_forward(a, k->g, k->u, FF_N);
	return weigh(a, k->c, FF_N);
}

static void test_op_swiglu(void)
{
	struct swiglu_case k;
	double dg[FF_N], du[FF_N], eg, eu;

	rng_state = 5;
	fill(k.g, FF_N, 3.0);
	fill(k.u, FF_N, 1.0);
	fill(k.c, FF_N, 1.0);
	tune_swiglu_backward(dg, du, k.g, k.u, k.c, FF_N);
	eg = check_grad(swiglu_objective, &k, k.g, FF_N, dg);
	eu = check_grad(swiglu_objective, &k, k.u, FF_N, du);
	printf("\n    swiglu: dg %.2g, du %.2g", eg, eu);
	CU_ASSERT(eg < OP_TOL);
	CU_ASSERT(eu < OP_TOL);
}

#define LIN_IN 7
#define LIN_OUT 5
#define LIN_TOK 3

struct linear_case {
	double w[LIN_OUT * LIN_IN], x[LIN_TOK * LIN_IN];
	double c[LIN_TOK * LIN_OUT];
	float b[LIN_OUT];
};

static double linear_objective(void *arg)
{
	struct linear_case *k = arg;
	double y[LIN_TOK * LIN_OUT];

	tune_linear_forward(NULL, y, k->w, k->b, k->x, LIN_IN, LIN_OUT,
			    LIN_TOK);
	return weigh(y, k->c, LIN_TOK * LIN_OUT);
}

static void test_op_linear(void)
{
	struct linear_case k;
	double wt[LIN_IN * LIN_OUT], dx[LIN_TOK * LIN_IN], e;
	int i, o;

	rng_state = 6;
	fill(k.w, LIN_OUT * LIN_IN, 1.0);
	fill(k.x, LIN_TOK * LIN_IN, 1.0);
	fill(k.c, LIN_TOK * LIN_OUT, 1.0);
	for (o = 0; o < LIN_OUT; o++)
		k.b[o] = (float)rnd();
	for (o = 0; o < LIN_OUT; o++)
		for (i = 0; i < LIN_IN; i++)
			wt[i * LIN_OUT + o] = k.w[o * LIN_IN + i];
	tune_linear_backward(NULL, dx, wt, k.c, LIN_IN, LIN_OUT, LIN_TOK);
	e = check_grad(linear_objective, &k, k.x, LIN_TOK * LIN_IN, dx);
	printf("\n    linear: relative error %.2g", e);
	CU_ASSERT(e < OP_TOL);
}

#define XENT_N 10
#define XENT_TARGET 6

static double xent_objective(void *arg)
{
	const double *z = arg;

	return tune_logsumexp(z, XENT_N) - z[XENT_TARGET];
}

static void test_op_cross_entropy(void)
{
	double z[XENT_N], dz[XENT_N], lse, e;
	double loss_at_mode;

	rng_state = 7;
	fill(z, XENT_N, 3.0);
	lse = tune_logsumexp(z, XENT_N);

	/* two chunks of the vocabulary, as the output head runs it */
	tune_xent_backward(dz, z, 4, 0, XENT_TARGET, lse, 1.0);
	tune_xent_backward(dz + 4, z + 4, XENT_N - 4, 4, XENT_TARGET, lse,
			   1.0);
	e = check_grad(xent_objective, z, z, XENT_N, dz);
	printf("\n    cross-entropy: relative error %.2g", e);
	CU_ASSERT(e < OP_TOL);

	/* a target far ahead of the rest costs almost nothing */
	z[XENT_TARGET] = 50.0;
	loss_at_mode = xent_objective(z);
	CU_ASSERT(loss_at_mode >= 0.0);
	CU_ASSERT(loss_at_mode < 1e-15);
}

/* ---- Engine segments and layouts --------------------------------------- */

/* One span of a test chain: its kind, stage and length. */
struct span_spec {
	enum span_kind kind;
	uint32_t stage;
	uint32_t n;
};

static const struct span_spec single_round[] = {
	{ SPAN_SHARED_INPUT, 0, 6 },
	{ SPAN_STAGE_INPUT, 0, 5 },
	{ SPAN_STAGE_OUTPUT, 0, 4 },
	{ SPAN_STAGE_OUTPUT, 1, 5 },
};

static const struct span_spec multi_round[] = {
	{ SPAN_SHARED_INPUT, 0, 5 },
	{ SPAN_STAGE_OUTPUT, 0, 3 },
	{ SPAN_STAGE_OUTPUT, 1, 4 },
	{ SPAN_STAGE_OUTPUT, 0, 3 },
	{ SPAN_STAGE_OUTPUT, 1, 3 },
};

#define N_SPECS(a) (sizeof(a) / sizeof((a)[0]))

static const uint32_t slot_rows[2] = { 3, 4 };

/* Soft prompts of seeded values in [-0.5, 0.5), one per stage. */
struct prompts {
	float *embd[2];
	struct stage_prompt *p[2];
};

static void prompts_init(struct prompts *pr, const struct model *m,
			 uint64_t seed)
{
	uint32_t s, i, d = m->cfg.d_model;

	rng_state = seed;
	for (s = 0; s < 2; s++) {
		pr->embd[s] = malloc((size_t)slot_rows[s] * d * sizeof(float));
		for (i = 0; i < slot_rows[s] * d; i++)
			pr->embd[s][i] = (float)(0.5 * rnd());
		CU_ASSERT_EQUAL(stage_prompt_soft(m, pr->embd[s], slot_rows[s],
						  d, &pr->p[s], NULL, 0), 0);
	}
}

static void prompts_free(struct prompts *pr)
{
	uint32_t s;

	for (s = 0; s < 2; s++) {
		stage_prompt_free(pr->p[s]);
		free(pr->embd[s]);
	}
}

/*
 * The logits the engine produced at each position: after the last token
 * of an appended span, and at every fed position of a generated one but
 * its last. have[p] marks the positions recorded.
 */
struct engine_logits {
	uint32_t n_vocab;
	float *rows;		/* (N_CTX, n_vocab) */
	uint8_t have[N_CTX];
	uint32_t next;		/* position the next generated row is for */
};

static void on_logits(void *arg, const float *logits, uint32_t n)
{
	struct engine_logits *el = arg;

	if (el->next >= N_CTX)
		return;
	memcpy(el->rows + (size_t)el->next * n, logits, n * sizeof(float));
	el->have[el->next++] = 1;
}

/* An engine over an F32 store, and what runs on it. */
struct fixture {
	const struct model *model;
	void *mem;
	struct kv_store *store;
	struct engine *eng;
	struct chain *chain;
	struct segment *seg;
};

static int fixture_init(struct fixture *f, const struct model *m,
			const struct prompts *pr)
{
	size_t bytes = kv_store_block_bytes(m, KERN_TYPE_F32, BLOCK_TOKENS) * 96;

	memset(f, 0, sizeof(*f));
	f->model = m;
	f->mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!f->mem)
		return -ENOMEM;
	if (kv_store_create(f->mem, bytes, m, KERN_TYPE_F32, BLOCK_TOKENS,
			    &f->store) < 0)
		return -EINVAL;
	f->eng = engine_create(m, f->store, NULL, 8, N_CTX);
	if (!f->eng)
		return -ENOMEM;
	if (chain_create(f->eng, (const struct stage_prompt *const *)pr->p, 2,
			 &f->chain, NULL, 0) < 0)
		return -EINVAL;
	return segment_create(f->chain, &f->seg);
}

static void fixture_free(struct fixture *f)
{
	if (f->seg)
		segment_release(f->seg);
	if (f->chain)
		chain_release(f->chain);
	engine_destroy(f->eng);
	kv_store_destroy(f->store);
	free(f->mem);
}

/*
 * Builds the spans @specs in the segment: inputs by appends of seeded ids,
 * outputs by greedy generation of n - 1 tokens past EOS, so every span has
 * the requested length. Records the engine's logits in @el.
 */
static int build_segment(struct fixture *f, const struct span_spec *specs,
			 uint32_t n_specs, struct engine_logits *el)
{
	const struct model *m = f->model;
	uint32_t s, i, id;
	int32_t ids[16];
	int rc;

	for (s = 0; s < n_specs; s++) {
		const struct span_spec *sp = &specs[s];
		uint32_t pos0 = segment_n_positions(f->seg);

		if (sp->kind != SPAN_STAGE_OUTPUT) {
			for (i = 0; i < sp->n; i++)
				ids[i] = (int32_t)(3 + (i * 37 + s * 101) %
						   (m->cfg.n_vocab - 3));
			rc = segment_append_tokens(f->seg, sp->kind, sp->stage,
						   ids, sp->n, NULL, &id,
						   el->rows + (size_t)(pos0 + sp->n - 1) *
						   el->n_vocab);
			el->have[pos0 + sp->n - 1] = 1;
		} else {
			struct gen_params gp;
			struct gen_stats st;

			memset(&gp, 0, sizeof(gp));
			sampler_params_default(&gp.sampling);
			gp.max_tokens = sp->n - 1;
			gp.ignore_eos = true;
			gp.on_logits = on_logits;
			gp.logits_arg = el;
			el->next = pos0;
			rc = segment_generate(f->seg, sp->stage, &gp, NULL, NULL,
					      NULL, &id, &st);
			CU_ASSERT_EQUAL(el->next, pos0 + sp->n - 1);
		}
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Builds the training layout of the segment's spans, read back from it. */
static int layout_of_segment(const struct fixture *f, struct tune_layout *lay)
{
	uint32_t s, n = segment_n_spans(f->seg);
	struct span_info info;
	int rc;

	if ((rc = tune_layout_init(lay, 2, slot_rows)) < 0)
		return rc;
	for (s = 2; s < n; s++) {
		if ((rc = segment_span_info(f->seg, s, &info)) < 0)
			return rc;
		rc = tune_layout_add(lay, info.kind, info.stage, info.tokens,
				     info.n, false, -1);
		if (rc < 0)
			return rc;
		CU_ASSERT_EQUAL(lay->spans[s].pos0, info.pos0);
	}
	return 0;
}

static void check_mask(const struct span_spec *specs, uint32_t n_specs)
{
	struct prompts pr;
	struct fixture f;
	struct engine_logits el = { 0 };
	struct tune_layout lay;
	uint8_t *want, *got;
	uint32_t n, s;

	prompts_init(&pr, llama, 21);
	el.n_vocab = llama->cfg.n_vocab;
	el.rows = calloc((size_t)N_CTX * el.n_vocab, sizeof(float));
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, llama, &pr), 0);
	CU_ASSERT_EQUAL_FATAL(build_segment(&f, specs, n_specs, &el), 0);
	CU_ASSERT_EQUAL_FATAL(layout_of_segment(&f, &lay), 0);

	n = segment_n_positions(f.seg);
	CU_ASSERT_EQUAL(lay.n_pos, n);
	for (s = 0; s < n_specs; s++)
		CU_ASSERT_EQUAL(lay.spans[2 + s].n, specs[s].n);
	want = malloc((size_t)n * n);
	got = malloc((size_t)n * n);
	CU_ASSERT_EQUAL(segment_mask(f.seg, want, n), 0);
	CU_ASSERT_EQUAL(tune_layout_mask(&lay, got, n), 0);
	CU_ASSERT(memcmp(want, got, (size_t)n * n) == 0);

	free(want);
	free(got);
	free(el.rows);
	tune_layout_free(&lay);
	fixture_free(&f);
	prompts_free(&pr);
}

static void test_mask_single_round(void)
{
	check_mask(single_round, N_SPECS(single_round));
}

static void test_mask_multi_round(void)
{
	check_mask(multi_round, N_SPECS(multi_round));
}

/* Compares the training forward's logits with the engine's, per position. */
static void check_logits(const struct model *m, const char *name,
			 const struct span_spec *specs, uint32_t n_specs,
			 enum tune_precision precision)
{
	struct prompts pr;
	struct fixture f;
	struct engine_logits el = { 0 };
	struct tune_layout lay;
	struct tune_ctx *ctx;
	const float *prompt_rows[2];
	float *logits;
	double loss, worst = 0.0;
	uint32_t p, i, n_checked = 0;

	prompts_init(&pr, m, 22);
	el.n_vocab = m->cfg.n_vocab;
	el.rows = calloc((size_t)N_CTX * el.n_vocab, sizeof(float));
	CU_ASSERT_EQUAL_FATAL(fixture_init(&f, m, &pr), 0);
	CU_ASSERT_EQUAL_FATAL(build_segment(&f, specs, n_specs, &el), 0);
	CU_ASSERT_EQUAL_FATAL(layout_of_segment(&f, &lay), 0);

	ctx = tune_ctx_create(m, NULL, lay.n_pos, precision);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
	logits = malloc((size_t)lay.n_pos * el.n_vocab * sizeof(float));
	prompt_rows[0] = pr.embd[0];
	prompt_rows[1] = pr.embd[1];
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, prompt_rows, &loss, logits), 0);
	CU_ASSERT_EQUAL(loss, 0.0);
	for (p = 0; p < lay.n_pos; p++) {
		if (!el.have[p])
			continue;
		n_checked++;
		for (i = 0; i < el.n_vocab; i++) {
			double e = fabs(logits[(size_t)p * el.n_vocab + i] -
					el.rows[(size_t)p * el.n_vocab + i]);

			if (e > worst)
				worst = e;
		}
	}
	printf("\n    %s %s: %u positions, max |logit difference| %.2g",
	       name, precision == TUNE_F64 ? "F64" : "F32", n_checked, worst);
	CU_ASSERT(n_checked >= 2 + n_specs);
	CU_ASSERT(worst < LOGIT_TOL);

	free(logits);
	tune_ctx_free(ctx);
	free(el.rows);
	tune_layout_free(&lay);
	fixture_free(&f);
	prompts_free(&pr);
}

static void test_logits_llama(void)
{
	check_logits(llama, "llama single", single_round,
		     N_SPECS(single_round), TUNE_F32);
	check_logits(llama, "llama multi", multi_round, N_SPECS(multi_round),
		     TUNE_F32);
	check_logits(llama, "llama single", single_round,
		     N_SPECS(single_round), TUNE_F64);
}

static void test_logits_qwen2(void)
{
	check_logits(qwen2, "qwen2 single", single_round,
		     N_SPECS(single_round), TUNE_F32);
	check_logits(qwen2, "qwen2 multi", multi_round, N_SPECS(multi_round),
		     TUNE_F32);
	check_logits(qwen2, "qwen2 multi", multi_round, N_SPECS(multi_round),
		     TUNE_F64);
}

/* ---- Whole-model gradients ----------------------------------------------- */

/*
 * The single-round layout [P_A, P_B, I_ALL, I_A, O_A, O_B] with seeded ids;
 * the loss on O_A (stage A training) or on O_B, which ends in EOS.
 */
static void make_layout(const struct model *m, struct tune_layout *lay,
			bool train_b)
{
	int32_t ids[8];
	uint32_t s, i;
	int32_t eos = tok_eos(m->tok);

	CU_ASSERT_FATAL(eos >= 0);
	CU_ASSERT_EQUAL_FATAL(tune_layout_init(lay, 2, slot_rows), 0);
	for (s = 0; s < N_SPECS(single_round); s++) {
		const struct span_spec *sp = &single_round[s];
		bool loss = sp->kind == SPAN_STAGE_OUTPUT &&
			    sp->stage == (train_b ? 1u : 0u);

		for (i = 0; i < sp->n; i++)
			ids[i] = (int32_t)(3 + (i * 53 + s * 31) %
					   (m->cfg.n_vocab - 3));
		if (sp->kind == SPAN_STAGE_OUTPUT)
			ids[0] = tok_bos(m->tok);
		CU_ASSERT_EQUAL_FATAL(tune_layout_add(lay, sp->kind, sp->stage,
						      ids, sp->n, loss,
						      loss && train_b ? eos : -1),
				      0);
	}
}

/* Returns the loss of the F64 pass for the prompts @rows. */
static double loss_of(struct tune_ctx *ctx, const struct tune_layout *lay,
		      float **rows)
{
	double loss = NAN;

	CU_ASSERT_EQUAL(tune_forward(ctx, lay, (const float *const *)rows,
				     &loss, NULL), 0);
	return loss;
}

static void check_model_grad(const struct model *m, const char *name)
{
	struct tune_layout lay;
	struct tune_ctx *ctx, *ctx32;
	struct kern_pool *pool = kern_pool_create(2);
	struct prompts pr;
	uint32_t d = m->cfg.d_model, s, k;
	double *grad[2], *grad32[2], loss, loss32, worst = 0.0, worst32 = 0.0;
	double norm[2] = { 0.0, 0.0 }, big = 0.0;

	prompts_init(&pr, m, 23);
	make_layout(m, &lay, true);
	ctx = tune_ctx_create(m, NULL, lay.n_pos, TUNE_F64);
	/* two threads split the F32 pass's attention heads */
	ctx32 = tune_ctx_create(m, pool, lay.n_pos, TUNE_F32);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx32);
	for (s = 0; s < 2; s++) {
		grad[s] = calloc((size_t)slot_rows[s] * d, sizeof(double));
		grad32[s] = calloc((size_t)slot_rows[s] * d, sizeof(double));
	}

	loss = loss_of(ctx, &lay, pr.embd);
	CU_ASSERT(loss > 0.0);
	CU_ASSERT_EQUAL(tune_backward(ctx, grad), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx32, &lay,
				     (const float *const *)pr.embd, &loss32,
				     NULL), 0);
	CU_ASSERT_EQUAL(tune_backward(ctx32, grad32), 0);
	CU_ASSERT(fabs(loss32 - loss) < 1e-5 * loss);

	/* a sample of entries of both slots against central differences */
	rng_state = 99;
	for (k = 0; k < 24; k++) {
		uint32_t slot = k % 2;
		uint32_t idx = (uint32_t)((rnd() + 1.0) / 2.0 *
					  slot_rows[slot] * d);
		float keep = pr.embd[slot][idx], up, down;
		double lp, lm, fd, e;

		up = keep + (float)MODEL_STEP;
		down = keep - (float)MODEL_STEP;
		pr.embd[slot][idx] = up;
		lp = loss_of(ctx, &lay, pr.embd);
		pr.embd[slot][idx] = down;
		lm = loss_of(ctx, &lay, pr.embd);
		pr.embd[slot][idx] = keep;
		fd = (lp - lm) / ((double)up - (double)down);
		e = rel_err(grad[slot][idx], fd, GRAD_FLOOR);
		if (e > worst)
			worst = e;
	}

	/* both slots matter to O_B: P_B directly, P_A through O_A's keys */
	for (s = 0; s < 2; s++)
		for (k = 0; k < slot_rows[s] * d; k++) {
			norm[s] += grad[s][k] * grad[s][k];
			if (fabs(grad[s][k]) > big)
				big = fabs(grad[s][k]);
		}
	for (s = 0; s < 2; s++)
		for (k = 0; k < slot_rows[s] * d; k++) {
			double e = fabs(grad32[s][k] - grad[s][k]) / big;

			if (e > worst32)
				worst32 = e;
		}
	printf("\n    %s: loss %.4f, |dP_A| %.3g, |dP_B| %.3g, "
	       "finite differences %.2g, F32 against F64 %.2g",
	       name, loss, sqrt(norm[0]), sqrt(norm[1]), worst, worst32);
	CU_ASSERT(norm[0] > 0.0);
	CU_ASSERT(norm[1] > 0.0);
	CU_ASSERT(worst < MODEL_TOL);
	CU_ASSERT(worst32 < F32_GRAD_TOL);

	for (s = 0; s < 2; s++) {
		free(grad[s]);
		free(grad32[s]);
	}
	tune_ctx_free(ctx);
	tune_ctx_free(ctx32);
	kern_pool_destroy(pool);
	tune_layout_free(&lay);
	prompts_free(&pr);
}

static void test_grad_llama(void)
{
	check_model_grad(llama, "llama");
}

static void test_grad_qwen2(void)
{
	check_model_grad(qwen2, "qwen2");
}

/*
 * Trained on O_A, the loss cannot depend on P_B: no span O_A reads (I_ALL,
 * I_A, P_A) reads P_B, so its gradient must be exactly zero.
 */
static void test_grad_q8_0(void)
{
	check_model_grad(llama_q8, "llama Q8_0");
}

static void test_grad_masked_slot(void)
{
	struct tune_layout lay;
	struct tune_ctx *ctx;
	struct prompts pr;
	uint32_t d = llama->cfg.d_model, s, k;
	double *grad[2], loss, norm[2] = { 0.0, 0.0 };

	prompts_init(&pr, llama, 24);
	make_layout(llama, &lay, false);
	ctx = tune_ctx_create(llama, NULL, lay.n_pos, TUNE_F32);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
	for (s = 0; s < 2; s++)
		grad[s] = calloc((size_t)slot_rows[s] * d, sizeof(double));
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, (const float *const *)pr.embd,
				     &loss, NULL), 0);
	CU_ASSERT(loss > 0.0);
	CU_ASSERT_EQUAL(tune_backward(ctx, grad), 0);
	for (s = 0; s < 2; s++)
		for (k = 0; k < slot_rows[s] * d; k++)
			norm[s] += grad[s][k] * grad[s][k];
	CU_ASSERT(norm[0] > 0.0);
	CU_ASSERT_EQUAL(norm[1], 0.0);

	for (s = 0; s < 2; s++)
		free(grad[s]);
	tune_ctx_free(ctx);
	tune_layout_free(&lay);
	prompts_free(&pr);
}

/* Calls the pass must reject. */
static void test_bad_calls(void)
{
	struct tune_layout lay;
	struct tune_ctx *ctx;
	struct prompts pr;
	uint32_t zero_rows[2] = { 3, 0 };
	int32_t good[2] = { 5, 6 }, bad[2] = { 5, (int32_t)llama->cfg.n_vocab };
	double loss, *grad[2] = { NULL, NULL };

	CU_ASSERT_EQUAL(tune_layout_init(&lay, 2, zero_rows), -EINVAL);
	CU_ASSERT_EQUAL(tune_layout_init(&lay, 0, slot_rows), -EINVAL);
	CU_ASSERT_EQUAL_FATAL(tune_layout_init(&lay, 2, slot_rows), 0);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_PROMPT, 0, good, 1, false,
					-1), -EINVAL);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_INPUT, 2, good, 1,
					false, -1), -EINVAL);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_INPUT, 0, good, 1,
					true, -1), -EINVAL);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_INPUT, 0, good, 0,
					false, -1), -EINVAL);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_OUTPUT, 0, good, 2,
					true, -2), -EINVAL);
	CU_ASSERT_EQUAL(lay.n_spans, 2);
	CU_ASSERT_EQUAL(lay.n_pos, 7);

	prompts_init(&pr, llama, 25);
	ctx = tune_ctx_create(llama, NULL, 9, TUNE_F32);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
	CU_ASSERT_EQUAL(tune_backward(ctx, grad), -EINVAL);

	/* an id outside the vocabulary */
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_INPUT, 0, bad, 2,
					false, -1), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, (const float *const *)pr.embd,
				     &loss, NULL), -EINVAL);
	tune_layout_free(&lay);

	/* a stop id outside the vocabulary */
	CU_ASSERT_EQUAL_FATAL(tune_layout_init(&lay, 2, slot_rows), 0);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_OUTPUT, 0, good, 2,
					true, bad[1]), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, (const float *const *)pr.embd,
				     &loss, NULL), -EINVAL);
	tune_layout_free(&lay);

	/* more positions than max_len */
	CU_ASSERT_EQUAL_FATAL(tune_layout_init(&lay, 2, slot_rows), 0);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_INPUT, 0, good, 2,
					false, -1), 0);
	CU_ASSERT_EQUAL(tune_layout_add(&lay, SPAN_STAGE_INPUT, 1, good, 1,
					false, -1), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, (const float *const *)pr.embd,
				     &loss, NULL), -E2BIG);
	tune_layout_free(&lay);

	tune_ctx_free(ctx);
	prompts_free(&pr);
}

/* ---- Setup ------------------------------------------------------------ */

static int write_model(char *path, const char *arch, enum kern_type wtype,
		       struct model **out)
{
	struct testmodel_opts o;
	char err[256];
	int fd;

	fd = mkstemp(path);
	if (fd < 0)
		return 1;
	close(fd);
	testmodel_defaults(&o);
	o.arch = arch;
	o.wtype = wtype;
	o.d_model = 32;
	o.n_heads = 4;		/* head_dim 8 */
	o.n_kv_heads = 2;	/* two query heads per kv head */
	o.d_ff = 64;
	o.n_ctx = N_CTX;
	o.seed = 31;
	if (!strcmp(arch, "qwen2")) {
		o.tok_kind = TOK_KIND_BPE;
		o.tok_pre = TOK_PRE_QWEN2;
	}
	if (testmodel_write(path, &o, err, sizeof(err)) < 0 ||
	    model_load(path, out, err, sizeof(err)) < 0) {
		fprintf(stderr, "test model %s: %s\n", arch, err);
		return 1;
	}
	return 0;
}

static int setup(void)
{
	kern_init();
	return write_model(llama_path, "llama", KERN_TYPE_F32, &llama) ||
	       write_model(qwen2_path, "qwen2", KERN_TYPE_F32, &qwen2) ||
	       write_model(q8_path, "llama", KERN_TYPE_Q8_0, &llama_q8);
}

static void teardown(void)
{
	model_free(llama);
	model_free(qwen2);
	model_free(llama_q8);
	unlink(llama_path);
	unlink(qwen2_path);
	unlink(q8_path);
}

static const struct test_case op_cases[] = {
	{ "rmsnorm", test_op_rmsnorm },
	{ "rope normal", test_op_rope_normal },
	{ "rope neox", test_op_rope_neox },
	{ "masked attention", test_op_attention },
	{ "swiglu", test_op_swiglu },
	{ "linear", test_op_linear },
	{ "cross-entropy", test_op_cross_entropy },
	{ NULL, NULL },
};

static const struct test_case model_cases[] = {
	{ "mask single round", test_mask_single_round },
	{ "mask multi round", test_mask_multi_round },
	{ "logits llama", test_logits_llama },
	{ "logits qwen2", test_logits_qwen2 },
	{ "gradient llama", test_grad_llama },
	{ "gradient qwen2", test_grad_qwen2 },
	{ "gradient llama Q8_0", test_grad_q8_0 },
	{ "gradient masked slot", test_grad_masked_slot },
	{ "bad calls", test_bad_calls },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "tune ops", op_cases },
	{ "tune model", model_cases },
};

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
