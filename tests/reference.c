/* SPDX-License-Identifier: MIT */
/*
 * reference.c - the tests' double-precision transformer. Written for
 * clarity, not speed: every weight is a dense matrix of doubles and every
 * step is a plain loop. It reads hyper-parameters from the GGUF keys itself
 * and dequantises with refquant.c, so it shares no math with the engine.
 */
#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "reference.h"
#include "refquant.h"

struct ref_layer {
	double *attn_norm, *ffn_norm;
	double *wq, *wk, *wv, *wo;	/* (out, in) row-major */
	double *bq, *bk, *bv;		/* NULL without biases */
	double *w_gate, *w_up, *w_down;
	int act_block;			/* see ref_model.act_block */
};

struct ref_model {
	bool neox;			/* qwen2 rotates (i, i + half) pairs */
	int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ff;
	double eps, theta;
	double *rope_factors;		/* (head_dim / 2) or NULL */
	double *embd;			/* (n_vocab, dim) */
	double *out;			/* (n_vocab, dim) */
	double *out_norm;
	int out_act_block;
	struct ref_layer *layers;
	bool round_activations;		/* set by ref_forward */
};

/*
 * The block size of the 8-bit rounding a quantised weight type applies to
 * the vector it multiplies (32 for Q8_0 and Q4_0, 256 for the K types), or
 * 0 for float types.
 */
static int act_block_of(const struct gguf_file *f, const char *name)
{
	const struct gguf_tensor *t = gguf_find_tensor(f, name);

	if (!t)
		return 0;
	switch (t->type) {
	case 8:		/* Q8_0 */
	case 2:		/* Q4_0 */
		return 32;
	case 12:	/* Q4_K */
	case 14:	/* Q6_K */
		return 256;
	}
	return 0;
}

/* Dequantises tensor @name to a new array, or returns NULL. */
static double *load(const struct gguf_file *f, const char *name)
{
	const struct gguf_tensor *t = gguf_find_tensor(f, name);
	int64_t n = 1;
	uint32_t i;
	double *x;

	if (!t)
		return NULL;
	for (i = 0; i < t->n_dims; i++)
		n *= (int64_t)t->ne[i];
	x = malloc((size_t)n * sizeof(double));
	if (x && refquant_dequantize(t->type, t->data, x, n) < 0) {
		free(x);
		return NULL;
	}
	return x;
}

static int get_int(const struct gguf_file *f, const char *arch,
		   const char *name, int *out)
{
	char key[128];
	uint32_t v;

	snprintf(key, sizeof(key), "%s.%s", arch, name);
	if (gguf_get_u32(f, key, &v) < 0)
		return -1;
	*out = (int)v;
	return 0;
}

int ref_model_load(const char *path, struct ref_model **out)
{
	struct gguf_file *f;
	struct ref_model *m;
	struct gguf_str arch_s;
	const struct gguf_kv *tokens;
	char arch[16], key[128], name[96];
	float eps = 1e-5f, theta = 10000.0f;
	int i;

	if (gguf_open(path, &f, NULL, 0) < 0)
		return -1;
	m = calloc(1, sizeof(*m));
	if (!m || gguf_get_str(f, "general.architecture", &arch_s) < 0 ||
	    arch_s.len >= sizeof(arch))
		goto fail;
	memcpy(arch, arch_s.ptr, arch_s.len);
	arch[arch_s.len] = '\0';
	m->neox = strcmp(arch, "qwen2") == 0;
	if (get_int(f, arch, "embedding_length", &m->dim) ||
	    get_int(f, arch, "block_count", &m->n_layers) ||
	    get_int(f, arch, "attention.head_count", &m->n_heads) ||
	    get_int(f, arch, "feed_forward_length", &m->ff))
		goto fail;
	if (get_int(f, arch, "attention.head_count_kv", &m->n_kv_heads))
		m->n_kv_heads = m->n_heads;
	snprintf(key, sizeof(key), "%s.attention.layer_norm_rms_epsilon", arch);
	gguf_get_f32(f, key, &eps);
	snprintf(key, sizeof(key), "%s.rope.freq_base", arch);
	gguf_get_f32(f, key, &theta);
	m->eps = eps;
	m->theta = theta;
	m->head_dim = m->dim / m->n_heads;
	if (gguf_get_array(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING,
			   &tokens) < 0)
		goto fail;
	m->n_vocab = (int)tokens->arr_n;

	m->embd = load(f, "token_embd.weight");
	m->out = load(f, "output.weight");
	m->out_act_block = act_block_of(f, "output.weight");
	if (!m->out) {
		m->out = load(f, "token_embd.weight");
		m->out_act_block = act_block_of(f, "token_embd.weight");
	}
	m->out_norm = load(f, "output_norm.weight");
	m->rope_factors = load(f, "rope_freqs.weight");
	m->layers = calloc((size_t)m->n_layers, sizeof(*m->layers));
	if (!m->embd || !m->out || !m->out_norm || !m->layers)
		goto fail;
	for (i = 0; i < m->n_layers; i++) {
		struct ref_layer *l = &m->layers[i];

#define LOAD(field, suffix) \
	(snprintf(name, sizeof(name), "blk.%d.%s", i, suffix), \
	 l->field = load(f, name))
		LOAD(attn_norm, "attn_norm.weight");
		LOAD(ffn_norm, "ffn_norm.weight");
		LOAD(wq, "attn_q.weight");
		LOAD(wk, "attn_k.weight");
		LOAD(wv, "attn_v.weight");
		LOAD(wo, "attn_output.weight");
		LOAD(bq, "attn_q.bias");
		LOAD(bk, "attn_k.bias");
		LOAD(bv, "attn_v.bias");
		LOAD(w_gate, "ffn_gate.weight");
		LOAD(w_up, "ffn_up.weight");
		LOAD(w_down, "ffn_down.weight");
#undef LOAD
		snprintf(name, sizeof(name), "blk.%d.attn_q.weight", i);
		l->act_block = act_block_of(f, name);
		if (!l->attn_norm || !l->ffn_norm || !l->wq || !l->wk ||
		    !l->wv || !l->wo || !l->w_gate || !l->w_up || !l->w_down)
			goto fail;
	}
	gguf_close(f);
	*out = m;
	return 0;

fail:
	gguf_close(f);
	ref_model_free(m);
	return -1;
}

