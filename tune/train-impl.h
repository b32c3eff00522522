/* SPDX-License-Identifier: MIT */
/*
 * train-impl.h - the body of the training pass, compiled twice: by
 * train-f32.c with real_t = float and by train-f64.c with real_t = double
 * (see tune/train.h). Not a header to include anywhere else.
 *
 * The forward pass keeps the residual stream at the input of every layer,
 * and every layer's activations when they fit in tune_keep_acts_bytes.
 * When they do not, the backward pass recomputes one layer's activations
 * from its input before going back through that layer (gradient
 * checkpointing per layer). Then only one layer's activations are in
 * memory at a time, for the price of one more forward pass.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "train-internal.h"

#if defined(TUNE_REAL_F32)
typedef float real_t;
#define OP static
#define CORE(name) tune_core_##name##_f32
#elif defined(TUNE_REAL_F64)
typedef double real_t;
#include "ops.h"
#define OP
#define CORE(name) tune_core_##name##_f64
#else
#error "define TUNE_REAL_F32 or TUNE_REAL_F64 before including train-impl.h"
#endif

/* Vocabulary rows of the output head dequantised at a time. */
#define HEAD_CHUNK 1024

/* Weight rows a thread dequantises before writing their transpose. */
#define LOAD_BLOCK 16


/* ==== Operations ====================================================== */

