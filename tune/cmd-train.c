/* SPDX-License-Identifier: MIT */
/*
 * cmd-train.c - kvchain-tune train: trains FTHSS stage prompts on a data
 * file and writes them as PEFT prompt-tuning adapters.
 *
 * Single-round chains train one stage at a time. Stage X's sequences hold
 * every stage's prompt slot (so positions match inference), then I_ALL and
 * the spans of stages A .. X; the loss is on O_X only, and the prompts of
 * stages before X sit frozen in their slots. The adapter of stage X goes
 * to OUT/X. Multi-round chains train every prompt jointly on one sequence
 * per example with the loss on every output, and write one adapter holding
 * all stages (rows in stage order) to OUT/AB (the stage letters).
 *
 * One optimiser step accumulates the gradients of --batch examples (one
 * sequence at a time), averages them, clips their global norm and applies
 * AdamW at the scheduled learning rate. OUT/checkpoint holds everything
 * the next step depends on (prompt rows, moments, step, random state), so
 * --resume after a kill gives the same prompts as an uninterrupted run.
 *
 * NOTE: not here yet: the tag tokens <reasoning>, </reasoning>, <memory>,
 * </memory> of multi-round chains, whose embedding and output rows the
 * paper trains (outputs here end with EOS instead); the paper's own
 * framing of earlier outputs ("O_A text + \n") as an option; several
 * sequences per forward pass. Pretrain mode, which builds the demo base
 * model, is kvchain-tune pretrain (tune/pretrain-cmd.c).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "data.h"
#include "kvstore.h"
#include "model.h"
#include "optim.h"
#include "prompt.h"
#include "segment.h"
#include "tokenizer.h"
#include "train.h"

#define MAX_PROMPT_DIRS 16
#define ALL_STAGES UINT32_MAX

struct train_opts {
	const char *model_path;
	const char *data_path;
	const char *out_dir;
	int stage;			/* -1: every stage */
	const char *prompt_dirs[MAX_PROMPT_DIRS];
	uint32_t n_prompt_dirs;
	uint32_t prompt_len;
	const char *init_texts[CHAIN_MAX_STAGES];	/* by stage */
	uint32_t n_init_texts;
	bool init_random;
	uint64_t seed;
	struct tune_adamw adamw;
	uint32_t epochs;		/* 0: 3 single-round, 12 multi-round */
	uint32_t batch;
	double warmup;			/* fraction of the steps */
	double clip;
	uint32_t max_len;
	uint32_t checkpoint_every;
	uint32_t log_every;
	bool resume;
	int n_threads;
};

/* State of one kvchain-tune train run. */
struct trainer {
	struct train_opts o;
	struct model *model;
	struct kern_pool *pool;
	struct tune_data data;
	uint32_t d;			/* d_model */
	int32_t eos;
	uint32_t n_slots;
	uint32_t rows[CHAIN_MAX_STAGES];
	float *prompts[CHAIN_MAX_STAGES]; /* (rows[i], d) each */
	bool frozen_given[CHAIN_MAX_STAGES]; /* from --prompts-in */
	uint64_t settings;		/* hash a checkpoint must match */
	char ck_path[4096];
	bool progress;			/* stderr is a terminal */
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain-tune train --model M.gguf --data FILE --out DIR [options]\n"
"Trains FTHSS stage prompts and writes PEFT prompt-tuning adapters into\n"
"DIR: DIR/A, DIR/B, ... for single-round chains, one adapter DIR/AB...\n"
"holding every stage for multi-round chains.\n"
"\n"
"  -m, --model FILE        GGUF base model\n"
"  -d, --data FILE         examples: JSON array or JSON Lines of objects\n"
"                          with keys I_ALL, I_A, O_A, O_B, ... or O_1A, ...\n"
"  -o, --out DIR           output folder (created with its parents)\n"
"  -s, --stage X|all       single-round stage letter to train, or every\n"
"                          stage in order (default all)\n"
"      --prompts-in DIR    adapter of earlier stages, frozen in their slots\n"
"                          (repeatable; fills stages A, B, ... in order)\n"
"  -n, --prompt-len N      virtual tokens per stage prompt (default 50)\n"
"      --init-text TEXT    initialise prompts from the token embeddings of\n"
"                          TEXT, repeated to the prompt length; repeatable:\n"
"                          the first is stage A's, the second B's, ..., the\n"
"                          last also every later stage's\n"
"      --init random       initialise from the embeddings of random tokens\n"
"                          (the default without --init-text)\n"
"      --seed N            random seed (default 0)\n"
"      --lr F              peak learning rate (default 2e-4)\n"
"      --epochs N          passes over the data (default 3 single-round,\n"
"                          12 multi-round)\n"
"  -b, --batch N           examples per optimiser step: gradients of N\n"
"                          sequences are accumulated (default 16)\n"
"      --warmup F          warm-up fraction of the steps (default 0.03)\n"
"      --weight-decay F    AdamW decoupled weight decay (default 0)\n"
"      --clip F            maximum global gradient norm; 0 turns clipping\n"
"                          off (default 1)\n"
"      --max-len N         skip (and report) examples whose sequence has\n"
"                          more than N positions (default: the model's\n"
"                          context length, at most 2048)\n"
"      --checkpoint-every N  write DIR/checkpoint every N steps (default\n"
"                          50; 0 only at the start and end of a stage)\n"
"      --resume            continue from DIR/checkpoint\n"
"      --log-every N       print a metrics line every N steps (default 1)\n"
"  -t, --threads N         worker threads (default 2)\n"
"  -h, --help              show this help\n"
"\n"
"Each metrics line on stdout reads\n"
"  stage=X step=S/T epoch=E loss=L lr=R tokens/s=V grad_norm=G\n"
"with the loss averaged over the steps since the previous line.\n");
}

