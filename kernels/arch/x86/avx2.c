/* SPDX-License-Identifier: MIT */
/*
 * avx2.c - the AVX2 + FMA + F16C kernels (KERN_ISA_AVX2). Quantised dot
 * products multiply unsigned by signed bytes with vpmaddubsw and widen
 * with vpmaddwd; float kernels use 8-wide FMA with a polynomial exp. This
 * file alone is compiled with -mavx2 -mfma -mf16c, and dispatch.c calls it
 * only after CPUID and XGETBV report those features.
 */
#include "config.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels-internal.h"

/* ==== Helpers =========================================================== */

static inline float hsum_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
			      _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v),
				  _mm256_extracti128_si256(v, 1));

	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
	return _mm_cvtsi128_si32(s);
}

static inline float hmax_ps(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v),
			      _mm256_extractf128_ps(v, 1));

	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline float f16(uint16_t h)
{
	return _cvtsh_ss(h);
}

/*
 * Returns e^x for each lane. x is clamped to [-87.3, 88.3] so 2^n stays a
 * normal float, and lanes below -87.3 (including -inf) return 0. The
 * degree 7 Taylor polynomial on |r| <= ln2/2 is within about 2 ulp.
 */
static inline __m256 exp_ps(__m256 x)
{
	const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
	__m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
	__m256 n, r, p;
	__m256i e;

	x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
	n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
			    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
	p = _mm256_set1_ps(1.0f / 5040);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
					       _mm256_set1_epi32(127)), 23);
	p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
	return _mm256_and_ps(p, keep);
}

/* Rounds 32 floats times @id to int8 (round to nearest even, as lrintf)
 * and returns their sum. */
static inline int quantize_32(const float *x, __m256 id, int8_t *dst)
{
	__m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id));
	__m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id));
	__m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id));
	__m256i d = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id));
	__m256i sum = _mm256_add_epi32(_mm256_add_epi32(a, b),
				       _mm256_add_epi32(c, d));
	/* The packs work per 128-bit lane, so the dwords come out in the
	 * order a0-3 b0-3 c0-3 d0-3 a4-7 b4-7 c4-7 d4-7. */
	__m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b),
				       _mm256_packs_epi32(c, d));

	p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5,
							     2, 6, 3, 7));
	_mm256_storeu_si256((__m256i *)dst, p);
	return hsum_epi32(sum);
}

static inline float amax_ps(const float *x, int n)
{
	const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
	__m256 m = _mm256_setzero_ps();

	for (int i = 0; i < n; i += 8)
		m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), mask));
	return hmax_ps(m);
}

/* ==== Quantising x ====================================================== */

static void avx2_quantize_qx(const float *x, void *dst, int n)
{
	struct kern_block_qx *b = dst;

	for (int i = 0; i < n / KERN_QX; i++) {
		const float *v = x + i * KERN_QX;
		float id;

		b[i].d = amax_ps(v, KERN_QX) / 127;
		id = b[i].d ? 1 / b[i].d : 0;
		b[i].sum = quantize_32(v, _mm256_set1_ps(id), b[i].qs);
	}
}

static void avx2_quantize_qk(const float *x, void *dst, int n)
{
	struct kern_block_qk *b = dst;

	for (int i = 0; i < n / KERN_QK_K; i++) {
		const float *v = x + i * KERN_QK_K;
		__m256 id;

		b[i].d = amax_ps(v, KERN_QK_K) / 127;
		id = _mm256_set1_ps(b[i].d ? 1 / b[i].d : 0);
		for (int j = 0; j < KERN_QK_K / 32; j++)
			quantize_32(v + 32 * j, id, b[i].qs + 32 * j);
		for (int j = 0; j < KERN_QK_K / 16; j++) {
			__m128i q = _mm_loadu_si128((const __m128i *)
						    (b[i].qs + 16 * j));
			__m256i w = _mm256_cvtepi8_epi16(q);

			w = _mm256_madd_epi16(w, _mm256_set1_epi16(1));
			b[i].bsums[j] = (int16_t)hsum_epi32(w);
		}
	}
}

