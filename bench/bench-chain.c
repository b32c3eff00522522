/* SPDX-License-Identifier: MIT */
/*
 * bench-chain - times a two-stage chain (I_ALL, I_A -> A -> O_A -> B -> O_B)
 * with shared KV (FTHSS: B reads the KV A left, I_A dropped after A) and in
 * recompute mode (the classic chain: each stage prefills its prompt and the
 * text it reads from scratch), and prints stage-B time to first token,
 * stage-B total time, whole-chain time and KV bytes held after each stage,
 * side by side. Outputs are generated with EOS ignored so both modes
 * produce the requested lengths. Nothing here is part of `make check`.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench-args.h"
#include "kvstore.h"
#include "model.h"
#include "prompt.h"
#include "segment.h"
#include "tokenizer.h"

struct options {
	const char *model_path;
	uint32_t n_prompt;	/* virtual tokens per stage prompt */
	uint32_t n_i_all;
	uint32_t n_i_a;
	uint32_t n_o_a;
	uint32_t n_o_b;
	int n_threads;
	int reps;
	enum kern_type kv_type;
};

/* Figures of one chain run; the best of the repetitions is kept. */
struct figures {
	double a_total;		/* seconds from the chain's start to O_A */
	double b_first_token;	/* seconds from B's start to its first token */
	double b_total;
	double chain_total;
	size_t kv_after_a;	/* bytes held when A is done */
	size_t kv_after_drop;	/* shared mode: after I_A is dropped */
	size_t kv_after_b;
	size_t kv_peak;
};

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Records the time of the first streamed token. */
struct first_token {
	double start;
	double first;
	char *text;
	size_t len;
	size_t cap;
};

static int on_text(void *arg, int32_t id, const char *text, size_t len)
{
	struct first_token *ft = arg;

	if (ft->first == 0.0)
		ft->first = now_seconds();
	if (ft->len + len + 1 > ft->cap) {
		size_t cap = (ft->len + len + 1) * 2;
		char *p = realloc(ft->text, cap);

		if (!p)
			return 1;
		ft->text = p;
		ft->cap = cap;
	}
	memcpy(ft->text + ft->len, text, len);
	ft->len += len;
	ft->text[ft->len] = '\0';
	return 0;
}

static size_t kv_bytes_held(const struct kv_store *store)
{
	struct kv_store_stats st;

	kv_store_get_stats(store, &st);
	return (size_t)(st.n_blocks - st.n_free) * st.block_bytes;
}

static void note_peak(struct figures *f, const struct kv_store *store)
{
	size_t held = kv_bytes_held(store);

	if (held > f->kv_peak)
		f->kv_peak = held;
}

static void gen_params_for(struct gen_params *p, uint32_t n)
{
	memset(p, 0, sizeof(*p));
	sampler_params_default(&p->sampling);
	p->max_tokens = n;
	p->ignore_eos = true;
}

/* Seeded ids that avoid the first few (usually control) tokens. */
static void make_ids(int32_t *ids, uint32_t n, uint32_t n_vocab, uint32_t seed)
{
	uint32_t i, x = seed * 2654435761u + 7;

	for (i = 0; i < n; i++) {
		x = x * 1664525u + 1013904223u;
		ids[i] = (int32_t)(3 + (x >> 8) % (n_vocab - 3));
	}
}

/* Decodes @n ids into a new string for the recompute chain. */
static char *ids_to_text(const struct model *m, const int32_t *ids, uint32_t n,
			 size_t *len)
{
	int need = tok_decode(m->tok, ids, n, 0, NULL, 0);
	char *s;

	if (need < 0)
		return NULL;
	s = malloc((size_t)need + 1);
	if (s && tok_decode(m->tok, ids, n, 0, s, (size_t)need + 1) < 0) {
		free(s);
		return NULL;
	}
	*len = (size_t)need;
	return s;
}