enum {
	OPT_PROMPTS_IN = 256, OPT_INIT_TEXT, OPT_INIT, OPT_SEED, OPT_LR,
	OPT_EPOCHS, OPT_WARMUP, OPT_WD, OPT_CLIP, OPT_MAX_LEN, OPT_CK_EVERY,
	OPT_RESUME, OPT_LOG_EVERY,
};

static int parse_stage(const char *s, int *stage)
{
	if (!strcmp(s, "all")) {
		*stage = -1;
		return 0;
	}
	if (s[0] >= 'A' && s[0] < 'A' + CHAIN_MAX_STAGES && !s[1]) {
		*stage = s[0] - 'A';
		return 0;
	}
	fprintf(stderr,
		"kvchain-tune: invalid value '%s' for --stage: expected a stage letter A to %c or 'all'\n",
		s, 'A' + CHAIN_MAX_STAGES - 1);
	return -1;
}

/* Returns 0, 1 after --help, or -1 after printing an error. */
static int parse_args(int argc, char **argv, struct train_opts *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "out", required_argument, NULL, 'o' },
		{ "stage", required_argument, NULL, 's' },
		{ "prompts-in", required_argument, NULL, OPT_PROMPTS_IN },
		{ "prompt-len", required_argument, NULL, 'n' },
		{ "init-text", required_argument, NULL, OPT_INIT_TEXT },
		{ "init", required_argument, NULL, OPT_INIT },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "lr", required_argument, NULL, OPT_LR },
		{ "epochs", required_argument, NULL, OPT_EPOCHS },
		{ "batch", required_argument, NULL, 'b' },
		{ "warmup", required_argument, NULL, OPT_WARMUP },
		{ "weight-decay", required_argument, NULL, OPT_WD },
		{ "clip", required_argument, NULL, OPT_CLIP },
		{ "max-len", required_argument, NULL, OPT_MAX_LEN },
		{ "checkpoint-every", required_argument, NULL, OPT_CK_EVERY },
		{ "resume", no_argument, NULL, OPT_RESUME },
		{ "log-every", required_argument, NULL, OPT_LOG_EVERY },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long u;
	int c;

	memset(o, 0, sizeof(*o));
	o->stage = -1;
	o->prompt_len = 50;
	o->adamw = (struct tune_adamw){ .lr = 2e-4, .beta1 = 0.9,
					.beta2 = 0.999, .eps = 1e-8 };
	o->batch = 16;
	o->warmup = 0.03;
	o->clip = 1.0;
	o->checkpoint_every = 50;
	o->log_every = 1;
	o->n_threads = 2;
	optind = 0;
	while ((c = getopt_long(argc, argv, "m:d:o:s:n:b:t:h", longopts,
				NULL)) != -1) {
		switch (c) {
		case 'm':
			o->model_path = optarg;
			break;
		case 'd':
			o->data_path = optarg;
			break;
		case 'o':
			o->out_dir = optarg;
			break;
		case 's':
			if (parse_stage(optarg, &o->stage) < 0)
				return -1;
			break;
		case OPT_PROMPTS_IN:
			if (tune_push_arg("--prompts-in", optarg, o->prompt_dirs,
					  &o->n_prompt_dirs, MAX_PROMPT_DIRS))
				return -1;
			break;
		case 'n':
			if (tune_parse_uint("--prompt-len", optarg, 1, 4096, &u))
				return -1;
			o->prompt_len = (uint32_t)u;
			break;
		case OPT_INIT_TEXT:
			if (tune_push_arg("--init-text", optarg, o->init_texts,
					  &o->n_init_texts, CHAIN_MAX_STAGES))
				return -1;
			break;
		case OPT_INIT:
			if (strcmp(optarg, "random") != 0) {
				fprintf(stderr,
					"kvchain-tune: invalid value '%s' for --init: expected 'random' (use --init-text for text)\n",
					optarg);
				return -1;
			}
			o->init_random = true;
			break;
		case OPT_SEED:
			if (tune_parse_uint("--seed", optarg, 0, ULONG_MAX, &u))
				return -1;
			o->seed = u;
			break;
		case OPT_LR:
			if (tune_parse_double("--lr", optarg, 0.0, 10.0,
					      &o->adamw.lr))
				return -1;
			break;
		case OPT_EPOCHS:
			if (tune_parse_uint("--epochs", optarg, 1, 100000, &u))
				return -1;
			o->epochs = (uint32_t)u;
			break;
		case 'b':
			if (tune_parse_uint("--batch", optarg, 1, 1u << 20, &u))
				return -1;
			o->batch = (uint32_t)u;
			break;
		case OPT_WARMUP:
			if (tune_parse_double("--warmup", optarg, 0.0, 1.0,
					      &o->warmup))
				return -1;
			break;
		case OPT_WD:
			if (tune_parse_double("--weight-decay", optarg, 0.0,
					      1.0, &o->adamw.weight_decay))
				return -1;
			break;
		case OPT_CLIP:
			if (tune_parse_double("--clip", optarg, 0.0, 1e9,
					      &o->clip))
				return -1;
			break;
		case OPT_MAX_LEN:
			if (tune_parse_uint("--max-len", optarg, 1, 1u << 20, &u))
				return -1;
			o->max_len = (uint32_t)u;
			break;
		case OPT_CK_EVERY:
			if (tune_parse_uint("--checkpoint-every", optarg, 0,
					    1u << 30, &u))
				return -1;
			o->checkpoint_every = (uint32_t)u;
			break;
		case OPT_RESUME:
			o->resume = true;
			break;
		case OPT_LOG_EVERY:
			if (tune_parse_uint("--log-every", optarg, 1, 1u << 30,
					    &u))
				return -1;
			o->log_every = (uint32_t)u;
			break;
		case 't':
			if (tune_parse_uint("--threads", optarg, 1, 256, &u))
				return -1;
			o->n_threads = (int)u;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			fprintf(stderr,
				"kvchain-tune: invalid option; see kvchain-tune train --help\n");
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kvchain-tune: unexpected argument '%s'\n",
			argv[optind]);
		return -1;
	}
	if (!o->model_path || !o->data_path || !o->out_dir) {
		fprintf(stderr,
			"kvchain-tune: --model, --data and --out are required; see kvchain-tune train --help\n");
		return -1;
	}
	if (o->n_init_texts && o->init_random) {
		fprintf(stderr,
			"kvchain-tune: --init random and --init-text exclude each other\n");
		return -1;
	}
	return 0;
}

