/* SPDX-License-Identifier: MIT */
/*
 * forward.c - the transformer forward pass of llama and qwen2 models over a
 * KV cache: batched prefill and single-token decode share one code path,
 * with matrix products and attention split across the thread pool.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

struct forward_ctx {
	const struct model *model;
	struct kern_pool *pool;
	uint32_t max_batch;
	uint32_t n_ctx;
	int n_threads;
	float *x;	/* (max_batch, d_model) residual stream */
	float *xb;	/* (max_batch, d_model) normalised input of a block */
	float *q;	/* (max_batch, q_dim) */
	float *k;	/* (max_batch, kv_dim) */
	float *v;	/* (max_batch, kv_dim) */
	float *att;	/* (max_batch, q_dim) attention output */
	float *proj;	/* (max_batch, d_model) output of wo and w_down */
	float *gate;	/* (max_batch, d_ff) */
	float *up;	/* (max_batch, d_ff) */
	float *scores;	/* (n_threads, n_ctx) attention weights */
	struct kern_kv_run *runs; /* (n_threads, FORWARD_MAX_RUNS) */
	const struct kv_target **row_target; /* (max_batch) */
	uint32_t *row_t;	/* (max_batch) index in its target's call */
	uint32_t *row_pos;	/* (max_batch) position */
	float *logits;		/* (max_batch, n_vocab) gathered rows */
};

struct forward_ctx *forward_ctx_create(const struct model *model,
				       uint32_t max_batch, uint32_t n_ctx,
				       struct kern_pool *pool)
{
	const struct model_config *c = &model->cfg;
	size_t q_dim = (size_t)c->n_heads * c->head_dim;
	size_t kv_dim = (size_t)c->n_kv_heads * c->head_dim;
	struct forward_ctx *ctx;
	size_t b = max_batch;

	if (max_batch == 0 || n_ctx == 0)
		return NULL;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return NULL;
	ctx->model = model;
	ctx->pool = pool;
	ctx->max_batch = max_batch;
	ctx->n_ctx = n_ctx;
	ctx->n_threads = pool ? kern_pool_threads(pool) : 1;
	ctx->x = malloc(b * c->d_model * sizeof(float));
	ctx->xb = malloc(b * c->d_model * sizeof(float));
	ctx->q = malloc(b * q_dim * sizeof(float));
	ctx->k = malloc(b * kv_dim * sizeof(float));
	ctx->v = malloc(b * kv_dim * sizeof(float));
	ctx->att = malloc(b * q_dim * sizeof(float));
	ctx->proj = malloc(b * c->d_model * sizeof(float));
	ctx->gate = malloc(b * c->d_ff * sizeof(float));
	ctx->up = malloc(b * c->d_ff * sizeof(float));
	ctx->scores = malloc((size_t)ctx->n_threads * n_ctx * sizeof(float));
	ctx->runs = malloc((size_t)ctx->n_threads * FORWARD_MAX_RUNS *
			   sizeof(*ctx->runs));
	ctx->row_target = malloc(b * sizeof(*ctx->row_target));
	ctx->row_t = malloc(b * sizeof(uint32_t));
	ctx->row_pos = malloc(b * sizeof(uint32_t));
	ctx->logits = malloc(b * model->cfg.n_vocab * sizeof(float));
	if (!ctx->x || !ctx->xb || !ctx->q || !ctx->k || !ctx->v ||
	    !ctx->att || !ctx->proj || !ctx->gate || !ctx->up ||
	    !ctx->scores || !ctx->runs || !ctx->row_target || !ctx->row_t ||
	    !ctx->row_pos || !ctx->logits) {
		forward_ctx_free(ctx);
		return NULL;
	}
	return ctx;
}

void forward_ctx_free(struct forward_ctx *ctx)
{
	if (!ctx)
		return;
	free(ctx->x);
	free(ctx->xb);
	free(ctx->q);
	free(ctx->k);
	free(ctx->v);
	free(ctx->att);
	free(ctx->proj);
	free(ctx->gate);
	free(ctx->up);
	free(ctx->scores);
	free(ctx->runs);
	free(ctx->row_target);
	free(ctx->row_t);
	free(ctx->row_pos);
	free(ctx->logits);
	free(ctx);
}

