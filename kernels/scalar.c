/* SPDX-License-Identifier: MIT */
/*
 * scalar.c - the plain C version of every kernel, which is the
 * specification the SIMD versions are tested against, the kernel table of
 * KERN_ISA_SCALAR, and RoPE and the attention loop, which run the same
 * code on every instruction set.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "kernels-internal.h"

/* ==== Quantising x for the integer dot products ========================= */

void kern_scalar_quantize_qx(const float *x, void *dst, int n)
{
	struct kern_block_qx *b = dst;

	for (int i = 0; i < n / KERN_QX; i++) {
		const float *v = x + i * KERN_QX;
		float amax = 0, id;
		int32_t sum = 0;

		for (int j = 0; j < KERN_QX; j++)
			amax = fmaxf(amax, fabsf(v[j]));
		b[i].d = amax / 127;
		id = b[i].d ? 1 / b[i].d : 0;
		for (int j = 0; j < KERN_QX; j++) {
			b[i].qs[j] = (int8_t)lrintf(v[j] * id);
			sum += b[i].qs[j];
		}
		b[i].sum = sum;
	}
}

void kern_scalar_quantize_qk(const float *x, void *dst, int n)
{
	struct kern_block_qk *b = dst;

	for (int i = 0; i < n / KERN_QK_K; i++) {
		const float *v = x + i * KERN_QK_K;
		float amax = 0, id;

		for (int j = 0; j < KERN_QK_K; j++)
			amax = fmaxf(amax, fabsf(v[j]));
		b[i].d = amax / 127;
		id = b[i].d ? 1 / b[i].d : 0;
		for (int j = 0; j < KERN_QK_K; j++)
			b[i].qs[j] = (int8_t)lrintf(v[j] * id);
		for (int j = 0; j < KERN_QK_K / 16; j++) {
			int sum = 0;

			for (int l = 0; l < 16; l++)
				sum += b[i].qs[16 * j + l];
			b[i].bsums[j] = (int16_t)sum;
		}
	}
}

/* ==== Matrix product rows ============================================== */

float kern_scalar_dot_f32(int n, const void *w, const void *x)
{
	const float *a = w, *b = x;
	float sum = 0;

	for (int i = 0; i < n; i++)
		sum += a[i] * b[i];
	return sum;
}

float kern_scalar_dot_f16(int n, const void *w, const void *x)
{
	const uint16_t *a = w;
	const float *b = x;
	float sum = 0;

	for (int i = 0; i < n; i++)
		sum += kern_f16_to_f32(a[i]) * b[i];
	return sum;
}

float kern_scalar_dot_bf16(int n, const void *w, const void *x)
{
	const uint16_t *a = w;
	const float *b = x;
	float sum = 0;

	for (int i = 0; i < n; i++)
		sum += kern_bf16_to_f32(a[i]) * b[i];
	return sum;
}

float kern_scalar_dot_q8_0(int n, const void *w, const void *x)
{
	const struct kern_block_q8_0 *a = w;
	const struct kern_block_qx *b = x;
	float sum = 0;

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		int32_t isum = 0;

		for (int j = 0; j < KERN_QK8_0; j++)
			isum += a[i].qs[j] * b[i].qs[j];
		sum += kern_f16_to_f32(a[i].d) * b[i].d * (float)isum;
	}
	return sum;
}

float kern_scalar_dot_q4_0(int n, const void *w, const void *x)
{
	const struct kern_block_q4_0 *a = w;
	const struct kern_block_qx *b = x;
	float sum = 0;

	for (int i = 0; i < n / KERN_QK4_0; i++) {
		int32_t isum = 0;

		/* sum (nibble - 8) * x = sum nibble * x - 8 * sum x */
		for (int j = 0; j < KERN_QK4_0 / 2; j++)
			isum += (a[i].qs[j] & 0xF) * b[i].qs[j] +
				(a[i].qs[j] >> 4) * b[i].qs[j + 16];
		isum -= 8 * b[i].sum;
		sum += kern_f16_to_f32(a[i].d) * b[i].d * (float)isum;
	}
	return sum;
}

float kern_scalar_dot_q4_k(int n, const void *w, const void *x)
{
	const struct kern_block_q4_k *a = w;
	const struct kern_block_qk *b = x;
	float sum = 0;

	for (int i = 0; i < n / KERN_QK_K; i++) {
		int32_t sumi = 0, summ = 0;

		for (int j = 0; j < 8; j++) {
			const uint8_t *q = a[i].qs + 32 * (j / 2);
			const int8_t *v = b[i].qs + 32 * j;
			int shift = j % 2 ? 4 : 0;
			int32_t dot = 0;
			uint8_t sc, m;

			kern_q4_k_scale_min(a[i].scales, j, &sc, &m);
			for (int l = 0; l < 32; l++)
				dot += ((q[l] >> shift) & 0xF) * v[l];
			sumi += sc * dot;
			summ += m * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
		}
		sum += b[i].d * (kern_f16_to_f32(a[i].d) * (float)sumi -
				 kern_f16_to_f32(a[i].dmin) * (float)summ);
	}
	return sum;
}

