/* SPDX-License-Identifier: MIT */
/*
 * test-pretrain.c - kvchain-tune pretrain: the weight gradients of the
 * training pass against finite differences in double precision, a loss
 * that falls on repetitive text, the text reader, the size limit, and the
 * written GGUF file against the trainer's own logits.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cunit-main.h"
#include "gguf.h"
#include "model.h"
#include "optim.h"
#include "pretrain.h"
#include "testmodel.h"
#include "tokenizer.h"
#include "train-internal.h"
#include "train.h"

/*
 * Gradient checks perturb a float weight by about FD_STEP and divide by
 * the step the float actually took, so the F64 pass sees exactly the
 * weights the quotient assumes. Truncation (h^2 times third derivatives)
 * dominates what is left; FD_TOL is far below the error of a wrong term.
 * Gradients below FD_FLOOR are compared in absolute terms against it.
 */
#define FD_STEP 1e-3
#define FD_TOL 1e-4
#define FD_FLOOR 1e-4
#define FD_SAMPLES 3		/* entries checked per tensor */
#define FD_LEN 8		/* tokens of the checked window */

/*
 * Engine logits of the written file against the trainer's F32 forward:
 * both run F32 weights, so only summation order differs.
 */
#define LOGIT_TOL 1e-4

#define N_CTX 64

static char llama_path[] = "/tmp/kvchain-test-pretrain-llama-XXXXXX";
static char qwen2_path[] = "/tmp/kvchain-test-pretrain-qwen2-XXXXXX";
static struct model *llama;	/* separate output head */
static struct model *qwen2;	/* biases, output tied to the embedding */

static uint64_t rng_state = 7;

static uint32_t rnd_below(uint32_t n)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)((rng_state >> 33) % n);
}

static double rel_err(double got, double want, double floor)
{
	double m = fabs(want) > fabs(got) ? fabs(want) : fabs(got);

	return fabs(got - want) / (m > floor ? m : floor);
}

/* Writes a temporary file holding @text; returns 0 or -1. */
static int write_temp(char *path, const char *text)
{
	int fd = mkstemp(path);
	size_t len = strlen(text);

	if (fd < 0)
		return -1;
	if (write(fd, text, len) != (ssize_t)len) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* ---- Weight gradients --------------------------------------------------- */

static double window_loss(struct tune_ctx *ctx, const int32_t *tok)
{
	struct tune_layout lay;
	double loss = NAN;

	CU_ASSERT_EQUAL_FATAL(tune_pretrain_layout(tok, FD_LEN, tok[FD_LEN],
						   &lay), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, NULL, &loss, NULL), 0);
	tune_layout_free(&lay);
	return loss;
}

/*
 * Checks FD_SAMPLES entries of every tensor of @src against central
 * differences; embedding entries come from rows of fed tokens, the only
 * rows with a gradient.
 */
static void check_weight_grads(const struct model *src, const char *name)
{
	int32_t tok[FD_LEN + 1];
	struct tune_params *p;
	struct tune_layout lay;
	struct tune_ctx *ctx;
	double loss, worst = 0.0;
	uint32_t t, k, n_checked = 0, n_nonzero = 0;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(tune_params_create(src, SIZE_MAX, &p, err,
						 sizeof(err)), 0);
	ctx = tune_ctx_create(&p->model, NULL, FD_LEN, TUNE_F64);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
	for (k = 0; k <= FD_LEN; k++)
		tok[k] = (int32_t)rnd_below(src->cfg.n_vocab);

	CU_ASSERT_EQUAL_FATAL(tune_pretrain_layout(tok, FD_LEN, tok[FD_LEN],
						   &lay), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, NULL, &loss, NULL), 0);
	CU_ASSERT_EQUAL(tune_backward_weights(ctx, NULL, &p->grads), 0);
	tune_layout_free(&lay);

	for (t = 0; t < p->n_tensors; t++) {
		const struct tune_tensor *tt = &p->tensors[t];
		double tensor_worst = 0.0;

		for (k = 0; k < FD_SAMPLES; k++) {
			size_t i = rnd_below((uint32_t)tt->n);
			float keep, up, down;
			double lp, lm, fd, e;

			if (!strcmp(tt->name, "token_embd.weight"))
				i = (size_t)tok[rnd_below(FD_LEN)] * tt->ne[0] +
				    rnd_below((uint32_t)tt->ne[0]);
			keep = p->w[tt->offset + i];
			up = (float)(keep + FD_STEP);
			down = (float)(keep - FD_STEP);
			p->w[tt->offset + i] = up;
			lp = window_loss(ctx, tok);
			p->w[tt->offset + i] = down;
			lm = window_loss(ctx, tok);
			p->w[tt->offset + i] = keep;
			fd = (lp - lm) / ((double)up - (double)down);
			e = rel_err(p->g[tt->offset + i], fd, FD_FLOOR);
			if (e > tensor_worst)
				tensor_worst = e;
			if (fabs(fd) > FD_FLOOR)
				n_nonzero++;
			n_checked++;
		}
		if (tensor_worst > FD_TOL)
			printf("\n  %s %s: relative error %.3g", name, tt->name,
			       tensor_worst);
		if (tensor_worst > worst)
			worst = tensor_worst;
	}
	printf("\n  %s: %u entries of %u tensors, worst relative error %.3g ",
	       name, n_checked, p->n_tensors, worst);
	CU_ASSERT(worst < FD_TOL);
	/* the check must not pass on gradients that are all zero */
	CU_ASSERT(n_nonzero > n_checked / 2);
	tune_ctx_free(ctx);
	tune_params_free(p);
}