int kv_cache_init(struct kv_cache *cache, const struct model *model,
		  uint32_t n_ctx, enum kern_type type)
{
	const struct model_config *c = &model->cfg;
	uint32_t kv_dim = c->n_kv_heads * c->head_dim;
	size_t bytes;

	memset(cache, 0, sizeof(*cache));
	if (n_ctx == 0)
		return -EINVAL;
	if (type != KERN_TYPE_F32 && type != KERN_TYPE_F16 &&
	    type != KERN_TYPE_Q8_0)
		return -EINVAL;
	if (type == KERN_TYPE_Q8_0 && c->head_dim % KERN_QK8_0 != 0)
		return -EINVAL;
	cache->type = type;
	cache->n_ctx = n_ctx;
	cache->n_layers = c->n_layers;
	cache->row_bytes = kern_row_bytes(type, kv_dim);
	bytes = (size_t)c->n_layers * n_ctx * cache->row_bytes;
	cache->k = malloc(bytes);
	cache->v = malloc(bytes);
	if (!cache->k || !cache->v) {
		kv_cache_free(cache);
		return -ENOMEM;
	}
	return 0;
}

void kv_cache_free(struct kv_cache *cache)
{
	free(cache->k);
	free(cache->v);
	cache->k = NULL;
	cache->v = NULL;
}

/* ---- The contiguous cache as a forward target ----------------------- */

struct cache_target {
	struct kv_cache *cache;
	uint32_t pos0;
};

static void *cache_row(void *arg, uint32_t layer, uint32_t t, bool value)
{
	struct cache_target *ct = arg;
	struct kv_cache *c = ct->cache;
	uint8_t *base = value ? c->v : c->k;

	return base + ((size_t)layer * c->n_ctx + ct->pos0 + t) * c->row_bytes;
}

/* Every position from 0 up to the token itself, as one run. */
static int cache_runs(void *arg, uint32_t layer, uint32_t t,
		      struct kern_kv_run *runs, int cap)
{
	struct cache_target *ct = arg;
	struct kv_cache *c = ct->cache;
	size_t first = (size_t)layer * c->n_ctx * c->row_bytes;

	if (cap < 1)
		return -EINVAL;
	runs[0].k = c->k + first;
	runs[0].v = c->v + first;
	runs[0].n = (int)(ct->pos0 + t + 1);
	return 1;
}

/* ---- Attention ------------------------------------------------------- */

/* Attention of one layer for the batch, split over (row, head) items. */
struct attention_task {
	struct forward_ctx *ctx;
	uint32_t layer;
	uint32_t n_rows;
	int status;		/* a negative errno from a target's runs */
};

static void attention_worker(void *arg, int ith, int nth)
{
	struct attention_task *task = arg;
	struct forward_ctx *ctx = task->ctx;
	const struct model_config *c = &ctx->model->cfg;
	uint32_t n_heads = c->n_heads;
	size_t n_items = (size_t)task->n_rows * n_heads;
	size_t first = n_items * ith / nth;
	size_t last = n_items * (ith + 1) / nth;
	size_t q_dim = (size_t)n_heads * c->head_dim;
	float scale = 1.0f / sqrtf((float)c->head_dim);
	float *scores = ctx->scores + (size_t)ith * ctx->n_ctx;
	struct kern_kv_run *runs = ctx->runs + (size_t)ith * FORWARD_MAX_RUNS;
	size_t item = first;

	while (item < last) {
		uint32_t r = item / n_heads;
		uint32_t h0 = item % n_heads;
		uint32_t h1 = n_heads;
		const struct kv_target *target = ctx->row_target[r];
		size_t n_keys = 0;
		int n_runs, k;

		if ((size_t)r * n_heads + h1 > last)
			h1 = last - (size_t)r * n_heads;
		n_runs = target->runs(target->arg, task->layer, ctx->row_t[r],
				      runs, FORWARD_MAX_RUNS);
		for (k = 0; k < n_runs; k++)
			n_keys += (size_t)runs[k].n;
		if (n_runs <= 0 || n_keys > ctx->n_ctx) {
			/* Benign race: every failing thread stores an error. */
			__atomic_store_n(&task->status, n_runs < 0 ? n_runs : -EINVAL,
					 __ATOMIC_RELAXED);
			memset(ctx->att + r * q_dim + (size_t)h0 * c->head_dim, 0,
			       (size_t)(h1 - h0) * c->head_dim * sizeof(float));
		} else {
			kern_attention(ctx->att + r * q_dim, ctx->q + r * q_dim,
				       n_heads, c->n_kv_heads, c->head_dim, h0,
				       h1, runs, n_runs, target->type, scale,
				       scores);
		}
		item += h1 - h0;
	}
}

static void add_bias(float *x, const float *bias, uint32_t n_rows,
		     uint32_t dim)
{
	uint32_t t, i;

	if (!bias)
		return;
	for (t = 0; t < n_rows; t++)
		for (i = 0; i < dim; i++)
			x[(size_t)t * dim + i] += bias[i];
}

static void add_rows(float *x, const float *y, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		x[i] += y[i];
}

