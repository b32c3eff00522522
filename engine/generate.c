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

int generate_loop(const struct model *model, gen_feed_fn feed,
		  void *feed_arg, const int32_t *prompt, uint32_t n_prompt,
		  const struct gen_params *params, bool feed_last,
		  gen_text_fn on_text, void *arg, struct gen_stats *stats)
{
	uint32_t n_vocab = model->cfg.n_vocab;
	int32_t eos = tok_eos(model->tok);
	struct pending_text text = { 0 };
	struct sampler *sampler;
	bool fed = false;
	float *logits;
	double t0, t1;
	int32_t id;
	int rc;

	memset(stats, 0, sizeof(*stats));
	stats->n_prompt = n_prompt;
	if (n_prompt == 0 || params->max_tokens == 0)
		return -EINVAL;
	logits = malloc((size_t)n_vocab * sizeof(float));
	sampler = sampler_create(&params->sampling, n_vocab);
	if (!logits || !sampler) {
		rc = logits ? -EINVAL : -ENOMEM;
		goto out_free;
	}

	/* prefill */
	t0 = now_seconds();
	rc = feed(feed_arg, prompt, n_prompt, logits);
	if (rc < 0)
		goto out_free;
	t1 = now_seconds();
	stats->prefill_seconds = t1 - t0;

	/* decode: sample, stream, feed back */
	stats->stop = GEN_STOP_MAX_TOKENS;
	for (;;) {
		char piece[256];
		size_t safe;
		long stop_at;
		int n;

		if (params->on_logits)
			params->on_logits(params->logits_arg, logits, n_vocab);
		id = sampler_sample(sampler, logits);
		fed = false;
		stats->n_generated++;
		if (id == eos && !params->ignore_eos) {
			stats->stop = GEN_STOP_EOS;
			break;
		}
		if (is_stop_token(params, id)) {
			stats->stop = GEN_STOP_TOKEN;
			break;
		}
		/* NOTE: a token whose text exceeds the buffer is dropped from
		 * the streamed text; real vocabularies stay far below it. */
		n = tok_token_to_piece(model->tok, id, piece, sizeof(piece));
		if (n < 0 || (size_t)n > sizeof(piece))
			n = 0;
		if ((rc = pending_append(&text, piece, (size_t)n)) < 0)
			goto out_free;
		stop_at = find_stop(&text, params, &safe);
		if (stop_at >= 0) {
			flush(&text, (size_t)stop_at, id, on_text, arg);
			stats->stop = GEN_STOP_STRING;
			break;
		}
		if (flush(&text, safe, id, on_text, arg)) {
			stats->stop = GEN_STOP_CALLBACK;
			break;
		}
		if (stats->n_generated == params->max_tokens)
			break;
		rc = feed(feed_arg, &id, 1, logits);
		if (rc == -ENOSPC || rc == -E2BIG) {
			stats->stop = GEN_STOP_CONTEXT;
			fed = true;	/* nothing more can be fed */
			break;
		}
		if (rc < 0)
			goto out_free;
		fed = true;
	}

	/* the last sampled token, unless it ended the text as EOS or a stop token */
	if (feed_last && !fed && stats->stop != GEN_STOP_EOS &&
	    stats->stop != GEN_STOP_TOKEN) {
		rc = feed(feed_arg, &id, 1, NULL);
		if (rc < 0 && rc != -ENOSPC && rc != -E2BIG)
			goto out_free;
	}

	/* text held back for a stop string that never came */
	if (stats->stop != GEN_STOP_STRING && text.len > 0)
		flush(&text, text.len, -1, on_text, arg);
	stats->decode_seconds = now_seconds() - t1;
	rc = 0;

out_free:
	free(text.buf);
	sampler_free(sampler);
	free(logits);
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
