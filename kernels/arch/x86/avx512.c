/* SPDX-License-Identifier: MIT */
/*
 * avx512.c - the AVX-512 kernels (KERN_ISA_AVX512: F, BW, VL, DQ, VNNI).
 * Quantised dot products use VNNI vpdpbusd (unsigned by signed bytes into
 * int32) on 256-bit vectors, one 32-element block per vector. Float
 * kernels run 16 wide with an exp built on vscalefps. This file alone is
 * compiled with the AVX-512 flags, and dispatch.c calls it only after
 * CPUID and XGETBV report those features.
 */
#include "config.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels-internal.h"

/* ==== Helpers =========================================================== */

static inline float hsum256_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
			      _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

/*
 * Returns e^x for each lane: n = round(x log2 e), r = x - n ln2 in two
 * parts, a degree 7 Taylor polynomial for e^r, then vscalefps multiplies
 * by 2^n, which underflows to 0 and overflows to inf as expf does. x is
 * clamped to [-104, 89] first so -inf gives 0 rather than NaN.
 */
static inline __m512 exp512(__m512 x)
{
	__m512 n, r, p;

	x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)),
			  _mm512_set1_ps(89.0f));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
				 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	p = _mm512_set1_ps(1.0f / 5040);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	return _mm512_scalef_ps(p, n);
}

/* Lane mask for the last @left (< 16) elements of a row. */
static inline __mmask16 tail_mask(int left)
{
	return (__mmask16)((1u << left) - 1);
}

/* ==== Quantising x ====================================================== */

static inline float amax512(const float *x, int n)
{
	__m512 m = _mm512_setzero_ps();

	for (int i = 0; i < n; i += 16)
		m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
	return _mm512_reduce_max_ps(m);
}

/* Rounds 16 floats times @id to int8 (round to nearest even, as lrintf)
 * and returns their int32 values. */
static inline __m512i quantize_16(const float *x, __m512 id, int8_t *dst)
{
	__m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), id));

	_mm_storeu_si128((__m128i *)dst, _mm512_cvtsepi32_epi8(q));
	return q;
}

static void avx512_quantize_qx(const float *x, void *dst, int n)
{
	struct kern_block_qx *b = dst;

	for (int i = 0; i < n / KERN_QX; i++) {
		const float *v = x + i * KERN_QX;
		__m512 id;

		b[i].d = amax512(v, KERN_QX) / 127;
		id = _mm512_set1_ps(b[i].d ? 1 / b[i].d : 0);
		b[i].sum = _mm512_reduce_add_epi32(_mm512_add_epi32(
			quantize_16(v, id, b[i].qs),
			quantize_16(v + 16, id, b[i].qs + 16)));
	}
}

static void avx512_quantize_qk(const float *x, void *dst, int n)
{
	struct kern_block_qk *b = dst;

	for (int i = 0; i < n / KERN_QK_K; i++) {
		const float *v = x + i * KERN_QK_K;
		__m512 id;

		b[i].d = amax512(v, KERN_QK_K) / 127;
		id = _mm512_set1_ps(b[i].d ? 1 / b[i].d : 0);
		for (int j = 0; j < KERN_QK_K / 16; j++)
			b[i].bsums[j] = (int16_t)_mm512_reduce_add_epi32(
				quantize_16(v + 16 * j, id, b[i].qs + 16 * j));
	}
}

/* ==== Float dot products ================================================ */

static inline __m512 load_f16(const uint16_t *p)
{
	return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_bf16(const uint16_t *p)
{
	__m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));

	return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

static inline __m512 maskload_f16(const uint16_t *p, __mmask16 m)
{
	return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

static inline __m512 maskload_bf16(const uint16_t *p, __mmask16 m)
{
	__m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));

	return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