OP void tune_rmsnorm_forward(real_t *y, const real_t *x, const float *w,
			     uint32_t n, double eps)
{
	double ss = 0.0, r;
	uint32_t i;

	for (i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	r = 1.0 / sqrt(ss / n + eps);
	for (i = 0; i < n; i++)
		y[i] = (real_t)(x[i] * r * w[i]);
}

/*
 * With r = 1 / sqrt(mean(x^2) + eps) and y_i = x_i r w_i:
 * dx_i = r w_i dy_i - x_i r^3 / n * sum_j dy_j w_j x_j.
 */
OP void tune_rmsnorm_backward(real_t *dx, const real_t *x, const float *w,
			      const real_t *dy, uint32_t n, double eps)
{
	double ss = 0.0, dot = 0.0, r, c;
	uint32_t i;

	for (i = 0; i < n; i++) {
		ss += (double)x[i] * x[i];
		dot += (double)dy[i] * w[i] * x[i];
	}
	r = 1.0 / sqrt(ss / n + eps);
	c = r * r * r / n * dot;
	for (i = 0; i < n; i++)
		dx[i] += (real_t)(r * w[i] * dy[i] - x[i] * c);
}

OP void tune_rope(const struct kern_rope *rope, real_t *x, uint32_t n_heads,
		  uint32_t head_dim, uint32_t pos, bool inverse)
{
	int half = rope->n_rot / 2, i;
	uint32_t h;

	for (i = 0; i < half; i++) {
		/* the angle as kern_rope_apply forms it, in double */
		double angle = (double)pos * rope->freq_scale *
			       rope->inv_freq[i];
		real_t c = (real_t)cos(angle);
		real_t s = (real_t)(inverse ? -sin(angle) : sin(angle));

		for (h = 0; h < n_heads; h++) {
			real_t *v = x + (size_t)h * head_dim;
			int i0 = rope->neox ? i : 2 * i;
			int i1 = rope->neox ? i + half : 2 * i + 1;
			real_t x0 = v[i0], x1 = v[i1];

			v[i0] = x0 * c - x1 * s;
			v[i1] = x0 * s + x1 * c;
		}
	}
}

#if defined(TUNE_REAL_F32)
/*
 * Eight partial sums in a GCC vector, which the compiler maps to the
 * widest SIMD the build targets. A plain loop would stay scalar, because
 * reordering a float sum is not allowed without -ffast-math.
 */
typedef float vec8 __attribute__((vector_size(32)));

static real_t dot(const real_t *a, const real_t *b, uint32_t n)
{
	vec8 acc = { 0 }, x, y;
	real_t s;
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8) {
		memcpy(&x, a + i, sizeof(x));
		memcpy(&y, b + i, sizeof(y));
		acc += x * y;
	}
	s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
	    ((acc[2] + acc[6]) + (acc[3] + acc[7]));
	for (; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void axpy(real_t *y, real_t a, const real_t *x, uint32_t n)
{
	vec8 vy, vx;
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8) {
		memcpy(&vy, y + i, sizeof(vy));
		memcpy(&vx, x + i, sizeof(vx));
		vy += a * vx;
		memcpy(y + i, &vy, sizeof(vy));
	}
	for (; i < n; i++)
		y[i] += a * x[i];
}
#else
static real_t dot(const real_t *a, const real_t *b, uint32_t n)
{
	real_t s = 0;
	uint32_t i;

	for (i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void axpy(real_t *y, real_t a, const real_t *x, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++)
		y[i] += a * x[i];
}
#endif

/* Writes into @p the scores of every key position @pos reads, in order. */
static uint32_t scores(const struct tune_att_dims *dims,
		       const struct tune_runs *runs, const real_t *qh,
		       const real_t *k, uint32_t g, uint32_t pos, real_t *p)
{
	uint32_t hd = dims->head_dim, kv_dim = dims->n_kv_heads * hd;
	real_t scale = (real_t)(1.0 / sqrt((double)hd));
	uint32_t r, j, n = 0;

	for (r = runs->first[pos]; r < runs->first[pos + 1]; r++)
		for (j = runs->start[r]; j < runs->start[r] + runs->len[r]; j++)
			p[n++] = scale * dot(qh, k + (size_t)j * kv_dim +
						 (size_t)g * hd, hd);
	return n;
}

OP void tune_attention_forward(const struct tune_att_dims *dims,
			       const struct tune_runs *runs, const real_t *q,
			       const real_t *k, const real_t *v, real_t *o,
			       real_t *lse, uint32_t h0, uint32_t h1,
			       real_t *scratch)
{
	uint32_t hd = dims->head_dim, group = dims->n_heads / dims->n_kv_heads;
	uint32_t q_dim = dims->n_heads * hd, kv_dim = dims->n_kv_heads * hd;
	uint32_t pos, h, r, j, i, n;

	for (pos = 0; pos < runs->n_pos; pos++) {
		for (h = h0; h < h1; h++) {
			const real_t *qh = q + (size_t)pos * q_dim + h * hd;
			real_t *oh = o + (size_t)pos * q_dim + h * hd;
			uint32_t g = h / group;
			double mx = -INFINITY, sum = 0.0;

			n = scores(dims, runs, qh, k, g, pos, scratch);
			for (i = 0; i < n; i++)
				if (scratch[i] > mx)
					mx = scratch[i];
			for (i = 0; i < n; i++) {
				scratch[i] = (real_t)exp(scratch[i] - mx);
				sum += scratch[i];
			}
			lse[(size_t)pos * dims->n_heads + h] =
				(real_t)(mx + log(sum));

			/* weighted sum of the values, keys in run order */
			memset(oh, 0, hd * sizeof(real_t));
			i = 0;
			for (r = runs->first[pos]; r < runs->first[pos + 1]; r++)
				for (j = runs->start[r];
				     j < runs->start[r] + runs->len[r]; j++, i++)
					axpy(oh, (real_t)(scratch[i] / sum),
					     v + (size_t)j * kv_dim +
					     (size_t)g * hd, hd);
		}
	}
}

/*
 * With P the softmax of the scores S and O = P V:
 * dP_j = dO . v_j, dS_j = P_j (dP_j - sum_i P_i dP_i),
 * dq = scale sum_j dS_j k_j, dk_j += scale dS_j q, dv_j += P_j dO.
 */
OP void tune_attention_backward(const struct tune_att_dims *dims,
				const struct tune_runs *runs, const real_t *q,
				const real_t *k, const real_t *v,
				const real_t *lse, const real_t *d_o,
				real_t *dq, real_t *dk, real_t *dv,
				uint32_t g0, uint32_t g1, real_t *scratch)
{
	uint32_t hd = dims->head_dim, group = dims->n_heads / dims->n_kv_heads;
	uint32_t q_dim = dims->n_heads * hd, kv_dim = dims->n_kv_heads * hd;
	real_t scale = (real_t)(1.0 / sqrt((double)hd));
	real_t *p = scratch, *dp = scratch + runs->n_pos;
	uint32_t pos, h, g, r, j, i;

	for (pos = 0; pos < runs->n_pos; pos++)
		for (g = g0; g < g1; g++) {
			memset(dk + (size_t)pos * kv_dim + g * hd, 0,
			       hd * sizeof(real_t));
			memset(dv + (size_t)pos * kv_dim + g * hd, 0,
			       hd * sizeof(real_t));
		}

	for (pos = 0; pos < runs->n_pos; pos++) {
		for (h = g0 * group; h < g1 * group; h++) {
			const real_t *qh = q + (size_t)pos * q_dim + h * hd;
			const real_t *doh = d_o + (size_t)pos * q_dim + h * hd;
			real_t *dqh = dq + (size_t)pos * q_dim + h * hd;
			real_t m = lse[(size_t)pos * dims->n_heads + h];
			size_t off = (size_t)(h / group) * hd;
			double sum = 0.0;

			/* P from the saved log-sum-exp, dP and their dot */
			scores(dims, runs, qh, k, h / group, pos, p);
			i = 0;
			for (r = runs->first[pos]; r < runs->first[pos + 1]; r++)
				for (j = runs->start[r];
				     j < runs->start[r] + runs->len[r]; j++, i++) {
					p[i] = (real_t)exp(p[i] - m);
					dp[i] = dot(doh, v + (size_t)j * kv_dim +
						    off, hd);
					sum += (double)p[i] * dp[i];
				}

			memset(dqh, 0, hd * sizeof(real_t));
			i = 0;
			for (r = runs->first[pos]; r < runs->first[pos + 1]; r++)
				for (j = runs->start[r];
				     j < runs->start[r] + runs->len[r]; j++, i++) {
					real_t ds = (real_t)(p[i] *
							     (dp[i] - sum));

					axpy(dqh, scale * ds,
					     k + (size_t)j * kv_dim + off, hd);
					axpy(dk + (size_t)j * kv_dim + off,
					     scale * ds, qh, hd);
					axpy(dv + (size_t)j * kv_dim + off,
					     p[i], doh, hd);
				}
		}
	}
}

OP void tune_swiglu_forward(real_t *a, const real_t *g, const real_t *u,
			    size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		a[i] = (real_t)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
}

/* silu'(g) = sigma(g) (1 + g (1 - sigma(g))). */
OP void tune_swiglu_backward(real_t *dg, real_t *du, const real_t *g,
			     const real_t *u, const real_t *da, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		double sg = 1.0 / (1.0 + exp(-(double)g[i]));

		du[i] = (real_t)(da[i] * g[i] * sg);
		dg[i] = (real_t)(da[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg)));
	}
}

/* y (n_tok, n_out) = x (n_tok, n_in) W^T for W (n_out, n_in). */
static void matmul(struct kern_pool *pool, real_t *y, const real_t *w,
		   const real_t *x, uint32_t n_in, uint32_t n_out,
		   uint32_t n_tok)
{
#if defined(TUNE_REAL_F32)
	kern_matmul(pool, y, w, KERN_TYPE_F32, x, (int)n_in, (int)n_out,
		    (int)n_tok);
#else
	uint32_t t, o;

	(void)pool;
	for (t = 0; t < n_tok; t++)
		for (o = 0; o < n_out; o++)
			y[(size_t)t * n_out + o] =
				dot(x + (size_t)t * n_in,
				    w + (size_t)o * n_in, n_in);
#endif
}

OP void tune_linear_forward(struct kern_pool *pool, real_t *y,
			    const real_t *w, const float *b, const real_t *x,
			    uint32_t n_in, uint32_t n_out, uint32_t n_tok)
{
	uint32_t t, o;

	matmul(pool, y, w, x, n_in, n_out, n_tok);
	if (!b)
		return;
	for (t = 0; t < n_tok; t++)
		for (o = 0; o < n_out; o++)
			y[(size_t)t * n_out + o] += b[o];
}

