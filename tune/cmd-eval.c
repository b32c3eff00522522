/* SPDX-License-Identifier: MIT */
/*
 * cmd-eval.c - kvchain-tune eval: runs each example of a single-round data
 * file through the engine in several ways and prints, per way, exact match
 * and token F1 of the last stage's output against the reference, that
 * stage's time to first token, the whole chain's time and the peak of KV
 * bytes held:
 *
 *   shared     one segment (FTHSS): I_ALL, then per stage its input, its
 *              generation reading the KV earlier stages left, and the drop
 *              of its input once it is done;
 *   recompute  the last stage alone with its prompt, prefilling I_ALL's
 *              text, the text the earlier stages generated in shared mode,
 *              and its own input from scratch;
 *
 * and, with the prompts of a classic chain (--classic: each stage tuned
 * alone on its own text),
 *
 *   classic    the text-passing chain: every stage alone with its classic
 *              prompt, prefilling I_ALL's text, the text the earlier stages
 *              generated in this way, and its own input;
 *   naive      the classic prompts in one segment, as in shared.
 *
 * A stage that runs alone does so in a segment of a one-stage chain made
 * once, so its prompt slot is computed once, as a server keeps it. Each
 * way has its own KV store, so "peak KV" is the most blocks of that store
 * in use at any logits row of the chain, prompt slots included. "chain" is
 * the time from the first input to the end of the last stage. Generation
 * is greedy.
 *
 * NOTE: multi-round files are rejected; evaluating an alternating chain
 * needs the closing-tag stops of the multi-round tag tokens, which are not
 * there yet.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "commands.h"
#include "data.h"
#include "kvstore.h"
#include "metrics.h"
#include "model.h"
#include "prompt.h"
#include "segment.h"

#define MAX_PROMPT_DIRS 16
#define BLOCK_TOKENS 8
#define MAX_CTX 4096

struct eval_opts {
	const char *model_path;
	const char *data_path;
	char *prompt_dirs[MAX_PROMPT_DIRS];
	uint32_t n_prompt_dirs;
	char *classic_dirs[MAX_PROMPT_DIRS];
	uint32_t n_classic_dirs;
	uint32_t max_tokens;
	int n_threads;
	const char *predictions_path;
	bool verbose;
};

/* One engine over its own store. */
struct mode_engine {
	void *mem;
	struct kv_store *store;
	struct engine *eng;
};

/* Totals of one way over the examples. */
struct mode_totals {
	double em;
	double f1;
	double ttft;
	double chain;
	double kv_bytes;
};

/* Collects a generation's text and the figures of a chain's run. */
struct gen_watch {
	char *text;
	size_t len;
	size_t cap;
	const struct kv_store *store;
	double chain_start;	/* the chain's first input */
	double start;		/* the stage's start */
	double first;		/* time of the stage's first logits row, or 0 */
	size_t peak;		/* most bytes of KV blocks in use in the chain */
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain-tune eval --model M.gguf --data FILE --prompts DIR... [options]\n"
"Runs every example through a single-round chain in shared mode (FTHSS)\n"
"and with the last stage recomputing from text, and with --classic also\n"
"as a text-passing chain and in shared mode with the classic prompts;\n"
"prints exact match, token F1, the last stage's time to first token, the\n"
"chain's time and the peak of KV bytes held, per way.\n"
"\n"
"  -m, --model FILE         GGUF base model\n"
"  -d, --data FILE          examples, as for kvchain-tune train; the last\n"
"                           stage's output key is the reference\n"
"  -p, --prompts DIR        adapter folder (repeatable; fills stages A, B,\n"
"                           ... in order)\n"
"      --classic DIR        adapter folder of a classic chain's prompts\n"
"                           (repeatable, in stage order like --prompts):\n"
"                           adds the classic and naive ways\n"
"  -n, --max-tokens N       tokens each stage may generate (default 64)\n"
"  -t, --threads N          worker threads (default 2)\n"
"      --write-predictions FILE  write the examples as JSON Lines with the\n"
"                           last output replaced by the shared mode's\n"
"  -v, --verbose            print each example's outputs and scores\n"
"  -h, --help               show this help\n");
}

enum { OPT_PREDICTIONS = 256, OPT_CLASSIC };