static float avx512_dot_f32(int n, const void *w, const void *x)
{
	const float *a = w, *b = x;
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int i = 0;

	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i),
				     _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16),
				     _mm512_loadu_ps(b + i + 16), s1);
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i),
				     _mm512_loadu_ps(b + i), s0);
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i),
				     _mm512_maskz_loadu_ps(m, b + i), s1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static float avx512_dot_f16(int n, const void *w, const void *x)
{
	const uint16_t *a = w;
	const float *b = x;
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int i = 0;

	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(load_f16(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(load_f16(a + i + 16),
				     _mm512_loadu_ps(b + i + 16), s1);
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_fmadd_ps(load_f16(a + i), _mm512_loadu_ps(b + i), s0);
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		s1 = _mm512_fmadd_ps(maskload_f16(a + i, m),
				     _mm512_maskz_loadu_ps(m, b + i), s1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static float avx512_dot_bf16(int n, const void *w, const void *x)
{
	const uint16_t *a = w;
	const float *b = x;
	__m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
	int i = 0;

	for (; i + 32 <= n; i += 32) {
		s0 = _mm512_fmadd_ps(load_bf16(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(load_bf16(a + i + 16),
				     _mm512_loadu_ps(b + i + 16), s1);
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_fmadd_ps(load_bf16(a + i), _mm512_loadu_ps(b + i), s0);
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		s1 = _mm512_fmadd_ps(maskload_bf16(a + i, m),
				     _mm512_maskz_loadu_ps(m, b + i), s1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* ==== Quantised dot products =========================================== */

/* Adds to @acc the 8 int32 sums of 4 products each of signed bytes @w and
 * @x: vpdpbusd wants unsigned by signed, so |w| by x with w's sign. */
static inline __m256i dot_i8(__m256i acc, __m256i w, __m256i x)
{
	return _mm256_dpbusd_epi32(acc, _mm256_abs_epi8(w),
				   _mm256_sign_epi8(x, w));
}

static float avx512_dot_q8_0(int n, const void *w, const void *x)
{
	const struct kern_block_q8_0 *a = w;
	const struct kern_block_qx *b = x;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	const __m256i zero = _mm256_setzero_si256();
	int nb = n / KERN_QK8_0, i = 0;

	for (; i + 2 <= nb; i += 2) {
		__m256i p0 = dot_i8(zero,
			_mm256_loadu_si256((const __m256i *)a[i].qs),
			_mm256_loadu_si256((const __m256i *)b[i].qs));
		__m256i p1 = dot_i8(zero,
			_mm256_loadu_si256((const __m256i *)a[i + 1].qs),
			_mm256_loadu_si256((const __m256i *)b[i + 1].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				       _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i + 1].d) *
						      b[i + 1].d),
				       _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i p = dot_i8(zero,
			_mm256_loadu_si256((const __m256i *)a[i].qs),
			_mm256_loadu_si256((const __m256i *)b[i].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				       _mm256_cvtepi32_ps(p), acc0);
	}
	return hsum256_ps(_mm256_add_ps(acc0, acc1));
}

/* Returns the 8 int32 sums of 4 products of one Q4_0 block with its x
 * block, the offset of 8 folded into lane 0. */
static inline __m256i dot_q4_0_block(const struct kern_block_q4_0 *a,
				     const struct kern_block_qx *b)
{
	const __m256i low4 = _mm256_set1_epi8(0xF);
	__m128i q = _mm_loadu_si128((const __m128i *)a->qs);
	/* Elements 0-15 are the low nibbles, 16-31 the high ones. */
	__m256i nib = _mm256_and_si256(
		_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low4);

	return _mm256_dpbusd_epi32(_mm256_setr_epi32(-8 * b->sum, 0, 0, 0,
						     0, 0, 0, 0),
				   nib, _mm256_loadu_si256((const __m256i *)b->qs));
}

static float avx512_dot_q4_0(int n, const void *w, const void *x)
{
	const struct kern_block_q4_0 *a = w;
	const struct kern_block_qx *b = x;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int nb = n / KERN_QK4_0, i = 0;

	for (; i + 2 <= nb; i += 2) {
		__m256i p0 = dot_q4_0_block(&a[i], &b[i]);
		__m256i p1 = dot_q4_0_block(&a[i + 1], &b[i + 1]);

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				       _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i + 1].d) *
						      b[i + 1].d),
				       _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++)
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				       _mm256_cvtepi32_ps(dot_q4_0_block(&a[i],
									 &b[i])),
				       acc0);
	return hsum256_ps(_mm256_add_ps(acc0, acc1));
}

/*
 * The K types widen through vpmaddubsw and vpmaddwd with the sub-block
 * scale as the int16 multiplier. That is two instructions per 32 values,
 * the same count as vpdpbusd followed by an int32 multiply by the scale.
 */
/*
 * NOTE: single-token Q4_0 and Q4_K rows are compute-bound here: with 2
 * threads on the 2-core Zen 5 guest they read about 23-27 GB/s of weights,
 * below the 37-40 GB/s the memory gives. Packing two blocks per 512-bit
 * vector would be the next step.
 */
static float avx512_dot_q4_k(int n, const void *w, const void *x)
{
	const struct kern_block_q4_k *a = w;
	const struct kern_block_qk *b = x;
	const __m256i low4 = _mm256_set1_epi8(0xF);
	/* Repeats each of 8 bytes twice: one min per pair of bsums. */
	const __m128i pairs = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3,
					    4, 4, 5, 5, 6, 6, 7, 7);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (int i = 0; i < n / KERN_QK_K; i++) {
		__m256i sumi = _mm256_setzero_si256();
		uint8_t sc[8], m[8];
		__m256i mins, pm;

		kern_q4_k_unpack_scales(a[i].scales, sc, m);
		mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
			_mm_loadl_epi64((const __m128i *)m), pairs));
		pm = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)
							  b[i].bsums), mins);
		accm = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].dmin) * b[i].d),
				       _mm256_cvtepi32_ps(pm), accm);

		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)
						       (a[i].qs + 32 * c));
			__m256i x0 = _mm256_loadu_si256((const __m256i *)
							(b[i].qs + 64 * c));
			__m256i x1 = _mm256_loadu_si256((const __m256i *)
							(b[i].qs + 64 * c + 32));
			__m256i lo = _mm256_and_si256(q, low4);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4),
						      low4);
			__m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0),
						       _mm256_set1_epi16(sc[2 * c]));
			__m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1),
						       _mm256_set1_epi16(sc[2 * c + 1]));

			sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
		}
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				      _mm256_cvtepi32_ps(sumi), acc);
	}
	return hsum256_ps(_mm256_sub_ps(acc, accm));
}