static int run_shared(struct engine *eng, struct kv_store *store,
		      struct stage_prompt *const *prompts,
		      const int32_t *i_all, const int32_t *i_a,
		      const struct options *o, struct figures *f)
{
	struct first_token ft = { 0 };
	struct gen_params gp;
	struct gen_stats st;
	struct segment *seg;
	struct chain *chain;
	uint32_t id_a;
	double t0, tb;
	int rc;

	memset(f, 0, sizeof(*f));
	t0 = now_seconds();
	rc = chain_create(eng, (const struct stage_prompt *const *)prompts, 2,
			  &chain, NULL, 0);
	if (rc < 0)
		return rc;
	rc = segment_create(chain, &seg);
	chain_release(chain);
	if (rc < 0)
		return rc;

	/* stage A reads I_ALL and I_A and writes O_A */
	if ((rc = segment_append_tokens(seg, SPAN_SHARED_INPUT, 0, i_all,
					o->n_i_all, NULL, NULL, NULL)) < 0 ||
	    (rc = segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, i_a,
					o->n_i_a, NULL, &id_a, NULL)) < 0)
		goto out;
	gen_params_for(&gp, o->n_o_a);
	if ((rc = segment_generate(seg, 0, &gp, NULL, NULL, NULL, NULL, &st)) < 0)
		goto out;
	f->a_total = now_seconds() - t0;
	f->kv_after_a = kv_bytes_held(store);
	note_peak(f, store);

	/* B never reads I_A, so its KV goes */
	if ((rc = segment_drop(seg, id_a)) < 0)
		goto out;
	f->kv_after_drop = kv_bytes_held(store);

	/* stage B reads P_B, I_ALL and O_A as A left them */
	gen_params_for(&gp, o->n_o_b);
	tb = ft.start = now_seconds();
	rc = segment_generate(seg, 1, &gp, NULL, on_text, &ft, NULL, &st);
	if (rc < 0)
		goto out;
	f->b_total = now_seconds() - tb;
	f->b_first_token = ft.first - tb;
	f->chain_total = now_seconds() - t0;
	f->kv_after_b = kv_bytes_held(store);
	note_peak(f, store);
out:
	free(ft.text);
	segment_release(seg);
	return rc;
}

/* Stage A's own sequence, as the classic chain runs it. */
static int recompute_stage_a(struct engine *eng, struct kv_store *store,
			     struct stage_prompt *prompt, const int32_t *i_all,
			     const int32_t *i_a, const struct options *o,
			     struct figures *f, int32_t **o_a, uint32_t *n_o_a)
{
	struct gen_params gp;
	struct gen_stats st;
	struct segment *seg;
	struct chain *chain;
	struct span_info info;
	uint32_t id_out;
	int rc;

	rc = chain_create(eng, (const struct stage_prompt *const *)&prompt, 1,
			  &chain, NULL, 0);
	if (rc < 0)
		return rc;
	rc = segment_create(chain, &seg);
	chain_release(chain);
	if (rc < 0)
		return rc;
	if ((rc = segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, i_all,
					o->n_i_all, NULL, NULL, NULL)) < 0 ||
	    (rc = segment_append_tokens(seg, SPAN_STAGE_INPUT, 0, i_a,
					o->n_i_a, NULL, NULL, NULL)) < 0)
		goto out;
	gen_params_for(&gp, o->n_o_a);
	if ((rc = segment_generate(seg, 0, &gp, NULL, NULL, NULL, &id_out,
				   &st)) < 0)
		goto out;
	f->kv_after_a = kv_bytes_held(store);
	note_peak(f, store);

	/* O_A without its leading BOS is the text B receives */
	segment_span_info(seg, id_out, &info);
	*n_o_a = info.n - 1;
	*o_a = malloc((size_t)info.n * sizeof(int32_t));
	if (!*o_a)
		rc = -ENOMEM;
	else
		memcpy(*o_a, info.tokens + 1, (size_t)*n_o_a * sizeof(int32_t));
out:
	segment_release(seg);
	return rc;
}

/* Watches KV held while the recompute stage B runs. */
struct peak_watch {
	struct first_token ft;
	struct figures *f;
	const struct kv_store *store;
};

