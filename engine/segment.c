/* SPDX-License-Identifier: MIT */
/*
 * segment.c - chains, segments and spans over the paged KV store, and the
 * cascade mask that decides which spans a new span reads.
 *
 * Every span records the ids of the earlier spans it was computed against
 * (its view). The forward pass and segment_mask() both enumerate what a
 * token reads through for_each_visible(), so the mask a test inspects is
 * the one the forward pass applied.
 * Each segment holds its own reference on every block of its live spans,
 * and a chain one on each block of its prompt slots, so a block's count is
 * the number of holders.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvstore.h"
#include "model.h"
#include "prompt.h"
#include "segment.h"
#include "tokenizer.h"

struct engine {
	const struct model *model;
	struct kv_store *store;
	struct kern_pool *pool;
	struct forward_ctx *fwd;
	uint32_t n_ctx;
	uint32_t max_batch;
	float *logits;		/* (n_vocab) */
};

struct span {
	enum span_kind kind;
	uint32_t stage;
	uint32_t pos0;
	uint32_t n;		/* tokens (virtual tokens for a soft prompt) */
	bool dropped;
	int32_t *tokens;	/* (n), NULL for a soft prompt */
	uint32_t *blocks;	/* (n_blocks) */
	uint32_t n_blocks;
	uint32_t *view;		/* (n_view) earlier span ids, ascending */
	uint32_t n_view;
};

struct chain {
	struct engine *eng;
	unsigned refs;		/* the creator's and one per segment */
	uint32_t n_stages;
	struct span slots[CHAIN_MAX_STAGES];
	uint32_t n_positions;	/* positions the slots use */
};

struct segment {
	struct engine *eng;
	struct chain *chain;
	struct span *spans;	/* (n_spans), slots first */
	uint32_t n_spans;
	uint32_t cap_spans;
	uint32_t next_pos;
	struct job *job;	/* the open job, or NULL */
};

struct job {
	struct engine *eng;
	struct segment *seg;
	bool generate;
	struct span span;	/* being written; not in seg->spans yet */
	uint32_t capacity;	/* tokens its blocks hold */
	uint32_t total;		/* append: tokens to write */
	float *logits_out;	/* append: caller's buffer for the last logits */
	struct gen_state *gen;	/* generate only */
	float *logits;		/* generate: (n_vocab) */
	int32_t next;		/* generate: token to feed next */
	double started;		/* when the first step began */
	bool done;
	int error;
};