/* Byte masks that broadcast int16 scale 2r of a 128-bit lane of 8 over
 * the low lane and scale 2r + 1 over the high lane. */
#define Q6_K_SCALE_MASK(r) _mm256_setr_epi8(				\
	4 * (r), 4 * (r) + 1, 4 * (r), 4 * (r) + 1, 4 * (r), 4 * (r) + 1,	\
	4 * (r), 4 * (r) + 1, 4 * (r), 4 * (r) + 1, 4 * (r), 4 * (r) + 1,	\
	4 * (r), 4 * (r) + 1, 4 * (r), 4 * (r) + 1,			\
	4 * (r) + 2, 4 * (r) + 3, 4 * (r) + 2, 4 * (r) + 3, 4 * (r) + 2,	\
	4 * (r) + 3, 4 * (r) + 2, 4 * (r) + 3, 4 * (r) + 2, 4 * (r) + 3,	\
	4 * (r) + 2, 4 * (r) + 3, 4 * (r) + 2, 4 * (r) + 3, 4 * (r) + 2,	\
	4 * (r) + 3)

static float avx512_dot_q6_k(int n, const void *w, const void *x)
{
	const struct kern_block_q6_k *a = w;
	const struct kern_block_qk *b = x;
	const __m256i low4 = _mm256_set1_epi8(0xF);
	const __m256i bits45 = _mm256_set1_epi8(0x30);
	const __m256i smask[4] = {
		Q6_K_SCALE_MASK(0), Q6_K_SCALE_MASK(1),
		Q6_K_SCALE_MASK(2), Q6_K_SCALE_MASK(3),
	};
	__m256 acc = _mm256_setzero_ps();

	for (int i = 0; i < n / KERN_QK_K; i++) {
		/* The offset of 32: sum over j of scale_j * bsums_j. */
		__m256i corr = _mm256_madd_epi16(
			_mm256_loadu_si256((const __m256i *)b[i].bsums),
			_mm256_cvtepi8_epi16(_mm_loadu_si128(
				(const __m128i *)a[i].scales)));
		__m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(),
						_mm256_slli_epi32(corr, 5));

		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = a[i].ql + 64 * h;
			__m256i q0 = _mm256_loadu_si256((const __m256i *)ql);
			__m256i q1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
			__m256i qh = _mm256_loadu_si256((const __m256i *)
							(a[i].qh + 32 * h));
			__m256i sc = _mm256_broadcastsi128_si256(
				_mm_cvtepi8_epi16(_mm_loadl_epi64(
					(const __m128i *)(a[i].scales + 8 * h))));
			__m256i v[4];

			/* Run r of 32 takes bit pair r of qh as bits 4-5. */
			v[0] = _mm256_or_si256(_mm256_and_si256(q0, low4),
				_mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45));
			v[1] = _mm256_or_si256(_mm256_and_si256(q1, low4),
				_mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45));
			v[2] = _mm256_or_si256(
				_mm256_and_si256(_mm256_srli_epi16(q0, 4), low4),
				_mm256_and_si256(qh, bits45));
			v[3] = _mm256_or_si256(
				_mm256_and_si256(_mm256_srli_epi16(q1, 4), low4),
				_mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45));
			for (int r = 0; r < 4; r++) {
				__m256i xs = _mm256_loadu_si256((const __m256i *)
					(b[i].qs + 128 * h + 32 * r));
				__m256i p = _mm256_maddubs_epi16(v[r], xs);

				sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p,
					_mm256_shuffle_epi8(sc, smask[r])));
			}
		}
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				      _mm256_cvtepi32_ps(sumi), acc);
	}
	return hsum256_ps(acc);
}

