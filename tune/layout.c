/* SPDX-License-Identifier: MIT */
/*
 * layout.c - training sequences as FTHSS lays them out (prompt slots, then
 * content spans at sequential positions) and their cascade mask as runs of
 * visible keys.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"

int tune_layout_init(struct tune_layout *lay, uint32_t n_stages,
		     const uint32_t *rows)
{
	uint32_t i;

	memset(lay, 0, sizeof(*lay));
	if (n_stages == 0 || n_stages > CHAIN_MAX_STAGES)
		return -EINVAL;
	for (i = 0; i < n_stages; i++)
		if (rows[i] == 0)
			return -EINVAL;
	for (i = 0; i < n_stages; i++) {
		struct tune_span *s = &lay->spans[i];

		s->kind = SPAN_PROMPT;
		s->stage = i;
		s->pos0 = lay->n_pos;
		s->n = rows[i];
		s->stop_id = -1;
		lay->n_pos += rows[i];
	}
	lay->n_stages = n_stages;
	lay->n_spans = n_stages;
	return 0;
}

int tune_layout_add(struct tune_layout *lay, enum span_kind kind,
		    uint32_t stage, const int32_t *tokens, uint32_t n,
		    bool loss, int32_t stop_id)
{
	struct tune_span *s;

	if (kind != SPAN_SHARED_INPUT && kind != SPAN_STAGE_INPUT &&
	    kind != SPAN_STAGE_OUTPUT)
		return -EINVAL;
	if (kind == SPAN_SHARED_INPUT)
		stage = 0;
	else if (stage >= lay->n_stages)
		return -EINVAL;
	if (n == 0 || (loss && kind != SPAN_STAGE_OUTPUT) || stop_id < -1)
		return -EINVAL;
	if (lay->n_spans == TUNE_MAX_SPANS || n > UINT32_MAX - lay->n_pos)
		return -E2BIG;
	s = &lay->spans[lay->n_spans];
	s->tokens = malloc((size_t)n * sizeof(int32_t));
	if (!s->tokens)
		return -ENOMEM;
	memcpy(s->tokens, tokens, (size_t)n * sizeof(int32_t));
	s->kind = kind;
	s->stage = stage;
	s->pos0 = lay->n_pos;
	s->n = n;
	s->loss = loss;
	s->stop_id = stop_id;
	lay->n_pos += n;
	lay->n_spans++;
	return 0;
}

void tune_layout_free(struct tune_layout *lay)
{
	uint32_t i;

	for (i = 0; i < lay->n_spans; i++) {
		free(lay->spans[i].tokens);
		lay->spans[i].tokens = NULL;
	}
	lay->n_spans = 0;
	lay->n_pos = 0;
}

/* Returns true if a query of span @q reads the whole of earlier span @k. */
static bool span_reads(const struct tune_layout *lay, uint32_t q, uint32_t k)
{
	const struct tune_span *qs = &lay->spans[q], *ks = &lay->spans[k];

	return cascade_visible(qs->kind, qs->stage, ks->kind, ks->stage);
}

int tune_layout_runs(const struct tune_layout *lay, struct tune_runs *runs)
{
	uint32_t s, t, k, n_runs = 0, r = 0;

	memset(runs, 0, sizeof(*runs));

	/* count: every position of span s has the same earlier runs */
	for (s = 0; s < lay->n_spans; s++) {
		uint32_t per_pos = 1;

		for (k = 0; k < s; k++)
			per_pos += span_reads(lay, s, k);
		n_runs += per_pos * lay->spans[s].n;
	}
	runs->n_pos = lay->n_pos;
	runs->first = malloc(((size_t)lay->n_pos + 1) * sizeof(uint32_t));
	runs->start = malloc(((size_t)n_runs + 1) * sizeof(uint32_t));
	runs->len = malloc(((size_t)n_runs + 1) * sizeof(uint32_t));
	if (!runs->first || !runs->start || !runs->len) {
		tune_runs_free(runs);
		return -ENOMEM;
	}

	for (s = 0; s < lay->n_spans; s++) {
		const struct tune_span *qs = &lay->spans[s];

		for (t = 0; t < qs->n; t++) {
			runs->first[qs->pos0 + t] = r;
			for (k = 0; k < s; k++) {
				if (!span_reads(lay, s, k))
					continue;
				runs->start[r] = lay->spans[k].pos0;
				runs->len[r] = lay->spans[k].n;
				r++;
			}
			runs->start[r] = qs->pos0;
			runs->len[r] = t + 1;
			r++;
		}
	}
	runs->first[lay->n_pos] = r;
	return 0;
}

void tune_runs_free(struct tune_runs *runs)
{
	free(runs->first);
	free(runs->start);
	free(runs->len);
	memset(runs, 0, sizeof(*runs));
}

int tune_runs_mask(const struct tune_runs *runs, uint8_t *mask, size_t n)
{
	uint32_t p, r;

	if (n != runs->n_pos)
		return -EINVAL;
	memset(mask, 0, n * n);
	for (p = 0; p < runs->n_pos; p++)
		for (r = runs->first[p]; r < runs->first[p + 1]; r++)
			memset(mask + (size_t)p * n + runs->start[r], 1,
			       runs->len[r]);
	return 0;
}

int tune_layout_mask(const struct tune_layout *lay, uint8_t *mask, size_t n)
{
	struct tune_runs runs;
	int rc;

	if (n != lay->n_pos)
		return -EINVAL;
	if ((rc = tune_layout_runs(lay, &runs)) < 0)
		return rc;
	rc = tune_runs_mask(&runs, mask, n);
	tune_runs_free(&runs);
	return rc;
}