static void set_error(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* ==== Engine ========================================================= */

struct engine *engine_create(const struct model *model, struct kv_store *store,
			     struct kern_pool *pool, uint32_t max_batch,
			     uint32_t n_ctx)
{
	struct engine *eng;

	if (n_ctx == 0 || n_ctx > model->cfg.n_ctx_train || max_batch == 0)
		return NULL;
	eng = calloc(1, sizeof(*eng));
	if (!eng)
		return NULL;
	eng->model = model;
	eng->store = store;
	eng->pool = pool;
	eng->n_ctx = n_ctx;
	eng->max_batch = max_batch;
	eng->fwd = forward_ctx_create(model, max_batch, n_ctx, pool);
	eng->logits = malloc((size_t)model->cfg.n_vocab * sizeof(float));
	if (!eng->fwd || !eng->logits) {
		engine_destroy(eng);
		return NULL;
	}
	return eng;
}

void engine_destroy(struct engine *eng)
{
	if (!eng)
		return;
	forward_ctx_free(eng->fwd);
	free(eng->logits);
	free(eng);
}

const struct model *engine_model(const struct engine *eng)
{
	return eng->model;
}

struct kv_store *engine_store(const struct engine *eng)
{
	return eng->store;
}

/* ==== Spans ========================================================== */

static void span_free_arrays(struct span *s)
{
	free(s->tokens);
	free(s->blocks);
	free(s->view);
	s->tokens = NULL;
	s->blocks = NULL;
	s->view = NULL;
}

static void span_unref_blocks(struct kv_store *store, struct span *s)
{
	uint32_t i;

	for (i = 0; i < s->n_blocks; i++)
		kv_block_unref(store, s->blocks[i]);
}

/* Copies @src into @dst, its arrays included, taking a block reference. */
static int span_copy(struct kv_store *store, struct span *dst,
		     const struct span *src)
{
	uint32_t i;

	*dst = *src;
	dst->tokens = NULL;
	dst->blocks = NULL;
	dst->view = NULL;
	if (src->tokens) {
		dst->tokens = malloc((size_t)src->n * sizeof(int32_t));
		if (!dst->tokens)
			goto out_nomem;
		memcpy(dst->tokens, src->tokens, (size_t)src->n * sizeof(int32_t));
	}
	dst->blocks = malloc(((size_t)src->n_blocks + 1) * sizeof(uint32_t));
	dst->view = malloc(((size_t)src->n_view + 1) * sizeof(uint32_t));
	if (!dst->blocks || !dst->view)
		goto out_nomem;
	memcpy(dst->blocks, src->blocks, (size_t)src->n_blocks * sizeof(uint32_t));
	memcpy(dst->view, src->view, (size_t)src->n_view * sizeof(uint32_t));
	for (i = 0; i < src->n_blocks; i++)
		kv_block_ref(store, src->blocks[i]);
	return 0;

out_nomem:
	span_free_arrays(dst);
	return -ENOMEM;
}

/* Takes enough blocks for @n tokens. On failure returns every one taken. */
static int span_alloc_blocks(struct kv_store *store, struct span *s,
			     uint32_t n)
{
	uint32_t bt = kv_store_block_tokens(store);
	uint32_t need = (n + bt - 1) / bt, i;
	int rc;

	s->blocks = malloc(((size_t)need + 1) * sizeof(uint32_t));
	if (!s->blocks)
		return -ENOMEM;
	for (i = 0; i < need; i++) {
		rc = kv_block_alloc(store, &s->blocks[i]);
		if (rc < 0) {
			while (i-- > 0)
				kv_block_unref(store, s->blocks[i]);
			free(s->blocks);
			s->blocks = NULL;
			return rc;
		}
	}
	s->n_blocks = need;
	return 0;
}

/* Returns blocks past what @s->n tokens need. */
static void span_trim_blocks(struct kv_store *store, struct span *s)
{
	uint32_t bt = kv_store_block_tokens(store);
	uint32_t need = (s->n + bt - 1) / bt;

	while (s->n_blocks > need)
		kv_block_unref(store, s->blocks[--s->n_blocks]);
}

/* ==== Forward pass into a span ======================================== */

/*
 * A span being computed: @span (not yet in @spans) gets its keys from
 * position span->pos0 + written onwards and reads the spans of its view.
 */
struct span_target {
	const struct kv_store *store;
	const struct span *spans;	/* the segment's committed spans */
	const struct span *span;	/* the one being written */
	uint32_t written;		/* its tokens already in the store */
};

static void *span_row(void *arg, uint32_t layer, uint32_t t, bool value)
{
	struct span_target *st = arg;
	uint32_t bt = kv_store_block_tokens(st->store);
	uint32_t i = st->written + t;

	return kv_block_row(st->store, st->span->blocks[i / bt], layer, i % bt,
			    value);
}

/*
 * Calls @visit for every span token @t of @span reads, in position order:
 * each span of its view whole, then the first t + 1 tokens of @span itself.
 * Stops at and returns the first negative value @visit returns. The forward
 * pass and segment_mask() both go through here.
 */
static int for_each_visible(const struct span *spans, const struct span *span,
			    uint32_t t,
			    int (*visit)(void *arg, const struct span *s,
					 uint32_t n),
			    void *arg)
{
	uint32_t i;
	int rc;

	for (i = 0; i < span->n_view; i++) {
		const struct span *v = &spans[span->view[i]];

		if ((rc = visit(arg, v, v->n)) < 0)
			return rc;
	}
	return visit(arg, span, t + 1);
}

/* Collects kern_kv_run entries, block by block, for one layer. */
struct run_list {
	const struct kv_store *store;
	uint32_t layer;
	struct kern_kv_run *runs;
	int cap;
	int count;
};

static int add_span_runs(void *arg, const struct span *s, uint32_t n)
{
	struct run_list *rl = arg;
	uint32_t bt = kv_store_block_tokens(rl->store);
	uint32_t b;

	for (b = 0; b * bt < n; b++) {
		uint32_t left = n - b * bt;
		struct kern_kv_run *r = &rl->runs[rl->count];

		if (rl->count == rl->cap)
			return -E2BIG;
		r->k = kv_block_row(rl->store, s->blocks[b], rl->layer, 0, false);
		r->v = kv_block_row(rl->store, s->blocks[b], rl->layer, 0, true);
		r->n = (int)(left < bt ? left : bt);
		rl->count++;
	}
	return 0;
}

static int span_runs(void *arg, uint32_t layer, uint32_t t,
		     struct kern_kv_run *runs, int cap)
{
	struct span_target *st = arg;
	struct run_list rl = {
		.store = st->store, .layer = layer, .runs = runs, .cap = cap,
	};
	int rc;

	rc = for_each_visible(st->spans, st->span, st->written + t,
			      add_span_runs, &rl);
	return rc < 0 ? rc : rl.count;
}

/* Runs @n tokens (or soft-prompt rows) into @span after what it holds. */
static int span_forward(struct engine *eng, const struct span *spans,
			struct span *span, uint32_t written,
			const int32_t *tokens, const float *embd, uint32_t n,
			float *logits)
{
	struct span_target st = {
		.store = eng->store, .spans = spans, .span = span,
		.written = written,
	};
	struct kv_target target = {
		.type = kv_store_type(eng->store), .arg = &st,
		.row = span_row, .runs = span_runs,
	};

	return model_forward_target(eng->fwd, &target, tokens, embd, n,
				    span->pos0 + written, logits, false);
}

/* ==== Chains ========================================================= */

int chain_create(struct engine *eng, const struct stage_prompt *const *prompts,
		 uint32_t n_stages, struct chain **out, char *err,
		 size_t errlen)
{
	const struct model_config *cfg = &eng->model->cfg;
	struct chain *c;
	uint32_t i, pos = 0;
	int rc;

	*out = NULL;
	if (n_stages == 0 || n_stages > CHAIN_MAX_STAGES) {
		set_error(err, errlen, "a chain needs 1 to %d stages, not %u",
			  CHAIN_MAX_STAGES, n_stages);
		return -EINVAL;
	}
	for (i = 0; i < n_stages; i++) {
		const struct stage_prompt *p = prompts[i];

		if (p->soft && p->d_model != cfg->d_model) {
			set_error(err, errlen,
				  "stage %u: prompt width %u differs from the "
				  "model's d_model %u", i, p->d_model,
				  cfg->d_model);
			return -EINVAL;
		}
		if (p->n == 0) {
			set_error(err, errlen, "stage %u: empty prompt", i);
			return -EINVAL;
		}
		if (p->n > eng->n_ctx - pos) {
			set_error(err, errlen,
				  "the prompt slots need more than the %u "
				  "positions of the context", eng->n_ctx);
			return -E2BIG;
		}
		pos += p->n;
	}

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->eng = eng;
	c->refs = 1;
	c->n_stages = n_stages;

	/* each slot attends to itself only, at its own positions */
	for (i = 0, pos = 0; i < n_stages; i++) {
		const struct stage_prompt *p = prompts[i];
		struct span *s = &c->slots[i];

		s->kind = SPAN_PROMPT;
		s->stage = i;
		s->pos0 = pos;
		s->n = p->n;
		s->view = malloc(sizeof(uint32_t));
		if (!s->view) {
			rc = -ENOMEM;
			goto out_release;
		}
		if (!p->soft) {
			s->tokens = malloc((size_t)p->n * sizeof(int32_t));
			if (!s->tokens) {
				rc = -ENOMEM;
				goto out_release;
			}
			memcpy(s->tokens, p->tokens, (size_t)p->n * sizeof(int32_t));
		}
		rc = span_alloc_blocks(eng->store, s, p->n);
		if (rc < 0) {
			set_error(err, errlen,
				  "out of KV blocks for the prompt of stage %u", i);
			goto out_release;
		}
		c->n_stages = i + 1;	/* so a failure below frees this slot */
		rc = span_forward(eng, c->slots, s, 0,
				  p->soft ? NULL : p->tokens,
				  p->soft ? p->embd : NULL, p->n, NULL);
		if (rc < 0) {
			set_error(err, errlen,
				  "computing the prompt of stage %u failed (%d)",
				  i, rc);
			goto out_release;
		}
		pos += p->n;
	}
	c->n_positions = pos;
	*out = c;
	return 0;

out_release:
	chain_release(c);
	return rc;
}

void chain_release(struct chain *c)
{
	uint32_t i;

	if (!c || --c->refs > 0)
		return;
	for (i = 0; i < c->n_stages; i++) {
		span_unref_blocks(c->eng->store, &c->slots[i]);
		span_free_arrays(&c->slots[i]);
	}
	free(c);
}

uint32_t chain_n_stages(const struct chain *c)
{
	return c->n_stages;
}

void chain_slot(const struct chain *c, uint32_t stage, uint32_t *pos0,
		uint32_t *n)
{
	*pos0 = c->slots[stage].pos0;
	*n = c->slots[stage].n;
}

/* ==== Segments ======================================================== */

static int reserve_span(struct segment *seg)
{
	struct span *spans;
	uint32_t cap;

	if (seg->n_spans < seg->cap_spans)
		return 0;
	cap = seg->cap_spans ? seg->cap_spans * 2 : 16;
	spans = realloc(seg->spans, (size_t)cap * sizeof(*spans));
	if (!spans)
		return -ENOMEM;
	seg->spans = spans;
	seg->cap_spans = cap;
	return 0;
}

int segment_create(struct chain *chain, struct segment **out)
{
	struct segment *seg;
	uint32_t i;
	int rc;

	*out = NULL;
	seg = calloc(1, sizeof(*seg));
	if (!seg)
		return -ENOMEM;
	seg->eng = chain->eng;
	seg->chain = chain;
	chain->refs++;
	for (i = 0; i < chain->n_stages; i++) {
		if ((rc = reserve_span(seg)) < 0 ||
		    (rc = span_copy(seg->eng->store, &seg->spans[i],
				    &chain->slots[i])) < 0) {
			segment_release(seg);
			return rc;
		}
		seg->n_spans++;
	}
	seg->next_pos = chain->n_positions;
	*out = seg;
	return 0;
}

void segment_release(struct segment *seg)
{
	uint32_t i;

	if (!seg)
		return;
	for (i = 0; i < seg->n_spans; i++) {
		if (!seg->spans[i].dropped)
			span_unref_blocks(seg->eng->store, &seg->spans[i]);
		span_free_arrays(&seg->spans[i]);
	}
	free(seg->spans);
	chain_release(seg->chain);
	free(seg);
}

int segment_fork(const struct segment *seg, struct segment **out)
{
	struct segment *f;
	uint32_t i;
	int rc;

	*out = NULL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->eng = seg->eng;
	f->chain = seg->chain;
	f->chain->refs++;
	f->next_pos = seg->next_pos;
	for (i = 0; i < seg->n_spans; i++) {
		const struct span *s = &seg->spans[i];

		if ((rc = reserve_span(f)) < 0)
			goto out_release;
		if (s->dropped) {
			/* keep the id and positions, hold no blocks */
			f->spans[i] = *s;
			f->spans[i].tokens = NULL;
			f->spans[i].blocks = NULL;
			f->spans[i].n_blocks = 0;
			f->spans[i].view = malloc(((size_t)s->n_view + 1) *
						  sizeof(uint32_t));
			if (!f->spans[i].view) {
				rc = -ENOMEM;
				goto out_release;
			}
			memcpy(f->spans[i].view, s->view,
			       (size_t)s->n_view * sizeof(uint32_t));
		} else if ((rc = span_copy(f->eng->store, &f->spans[i], s)) < 0) {
			goto out_release;
		}
		f->n_spans++;
	}
	*out = f;
	return 0;

out_release:
	segment_release(f);
	return rc;
}

bool cascade_visible(enum span_kind query_kind, uint32_t query_stage,
		     enum span_kind key_kind, uint32_t key_stage)
{
	switch (query_kind) {
	case SPAN_SHARED_INPUT:
		return key_kind == SPAN_SHARED_INPUT;
	case SPAN_STAGE_INPUT:
		return key_kind != SPAN_PROMPT || key_stage == query_stage;
	case SPAN_STAGE_OUTPUT:
		if (key_kind == SPAN_PROMPT || key_kind == SPAN_STAGE_INPUT)
			return key_stage == query_stage;
		return true;	/* shared inputs and every output */
	case SPAN_PROMPT:
		break;
	}
	return false;	/* a prompt slot sees only itself */
}

/* Returns true if span @v belongs in the default view of a new span. */
static bool default_visible(const struct span *v, enum span_kind kind,
			    uint32_t stage)
{
	return cascade_visible(kind, stage, v->kind, v->stage);
}

/*
 * Resolves the view of a new span into an ascending id list in @span.
 * Returns 0, -ENOENT for an explicit id that is unknown or dropped, or
 * -ENOMEM.
 */
static int resolve_view(const struct segment *seg, struct span *span,
			const struct span_view *view)
{
	uint8_t *pick;
	uint32_t i, n = 0;

	pick = calloc(seg->n_spans + 1, 1);
	span->view = malloc(((size_t)seg->n_spans + 1) * sizeof(uint32_t));
	if (!pick || !span->view) {
		free(pick);
		return -ENOMEM;
	}
	if (!view) {
		for (i = 0; i < seg->n_spans; i++)
			pick[i] = !seg->spans[i].dropped &&
				  default_visible(&seg->spans[i], span->kind,
						  span->stage);
	} else {
		for (i = 0; i < view->n; i++) {
			uint32_t id = view->spans[i];
			const struct span *v;

			if (id >= seg->n_spans) {
				free(pick);
				return -ENOENT;
			}
			v = &seg->spans[id];
			if (v->dropped) {
				free(pick);
				return -ENOENT;
			}
			pick[id] = 1;
		}
		/* the stage's own prompt slot is always visible */
		if (span->kind != SPAN_SHARED_INPUT)
			pick[span->stage] = 1;
	}
	for (i = 0; i < seg->n_spans; i++)
		if (pick[i])
			span->view[n++] = i;
	span->n_view = n;
	free(pick);
	return 0;
}

/* Checks kind and stage, and sets up a new span at the next position. */
static int new_span(struct segment *seg, enum span_kind kind, uint32_t stage,
		    const struct span_view *view, struct span *span)
{
	int rc;

	memset(span, 0, sizeof(*span));
	if (kind == SPAN_PROMPT || kind > SPAN_STAGE_OUTPUT)
		return -EINVAL;
	if (kind == SPAN_SHARED_INPUT)
		stage = 0;
	else if (stage >= seg->chain->n_stages)
		return -EINVAL;
	span->kind = kind;
	span->stage = stage;
	span->pos0 = seg->next_pos;
	if ((rc = reserve_span(seg)) < 0)
		return rc;
	rc = resolve_view(seg, span, view);
	if (rc < 0)
		span_free_arrays(span);
	return rc;
}

/* Makes @span, fully computed, the segment's newest span. */
static void commit_span(struct segment *seg, struct span *span,
			uint32_t *span_id)
{
	seg->spans[seg->n_spans] = *span;
	if (span_id)
		*span_id = seg->n_spans;
	seg->n_spans++;
	seg->next_pos = span->pos0 + span->n;
}

static void discard_span(struct segment *seg, struct span *span)
{
	span_unref_blocks(seg->eng->store, span);
	span_free_arrays(span);
}

/* ==== Jobs ============================================================ */

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Opens a job whose span of @kind will hold up to @capacity tokens. */
static int job_open(struct segment *seg, enum span_kind kind, uint32_t stage,
		    const struct span_view *view, uint32_t capacity,
		    struct job **out)
{
	struct job *job;
	int rc;

	*out = NULL;
	if (seg->job)
		return -EBUSY;
	job = calloc(1, sizeof(*job));
	if (!job)
		return -ENOMEM;
	job->eng = seg->eng;
	job->seg = seg;
	job->capacity = capacity;
	if ((rc = new_span(seg, kind, stage, view, &job->span)) < 0)
		goto out_free;
	job->span.tokens = malloc((size_t)capacity * sizeof(int32_t));
	if (!job->span.tokens) {
		rc = -ENOMEM;
		goto out_discard;
	}
	if ((rc = span_alloc_blocks(seg->eng->store, &job->span, capacity)) < 0)
		goto out_discard;
	seg->job = job;
	*out = job;
	return 0;

out_discard:
	discard_span(seg, &job->span);
out_free:
	free(job);
	return rc;
}

int job_append_start(struct segment *seg, enum span_kind kind, uint32_t stage,
		     const int32_t *tokens, uint32_t n,
		     const struct span_view *view, struct job **out)
{
	struct engine *eng = seg->eng;
	uint32_t i;
	int rc;

	*out = NULL;
	if (kind == SPAN_STAGE_OUTPUT || n == 0)
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint32_t)tokens[i] >= eng->model->cfg.n_vocab)
			return -EINVAL;
	if (n > eng->n_ctx - seg->next_pos)
		return -E2BIG;
	if ((rc = job_open(seg, kind, stage, view, n, out)) < 0)
		return rc;
	memcpy((*out)->span.tokens, tokens, (size_t)n * sizeof(int32_t));
	(*out)->total = n;
	return 0;
}

