/* SPDX-License-Identifier: MIT */
/*
 * pretrain-cmd.c - kvchain-tune pretrain: trains every weight of a tiny
 * model on plain text and writes it as an F32 GGUF file.
 *
 * Each optimiser step draws --batch windows of --seq-len tokens at random
 * offsets of the tokenized text (the seeded generator of tune/optim.h),
 * averages their weight gradients, clips the global norm and applies
 * AdamW. OUT.checkpoint contains the weights, moments, step and random
 * state, so --resume after a kill gives the same model as an
 * uninterrupted run.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "optim.h"
#include "pretrain.h"

/* Maximum number of --data files in one run. */
#define PRETRAIN_MAX_DATA 8

struct pretrain_opts {
	const char *model_path;
	const char *data_paths[PRETRAIN_MAX_DATA];
	uint32_t n_data;
	const char *out_path;
	uint64_t steps;
	struct tune_adamw adamw;
	uint32_t batch;
	uint32_t seq_len;		/* 0: min(context length, 128) */
	uint64_t seed;
	double warmup;			/* fraction of the steps */
	double clip;
	uint32_t checkpoint_every;
	uint32_t log_every;
	bool resume;
	bool outputs_only;		/* --loss outputs */
	int n_threads;
};

/* State of one pretrain run. */
struct pretrainer {
	struct pretrain_opts o;
	struct model *src;
	struct tune_params *p;
	struct kern_pool *pool;
	struct tune_ctx *ctx;
	int32_t *stream;
	uint8_t *untrained;		/* with --loss outputs, else NULL */
	size_t n_stream;
	double *m, *v;
	size_t *starts;			/* (batch) */
	struct tune_rng rng;
	uint64_t start;			/* first step to run */
	uint64_t settings;		/* hash a checkpoint must match */
	char ck_path[4096];
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain-tune pretrain --model INIT.gguf --data FILE --out OUT.gguf\n"
"                             [options]\n"
"Trains every weight of a tiny llama or qwen2 model (at most %u\n"
"weights) on plain text, next-token cross-entropy with a causal mask, and\n"
"writes OUT.gguf with F32 weights and INIT.gguf's metadata and tokenizer.\n"
"INIT.gguf gives the architecture, tokenizer and starting weights\n"
"(tests/mkmodel makes one with random weights).\n"
"\n"
"  -m, --model FILE        GGUF model to start from\n"
"  -d, --data FILE         training text (repeatable: the files are joined\n"
"                          in order), either\n"
"                          - JSON Lines (or a JSON array) of objects\n"
"                            {\"text\": \"...\"}: each text is fed as BOS +\n"
"                            its tokens + EOS; or\n"
"                          - the FTHSS segment format of kvchain-tune train\n"
"                            (keys I_ALL, I_A, O_A, ...): each example's\n"
"                            spans are concatenated as kvchaind frames them,\n"
"                            an input as its text + \"\\n\", an output as\n"
"                            BOS + its tokens + EOS.\n"
"                          The first object decides: a \"text\" key means\n"
"                          the first format. All texts are joined into one\n"
"                          token stream that windows are drawn from.\n"
"  -o, --out FILE          GGUF file to write\n"
"      --steps N           optimiser steps (default 200)\n"
"      --lr F              peak learning rate (default 1e-3)\n"
"  -b, --batch N           windows per optimiser step (default 8)\n"
"      --seq-len N         tokens per window (default: the model's context\n"
"                          length, at most 128)\n"
"      --seed N            random seed of the window offsets (default 0)\n"
"      --warmup F          warm-up fraction of the steps (default 0.03)\n"
"      --weight-decay F    AdamW decoupled weight decay (default 0)\n"
"      --clip F            maximum global gradient norm; 0 turns clipping\n"
"                          off (default 1)\n"
"      --checkpoint-every N  write OUT.checkpoint every N steps (default\n"
"                          50; 0 only at the start and end)\n"
"      --resume            continue from OUT.checkpoint\n"
"      --log-every N       print a metrics line every N steps (default 10)\n"
"      --loss all|outputs  train on every token (default), or, for the\n"
"                          segment format, only on the outputs' tokens\n"
"                          and EOS; windows without one are skipped\n"
"  -t, --threads N         worker threads (default 2)\n"
"  -h, --help              show this help\n"
"\n"
"Each metrics line on stdout reads\n"
"  step=S/T loss=L lr=R tokens/s=V grad_norm=G\n"
"with the loss averaged over the steps since the previous line.\n",
		TUNE_PRETRAIN_MAX_PARAMS);
}