OP void tune_linear_backward(struct kern_pool *pool, real_t *dx,
			     const real_t *wt, const real_t *dy, uint32_t n_in,
			     uint32_t n_out, uint32_t n_tok)
{
	matmul(pool, dx, wt, dy, n_out, n_in, n_tok);
}

OP double tune_logsumexp(const real_t *z, uint32_t n)
{
	double mx = -INFINITY, sum = 0.0;
	uint32_t i;

	for (i = 0; i < n; i++)
		if (z[i] > mx)
			mx = z[i];
	for (i = 0; i < n; i++)
		sum += exp(z[i] - mx);
	return mx + log(sum);
}

OP void tune_xent_backward(real_t *dz, const real_t *z, uint32_t n,
			   uint32_t v0, int32_t target, double lse,
			   double scale)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		double y = exp(z[i] - lse);

		if ((int64_t)v0 + i == target)
			y -= 1.0;
		dz[i] = (real_t)(scale * y);
	}
}

/* ==== The model ======================================================= */

/* One layer's weights as dense real_t matrices, and their transposes. */
struct layer_weights {
	real_t *w[7];		/* wq wk wv wo w_gate w_up w_down (n_out, n_in) */
	real_t *wt[7];		/* the same transposed (n_in, n_out) */
};

enum { WQ, WK, WV, WO, WG, WU, WD };

/* Activations of one layer over the whole layout. */
struct layer_acts {
	real_t *xn;	/* (len, d_model) attention rmsnorm output */
	real_t *q;	/* (len, q_dim) after RoPE */
	real_t *k;	/* (len, kv_dim) after RoPE */
	real_t *v;	/* (len, kv_dim) */
	real_t *o;	/* (len, q_dim) attention output */
	real_t *lse;	/* (len, n_heads) softmax log-sum-exp */
	real_t *xmid;	/* (len, d_model) residual after attention */
	real_t *xn2;	/* (len, d_model) feed-forward rmsnorm output */
	real_t *g;	/* (len, d_ff) */
	real_t *u;	/* (len, d_ff) */
	real_t *a;	/* (len, d_ff) silu(g) * u */
	real_t *proj;	/* (len, d_model) output of wo or w_down */
};

struct core {
	const struct model *model;
	struct kern_pool *pool;
	uint32_t max_len;
	uint32_t n_threads;
	struct tune_att_dims dims;
	struct layer_weights lw;
	real_t *head_w;		/* (HEAD_CHUNK, d_model) */
	real_t *head_wt;	/* (d_model, HEAD_CHUNK) */
	real_t *head_z;		/* (max_len, HEAD_CHUNK) */
	real_t *x;		/* (n_layers + 1, max_len, d_model) layer inputs,
				 * the last one the final residual */
	struct layer_acts acts;	/* the layer being run: saved[li] or own */
	struct layer_acts *saved; /* (n_layers) every layer's, or NULL */
	real_t *head_xn;	/* (max_len, d_model) final rmsnorm output */
	real_t *xout;		/* (max_len, d_model) a recomputed layer output */
	real_t *dx;		/* (max_len, d_model) */
	real_t *dxn;		/* (max_len, d_model) */
	real_t *dtmp;		/* (max_len, d_model) */
	real_t *da;		/* (max_len, d_ff) */
	real_t *dg;		/* (max_len, d_ff) */
	real_t *du;		/* (max_len, d_ff) */
	real_t *d_o;		/* (max_len, q_dim) */
	real_t *dq;		/* (max_len, q_dim) */
	real_t *dk;		/* (max_len, kv_dim) */
	real_t *dv;		/* (max_len, kv_dim) */
	real_t *scratch;	/* (n_threads, 2 * max_len) */
	float *row;		/* (max_row) one dequantised row */
	uint32_t max_row;	/* max(d_model, d_ff) */
	float *load_buf;	/* (n_threads, LOAD_BLOCK, max_row) */
	int32_t *target;	/* (max_len) token position p predicts, or -1 */
	int32_t *token;		/* (max_len) token fed at p, -1 in a prompt */
	/* weight gradients only, allocated on first use */
	real_t *wg_dyt;		/* (max_dim, max_len) dy transposed */
	real_t *wg_xt;		/* (max_dim, max_len) x transposed */
	real_t *wg_prod;	/* (largest weight) one product dy^T x */
	double *row_lse;	/* (max_len) log-sum-exp of p's logits */
	uint32_t *loss_pos;	/* (max_len) positions that predict a token */
	uint32_t n_loss;
	/* the last forward pass */
	bool ready;
	uint32_t len;
	struct tune_runs runs;
	uint32_t n_slots;
	uint32_t slot_pos0[CHAIN_MAX_STAGES];
	uint32_t slot_n[CHAIN_MAX_STAGES];
};

static real_t *alloc_real(size_t n)
{
	return malloc((n ? n : 1) * sizeof(real_t));
}

static void free_acts(struct layer_acts *a)
{
	free(a->xn);
	free(a->q);
	free(a->k);
	free(a->v);
	free(a->o);
	free(a->lse);
	free(a->xmid);
	free(a->xn2);
	free(a->g);
	free(a->u);
	free(a->a);
	free(a->proj);
}

/* Returns the values of one layer's activations per position. */
static size_t acts_per_pos(const struct model_config *cfg)
{
	size_t q_dim = (size_t)cfg->n_heads * cfg->head_dim;
	size_t kv_dim = (size_t)cfg->n_kv_heads * cfg->head_dim;

	return 4 * (size_t)cfg->d_model + 2 * q_dim + 2 * kv_dim +
	       cfg->n_heads + 3 * (size_t)cfg->d_ff;
}

