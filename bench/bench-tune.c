/* SPDX-License-Identifier: MIT */
/*
 * bench-tune.c - training throughput of kvchain-tune's prompt tuning: the
 * forward pass alone and forward + backward down to the prompt rows, on
 * one FTHSS layout, and the ratio of the two. Prints a Markdown table.
 *
 * The default layout is [P_A(50), P_B(50), I_ALL(64), I_A(256), O_A(64),
 * O_B(32)] trained for stage B (loss on O_B, gradient of P_B), with
 * random token ids. Make a ~100M-weight model with
 *   tests/mkmodel -o big.gguf --type Q8_0 --dim 1024 --layers 12 \
 *                 --ff 2816 --heads 16 --kv-heads 4 --ctx 2048
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench-args.h"
#include "kernels.h"
#include "layout.h"
#include "model.h"
#include "tokenizer.h"
#include "train-internal.h"
#include "train.h"

#define PROMPT_ROWS 50

struct span_size {
	enum span_kind kind;
	uint32_t stage;
	uint32_t n;
};

/* The content spans after the two prompt slots. */
static const struct span_size spans[] = {
	{ SPAN_SHARED_INPUT, 0, 64 },	/* I_ALL */
	{ SPAN_STAGE_INPUT, 0, 256 },	/* I_A */
	{ SPAN_STAGE_OUTPUT, 0, 64 },	/* O_A */
	{ SPAN_STAGE_OUTPUT, 1, 32 },	/* O_B, the trained output */
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *out)
{
	fprintf(out,
"usage: bench-tune -m MODEL.gguf [-t THREADS] [-r REPEATS] [--recompute]\n"
"Times kvchain-tune's forward pass and forward + backward pass over the\n"
"layout [P_A(50), P_B(50), I_ALL(64), I_A(256), O_A(64), O_B(32)],\n"
"training stage B, and prints tokens/s and their ratio.\n"
"\n"
"  -m, --model FILE    GGUF model\n"
"  -t, --threads N     worker threads (default 2)\n"
"  -r, --repeats N     timed passes of each kind; the best counts\n"
"                      (default 3)\n"
"      --recompute     recompute each layer's activations in the backward\n"
"                      pass, as for sequences whose activations do not\n"
"                      fit in memory, instead of keeping them\n");
}