float kern_scalar_dot_q6_k(int n, const void *w, const void *x)
{
	const struct kern_block_q6_k *a = w;
	const struct kern_block_qk *b = x;
	float sum = 0;

	for (int i = 0; i < n / KERN_QK_K; i++) {
		int32_t total = 0;

		for (int j = 0; j < 16; j++) {
			int32_t dot = 0;

			/* Elements 16j .. 16j+15 share one 128-element half,
			 * one run of 32 and so one ql and qh byte pattern. */
			for (int l = 0; l < 16; l++) {
				int e = 16 * j + l;
				int half = e / 128, r = (e % 128) / 32;
				int k = e % 32;
				const uint8_t *ql = a[i].ql + 64 * half;
				int lo = r & 1 ? ql[k + 32] : ql[k];
				int hi = (a[i].qh[32 * half + k] >> (2 * r)) & 3;

				lo = r >= 2 ? lo >> 4 : lo & 0xF;
				dot += (lo | hi << 4) * b[i].qs[e];
			}
			dot -= 32 * b[i].bsums[j];
			total += a[i].scales[j] * dot;
		}
		sum += kern_f16_to_f32(a[i].d) * b[i].d * (float)total;
	}
	return sum;
}

/* ==== Element-wise kernels ============================================= */

static void scalar_rmsnorm(float *y, const float *x, const float *weight,
			   int n, float eps)
{
	double ss = 0;
	float scale;

	for (int i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	scale = (float)(1 / sqrt(ss / n + eps));
	for (int i = 0; i < n; i++)
		y[i] = x[i] * scale * weight[i];
}

static void scalar_softmax(float *x, int n)
{
	float max = -INFINITY;
	double sum = 0;
	float inv;

	for (int i = 0; i < n; i++)
		max = fmaxf(max, x[i]);
	for (int i = 0; i < n; i++) {
		x[i] = expf(x[i] - max);
		sum += x[i];
	}
	inv = (float)(1 / sum);
	for (int i = 0; i < n; i++)
		x[i] *= inv;
}

static void scalar_swiglu(float *y, const float *gate, const float *up, int n)
{
	for (int i = 0; i < n; i++)
		y[i] = gate[i] / (1 + expf(-gate[i])) * up[i];
}

/* ==== Attention rows ==================================================== */

float kern_scalar_kv_dot_f32(const float *q, const void *k, int n)
{
	return kern_scalar_dot_f32(n, k, q);
}

float kern_scalar_kv_dot_f16(const float *q, const void *k, int n)
{
	return kern_scalar_dot_f16(n, k, q);
}

float kern_scalar_kv_dot_q8_0(const float *q, const void *k, int n)
{
	const struct kern_block_q8_0 *b = k;
	float sum = 0;

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		float part = 0;

		for (int j = 0; j < KERN_QK8_0; j++)
			part += q[i * KERN_QK8_0 + j] * b[i].qs[j];
		sum += part * kern_f16_to_f32(b[i].d);
	}
	return sum;
}

void kern_scalar_kv_axpy_f32(float *y, float a, const void *v, int n)
{
	const float *x = v;

	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

void kern_scalar_kv_axpy_f16(float *y, float a, const void *v, int n)
{
	const uint16_t *x = v;

	for (int i = 0; i < n; i++)
		y[i] += a * kern_f16_to_f32(x[i]);
}

void kern_scalar_kv_axpy_q8_0(float *y, float a, const void *v, int n)
{
	const struct kern_block_q8_0 *b = v;

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		float ad = a * kern_f16_to_f32(b[i].d);

		for (int j = 0; j < KERN_QK8_0; j++)
			y[i * KERN_QK8_0 + j] += ad * b[i].qs[j];
	}
}

void kern_scalar_f16_to_f32_row(const uint16_t *src, float *dst, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = kern_f16_to_f32(src[i]);
}

void kern_scalar_f32_to_f16_row(const float *src, uint16_t *dst, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = kern_f32_to_f16(src[i]);
}

const struct kern_ops kern_ops_scalar = {
	.dot = {
		[KERN_SLOT_F32] = kern_scalar_dot_f32,
		[KERN_SLOT_F16] = kern_scalar_dot_f16,
		[KERN_SLOT_BF16] = kern_scalar_dot_bf16,
		[KERN_SLOT_Q8_0] = kern_scalar_dot_q8_0,
		[KERN_SLOT_Q4_0] = kern_scalar_dot_q4_0,
		[KERN_SLOT_Q4_K] = kern_scalar_dot_q4_k,
		[KERN_SLOT_Q6_K] = kern_scalar_dot_q6_k,
	},
	.quantize_qx = kern_scalar_quantize_qx,
	.quantize_qk = kern_scalar_quantize_qk,
	.rmsnorm = scalar_rmsnorm,
	.softmax = scalar_softmax,
	.swiglu = scalar_swiglu,
	.kv_dot = {
		[KERN_SLOT_F32] = kern_scalar_kv_dot_f32,
		[KERN_SLOT_F16] = kern_scalar_kv_dot_f16,
		[KERN_SLOT_Q8_0] = kern_scalar_kv_dot_q8_0,
	},
	.kv_axpy = {
		[KERN_SLOT_F32] = kern_scalar_kv_axpy_f32,
		[KERN_SLOT_F16] = kern_scalar_kv_axpy_f16,
		[KERN_SLOT_Q8_0] = kern_scalar_kv_axpy_q8_0,
	},
	.f16_to_f32_row = kern_scalar_f16_to_f32_row,
	.f32_to_f16_row = kern_scalar_f32_to_f16_row,
};