static int parse_args(int argc, char **argv, struct eval_opts *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "prompts", required_argument, NULL, 'p' },
		{ "classic", required_argument, NULL, OPT_CLASSIC },
		{ "max-tokens", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' },
		{ "write-predictions", required_argument, NULL,
		  OPT_PREDICTIONS },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long u;
	int c;

	memset(o, 0, sizeof(*o));
	o->max_tokens = 64;
	o->n_threads = 2;
	optind = 0;
	while ((c = getopt_long(argc, argv, "m:d:p:n:t:vh", longopts,
				NULL)) != -1) {
		switch (c) {
		case 'm':
			o->model_path = optarg;
			break;
		case 'd':
			o->data_path = optarg;
			break;
		case 'p':
			if (o->n_prompt_dirs == MAX_PROMPT_DIRS) {
				fprintf(stderr,
					"kvchain-tune: at most %d --prompts folders\n",
					MAX_PROMPT_DIRS);
				return -1;
			}
			o->prompt_dirs[o->n_prompt_dirs++] = optarg;
			break;
		case OPT_CLASSIC:
			if (o->n_classic_dirs == MAX_PROMPT_DIRS) {
				fprintf(stderr,
					"kvchain-tune: at most %d --classic folders\n",
					MAX_PROMPT_DIRS);
				return -1;
			}
			o->classic_dirs[o->n_classic_dirs++] = optarg;
			break;
		case 'n':
			if (tune_parse_uint("--max-tokens", optarg, 1, 65536, &u))
				return -1;
			o->max_tokens = (uint32_t)u;
			break;
		case 't':
			if (tune_parse_uint("--threads", optarg, 1, 256, &u))
				return -1;
			o->n_threads = (int)u;
			break;
		case OPT_PREDICTIONS:
			o->predictions_path = optarg;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			fprintf(stderr,
				"kvchain-tune: invalid option; see kvchain-tune eval --help\n");
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kvchain-tune: unexpected argument '%s'\n",
			argv[optind]);
		return -1;
	}
	if (!o->model_path || !o->data_path || !o->n_prompt_dirs) {
		fprintf(stderr,
			"kvchain-tune: --model, --data and --prompts are required; see kvchain-tune eval --help\n");
		return -1;
	}
	return 0;
}

static size_t bytes_held(const struct kv_store *store)
{
	struct kv_store_stats st;

	kv_store_get_stats(store, &st);
	return (size_t)(st.n_blocks - st.n_free) * st.block_bytes;
}

static int on_text(void *arg, int32_t id, const char *text, size_t len)
{
	struct gen_watch *w = arg;

	(void)id;
	if (w->len + len + 1 > w->cap) {
		size_t cap = (w->len + len + 1) * 2;
		char *p = realloc(w->text, cap);

		if (!p)
			return 1;
		w->text = p;
		w->cap = cap;
	}
	memcpy(w->text + w->len, text, len);
	w->len += len;
	w->text[w->len] = '\0';
	return 0;
}

static void on_logits(void *arg, const float *logits, uint32_t n)
{
	struct gen_watch *w = arg;
	size_t held = bytes_held(w->store);

	(void)logits;
	(void)n;
	if (w->first == 0.0)
		w->first = tune_now();
	if (held > w->peak)
		w->peak = held;
}

/* Starts a stage's generation. */
static void watch_reset(struct gen_watch *w)
{
	w->len = 0;
	if (w->text)
		w->text[0] = '\0';
	w->first = 0.0;
	w->start = tune_now();
}

/* Starts a chain's run on @store. */
static void watch_begin(struct gen_watch *w, const struct kv_store *store)
{
	w->store = store;
	w->peak = 0;
	w->chain_start = tune_now();
}

static void greedy_params(struct gen_params *gp, uint32_t max_tokens,
			  struct gen_watch *w)
{
	memset(gp, 0, sizeof(*gp));
	sampler_params_default(&gp->sampling);
	gp->max_tokens = max_tokens;
	gp->on_logits = on_logits;
	gp->logits_arg = w;
}

static int mode_engine_init(struct mode_engine *me, const struct model *m,
			    struct kern_pool *pool, uint32_t n_ctx,
			    uint32_t n_blocks)
{
	size_t bytes = kv_store_block_bytes(m, KERN_TYPE_F32, BLOCK_TOKENS) *
		       n_blocks;
	int rc;

	memset(me, 0, sizeof(*me));
	me->mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!me->mem)
		return -ENOMEM;
	rc = kv_store_create(me->mem, bytes, m, KERN_TYPE_F32, BLOCK_TOKENS,
			     &me->store);
	if (rc < 0)
		return rc;
	me->eng = engine_create(m, me->store, pool, 64, n_ctx);
	return me->eng ? 0 : -ENOMEM;
}