/* ==== Float dot products ================================================ */

static float avx2_dot_f32(int n, const void *w, const void *x)
{
	const float *a = w, *b = x;
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	__m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
	float sum;
	int i = 0;

	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i),
				     _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
				     _mm256_loadu_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16),
				     _mm256_loadu_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24),
				     _mm256_loadu_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i),
				     _mm256_loadu_ps(b + i), s0);
	sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(s0, s1),
				    _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
		sum += a[i] * b[i];
	return sum;
}

static inline __m256 load_f16(const uint16_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 load_bf16(const uint16_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));

	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float avx2_dot_f16(int n, const void *w, const void *x)
{
	const uint16_t *a = w;
	const float *b = x;
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	float sum;
	int i = 0;

	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(load_f16(a + i + 8),
				     _mm256_loadu_ps(b + i + 8), s1);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(b + i), s0);
	sum = hsum_ps(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		sum += f16(a[i]) * b[i];
	return sum;
}

static float avx2_dot_bf16(int n, const void *w, const void *x)
{
	const uint16_t *a = w;
	const float *b = x;
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	float sum;
	int i = 0;

	for (; i + 16 <= n; i += 16) {
		s0 = _mm256_fmadd_ps(load_bf16(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(load_bf16(a + i + 8),
				     _mm256_loadu_ps(b + i + 8), s1);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(load_bf16(a + i), _mm256_loadu_ps(b + i), s0);
	sum = hsum_ps(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		sum += kern_bf16_to_f32(a[i]) * b[i];
	return sum;
}

/* ==== Quantised dot products =========================================== */

/* Returns the 8 int32 sums of 4 products each of signed bytes @w and @x:
 * |w| is unsigned and w's sign moves onto x, as vpmaddubsw needs. */
static inline __m256i dot_i8(__m256i w, __m256i x)
{
	__m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w),
					 _mm256_sign_epi8(x, w));

	return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static float avx2_dot_q8_0(int n, const void *w, const void *x)
{
	const struct kern_block_q8_0 *a = w;
	const struct kern_block_qx *b = x;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int nb = n / KERN_QK8_0, i = 0;

	for (; i + 2 <= nb; i += 2) {
		__m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)a[i].qs),
				    _mm256_loadu_si256((const __m256i *)b[i].qs));
		__m256i p1 = dot_i8(_mm256_loadu_si256((const __m256i *)a[i + 1].qs),
				    _mm256_loadu_si256((const __m256i *)b[i + 1].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				       _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i + 1].d) *
						      b[i + 1].d),
				       _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i p = dot_i8(_mm256_loadu_si256((const __m256i *)a[i].qs),
				   _mm256_loadu_si256((const __m256i *)b[i].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(a[i].d) * b[i].d),
				       _mm256_cvtepi32_ps(p), acc0);
	}
	return hsum_ps(_mm256_add_ps(acc0, acc1));
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
	__m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(nib,
		_mm256_loadu_si256((const __m256i *)b->qs)),
		_mm256_set1_epi16(1));

	return _mm256_add_epi32(p, _mm256_setr_epi32(-8 * b->sum, 0, 0, 0,
						     0, 0, 0, 0));
}

static float avx2_dot_q4_0(int n, const void *w, const void *x)
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
	return hsum_ps(_mm256_add_ps(acc0, acc1));
}

static float avx2_dot_q4_k(int n, const void *w, const void *x)
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
	return hsum_ps(_mm256_sub_ps(acc, accm));
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

static float avx2_dot_q6_k(int n, const void *w, const void *x)
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
	return hsum_ps(acc);
}

/* ==== Four tokens per weight row ====================================== */

/* The token loops are unrolled so the 4 accumulators stay in registers. */

/* Returns x row @t of a dot4 call. */
static inline const void *x_row(const void *x, size_t stride, int t)
{
	return (const char *)x + stride * (size_t)t;
}

