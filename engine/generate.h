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

/*
 * The loop's state, for callers that feed tokens themselves (a scheduler
 * batching many generations): create, then alternately hand the logits of
 * the last fed token to gen_state_next() and feed the token it returns.
 * @params and the arrays it points to must outlive the state.
 */
struct gen_state;

int gen_state_create(const struct model *model,
		     const struct gen_params *params, bool feed_last,
		     gen_text_fn on_text, void *arg, struct gen_state **out);
void gen_state_free(struct gen_state *g);

/*
 * Samples from @logits, streams text, and checks the stop conditions.
 * Returns 1 with the token to feed next in *next, 0 when nothing is left
 * to feed, or a negative errno. With feed_last, the last sampled token is
 * returned once more for feeding after generation has finished.
 */
int gen_state_next(struct gen_state *g, const float *logits, int32_t *next);

/* Returns true once sampling is over (a final feed may still follow). */
bool gen_state_finished(const struct gen_state *g);

/* Ends sampling for @reason (no effect once finished). */
void gen_state_stop(struct gen_state *g, enum gen_stop_reason reason);

/* Records the prefill in the statistics. */
void gen_state_set_prefill(struct gen_state *g, uint32_t n_prompt,
			   double seconds);

/* Passes on text still held back and copies the statistics to @stats. */
void gen_state_end(struct gen_state *g, struct gen_stats *stats);

#endif /* KVCHAIN_GENERATE_H */
