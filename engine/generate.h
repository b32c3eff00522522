/* SPDX-License-Identifier: MIT */
/*
 * generate.h - the generation loop: prefill a prompt, then sample and feed
 * back one token at a time until EOS, a stop token, a stop string or the
 * token limit, streaming the text as it becomes final.
 */
#ifndef KVCHAIN_GENERATE_H
#define KVCHAIN_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"

/* Receives each row of logits a token is sampled from, in order. */
typedef void (*gen_logits_fn)(void *arg, const float *logits, uint32_t n);

struct gen_params {
	struct sampler_params sampling;
	uint32_t max_tokens;		/* generated tokens, at least 1 */
	bool ignore_eos;		/* keep going past the EOS token */
	const int32_t *stop_tokens;	/* (n_stop_tokens) */
	size_t n_stop_tokens;
	const char *const *stop_strings; /* (n_stop_strings), NUL-terminated */
	size_t n_stop_strings;
	gen_logits_fn on_logits;	/* may be NULL */
	void *logits_arg;
};

enum gen_stop_reason {
	GEN_STOP_MAX_TOKENS,
	GEN_STOP_EOS,
	GEN_STOP_TOKEN,
	GEN_STOP_STRING,
	GEN_STOP_CALLBACK,
	GEN_STOP_CONTEXT,	/* the cache is full */
};

struct gen_stats {
	uint32_t n_prompt;
	uint32_t n_generated;	/* tokens sampled, including a stop token */
	double prefill_seconds;
	double decode_seconds;	/* from the first sampled token to the end */
	enum gen_stop_reason stop;
};

/*
 * Receives each generated token @id, in order, with the text that became
 * final with it (possibly none). Text that might be the start of a stop
 * string is held back until it is known not to be one, and the stop string
 * itself is never passed; text still held at the end comes in a last call
 * with id -1. EOS and stop tokens are not passed. Returning nonzero stops
 * generation.
 */
typedef int (*gen_text_fn)(void *arg, int32_t id, const char *text,
			   size_t len);

/*
 * Prefills @prompt (n_prompt >= 1 tokens) at position 0 of @cache, then
 * generates. Returns 0 with @stats filled, or a negative errno from the
 * forward pass or -ENOMEM.
 */
int generate(struct forward_ctx *ctx, struct kv_cache *cache,
	     const struct model *model, const int32_t *prompt,
	     uint32_t n_prompt, const struct gen_params *params,
	     gen_text_fn on_text, void *arg, struct gen_stats *stats);

/*
 * Runs @n tokens at the next positions of whatever the caller generates
 * into, and writes the logits of the last one into @logits (n_vocab floats)
 * unless it is NULL. Returns 0, -ENOSPC or -E2BIG when no position is
 * left, or another negative errno.
 */
typedef int (*gen_feed_fn)(void *arg, const int32_t *tokens, uint32_t n,
			   float *logits);

/*
 * The loop generate() runs, over any @feed: feeds @prompt, then samples and
 * feeds one token at a time. When @feed_last is set, the last sampled token
 * is fed too unless it is EOS or a stop token, so the caller's KV holds
 * every generated token; generate() does not, saving one forward pass. A
 * feed that runs out of positions ends generation with GEN_STOP_CONTEXT.
 */
int generate_loop(const struct model *model, gen_feed_fn feed,
		  void *feed_arg, const int32_t *prompt, uint32_t n_prompt,
		  const struct gen_params *params, bool feed_last,
		  gen_text_fn on_text, void *arg, struct gen_stats *stats);

#endif /* KVCHAIN_GENERATE_H */