int job_generate_start(struct segment *seg, uint32_t stage,
		       const struct gen_params *params,
		       const struct span_view *view, gen_text_fn on_text,
		       void *arg, struct job **out)
{
	struct engine *eng = seg->eng;
	int32_t bos = tok_bos(eng->model->tok);
	uint32_t capacity;
	struct job *job;
	int rc;

	*out = NULL;
	if (bos < 0 || params->max_tokens == 0)
		return -EINVAL;
	if (seg->job)
		return -EBUSY;
	if (eng->n_ctx - seg->next_pos < 2)
		return -E2BIG;
	/* BOS and every generated token, as far as the context allows */
	capacity = eng->n_ctx - seg->next_pos;
	if (capacity > params->max_tokens + 1)
		capacity = params->max_tokens + 1;
	if ((rc = job_open(seg, SPAN_STAGE_OUTPUT, stage, view, capacity,
			   &job)) < 0)
		return rc;
	job->generate = true;
	job->logits = malloc((size_t)eng->model->cfg.n_vocab * sizeof(float));
	if (!job->logits) {
		rc = -ENOMEM;
		goto out_finish;
	}
	if ((rc = gen_state_create(eng->model, params, true, on_text, arg,
				   &job->gen)) < 0)
		goto out_finish;
	job->next = bos;	/* fed, not predicted */
	*out = job;
	return 0;

out_finish:
	job_finish(job, false, NULL, NULL);
	return rc;
}