enum {
	OPT_STEPS = 256, OPT_LR, OPT_SEQ_LEN, OPT_SEED, OPT_WARMUP, OPT_WD,
	OPT_CLIP, OPT_CK_EVERY, OPT_RESUME, OPT_LOG_EVERY, OPT_LOSS,
};

/* Parses one option @c with argument @arg. Returns 0, or -1 on error. */
static int parse_opt(int c, const char *arg, struct pretrain_opts *o)
{
	unsigned long u;

	switch (c) {
	case 'm':
		o->model_path = arg;
		return 0;
	case 'd':
		return tune_push_arg("--data", arg, o->data_paths, &o->n_data,
				     PRETRAIN_MAX_DATA);
	case 'o':
		o->out_path = arg;
		return 0;
	case OPT_STEPS:
		if (tune_parse_uint("--steps", arg, 1, 1ul << 40, &u))
			return -1;
		o->steps = u;
		return 0;
	case OPT_LR:
		return tune_parse_double("--lr", arg, 0.0, 10.0, &o->adamw.lr);
	case 'b':
		if (tune_parse_uint("--batch", arg, 1, 1u << 20, &u))
			return -1;
		o->batch = (uint32_t)u;
		return 0;
	case OPT_SEQ_LEN:
		if (tune_parse_uint("--seq-len", arg, 1, 1u << 20, &u))
			return -1;
		o->seq_len = (uint32_t)u;
		return 0;
	case OPT_SEED:
		if (tune_parse_uint("--seed", arg, 0, ULONG_MAX, &u))
			return -1;
		o->seed = u;
		return 0;
	case OPT_WARMUP:
		return tune_parse_double("--warmup", arg, 0.0, 1.0, &o->warmup);
	case OPT_WD:
		return tune_parse_double("--weight-decay", arg, 0.0, 1.0,
					 &o->adamw.weight_decay);
	case OPT_CLIP:
		return tune_parse_double("--clip", arg, 0.0, 1e9, &o->clip);
	case OPT_CK_EVERY:
		if (tune_parse_uint("--checkpoint-every", arg, 0, 1u << 30, &u))
			return -1;
		o->checkpoint_every = (uint32_t)u;
		return 0;
	case OPT_RESUME:
		o->resume = true;
		return 0;
	case OPT_LOG_EVERY:
		if (tune_parse_uint("--log-every", arg, 1, 1u << 30, &u))
			return -1;
		o->log_every = (uint32_t)u;
		return 0;
	case OPT_LOSS:
		if (strcmp(arg, "all") && strcmp(arg, "outputs")) {
			fprintf(stderr,
				"kvchain-tune: invalid --loss '%s'; expected all or outputs\n",
				arg);
			return -1;
		}
		o->outputs_only = !strcmp(arg, "outputs");
		return 0;
	case 't':
		if (tune_parse_uint("--threads", arg, 1, 256, &u))
			return -1;
		o->n_threads = (int)u;
		return 0;
	}
	fprintf(stderr,
		"kvchain-tune: invalid option; see kvchain-tune pretrain --help\n");
	return -1;
}