static void mode_engine_free(struct mode_engine *me)
{
	engine_destroy(me->eng);
	kv_store_destroy(me->store);
	free(me->mem);
}

/* The ways a chain runs; the last two need --classic. */
enum { WAY_SHARED, WAY_RECOMPUTE, WAY_CLASSIC, WAY_NAIVE, N_WAYS };

static const char *const way_names[N_WAYS] = {
	"shared", "recompute", "classic", "naive",
};

/* One way of running the chain, on its own KV store. */
struct way {
	struct mode_engine me;
	struct chain *chain;			/* every stage, or NULL */
	struct chain *alone[CHAIN_MAX_STAGES];	/* one-stage chains, or NULL */
	char *outputs[CHAIN_MAX_STAGES];	/* of the last example */
	size_t output_lens[CHAIN_MAX_STAGES];
	struct gen_watch w;
	struct mode_totals tot;
	int em;					/* of the last example */
	double f1;
};

/* State of one eval run. */
struct evaluator {
	struct eval_opts o;
	struct model *model;
	struct kern_pool *pool;
	struct tune_data data;
	struct stage_prompt *prompts[CHAIN_MAX_STAGES];
	uint32_t n_prompts;
	struct stage_prompt *classic[CHAIN_MAX_STAGES];
	uint32_t n_classic;
	struct way ways[N_WAYS];
	uint32_t n_ways;			/* 2, or 4 with --classic */
	int out_key;				/* the reference key */
	json_t *predictions;
};

/* Returns the key index of stage @stage's input or output, or -1. */
static int stage_key(const struct tune_data *d, enum span_kind kind,
		     uint32_t stage)
{
	uint32_t k;

	for (k = 0; k < d->n_keys; k++)
		if (d->keys[k].kind == kind && d->keys[k].stage == stage)
			return (int)k;
	return -1;
}

/*
 * Replaces each invalid UTF-8 sequence in the text @w collected by U+FFFD:
 * a generation may stop inside a character, and outputs are scored and
 * written as JSON text, which is UTF-8.
 */
static int clean_utf8(struct gen_watch *w)
{
	const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)w->text;
	char *clean = malloc(3 * w->len + 1);
	size_t i = 0, n = 0;

	if (!clean)
		return -ENOMEM;
	while (i < w->len) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t step;

		step = utf8proc_iterate(p + i, (utf8proc_ssize_t)(w->len - i),
					&cp);
		if (step > 0) {
			memcpy(clean + n, w->text + i, (size_t)step);
			n += (size_t)step;
			i += (size_t)step;
		} else {
			memcpy(clean + n, "\xef\xbf\xbd", 3);
			n += 3;
			i++;
		}
	}
	clean[n] = '\0';
	free(w->text);
	w->text = clean;
	w->cap = 3 * w->len + 1;
	w->len = n;
	return 0;
}

/*
 * Keeps stage @s's output in @way. Earlier outputs go on as the bytes
 * generated; the last one is scored and written as JSON, so it is made
 * valid UTF-8.
 */
static int keep_output(struct way *way, uint32_t s, bool last)
{
	struct gen_watch *w = &way->w;
	int rc = last ? clean_utf8(w) : 0;

	if (rc < 0)
		return rc;
	free(way->outputs[s]);
	way->outputs[s] = strndup(w->text ? w->text : "", w->len);
	way->output_lens[s] = w->len;
	return way->outputs[s] ? 0 : -ENOMEM;
}

/* Runs example @ex through @way's chain in one segment. */
static int run_shared(struct evaluator *ev, struct way *way,
		      const struct tune_example *ex)
{
	const struct tune_data *d = &ev->data;
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	uint32_t s, input_id;
	int k, rc;

	watch_begin(&way->w, way->me.store);
	rc = segment_create(way->chain, &seg);
	if (rc < 0)
		return rc;
	k = tune_data_find_key(d, "I_ALL");
	if (k >= 0 && (rc = segment_append_text(seg, SPAN_SHARED_INPUT, 0,
						ex->text[k], ex->len[k], NULL,
						NULL, NULL)) < 0)
		goto out_seg;
	for (s = 0; s < d->n_stages; s++) {
		k = stage_key(d, SPAN_STAGE_INPUT, s);
		if (k >= 0 && (rc = segment_append_text(seg, SPAN_STAGE_INPUT,
							s, ex->text[k],
							ex->len[k], NULL,
							&input_id, NULL)) < 0)
			goto out_seg;
		watch_reset(&way->w);
		greedy_params(&gp, ev->o.max_tokens, &way->w);
		rc = segment_generate(seg, s, &gp, NULL, on_text, &way->w,
				      NULL, &st);
		if (rc == 0)
			rc = keep_output(way, s, s + 1 == d->n_stages);
		if (rc < 0)
			goto out_seg;

		/* later stages never read this stage's input */
		if (k >= 0 && (rc = segment_drop(seg, input_id)) < 0)
			goto out_seg;
	}
out_seg:
	segment_release(seg);
	return rc;
}