bool job_done(const struct job *job)
{
	return job->done;
}

void job_cancel(struct job *job)
{
	if (job->generate && !job->done) {
		gen_state_stop(job->gen, GEN_STOP_CALLBACK);
		job->done = true;
	}
}

static void job_fail(struct job *job, int rc)
{
	job->error = rc;
	job->done = true;
}

/* Takes the logits of a generation's fed token and picks what comes next. */
static void job_after_feed(struct job *job)
{
	int rc;

	if (job->span.n == 1)
		gen_state_set_prefill(job->gen, 1, now_seconds() - job->started);
	if (gen_state_finished(job->gen)) {
		job->done = true;	/* that was the final feed */
		return;
	}
	rc = gen_state_next(job->gen, job->logits, &job->next);
	if (rc < 0)
		job_fail(job, rc);
	else if (rc == 0)
		job->done = true;
}

/* State of one job's share of a batched step. */
struct job_share {
	struct span_target st;
	struct kv_target target;
	uint32_t n;		/* rows */
};

int engine_step(struct engine *eng, struct job *const *jobs, uint32_t n,
		uint32_t max_rows)
{
	struct forward_seq *seqs = NULL;
	struct job_share *shares = NULL;
	struct job **used = NULL;
	uint32_t i, n_seqs = 0, rows = 0;
	int rc = 0;

	if (max_rows == 0 || max_rows > eng->max_batch)
		max_rows = eng->max_batch;
	seqs = calloc(n + 1, sizeof(*seqs));
	shares = calloc(n + 1, sizeof(*shares));
	used = calloc(n + 1, sizeof(*used));
	if (!seqs || !shares || !used) {
		rc = -ENOMEM;
		goto out;
	}

	/* one row per generation first, then append chunks in order */
	for (int pass = 0; pass < 2; pass++) {
		for (i = 0; i < n && rows < max_rows; i++) {
			struct job *job = jobs[i];
			struct job_share *sh = &shares[n_seqs];
			struct forward_seq *q = &seqs[n_seqs];
			uint32_t take;

			if (job->done || job->generate != (pass == 0))
				continue;
			if (job->started == 0.0)
				job->started = now_seconds();
			if (job->generate) {
				if (job->span.n == job->capacity) {
					gen_state_stop(job->gen, GEN_STOP_CONTEXT);
					job->done = true;
					continue;
				}
				job->span.tokens[job->span.n] = job->next;
				take = 1;
			} else {
				take = job->total - job->span.n;
				if (take > max_rows - rows)
					take = max_rows - rows;
			}
			sh->st = (struct span_target){
				.store = eng->store, .spans = job->seg->spans,
				.span = &job->span, .written = job->span.n,
			};
			sh->target = (struct kv_target){
				.type = kv_store_type(eng->store), .arg = &sh->st,
				.row = span_row, .runs = span_runs,
			};
			sh->n = take;
			q->target = &sh->target;
			q->tokens = job->span.tokens + job->span.n;
			q->n_tok = take;
			q->t0 = 0;
			q->pos0 = job->span.pos0 + job->span.n;
			if (job->generate)
				q->logits = job->logits;
			else if (job->span.n + take == job->total)
				q->logits = job->logits_out;
			used[n_seqs++] = job;
			rows += take;
		}
	}
	if (n_seqs == 0)
		goto out;

	rc = model_forward_batch(eng->fwd, seqs, n_seqs);
	for (i = 0; i < n_seqs; i++) {
		struct job *job = used[i];

		if (rc < 0) {
			job_fail(job, rc);
			continue;
		}
		job->span.n += shares[i].n;
		if (job->generate)
			job_after_feed(job);
		else if (job->span.n == job->total)
			job->done = true;
	}
out:
	free(seqs);
	free(shares);
	free(used);
	return rc;
}