static void avx2_dot4_q8_0(int n, const void *w, const void *x,
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
		__m256i aw = _mm256_sign_epi8(wv, wv);
		float dw = f16(a[i].d);

		#pragma GCC unroll 4
		for (int t = 0; t < 4; t++) {
			__m256i xs = _mm256_sign_epi8(_mm256_loadu_si256(
				(const __m256i *)b[t][i].qs), wv);
			__m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs),
						      _mm256_set1_epi16(1));

			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * b[t][i].d),
						 _mm256_cvtepi32_ps(p), acc[t]);
		}
	}
	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++)
		y[t * y_stride] = hsum_ps(acc[t]);
}

static void avx2_dot4_q4_0(int n, const void *w, const void *x,
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
			__m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(nib,
				_mm256_loadu_si256((const __m256i *)b[t][i].qs)),
				_mm256_set1_epi16(1));

			p = _mm256_add_epi32(p, _mm256_setr_epi32(
				-8 * b[t][i].sum, 0, 0, 0, 0, 0, 0, 0));
			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * b[t][i].d),
						 _mm256_cvtepi32_ps(p), acc[t]);
		}
	}
	#pragma GCC unroll 4
	for (int t = 0; t < 4; t++)
		y[t * y_stride] = hsum_ps(acc[t]);
}

static void avx2_dot4_q4_k(int n, const void *w, const void *x,
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
		y[t * y_stride] = hsum_ps(acc[t]);
}

static void avx2_dot4_q6_k(int n, const void *w, const void *x,
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
		y[t * y_stride] = hsum_ps(acc[t]);
}

/* ==== Element-wise kernels ============================================= */

static void avx2_rmsnorm(float *y, const float *x, const float *weight,
			 int n, float eps)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	float ss, scale;
	int i = 0;

	for (; i + 16 <= n; i += 16) {
		__m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);

		s0 = _mm256_fmadd_ps(a, a, s0);
		s1 = _mm256_fmadd_ps(b, b, s1);
	}
	ss = hsum_ps(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		ss += x[i] * x[i];
	scale = 1 / sqrtf(ss / n + eps);

	__m256 vs = _mm256_set1_ps(scale);

	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_mul_ps(
			_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
			_mm256_loadu_ps(weight + i)));
	for (; i < n; i++)
		y[i] = x[i] * scale * weight[i];
}

static void avx2_softmax(float *x, int n)
{
	__m256 vmax = _mm256_set1_ps(-INFINITY), vsum = _mm256_setzero_ps();
	float max, sum, inv;
	int i = 0;

	for (; i + 8 <= n; i += 8)
		vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
	max = hmax_ps(vmax);
	for (; i < n; i++)
		max = fmaxf(max, x[i]);

	for (i = 0; i + 8 <= n; i += 8) {
		__m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i),
						_mm256_set1_ps(max)));

		_mm256_storeu_ps(x + i, e);
		vsum = _mm256_add_ps(vsum, e);
	}
	sum = hsum_ps(vsum);
	for (; i < n; i++) {
		x[i] = expf(x[i] - max);
		sum += x[i];
	}

	inv = 1 / sum;
	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i),
						      _mm256_set1_ps(inv)));
	for (; i < n; i++)
		x[i] *= inv;
}

static void avx2_swiglu(float *y, const float *gate, const float *up, int n)
{
	const __m256 one = _mm256_set1_ps(1);
	int i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256 g = _mm256_loadu_ps(gate + i);
		__m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
		__m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));

		_mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
	}
	for (; i < n; i++)
		y[i] = gate[i] / (1 + expf(-gate[i])) * up[i];
}

/* ==== Attention rows ==================================================== */

static float avx2_kv_dot_f32(const float *q, const void *k, int n)
{
	return avx2_dot_f32(n, k, q);
}

static float avx2_kv_dot_f16(const float *q, const void *k, int n)
{
	return avx2_dot_f16(n, k, q);
}

