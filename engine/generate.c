/* SPDX-License-Identifier: MIT */
/*
 * generate.c - the prefill-then-decode loop with stop conditions and
 * streamed text.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "tokenizer.h"

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Text generated but not yet passed on, because a stop string may start in it. */
struct pending_text {
	char *buf;
	size_t len;
	size_t cap;
};

static int pending_append(struct pending_text *p, const char *s, size_t n)
{
	if (p->len + n + 1 > p->cap) {
		size_t cap = (p->len + n + 1) * 2;
		char *buf = realloc(p->buf, cap);

		if (!buf)
			return -ENOMEM;
		p->buf = buf;
		p->cap = cap;
	}
	memcpy(p->buf + p->len, s, n);
	p->len += n;
	p->buf[p->len] = '\0';
	return 0;
}

/*
 * Returns the offset of the first stop string in @p, or -1. Stores in
 * *safe how many leading bytes cannot be part of any stop string.
 */
static long find_stop(const struct pending_text *p,
		      const struct gen_params *params, size_t *safe)
{
	long first = -1;
	size_t i, k;

	*safe = p->len;
	for (i = 0; i < params->n_stop_strings; i++) {
		const char *stop = params->stop_strings[i];
		size_t n = strlen(stop);
		const char *hit;

		if (n == 0)
			continue;
		hit = memmem(p->buf, p->len, stop, n);
		if (hit && (first < 0 || hit - p->buf < first))
			first = hit - p->buf;
		/* hold back the longest tail that is a prefix of @stop */
		for (k = n - 1 < p->len ? n - 1 : p->len; k > 0; k--) {
			if (memcmp(p->buf + p->len - k, stop, k) == 0) {
				if (p->len - k < *safe)
					*safe = p->len - k;
				break;
			}
		}
	}
	return first;
}

static bool is_stop_token(const struct gen_params *params, int32_t id)
{
	size_t i;

	for (i = 0; i < params->n_stop_tokens; i++)
		if (params->stop_tokens[i] == id)
			return true;
	return false;
}

/* Passes the first @n pending bytes on and drops them from @p. */
static int flush(struct pending_text *p, size_t n, int32_t id,
		 gen_text_fn on_text, void *arg)
{
	int rc = 0;

	if (on_text)
		rc = on_text(arg, id, p->buf, n);
	memmove(p->buf, p->buf + n, p->len - n);
	p->len -= n;
	return rc;
}

/* ---- Step-wise generation state -------------------------------------- */

struct gen_state {
	const struct model *model;
	const struct gen_params *params;
	struct sampler *sampler;
	struct pending_text text;
	gen_text_fn on_text;
	void *arg;
	int32_t eos;
	bool feed_last;
	bool finished;		/* sampling is over */
	double t_decode;	/* when the first logits arrived */
	struct gen_stats stats;
};

int gen_state_create(const struct model *model,
		     const struct gen_params *params, bool feed_last,
		     gen_text_fn on_text, void *arg, struct gen_state **out)
{
	struct gen_state *g;

	*out = NULL;
	if (params->max_tokens == 0)
		return -EINVAL;
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->sampler = sampler_create(&params->sampling, model->cfg.n_vocab);
	if (!g->sampler) {
		free(g);
		return -EINVAL;
	}
	g->model = model;
	g->params = params;
	g->on_text = on_text;
	g->arg = arg;
	g->eos = tok_eos(model->tok);
	g->feed_last = feed_last;
	g->stats.stop = GEN_STOP_MAX_TOKENS;
	*out = g;
	return 0;
}

void gen_state_free(struct gen_state *g)
{
	if (!g)
		return;
	free(g->text.buf);
	sampler_free(g->sampler);
	free(g);
}

/* Samples a token from @logits and decides whether generation goes on. */
static int sample_one(struct gen_state *g, const float *logits, int32_t *next)
{
	const struct gen_params *params = g->params;
	struct gen_stats *stats = &g->stats;
	char piece[256];
	size_t safe;
	long stop_at;
	int32_t id;
	int n, rc;

	if (params->on_logits)
		params->on_logits(params->logits_arg, logits,
				  g->model->cfg.n_vocab);
	id = sampler_sample(g->sampler, logits);
	stats->n_generated++;
	if (id == g->eos && !params->ignore_eos) {
		stats->stop = GEN_STOP_EOS;
		return 0;
	}
	if (is_stop_token(params, id)) {
		stats->stop = GEN_STOP_TOKEN;
		return 0;
	}
	*next = id;

	/* NOTE: a token whose text exceeds the buffer is dropped from the
	 * streamed text; real vocabularies stay far below it. */
	n = tok_token_to_piece(g->model->tok, id, piece, sizeof(piece));
	if (n < 0 || (size_t)n > sizeof(piece))
		n = 0;
	if ((rc = pending_append(&g->text, piece, (size_t)n)) < 0)
		return rc;
	stop_at = find_stop(&g->text, params, &safe);
	if (stop_at >= 0) {
		flush(&g->text, (size_t)stop_at, id, g->on_text, g->arg);
		g->text.len = 0;
		stats->stop = GEN_STOP_STRING;
		return 0;
	}
	if (flush(&g->text, safe, id, g->on_text, g->arg)) {
		stats->stop = GEN_STOP_CALLBACK;
		return 0;
	}
	if (stats->n_generated == params->max_tokens)
		return 0;
	return 1;
}