static void test_grad_llama(void)
{
	check_weight_grads(llama, "llama");
}

static void test_grad_qwen2_tied(void)
{
	check_weight_grads(qwen2, "qwen2 tied");
}

/* The same check with every layer's activations recomputed. */
static void test_grad_recompute(void)
{
	size_t keep = tune_keep_acts_bytes;

	tune_keep_acts_bytes = 0;
	check_weight_grads(llama, "llama recomputed");
	check_weight_grads(qwen2, "qwen2 recomputed");
	tune_keep_acts_bytes = keep;
}

/* ---- Training --------------------------------------------------------- */

#define TRAIN_STEPS 100
#define TRAIN_LEN 16
#define TRAIN_BATCH 2
/* every token of the cycle fixes the next one */
#define CYCLE "one two three four five six seven eight nine ten "

/* Returns the mean loss of the windows at every TRAIN_LEN-th offset. */
static double eval_loss(struct tune_ctx *ctx, const int32_t *stream,
			size_t n_stream)
{
	struct tune_layout lay;
	double loss, sum = 0.0;
	size_t s, n = 0;

	for (s = 0; s + TRAIN_LEN < n_stream; s += TRAIN_LEN) {
		CU_ASSERT_EQUAL_FATAL(tune_pretrain_layout(stream + s, TRAIN_LEN,
							   stream[s + TRAIN_LEN],
							   &lay), 0);
		CU_ASSERT_EQUAL(tune_forward(ctx, &lay, NULL, &loss, NULL), 0);
		tune_layout_free(&lay);
		sum += loss;
		n++;
	}
	return sum / (double)n;
}

/*
 * Trains llama on a cycle of words and returns the mean loss over the
 * text before and after training.
 */
