/* SPDX-License-Identifier: MIT */
/*
 * layout.h - one FTHSS training sequence: the prompt slots of every stage,
 * then the content spans in append order, at absolute sequential positions.
 * Also the cascade attention mask over it, as runs of visible keys per
 * query position, the form the trainer's attention reads.
 *
 * The mask comes from cascade_visible() in engine/segment.h, the function
 * the engine's default views use, so a layout attends exactly as an engine
 * segment with the same spans does.
 */
#ifndef KVCHAIN_TUNE_LAYOUT_H
#define KVCHAIN_TUNE_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "segment.h"

/* Largest number of spans, prompt slots included, in one layout. */
#define TUNE_MAX_SPANS 256

struct tune_span {
	enum span_kind kind;
	uint32_t stage;		/* 0 for shared input */
	uint32_t pos0;		/* first position */
	uint32_t n;		/* tokens, or rows of a prompt slot */
	int32_t *tokens;	/* (n), NULL for a prompt slot */
	bool loss;		/* an output span whose tokens are trained */
	const uint8_t *untrained; /* (n) or NULL: 1 where the position's
				   * target is left out of the loss */
	int32_t stop_id;	/* predicted after the last token, not fed; -1 */
};

struct tune_layout {
	uint32_t n_stages;	/* prompt slots, spans 0 .. n_stages - 1 */
	uint32_t n_spans;
	uint32_t n_pos;		/* positions in all */
	struct tune_span spans[TUNE_MAX_SPANS];
};

/*
 * Starts a layout with the prompt slots of @n_stages stages, slot i holding
 * rows[i] virtual tokens at the next positions. Returns 0, or -EINVAL for
 * no stages, more than CHAIN_MAX_STAGES, or an empty slot.
 */
int tune_layout_init(struct tune_layout *lay, uint32_t n_stages,
		     const uint32_t *rows);

/*
 * Appends a content span of @n token ids (copied) of @kind for @stage
 * (ignored for shared input) at the next positions. With @loss the span is
 * an output whose tokens after its first (BOS, fed but not predicted) enter
 * the loss, and @stop_id, unless -1, is the token (EOS) its last position
 * must predict. Returns 0, -EINVAL for a prompt kind, a stage outside the
 * layout, an empty span, @loss on a span that is not an output, or a
 * negative @stop_id other than -1; -E2BIG past TUNE_MAX_SPANS; -ENOMEM.
 */
int tune_layout_add(struct tune_layout *lay, enum span_kind kind,
		    uint32_t stage, const int32_t *tokens, uint32_t n,
		    bool loss, int32_t stop_id);

void tune_layout_free(struct tune_layout *lay);

/*
 * The keys each query position attends to, as runs of consecutive
 * positions in ascending order: position p reads keys start[r] ..
 * start[r] + len[r] - 1 for r in first[p] .. first[p + 1] - 1.
 */
struct tune_runs {
	uint32_t n_pos;
	uint32_t *first;	/* (n_pos + 1) */
	uint32_t *start;	/* (first[n_pos]) */
	uint32_t *len;		/* (first[n_pos]) */
};

/*
 * Builds the runs of the cascade mask of @lay: a query in span S reads an
 * earlier span T whole when cascade_visible(S, T) holds, and S itself
 * causally. Returns 0 or -ENOMEM.
 */
int tune_layout_runs(const struct tune_layout *lay, struct tune_runs *runs);

void tune_runs_free(struct tune_runs *runs);

/*
 * Writes the mask @runs describe as an n x n matrix of 0/1 bytes, the form
 * segment_mask() uses: mask[q * n + k] is 1 when position q reads key k.
 * Returns 0 or -EINVAL when @n is not runs->n_pos.
 */
int tune_runs_mask(const struct tune_runs *runs, uint8_t *mask, size_t n);

/*
 * Writes the cascade mask of @lay, through its runs, as tune_runs_mask
 * does. Returns 0, -EINVAL when @n is not lay->n_pos, or -ENOMEM.
 */
int tune_layout_mask(const struct tune_layout *lay, uint8_t *mask, size_t n);

#endif /* KVCHAIN_TUNE_LAYOUT_H */