static int on_text_peak(void *arg, int32_t id, const char *text, size_t len)
{
	struct peak_watch *w = arg;

	note_peak(w->f, w->store);
	return on_text(&w->ft, id, text, len);
}

static int run_recompute(struct engine *eng, struct kv_store *store,
			 struct stage_prompt *const *prompts,
			 const int32_t *i_all, const int32_t *i_a,
			 const struct options *o, struct figures *f)
{
	const struct model *m = NULL;
	struct peak_watch w = { .f = f, .store = store };
	struct gen_params gp;
	struct gen_stats st;
	const char *texts[2];
	size_t lens[2];
	char *i_all_text = NULL, *o_a_text = NULL;
	int32_t *o_a = NULL;
	uint32_t n_o_a = 0;
	double t0, tb;
	int rc;

	memset(f, 0, sizeof(*f));
	t0 = now_seconds();
	rc = recompute_stage_a(eng, store, prompts[0], i_all, i_a, o, f, &o_a,
			       &n_o_a);
	if (rc < 0)
		return rc;
	f->a_total = now_seconds() - t0;
	m = engine_model(eng);
	i_all_text = ids_to_text(m, i_all, o->n_i_all, &lens[0]);
	o_a_text = ids_to_text(m, o_a, n_o_a, &lens[1]);
	if (!i_all_text || !o_a_text) {
		rc = -ENOMEM;
		goto out;
	}
	texts[0] = i_all_text;
	texts[1] = o_a_text;

	/* stage B: its prompt, I_ALL's text and O_A's text, from scratch */
	gen_params_for(&gp, o->n_o_b);
	tb = w.ft.start = now_seconds();
	rc = engine_generate_recompute(eng, prompts[1], texts, lens, 2, &gp,
				       on_text_peak, &w, &st);
	if (rc < 0)
		goto out;
	f->b_total = now_seconds() - tb;
	f->b_first_token = w.ft.first - tb;
	f->chain_total = now_seconds() - t0;
	f->kv_after_b = kv_bytes_held(store);
out:
	free(w.ft.text);
	free(i_all_text);
	free(o_a_text);
	free(o_a);
	return rc;
}

static void keep_best(struct figures *best, const struct figures *f, int rep)
{
	if (rep == 0) {
		*best = *f;
		return;
	}
	if (f->a_total < best->a_total)
		best->a_total = f->a_total;
	if (f->b_first_token < best->b_first_token)
		best->b_first_token = f->b_first_token;
	if (f->b_total < best->b_total)
		best->b_total = f->b_total;
	if (f->chain_total < best->chain_total)
		best->chain_total = f->chain_total;
}