static void train_repetitive(double *first, double *last)
{
	char path[] = "/tmp/kvchain-test-pretrain-text-XXXXXX";
	struct tune_adamw opt = { .lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999,
				  .eps = 1e-8 };
	struct tune_pretrain_step st = { .n_win = TRAIN_BATCH,
					 .len = TRAIN_LEN, .clip = 1.0,
					 .lr = opt.lr };
	struct tune_params *p;
	struct tune_ctx *ctx;
	struct tune_rng rng;
	size_t starts[TRAIN_BATCH], n_stream;
	int32_t *stream;
	double *m, *v;
	char err[256];
	uint32_t s, k;

	*first = *last = NAN;
	CU_ASSERT_EQUAL_FATAL(write_temp(path,
		"{\"text\": \"" CYCLE CYCLE CYCLE CYCLE CYCLE CYCLE "\"}\n"),
		0);
	CU_ASSERT_EQUAL_FATAL(tune_pretrain_load_text(path, llama, &stream,
						      &n_stream, err,
						      sizeof(err)), 0);
	unlink(path);
	CU_ASSERT_FATAL(n_stream > TRAIN_LEN + 1);
	CU_ASSERT_EQUAL_FATAL(tune_params_create(llama, SIZE_MAX, &p, err,
						 sizeof(err)), 0);
	ctx = tune_ctx_create(&p->model, NULL, TRAIN_LEN, TUNE_F32);
	m = calloc(p->n, sizeof(double));
	v = calloc(p->n, sizeof(double));
	CU_ASSERT_FATAL(ctx && m && v);
	tune_rng_seed(&rng, 1);
	st.stream = stream;
	st.starts = starts;
	*first = eval_loss(ctx, stream, n_stream);
	for (s = 0; s < TRAIN_STEPS; s++) {
		for (k = 0; k < TRAIN_BATCH; k++)
			starts[k] = tune_rng_below(&rng, n_stream - TRAIN_LEN);
		st.t = s + 1;
		st.lr = tune_lr_at(opt.lr, s, TRAIN_STEPS, 0);
		CU_ASSERT_EQUAL_FATAL(tune_pretrain_step(ctx, p, &opt, m, v,
							 &st), 0);
		if (s % 10 == 0 || s + 1 == TRAIN_STEPS)
			printf("%s%u:%.3f", s ? " " : "\n  loss by step ", s + 1,
			       st.loss);
	}
	*last = eval_loss(ctx, stream, n_stream);
	printf("; over the text %.4f before, %.4f after ", *first, *last);
	free(m);
	free(v);
	free(stream);
	tune_ctx_free(ctx);
	tune_params_free(p);
}

/*
 * In 100 steps the loss over a cycle of ten words falls from 6.7 to 0.23
 * (seed 1). With the output head's gradient negated it stayed at 6.5.
 * A sign error in one inner tensor still ended below 0.4, because the
 * other weights make up for it, so the finite-difference checks above
 * are what catch those.
 */
static void test_loss_falls(void)
{
	double first, last;

	train_repetitive(&first, &last);
	CU_ASSERT(first > 3.0);
	CU_ASSERT(last < first / 5);
}

/* ---- Text and limits --------------------------------------------------- */

static void test_text_lines(void)
{
	char path[] = "/tmp/kvchain-test-pretrain-lines-XXXXXX";
	int32_t *stream, want[64];
	size_t n;
	char err[256];
	int n_ids;

	CU_ASSERT_EQUAL_FATAL(write_temp(path, "\n{\"text\": \"hello\"}\n\n"), 0);
	CU_ASSERT_EQUAL_FATAL(tune_pretrain_load_text(path, llama, &stream, &n,
						      err, sizeof(err)), 0);
	unlink(path);
	n_ids = tok_encode(llama->tok, "hello", 5, 0, want, 64);
	CU_ASSERT_FATAL(n_ids > 0);
	CU_ASSERT_EQUAL(n, (size_t)n_ids + 2);
	CU_ASSERT_EQUAL(stream[0], tok_bos(llama->tok));
	CU_ASSERT(memcmp(stream + 1, want, (size_t)n_ids * 4) == 0);
	CU_ASSERT_EQUAL(stream[n - 1], tok_eos(llama->tok));
	free(stream);
}

static void test_text_segments(void)
{
	char path[] = "/tmp/kvchain-test-pretrain-seg-XXXXXX";
	int32_t *stream, eos = tok_eos(llama->tok), bos = tok_bos(llama->tok);
	size_t n, i, n_eos = 0, n_bos = 0;
	char err[256];

	CU_ASSERT_EQUAL_FATAL(write_temp(path,
		"{\"I_ALL\": \"a question\", \"O_A\": \"an answer\"}\n"
		"{\"I_ALL\": \"another one\", \"O_A\": \"yes\"}\n"), 0);
	CU_ASSERT_EQUAL_FATAL(tune_pretrain_load_text(path, llama, &stream, &n,
						      err, sizeof(err)), 0);
	unlink(path);
	for (i = 0; i < n; i++) {
		n_eos += stream[i] == eos;
		n_bos += stream[i] == bos;
	}
	/* each output is BOS + tokens + EOS; inputs carry neither */
	CU_ASSERT_EQUAL(n_eos, 2);
	CU_ASSERT_EQUAL(n_bos, 2);
	CU_ASSERT_EQUAL(stream[n - 1], eos);
	free(stream);
}