/*
 * Runs stage @s of example @ex alone in @way: its prompt, then I_ALL, the
 * texts of the earlier stages' outputs in @from, and the stage's own input,
 * each an input span.
 */
static int run_alone(struct evaluator *ev, struct way *way,
		     const struct way *from, const struct tune_example *ex,
		     uint32_t s)
{
	const struct tune_data *d = &ev->data;
	const char *texts[CHAIN_MAX_STAGES + 2];
	size_t lens[CHAIN_MAX_STAGES + 2];
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	uint32_t i, n = 0;
	int k, rc;

	k = tune_data_find_key(d, "I_ALL");
	if (k >= 0) {
		texts[n] = ex->text[k];
		lens[n++] = ex->len[k];
	}
	for (i = 0; i < s; i++) {
		texts[n] = from->outputs[i];
		lens[n++] = from->output_lens[i];
	}
	k = stage_key(d, SPAN_STAGE_INPUT, s);
	if (k >= 0) {
		texts[n] = ex->text[k];
		lens[n++] = ex->len[k];
	}
	watch_reset(&way->w);
	rc = segment_create(way->alone[s], &seg);
	if (rc < 0)
		return rc;
	for (i = 0; i < n && rc == 0; i++)
		rc = segment_append_text(seg, SPAN_STAGE_INPUT, 0, texts[i],
					 lens[i], NULL, NULL, NULL);
	if (rc == 0) {
		greedy_params(&gp, ev->o.max_tokens, &way->w);
		rc = segment_generate(seg, 0, &gp, NULL, on_text, &way->w,
				      NULL, &st);
	}
	segment_release(seg);
	return rc < 0 ? rc : keep_output(way, s, s + 1 == d->n_stages);
}

/* Runs example @ex in way number @i. */
static int run_way(struct evaluator *ev, uint32_t i,
		   const struct tune_example *ex)
{
	struct way *way = &ev->ways[i];
	uint32_t s, last = ev->data.n_stages - 1;
	int rc = 0;

	switch (i) {
	case WAY_SHARED:
	case WAY_NAIVE:
		return run_shared(ev, way, ex);
	case WAY_RECOMPUTE:
		/* the earlier stages' texts are the shared way's */
		watch_begin(&way->w, way->me.store);
		return run_alone(ev, way, &ev->ways[WAY_SHARED], ex, last);
	default:
		watch_begin(&way->w, way->me.store);
		for (s = 0; s <= last && rc == 0; s++)
			rc = run_alone(ev, way, way, ex, s);
		return rc;
	}
}

/* Scores @way's last output against @ref and adds its figures up. */
static int score(struct way *way, const char *ref, size_t ref_len)
{
	struct gen_watch *w = &way->w;
	struct mode_totals *tot = &way->tot;
	const char *text = w->text ? w->text : "";
	double end = tune_now();

	way->em = tune_exact_match(text, w->len, ref, ref_len);
	way->f1 = tune_token_f1(text, w->len, ref, ref_len);
	if (way->em < 0 || way->f1 < 0)
		return -ENOMEM;
	tot->em += way->em;
	tot->f1 += way->f1;
	tot->ttft += (w->first > 0.0 ? w->first : end) - w->start;
	tot->chain += end - w->chain_start;
	tot->kv_bytes += (double)w->peak;
	return 0;
}

static int add_prediction(struct evaluator *ev, const struct tune_example *ex)
{
	const struct tune_data *d = &ev->data;
	const struct way *shared = &ev->ways[WAY_SHARED];
	json_t *obj = json_object();
	uint32_t k;
	int bad = !obj;

	for (k = 0; k < d->n_keys && !bad; k++) {
		bool last = (int)k == ev->out_key;
		const char *text = last ? shared->outputs[d->n_stages - 1] :
				   ex->text[k];
		size_t len = last ? shared->output_lens[d->n_stages - 1] :
			     ex->len[k];

		bad = json_object_set_new(obj, d->keys[k].name,
					  json_stringn(text, len));
	}
	if (bad)
		json_decref(obj);
	/* json_array_append_new drops obj itself when it fails */
	if (bad || json_array_append_new(ev->predictions, obj)) {
		fprintf(stderr, "kvchain-tune: out of memory\n");
		return -ENOMEM;
	}
	return 0;
}

