/* SPDX-License-Identifier: MIT */
/*
 * cmd-eval.c - kvchain-tune eval: runs each example of a single-round data
 * file through the engine twice and prints exact match and token F1 of the
 * last stage's output against the reference, with that stage's time to
 * first token and the KV bytes held, for each mode:
 *
 *   shared     one segment (FTHSS): I_ALL, then per stage its input, its
 *              generation reading the KV earlier stages left, and the drop
 *              of its input once it is done;
 *   recompute  the text-passing chain: the last stage alone with its
 *              prompt, prefilling I_ALL's text, the text the earlier stages
 *              generated in shared mode, and its own input from scratch
 *              (engine_generate_recompute).
 *
 * Each mode has its own KV store, so "KV held" is the peak of that store's
 * blocks in use while the last stage generates, prompt slots included.
 * Generation is greedy.
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

/* Totals of one mode over the examples. */
struct mode_totals {
	double em;
	double f1;
	double ttft;
	double kv_bytes;
};

/* Collects a generation's text and the last stage's figures. */
struct gen_watch {
	char *text;
	size_t len;
	size_t cap;
	const struct kv_store *store;
	double start;
	double first;		/* time of the first logits row, or 0 */
	size_t peak;		/* bytes of KV blocks in use */
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: kvchain-tune eval --model M.gguf --data FILE --prompts DIR... [options]\n"
"Runs every example through a single-round chain in shared mode (FTHSS)\n"
"and in recompute mode (text passing) and prints exact match, token F1,\n"
"time to first token and KV bytes held of the last stage, per mode.\n"
"\n"
"  -m, --model FILE         GGUF base model\n"
"  -d, --data FILE          examples, as for kvchain-tune train; the last\n"
"                           stage's output key is the reference\n"
"  -p, --prompts DIR        adapter folder (repeatable; fills stages A, B,\n"
"                           ... in order)\n"
"  -n, --max-tokens N       tokens each stage may generate (default 64)\n"
"  -t, --threads N          worker threads (default 2)\n"
"      --write-predictions FILE  write the examples as JSON Lines with the\n"
"                           last output replaced by the shared mode's\n"
"  -v, --verbose            print each example's outputs and scores\n"
"  -h, --help               show this help\n");
}

enum { OPT_PREDICTIONS = 256 };

static int parse_args(int argc, char **argv, struct eval_opts *o)
{
	static const struct option longopts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "prompts", required_argument, NULL, 'p' },
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