/* Returns the loss of the window stream[0 .. len - 1] with @skip's marks. */
static double span_loss(struct tune_ctx *ctx, const int32_t *stream,
			  uint32_t len, const uint8_t *skip)
{
	struct tune_layout lay;
	double loss = NAN;

	CU_ASSERT_EQUAL_FATAL(tune_pretrain_layout(stream, len, stream[len],
						   &lay), 0);
	lay.spans[0].untrained = skip;
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, NULL, &loss, NULL), 0);
	tune_layout_free(&lay);
	return loss;
}

/*
 * Checks the loss on outputs. Inputs and each output's BOS are marked
 * untrained, an output's tokens and EOS trained. The masked loss is the
 * mean of the trained positions' own losses, and a batch with nothing to
 * train leaves the weights alone.
 */
static void test_loss_outputs(void)
{
	char path[] = "/tmp/kvchain-test-pretrain-out-XXXXXX";
	int32_t *stream, eos = tok_eos(llama->tok), bos = tok_bos(llama->tok);
	struct tune_adamw opt = { .lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999,
				  .eps = 1e-8 };
	struct tune_pretrain_step st = { .n_win = 1, .clip = 1.0, .lr = 1e-2,
					 .t = 1 };
	struct tune_params *p;
	struct tune_ctx *ctx;
	uint8_t *untrained, *single_pos, *all;
	size_t n, i, starts[1] = { 0 }, n_trained = 0;
	double masked, sum = 0.0, *m, *v;
	float *before;
	char err[256];
	int32_t want[64];
	int n_answer, n_yes;

	CU_ASSERT_EQUAL_FATAL(write_temp(path,
		"{\"I_ALL\": \"a question\", \"O_A\": \"an answer\"}\n"
		"{\"I_ALL\": \"another one\", \"O_A\": \"yes\"}\n"), 0);
	CU_ASSERT_EQUAL_FATAL(tune_pretrain_load_outputs(path, llama, &stream,
							 &untrained, &n, err,
							 sizeof(err)), 0);
	unlink(path);
	n_answer = tok_encode(llama->tok, "an answer", 9, 0, want, 64);
	n_yes = tok_encode(llama->tok, "yes", 3, 0, want, 64);
	CU_ASSERT_FATAL(n_answer > 0 && n_yes > 0);
	for (i = 0; i < n; i++) {
		if (stream[i] == bos)
			CU_ASSERT_EQUAL(untrained[i], 1);
		if (stream[i] == eos)
			CU_ASSERT_EQUAL(untrained[i], 0);
		n_trained += !untrained[i];
	}
	CU_ASSERT_EQUAL(untrained[0], 1);
	CU_ASSERT_EQUAL(n_trained, (size_t)(n_answer + 1 + n_yes + 1));

	CU_ASSERT_EQUAL_FATAL(tune_params_create(llama, SIZE_MAX, &p, err,
						 sizeof(err)), 0);
	ctx = tune_ctx_create(&p->model, NULL, (uint32_t)n, TUNE_F64);
	single_pos = malloc(n);
	all = malloc(n);
	m = calloc(p->n, sizeof(double));
	v = calloc(p->n, sizeof(double));
	before = malloc(p->n * sizeof(float));
	CU_ASSERT_FATAL(ctx && single_pos && all && m && v && before);

	/* position j predicts stream[j + 1] */
	masked = span_loss(ctx, stream, (uint32_t)n - 1, untrained + 1);
	for (i = 0; i + 1 < n; i++) {
		if (untrained[i + 1])
			continue;
		memset(single_pos, 1, n);
		single_pos[i] = 0;
		sum += span_loss(ctx, stream, (uint32_t)n - 1, single_pos);
	}
	CU_ASSERT_DOUBLE_EQUAL(masked, sum / (double)n_trained, 1e-9);
	CU_ASSERT(fabs(masked - span_loss(ctx, stream, (uint32_t)n - 1,
					    NULL)) > 1e-3);

	memset(all, 1, n);
	memcpy(before, p->w, p->n * sizeof(float));
	st.stream = stream;
	st.untrained = all;
	st.starts = starts;
	st.len = (uint32_t)n - 1;
	CU_ASSERT_EQUAL(tune_pretrain_step(ctx, p, &opt, m, v, &st), 0);
	CU_ASSERT_EQUAL(st.loss, 0.0);
	CU_ASSERT(memcmp(before, p->w, p->n * sizeof(float)) == 0);
	st.untrained = untrained;
	CU_ASSERT_EQUAL(tune_pretrain_step(ctx, p, &opt, m, v, &st), 0);
	CU_ASSERT_DOUBLE_EQUAL(st.loss, masked, 1e-5);
	CU_ASSERT(memcmp(before, p->w, p->n * sizeof(float)) != 0);

	free(before);
	free(m);
	free(v);
	free(single_pos);
	free(all);
	free(untrained);
	free(stream);
	tune_ctx_free(ctx);
	tune_params_free(p);
}