void ref_model_free(struct ref_model *m)
{
	int i;

	if (!m)
		return;
	for (i = 0; m->layers && i < m->n_layers; i++) {
		struct ref_layer *l = &m->layers[i];

		free(l->attn_norm);
		free(l->ffn_norm);
		free(l->wq);
		free(l->wk);
		free(l->wv);
		free(l->wo);
		free(l->bq);
		free(l->bk);
		free(l->bv);
		free(l->w_gate);
		free(l->w_up);
		free(l->w_down);
	}
	free(m->layers);
	free(m->embd);
	free(m->out);
	free(m->out_norm);
	free(m->rope_factors);
	free(m);
}

int ref_n_vocab(const struct ref_model *m)
{
	return m->n_vocab;
}

/*
 * Rounds @x to 8 bits per block of @block values, as the engine rounds the
 * vector a quantised weight multiplies: scale max|x| / 127, nearest integer.
 */
static void round_8bit(double *y, const double *x, int n, int block)
{
	int i, j;

	for (i = 0; i < n; i += block) {
		double amax = 0.0, d;

		for (j = 0; j < block; j++)
			if (fabs(x[i + j]) > amax)
				amax = fabs(x[i + j]);
		d = (float)amax / 127.0f;
		for (j = 0; j < block; j++)
			y[i + j] = d > 0.0 ? nearbyint(x[i + j] / d) * d : 0.0;
	}
}

/*
 * y (n_out) = W (n_out, n_in) x (n_in) + b, with x first rounded to 8 bits
 * when @act_block is not 0 and the model rounds activations.
 */
static void matvec(const struct ref_model *m, double *y, const double *w,
		     const double *b, const double *x, int n_in, int n_out,
		     int act_block)
{
	double *xr = NULL;
	int r, c;

	if (m->round_activations && act_block > 0) {
		xr = malloc((size_t)n_in * sizeof(double));
		round_8bit(xr, x, n_in, act_block);
		x = xr;
	}
	for (r = 0; r < n_out; r++) {
		double s = b ? b[r] : 0.0;

		for (c = 0; c < n_in; c++)
			s += w[(size_t)r * n_in + c] * x[c];
		y[r] = s;
	}
	free(xr);
}

static void rmsnorm(double *y, const double *x, const double *w, int n,
		    double eps)
{
	double ss = 0.0;
	int i;

	for (i = 0; i < n; i++)
		ss += x[i] * x[i];
	ss = 1.0 / sqrt(ss / n + eps);
	for (i = 0; i < n; i++)
		y[i] = x[i] * ss * w[i];
}

/* Rotates one head of @hd values at position @pos. */
static void rope(const struct ref_model *m, double *x, int pos)
{
	int hd = m->head_dim, i;

	for (i = 0; i < hd / 2; i++) {
		double freq = pow(m->theta, -2.0 * i / hd);
		double a, c, s, x0, x1;
		int i0 = m->neox ? i : 2 * i;
		int i1 = m->neox ? i + hd / 2 : 2 * i + 1;

		if (m->rope_factors)
			freq /= m->rope_factors[i];
		a = pos * freq;
		c = cos(a);
		s = sin(a);
		x0 = x[i0];
		x1 = x[i1];
		x[i0] = x0 * c - x1 * s;
		x[i1] = x0 * s + x1 * c;
	}
}

