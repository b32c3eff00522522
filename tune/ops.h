/* SPDX-License-Identifier: MIT */
/*
 * ops.h - the operations of the training pass, forward and backward, in
 * their double-precision build, for tests that check each backward against
 * finite differences on its own. tune/train-impl.h defines them, and its
 * F32 build keeps its copies private.
 *
 * Matrices are row-major. A backward call writes the gradient of the
 * inputs from the gradient of the outputs; "adds" means it accumulates.
 */
#ifndef KVCHAIN_TUNE_OPS_H
#define KVCHAIN_TUNE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "layout.h"
#include "train-internal.h"

/* y = x / sqrt(mean(x^2) + eps) * w, n values. */
void tune_rmsnorm_forward(double *y, const double *x, const float *w,
			  uint32_t n, double eps);
/* Adds to @dx the gradient through rmsnorm at @x for output gradient @dy. */
void tune_rmsnorm_backward(double *dx, const double *x, const float *w,
			   const double *dy, uint32_t n, double eps);

/*
 * Rotates the first rope->n_rot values of each of @n_heads heads of @x for
 * position @pos; with @inverse, by the opposite angle, which is the
 * transpose of the rotation and so its backward.
 */
void tune_rope(const struct kern_rope *rope, double *x, uint32_t n_heads,
	       uint32_t head_dim, uint32_t pos, bool inverse);

/*
 * Attention of query heads [h0, h1) at every position of @runs: o[p, h] =
 * softmax over the keys runs gives p of (q[p, h] . k[j, g] / sqrt(head_dim))
 * times v[j, g]. q and o are (n_pos, n_heads * head_dim), k and v (n_pos,
 * n_kv_heads * head_dim); lse (n_pos, n_heads) receives each softmax's
 * log-sum-exp for the backward. @scratch has room for n_pos values.
 */
void tune_attention_forward(const struct tune_att_dims *dims,
			    const struct tune_runs *runs, const double *q,
			    const double *k, const double *v, double *o,
			    double *lse, uint32_t h0, uint32_t h1,
			    double *scratch);

/*
 * Writes dq, dk and dv of kv heads [g0, g1) (and of the query heads that
 * read them) from the output gradient @d_o, recomputing the softmax from
 * @lse. @scratch has room for 2 * n_pos values.
 */
void tune_attention_backward(const struct tune_att_dims *dims,
			     const struct tune_runs *runs, const double *q,
			     const double *k, const double *v,
			     const double *lse, const double *d_o,
			     double *dq, double *dk, double *dv, uint32_t g0,
			     uint32_t g1, double *scratch);

/* a = silu(g) * u over n values. */
void tune_swiglu_forward(double *a, const double *g, const double *u,
			 size_t n);
void tune_swiglu_backward(double *dg, double *du, const double *g,
			  const double *u, const double *da, size_t n);

/*
 * y (n_tok, n_out) = x (n_tok, n_in) W^T + b, W (n_out, n_in), @b (n_out)
 * or NULL.
 */
void tune_linear_forward(struct kern_pool *pool, double *y, const double *w,
			 const float *b, const double *x, uint32_t n_in,
			 uint32_t n_out, uint32_t n_tok);
/* dx (n_tok, n_in) = dy (n_tok, n_out) W, from wt = W^T (n_in, n_out). */
void tune_linear_backward(struct kern_pool *pool, double *dx,
			  const double *wt, const double *dy, uint32_t n_in,
			  uint32_t n_out, uint32_t n_tok);

/* Returns log(sum(exp(z))) over n values. */
double tune_logsumexp(const double *z, uint32_t n);
/*
 * Writes dz = scale * (exp(z - lse) - [v0 + i == target]) for the n logits
 * of vocabulary ids v0 .. v0 + n - 1 of a row whose log-sum-exp is @lse:
 * the gradient of scale * cross-entropy(row, target).
 */
void tune_xent_backward(double *dz, const double *z, uint32_t n, uint32_t v0,
			int32_t target, double lse, double scale);

#endif /* KVCHAIN_TUNE_OPS_H */