int job_finish(struct job *job, bool commit, uint32_t *span_id,
	       struct gen_stats *stats)
{
	struct segment *seg = job->seg;
	int rc = job->error;

	if (job->gen && commit && rc == 0)
		gen_state_end(job->gen, stats);
	else if (stats)
		memset(stats, 0, sizeof(*stats));
	if (commit && rc == 0 && job->span.n > 0) {
		span_trim_blocks(seg->eng->store, &job->span);
		commit_span(seg, &job->span, span_id);
	} else {
		discard_span(seg, &job->span);
		if (rc == 0)
			rc = -ECANCELED;
	}
	seg->job = NULL;
	gen_state_free(job->gen);
	free(job->logits);
	free(job);
	return rc;
}

/* Runs @job to its end on its own, then closes it. */
static int run_job(struct job *job, uint32_t *span_id,
		   struct gen_stats *stats)
{
	while (!job->done)
		engine_step(job->eng, &job, 1, 0);
	return job_finish(job, true, span_id, stats);
}

int segment_append_tokens(struct segment *seg, enum span_kind kind,
			  uint32_t stage, const int32_t *tokens, uint32_t n,
			  const struct span_view *view, uint32_t *span_id,
			  float *logits)
{
	struct job *job;
	int rc;

	rc = job_append_start(seg, kind, stage, tokens, n, view, &job);
	if (rc < 0)
		return rc;
	job->logits_out = logits;
	return run_job(job, span_id, NULL);
}