int ref_forward(struct ref_model *m, const int32_t *tokens, int n_tok,
		bool round_activations, double *logits)
{
	int d = m->dim, hd = m->head_dim, nh = m->n_heads;
	int kvd = m->n_kv_heads * hd, group = nh / m->n_kv_heads;
	double *x = calloc((size_t)n_tok * d, sizeof(double));
	double *kc = calloc((size_t)n_tok * kvd, sizeof(double));
	double *vc = calloc((size_t)n_tok * kvd, sizeof(double));
	double *xb = malloc(d * sizeof(double));
	double *q = malloc((size_t)nh * hd * sizeof(double));
	double *att = malloc((size_t)nh * hd * sizeof(double));
	double *o = malloc(d * sizeof(double));
	double *g = malloc((size_t)m->ff * sizeof(double));
	double *u = malloc((size_t)m->ff * sizeof(double));
	double *w = malloc((size_t)n_tok * sizeof(double));
	int rc = -1, li, t, h, j, i;

	m->round_activations = round_activations;

	if (!x || !kc || !vc || !xb || !q || !att || !o || !g || !u || !w)
		goto out;
	for (t = 0; t < n_tok; t++) {
		if (tokens[t] < 0 || tokens[t] >= m->n_vocab)
			goto out;
		memcpy(x + (size_t)t * d, m->embd + (size_t)tokens[t] * d,
		       d * sizeof(double));
	}

	for (li = 0; li < m->n_layers; li++) {
		const struct ref_layer *l = &m->layers[li];

		/* keys and values of every position first */
		for (t = 0; t < n_tok; t++) {
			rmsnorm(xb, x + (size_t)t * d, l->attn_norm, d, m->eps);
			matvec(m, kc + (size_t)t * kvd, l->wk, l->bk, xb, d, kvd, l->act_block);
			matvec(m, vc + (size_t)t * kvd, l->wv, l->bv, xb, d, kvd, l->act_block);
			for (h = 0; h < m->n_kv_heads; h++)
				rope(m, kc + (size_t)t * kvd + h * hd, t);
		}
		/* then each position attends to positions 0..t */
		for (t = 0; t < n_tok; t++) {
			double *xt = x + (size_t)t * d;

			rmsnorm(xb, xt, l->attn_norm, d, m->eps);
			matvec(m, q, l->wq, l->bq, xb, d, nh * hd, l->act_block);
			for (h = 0; h < nh; h++) {
				int kvh = h / group;
				double mx = -INFINITY, sum = 0.0;

				rope(m, q + h * hd, t);
				for (j = 0; j <= t; j++) {
					double s = 0.0;

					for (i = 0; i < hd; i++)
						s += q[h * hd + i] *
						     kc[(size_t)j * kvd + kvh * hd + i];
					w[j] = s / sqrt((double)hd);
					if (w[j] > mx)
						mx = w[j];
				}
				for (j = 0; j <= t; j++) {
					w[j] = exp(w[j] - mx);
					sum += w[j];
				}
				for (i = 0; i < hd; i++) {
					double s = 0.0;

					for (j = 0; j <= t; j++)
						s += w[j] / sum *
						     vc[(size_t)j * kvd + kvh * hd + i];
					att[h * hd + i] = s;
				}
			}
			matvec(m, o, l->wo, NULL, att, nh * hd, d, l->act_block);
			for (i = 0; i < d; i++)
				xt[i] += o[i];

			/* SwiGLU feed-forward */
			rmsnorm(xb, xt, l->ffn_norm, d, m->eps);
			matvec(m, g, l->w_gate, NULL, xb, d, m->ff, l->act_block);
			matvec(m, u, l->w_up, NULL, xb, d, m->ff, l->act_block);
			for (i = 0; i < m->ff; i++)
				g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
			matvec(m, o, l->w_down, NULL, g, m->ff, d, l->act_block);
			for (i = 0; i < d; i++)
				xt[i] += o[i];
		}
	}

	for (t = 0; t < n_tok; t++) {
		rmsnorm(xb, x + (size_t)t * d, m->out_norm, d, m->eps);
		matvec(m, logits + (size_t)t * m->n_vocab, m->out, NULL, xb, d,
			 m->n_vocab, m->out_act_block);
	}
	rc = 0;
out:
	free(x);
	free(kc);
	free(vc);
	free(xb);
	free(q);
	free(att);
	free(o);
	free(g);
	free(u);
	free(w);
	return rc;
}