/* Returns 0, 1 after --help, or -1 after printing an error. */
static int parse_args(int argc, char **argv, struct pretrain_opts *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "out", required_argument, NULL, 'o' },
		{ "steps", required_argument, NULL, OPT_STEPS },
		{ "lr", required_argument, NULL, OPT_LR },
		{ "batch", required_argument, NULL, 'b' },
		{ "seq-len", required_argument, NULL, OPT_SEQ_LEN },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "warmup", required_argument, NULL, OPT_WARMUP },
		{ "weight-decay", required_argument, NULL, OPT_WD },
		{ "clip", required_argument, NULL, OPT_CLIP },
		{ "checkpoint-every", required_argument, NULL, OPT_CK_EVERY },
		{ "resume", no_argument, NULL, OPT_RESUME },
		{ "log-every", required_argument, NULL, OPT_LOG_EVERY },
		{ "loss", required_argument, NULL, OPT_LOSS },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->steps = 200;
	o->adamw = (struct tune_adamw){ .lr = 1e-3, .beta1 = 0.9,
					.beta2 = 0.999, .eps = 1e-8 };
	o->batch = 8;
	o->warmup = 0.03;
	o->clip = 1.0;
	o->checkpoint_every = 50;
	o->log_every = 10;
	o->n_threads = 2;
	optind = 0;
	while ((c = getopt_long(argc, argv, "m:d:o:b:t:h", longopts,
				NULL)) != -1) {
		if (c == 'h') {
			usage(stdout);
			return 1;
		}
		if (parse_opt(c, optarg, o) < 0)
			return -1;
	}
	if (optind < argc) {
		fprintf(stderr, "kvchain-tune: unexpected argument '%s'\n",
			argv[optind]);
		return -1;
	}
	if (!o->model_path || !o->n_data || !o->out_path) {
		fprintf(stderr,
			"kvchain-tune: --model, --data and --out are required; see kvchain-tune pretrain --help\n");
		return -1;
	}
	return 0;
}

/* Folds the model, text and options into t->settings. */
static void hash_settings(struct pretrainer *t)
{
	const struct pretrain_opts *o = &t->o;
	uint64_t h = TUNE_HASH_INIT;

	h = tune_hash(h, &t->src->cfg, sizeof(t->src->cfg));
	h = tune_hash(h, t->p->w, t->p->n * sizeof(float));
	h = tune_hash(h, t->stream, t->n_stream * sizeof(int32_t));
	h = tune_hash(h, &o->steps, sizeof(o->steps));
	h = tune_hash(h, &o->adamw, sizeof(o->adamw));
	h = tune_hash(h, &o->batch, sizeof(o->batch));
	h = tune_hash(h, &o->seq_len, sizeof(o->seq_len));
	h = tune_hash(h, &o->seed, sizeof(o->seed));
	h = tune_hash(h, &o->warmup, sizeof(o->warmup));
	h = tune_hash(h, &o->clip, sizeof(o->clip));
	/* older checkpoints, of the loss on every token, keep their hash */
	if (o->outputs_only)
		h = tune_hash(h, t->untrained, t->n_stream);
	t->settings = h;
}

static int save_checkpoint(struct pretrainer *t, uint64_t step)
{
	struct tune_checkpoint ck = {
		.settings = t->settings, .stage = UINT32_MAX, .step = step,
		.total = t->o.steps, .rng = t->rng, .n = t->p->n,
		.w = t->p->w, .m = t->m, .v = t->v,
	};
	char err[512];
	int rc;

	rc = tune_checkpoint_save(t->ck_path, &ck, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "kvchain-tune: %s\n", err);
	return rc;
}