/* ---- Setup ------------------------------------------------------------ */

/*
 * Tokenizes the data through a throw-away engine, so inputs are framed by
 * the engine's own engine_encode_input.
 */
static int tokenize_data(struct trainer *t)
{
	size_t bytes = kv_store_block_bytes(t->model, KERN_TYPE_F32, 1);
	struct kv_store *store = NULL;
	struct engine *eng = NULL;
	char err[512];
	void *mem;
	int rc = -ENOMEM;

	mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!mem)
		goto out;
	rc = kv_store_create(mem, (bytes + 63) & ~(size_t)63, t->model,
			     KERN_TYPE_F32, 1, &store);
	if (rc < 0)
		goto out_mem;
	eng = engine_create(t->model, store, NULL, 1, 1);
	if (!eng) {
		rc = -ENOMEM;
		goto out_store;
	}
	rc = tune_data_tokenize(&t->data, eng, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "kvchain-tune: %s\n", err);
	engine_destroy(eng);
out_store:
	kv_store_destroy(store);
out_mem:
	free(mem);
out:
	if (rc == -ENOMEM)
		fprintf(stderr, "kvchain-tune: out of memory\n");
	return rc;
}

/* Loads --prompts-in into the first slots and sizes the others. */
static int load_frozen_prompts(struct trainer *t)
{
	struct stage_prompt *got[CHAIN_MAX_STAGES];
	uint32_t i, n = 0;
	char err[512];
	int rc;

	rc = tune_load_prompts(t->model, t->o.prompt_dirs, t->o.n_prompt_dirs,
			       got, CHAIN_MAX_STAGES, &n, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	for (i = 0; i < n; i++) {
		if (i < t->n_slots) {
			t->rows[i] = got[i]->n;
			t->prompts[i] = got[i]->embd;
			got[i]->embd = NULL;
			t->frozen_given[i] = true;
		}
		stage_prompt_free(got[i]);
	}
	for (i = 0; i < t->n_slots; i++) {
		if (t->frozen_given[i])
			continue;
		t->rows[i] = t->o.prompt_len;
		t->prompts[i] = calloc((size_t)t->rows[i] * t->d,
				       sizeof(float));
		if (!t->prompts[i]) {
			fprintf(stderr, "kvchain-tune: out of memory\n");
			return -ENOMEM;
		}
	}
	return 0;
}

/* Folds the data, model, options and frozen prompts into t->settings. */
static void hash_settings(struct trainer *t)
{
	const struct train_opts *o = &t->o;
	uint64_t h = TUNE_HASH_INIT;
	uint32_t e, k, i;

	h = tune_hash(h, &t->model->cfg, sizeof(t->model->cfg));
	for (k = 0; k < t->data.n_keys; k++)
		h = tune_hash(h, t->data.keys[k].name,
			      strlen(t->data.keys[k].name) + 1);
	for (e = 0; e < t->data.n_examples; e++)
		for (k = 0; k < t->data.n_keys; k++)
			h = tune_hash(h, t->data.examples[e].text[k],
				      t->data.examples[e].len[k] + 1);
	h = tune_hash(h, &o->stage, sizeof(o->stage));
	h = tune_hash(h, &o->prompt_len, sizeof(o->prompt_len));
	for (i = 0; i < o->n_init_texts; i++)
		h = tune_hash(h, o->init_texts[i], strlen(o->init_texts[i]) + 1);
	h = tune_hash(h, &o->seed, sizeof(o->seed));
	h = tune_hash(h, &o->adamw, sizeof(o->adamw));
	h = tune_hash(h, &o->epochs, sizeof(o->epochs));
	h = tune_hash(h, &o->batch, sizeof(o->batch));
	h = tune_hash(h, &o->warmup, sizeof(o->warmup));
	h = tune_hash(h, &o->clip, sizeof(o->clip));
	h = tune_hash(h, &o->max_len, sizeof(o->max_len));
	for (i = 0; i < t->n_slots; i++)
		if (t->frozen_given[i])
			h = tune_hash(h, t->prompts[i],
				      (size_t)t->rows[i] * t->d * sizeof(float));
	t->settings = h;
}

/* ---- One stage ------------------------------------------------------- */

/* What one stage (or the joint multi-round run) trains. */
struct stage_run {
	int train_stage;		/* -1: every stage, multi-round */
	bool trained[CHAIN_MAX_STAGES];
	size_t offset[CHAIN_MAX_STAGES]; /* of each trained slot's values */
	size_t n;			/* trained values */
	uint32_t *usable;		/* examples that fit --max-len */
	uint32_t n_usable;
	uint32_t max_pos;		/* longest usable sequence */
	uint64_t steps_per_epoch;
	uint64_t total;
	uint64_t warmup;
	double *m, *v, *g, *g_one[CHAIN_MAX_STAGES];
	uint32_t *perm;
};

static void stage_name(const struct trainer *t, const struct stage_run *r,
		       char *buf, size_t len)
{
	uint32_t i, n = 0;

	if (r->train_stage >= 0) {
		snprintf(buf, len, "%c", tune_stage_letter((uint32_t)r->train_stage));
		return;
	}
	for (i = 0; i < t->n_slots && n + 1 < len; i++)
		buf[n++] = tune_stage_letter(i);
	buf[n] = '\0';
}

/* Finds the examples that fit --max-len, reporting the others. */
static int select_examples(struct trainer *t, struct stage_run *r)
{
	struct tune_layout lay;
	uint32_t e;
	int rc;

	r->usable = malloc((size_t)t->data.n_examples * sizeof(uint32_t));
	if (!r->usable)
		return -ENOMEM;
	for (e = 0; e < t->data.n_examples; e++) {
		const struct tune_example *ex = &t->data.examples[e];

		rc = tune_data_layout(&t->data, ex, t->rows, r->train_stage,
				      t->eos, &lay);
		if (rc < 0) {
			fprintf(stderr,
				"kvchain-tune: %s:%u: cannot lay out the example (%s)\n",
				t->data.name, ex->line, strerror(-rc));
			return rc;
		}
		if (lay.n_pos > t->o.max_len) {
			fprintf(stderr,
				"kvchain-tune: %s:%u: example %u needs %u positions, more than --max-len %u; skipped\n",
				t->data.name, ex->line, ex->index, lay.n_pos,
				t->o.max_len);
		} else {
			r->usable[r->n_usable++] = e;
			if (lay.n_pos > r->max_pos)
				r->max_pos = lay.n_pos;
		}
		tune_layout_free(&lay);
	}
	if (r->n_usable == 0) {
		fprintf(stderr,
			"kvchain-tune: %s: no example fits --max-len %u\n",
			t->data.name, t->o.max_len);
		return -E2BIG;
	}
	return 0;
}

static int stage_run_init(struct trainer *t, struct stage_run *r,
			  int train_stage)
{
	uint32_t i, epochs;
	int rc;

	memset(r, 0, sizeof(*r));
	r->train_stage = train_stage;
	for (i = 0; i < t->n_slots; i++) {
		r->trained[i] = train_stage < 0 || (uint32_t)train_stage == i;
		if (r->trained[i]) {
			r->offset[i] = r->n;
			r->n += (size_t)t->rows[i] * t->d;
		}
	}
	if ((rc = select_examples(t, r)) < 0)
		return rc;
	epochs = t->o.epochs ? t->o.epochs : t->data.multi_round ? 12 : 3;
	r->steps_per_epoch = (r->n_usable + t->o.batch - 1) / t->o.batch;
	r->total = r->steps_per_epoch * epochs;
	/* whole steps, rounded down */
	r->warmup = (uint64_t)(t->o.warmup * (double)r->total);
	r->m = calloc(r->n, sizeof(double));
	r->v = calloc(r->n, sizeof(double));
	r->g = calloc(r->n, sizeof(double));
	r->perm = malloc((size_t)r->n_usable * sizeof(uint32_t));
	if (!r->m || !r->v || !r->g || !r->perm)
		return -ENOMEM;
	for (i = 0; i < t->n_slots; i++) {
		if (!r->trained[i])
			continue;
		r->g_one[i] = malloc((size_t)t->rows[i] * t->d *
				     sizeof(double));
		if (!r->g_one[i])
			return -ENOMEM;
	}
	return 0;
}

static void stage_run_free(struct stage_run *r)
{
	uint32_t i;

	free(r->usable);
	free(r->m);
	free(r->v);
	free(r->g);
	free(r->perm);
	for (i = 0; i < CHAIN_MAX_STAGES; i++)
		free(r->g_one[i]);
}

/* Returns the ids of @text (free with free()) in *ids, or a negative errno. */
static int encode_init_text(const struct tokenizer *tok, const char *text,
			    int32_t **ids)
{
	size_t len = strlen(text);
	int n = tok_encode(tok, text, len, 0, NULL, 0);

	if (n <= 0) {
		fprintf(stderr,
			"kvchain-tune: --init-text '%s' encodes to no tokens\n",
			text);
		return -EINVAL;
	}
	*ids = malloc((size_t)n * sizeof(int32_t));
	if (!*ids)
		return -ENOMEM;
	tok_encode(tok, text, len, 0, *ids, (size_t)n);
	return n;
}

/* Fills the trained slots from --init-text or random token embeddings. */
static int init_prompts(struct trainer *t, struct stage_run *r,
			struct tune_rng *rng)
{
	const struct tokenizer *tok = t->model->tok;
	uint32_t n_vocab = t->model->cfg.n_vocab, s, j;

	for (s = 0; s < t->n_slots; s++) {
		int32_t *ids = NULL;
		int n_ids = 0;

		if (!r->trained[s])
			continue;
		if (t->o.n_init_texts) {
			uint32_t i = s < t->o.n_init_texts ? s :
				     t->o.n_init_texts - 1;

			n_ids = encode_init_text(tok, t->o.init_texts[i],
						 &ids);
			if (n_ids < 0)
				return n_ids;
		}
		for (j = 0; j < t->rows[s]; j++) {
			int32_t id;

			if (ids) {
				id = ids[j % (uint32_t)n_ids];
			} else {
				do
					id = (int32_t)tune_rng_below(rng, n_vocab);
				while (tok_is_control(tok, id));
			}
			model_embed(t->model, id,
				    t->prompts[s] + (size_t)j * t->d);
		}
		free(ids);
	}
	return 0;
}

/* Copies the trained slots into @w (r->n values), or back with @to_slots. */
static void gather(struct trainer *t, const struct stage_run *r, float *w,
		   bool to_slots)
{
	uint32_t s;

	for (s = 0; s < t->n_slots; s++) {
		size_t n = (size_t)t->rows[s] * t->d;

		if (!r->trained[s])
			continue;
		if (to_slots)
			memcpy(t->prompts[s], w + r->offset[s],
			       n * sizeof(float));
		else
			memcpy(w + r->offset[s], t->prompts[s],
			       n * sizeof(float));
	}
}

static int save_checkpoint(struct trainer *t, const struct stage_run *r,
			   uint64_t step, const struct tune_rng *rng)
{
	struct tune_checkpoint ck = {
		.settings = t->settings,
		.stage = r->train_stage < 0 ? ALL_STAGES :
			 (uint32_t)r->train_stage,
		.step = step, .total = r->total, .rng = *rng, .n = r->n,
		.m = r->m, .v = r->v,
	};
	char err[512];
	int rc;

	ck.w = malloc(r->n * sizeof(float));
	if (!ck.w)
		return -ENOMEM;
	gather(t, r, ck.w, false);
	rc = tune_checkpoint_save(t->ck_path, &ck, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "kvchain-tune: %s\n", err);
	free(ck.w);
	return rc;
}

/* Draws the order of the usable examples for one epoch. */
static void shuffle(struct stage_run *r, struct tune_rng *rng)
{
	uint32_t i, j, x;

	for (i = 0; i < r->n_usable; i++)
		r->perm[i] = i;
	for (i = r->n_usable; i > 1; i--) {
		j = (uint32_t)tune_rng_below(rng, i);
		x = r->perm[i - 1];
		r->perm[i - 1] = r->perm[j];
		r->perm[j] = x;
	}
}

/* Draws the progress bar of a terminal on stderr. */
static void draw_progress(uint64_t step, uint64_t total, double loss)
{
	int width = 30, filled = (int)((double)width * (double)step /
				       (double)total), i;

	fputs("\r[", stderr);
	for (i = 0; i < width; i++)
		fputc(i < filled ? '#' : '.', stderr);
	fprintf(stderr, "] %llu/%llu loss %.4f", (unsigned long long)step,
		(unsigned long long)total, loss);
	fflush(stderr);
}

/* Figures since the previous metrics line. */
struct log_window {
	double loss_sum;
	uint64_t steps;
	uint64_t tokens;
	double start;
};

/*
 * Runs one optimiser step over batch @k of the epoch: forward and
 * backward of each example, gradients averaged, clipped and applied.
 */
static int train_step(struct trainer *t, struct tune_ctx *ctx,
		      struct stage_run *r, uint64_t step, uint64_t k,
		      struct log_window *win, double *grad_norm)
{
	uint64_t first = k * t->o.batch;
	uint32_t n_in = (uint32_t)(r->n_usable - first < t->o.batch ?
				   r->n_usable - first : t->o.batch);
	struct tune_layout lay;
	double loss, lr;
	uint32_t j, s;
	size_t i;
	int rc;

	memset(r->g, 0, r->n * sizeof(double));
	for (j = 0; j < n_in; j++) {
		const struct tune_example *ex =
			&t->data.examples[r->usable[r->perm[first + j]]];

		rc = tune_data_layout(&t->data, ex, t->rows, r->train_stage,
				      t->eos, &lay);
		if (rc < 0)
			return rc;
		rc = tune_forward(ctx, &lay,
				  (const float *const *)t->prompts, &loss,
				  NULL);
		if (rc == 0)
			rc = tune_backward(ctx, r->g_one);
		win->tokens += lay.n_pos;
		tune_layout_free(&lay);
		if (rc < 0)
			return rc;
		win->loss_sum += loss / n_in;
		for (s = 0; s < t->n_slots; s++) {
			size_t n = (size_t)t->rows[s] * t->d;
			double *g = r->g + r->offset[s];

			if (!r->trained[s])
				continue;
			for (i = 0; i < n; i++)
				g[i] += r->g_one[s][i] / n_in;
		}
	}
	win->steps++;
	*grad_norm = tune_clip_grad(r->g, r->n, t->o.clip);
	lr = tune_lr_at(t->o.adamw.lr, step, r->total, r->warmup);
	for (s = 0; s < t->n_slots; s++) {
		if (!r->trained[s])
			continue;
		tune_adamw_step(&t->o.adamw, t->prompts[s],
				r->m + r->offset[s], r->v + r->offset[s],
				r->g + r->offset[s],
				(size_t)t->rows[s] * t->d, step + 1, lr);
	}
	return 0;
}

static void print_metrics(struct trainer *t, struct stage_run *r,
			  uint64_t step, struct log_window *win,
			  double grad_norm)
{
	double now = tune_now(), dt = now - win->start;
	char name[CHAIN_MAX_STAGES + 1];

	stage_name(t, r, name, sizeof(name));
	if (t->progress)
		fputs("\r\033[K", stderr);
	printf("stage=%s step=%llu/%llu epoch=%llu loss=%.6f lr=%.6g tokens/s=%.1f grad_norm=%.6g\n",
	       name, (unsigned long long)(step + 1),
	       (unsigned long long)r->total,
	       (unsigned long long)(step / r->steps_per_epoch + 1),
	       win->loss_sum / (double)win->steps,
	       tune_lr_at(t->o.adamw.lr, step, r->total, r->warmup),
	       dt > 0 ? (double)win->tokens / dt : 0.0, grad_norm);
	fflush(stdout);
	memset(win, 0, sizeof(*win));
	win->start = now;
}

/* Writes the trained prompts of @r as one adapter into OUT/<stages>. */
static int save_adapter(struct trainer *t, const struct stage_run *r)
{
	struct stage_prompt *p[CHAIN_MAX_STAGES];
	char name[CHAIN_MAX_STAGES + 1], dir[4096], err[512];
	uint32_t s, n = 0;
	int rc = 0;

	stage_name(t, r, name, sizeof(name));
	snprintf(dir, sizeof(dir), "%s/%s", t->o.out_dir, name);
	for (s = 0; s < t->n_slots && rc == 0; s++) {
		if (!r->trained[s])
			continue;
		rc = stage_prompt_soft(t->model, t->prompts[s], t->rows[s],
				       t->d, &p[n], err, sizeof(err));
		if (rc == 0)
			n++;
	}
	if (rc == 0)
		rc = stage_prompt_save_peft(dir,
					    (const struct stage_prompt *const *)p,
					    n, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "kvchain-tune: %s\n", err);
	else
		fprintf(stderr, "kvchain-tune: wrote %s\n", dir);
	while (n > 0)
		stage_prompt_free(p[--n]);
	return rc;
}

/*
 * Trains the prompts @r names, starting from checkpoint @ck when it is not
 * NULL, and writes their adapter.
 */
static int train_stage(struct trainer *t, struct stage_run *r,
		       const struct tune_checkpoint *ck)
{
	struct tune_rng rng, epoch_rng;
	struct log_window win = { 0 };
	struct tune_ctx *ctx;
	uint64_t step, start = 0;
	double grad_norm = 0.0;
	char name[CHAIN_MAX_STAGES + 1];
	int rc;

	ctx = tune_ctx_create(t->model, t->pool, r->max_pos, TUNE_F32);
	if (!ctx) {
		fprintf(stderr, "kvchain-tune: out of memory for sequences of %u positions\n",
			r->max_pos);
		return -ENOMEM;
	}
	stage_name(t, r, name, sizeof(name));
	if (ck) {
		if (ck->n != r->n || ck->total != r->total) {
			fprintf(stderr,
				"kvchain-tune: %s does not match this run (%zu values, %llu steps); remove it or run without --resume\n",
				t->ck_path, ck->n, (unsigned long long)ck->total);
			rc = -EINVAL;
			goto out_ctx;
		}
		gather(t, r, ck->w, true);
		memcpy(r->m, ck->m, r->n * sizeof(double));
		memcpy(r->v, ck->v, r->n * sizeof(double));
		rng = ck->rng;
		start = ck->step;
		fprintf(stderr, "kvchain-tune: stage %s: resuming at step %llu of %llu\n",
			name, (unsigned long long)start,
			(unsigned long long)r->total);
	} else {
		tune_rng_seed(&rng, t->o.seed ^
			      (0x9e3779b97f4a7c15ull *
			       (uint64_t)(r->train_stage + 2)));
		if ((rc = init_prompts(t, r, &rng)) < 0)
			goto out_ctx;
		if ((rc = save_checkpoint(t, r, 0, &rng)) < 0)
			goto out_ctx;
	}
	fprintf(stderr,
		"kvchain-tune: stage %s: %u examples, %llu steps of %u, %llu warm-up steps\n",
		name, r->n_usable, (unsigned long long)r->total, t->o.batch,
		(unsigned long long)r->warmup);

	epoch_rng = rng;
	win.start = tune_now();
	for (step = start; step < r->total; step++) {
		uint64_t k = step % r->steps_per_epoch;

		/* an epoch's order comes from the state at its start */
		if (k == 0 || step == start) {
			epoch_rng = rng;
			shuffle(r, &rng);
		}
		rc = train_step(t, ctx, r, step, k, &win, &grad_norm);
		if (rc < 0) {
			fprintf(stderr, "kvchain-tune: training step %llu failed: %s\n",
				(unsigned long long)step + 1, strerror(-rc));
			goto out_ctx;
		}
		if (t->progress)
			draw_progress(step + 1, r->total,
				      win.loss_sum / (double)win.steps);
		if ((step + 1) % t->o.log_every == 0 || step + 1 == r->total)
			print_metrics(t, r, step, &win, grad_norm);
		if (t->o.checkpoint_every &&
		    (step + 1) % t->o.checkpoint_every == 0 &&
		    step + 1 < r->total) {
			/* a new epoch would shuffle from the current state */
			rc = save_checkpoint(t, r, step + 1,
					     (step + 1) % r->steps_per_epoch ?
					     &epoch_rng : &rng);
			if (rc < 0)
				goto out_ctx;
		}
	}
	if (t->progress)
		fputc('\n', stderr);
	if ((rc = save_adapter(t, r)) < 0)
		goto out_ctx;
	rc = save_checkpoint(t, r, r->total, &rng);
out_ctx:
	tune_ctx_free(ctx);
	return rc;
}

/* Loads OUT/X, which an earlier run finished, into slot @stage. */
static int load_finished_stage(struct trainer *t, uint32_t stage)
{
	char dir[4096], err[512];
	const char *dirs[1] = { dir };
	struct stage_prompt *p;
	uint32_t n;
	int rc;

	snprintf(dir, sizeof(dir), "%s/%c", t->o.out_dir,
		 tune_stage_letter(stage));
	rc = tune_load_prompts(t->model, dirs, 1, &p, 1, &n, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	if (p->n != t->rows[stage]) {
		fprintf(stderr, "kvchain-tune: %s: %u virtual tokens, expected %u\n",
			dir, p->n, t->rows[stage]);
		stage_prompt_free(p);
		return -EINVAL;
	}
	memcpy(t->prompts[stage], p->embd,
	       (size_t)p->n * t->d * sizeof(float));
	stage_prompt_free(p);
	fprintf(stderr, "kvchain-tune: stage %c: finished before, loaded %s\n",
		tune_stage_letter(stage), dir);
	return 0;
}

/* ---- The command ------------------------------------------------------ */

/* Checks what training needs before anything is written. */
static int check_plan(struct trainer *t, uint32_t *first, uint32_t *last)
{
	uint32_t s;

	if (t->data.multi_round) {
		if (t->o.stage >= 0) {
			fprintf(stderr,
				"kvchain-tune: %s holds a multi-round chain (O_1A, ...), whose stages train jointly; drop --stage\n",
				t->data.name);
			return -EINVAL;
		}
		if (t->o.n_prompt_dirs) {
			fprintf(stderr,
				"kvchain-tune: --prompts-in is for single-round chains; every stage of %s trains\n",
				t->data.name);
			return -EINVAL;
		}
		*first = *last = ALL_STAGES;
		return 0;
	}
	if (t->o.stage >= (int)t->data.n_stages) {
		fprintf(stderr, "kvchain-tune: --stage %c: %s has no key O_%c\n",
			tune_stage_letter((uint32_t)t->o.stage), t->data.name,
			tune_stage_letter((uint32_t)t->o.stage));
		return -EINVAL;
	}
	*first = t->o.stage < 0 ? 0 : (uint32_t)t->o.stage;
	*last = t->o.stage < 0 ? t->data.n_stages - 1 : (uint32_t)t->o.stage;
	for (s = 0; s < *first; s++) {
		if (!t->frozen_given[s]) {
			fprintf(stderr,
				"kvchain-tune: training stage %c needs the prompt of stage %c: pass its adapter with --prompts-in\n",
				tune_stage_letter(*first), tune_stage_letter(s));
			return -EINVAL;
		}
	}
	return 0;
}

static int make_out_dir(const char *dir)
{
	char err[512];
	int rc = prompt_make_dirs(dir, err, sizeof(err));

	if (rc < 0)
		fprintf(stderr, "kvchain-tune: %s\n", err);
	return rc;
}

/* Reads the checkpoint for --resume; *have is false when there is none. */
static int read_checkpoint(struct trainer *t, struct tune_checkpoint *ck,
			   bool *have)
{
	char err[512];
	int rc;

	*have = false;
	if (!t->o.resume)
		return 0;
	rc = tune_checkpoint_load(t->ck_path, ck, err, sizeof(err));
	if (rc == -ENOENT) {
		fprintf(stderr, "kvchain-tune: no %s; starting from step 0\n",
			t->ck_path);
		return 0;
	}
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	if (ck->settings != t->settings) {
		fprintf(stderr,
			"kvchain-tune: %s was written for other data, model or options; rerun with the same ones or without --resume\n",
			t->ck_path);
		tune_checkpoint_free(ck);
		return -EINVAL;
	}
	*have = true;
	return 0;
}

static int run(struct trainer *t)
{
	struct tune_checkpoint ck;
	struct stage_run r;
	uint32_t first, last, s;
	bool have_ck;
	char err[512];
	int rc;

	rc = model_load(t->o.model_path, &t->model, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	t->d = t->model->cfg.d_model;
	t->eos = tok_eos(t->model->tok);
	if (!t->o.max_len)
		t->o.max_len = t->model->cfg.n_ctx_train < 2048 ?
			       t->model->cfg.n_ctx_train : 2048;
	rc = tune_data_load(t->o.data_path, &t->data, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	t->n_slots = t->data.n_stages;
	if ((rc = tokenize_data(t)) < 0 ||
	    (rc = load_frozen_prompts(t)) < 0 ||
	    (rc = check_plan(t, &first, &last)) < 0)
		return rc;
	hash_settings(t);
	snprintf(t->ck_path, sizeof(t->ck_path), "%s/checkpoint",
		 t->o.out_dir);
	if ((rc = read_checkpoint(t, &ck, &have_ck)) < 0)
		return rc;
	t->pool = kern_pool_create(t->o.n_threads);
	if (!t->pool) {
		rc = -ENOMEM;
		goto out_ck;
	}
	if ((rc = make_out_dir(t->o.out_dir)) < 0)
		goto out_ck;

	for (s = first; ; s++) {
		int train = s == ALL_STAGES ? -1 : (int)s;

		if (have_ck && s != ALL_STAGES && ck.stage != ALL_STAGES &&
		    s < ck.stage) {
			if ((rc = load_finished_stage(t, s)) < 0)
				break;
		} else {
			rc = stage_run_init(t, &r, train);
			if (rc == 0)
				rc = train_stage(t, &r, have_ck &&
						 ck.stage == s ? &ck : NULL);
			stage_run_free(&r);
			if (rc < 0)
				break;
		}
		if (s == last)
			break;
	}
out_ck:
	if (have_ck)
		tune_checkpoint_free(&ck);
	return rc;
}

int tune_cmd_train(int argc, char **argv)
{
	struct trainer *t;
	uint32_t i;
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
	t->progress = isatty(STDERR_FILENO);
	rc = run(t);

	for (i = 0; i < CHAIN_MAX_STAGES; i++)
		free(t->prompts[i]);
	kern_pool_destroy(t->pool);
	tune_data_free(&t->data);
	model_free(t->model);
	free(t);
	return rc < 0 ? 1 : 0;
}