/* ==== Four tokens per weight row ====================================== */

/* The token loops are unrolled so the 4 accumulators stay in registers. */

/* Returns x row @t of a dot4 call. */
static inline const void *x_row(const void *x, size_t stride, int t)
{
	return (const char *)x + stride * (size_t)t;
}

static void avx512_dot4_q8_0(int n, const void *w, const void *x,
			   size_t x_stride, float *y, size_t y_stride)
{
	const struct kern_block_q8_0 *a = w;
	const struct kern_block_qx *b[4];
	__m256 acc[4];

	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++) {
		b[t] = x_row(x, x_stride, t);
		acc[t] = _mm256_setzero_ps();
	}
	for (int i = 0; i < n / KERN_QK8_0; i++) {
		__m256i wv = _mm256_loadu_si256((const __m256i *)a[i].qs);
		__m256i aw = _mm256_abs_epi8(wv);
		float dw = f16(a[i].d);

		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++) {
			__m256i xs = _mm256_sign_epi8(_mm256_loadu_si256(
				(const __m256i *)b[t][i].qs), wv);
			__m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(),
							aw, xs);

			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * b[t][i].d),
						 _mm256_cvtepi32_ps(p), acc[t]);
		}
	}
	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++)
		y[t * y_stride] = hsum256_ps(acc[t]);
}

static void avx512_dot4_q4_0(int n, const void *w, const void *x,
			   size_t x_stride, float *y, size_t y_stride)
{
	const struct kern_block_q4_0 *a = w;
	const struct kern_block_qx *b[4];
	const __m256i low4 = _mm256_set1_epi8(0xF);
	__m256 acc[4];

	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++) {
		b[t] = x_row(x, x_stride, t);
		acc[t] = _mm256_setzero_ps();
	}
	for (int i = 0; i < n / KERN_QK4_0; i++) {
		__m128i q = _mm_loadu_si128((const __m128i *)a[i].qs);
		__m256i nib = _mm256_and_si256(
			_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low4);
		float dw = f16(a[i].d);

		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++) {
			__m256i p = _mm256_dpbusd_epi32(_mm256_setr_epi32(
				-8 * b[t][i].sum, 0, 0, 0, 0, 0, 0, 0), nib,
				_mm256_loadu_si256((const __m256i *)b[t][i].qs));
			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * b[t][i].d),
						 _mm256_cvtepi32_ps(p), acc[t]);
		}
	}
	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++)
		y[t * y_stride] = hsum256_ps(acc[t]);
}

