/* SPDX-License-Identifier: MIT */
/*
 * chain-inproc - the two-stage chain of examples/chain-stage-a and -b run
 * in one process over the engine API, as the reference tests/client-chain.sh
 * compares the daemon's output with. Same random stage prompts (seeds 1
 * and 2), same texts, greedy sampling, and the daemon's default engine
 * settings (F16 KV, 16-token blocks, 2 threads, 64-token batches).
 * Writes three files into the output folder:
 *   o_a            stage A's output with shared KV
 *   o_b            stage B's output reading A's KV (I_A dropped first)
 *   o_b_recompute  stage B the classic way: its prompt, then the texts of
 *                  I_ALL and O_A as stage inputs, prefilled from scratch
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvstore.h"
#include "model.h"
#include "prompt.h"
#include "random-prompt.h"
#include "segment.h"

struct options {
	const char *model_path;
	const char *out_dir;
	const char *i_all;
	const char *i_a;
	uint32_t prompt_tokens;
	uint32_t max_tokens_a;
	uint32_t max_tokens_b;
	bool ignore_eos;
};

struct text {
	char *data;
	size_t len;
};

static int collect(void *arg, int32_t id, const char *s, size_t len)
{
	struct text *t = arg;
	char *p = realloc(t->data, t->len + len + 1);

	(void)id;
	if (!p)
		return 1;
	memcpy(p + t->len, s, len);
	t->len += len;
	p[t->len] = '\0';
	t->data = p;
	return 0;
}

static int write_text(const char *dir, const char *name, const struct text *t)
{
	char path[4096];
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (!f)
		return -errno;
	ok = fwrite(t->data ? t->data : "", 1, t->len, f) == t->len;
	ok = (fclose(f) == 0) && ok;
	return ok ? 0 : -EIO;
}

static struct stage_prompt *random_prompt(const struct model *m, uint32_t n,
					  uint64_t seed)
{
	struct stage_prompt *p = NULL;
	size_t count = (size_t)n * m->cfg.d_model;
	float *embd = malloc(count * sizeof(float));
	char err[256];

	if (!embd)
		return NULL;
	random_prompt_fill(embd, count, seed);
	if (stage_prompt_soft(m, embd, n, m->cfg.d_model, &p, err,
			      sizeof(err)) < 0) {
		fprintf(stderr, "chain-inproc: %s\n", err);
		p = NULL;
	}
	free(embd);
	return p;
}

static void gen_params_for(struct gen_params *p, uint32_t max_tokens,
			   bool ignore_eos)
{
	memset(p, 0, sizeof(*p));
	sampler_params_default(&p->sampling);
	p->max_tokens = max_tokens;
	p->ignore_eos = ignore_eos;
}

/* Runs both stages with shared KV, then stage B in recompute mode. */
static int run(struct engine *eng, struct stage_prompt *const *prompts,
	       const struct options *o, struct text *o_a, struct text *o_b,
	       struct text *o_b_re)
{
	struct gen_params gp;
	struct gen_stats st;
	struct segment *seg;
	struct chain *chain;
	const char *texts[2];
	size_t lens[2];
	uint32_t id_a;
	char err[256];
	int rc;

	rc = chain_create(eng, (const struct stage_prompt *const *)prompts, 2,
			  &chain, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "chain-inproc: %s\n", err);
		return rc;
	}
	rc = segment_create(chain, &seg);
	chain_release(chain);
	if (rc < 0)
		return rc;
	if ((rc = segment_append_text(seg, SPAN_SHARED_INPUT, 0, o->i_all,
				      strlen(o->i_all), NULL, NULL, NULL)) < 0 ||
	    (rc = segment_append_text(seg, SPAN_STAGE_INPUT, 0, o->i_a,
				      strlen(o->i_a), NULL, &id_a, NULL)) < 0)
		goto out_release;
	gen_params_for(&gp, o->max_tokens_a, o->ignore_eos);
	rc = segment_generate(seg, 0, &gp, NULL, collect, o_a, NULL, &st);
	if (rc < 0)
		goto out_release;
	rc = segment_drop(seg, id_a);
	if (rc < 0)
		goto out_release;
	gen_params_for(&gp, o->max_tokens_b, o->ignore_eos);
	rc = segment_generate(seg, 1, &gp, NULL, collect, o_b, NULL, &st);
	if (rc < 0)
		goto out_release;

	texts[0] = o->i_all;
	lens[0] = strlen(o->i_all);
	texts[1] = o_a->data ? o_a->data : "";
	lens[1] = o_a->len;
	rc = engine_generate_recompute(eng, prompts[1], texts, lens, 2, &gp,
				       collect, o_b_re, &st);
