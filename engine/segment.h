/* SPDX-License-Identifier: MIT */
/*
 * segment.h - FTHSS inference: chains of stage prompts over one paged KV
 * cache, segments made of immutable spans, and the cascade mask.
 *
 * A chain is an ordered list of stage prompts. Its prompt slots occupy
 * positions 0 .. sum(n_i) - 1, in stage order, and their KV is computed once
 * when the chain is created and shared, by reference count, by every
 * segment of the chain. A segment continues the positions after the slots:
 * every append or generation adds one span at the next free positions,
 * whether or not earlier spans are visible to it (masking never renumbers).
 *
 * Which keys a new span attends to is its view: a list of earlier spans,
 * plus its stage's prompt slot and itself, causally. The default view of
 * each kind is the cascade mask:
 *
 *   prompt slot P_X    P_X only
 *   shared input       earlier shared inputs
 *   input of stage X   P_X; every earlier span that is not a prompt slot
 *   output of stage X  P_X; earlier shared inputs; earlier inputs of X;
 *                      every earlier output
 *
 * Span text is framed the same way in serving and training: each span is
 * tokenized on its own with no BOS or EOS added; an input span is its text
 * followed by "\n"; an output span is BOS (fed, not predicted) followed by
 * the generated tokens, the EOS that ends it not fed back.
 *
 * Not thread-safe: the caller serialises calls on one engine.
 */
#ifndef KVCHAIN_SEGMENT_H
#define KVCHAIN_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "generate.h"
#include "kernels.h"

struct model;
struct kv_store;
struct stage_prompt;

enum span_kind {
	SPAN_PROMPT,		/* a stage's prompt slot */
	SPAN_SHARED_INPUT,	/* I_ALL: seen by every stage, no prompt */
	SPAN_STAGE_INPUT,	/* I_X: input of one stage */
	SPAN_STAGE_OUTPUT,	/* O_X: what a stage generated */
};

/*
 * Returns true if a token of a span of @query_kind for @query_stage may
 * attend to an earlier span of @key_kind for @key_stage under the cascade
 * mask (the table above). Within one span attention is causal. The
 * trainer builds its mask from this function too.
 */
bool cascade_visible(enum span_kind query_kind, uint32_t query_stage,
		     enum span_kind key_kind, uint32_t key_stage);

/* Largest number of stages in one chain. */
#define CHAIN_MAX_STAGES 16

/* The state every chain and segment of one model shares. */
struct engine;

/*
 * Creates an engine over @model and @store, running on @pool (NULL for one
 * thread), prefilling at most @max_batch tokens per forward pass and
 * allowing segments of up to @n_ctx positions. Returns NULL when out of
 * memory or when n_ctx exceeds the model's context length.
 */
struct engine *engine_create(const struct model *model, struct kv_store *store,
			     struct kern_pool *pool, uint32_t max_batch,
			     uint32_t n_ctx);
void engine_destroy(struct engine *eng);

const struct model *engine_model(const struct engine *eng);
struct kv_store *engine_store(const struct engine *eng);

struct chain;

/*
 * Creates a chain of @n_stages prompts (copied) and computes the KV of each
 * prompt slot. Returns 0, -EINVAL with a message for no stages, too many,
 * or a soft prompt whose width is not the model's d_model; -E2BIG when the
 * slots exceed n_ctx; -ENOSPC when the store is out of blocks.
 */
int chain_create(struct engine *eng, const struct stage_prompt *const *prompts,
		 uint32_t n_stages, struct chain **out, char *err,
		 size_t errlen);

/* Drops the caller's reference; the chain lives on while segments use it. */
void chain_release(struct chain *chain);

uint32_t chain_n_stages(const struct chain *chain);

/* Returns the first position and the length of stage @stage's slot. */
void chain_slot(const struct chain *chain, uint32_t stage, uint32_t *pos0,
		uint32_t *n);

struct segment;

/* Creates an empty segment of @chain (its prompt slots only). */
int segment_create(struct chain *chain, struct segment **out);

/* Releases the segment and every block reference it holds. */
void segment_release(struct segment *seg);

/*
 * Creates a segment that shares every span (and block) of @seg. Appends to
 * either one afterwards do not show in the other.
 */
int segment_fork(const struct segment *seg, struct segment **out);

/*
 * An explicit view: the ids of the earlier spans a new span may read, any
 * kind, prompt slots of other stages included. The stage's own prompt slot
 * (for stage inputs and outputs) and the span itself are always visible;
 * the list need not name them. A NULL view means the cascade mask's
 * default.
 */
struct span_view {
	const uint32_t *spans;
	uint32_t n;
};

/*
 * Appends @n token ids as a span of @kind (shared or stage input) for
 * @stage (ignored for shared input) and computes its KV. Stores the new
 * span's id in *span_id and, if @logits is not NULL, the logits after its
 * last token (n_vocab floats). On any error the segment is left as it was:
 * -EINVAL for a bad kind, stage or token id; -ENOENT for a view naming a
 * span that does not exist (yet) or was dropped; -E2BIG when the segment
 * would exceed n_ctx; -ENOSPC when the store is out of blocks.
 */
int segment_append_tokens(struct segment *seg, enum span_kind kind,
			  uint32_t stage, const int32_t *tokens, uint32_t n,
			  const struct span_view *view, uint32_t *span_id,
			  float *logits);

/*
 * Tokenizes @text as an input span is framed (text + "\n", no BOS) into a
 * new array in *ids (free it with free()). Returns the count or a negative
 * errno.
 */