static void avx512_dot4_q4_k(int n, const void *w, const void *x,
			   size_t x_stride, float *y, size_t y_stride)
{
	const struct kern_block_q4_k *a = w;
	const struct kern_block_qk *b[4];
	const __m256i low4 = _mm256_set1_epi8(0xF);
	const __m128i pairs = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3,
					    4, 4, 5, 5, 6, 6, 7, 7);
	__m256 acc[4];

	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++) {
		b[t] = x_row(x, x_stride, t);
		acc[t] = _mm256_setzero_ps();
	}
	for (int i = 0; i < n / KERN_QK_K; i++) {
		__m256i sumi[4];
		uint8_t sc[8], m[8];
		__m256i mins;
		float d = f16(a[i].d), dmin = f16(a[i].dmin);

		kern_q4_k_unpack_scales(a[i].scales, sc, m);
		mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(
			_mm_loadl_epi64((const __m128i *)m), pairs));
		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++)
			sumi[t] = _mm256_setzero_si256();

		for (int c = 0; c < 4; c++) {
			__m256i q = _mm256_loadu_si256((const __m256i *)
						       (a[i].qs + 32 * c));
			__m256i lo = _mm256_and_si256(q, low4);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4),
						      low4);
			__m256i sc0 = _mm256_set1_epi16(sc[2 * c]);
			__m256i sc1 = _mm256_set1_epi16(sc[2 * c + 1]);

			#pragma GCC unroll 4
			for (int t = 0; t < 4; t++) {
				const int8_t *xq = b[t][i].qs + 64 * c;
				__m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(
					lo, _mm256_loadu_si256((const __m256i *)xq)),
					sc0);
				__m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(
					hi, _mm256_loadu_si256((const __m256i *)
							       (xq + 32))), sc1);

				sumi[t] = _mm256_add_epi32(sumi[t],
							   _mm256_add_epi32(p0, p1));
			}
		}
		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++) {
			__m256i pm = _mm256_madd_epi16(_mm256_loadu_si256(
				(const __m256i *)b[t][i].bsums), mins);

			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * b[t][i].d),
						 _mm256_cvtepi32_ps(sumi[t]), acc[t]);
			acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * b[t][i].d),
						  _mm256_cvtepi32_ps(pm), acc[t]);
		}
	}
	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++)
		y[t * y_stride] = hsum256_ps(acc[t]);
}

static void avx512_dot4_q6_k(int n, const void *w, const void *x,
			   size_t x_stride, float *y, size_t y_stride)
{
	const struct kern_block_q6_k *a = w;
	const struct kern_block_qk *b[4];
	const __m256i low4 = _mm256_set1_epi8(0xF);
	const __m256i bits45 = _mm256_set1_epi8(0x30);
	const __m256i smask[4] = {
		Q6_K_SCALE_MASK(0), Q6_K_SCALE_MASK(1),
		Q6_K_SCALE_MASK(2), Q6_K_SCALE_MASK(3),
	};
	__m256 acc[4];

	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++) {
		b[t] = x_row(x, x_stride, t);
		acc[t] = _mm256_setzero_ps();
	}
	for (int i = 0; i < n / KERN_QK_K; i++) {
		__m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(
			(const __m128i *)a[i].scales));
		__m256i sumi[4];
		float d = f16(a[i].d);

		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++) {
			__m256i corr = _mm256_madd_epi16(_mm256_loadu_si256(
				(const __m256i *)b[t][i].bsums), scales16);

			sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(),
						   _mm256_slli_epi32(corr, 5));
		}
		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = a[i].ql + 64 * h;
			__m256i q0 = _mm256_loadu_si256((const __m256i *)ql);
			__m256i q1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
			__m256i qh = _mm256_loadu_si256((const __m256i *)
							(a[i].qh + 32 * h));
			__m256i sc = _mm256_broadcastsi128_si256(
				_mm_cvtepi8_epi16(_mm_loadl_epi64(
					(const __m128i *)(a[i].scales + 8 * h))));
			__m256i v[4];

			v[0] = _mm256_or_si256(_mm256_and_si256(q0, low4),
				_mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45));
			v[1] = _mm256_or_si256(_mm256_and_si256(q1, low4),
				_mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45));
			v[2] = _mm256_or_si256(
				_mm256_and_si256(_mm256_srli_epi16(q0, 4), low4),
				_mm256_and_si256(qh, bits45));
			v[3] = _mm256_or_si256(
				_mm256_and_si256(_mm256_srli_epi16(q1, 4), low4),
				_mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45));
			for (int r = 0; r < 4; r++) {
				__m256i scale = _mm256_shuffle_epi8(sc, smask[r]);

				#pragma GCC unroll 4
				for (int t = 0; t < 4; t++) {
					__m256i xs = _mm256_loadu_si256(
						(const __m256i *)(b[t][i].qs +
								  128 * h + 32 * r));

					sumi[t] = _mm256_add_epi32(sumi[t],
						_mm256_madd_epi16(_mm256_maddubs_epi16(
							v[r], xs), scale));
				}
			}
		}
		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++)
			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * b[t][i].d),
						 _mm256_cvtepi32_ps(sumi[t]), acc[t]);
	}
	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++)
		y[t * y_stride] = hsum256_ps(acc[t]);
}