static void matmul(struct forward_ctx *ctx, float *y,
		   const struct model_matrix *w, const float *x,
		   uint32_t n_rows)
{
	kern_matmul(ctx->pool, y, w->data, w->type, x, (int)w->n_in,
		    (int)w->n_out, (int)n_rows);
}

/* Runs one transformer block on the n_rows rows of ctx->x. */
static int forward_layer(struct forward_ctx *ctx, uint32_t li,
			 uint32_t n_rows)
{
	const struct model *m = ctx->model;
	const struct model_config *c = &m->cfg;
	const struct model_layer *l = &m->layers[li];
	uint32_t d = c->d_model;
	uint32_t q_dim = c->n_heads * c->head_dim;
	uint32_t kv_dim = c->n_kv_heads * c->head_dim;
	struct attention_task task;
	uint32_t r;

	/* attention rmsnorm */
	for (r = 0; r < n_rows; r++)
		kern_rmsnorm(ctx->xb + (size_t)r * d, ctx->x + (size_t)r * d,
			     l->attn_norm, d, c->rms_eps);

	/* q, k, v projections (qwen2 adds biases) */
	matmul(ctx, ctx->q, &l->wq, ctx->xb, n_rows);
	matmul(ctx, ctx->k, &l->wk, ctx->xb, n_rows);
	matmul(ctx, ctx->v, &l->wv, ctx->xb, n_rows);
	add_bias(ctx->q, l->bq, n_rows, q_dim);
	add_bias(ctx->k, l->bk, n_rows, kv_dim);
	add_bias(ctx->v, l->bv, n_rows, kv_dim);

	/* RoPE on q and k, then k and v go into each row's target */
	for (r = 0; r < n_rows; r++) {
		const struct kv_target *target = ctx->row_target[r];
		float *k = ctx->k + (size_t)r * kv_dim;

		kern_rope_apply(&m->rope, ctx->q + (size_t)r * q_dim,
				(int)c->n_heads, (int)c->head_dim,
				(int)ctx->row_pos[r]);
		kern_rope_apply(&m->rope, k, (int)c->n_kv_heads,
				(int)c->head_dim, (int)ctx->row_pos[r]);
		kern_quantize_row(target->type, k,
				  target->row(target->arg, li, ctx->row_t[r],
					      false),
				  kv_dim);
		kern_quantize_row(target->type, ctx->v + (size_t)r * kv_dim,
				  target->row(target->arg, li, ctx->row_t[r],
					      true),
				  kv_dim);
	}

	/* attention over the keys each row's target makes visible */
	task = (struct attention_task){ .ctx = ctx, .layer = li,
					.n_rows = n_rows };
	kern_pool_run(ctx->pool, attention_worker, &task);
	if (task.status < 0)
		return task.status;

	/* output projection and residual */
	matmul(ctx, ctx->proj, &l->wo, ctx->att, n_rows);
	add_rows(ctx->x, ctx->proj, (size_t)n_rows * d);

	/* feed-forward rmsnorm, SwiGLU and residual */
	for (r = 0; r < n_rows; r++)
		kern_rmsnorm(ctx->xb + (size_t)r * d, ctx->x + (size_t)r * d,
			     l->ffn_norm, d, c->rms_eps);
	matmul(ctx, ctx->gate, &l->w_gate, ctx->xb, n_rows);
	matmul(ctx, ctx->up, &l->w_up, ctx->xb, n_rows);
	kern_swiglu(ctx->gate, ctx->gate, ctx->up,
		    (int)((size_t)n_rows * c->d_ff));
	matmul(ctx, ctx->proj, &l->w_down, ctx->gate, n_rows);
	add_rows(ctx->x, ctx->proj, (size_t)n_rows * d);
	return 0;
}

/*
 * Runs the rows of @seqs (at most max_batch in all) through the model.
 * Writes logits for every row into @all_logits when it is not NULL, else
 * for the last row of each sequence whose logits pointer is set.
 */