out_release:
	segment_release(seg);
	return rc;
}

static void usage(FILE *out)
{
	fprintf(out,
"usage: chain-inproc -m MODEL -o DIR --i-all TEXT --i-a TEXT [options]\n"
"Runs the two-stage example chain in this process; writes o_a, o_b and\n"
"o_b_recompute into DIR.\n"
"  --prompt-tokens N    virtual tokens of each random prompt (default 8)\n"
"  --max-tokens-a N     tokens of O_A at most (default 32)\n"
"  --max-tokens-b N     tokens of O_B at most (default 32)\n"
"  --ignore-eos         generate past the end-of-sequence token\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
		{ "i-all", required_argument, NULL, 'A' },
		{ "i-a", required_argument, NULL, 'a' },
		{ "prompt-tokens", required_argument, NULL, 'p' },
		{ "max-tokens-a", required_argument, NULL, 'x' },
		{ "max-tokens-b", required_argument, NULL, 'y' },
		{ "ignore-eos", no_argument, NULL, 'e' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "m:o:", opts, NULL)) != -1) {
		switch (c) {
		case 'm': o->model_path = optarg; break;
		case 'o': o->out_dir = optarg; break;
		case 'A': o->i_all = optarg; break;
		case 'a': o->i_a = optarg; break;
		case 'p': o->prompt_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'x': o->max_tokens_a = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'y': o->max_tokens_b = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'e': o->ignore_eos = true; break;
		default: return -1;
		}
	}
	if (optind != argc || !o->model_path || !o->out_dir || !o->i_all ||
	    !o->i_a || !o->prompt_tokens || !o->max_tokens_a ||
	    !o->max_tokens_b)
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct options o = {
		.prompt_tokens = 8, .max_tokens_a = 32, .max_tokens_b = 32,
	};
	struct text o_a = { 0 }, o_b = { 0 }, o_b_re = { 0 };
	struct stage_prompt *prompts[2] = { NULL, NULL };
	struct kv_store *store = NULL;
	struct kern_pool *pool = NULL;
	struct engine *eng = NULL;
	struct model *m = NULL;
	uint32_t n_ctx;
	size_t bytes;
	void *mem = NULL;
	char err[512];
	int rc = 1;

	if (parse_args(argc, argv, &o) < 0) {
		usage(stderr);
		return 2;
	}
	kern_init();
	if (model_load(o.model_path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "chain-inproc: %s\n", err);
		return 1;
	}
	n_ctx = m->cfg.n_ctx_train;
	/* room for the chain, its one segment and the recompute segment */
	bytes = kv_store_block_bytes(m, KERN_TYPE_F16, 16) *
		(3 * (n_ctx / 16) + 16);
	mem = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	pool = kern_pool_create(2);
	if (!mem || !pool ||
	    kv_store_create(mem, bytes, m, KERN_TYPE_F16, 16, &store) < 0) {
		fprintf(stderr, "chain-inproc: cannot set up a %zu-byte KV store\n",
			bytes);
		goto out;
	}
	eng = engine_create(m, store, pool, 64, n_ctx);
	prompts[0] = random_prompt(m, o.prompt_tokens, 1);
	prompts[1] = random_prompt(m, o.prompt_tokens, 2);
	if (!eng || !prompts[0] || !prompts[1]) {
		fprintf(stderr, "chain-inproc: cannot create the engine or prompts\n");
		goto out;
	}
	rc = run(eng, prompts, &o, &o_a, &o_b, &o_b_re);
	if (rc < 0) {
		fprintf(stderr, "chain-inproc: the chain failed: %s\n",
			strerror(-rc));
		rc = 1;
		goto out;
	}
	if (write_text(o.out_dir, "o_a", &o_a) < 0 ||
	    write_text(o.out_dir, "o_b", &o_b) < 0 ||
	    write_text(o.out_dir, "o_b_recompute", &o_b_re) < 0) {
		fprintf(stderr, "chain-inproc: cannot write into %s\n", o.out_dir);
		rc = 1;
		goto out;
	}
	rc = 0;
out:
	free(o_a.data);
	free(o_b.data);
	free(o_b_re.data);
	stage_prompt_free(prompts[0]);
	stage_prompt_free(prompts[1]);
	if (eng)
		engine_destroy(eng);
	if (store)
		kv_store_destroy(store);
	if (pool)
		kern_pool_destroy(pool);
	free(mem);
	model_free(m);
	return rc;
}