/* Continues from OUT.checkpoint for --resume, if there is one. */
static int resume(struct pretrainer *t)
{
	struct tune_checkpoint ck;
	char err[512];
	int rc;

	rc = tune_checkpoint_load(t->ck_path, &ck, err, sizeof(err));
	if (rc == -ENOENT) {
		fprintf(stderr, "kvchain-tune: no %s; starting from step 0\n",
			t->ck_path);
		return 0;
	}
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	if (ck.settings != t->settings || ck.n != t->p->n ||
	    ck.total != t->o.steps) {
		fprintf(stderr,
			"kvchain-tune: %s was written for another model, text or options; rerun with the same ones or without --resume\n",
			t->ck_path);
		tune_checkpoint_free(&ck);
		return -EINVAL;
	}
	memcpy(t->p->w, ck.w, ck.n * sizeof(float));
	memcpy(t->m, ck.m, ck.n * sizeof(double));
	memcpy(t->v, ck.v, ck.n * sizeof(double));
	t->rng = ck.rng;
	t->start = ck.step;
	tune_checkpoint_free(&ck);
	fprintf(stderr, "kvchain-tune: resuming at step %llu of %llu\n",
		(unsigned long long)t->start, (unsigned long long)t->o.steps);
	return 0;
}

/* Loads the model and text, and makes the weights and buffers. */
/*
 * Loads every --data file into one stream, in the order given; windows may
 * span two files as they span two texts.
 */
static int load_data(struct pretrainer *t, char *err, size_t errlen)
{
	uint32_t f;
	int rc = 0;

	for (f = 0; f < t->o.n_data && rc == 0; f++) {
		uint8_t *untrained = NULL, *u = NULL;
		int32_t *ids, *p;
		size_t n;

		if (t->o.outputs_only)
			rc = tune_pretrain_load_outputs(t->o.data_paths[f],
							t->src, &ids,
							&untrained, &n, err,
							errlen);
		else
			rc = tune_pretrain_load_text(t->o.data_paths[f],
						     t->src, &ids, &n, err,
						     errlen);
		if (rc < 0)
			break;
		p = realloc(t->stream, (t->n_stream + n) * sizeof(int32_t));
		if (p)
			t->stream = p;
		if (p && untrained) {
			u = realloc(t->untrained, t->n_stream + n);
			if (u)
				t->untrained = u;
		}
		if (!p || (untrained && !u)) {
			snprintf(err, errlen, "out of memory reading %s",
				 t->o.data_paths[f]);
			rc = -ENOMEM;
		} else {
			memcpy(t->stream + t->n_stream, ids,
			       n * sizeof(int32_t));
			if (untrained)
				memcpy(t->untrained + t->n_stream, untrained,
				       n);
			t->n_stream += n;
		}
		free(ids);
		free(untrained);
	}
	return rc;
}