static int forward_rows(struct forward_ctx *ctx,
			const struct forward_seq *seqs, uint32_t n_seqs,
			float *all_logits)
{
	const struct model *m = ctx->model;
	uint32_t d = m->cfg.d_model, n_vocab = m->cfg.n_vocab;
	uint32_t s, t, r, li, n_rows = 0, n_out = 0;
	int rc;

	/* lay the rows out: embeddings, targets, positions */
	for (s = 0; s < n_seqs; s++) {
		const struct forward_seq *q = &seqs[s];

		for (t = 0; t < q->n_tok; t++, n_rows++) {
			float *x = ctx->x + (size_t)n_rows * d;

			if (q->tokens)
				model_embed(m, q->tokens[t], x);
			else
				memcpy(x, q->embd + (size_t)t * d,
				       d * sizeof(float));
			ctx->row_target[n_rows] = q->target;
			ctx->row_t[n_rows] = q->t0 + t;
			ctx->row_pos[n_rows] = q->pos0 + t;
		}
	}

	for (li = 0; li < m->cfg.n_layers; li++)
		if ((rc = forward_layer(ctx, li, n_rows)) < 0)
			return rc;

	/* final rmsnorm and output head, for the rows whose logits are wanted */
	if (all_logits) {
		for (r = 0; r < n_rows; r++)
			kern_rmsnorm(ctx->xb + (size_t)r * d,
				     ctx->x + (size_t)r * d, m->output_norm, d,
				     m->cfg.rms_eps);
		matmul(ctx, all_logits, &m->output, ctx->xb, n_rows);
		return 0;
	}
	for (s = 0, r = 0; s < n_seqs; r += seqs[s].n_tok, s++) {
		if (!seqs[s].logits)
			continue;
		kern_rmsnorm(ctx->xb + (size_t)n_out * d,
			     ctx->x + (size_t)(r + seqs[s].n_tok - 1) * d,
			     m->output_norm, d, m->cfg.rms_eps);
		n_out++;
	}
	if (n_out == 0)
		return 0;
	if (n_out == 1) {
		for (s = 0; !seqs[s].logits; s++)
			;
		matmul(ctx, seqs[s].logits, &m->output, ctx->xb, 1);
		return 0;
	}
	matmul(ctx, ctx->logits, &m->output, ctx->xb, n_out);
	for (s = 0, r = 0; s < n_seqs; s++) {
		if (!seqs[s].logits)
			continue;
		memcpy(seqs[s].logits, ctx->logits + (size_t)r * n_vocab,
		       n_vocab * sizeof(float));
		r++;
	}
	return 0;
}

static int check_tokens(const struct model *m, const int32_t *tokens,
			uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint32_t)tokens[i] >= m->cfg.n_vocab)
			return -EINVAL;
	return 0;
}

int model_forward_batch(struct forward_ctx *ctx,
			const struct forward_seq *seqs, uint32_t n_seqs)
{
	uint32_t s, n_rows = 0;

	for (s = 0; s < n_seqs; s++) {
		const struct forward_seq *q = &seqs[s];

		if (q->n_tok == 0 || (!q->tokens && !q->embd))
			return -EINVAL;
		if (q->tokens && check_tokens(ctx->model, q->tokens, q->n_tok))
			return -EINVAL;
		n_rows += q->n_tok;
		if (n_rows > ctx->max_batch)
			return -E2BIG;
	}
	if (n_rows == 0)
		return 0;
	return forward_rows(ctx, seqs, n_seqs, NULL);
}

int model_forward_target(struct forward_ctx *ctx,
			 const struct kv_target *target,
			 const int32_t *tokens, const float *embd,
			 uint32_t n_tok, uint32_t pos0, float *logits,
			 bool all_logits)
{
	const struct model *m = ctx->model;
	uint32_t n_vocab = m->cfg.n_vocab;
	uint32_t d = m->cfg.d_model;
	uint32_t done, n;
	int rc;

	if (n_tok == 0 || (!tokens && !embd))
		return -EINVAL;
	if (tokens && check_tokens(m, tokens, n_tok))
		return -EINVAL;

	/* chunks of at most max_batch rows */
	for (done = 0; done < n_tok; done += n) {
		struct forward_seq seq = {
			.target = target, .t0 = done, .pos0 = pos0 + done,
		};

		n = n_tok - done;
		if (n > ctx->max_batch)
			n = ctx->max_batch;
		seq.n_tok = n;
		seq.tokens = tokens ? tokens + done : NULL;
		seq.embd = embd ? embd + (size_t)done * d : NULL;
		if (logits && !all_logits && done + n == n_tok)
			seq.logits = logits;
		rc = forward_rows(ctx, &seq, 1,
				  logits && all_logits ?
				  logits + (size_t)done * n_vocab : NULL);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int model_forward(struct forward_ctx *ctx, struct kv_cache *cache,
		  const int32_t *tokens, const float *embd, uint32_t n_tok,
		  uint32_t pos0, float *logits, bool all_logits)
{
	struct cache_target ct = { .cache = cache, .pos0 = pos0 };
	struct kv_target target = {
		.type = cache->type, .arg = &ct, .row = cache_row,
		.runs = cache_runs,
	};

	if (pos0 > cache->n_ctx || n_tok > cache->n_ctx - pos0 ||
	    pos0 + n_tok > ctx->n_ctx)
		return -ENOSPC;
	return model_forward_target(ctx, &target, tokens, embd, n_tok, pos0,
				    logits, all_logits);
}