/* Tokenizes @text framed as an input span: the text and a newline. */
int engine_encode_input(const struct engine *eng, const char *text,
			size_t len, int32_t **ids_out)
{
	const struct tokenizer *tok = eng->model->tok;
	char *framed;
	int32_t *ids;
	int n;

	*ids_out = NULL;
	framed = malloc(len + 1);
	if (!framed)
		return -ENOMEM;
	memcpy(framed, text, len);
	framed[len] = '\n';
	n = tok_encode(tok, framed, len + 1, 0, NULL, 0);
	if (n <= 0) {
		free(framed);
		return n < 0 ? n : -EINVAL;
	}
	ids = malloc((size_t)n * sizeof(int32_t));
	if (!ids) {
		free(framed);
		return -ENOMEM;
	}
	n = tok_encode(tok, framed, len + 1, 0, ids, (size_t)n);
	free(framed);
	if (n < 0) {
		free(ids);
		return n;
	}
	*ids_out = ids;
	return n;
}

int segment_append_text(struct segment *seg, enum span_kind kind,
			uint32_t stage, const char *text, size_t len,
			const struct span_view *view, uint32_t *span_id,
			float *logits)
{
	int32_t *ids;
	int n, rc;

	n = engine_encode_input(seg->eng, text, len, &ids);
	if (n < 0)
		return n;
	rc = segment_append_tokens(seg, kind, stage, ids, (uint32_t)n, view,
				   span_id, logits);
	free(ids);
	return rc;
}