/* Allocates one layer's activations for @len positions; false if short. */
static bool alloc_acts(struct layer_acts *a, const struct model_config *cfg,
		       size_t len)
{
	size_t d = cfg->d_model, ff = cfg->d_ff;
	size_t q_dim = (size_t)cfg->n_heads * cfg->head_dim;
	size_t kv_dim = (size_t)cfg->n_kv_heads * cfg->head_dim;

	*a = (struct layer_acts){
		.xn = alloc_real(len * d), .q = alloc_real(len * q_dim),
		.k = alloc_real(len * kv_dim), .v = alloc_real(len * kv_dim),
		.o = alloc_real(len * q_dim),
		.lse = alloc_real(len * cfg->n_heads),
		.xmid = alloc_real(len * d), .xn2 = alloc_real(len * d),
		.g = alloc_real(len * ff), .u = alloc_real(len * ff),
		.a = alloc_real(len * ff), .proj = alloc_real(len * d),
	};
	return a->xn && a->q && a->k && a->v && a->o && a->lse && a->xmid &&
	       a->xn2 && a->g && a->u && a->a && a->proj;
}

void CORE(free)(void *arg)
{
	struct core *c = arg;
	uint32_t li;
	int i;

	if (!c)
		return;
	for (i = 0; i < 7; i++) {
		free(c->lw.w[i]);
		free(c->lw.wt[i]);
	}
	if (c->saved) {
		for (li = 0; li < c->model->cfg.n_layers; li++)
			free_acts(&c->saved[li]);
		free(c->saved);
	} else {
		free_acts(&c->acts);
	}
	free(c->head_xn);
	free(c->head_w);
	free(c->head_wt);
	free(c->head_z);
	free(c->x);
	free(c->xout);
	free(c->dx);
	free(c->dxn);
	free(c->dtmp);
	free(c->da);
	free(c->dg);
	free(c->du);
	free(c->d_o);
	free(c->dq);
	free(c->dk);
	free(c->dv);
	free(c->scratch);
	free(c->row);
	free(c->load_buf);
	free(c->target);
	free(c->token);
	free(c->wg_dyt);
	free(c->wg_xt);
	free(c->wg_prod);
	free(c->row_lse);
	free(c->loss_pos);
	tune_runs_free(&c->runs);
	free(c);
}

/* Returns the matrix of layer @li that slot @i of layer_weights holds. */
static const struct model_matrix *layer_matrix(const struct model *m,
					       uint32_t li, int i)
{
	const struct model_layer *l = &m->layers[li];
	const struct model_matrix *mats[7] = {
		&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up,
		&l->w_down,
	};

	return mats[i];
}

void *CORE(create)(const struct model *model, struct kern_pool *pool,
		   uint32_t max_len)
{
	const struct model_config *cfg = &model->cfg;
	size_t len = max_len, d = cfg->d_model, ff = cfg->d_ff;
	size_t q_dim = (size_t)cfg->n_heads * cfg->head_dim;
	size_t kv_dim = (size_t)cfg->n_kv_heads * cfg->head_dim;
	struct core *c;
	bool ok = true;
	uint32_t li;
	int i;

	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->model = model;
	c->pool = pool;
	c->max_len = max_len;
	c->n_threads = pool ? (uint32_t)kern_pool_threads(pool) : 1;
	c->dims = (struct tune_att_dims){
		.n_heads = cfg->n_heads, .n_kv_heads = cfg->n_kv_heads,
		.head_dim = cfg->head_dim,
	};
	for (i = 0; i < 7; i++) {
		const struct model_matrix *mm = layer_matrix(model, 0, i);
		size_t n = (size_t)mm->n_in * mm->n_out;

		c->lw.w[i] = alloc_real(n);
		c->lw.wt[i] = alloc_real(n);
		ok = ok && c->lw.w[i] && c->lw.wt[i];
	}
	c->head_w = alloc_real(HEAD_CHUNK * d);
	c->head_wt = alloc_real(HEAD_CHUNK * d);
	c->head_z = alloc_real(HEAD_CHUNK * len);
	c->x = alloc_real((cfg->n_layers + 1) * len * d);
	if (acts_per_pos(cfg) * len * sizeof(real_t) * cfg->n_layers <=
	    tune_keep_acts_bytes && cfg->n_layers > 0) {
		c->saved = calloc(cfg->n_layers, sizeof(*c->saved));
		ok = ok && c->saved;
		for (li = 0; ok && li < cfg->n_layers; li++)
			ok = alloc_acts(&c->saved[li], cfg, len);
	} else {
		ok = ok && alloc_acts(&c->acts, cfg, len);
	}
	c->head_xn = alloc_real(len * d);
	c->xout = alloc_real(len * d);
	c->dx = alloc_real(len * d);
	c->dxn = alloc_real(len * d);
	c->dtmp = alloc_real(len * d);
	c->da = alloc_real(len * ff);
	c->dg = alloc_real(len * ff);
	c->du = alloc_real(len * ff);
	c->d_o = alloc_real(len * q_dim);
	c->dq = alloc_real(len * q_dim);
	c->dk = alloc_real(len * kv_dim);
	c->dv = alloc_real(len * kv_dim);
	c->scratch = alloc_real(c->n_threads * 2 * len);
	c->max_row = (uint32_t)(d > ff ? d : ff);
	c->row = malloc(c->max_row * sizeof(float));
	c->load_buf = malloc((size_t)c->n_threads * LOAD_BLOCK * c->max_row *
			     sizeof(float));
	c->target = malloc(len * sizeof(int32_t));
	c->token = malloc(len * sizeof(int32_t));
	c->row_lse = malloc(len * sizeof(double));
	c->loss_pos = malloc(len * sizeof(uint32_t));
	ok = ok && c->head_w && c->head_wt && c->head_z && c->x &&
	     c->head_xn && c->xout && c->dx &&
	     c->dxn && c->dtmp && c->da && c->dg && c->du && c->d_o &&
	     c->dq && c->dk && c->dv && c->scratch && c->row && c->load_buf && c->target && c->token &&
	     c->row_lse && c->loss_pos;
	if (!ok) {
		CORE(free)(c);
		return NULL;
	}
	return c;
}

struct load_task {
	struct core *c;
	const struct model_matrix *mm;
	uint32_t r0;
	uint32_t n;
	real_t *w;
	real_t *wt;
};

/*
 * Dequantises a share of the rows of a load_task, LOAD_BLOCK rows at a
 * time, so the transpose writes LOAD_BLOCK consecutive values per column.
 */