int engine_encode_input(const struct engine *eng, const char *text,
			size_t len, int32_t **ids);

/* Appends @len bytes of text, framed as an input span (text + "\n"). */
int segment_append_text(struct segment *seg, enum span_kind kind,
			uint32_t stage, const char *text, size_t len,
			const struct span_view *view, uint32_t *span_id,
			float *logits);

/*
 * Generates as @stage: feeds BOS, then samples and feeds tokens until EOS,
 * a stop condition or params->max_tokens, streaming text to @on_text. The
 * output (BOS and every fed token) becomes one span; its id goes to
 * *span_id. Blocks for max_tokens + 1 positions are taken up front, so a
 * failure leaves the segment as it was. Errors as for the append calls.
 */
int segment_generate(struct segment *seg, uint32_t stage,
		     const struct gen_params *params,
		     const struct span_view *view, gen_text_fn on_text,
		     void *arg, uint32_t *span_id, struct gen_stats *stats);

/* ---- Step-wise work, for a scheduler that batches segments ------------ */

/*
 * A job is an append or a generation in progress on one segment. Its span
 * is invisible to the segment until job_finish commits it, and the
 * segment accepts no other append, generation or drop while a job is open
 * on it (-EBUSY). engine_step() advances many jobs in one forward pass, so
 * the weights are read once for all of them: a generation by one token, an
 * append by one chunk of at most the engine's max_batch tokens.
 */
struct job;

/*
 * Opens an append of @n tokens as for segment_append_tokens, checking
 * everything and taking its blocks up front. Errors as for that call, and
 * -EBUSY when a job is already open on @seg.
 */
int job_append_start(struct segment *seg, enum span_kind kind, uint32_t stage,
		     const int32_t *tokens, uint32_t n,
		     const struct span_view *view, struct job **out);

/*
 * Opens a generation as for segment_generate. @on_text is called from
 * engine_step() as tokens become final.
 */
int job_generate_start(struct segment *seg, uint32_t stage,
		       const struct gen_params *params,
		       const struct span_view *view, gen_text_fn on_text,
		       void *arg, struct job **out);

/*
 * Advances each of @n open jobs (on distinct segments of @eng) by one step
 * in one forward pass, at most @max_rows tokens in all: every generation
 * gets one row, appends share what is left in order. Returns 0 or a
 * negative errno; a job that failed or finished reports it through
 * job_done().
 */
int engine_step(struct engine *eng, struct job *const *jobs, uint32_t n,
		uint32_t max_rows);

/* Returns true when the job has nothing left to do (finished or failed). */
bool job_done(const struct job *job);

/*
 * Stops a generation after its current token (a no-op for appends): the
 * output so far stays, and stats->stop becomes GEN_STOP_CALLBACK.
 */
void job_cancel(struct job *job);

/*
 * Closes the job. With @commit and a job that did not fail, its span joins
 * the segment and 0 is returned with its id in *span_id (may be NULL) and
 * the generation's figures in *stats (may be NULL). Otherwise every block
 * it took is returned and the segment is as before the job; the return is
 * the job's error, or -ECANCELED when @commit was false.
 */
int job_finish(struct job *job, bool commit, uint32_t *span_id,
	       struct gen_stats *stats);

/*
 * Drops span @span_id: its blocks return to the store once no fork or
 * chain holds them, and later views cannot name it. Its positions stay
 * used. Returns 0, or -ENOENT for an unknown or dropped span, -EINVAL for
 * a prompt slot.
 */
int segment_drop(struct segment *seg, uint32_t span_id);

struct span_info {
	enum span_kind kind;
	uint32_t stage;
	uint32_t pos0;		/* first position */
	uint32_t n;		/* tokens */
	bool dropped;
	const int32_t *tokens;	/* (n), valid until the span is dropped */
	uint32_t n_blocks;
	const uint32_t *blocks;	/* (n_blocks) store block ids */
};

/* Span ids run from 0 (the first prompt slot) to segment_n_spans() - 1. */
uint32_t segment_n_spans(const struct segment *seg);

/* Fills @info for span @span_id. Returns 0 or -ENOENT. */
int segment_span_info(const struct segment *seg, uint32_t span_id,
		      struct span_info *info);

/* Returns the number of positions the segment uses, dropped spans included. */
uint32_t segment_n_positions(const struct segment *seg);

/*
 * Writes the attention mask the segment's spans were computed with as an
 * n x n matrix of 0/1 bytes, n = segment_n_positions(): mask[q * n + k] is
 * 1 when the token at position q attended to the key at position k. Rows
 * of dropped spans are kept. The forward pass chooses keys through the
 * same function.
 */
int segment_mask(const struct segment *seg, uint8_t *mask, size_t n);

/*
 * Generates as @stage the classic way, without shared KV: a fresh segment
 * of a one-stage chain holds the stage's prompt, then @n_inputs texts
 * appended as inputs of that stage (for stage B: the text of I_ALL and of
 * O_A), prefilled from scratch, then the generation. The temporary segment
 * and chain are released before returning.
 */
int engine_generate_recompute(struct engine *eng,
			      const struct stage_prompt *prompt,
			      const char *const *inputs,
			      const size_t *input_lens, uint32_t n_inputs,
			      const struct gen_params *params,
			      gen_text_fn on_text, void *arg,
			      struct gen_stats *stats);

#endif /* KVCHAIN_SEGMENT_H */