/* ==== Element-wise kernels ============================================= */

static void avx512_rmsnorm(float *y, const float *x, const float *weight,
			   int n, float eps)
{
	__m512 s0 = _mm512_setzero_ps(), vs;
	float scale;
	int i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512 a = _mm512_loadu_ps(x + i);

		s0 = _mm512_fmadd_ps(a, a, s0);
	}
	if (i < n) {
		__m512 a = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);

		s0 = _mm512_fmadd_ps(a, a, s0);
	}
	scale = 1 / sqrtf(_mm512_reduce_add_ps(s0) / n + eps);
	vs = _mm512_set1_ps(scale);

	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, _mm512_mul_ps(
			_mm512_mul_ps(_mm512_loadu_ps(x + i), vs),
			_mm512_loadu_ps(weight + i)));
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		_mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(
			_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs),
			_mm512_maskz_loadu_ps(m, weight + i)));
	}
}

static void avx512_softmax(float *x, int n)
{
	__m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
	__m512 vm, inv;
	int i = 0;

	for (; i + 16 <= n; i += 16)
		vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
	if (i < n)
		vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(
			_mm512_set1_ps(-INFINITY), tail_mask(n - i), x + i));
	vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));

	for (i = 0; i + 16 <= n; i += 16) {
		__m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));

		_mm512_storeu_ps(x + i, e);
		vsum = _mm512_add_ps(vsum, e);
	}
	if (i < n) {
		__mmask16 m = tail_mask(n - i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i),
						vm));

		_mm512_mask_storeu_ps(x + i, m, e);
		vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
	}

	inv = _mm512_set1_ps(1 / _mm512_reduce_add_ps(vsum));
	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		_mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(
			_mm512_maskz_loadu_ps(m, x + i), inv));
	}
}

static inline __m512 swiglu16(__m512 g, __m512 u)
{
	__m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));

	return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(
		_mm512_set1_ps(1), e)), u);
}

static void avx512_swiglu(float *y, const float *gate, const float *up, int n)
{
	int i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, swiglu16(_mm512_loadu_ps(gate + i),
						 _mm512_loadu_ps(up + i)));
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		_mm512_mask_storeu_ps(y + i, m, swiglu16(
			_mm512_maskz_loadu_ps(m, gate + i),
			_mm512_maskz_loadu_ps(m, up + i)));
	}
}

/* ==== Attention rows ==================================================== */

static float avx512_kv_dot_f32(const float *q, const void *k, int n)
{
	return avx512_dot_f32(n, k, q);
}

static float avx512_kv_dot_f16(const float *q, const void *k, int n)
{
	return avx512_dot_f16(n, k, q);
}

static inline __m512 load_i8_ps(const int8_t *p)
{
	return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
		_mm_loadu_si128((const __m128i *)p)));
}

static float avx512_kv_dot_q8_0(const float *q, const void *k, int n)
{
	const struct kern_block_q8_0 *b = k;
	__m512 acc = _mm512_setzero_ps();

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		const float *qb = q + i * KERN_QK8_0;
		__m512 part = _mm512_mul_ps(_mm512_loadu_ps(qb),
					    load_i8_ps(b[i].qs));

		part = _mm512_fmadd_ps(_mm512_loadu_ps(qb + 16),
				       load_i8_ps(b[i].qs + 16), part);
		acc = _mm512_fmadd_ps(part, _mm512_set1_ps(f16(b[i].d)), acc);
	}
	return _mm512_reduce_add_ps(acc);
}