static void usage(FILE *out)
{
	fprintf(out,
"usage: bench-chain -m MODEL.gguf [options]\n"
"Times a two-stage chain with shared KV and in recompute mode.\n"
"  --i-all N      shared input tokens (default 64)\n"
"  --i-a N        stage A input tokens (default 1024)\n"
"  --o-a N        stage A output tokens (default 128)\n"
"  --o-b N        stage B output tokens (default 32)\n"
"  --prompt N     virtual tokens per stage prompt (default 50)\n"
"  -t N           threads (default 2)\n"
"  -r N           repetitions, best time kept (default 3)\n"
"  --kv-type T    f16 (default), f32 or q8_0\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "i-all", required_argument, NULL, 'A' },
		{ "i-a", required_argument, NULL, 'a' },
		{ "o-a", required_argument, NULL, 'o' },
		{ "o-b", required_argument, NULL, 'b' },
		{ "prompt", required_argument, NULL, 'P' },
		{ "kv-type", required_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "m:t:r:h", longopts, NULL)) != -1) {
		const char *p = "bench-chain";
		unsigned long v = 0;
		int bad = 0;

		switch (c) {
		case 'm': o->model_path = optarg; break;
		case 't': bad = bench_parse_uint(p, "-t", optarg, 1, 256, &v); o->n_threads = (int)v; break;
		case 'r': bad = bench_parse_uint(p, "-r", optarg, 1, 1000, &v); o->reps = (int)v; break;
		case 'A': bad = bench_parse_uint(p, "--i-all", optarg, 1, 1 << 20, &v); o->n_i_all = (uint32_t)v; break;
		case 'a': bad = bench_parse_uint(p, "--i-a", optarg, 1, 1 << 20, &v); o->n_i_a = (uint32_t)v; break;
		case 'o': bad = bench_parse_uint(p, "--o-a", optarg, 1, 1 << 20, &v); o->n_o_a = (uint32_t)v; break;
		case 'b': bad = bench_parse_uint(p, "--o-b", optarg, 1, 1 << 20, &v); o->n_o_b = (uint32_t)v; break;
		case 'P': bad = bench_parse_uint(p, "--prompt", optarg, 1, 1 << 16, &v); o->n_prompt = (uint32_t)v; break;
		case 'k':
			if (!strcmp(optarg, "f16"))
				o->kv_type = KERN_TYPE_F16;
			else if (!strcmp(optarg, "f32"))
				o->kv_type = KERN_TYPE_F32;
			else if (!strcmp(optarg, "q8_0"))
				o->kv_type = KERN_TYPE_Q8_0;
			else {
				fprintf(stderr, "bench-chain: invalid --kv-type '%s': expected f16, f32 or q8_0\n", optarg);
				return -1;
			}
			break;
		case 'h': usage(stdout); exit(0);
		default:
			fprintf(stderr, "bench-chain: see bench-chain --help\n");
			return -1;
		}
		if (bad)
			return -1;
	}
	if (!o->model_path || optind < argc) {
		fprintf(stderr, "bench-chain: %s (see --help)\n",
			o->model_path ? "unexpected argument" : "-m MODEL is required");
		return -1;
	}
	return 0;
}

/* A soft prompt of small seeded values; timing does not depend on them. */
static struct stage_prompt *random_prompt(const struct model *m, uint32_t n,
					  uint32_t seed)
{
	struct stage_prompt *p;
	uint32_t d = m->cfg.d_model, i, x = seed;
	float *embd = malloc((size_t)n * d * sizeof(float));
	char err[256];

	if (!embd)
		return NULL;
	for (i = 0; i < n * d; i++) {
		x = x * 1664525u + 1013904223u;
		embd[i] = ((float)(x >> 8) / (float)(1u << 24) - 0.5f) * 0.1f;
	}
	if (stage_prompt_soft(m, embd, n, d, &p, err, sizeof(err)) < 0)
		p = NULL;
	free(embd);
	return p;
}