static float avx2_kv_dot_q8_0(const float *q, const void *k, int n)
{
	const struct kern_block_q8_0 *b = k;
	__m256 acc = _mm256_setzero_ps();

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		const float *qb = q + i * KERN_QK8_0;
		__m256 part = _mm256_setzero_ps();

		for (int j = 0; j < KERN_QK8_0; j += 8) {
			__m256 kv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
				_mm_loadl_epi64((const __m128i *)(b[i].qs + j))));

			part = _mm256_fmadd_ps(_mm256_loadu_ps(qb + j), kv, part);
		}
		acc = _mm256_fmadd_ps(part, _mm256_set1_ps(f16(b[i].d)), acc);
	}
	return hsum_ps(acc);
}

static void avx2_kv_axpy_f32(float *y, float a, const void *v, int n)
{
	const float *x = v;
	__m256 va = _mm256_set1_ps(a);
	int i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
							_mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}

static void avx2_kv_axpy_f16(float *y, float a, const void *v, int n)
{
	const uint16_t *x = v;
	__m256 va = _mm256_set1_ps(a);
	int i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load_f16(x + i),
							_mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * f16(x[i]);
}

static void avx2_kv_axpy_q8_0(float *y, float a, const void *v, int n)
{
	const struct kern_block_q8_0 *b = v;

	for (int i = 0; i < n / KERN_QK8_0; i++) {
		__m256 ad = _mm256_set1_ps(a * f16(b[i].d));
		float *yb = y + i * KERN_QK8_0;

		for (int j = 0; j < KERN_QK8_0; j += 8) {
			__m256 kv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
				_mm_loadl_epi64((const __m128i *)(b[i].qs + j))));

			_mm256_storeu_ps(yb + j, _mm256_fmadd_ps(ad, kv,
						_mm256_loadu_ps(yb + j)));
		}
	}
}

/* ==== Half rows ========================================================= */

static void avx2_f16_to_f32_row(const uint16_t *src, float *dst, int64_t n)
{
	int64_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, load_f16(src + i));
	for (; i < n; i++)
		dst[i] = f16(src[i]);
}

static void avx2_f32_to_f16_row(const float *src, uint16_t *dst, int64_t n)
{
	int64_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i),
				 _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
						 _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		dst[i] = kern_f32_to_f16(src[i]);
}

const struct kern_ops kern_ops_avx2 = {
	.dot = {
		[KERN_SLOT_F32] = avx2_dot_f32,
		[KERN_SLOT_F16] = avx2_dot_f16,
		[KERN_SLOT_BF16] = avx2_dot_bf16,
		[KERN_SLOT_Q8_0] = avx2_dot_q8_0,
		[KERN_SLOT_Q4_0] = avx2_dot_q4_0,
		[KERN_SLOT_Q4_K] = avx2_dot_q4_k,
		[KERN_SLOT_Q6_K] = avx2_dot_q6_k,
	},
	.dot4 = {
		[KERN_SLOT_Q8_0] = avx2_dot4_q8_0,
		[KERN_SLOT_Q4_0] = avx2_dot4_q4_0,
		[KERN_SLOT_Q4_K] = avx2_dot4_q4_k,
		[KERN_SLOT_Q6_K] = avx2_dot4_q6_k,
	},
	.quantize_qx = avx2_quantize_qx,
	.quantize_qk = avx2_quantize_qk,
	.rmsnorm = avx2_rmsnorm,
	.softmax = avx2_softmax,
	.swiglu = avx2_swiglu,
	.kv_dot = {
		[KERN_SLOT_F32] = avx2_kv_dot_f32,
		[KERN_SLOT_F16] = avx2_kv_dot_f16,
		[KERN_SLOT_Q8_0] = avx2_kv_dot_q8_0,
	},
	.kv_axpy = {
		[KERN_SLOT_F32] = avx2_kv_axpy_f32,
		[KERN_SLOT_F16] = avx2_kv_axpy_f16,
		[KERN_SLOT_Q8_0] = avx2_kv_axpy_q8_0,
	},
	.f16_to_f32_row = avx2_f16_to_f32_row,
	.f32_to_f16_row = avx2_f32_to_f16_row,
};