/* Lays out the benchmark sequence with random non-control token ids. */
static int make_layout(const struct model *m, struct tune_layout *lay)
{
	uint32_t rows[2] = { PROMPT_ROWS, PROMPT_ROWS }, s, j;
	int32_t eos = tok_eos(m->tok), ids[512];
	unsigned seed = 1;
	int rc;

	if ((rc = tune_layout_init(lay, 2, rows)) < 0)
		return rc;
	for (s = 0; s < sizeof(spans) / sizeof(spans[0]); s++) {
		bool loss = s + 1 == sizeof(spans) / sizeof(spans[0]);

		for (j = 0; j < spans[s].n; j++) {
			do {
				seed = seed * 1103515245u + 12345u;
				ids[j] = (int32_t)((seed >> 8) %
						   m->cfg.n_vocab);
			} while (tok_is_control(m->tok, ids[j]));
		}
		rc = tune_layout_add(lay, spans[s].kind, spans[s].stage, ids,
				     spans[s].n, loss, loss ? eos : -1);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Returns the wall time of one pass, backward too if @back, or -1. */
static double time_pass(struct tune_ctx *ctx, const struct tune_layout *lay,
			const float *const *prompts, double *const *grads,
			bool back)
{
	double loss, t0 = now();

	if (tune_forward(ctx, lay, prompts, &loss, NULL) < 0)
		return -1.0;
	if (back && tune_backward(ctx, grads) < 0)
		return -1.0;
	return now() - t0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "repeats", required_argument, NULL, 'r' },
		{ "recompute", no_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long threads = 2, repeats = 3;
	const char *path = NULL;
	struct tune_layout lay;
	struct kern_pool *pool;
	struct tune_ctx *ctx;
	struct model *m;
	float *prompt;
	double *grad, t_fwd, t_both;
	const float *prompts[2];
	double *grads[2];
	char err[512];
	unsigned long r;
	size_t n, i;
	int c;

	while ((c = getopt_long(argc, argv, "m:t:r:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			path = optarg;
			break;
		case 't':
			if (bench_parse_uint("bench-tune", "--threads", optarg,
					     1, 256, &threads))
				return 1;
			break;
		case 'r':
			if (bench_parse_uint("bench-tune", "--repeats", optarg,
					     1, 1000, &repeats))
				return 1;
			break;
		case 'R':
			tune_keep_acts_bytes = 0;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (!path) {
		usage(stderr);
		return 1;
	}
	kern_init();
	if (model_load(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-tune: %s\n", err);
		return 1;
	}
	if (make_layout(m, &lay) < 0) {
		fprintf(stderr, "bench-tune: cannot build the layout\n");
		return 1;
	}
	n = (size_t)PROMPT_ROWS * m->cfg.d_model;
	prompt = malloc(n * sizeof(float));
	grad = malloc(n * sizeof(double));
	pool = kern_pool_create((int)threads);
	ctx = pool ? tune_ctx_create(m, pool, lay.n_pos, TUNE_F32) : NULL;
	if (!prompt || !grad || !ctx) {
		fprintf(stderr, "bench-tune: out of memory\n");
		return 1;
	}
	for (i = 0; i < PROMPT_ROWS; i++)
		model_embed(m, (int32_t)(i + 10), prompt + i * m->cfg.d_model);
	prompts[0] = prompts[1] = prompt;
	grads[0] = NULL;
	grads[1] = grad;

	/*
	 * One untimed pass warms caches and page mappings. The two kinds
	 * alternate, so a machine shared with other work slows both alike,
	 * and the fastest of each counts.
	 */
	if (time_pass(ctx, &lay, prompts, grads, true) < 0) {
		fprintf(stderr, "bench-tune: the training pass failed\n");
		return 1;
	}
	t_fwd = t_both = 1e30;
	for (r = 0; r < repeats; r++) {
		double f = time_pass(ctx, &lay, prompts, grads, false);
		double b = time_pass(ctx, &lay, prompts, grads, true);

		t_fwd = f < t_fwd ? f : t_fwd;
		t_both = b < t_both ? b : t_both;
	}

	printf("model %s: d_model %u, %u layers, d_ff %u, %u/%u heads, %s kernels, %lu threads\n",
	       path, m->cfg.d_model, m->cfg.n_layers, m->cfg.d_ff,
	       m->cfg.n_heads, m->cfg.n_kv_heads,
	       kern_isa_name(kern_isa_current()), threads);
	printf("layout: %u positions (prompts 2 x %u, content 64 + 256 + 64 + 32), loss on O_B, best of %lu, activations %s\n\n",
	       lay.n_pos, PROMPT_ROWS, repeats,
	       tune_keep_acts_bytes ? "kept if they fit" : "recomputed");
	printf("| pass | seconds | tokens/s | time / forward |\n");
	printf("|---|---|---|---|\n");
	printf("| forward | %.3f | %.1f | 1.00 |\n", t_fwd, lay.n_pos / t_fwd);
	printf("| forward + backward | %.3f | %.1f | %.2f |\n", t_both,
	       lay.n_pos / t_both, t_both / t_fwd);
	printf("| backward alone | %.3f | %.1f | %.2f |\n", t_both - t_fwd,
	       lay.n_pos / (t_both - t_fwd), (t_both - t_fwd) / t_fwd);

	tune_layout_free(&lay);
	tune_ctx_free(ctx);
	kern_pool_destroy(pool);
	free(prompt);
	free(grad);
	model_free(m);
	return 0;
}