static int setup(struct pretrainer *t)
{
	char err[512];
	int rc;

	rc = model_load(t->o.model_path, &t->src, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	rc = tune_params_create(t->src, TUNE_PRETRAIN_MAX_PARAMS, &t->p, err,
				sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s: %s\n", t->o.model_path, err);
		return rc;
	}
	if (rc == 0)
		rc = load_data(t, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	if (!t->o.seq_len)
		t->o.seq_len = t->src->cfg.n_ctx_train < 128 ?
			       t->src->cfg.n_ctx_train : 128;
	if (t->o.seq_len > t->src->cfg.n_ctx_train)
		fprintf(stderr,
			"kvchain-tune: warning: --seq-len %u exceeds the model's context length %u\n",
			t->o.seq_len, t->src->cfg.n_ctx_train);
	if (t->n_stream < (size_t)t->o.seq_len + 1) {
		fprintf(stderr,
			"kvchain-tune: %s%s holds %zu tokens, fewer than --seq-len %u + 1; lower --seq-len or add text\n",
			t->o.data_paths[0], t->o.n_data > 1 ? " and the other --data files" : "",
			t->n_stream, t->o.seq_len);
		return -EINVAL;
	}
	t->pool = kern_pool_create(t->o.n_threads);
	t->ctx = t->pool ? tune_ctx_create(&t->p->model, t->pool,
					    t->o.seq_len, TUNE_F32) : NULL;
	t->m = calloc(t->p->n, sizeof(double));
	t->v = calloc(t->p->n, sizeof(double));
	t->starts = malloc((size_t)t->o.batch * sizeof(size_t));
	if (!t->ctx || !t->m || !t->v || !t->starts) {
		fprintf(stderr, "kvchain-tune: out of memory\n");
		return -ENOMEM;
	}
	snprintf(t->ck_path, sizeof(t->ck_path), "%s.checkpoint",
		 t->o.out_path);
	hash_settings(t);
	tune_rng_seed(&t->rng, t->o.seed);
	fprintf(stderr,
		"kvchain-tune: %zu weights, %zu tokens of text, %llu steps of %u windows of %u tokens\n",
		t->p->n, t->n_stream, (unsigned long long)t->o.steps,
		t->o.batch, t->o.seq_len);
	if (t->o.resume)
		return resume(t);
	return 0;
}

static int train(struct pretrainer *t)
{
	uint64_t warmup = (uint64_t)(t->o.warmup * (double)t->o.steps);
	uint64_t step, logged = 0;
	double loss_sum = 0.0, t0 = tune_now(), now;
	struct tune_pretrain_step st = {
		.stream = t->stream, .untrained = t->untrained,
		.starts = t->starts, .n_win = t->o.batch,
		.len = t->o.seq_len, .clip = t->o.clip,
	};
	uint32_t k;
	int rc;

	if (t->start == 0 && (rc = save_checkpoint(t, 0)) < 0)
		return rc;
	for (step = t->start; step < t->o.steps; step++) {
		for (k = 0; k < t->o.batch; k++)
			t->starts[k] = tune_rng_below(&t->rng, t->n_stream -
						      t->o.seq_len);
		st.lr = tune_lr_at(t->o.adamw.lr, step, t->o.steps, warmup);
		st.t = step + 1;
		rc = tune_pretrain_step(t->ctx, t->p, &t->o.adamw, t->m, t->v,
					&st);
		if (rc < 0) {
			fprintf(stderr, "kvchain-tune: training step %llu failed: %s\n",
				(unsigned long long)step + 1, strerror(-rc));
			return rc;
		}
		loss_sum += st.loss;
		logged++;
		if ((step + 1) % t->o.log_every == 0 || step + 1 == t->o.steps) {
			now = tune_now();
			printf("step=%llu/%llu loss=%.6f lr=%.6g tokens/s=%.1f grad_norm=%.6g\n",
			       (unsigned long long)step + 1,
			       (unsigned long long)t->o.steps,
			       loss_sum / (double)logged, st.lr,
			       (double)logged * t->o.batch * t->o.seq_len /
			       (now - t0 > 0 ? now - t0 : 1e-9),
			       st.grad_norm);
			fflush(stdout);
			loss_sum = 0.0;
			logged = 0;
			t0 = now;
		}
		if (t->o.checkpoint_every &&
		    (step + 1) % t->o.checkpoint_every == 0 &&
		    (rc = save_checkpoint(t, step + 1)) < 0)
			return rc;
	}
	return 0;
}

static int run(struct pretrainer *t)
{
	char err[512];
	int rc;

	if ((rc = setup(t)) < 0 || (rc = train(t)) < 0)
		return rc;
	rc = tune_params_write_gguf(t->p, t->o.out_path, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	fprintf(stderr, "kvchain-tune: wrote %s\n", t->o.out_path);
	return save_checkpoint(t, t->o.steps);
}

int tune_cmd_pretrain(int argc, char **argv)
{
	struct pretrainer *t;
	int rc;

	t = calloc(1, sizeof(*t));
	if (!t) {
		fprintf(stderr, "kvchain-tune: out of memory\n");
		return 1;
	}
	rc = parse_args(argc, argv, &t->o);
	if (rc != 0) {
		free(t);
		return rc > 0 ? 0 : 1;
	}
	rc = run(t);

	free(t->starts);
	free(t->m);
	free(t->v);
	free(t->stream);
	free(t->untrained);
	tune_ctx_free(t->ctx);
	kern_pool_destroy(t->pool);
	tune_params_free(t->p);
	model_free(t->src);
	free(t);
	return rc < 0 ? 1 : 0;
}