/* Plain text has no outputs, so the loss on outputs rejects it. */
static void test_loss_outputs_text(void)
{
	char path[] = "/tmp/kvchain-test-pretrain-out-XXXXXX";
	int32_t *stream = NULL;
	uint8_t *untrained = NULL;
	size_t n;
	char err[256] = "";

	CU_ASSERT_EQUAL_FATAL(write_temp(path, "{\"text\": \"fine\"}\n"), 0);
	CU_ASSERT_EQUAL(tune_pretrain_load_outputs(path, llama, &stream,
						   &untrained, &n, err,
						   sizeof(err)), -EINVAL);
	unlink(path);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "segment format"));
	CU_ASSERT_PTR_NULL(stream);
	CU_ASSERT_PTR_NULL(untrained);
}

static void test_text_bad(void)
{
	char path[] = "/tmp/kvchain-test-pretrain-bad-XXXXXX";
	int32_t *stream = NULL;
	size_t n;
	char err[256] = "";

	CU_ASSERT_EQUAL_FATAL(write_temp(path,
		"{\"text\": \"fine\"}\n{\"text\": 3}\n"), 0);
	CU_ASSERT_EQUAL(tune_pretrain_load_text(path, llama, &stream, &n, err,
						sizeof(err)), -EINVAL);
	unlink(path);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, ":2:"));
	CU_ASSERT_PTR_NULL(stream);
}

static void test_size_limit(void)
{
	struct tune_params *p = NULL;
	char err[256] = "";

	CU_ASSERT_EQUAL(tune_params_create(llama, 1000, &p, err, sizeof(err)),
			-EFBIG);
	CU_ASSERT_PTR_NULL(p);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "at most 1000"));
	CU_ASSERT(tune_params_count(llama) > 1000);
}

/* ---- The written file -------------------------------------------------- */

#define RT_LEN 12

/*
 * Writes @src's weights, shifted so they differ from the source file's,
 * and checks the loaded file against the trainer: same metadata, F32
 * tensors, and the engine's logits equal to tune_forward's.
 */