static void load_worker(void *arg, int ith, int nth)
{
	struct load_task *t = arg;
	const struct model_matrix *mm = t->mm;
	size_t row_bytes = kern_row_bytes(mm->type, mm->n_in);
	uint32_t n_blocks = (t->n + LOAD_BLOCK - 1) / LOAD_BLOCK;
	uint32_t b0 = (uint32_t)((uint64_t)n_blocks * ith / nth);
	uint32_t b1 = (uint32_t)((uint64_t)n_blocks * (ith + 1) / nth);
	float *buf = t->c->load_buf + (size_t)ith * LOAD_BLOCK * t->c->max_row;
	uint32_t b, k, i;

	for (b = b0; b < b1; b++) {
		uint32_t first = b * LOAD_BLOCK;
		uint32_t cnt = t->n - first < LOAD_BLOCK ? t->n - first :
			       LOAD_BLOCK;

		for (k = 0; k < cnt; k++) {
			const float *row = buf + (size_t)k * mm->n_in;
			real_t *dst;

			kern_dequantize_row(mm->type, (const uint8_t *)mm->data +
					    (size_t)(t->r0 + first + k) *
					    row_bytes, buf + (size_t)k * mm->n_in,
					    mm->n_in);
			if (!t->w)
				continue;
			dst = t->w + (size_t)(first + k) * mm->n_in;
			for (i = 0; i < mm->n_in; i++)
				dst[i] = row[i];
		}
		for (i = 0; t->wt && i < mm->n_in; i++) {
			real_t *dst = t->wt + (size_t)i * t->n + first;

			for (k = 0; k < cnt; k++)
				dst[k] = buf[(size_t)k * mm->n_in + i];
		}
	}
}

/*
 * Dequantises rows [r0, r0 + n) of @mm into @w and transposed into @wt,
 * either of which may be NULL, on the pool's threads.
 */
static void load_rows(struct core *c, const struct model_matrix *mm,
		      uint32_t r0, uint32_t n, real_t *w, real_t *wt)
{
	struct load_task task = {
		.c = c, .mm = mm, .r0 = r0, .n = n, .w = w, .wt = wt,
	};

	kern_pool_run(c->pool, load_worker, &task);
}

/* Dequantises the weights of layer @li, the matrices or their transposes. */
static void load_layer(struct core *c, uint32_t li, bool w, bool wt)
{
	int i;

	for (i = 0; i < 7; i++) {
		const struct model_matrix *mm = layer_matrix(c->model, li, i);

		load_rows(c, mm, 0, mm->n_out, w ? c->lw.w[i] : NULL,
			  wt ? c->lw.wt[i] : NULL);
	}
}

/* ==== Weight gradients ================================================ */

/* Writes the (cols, rows) transpose of the (rows, cols) matrix @src. */
static void transpose(real_t *dst, const real_t *src, uint32_t rows,
		      uint32_t cols)
{
	uint32_t r, k;

	for (r = 0; r < rows; r++)
		for (k = 0; k < cols; k++)
			dst[(size_t)k * rows + r] = src[(size_t)r * cols + k];
}

static size_t max_size(size_t a, size_t b)
{
	return a > b ? a : b;
}

/* Allocates the buffers of weight gradients unless they exist. */
static int wg_alloc(struct core *c)
{
	const struct model_config *cfg = &c->model->cfg;
	size_t d = cfg->d_model, ff = cfg->d_ff;
	size_t q_dim = (size_t)cfg->n_heads * cfg->head_dim;
	/* kv_dim <= q_dim, so these bound every n_in and n_out */
	size_t dim = max_size(max_size(d, ff), max_size(q_dim, HEAD_CHUNK));
	size_t prod = max_size(max_size(q_dim, ff), HEAD_CHUNK) * d;

	if (c->wg_prod)
		return 0;
	c->wg_dyt = alloc_real(dim * c->max_len);
	c->wg_xt = alloc_real(dim * c->max_len);
	c->wg_prod = alloc_real(prod);
	if (c->wg_dyt && c->wg_xt && c->wg_prod)
		return 0;
	free(c->wg_dyt);
	free(c->wg_xt);
	free(c->wg_prod);
	c->wg_dyt = c->wg_xt = c->wg_prod = NULL;
	return -ENOMEM;
}

/*
 * Adds to @gw (n_out, n_in) the gradient dy^T x of y = x W^T over @n_tok
 * rows, for dy (n_tok, n_out) and x (n_tok, n_in).
 */
static void weight_grad(struct core *c, double *gw, const real_t *dy,
			const real_t *x, uint32_t n_in, uint32_t n_out,
			uint32_t n_tok)
{
	size_t i, n = (size_t)n_in * n_out;

	transpose(c->wg_dyt, dy, n_tok, n_out);
	transpose(c->wg_xt, x, n_tok, n_in);
	matmul(c->pool, c->wg_prod, c->wg_xt, c->wg_dyt, n_tok, n_in, n_out);
	for (i = 0; i < n; i++)
		gw[i] += c->wg_prod[i];
}

/* Adds to @gb (n) the bias gradient: dy (n_tok, n) summed over rows. */
static void bias_grad(double *gb, const real_t *dy, uint32_t n,
		      uint32_t n_tok)
{
	uint32_t t, i;

	for (t = 0; t < n_tok; t++)
		for (i = 0; i < n; i++)
			gb[i] += dy[(size_t)t * n + i];
}