int segment_generate(struct segment *seg, uint32_t stage,
		     const struct gen_params *params,
		     const struct span_view *view, gen_text_fn on_text,
		     void *arg, uint32_t *span_id, struct gen_stats *stats)
{
	struct job *job;
	int rc;

	memset(stats, 0, sizeof(*stats));
	rc = job_generate_start(seg, stage, params, view, on_text, arg, &job);
	if (rc < 0)
		return rc;
	return run_job(job, span_id, stats);
}

int segment_drop(struct segment *seg, uint32_t span_id)
{
	struct span *s;

	if (seg->job)
		return -EBUSY;
	if (span_id >= seg->n_spans || seg->spans[span_id].dropped)
		return -ENOENT;
	s = &seg->spans[span_id];
	if (s->kind == SPAN_PROMPT)
		return -EINVAL;
	span_unref_blocks(seg->eng->store, s);
	free(s->tokens);
	free(s->blocks);
	s->tokens = NULL;
	s->blocks = NULL;
	s->n_blocks = 0;
	s->dropped = true;
	return 0;
}

uint32_t segment_n_spans(const struct segment *seg)
{
	return seg->n_spans;
}

int segment_span_info(const struct segment *seg, uint32_t span_id,
		      struct span_info *info)
{
	const struct span *s;