static int evaluate(struct evaluator *ev)
{
	const struct tune_data *d = &ev->data;
	const struct way *way;
	uint32_t e, i;
	double n;
	int rc = 0;

	for (e = 0; e < d->n_examples; e++) {
		const struct tune_example *ex = &d->examples[e];

		for (i = 0; i < ev->n_ways; i++) {
			rc = run_way(ev, i, ex);
			if (rc < 0) {
				fprintf(stderr, "kvchain-tune: %s:%u: generation failed (%s): %s\n",
					d->name, ex->line, way_names[i],
					strerror(-rc));
				return rc;
			}
			/* scored at once, so the chain time is this way's */
			rc = score(&ev->ways[i], ex->text[ev->out_key],
				   ex->len[ev->out_key]);
			if (rc < 0)
				return rc;
		}
		if (ev->predictions && (rc = add_prediction(ev, ex)) < 0)
			return rc;
		if (!ev->o.verbose)
			continue;
		printf("example %u (line %u):", ex->index, ex->line);
		for (i = 0; i < ev->n_ways; i++) {
			way = &ev->ways[i];
			printf("%s %s EM %d F1 %.4f \"%s\"", i ? ";" : "",
			       way_names[i], way->em, way->f1,
			       way->w.text ? way->w.text : "");
		}
		printf("\n");
	}
	n = d->n_examples;
	printf("| way | examples | EM | F1 | stage-%c time to first token (ms) | chain time (ms) | peak KV bytes |\n",
	       tune_stage_letter(d->n_stages - 1));
	printf("|---|---|---|---|---|---|---|\n");
	for (i = 0; i < ev->n_ways; i++) {
		const struct mode_totals *t = &ev->ways[i].tot;

		printf("| %s | %u | %.4f | %.4f | %.3f | %.3f | %.0f |\n",
		       way_names[i], d->n_examples, t->em / n, t->f1 / n,
		       t->ttft / n * 1e3, t->chain / n * 1e3, t->kv_bytes / n);
	}
	return 0;
}