static void watch_reset(struct gen_watch *w, const struct kv_store *store)
{
	w->len = 0;
	if (w->text)
		w->text[0] = '\0';
	w->store = store;
	w->first = 0.0;
	w->peak = 0;
	w->start = tune_now();
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

/* State of one eval run. */
struct evaluator {
	struct eval_opts o;
	struct model *model;
	struct kern_pool *pool;
	struct tune_data data;
	struct stage_prompt *prompts[CHAIN_MAX_STAGES];
	uint32_t n_prompts;
	struct mode_engine shared, recompute;
	struct chain *chain;
	char *outputs[CHAIN_MAX_STAGES];	/* shared mode, per stage */
	size_t output_lens[CHAIN_MAX_STAGES];
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

/* Runs example @ex in one segment; the last stage's figures go to @w. */
static int run_shared(struct evaluator *ev, const struct tune_example *ex,
		      struct gen_watch *w)
{
	const struct tune_data *d = &ev->data;
	struct segment *seg;
	struct gen_params gp;
	struct gen_stats st;
	uint32_t s, input_id;
	int k, rc;

	rc = segment_create(ev->chain, &seg);
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
		watch_reset(w, ev->shared.store);
		greedy_params(&gp, ev->o.max_tokens, w);
		rc = segment_generate(seg, s, &gp, NULL, on_text, w, NULL, &st);
		/* earlier outputs go on as the bytes generated */
		if (rc == 0 && s + 1 == d->n_stages)
			rc = clean_utf8(w);
		if (rc < 0)
			goto out_seg;
		free(ev->outputs[s]);
		ev->outputs[s] = strndup(w->text ? w->text : "", w->len);
		ev->output_lens[s] = w->len;
		if (!ev->outputs[s]) {
			rc = -ENOMEM;
			goto out_seg;
		}

		/* later stages never read this stage's input */
		if (k >= 0 && (rc = segment_drop(seg, input_id)) < 0)
			goto out_seg;
	}
out_seg:
	segment_release(seg);
	return rc;
}

/* Runs the last stage of @ex alone on the texts before it. */
static int run_recompute(struct evaluator *ev, const struct tune_example *ex,
			 struct gen_watch *w)
{
	const struct tune_data *d = &ev->data;
	uint32_t last = d->n_stages - 1, s, n = 0;
	const char *texts[CHAIN_MAX_STAGES + 2];
	size_t lens[CHAIN_MAX_STAGES + 2];
	struct gen_params gp;
	struct gen_stats st;
	int k, rc;

	k = tune_data_find_key(d, "I_ALL");
	if (k >= 0) {
		texts[n] = ex->text[k];
		lens[n++] = ex->len[k];
	}
	for (s = 0; s < last; s++) {
		texts[n] = ev->outputs[s];
		lens[n++] = ev->output_lens[s];
	}
	k = stage_key(d, SPAN_STAGE_INPUT, last);
	if (k >= 0) {
		texts[n] = ex->text[k];
		lens[n++] = ex->len[k];
	}
	watch_reset(w, ev->recompute.store);
	greedy_params(&gp, ev->o.max_tokens, w);
	rc = engine_generate_recompute(ev->recompute.eng, ev->prompts[last],
				       texts, lens, n, &gp, on_text, w, &st);
	return rc < 0 ? rc : clean_utf8(w);
}

/* Adds one mode's scores of @w's text against @ref to @tot. */
static int score(struct mode_totals *tot, const struct gen_watch *w,
		 const char *ref, size_t ref_len, int *em, double *f1)
{
	const char *text = w->text ? w->text : "";

	*em = tune_exact_match(text, w->len, ref, ref_len);
	*f1 = tune_token_f1(text, w->len, ref, ref_len);
	if (*em < 0 || *f1 < 0)
		return -ENOMEM;
	tot->em += *em;
	tot->f1 += *f1;
	tot->ttft += (w->first > 0.0 ? w->first : tune_now()) - w->start;
	tot->kv_bytes += (double)w->peak;
	return 0;
}

static int add_prediction(struct evaluator *ev, const struct tune_example *ex)
{
	const struct tune_data *d = &ev->data;
	json_t *obj = json_object();
	uint32_t k;
	int bad = !obj;

	for (k = 0; k < d->n_keys && !bad; k++) {
		bool last = (int)k == ev->out_key;
		const char *text = last ? ev->outputs[d->n_stages - 1] :
				   ex->text[k];
		size_t len = last ? ev->output_lens[d->n_stages - 1] :
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
	struct mode_totals shared = { 0 }, recompute = { 0 };
	struct gen_watch ws = { 0 }, wr = { 0 };
	const char *ref;
	size_t ref_len;
	uint32_t e;
	double f1s, f1r, n;
	int ems, emr, rc = 0;

	for (e = 0; e < d->n_examples; e++) {
		const struct tune_example *ex = &d->examples[e];

		ref = ex->text[ev->out_key];
		ref_len = ex->len[ev->out_key];
		if ((rc = run_shared(ev, ex, &ws)) < 0 ||
		    (rc = run_recompute(ev, ex, &wr)) < 0) {
			fprintf(stderr, "kvchain-tune: %s:%u: generation failed: %s\n",
				d->name, ex->line, strerror(-rc));
			goto out;
		}
		if ((rc = score(&shared, &ws, ref, ref_len, &ems, &f1s)) < 0 ||
		    (rc = score(&recompute, &wr, ref, ref_len, &emr, &f1r)) < 0)
			goto out;
		if (ev->predictions && (rc = add_prediction(ev, ex)) < 0)
			goto out;
		if (ev->o.verbose)
			printf("example %u (line %u): shared EM %d F1 %.4f \"%s\"; recompute EM %d F1 %.4f \"%s\"\n",
			       ex->index, ex->line, ems, f1s,
			       ws.text ? ws.text : "", emr, f1r,
			       wr.text ? wr.text : "");
	}
	n = d->n_examples;
	printf("| mode | examples | EM | F1 | stage-%c time to first token (ms) | KV bytes held |\n",
	       tune_stage_letter(d->n_stages - 1));
	printf("|---|---|---|---|---|---|\n");
	printf("| shared | %u | %.4f | %.4f | %.3f | %.0f |\n", d->n_examples,
	       shared.em / n, shared.f1 / n, shared.ttft / n * 1e3,
	       shared.kv_bytes / n);
	printf("| recompute | %u | %.4f | %.4f | %.3f | %.0f |\n",
	       d->n_examples, recompute.em / n, recompute.f1 / n,
	       recompute.ttft / n * 1e3, recompute.kv_bytes / n);
out:
	free(ws.text);
	free(wr.text);
	return rc;
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
	snprintf(key, sizeof(key), "O_%c", tune_stage_letter(d->n_stages - 1));
	ev->out_key = tune_data_find_key(d, key);

	ev->pool = kern_pool_create(ev->o.n_threads);
	if (!ev->pool)
		return -ENOMEM;
	n_ctx = ev->model->cfg.n_ctx_train < MAX_CTX ?
		ev->model->cfg.n_ctx_train : MAX_CTX;
	n_blocks = 2 * (n_ctx / BLOCK_TOKENS + CHAIN_MAX_STAGES + 2);
	if ((rc = mode_engine_init(&ev->shared, ev->model, ev->pool, n_ctx,
				   n_blocks)) < 0 ||
	    (rc = mode_engine_init(&ev->recompute, ev->model, ev->pool, n_ctx,
				   n_blocks)) < 0) {
		fprintf(stderr, "kvchain-tune: cannot set up the KV stores: %s\n",
			strerror(-rc));
		return rc;
	}
	rc = chain_create(ev->shared.eng,
			  (const struct stage_prompt *const *)ev->prompts,
			  d->n_stages, &ev->chain, err, sizeof(err));
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

int tune_cmd_eval(int argc, char **argv)
{
	struct evaluator *ev;
	uint32_t i;
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
	for (i = 0; i < CHAIN_MAX_STAGES; i++)
		free(ev->outputs[i]);
	if (ev->chain)
		chain_release(ev->chain);
	if (ev->shared.eng || ev->shared.mem)
		mode_engine_free(&ev->shared);
	if (ev->recompute.eng || ev->recompute.mem)
		mode_engine_free(&ev->recompute);
	for (i = 0; i < ev->n_prompts; i++)
		stage_prompt_free(ev->prompts[i]);
	kern_pool_destroy(ev->pool);
	tune_data_free(&ev->data);
	model_free(ev->model);
	free(ev);
	return rc < 0 ? 1 : 0;
}