	if (span_id >= seg->n_spans)
		return -ENOENT;
	s = &seg->spans[span_id];
	info->kind = s->kind;
	info->stage = s->stage;
	info->pos0 = s->pos0;
	info->n = s->n;
	info->dropped = s->dropped;
	info->tokens = s->tokens;
	info->n_blocks = s->n_blocks;
	info->blocks = s->blocks;
	return 0;
}

uint32_t segment_n_positions(const struct segment *seg)
{
	return seg->next_pos;
}

/* Marks the first @n positions of span @s in one row of the mask. */
static int mark_positions(void *arg, const struct span *s, uint32_t n)
{
	uint8_t *row = arg;

	memset(row + s->pos0, 1, n);
	return 0;
}

int segment_mask(const struct segment *seg, uint8_t *mask, size_t n)
{
	uint32_t i, t;

	if (n != seg->next_pos)
		return -EINVAL;
	memset(mask, 0, n * n);
	for (i = 0; i < seg->n_spans; i++) {
		const struct span *s = &seg->spans[i];

		for (t = 0; t < s->n; t++)
			for_each_visible(seg->spans, s, t, mark_positions,
					 mask + (size_t)(s->pos0 + t) * n);
	}
	return 0;
}

int engine_generate_recompute(struct engine *eng,
			      const struct stage_prompt *prompt,
			      const char *const *inputs,
			      const size_t *input_lens, uint32_t n_inputs,
			      const struct gen_params *params,
			      gen_text_fn on_text, void *arg,
			      struct gen_stats *stats)
{
	struct segment *seg = NULL;
	struct chain *chain;
	uint32_t i;
	int rc;

	memset(stats, 0, sizeof(*stats));
	rc = chain_create(eng, &prompt, 1, &chain, NULL, 0);
	if (rc < 0)
		return rc;
	rc = segment_create(chain, &seg);
	chain_release(chain);
	if (rc < 0)
		return rc;
	for (i = 0; i < n_inputs && rc == 0; i++)
		rc = segment_append_text(seg, SPAN_STAGE_INPUT, 0, inputs[i],
					 input_lens[i], NULL, NULL, NULL);
	if (rc == 0)
		rc = segment_generate(seg, 0, params, NULL, on_text, arg,
				      NULL, stats);
	segment_release(seg);
	return rc;
}