static void check_round_trip(const struct model *src)
{
	char path[] = "/tmp/kvchain-test-pretrain-out-XXXXXX";
	uint32_t n_vocab = src->cfg.n_vocab, i;
	int32_t tok[RT_LEN + 1];
	struct tune_params *p;
	struct tune_layout lay;
	struct tune_ctx *ctx;
	struct forward_ctx *fwd;
	struct kv_cache cache;
	struct model *got;
	float *want, *have;
	double loss, worst = 0.0, spread = 0.0;
	size_t k, n_finite = 0;
	char err[256];
	int fd;

	fd = mkstemp(path);
	CU_ASSERT_FATAL(fd >= 0);
	close(fd);
	CU_ASSERT_EQUAL_FATAL(tune_params_create(src, SIZE_MAX, &p, err,
						 sizeof(err)), 0);
	for (k = 0; k < p->n; k++)
		p->w[k] *= 1.0f + 0.01f * (float)((int)(k % 7) - 3);
	CU_ASSERT_EQUAL_FATAL(tune_params_write_gguf(p, path, err,
						     sizeof(err)), 0);
	CU_ASSERT_EQUAL_FATAL(model_load(path, &got, err, sizeof(err)), 0);
	unlink(path);

	CU_ASSERT_EQUAL(got->file->n_kv, src->file->n_kv);
	CU_ASSERT_EQUAL(got->file->n_tensors, src->file->n_tensors);
	for (k = 0; k < got->file->n_tensors; k++)
		CU_ASSERT_EQUAL(got->file->tensors[k].type, KERN_TYPE_F32);
	CU_ASSERT_EQUAL(got->cfg.n_vocab, n_vocab);
	CU_ASSERT_EQUAL(tok_bos(got->tok), tok_bos(src->tok));
	CU_ASSERT_EQUAL(got->output.data == got->tok_embd.data,
			src->output.data == src->tok_embd.data);

	for (i = 0; i <= RT_LEN; i++)
		tok[i] = (int32_t)rnd_below(n_vocab);
	want = malloc((size_t)RT_LEN * n_vocab * sizeof(float));
	have = malloc((size_t)RT_LEN * n_vocab * sizeof(float));
	ctx = tune_ctx_create(&p->model, NULL, RT_LEN, TUNE_F32);
	fwd = forward_ctx_create(got, RT_LEN, N_CTX, NULL);
	CU_ASSERT_FATAL(want && have && ctx && fwd);
	CU_ASSERT_EQUAL_FATAL(kv_cache_init(&cache, got, N_CTX,
					    KERN_TYPE_F32), 0);
	CU_ASSERT_EQUAL(tune_pretrain_layout(tok, RT_LEN, tok[RT_LEN], &lay), 0);
	CU_ASSERT_EQUAL(tune_forward(ctx, &lay, NULL, &loss, want), 0);
	CU_ASSERT_EQUAL(model_forward(fwd, &cache, tok, NULL, RT_LEN, 0, have,
				      true), 0);
	for (k = 0; k < (size_t)RT_LEN * n_vocab; k++) {
		n_finite += isfinite(have[k]) && isfinite(want[k]);
		if (fabs(have[k] - want[k]) > worst)
			worst = fabs(have[k] - want[k]);
		if (fabs(want[k] - want[0]) > spread)
			spread = fabs(want[k] - want[0]);
	}
	printf("\n  largest logit difference %.3g ", worst);
	CU_ASSERT_EQUAL(n_finite, (size_t)RT_LEN * n_vocab);
	CU_ASSERT(spread > 1e-3);
	CU_ASSERT(worst < LOGIT_TOL);

	tune_layout_free(&lay);
	kv_cache_free(&cache);
	forward_ctx_free(fwd);
	tune_ctx_free(ctx);
	free(want);
	free(have);
	model_free(got);
	tune_params_free(p);
}

static void test_gguf_llama(void)
{
	check_round_trip(llama);
}

static void test_gguf_qwen2_tied(void)
{
	check_round_trip(qwen2);
}

/* ---- Setup ------------------------------------------------------------ */

static int write_model(char *path, const char *arch, bool tied,
		       struct model **out)
{
	struct testmodel_opts o;
	char err[256];
	int fd = mkstemp(path);

	if (fd < 0)
		return 1;
	close(fd);
	testmodel_defaults(&o);
	o.arch = arch;
	o.d_model = 32;
	o.n_heads = 4;
	o.n_kv_heads = 2;
	o.d_ff = 64;
	o.n_ctx = N_CTX;
	o.tied_output = tied;
	o.seed = 5;
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
	return write_model(llama_path, "llama", false, &llama) ||
	       write_model(qwen2_path, "qwen2", true, &qwen2);
}

static void teardown(void)
{
	model_free(llama);
	model_free(qwen2);
	unlink(llama_path);
	unlink(qwen2_path);
}

static const struct test_case grad_cases[] = {
	{ "weights llama", test_grad_llama },
	{ "weights qwen2 tied", test_grad_qwen2_tied },
	{ "weights recomputed", test_grad_recompute },
	{ NULL, NULL },
};

static const struct test_case train_cases[] = {
	{ "loss falls", test_loss_falls },
	{ "text lines", test_text_lines },
	{ "text segments", test_text_segments },
	{ "text invalid", test_text_bad },
	{ "loss on outputs", test_loss_outputs },
	{ "loss on outputs of text", test_loss_outputs_text },
	{ "size limit", test_size_limit },
	{ "gguf llama", test_gguf_llama },
	{ "gguf qwen2 tied", test_gguf_qwen2_tied },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "pretrain gradients", grad_cases },
	{ "pretrain training", train_cases },
};

#define TEST_SETUP setup
#define TEST_TEARDOWN teardown
#include "cunit-main.h"