static void avx512_kv_axpy_f32(float *y, float a, const void *v, int n)
{
	const float *x = v;
	__m512 va = _mm512_set1_ps(a);
	int i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i),
							_mm512_loadu_ps(y + i)));
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		_mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va,
			_mm512_maskz_loadu_ps(m, x + i),
			_mm512_maskz_loadu_ps(m, y + i)));
	}
}

static void avx512_kv_axpy_f16(float *y, float a, const void *v, int n)
{
	const uint16_t *x = v;
	__m512 va = _mm512_set1_ps(a);
	int i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, load_f16(x + i),
							_mm512_loadu_ps(y + i)));
	if (i < n) {
		__mmask16 m = tail_mask(n - i);

		_mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va,
			maskload_f16(x + i, m), _mm512_maskz_loadu_ps(m, y + i)));
	}
}

static void avx512_kv_axpy_q8_0(float *y, float a, const void *v, int n)
{
	const struct kern_block_q8_0 *b = v;

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		__m512 ad = _mm512_set1_ps(a * f16(b[i].d));
		float *yb = y + i * KERN_QK8_0;

		_mm512_storeu_ps(yb, _mm512_fmadd_ps(ad, load_i8_ps(b[i].qs),
						     _mm512_loadu_ps(yb)));
		_mm512_storeu_ps(yb + 16, _mm512_fmadd_ps(ad,
			load_i8_ps(b[i].qs + 16), _mm512_loadu_ps(yb + 16)));
	}
}

/* ==== Half rows ========================================================= */

static void avx512_f16_to_f32_row(const uint16_t *src, float *dst, int64_t n)
{
	int64_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(dst + i, load_f16(src + i));
	if (i < n) {
		__mmask16 m = tail_mask((int)(n - i));

		_mm512_mask_storeu_ps(dst + i, m, maskload_f16(src + i, m));
	}
}

static void avx512_f32_to_f16_row(const float *src, uint16_t *dst, int64_t n)
{
	int64_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(dst + i),
				    _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
						    _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		dst[i] = kern_f32_to_f16(src[i]);
}

const struct kern_ops kern_ops_avx512 = {
	.dot = {
		[KERN_SLOT_F32] = avx512_dot_f32,
		[KERN_SLOT_F16] = avx512_dot_f16,
		[KERN_SLOT_BF16] = avx512_dot_bf16,
		[KERN_SLOT_Q8_0] = avx512_dot_q8_0,
		[KERN_SLOT_Q4_0] = avx512_dot_q4_0,
		[KERN_SLOT_Q4_K] = avx512_dot_q4_k,
		[KERN_SLOT_Q6_K] = avx512_dot_q6_k,
	},
	.dot4 = {
		[KERN_SLOT_Q8_0] = avx512_dot4_q8_0,
		[KERN_SLOT_Q4_0] = avx512_dot4_q4_0,
		[KERN_SLOT_Q4_K] = avx512_dot4_q4_k,
		[KERN_SLOT_Q6_K] = avx512_dot4_q6_k,
	},
	.quantize_qx = avx512_quantize_qx,
	.quantize_qk = avx512_quantize_qk,
	.rmsnorm = avx512_rmsnorm,
	.softmax = avx512_softmax,
	.swiglu = avx512_swiglu,
	.kv_dot = {
		[KERN_SLOT_F32] = avx512_kv_dot_f32,
		[KERN_SLOT_F16] = avx512_kv_dot_f16,
		[KERN_SLOT_Q8_0] = avx512_kv_dot_q8_0,
	},
	.kv_axpy = {
		[KERN_SLOT_F32] = avx512_kv_axpy_f32,
		[KERN_SLOT_F16] = avx512_kv_axpy_f16,
		[KERN_SLOT_Q8_0] = avx512_kv_axpy_q8_0,
	},
	.f16_to_f32_row = avx512_f16_to_f32_row,
	.f32_to_f16_row = avx512_f32_to_f16_row,
};