/* ==== Rotary position embedding ======================================== */

/* Llama 3.x: long wavelengths are divided by the factor, short ones kept,
 * and the band between is blended linearly in context / wavelength. */
static double llama3_scale_freq(double freq, const struct kern_rope_llama3 *s)
{
	double wavelen = 2 * M_PI / freq;
	double low_wavelen = s->original_context / s->low_freq_factor;
	double high_wavelen = s->original_context / s->high_freq_factor;
	double smooth;

	if (wavelen < high_wavelen)
		return freq;
	if (wavelen > low_wavelen)
		return freq / s->factor;
	smooth = (s->original_context / wavelen - s->low_freq_factor) /
		 (s->high_freq_factor - s->low_freq_factor);
	return (1 - smooth) * freq / s->factor + smooth * freq;
}

int kern_rope_init(struct kern_rope *rope, int n_rot, bool neox, float theta,
		   float freq_scale, const struct kern_rope_llama3 *llama3,
		   const float *freq_factors)
{
	int half = n_rot / 2;

	if (n_rot <= 0 || n_rot % 2 || half > (int)(sizeof(rope->inv_freq) /
						      sizeof(rope->inv_freq[0])))
		return -EINVAL;
	memset(rope, 0, sizeof(*rope));
	rope->n_rot = n_rot;
	rope->neox = neox;
	rope->freq_scale = freq_scale;
	for (int i = 0; i < half; i++) {
		double freq = pow(theta, -2.0 * i / n_rot);

		if (llama3)
			freq = llama3_scale_freq(freq, llama3);
		if (freq_factors)
			freq /= freq_factors[i];
		rope->inv_freq[i] = (float)freq;
	}
	return 0;
}

void kern_rope_apply(const struct kern_rope *rope, float *x, int n_heads,
		     int head_dim, int pos)
{
	int half = rope->n_rot / 2;
	float cos_t[512], sin_t[512];

	/* The angle is formed in double so large positions keep their
	 * fractional turns. */
	for (int i = 0; i < half; i++) {
		double angle = (double)pos * rope->freq_scale * rope->inv_freq[i];

		cos_t[i] = (float)cos(angle);
		sin_t[i] = (float)sin(angle);
	}
	for (int h = 0; h < n_heads; h++) {
		float *v = x + (size_t)h * head_dim;

		for (int i = 0; i < half; i++) {
			int i0 = rope->neox ? i : 2 * i;
			int i1 = rope->neox ? i + half : 2 * i + 1;
			float x0 = v[i0], x1 = v[i1];

			v[i0] = x0 * cos_t[i] - x1 * sin_t[i];
			v[i1] = x0 * sin_t[i] + x1 * cos_t[i];
		}
	}
}

/* ==== Attention ========================================================= */

void kern_attention_ops(const struct kern_ops *ops, float *out,
			const float *q, int n_heads, int n_kv_heads,
			int head_dim, int h0, int h1,
			const struct kern_kv_run *runs, int n_runs,
			enum kern_type kv_type, float scale, float *scratch)
{
	int slot = kern_type_slot(kv_type);
	size_t row_bytes = kern_row_bytes(kv_type,
					  (int64_t)n_kv_heads * head_dim);
	size_t head_bytes = kern_row_bytes(kv_type, head_dim);
	int group = n_heads / n_kv_heads;

	for (int h = h0; h < h1; h++) {
		size_t kv_off = (size_t)(h / group) * head_bytes;
		const float *qh = q + (size_t)h * head_dim;
		float *oh = out + (size_t)h * head_dim;
		int n = 0;

		/* Scores of every key of every run, in order. */
		for (int r = 0; r < n_runs; r++) {
			const char *k = (const char *)runs[r].k + kv_off;

			for (int i = 0; i < runs[r].n; i++)
				scratch[n++] = scale * ops->kv_dot[slot](
					qh, k + (size_t)i * row_bytes, head_dim);
		}
		ops->softmax(scratch, n);

		/* Weighted sum of the values in the same order. */
		memset(oh, 0, (size_t)head_dim * sizeof(float));
		n = 0;
		for (int r = 0; r < n_runs; r++) {
			const char *v = (const char *)runs[r].v + kv_off;

			for (int i = 0; i < runs[r].n; i++)
				ops->kv_axpy[slot](oh, scratch[n++],
						   v + (size_t)i * row_bytes,
						   head_dim);
		}
	}
}