/* Gives @way an engine and the chains it runs @prompts in. */
static int way_init(struct evaluator *ev, struct way *way,
		    struct stage_prompt *const *prompts, bool whole,
		    bool alone_last_only, uint32_t n_ctx, uint32_t n_blocks,
		    char *err, size_t errlen)
{
	const struct tune_data *d = &ev->data;
	uint32_t s;
	int rc;

	rc = mode_engine_init(&way->me, ev->model, ev->pool, n_ctx, n_blocks);
	if (rc < 0) {
		snprintf(err, errlen, "cannot set up the KV stores: %s",
			 strerror(-rc));
		return rc;
	}
	if (whole)
		return chain_create(way->me.eng,
				    (const struct stage_prompt *const *)prompts,
				    d->n_stages, &way->chain, err, errlen);
	for (s = alone_last_only ? d->n_stages - 1 : 0; s < d->n_stages; s++) {
		const struct stage_prompt *p = prompts[s];

		rc = chain_create(way->me.eng, &p, 1, &way->alone[s], err,
				  errlen);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Loads the model, data and prompts, and checks they fit together. */
static int setup(struct evaluator *ev)
{
	struct tune_data *d = &ev->data;
	uint32_t n_ctx, n_blocks;
	char err[512], key[8];
	int rc;

	rc = model_load(ev->o.model_path, &ev->model, err, sizeof(err));
	if (rc == 0)
		rc = tune_data_load(ev->o.data_path, d, err, sizeof(err));
	if (rc == 0)
		rc = tune_load_prompts(ev->model, ev->o.prompt_dirs,
				       ev->o.n_prompt_dirs, ev->prompts,
				       CHAIN_MAX_STAGES, &ev->n_prompts, err,
				       sizeof(err));
	if (rc == 0 && ev->o.n_classic_dirs)
		rc = tune_load_prompts(ev->model, ev->o.classic_dirs,
				       ev->o.n_classic_dirs, ev->classic,
				       CHAIN_MAX_STAGES, &ev->n_classic, err,
				       sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	if (d->multi_round) {
		fprintf(stderr,
			"kvchain-tune: %s: eval runs single-round chains only (O_A, O_B, ...)\n",
			d->name);
		return -EINVAL;
	}
	if (ev->n_prompts < d->n_stages) {
		fprintf(stderr,
			"kvchain-tune: %s has %u stages but --prompts gave %u prompts\n",
			d->name, d->n_stages, ev->n_prompts);
		return -EINVAL;
	}
	if (ev->o.n_classic_dirs && ev->n_classic < d->n_stages) {
		fprintf(stderr,
			"kvchain-tune: %s has %u stages but --classic gave %u prompts\n",
			d->name, d->n_stages, ev->n_classic);
		return -EINVAL;
	}
	snprintf(key, sizeof(key), "O_%c", tune_stage_letter(d->n_stages - 1));
	ev->out_key = tune_data_find_key(d, key);

	ev->pool = kern_pool_create(ev->o.n_threads);
	if (!ev->pool)
		return -ENOMEM;
	n_ctx = ev->model->cfg.n_ctx_train < MAX_CTX ?
		ev->model->cfg.n_ctx_train : MAX_CTX;
	n_blocks = 2 * (n_ctx / BLOCK_TOKENS + CHAIN_MAX_STAGES + 2);
	ev->n_ways = ev->n_classic ? N_WAYS : WAY_CLASSIC;
	rc = way_init(ev, &ev->ways[WAY_SHARED], ev->prompts, true, false,
		      n_ctx, n_blocks, err, sizeof(err));
	if (rc == 0)
		rc = way_init(ev, &ev->ways[WAY_RECOMPUTE], ev->prompts, false,
			      true, n_ctx, n_blocks, err, sizeof(err));
	if (rc == 0 && ev->n_classic)
		rc = way_init(ev, &ev->ways[WAY_CLASSIC], ev->classic, false,
			      false, n_ctx, n_blocks, err, sizeof(err));
	if (rc == 0 && ev->n_classic)
		rc = way_init(ev, &ev->ways[WAY_NAIVE], ev->classic, true,
			      false, n_ctx, n_blocks, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvchain-tune: %s\n", err);
		return rc;
	}
	if (ev->o.predictions_path) {
		ev->predictions = json_array();
		if (!ev->predictions)
			return -ENOMEM;
	}
	return 0;
}

static int write_predictions(struct evaluator *ev)
{
	FILE *f = fopen(ev->o.predictions_path, "w");
	size_t i;
	json_t *obj;
	int bad = !f;

	json_array_foreach(ev->predictions, i, obj) {
		if (bad)
			break;
		bad = json_dumpf(obj, f, JSON_COMPACT | JSON_PRESERVE_ORDER) ||
		      fputc('\n', f) == EOF;
	}
	if (f && fclose(f) != 0)
		bad = 1;
	if (bad) {
		fprintf(stderr, "kvchain-tune: cannot write %s\n",
			ev->o.predictions_path);
		return -EIO;
	}
	return 0;
}

/* Releases what way_init() and the runs left in @way. */
static void way_free(struct way *way)
{
	uint32_t s;

	for (s = 0; s < CHAIN_MAX_STAGES; s++) {
		free(way->outputs[s]);
		if (way->alone[s])
			chain_release(way->alone[s]);
	}
	if (way->chain)
		chain_release(way->chain);
	if (way->me.eng || way->me.mem)
		mode_engine_free(&way->me);
	free(way->w.text);
}

int tune_cmd_eval(int argc, char **argv)
{
	struct evaluator *ev;
	uint32_t i, w;
	int rc;

	ev = calloc(1, sizeof(*ev));
	if (!ev) {
		fprintf(stderr, "kvchain-tune: out of memory\n");
		return 1;
	}
	rc = parse_args(argc, argv, &ev->o);
	if (rc != 0) {
		free(ev);
		return rc > 0 ? 0 : 1;
	}
	rc = setup(ev);
	if (rc == 0)
		rc = evaluate(ev);
	if (rc == 0 && ev->predictions)
		rc = write_predictions(ev);

	json_decref(ev->predictions);
	for (w = 0; w < N_WAYS; w++)
		way_free(&ev->ways[w]);
	for (i = 0; i < ev->n_prompts; i++)
		stage_prompt_free(ev->prompts[i]);
	for (i = 0; i < ev->n_classic; i++)
		stage_prompt_free(ev->classic[i]);
	kern_pool_destroy(ev->pool);
	tune_data_free(&ev->data);
	model_free(ev->model);
	free(ev);
	return rc < 0 ? 1 : 0;
}