int gen_state_next(struct gen_state *g, const float *logits, int32_t *next)
{
	int32_t id = -1;
	int rc;

	if (g->finished)
		return 0;
	if (g->t_decode == 0.0)
		g->t_decode = now_seconds();
	rc = sample_one(g, logits, &id);
	if (rc < 0)
		return rc;
	if (rc == 1) {
		*next = id;
		return 1;
	}
	g->finished = true;
	/* the last sampled token, unless it ended the text as EOS or a stop
	 * token, so the caller's KV contains every generated token */
	if (g->feed_last && id >= 0 && g->stats.stop != GEN_STOP_EOS &&
	    g->stats.stop != GEN_STOP_TOKEN) {
		*next = id;
		return 1;
	}
	return 0;
}

void gen_state_stop(struct gen_state *g, enum gen_stop_reason reason)
{
	if (!g->finished) {
		g->finished = true;
		g->stats.stop = reason;
	}
}

bool gen_state_finished(const struct gen_state *g)
{
	return g->finished;
}

void gen_state_end(struct gen_state *g, struct gen_stats *stats)
{
	/* text held back for a stop string that never came */
	if (g->stats.stop != GEN_STOP_STRING && g->text.len > 0)
		flush(&g->text, g->text.len, -1, g->on_text, g->arg);
	if (g->t_decode != 0.0)
		g->stats.decode_seconds = now_seconds() - g->t_decode;
	if (stats)
		*stats = g->stats;
}

void gen_state_set_prefill(struct gen_state *g, uint32_t n_prompt,
			   double seconds)
{
	g->stats.n_prompt = n_prompt;
	g->stats.prefill_seconds = seconds;
}

/* ---- The whole loop over a feed callback ------------------------------- */

int generate_loop(const struct model *model, gen_feed_fn feed,
		  void *feed_arg, const int32_t *prompt, uint32_t n_prompt,
		  const struct gen_params *params, bool feed_last,
		  gen_text_fn on_text, void *arg, struct gen_stats *stats)
{
	struct gen_state *g;
	float *logits;
	double t0;
	int32_t id;
	int rc;

	memset(stats, 0, sizeof(*stats));
	stats->n_prompt = n_prompt;
	if (n_prompt == 0)
		return -EINVAL;
	if ((rc = gen_state_create(model, params, feed_last, on_text, arg,
				   &g)) < 0)
		return rc;
	logits = malloc((size_t)model->cfg.n_vocab * sizeof(float));
	if (!logits) {
		rc = -ENOMEM;
		goto out_free;
	}

	/* prefill */
	t0 = now_seconds();
	rc = feed(feed_arg, prompt, n_prompt, logits);
	if (rc < 0)
		goto out_free;
	gen_state_set_prefill(g, n_prompt, now_seconds() - t0);

	/* decode: sample, stream, feed back */
	while ((rc = gen_state_next(g, logits, &id)) == 1) {
		bool last = gen_state_finished(g);

		rc = feed(feed_arg, &id, 1, last ? NULL : logits);
		if (rc == -ENOSPC || rc == -E2BIG) {
			gen_state_stop(g, GEN_STOP_CONTEXT);
			rc = 0;
			break;
		}
		if (rc < 0)
			goto out_free;
	}
	if (rc < 0)
		goto out_free;
	gen_state_end(g, stats);

out_free:
	free(logits);
	gen_state_free(g);
	return rc;
}

/* Feeds tokens into a contiguous cache at the next positions. */
struct cache_feed {
	struct forward_ctx *ctx;
	struct kv_cache *cache;
	uint32_t pos;
};

static int feed_cache(void *arg, const int32_t *tokens, uint32_t n,
		      float *logits)
{
	struct cache_feed *f = arg;
	int rc = model_forward(f->ctx, f->cache, tokens, NULL, n, f->pos,
			       logits, false);

	if (rc == 0)
		f->pos += n;
	return rc;
}

int generate(struct forward_ctx *ctx, struct kv_cache *cache,
	     const struct model *model, const int32_t *prompt,
	     uint32_t n_prompt, const struct gen_params *params,
	     gen_text_fn on_text, void *arg, struct gen_stats *stats)
{
	struct cache_feed f = { .ctx = ctx, .cache = cache, .pos = 0 };

	return generate_loop(model, feed_cache, &f, prompt, n_prompt, params,
			     false, on_text, arg, stats);
}