int main(int argc, char **argv)
{
	struct options o = {
		.n_prompt = 50, .n_i_all = 64, .n_i_a = 1024, .n_o_a = 128,
		.n_o_b = 32, .n_threads = 2, .reps = 3,
		.kv_type = KERN_TYPE_F16,
	};
	struct stage_prompt *prompts[2];
	struct figures shared, recompute, f;
	struct kv_store *store;
	struct kern_pool *pool;
	struct engine *eng;
	struct model *m;
	int32_t *i_all, *i_a;
	uint32_t n_ctx;
	size_t bytes;
	void *mem;
	char err[512];
	int r, rc;

	if (parse_args(argc, argv, &o) < 0)
		return 1;
	kern_init();
	if (model_load(o.model_path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-chain: %s\n", err);
		return 1;
	}
	n_ctx = 2 * o.n_prompt + o.n_i_all + o.n_i_a + o.n_o_a + o.n_o_b + 8;
	if (n_ctx > m->cfg.n_ctx_train) {
		fprintf(stderr, "bench-chain: the chain needs %u positions, the model has %u; make a model with a longer context (mkmodel --ctx) or shorten --i-a\n",
			n_ctx, m->cfg.n_ctx_train);
		model_free(m);
		return 1;
	}
	/* room for two whole chains, with slack for partly used blocks */
	bytes = kv_store_block_bytes(m, o.kv_type, 16) * (2 * n_ctx / 16 + 64);
	mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	pool = kern_pool_create(o.n_threads);
	if (!mem || !pool ||
	    kv_store_create(mem, bytes, m, o.kv_type, 16, &store) < 0) {
		fprintf(stderr, "bench-chain: cannot set up a %zu-byte KV store\n", bytes);
		return 1;
	}
	eng = engine_create(m, store, pool, 64, n_ctx);
	prompts[0] = random_prompt(m, o.n_prompt, 1);
	prompts[1] = random_prompt(m, o.n_prompt, 2);
	i_all = malloc(o.n_i_all * sizeof(int32_t));
	i_a = malloc(o.n_i_a * sizeof(int32_t));
	if (!eng || !prompts[0] || !prompts[1] || !i_all || !i_a) {
		fprintf(stderr, "bench-chain: out of memory\n");
		return 1;
	}
	make_ids(i_all, o.n_i_all, m->cfg.n_vocab, 1);
	make_ids(i_a, o.n_i_a, m->cfg.n_vocab, 2);

	for (r = 0; r < o.reps; r++) {
		if ((rc = run_shared(eng, store, prompts, i_all, i_a, &o, &f)) < 0) {
			fprintf(stderr, "bench-chain: shared chain failed: %s\n", strerror(-rc));
			return 1;
		}
		keep_best(&shared, &f, r);
		if ((rc = run_recompute(eng, store, prompts, i_all, i_a, &o, &f)) < 0) {
			fprintf(stderr, "bench-chain: recompute chain failed: %s\n", strerror(-rc));
			return 1;
		}
		keep_best(&recompute, &f, r);
	}

	printf("model %s, %u layers, d_model %u, %s KV, %d threads, best of %d\n",
	       o.model_path, m->cfg.n_layers, m->cfg.d_model,
	       kern_type_name(o.kv_type), o.n_threads, o.reps);
	printf("prompts %u+%u, I_ALL %u, I_A %u, O_A %u, O_B %u tokens\n\n",
	       o.n_prompt, o.n_prompt, o.n_i_all, o.n_i_a, o.n_o_a, o.n_o_b);
	printf("| figure | shared KV | recompute | recompute / shared |\n");
	printf("|---|---|---|---|\n");
	printf("| stage-A time (with the chain's prompt slots) | %.1f ms | %.1f ms | %.2fx |\n",
	       shared.a_total * 1e3, recompute.a_total * 1e3,
	       recompute.a_total / shared.a_total);
	printf("| stage-B time to first token | %.2f ms | %.2f ms | %.1fx |\n",
	       shared.b_first_token * 1e3, recompute.b_first_token * 1e3,
	       recompute.b_first_token / shared.b_first_token);
	printf("| stage-B total time | %.1f ms | %.1f ms | %.2fx |\n",
	       shared.b_total * 1e3, recompute.b_total * 1e3,
	       recompute.b_total / shared.b_total);
	printf("| whole-chain time | %.1f ms | %.1f ms | %.2fx |\n",
	       shared.chain_total * 1e3, recompute.chain_total * 1e3,
	       recompute.chain_total / shared.chain_total);
	printf("| KV held after stage A | %.2f MB | %.2f MB | |\n",
	       shared.kv_after_a / 1e6, recompute.kv_after_a / 1e6);
	printf("| KV held after dropping I_A | %.2f MB | - | |\n",
	       shared.kv_after_drop / 1e6);
	printf("| KV held after stage B | %.2f MB | %.2f MB | |\n",
	       shared.kv_after_b / 1e6, recompute.kv_after_b / 1e6);
	printf("| peak KV held | %.2f MB | %.2f MB | %.2fx |\n",
	       shared.kv_peak / 1e6, recompute.kv_peak / 1e6,
	       (double)recompute.kv_peak / (double)shared.kv_peak);

	free(i_all);
	free(i_a);
	stage_prompt_free(prompts[0]);
	stage_prompt_free(prompts[1]);
	engine_destroy(eng);
	kv_store_destroy(store);
	kern_pool_destroy(pool);
	free(mem);
	model_free(m);
	return 0;
}