/* Adds to @gw the gradient of rmsnorm's weight at row @x: dy_i x_i r. */
static void norm_weight_grad(double *gw, const real_t *x, const real_t *dy,
			     uint32_t n, double eps)
{
	double ss = 0.0, r;
	uint32_t i;

	for (i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	r = 1.0 / sqrt(ss / n + eps);
	for (i = 0; i < n; i++)
		gw[i] += (double)dy[i] * x[i] * r;
}

struct att_task {
	struct core *c;
	bool back;
};

/* Forward over query heads, or backward over kv heads, split by thread. */
static void att_worker(void *arg, int ith, int nth)
{
	struct att_task *task = arg;
	struct core *c = task->c;
	struct layer_acts *a = &c->acts;
	uint32_t n = task->back ? c->dims.n_kv_heads : c->dims.n_heads;
	uint32_t h0 = n * (uint32_t)ith / (uint32_t)nth;
	uint32_t h1 = n * (uint32_t)(ith + 1) / (uint32_t)nth;
	real_t *scratch = c->scratch + (size_t)ith * 2 * c->max_len;

	if (h0 == h1)
		return;
	if (!task->back)
		tune_attention_forward(&c->dims, &c->runs, a->q, a->k, a->v,
				       a->o, a->lse, h0, h1, scratch);
	else
		tune_attention_backward(&c->dims, &c->runs, a->q, a->k, a->v,
					a->lse, c->d_o, c->dq, c->dk, c->dv,
					h0, h1, scratch);
}

static void add(real_t *y, const real_t *x, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		y[i] += x[i];
}

/*
 * Runs layer @li over the layout from its input @x into @xout, leaving its
 * activations in c->acts. The layer's weights must be loaded.
 */
static void layer_forward(struct core *c, uint32_t li, const real_t *x,
			  real_t *xout)
{
	const struct model *m = c->model;
	const struct model_config *cfg = &m->cfg;
	const struct model_layer *l = &m->layers[li];
	struct layer_acts *a = &c->acts;
	uint32_t d = cfg->d_model, ff = cfg->d_ff, len = c->len, t;
	uint32_t q_dim = cfg->n_heads * cfg->head_dim;
	uint32_t kv_dim = cfg->n_kv_heads * cfg->head_dim;
	struct att_task task = { .c = c, .back = false };

	/* attention rmsnorm */
	for (t = 0; t < len; t++)
		tune_rmsnorm_forward(a->xn + (size_t)t * d, x + (size_t)t * d,
				     l->attn_norm, d, cfg->rms_eps);

	/* q, k, v projections (qwen2 adds biases) and RoPE */
	tune_linear_forward(c->pool, a->q, c->lw.w[WQ], l->bq, a->xn, d,
			    q_dim, len);
	tune_linear_forward(c->pool, a->k, c->lw.w[WK], l->bk, a->xn, d,
			    kv_dim, len);
	tune_linear_forward(c->pool, a->v, c->lw.w[WV], l->bv, a->xn, d,
			    kv_dim, len);
	for (t = 0; t < len; t++) {
		tune_rope(&m->rope, a->q + (size_t)t * q_dim, cfg->n_heads,
			  cfg->head_dim, t, false);
		tune_rope(&m->rope, a->k + (size_t)t * kv_dim,
			  cfg->n_kv_heads, cfg->head_dim, t, false);
	}

	/* attention under the cascade mask */
	kern_pool_run(c->pool, att_worker, &task);

	/* output projection and residual */
	tune_linear_forward(c->pool, a->proj, c->lw.w[WO], NULL, a->o, q_dim,
			    d, len);
	memcpy(a->xmid, x, (size_t)len * d * sizeof(real_t));
	add(a->xmid, a->proj, (size_t)len * d);

	/* feed-forward rmsnorm, SwiGLU and residual */
	for (t = 0; t < len; t++)
		tune_rmsnorm_forward(a->xn2 + (size_t)t * d,
				     a->xmid + (size_t)t * d, l->ffn_norm, d,
				     cfg->rms_eps);
	tune_linear_forward(c->pool, a->g, c->lw.w[WG], NULL, a->xn2, d, ff,
			    len);
	tune_linear_forward(c->pool, a->u, c->lw.w[WU], NULL, a->xn2, d, ff,
			    len);
	tune_swiglu_forward(a->a, a->g, a->u, (size_t)len * ff);
	tune_linear_forward(c->pool, a->proj, c->lw.w[WD], NULL, a->a, ff, d,
			    len);
	memcpy(xout, a->xmid, (size_t)len * d * sizeof(real_t));
	add(xout, a->proj, (size_t)len * d);
}

/*
 * Turns c->dx, the gradient of layer @li's output, into the gradient of
 * its input. c->acts must hold the layer's activations from @x, and the
 * weights and their transposes must be loaded. Adds the gradients of the
 * layer's weights into @lg unless it is NULL.
 */
static void layer_backward(struct core *c, uint32_t li, const real_t *x,
			   const struct tune_layer_grads *lg)
{
	const struct model *m = c->model;
	const struct model_config *cfg = &m->cfg;
	const struct model_layer *l = &m->layers[li];
	struct layer_acts *a = &c->acts;
	uint32_t d = cfg->d_model, ff = cfg->d_ff, len = c->len, t;
	uint32_t q_dim = cfg->n_heads * cfg->head_dim;
	uint32_t kv_dim = cfg->n_kv_heads * cfg->head_dim;
	struct att_task task = { .c = c, .back = true };

	/* down projection, SwiGLU, gate and up projections */
	if (lg)
		weight_grad(c, lg->w_down, c->dx, a->a, ff, d, len);
	tune_linear_backward(c->pool, c->da, c->lw.wt[WD], c->dx, ff, d, len);
	tune_swiglu_backward(c->dg, c->du, a->g, a->u, c->da,
			     (size_t)len * ff);
	if (lg) {
		weight_grad(c, lg->w_gate, c->dg, a->xn2, d, ff, len);
		weight_grad(c, lg->w_up, c->du, a->xn2, d, ff, len);
	}
	tune_linear_backward(c->pool, c->dxn, c->lw.wt[WG], c->dg, d, ff,
			     len);
	tune_linear_backward(c->pool, c->dtmp, c->lw.wt[WU], c->du, d, ff,
			     len);
	add(c->dxn, c->dtmp, (size_t)len * d);

	/* feed-forward rmsnorm; the residual passes dx on unchanged */
	for (t = 0; lg && t < len; t++)
		norm_weight_grad(lg->ffn_norm, a->xmid + (size_t)t * d,
				 c->dxn + (size_t)t * d, d, cfg->rms_eps);
	for (t = 0; t < len; t++)
		tune_rmsnorm_backward(c->dx + (size_t)t * d,
				      a->xmid + (size_t)t * d, l->ffn_norm,
				      c->dxn + (size_t)t * d, d, cfg->rms_eps);

	/* output projection and attention */
	if (lg)
		weight_grad(c, lg->wo, c->dx, a->o, q_dim, d, len);
	tune_linear_backward(c->pool, c->d_o, c->lw.wt[WO], c->dx, q_dim, d,
			     len);
	kern_pool_run(c->pool, att_worker, &task);

	/* RoPE, then the q, k, v projections */
	for (t = 0; t < len; t++) {
		tune_rope(&m->rope, c->dq + (size_t)t * q_dim, cfg->n_heads,
			  cfg->head_dim, t, true);
		tune_rope(&m->rope, c->dk + (size_t)t * kv_dim,
			  cfg->n_kv_heads, cfg->head_dim, t, true);
	}
	if (lg) {
		weight_grad(c, lg->wq, c->dq, a->xn, d, q_dim, len);
		weight_grad(c, lg->wk, c->dk, a->xn, d, kv_dim, len);
		weight_grad(c, lg->wv, c->dv, a->xn, d, kv_dim, len);
	}
	if (lg && lg->bq) {
		bias_grad(lg->bq, c->dq, q_dim, len);
		bias_grad(lg->bk, c->dk, kv_dim, len);
		bias_grad(lg->bv, c->dv, kv_dim, len);
	}
	tune_linear_backward(c->pool, c->dxn, c->lw.wt[WQ], c->dq, d, q_dim,
			     len);
	tune_linear_backward(c->pool, c->dtmp, c->lw.wt[WK], c->dk, d, kv_dim,
			     len);
	add(c->dxn, c->dtmp, (size_t)len * d);
	tune_linear_backward(c->pool, c->dtmp, c->lw.wt[WV], c->dv, d, kv_dim,
			     len);
	add(c->dxn, c->dtmp, (size_t)len * d);

	/* attention rmsnorm */
	for (t = 0; lg && t < len; t++)
		norm_weight_grad(lg->attn_norm, x + (size_t)t * d,
				 c->dxn + (size_t)t * d, d, cfg->rms_eps);
	for (t = 0; t < len; t++)
		tune_rmsnorm_backward(c->dx + (size_t)t * d, x + (size_t)t * d,
				      l->attn_norm, c->dxn + (size_t)t * d, d,
				      cfg->rms_eps);
}

/* Writes the targets of every position and the list of loss positions. */
static void set_targets(struct core *c, const struct tune_layout *lay)
{
	uint32_t s, j;

	for (j = 0; j < lay->n_pos; j++)
		c->target[j] = -1;
	c->n_loss = 0;
	for (s = 0; s < lay->n_spans; s++) {
		const struct tune_span *sp = &lay->spans[s];

		if (!sp->loss)
			continue;
		for (j = 0; j + 1 < sp->n; j++)
			c->target[sp->pos0 + j] = sp->tokens[j + 1];
		if (sp->stop_id >= 0)
			c->target[sp->pos0 + sp->n - 1] = sp->stop_id;
		for (j = 0; sp->untrained && j < sp->n; j++)
			if (sp->untrained[j])
				c->target[sp->pos0 + j] = -1;
	}
	for (j = 0; j < lay->n_pos; j++)
		if (c->target[j] >= 0)
			c->loss_pos[c->n_loss++] = j;
}

/* Writes the final rmsnorm of the residual at positions @pos into c->head_xn. */
static void final_norm(struct core *c, const uint32_t *pos, uint32_t n)
{
	const struct model *m = c->model;
	uint32_t d = m->cfg.d_model, r;
	const real_t *xl = c->x + (size_t)m->cfg.n_layers * c->max_len * d;

	for (r = 0; r < n; r++)
		tune_rmsnorm_forward(c->head_xn + (size_t)r * d,
				     xl + (size_t)(pos ? pos[r] : r) * d,
				     m->output_norm, d, m->cfg.rms_eps);
}

/*
 * Runs the output head over the positions @pos (all when NULL) of the
 * final residual, a chunk of the vocabulary at a time. Fills c->row_lse
 * for positions with a target and returns the summed loss over them;
 * copies the logits into @logits (n_pos rows) when it is not NULL.
 */
static double head_forward(struct core *c, const uint32_t *pos, uint32_t n,
			   float *logits)
{
	const struct model *m = c->model;
	uint32_t d = m->cfg.d_model, n_vocab = m->cfg.n_vocab;
	uint32_t v0, cn, r, i;
	double loss = 0.0;

	final_norm(c, pos, n);
	for (r = 0; r < n; r++)
		c->row_lse[pos ? pos[r] : r] = -INFINITY;
	for (v0 = 0; v0 < n_vocab; v0 += cn) {
		cn = n_vocab - v0 < HEAD_CHUNK ? n_vocab - v0 : HEAD_CHUNK;
		load_rows(c, &m->output, v0, cn, c->head_w, NULL);
		matmul(c->pool, c->head_z, c->head_w, c->head_xn, d, cn, n);
		for (r = 0; r < n; r++) {
			uint32_t p = pos ? pos[r] : r;
			const real_t *z = c->head_z + (size_t)r * cn;
			double a, b, mx;

			if (logits)
				for (i = 0; i < cn; i++)
					logits[(size_t)p * n_vocab + v0 + i] =
						(float)z[i];
			if (c->target[p] < 0)
				continue;
			/* merge this chunk's log-sum-exp into the row's */
			a = c->row_lse[p];
			b = tune_logsumexp(z, cn);
			mx = a > b ? a : b;
			c->row_lse[p] = mx + log(exp(a - mx) + exp(b - mx));
			if ((uint32_t)c->target[p] >= v0 &&
			    (uint32_t)c->target[p] < v0 + cn)
				loss -= z[c->target[p] - v0];
		}
	}
	for (r = 0; r < n; r++) {
		uint32_t p = pos ? pos[r] : r;

		if (c->target[p] >= 0)
			loss += c->row_lse[p];
	}
	return loss;
}

int CORE(forward)(void *arg, const struct tune_layout *lay,
		  const float *const *prompts, double *loss, float *logits)
{
	struct core *c = arg;
	const struct model *m = c->model;
	uint32_t d = m->cfg.d_model, s, j, i, li;
	size_t plane = (size_t)c->max_len * d;
	double sum;
	int rc;

	c->ready = false;
	tune_runs_free(&c->runs);
	if ((rc = tune_layout_runs(lay, &c->runs)) < 0)
		return rc;
	c->len = lay->n_pos;
	c->n_slots = lay->n_stages;
	set_targets(c, lay);
	/* positions after the last predicted token cannot change the loss */
	if (!logits && c->n_loss > 0)
		c->len = c->loss_pos[c->n_loss - 1] + 1;
	c->runs.n_pos = c->len;

	/* input rows: prompt embeddings, then token embeddings */
	for (s = 0; s < lay->n_spans; s++) {
		const struct tune_span *sp = &lay->spans[s];

		if (s < lay->n_stages) {
			c->slot_pos0[s] = sp->pos0;
			c->slot_n[s] = sp->n;
		}
		for (j = 0; j < sp->n; j++) {
			real_t *x = c->x + (size_t)(sp->pos0 + j) * d;

			c->token[sp->pos0 + j] = sp->kind == SPAN_PROMPT ?
						 -1 : sp->tokens[j];
			if (sp->kind == SPAN_PROMPT)
				for (i = 0; i < d; i++)
					x[i] = prompts[s][(size_t)j * d + i];
			else {
				model_embed(m, sp->tokens[j], c->row);
				for (i = 0; i < d; i++)
					x[i] = c->row[i];
			}
		}
	}

	/* every layer, keeping each one's input */
	for (li = 0; li < m->cfg.n_layers; li++) {
		if (c->saved)
			c->acts = c->saved[li];
		load_layer(c, li, true, false);
		layer_forward(c, li, c->x + li * plane, c->x + (li + 1) * plane);
	}

	/* output head on the positions that predict a token */
	if (logits)
		sum = head_forward(c, NULL, c->len, logits);
	else
		sum = head_forward(c, c->loss_pos, c->n_loss, NULL);
	*loss = c->n_loss ? sum / c->n_loss : 0.0;
	c->ready = true;
	return 0;
}

/*
 * Writes into c->dx the gradient of the loss w.r.t. the final residual,
 * and adds the gradients of the output head and final norm into @wg
 * unless it is NULL.
 */
static void head_backward(struct core *c, const struct tune_grads *wg)
{
	const struct model *m = c->model;
	uint32_t d = m->cfg.d_model, n_vocab = m->cfg.n_vocab, n = c->n_loss;
	const real_t *xl = c->x + (size_t)m->cfg.n_layers * c->max_len * d;
	real_t *dxf = c->dxn;
	double scale = 1.0 / n;
	uint32_t v0, cn, r;

	memset(c->dx, 0, (size_t)c->len * d * sizeof(real_t));
	if (n == 0)
		return;
	final_norm(c, c->loss_pos, n);
	memset(dxf, 0, (size_t)n * d * sizeof(real_t));
	for (v0 = 0; v0 < n_vocab; v0 += cn) {
		cn = n_vocab - v0 < HEAD_CHUNK ? n_vocab - v0 : HEAD_CHUNK;
		load_rows(c, &m->output, v0, cn, c->head_w, c->head_wt);
		matmul(c->pool, c->head_z, c->head_w, c->head_xn, d, cn, n);
		for (r = 0; r < n; r++) {
			uint32_t p = c->loss_pos[r];
			real_t *z = c->head_z + (size_t)r * cn;

			tune_xent_backward(z, z, cn, v0, c->target[p],
					   c->row_lse[p], scale);
		}
		if (wg)
			weight_grad(c, wg->output + (size_t)v0 * d, c->head_z,
				    c->head_xn, d, cn, n);
		tune_linear_backward(c->pool, c->dtmp, c->head_wt, c->head_z,
				     d, cn, n);
		add(dxf, c->dtmp, (size_t)n * d);
	}
	for (r = 0; r < n; r++) {
		uint32_t p = c->loss_pos[r];

		if (wg)
			norm_weight_grad(wg->output_norm, xl + (size_t)p * d,
					 dxf + (size_t)r * d, d,
					 m->cfg.rms_eps);
		tune_rmsnorm_backward(c->dx + (size_t)p * d, xl + (size_t)p * d,
				      m->output_norm, dxf + (size_t)r * d, d,
				      m->cfg.rms_eps);
	}
}

/* Adds the rows of c->dx at token positions into their embedding rows. */
static void embed_grad(struct core *c, double *g)
{
	uint32_t d = c->model->cfg.d_model, p, i;

	for (p = 0; p < c->len; p++) {
		double *row;

		if (c->token[p] < 0)
			continue;
		row = g + (size_t)c->token[p] * d;
		for (i = 0; i < d; i++)
			row[i] += c->dx[(size_t)p * d + i];
	}
}

int CORE(backward)(void *arg, double *const *grads,
		   const struct tune_grads *wg)
{
	struct core *c = arg;
	const struct model *m = c->model;
	uint32_t d = m->cfg.d_model, s, j, li;
	size_t plane = (size_t)c->max_len * d;

	if (!c->ready)
		return -EINVAL;
	if (wg && wg_alloc(c) < 0)
		return -ENOMEM;
	head_backward(c, wg);

	/* each layer from the top: its activations (recomputed unless
	 * saved), then back through it */
	for (li = m->cfg.n_layers; li-- > 0;) {
		load_layer(c, li, !c->saved, true);
		if (c->saved)
			c->acts = c->saved[li];
		else
			layer_forward(c, li, c->x + li * plane, c->xout);
		layer_backward(c, li, c->x + li * plane,
			       wg ? &wg->layers[li] : NULL);
	}
	if (wg)
		embed_grad(c, wg->tok_embd);

	for (s = 0; grads && s < c->n_slots; s++) {
		if (!grads[s])
			continue;
		for (j = 0; j < c->slot_n[s] * d; j++)
			grads[s][j] = c->dx[(size_t)c->slot_pos0[s] * d + j];
	}
	return 0;
}
