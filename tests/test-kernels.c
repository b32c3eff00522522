/* SPDX-License-Identifier: MIT */
/*
 * test-kernels.c - unit tests of kernels/: half and bfloat16 conversion,
 * quantisation round trips, every SIMD kernel against its scalar version
 * on each instruction set this CPU runs, matrix products against a double
 * precision product, the thread pool, RoPE and attention.
 */
#include "config.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels-internal.h"

#include "cunit-main.h"

/* ==== Tolerances ======================================================== */

/*
 * Float sums of n random-signed terms taken in two different orders differ
 * by about sqrt(n) rounding units of the sum of |term|, like a random walk;
 * 16 times that leaves room for unlucky inputs, yet stays below the cost
 * of one dropped or doubled term (about sum |term| / n) at every size
 * tested.
 */
static double tol_accum(int n)
{
	return 16 * sqrt((double)n) * FLT_EPSILON / 2;
}

/*
 * Per-type factors on tol_accum for SIMD against scalar matrix rows. The
 * quantised types add identical integer sums and differ only in how the
 * per-block float products are summed, so the same bound holds. Each block
 * product also carries 2 or 3 roundings, hence the factor 2.
 */
#define TOL_F32 1.0
#define TOL_F16 1.0
#define TOL_BF16 1.0
#define TOL_Q8_0 2.0
#define TOL_Q4_0 2.0
#define TOL_Q4_K 2.0
#define TOL_Q6_K 2.0

/*
 * Quantise-then-dequantise error bounds, as fractions of the largest
 * magnitude in the block (32 values, or 256 for the K types):
 * Q8_0 rounds to a step of amax / 127, so half a step.
 * Q4_0 maps the largest magnitude to -8, so a value of the opposite sign
 * and the same size clamps to +7: one whole step of amax / 8.
 * Q4_K spans each 32 with 15 steps of at most 2 amax / 15, so half a step
 * is amax / 15 (0.067). Rounding the 6-bit scale moves the top level by at
 * most 15 * 0.5 / 63 of a step, which leaves 0.1 as the bound.
 * Q6_K maps each 16's largest magnitude to -32, so up to a step of
 * amax / 32 at the clamp, plus 8-bit scale rounding (amax / 254): 0.04.
 */
#define RT_Q8_0 (0.5 / 127 * 1.01)
#define RT_Q4_0 (1.0 / 8 * 1.01)
#define RT_Q4_K 0.1
#define RT_Q6_K 0.04
/* F16 and BF16 round to 11 and 8 significant bits: half an ulp. */
#define RT_F16 (1.0 / 2048)
#define RT_BF16 (1.0 / 256)

/*
 * The SIMD exp is a degree 7 polynomial. Over 2^20 random inputs in
 * [-20, 20] the SwiGLU and softmax outputs stayed within 2.7e-7 relative
 * of the scalar ones (about 4.4 ulp), so 2e-6 leaves a wide margin. The
 * absolute floor covers outputs that underflow to zero in one version.
 */
#define TOL_EXP_REL 2e-6
#define TOL_EXP_ABS 1e-30
/* rmsnorm sums squares in float against the scalar double: 1e-5. */
#define TOL_RMSNORM 1e-5

/* ==== Helpers =========================================================== */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static void rng_seed(uint64_t seed)
{
	rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
}

static uint32_t rng_u32(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* Returns a uniform float in [-1, 1). */
static float rng_float(void)
{
	return (float)rng_u32() / 2147483648.0f - 1.0f;
}

static float *random_floats(int n, float scale)
{
	float *v = malloc((size_t)n * sizeof(float));

	CU_ASSERT_FATAL(v != NULL);
	for (int i = 0; i < n; i++)
		v[i] = rng_float() * scale;
	return v;
}

static const enum kern_type all_types[] = {
	KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_BF16, KERN_TYPE_Q8_0,
	KERN_TYPE_Q4_0, KERN_TYPE_Q4_K, KERN_TYPE_Q6_K,
};
#define N_TYPES (int)(sizeof(all_types) / sizeof(all_types[0]))

static double type_tol(enum kern_type type)
{
	switch (type) {
	case KERN_TYPE_F32: return TOL_F32;
	case KERN_TYPE_F16: return TOL_F16;
	case KERN_TYPE_BF16: return TOL_BF16;
	case KERN_TYPE_Q8_0: return TOL_Q8_0;
	case KERN_TYPE_Q4_0: return TOL_Q4_0;
	case KERN_TYPE_Q4_K: return TOL_Q4_K;
	case KERN_TYPE_Q6_K: return TOL_Q6_K;
	}
	return 0;
}

/* Stores the row lengths to test for @type and returns their count: 1, 3
 * and 33 blocks and 4097 elements rounded down to whole blocks, or 1, 3,
 * 31, 33 and 4097 for element types. */
static int test_sizes(enum kern_type type, int *sizes)
{
	int be = kern_type_block_elems(type);

	if (be == 1) {
		sizes[0] = 1;
		sizes[1] = 3;
		sizes[2] = 31;
		sizes[3] = 33;
		sizes[4] = 4097;
		return 5;
	}
	sizes[0] = be;
	sizes[1] = 3 * be;
	sizes[2] = 33 * be;
	sizes[3] = 4097 / be * be;
	return 4;
}

/* Makes @n_out rows of random weights of @type; returns the raw rows and
 * stores their dequantised values in *@deq. */
static void *random_weights(enum kern_type type, int n_in, int n_out,
			    float **deq)
{
	size_t rb = kern_row_bytes(type, n_in);
	char *w = malloc(rb * (size_t)n_out);
	float *d = malloc((size_t)n_in * n_out * sizeof(float));

	CU_ASSERT_FATAL(w != NULL && d != NULL);
	for (int r = 0; r < n_out; r++) {
		float *src = random_floats(n_in, 0.5f);

		kern_quantize_row(type, src, w + rb * r, n_in);
		kern_dequantize_row(type, w + rb * r, d + (size_t)n_in * r,
				    n_in);
		free(src);
	}
	*deq = d;
	return w;
}

/* Calls @fn once for each SIMD instruction set this CPU runs, with it
 * selected, then restores the previous choice. */
static void for_each_simd_isa(void (*fn)(enum kern_isa isa))
{
	enum kern_isa saved = kern_isa_current();

	for (int isa = KERN_ISA_SCALAR + 1; isa < KERN_ISA_COUNT; isa++) {
		if (!kern_isa_supported(isa))
			continue;
		CU_ASSERT_EQUAL_FATAL(kern_isa_set(isa), 0);
		fn(isa);
	}
	CU_ASSERT_EQUAL(kern_isa_set(saved), 0);
}

static uint32_t bits_of(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float float_of(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

/* ==== Half and bfloat16 ================================================= */

static void test_f16_normal_rounding(void)
{
	CU_ASSERT_EQUAL(kern_f32_to_f16(1.0f), 0x3C00);
	CU_ASSERT_EQUAL(kern_f32_to_f16(-2.0f), 0xC000);
	CU_ASSERT_EQUAL(kern_f32_to_f16(65504.0f), 0x7BFF);
	/* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to even. */
	CU_ASSERT_EQUAL(kern_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);
	CU_ASSERT_EQUAL(kern_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);
	CU_ASSERT_EQUAL(kern_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
	/* A mantissa carry bumps the exponent: 2 - 2^-12 rounds to 2. */
	CU_ASSERT_EQUAL(kern_f32_to_f16(2.0f - 0x1p-12f), 0x4000);
}

static void test_f16_overflow_inf_nan(void)
{
	/* 65520 ties between 65504 (odd) and 65536 (even, unrepresentable). */
	CU_ASSERT_EQUAL(kern_f32_to_f16(65519.0f), 0x7BFF);
	CU_ASSERT_EQUAL(kern_f32_to_f16(65520.0f), 0x7C00);
	CU_ASSERT_EQUAL(kern_f32_to_f16(1e10f), 0x7C00);
	CU_ASSERT_EQUAL(kern_f32_to_f16(INFINITY), 0x7C00);
	CU_ASSERT_EQUAL(kern_f32_to_f16(-INFINITY), 0xFC00);
	CU_ASSERT_EQUAL(kern_f32_to_f16(NAN) & 0x7C00, 0x7C00);
	CU_ASSERT_NOT_EQUAL(kern_f32_to_f16(NAN) & 0x3FF, 0);
	/* A NaN whose payload sits only in the low bits stays a NaN. */
	CU_ASSERT_NOT_EQUAL(kern_f32_to_f16(float_of(0x7F800001)) & 0x3FF, 0);
	CU_ASSERT(isinf(kern_f16_to_f32(0x7C00)));
	CU_ASSERT(kern_f16_to_f32(0xFC00) < 0);
	CU_ASSERT(isnan(kern_f16_to_f32(0x7E00)));
	CU_ASSERT(isnan(kern_f16_to_f32(0x7C01)));
}

static void test_f16_subnormal(void)
{
	CU_ASSERT_EQUAL(kern_f16_to_f32(0x0001), 0x1p-24f);
	CU_ASSERT_EQUAL(kern_f16_to_f32(0x03FF), 1023 * 0x1p-24f);
	CU_ASSERT_EQUAL(kern_f16_to_f32(0x8001), -0x1p-24f);
	CU_ASSERT_EQUAL(kern_f32_to_f16(0x1p-24f), 0x0001);
	CU_ASSERT_EQUAL(kern_f32_to_f16(1023 * 0x1p-24f), 0x03FF);
	/* 2^-25 ties between 0 and the smallest subnormal: goes to 0. */
	CU_ASSERT_EQUAL(kern_f32_to_f16(0x1p-25f), 0x0000);
	CU_ASSERT_EQUAL(kern_f32_to_f16(0x1p-25f * 1.0001f), 0x0001);
	/* 1.5 and 2.5 times 2^-24 tie to 2 and 2. */
	CU_ASSERT_EQUAL(kern_f32_to_f16(1.5f * 0x1p-24f), 0x0002);
	CU_ASSERT_EQUAL(kern_f32_to_f16(2.5f * 0x1p-24f), 0x0002);
	/* The largest subnormal plus half a step rounds up to the smallest
	 * normal, 2^-14. */
	CU_ASSERT_EQUAL(kern_f32_to_f16(1023.5f * 0x1p-24f), 0x0400);
	CU_ASSERT_EQUAL(kern_f32_to_f16(1e-10f), 0x0000);
	CU_ASSERT_EQUAL(kern_f32_to_f16(-1e-10f), 0x8000);
	CU_ASSERT_EQUAL(kern_f32_to_f16(-0.0f), 0x8000);
}

static void test_f16_all_round_trip(void)
{
	int bad = 0;

	for (uint32_t h = 0; h < 65536; h++) {
		float f = kern_f16_to_f32((uint16_t)h);

		if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF))
			bad += !isnan(f);
		else
			bad += kern_f32_to_f16(f) != h;
	}
	CU_ASSERT_EQUAL(bad, 0);
}

static void f16_rows_isa(enum kern_isa isa)
{
	const struct kern_ops *ops = kern_ops_get();
	enum { N = 65536 + 37 };
	uint16_t *h = malloc(N * sizeof(uint16_t));
	uint16_t *h2 = malloc(N * sizeof(uint16_t));
	float *f = malloc(N * sizeof(float));
	int bad_widen = 0, bad_narrow = 0;

	CU_ASSERT_FATAL(h && h2 && f);
	for (int i = 0; i < N; i++)
		h[i] = (uint16_t)i;
	ops->f16_to_f32_row(h, f, N);
	for (int i = 0; i < N; i++) {
		float want = kern_f16_to_f32(h[i]);

		if (isnan(want))
			bad_widen += !isnan(f[i]);
		else
			bad_widen += bits_of(f[i]) != bits_of(want);
	}

	/* Random floats across the half range, ties and subnormals. */
	for (int i = 0; i < N; i++) {
		uint32_t u = rng_u32();

		f[i] = float_of((u & 0x8FFFFFFF) | 0x30000000);
		if (i % 7 == 0)	/* exact ties: 13 dropped bits 1000... */
			f[i] = float_of((bits_of(f[i]) & ~0x1FFFu) | 0x1000);
	}
	/* Overflow, infinities and NaN, one in each SIMD lane position. */
	for (int i = 0; i < 16; i++) {
		static const float specials[4] = {
			65520.0f, 1e10f, -INFINITY, NAN,
		};

		f[100 + i] = specials[i % 4];
	}
	ops->f32_to_f16_row(f, h2, N);
	for (int i = 0; i < N; i++) {
		uint16_t want = kern_f32_to_f16(f[i]);

		if (isnan(f[i]))
			bad_narrow += (h2[i] & 0x7C00) != 0x7C00 ||
				      !(h2[i] & 0x3FF);
		else
			bad_narrow += h2[i] != want;
	}
	CU_ASSERT_EQUAL(bad_widen, 0);
	CU_ASSERT_EQUAL(bad_narrow, 0);
	free(h);
	free(h2);
	free(f);
}

static void test_f16_rows_simd(void)
{
	for_each_simd_isa(f16_rows_isa);
}

static void test_bf16_edges(void)
{
	CU_ASSERT_EQUAL(kern_f32_to_bf16(1.0f), 0x3F80);
	/* Ties: 0x3F808000 goes down to even 0x3F80, 0x3F818000 up. */
	CU_ASSERT_EQUAL(kern_f32_to_bf16(float_of(0x3F808000)), 0x3F80);
	CU_ASSERT_EQUAL(kern_f32_to_bf16(float_of(0x3F818000)), 0x3F82);
	CU_ASSERT_EQUAL(kern_f32_to_bf16(float_of(0x3F808001)), 0x3F81);
	CU_ASSERT_EQUAL(kern_f32_to_bf16(INFINITY), 0x7F80);
	CU_ASSERT_EQUAL(kern_f32_to_bf16(-INFINITY), 0xFF80);
	CU_ASSERT_EQUAL(kern_f32_to_bf16(FLT_MAX), 0x7F80);
	CU_ASSERT(isnan(kern_bf16_to_f32(kern_f32_to_bf16(NAN))));
	/* A NaN with payload only in the dropped bits must stay NaN. */
	CU_ASSERT(isnan(kern_bf16_to_f32(kern_f32_to_bf16(
		float_of(0x7F800001)))));
	/* Subnormal floats keep their top bits. */
	CU_ASSERT_EQUAL(kern_f32_to_bf16(float_of(0x00010000)), 0x0001);
	CU_ASSERT_EQUAL(kern_bf16_to_f32(0x0001), float_of(0x00010000));
	CU_ASSERT_EQUAL(kern_bf16_to_f32(0xC040), -3.0f);
}

/* ==== Type table and round trips ======================================= */

static void test_type_table(void)
{
	CU_ASSERT_EQUAL(kern_type_block_bytes(KERN_TYPE_Q8_0), 34);
	CU_ASSERT_EQUAL(kern_type_block_bytes(KERN_TYPE_Q4_0), 18);
	CU_ASSERT_EQUAL(kern_type_block_bytes(KERN_TYPE_Q4_K), 144);
	CU_ASSERT_EQUAL(kern_type_block_bytes(KERN_TYPE_Q6_K), 210);
	CU_ASSERT_EQUAL(kern_type_block_elems(KERN_TYPE_Q6_K), 256);
	CU_ASSERT_EQUAL(kern_row_bytes(KERN_TYPE_Q4_K, 512), 288);
	CU_ASSERT_EQUAL(kern_row_bytes(KERN_TYPE_Q4_K, 500), 0);
	CU_ASSERT_EQUAL(kern_row_bytes(KERN_TYPE_F16, 3), 6);
	CU_ASSERT_EQUAL(kern_row_bytes(KERN_TYPE_F32, 0), 0);
	CU_ASSERT_STRING_EQUAL(kern_type_name(KERN_TYPE_Q4_K), "Q4_K");
	CU_ASSERT_STRING_EQUAL(kern_type_name(KERN_TYPE_BF16), "BF16");
	CU_ASSERT_STRING_EQUAL(kern_type_name(3), "unknown");
	CU_ASSERT(kern_type_supported(KERN_TYPE_Q6_K));
	CU_ASSERT(!kern_type_supported(10));
}

static void test_round_trip_f32(void)
{
	float *x = random_floats(4097, 3.0f);
	float y[4097];

	kern_quantize_row(KERN_TYPE_F32, x, y, 4097);
	CU_ASSERT_EQUAL(memcmp(x, y, sizeof(y)), 0);
	kern_dequantize_row(KERN_TYPE_F32, x, y, 4097);
	CU_ASSERT_EQUAL(memcmp(x, y, sizeof(y)), 0);
	free(x);
}

/* Returns the largest error of a quantise-dequantise round trip of @n
 * values, each divided by the largest magnitude of its @group (or by the
 * value itself, at least 2^-14, when @group is 0). */
static double round_trip_error(enum kern_type type, const float *x, int n,
			       int group)
{
	size_t rb = kern_row_bytes(type, n);
	void *q = malloc(rb);
	float *y = malloc((size_t)n * sizeof(float));
	double worst = 0;

	CU_ASSERT_FATAL(q && y);
	kern_quantize_row(type, x, q, n);
	kern_dequantize_row(type, q, y, n);
	for (int i = 0; i < n; i++) {
		/* Halves below 2^-14 are subnormal, with a fixed step. */
		double ref = fmax(fabs(x[i]), 0x1p-14);
		double err = fabs((double)y[i] - x[i]);

		if (group) {
			int g0 = i / group * group;

			ref = 0;
			for (int j = g0; j < g0 + group; j++)
				ref = fmax(ref, fabs(x[j]));
		}
		if (ref > 0)
			worst = fmax(worst, err / ref);
		else if (err > 0)
			worst = INFINITY;
	}
	free(q);
	free(y);
	return worst;
}

static void test_round_trip_bounds(void)
{
	enum { N = 33 * 256 };
	float *x = random_floats(N, 2.0f);

	/* Blocks with all-positive, all-negative and tiny values too. */
	for (int i = 0; i < 256; i++) {
		x[i] = fabsf(x[i]);
		x[256 + i] = -fabsf(x[256 + i]);
		x[512 + i] *= 1e-2f;
	}
	CU_ASSERT(round_trip_error(KERN_TYPE_F16, x, N, 0) <= RT_F16);
	CU_ASSERT(round_trip_error(KERN_TYPE_BF16, x, N, 0) <= RT_BF16);
	CU_ASSERT(round_trip_error(KERN_TYPE_Q8_0, x, N, 32) <= RT_Q8_0);
	CU_ASSERT(round_trip_error(KERN_TYPE_Q4_0, x, N, 32) <= RT_Q4_0);
	CU_ASSERT(round_trip_error(KERN_TYPE_Q4_K, x, N, 256) <= RT_Q4_K);
	CU_ASSERT(round_trip_error(KERN_TYPE_Q6_K, x, N, 256) <= RT_Q6_K);
	free(x);
}

static void test_round_trip_zero_block(void)
{
	float x[256] = { 0 }, y[256];
	char q[256 * 4];

	for (int t = 0; t < N_TYPES; t++) {
		int bad = 0;

		kern_quantize_row(all_types[t], x, q, 256);
		kern_dequantize_row(all_types[t], q, y, 256);
		for (int i = 0; i < 256; i++)
			bad += y[i] != 0;
		CU_ASSERT_EQUAL(bad, 0);
	}
}

/* Q6_K layout, from a block built by hand: each half of 128 elements has
 * 64 bytes of ql and 32 of qh; element l + 32r of a half takes the low
 * (r < 2) or high nibble of ql[l + 32 (r % 2)] and bit pair r of qh[l]. */
static void test_q6_k_layout(void)
{
	struct kern_block_q6_k b;
	float y[256];

	memset(&b, 0, sizeof(b));
	b.d = 0x3C00;				/* 1.0 */
	for (int j = 0; j < 16; j++)
		b.scales[j] = (int8_t)(j + 1);
	b.ql[0] = 0x21;		/* element 0: 1, element 64: 2 */
	b.ql[37] = 0x03;	/* element 37: 3 */
	b.qh[1] = 0xC0;		/* element 97: high bits 3 */
	b.ql[64 + 2] = 0x0F;	/* element 130: 15 */
	b.qh[32 + 2] = 0x01;	/* element 130: high bits 1 */
	kern_dequantize_row(KERN_TYPE_Q6_K, &b, y, 256);
	CU_ASSERT_EQUAL(y[0], 1 * (1 - 32));
	CU_ASSERT_EQUAL(y[64], 5 * (2 - 32));
	CU_ASSERT_EQUAL(y[37], 3 * (3 - 32));
	CU_ASSERT_EQUAL(y[97], 7 * (48 - 32));
	CU_ASSERT_EQUAL(y[130], 9 * (31 - 32));
	CU_ASSERT_EQUAL(y[255], 16 * (0 - 32));
}

/* Q4_K layout, from a block built by hand. Chunk c of 32 qs bytes holds
 * sub-block 2c in its low nibbles and 2c + 1 in its high ones. Scales and
 * mins of sub-blocks 4-7 split their bits over three bytes. */
static void test_q4_k_layout(void)
{
	struct kern_block_q4_k b;
	float y[256];

	memset(&b, 0, sizeof(b));
	b.d = 0x3C00;		/* 1.0 */
	b.dmin = 0x3800;	/* 0.5 */
	b.scales[2] = 0x40 | 5;	/* scale 2 = 5; bits 4-5 of scale 6 = 1 */
	b.scales[6] = 0x80 | 3;	/* min 2 = 3; bits 4-5 of min 6 = 2 */
	b.scales[10] = 0x97;	/* scale 6 low = 7, min 6 low = 9 */
	b.qs[32 + 3] = 0x5A;	/* element 67: 10, element 99: 5 */
	b.qs[96] = 0x04;	/* element 192: 4 */
	kern_dequantize_row(KERN_TYPE_Q4_K, &b, y, 256);
	/* Sub-block 2: 1 * 5 * q - 0.5 * 3. */
	CU_ASSERT_EQUAL(y[67], 5 * 10 - 1.5f);
	CU_ASSERT_EQUAL(y[64], -1.5f);
	/* Sub-block 3 has scale and min 0. */
	CU_ASSERT_EQUAL(y[99], 0);
	/* Sub-block 6: scale 7 + 16 = 23, min 9 + 32 = 41. */
	CU_ASSERT_EQUAL(y[192], 23 * 4 - 20.5f);
	CU_ASSERT_EQUAL(y[193], -20.5f);
	CU_ASSERT_EQUAL(y[224], 0);
}

/* Q4_K scale packing: sub-block j gets the 6-bit scale and min of its
 * data. */
static void test_q4_k_scales(void)
{
	struct kern_block_q4_k b;
	float x[256];
	uint8_t sc[8], m[8];

	/* Sub-block j spans [-j, 8j + 1], so scales and mins both grow. */
	for (int j = 0; j < 8; j++)
		for (int l = 0; l < 32; l++)
			x[32 * j + l] = -(float)j + (8.0f * j + 1 + j) * l / 31;
	kern_quantize_row(KERN_TYPE_Q4_K, x, &b, 256);
	for (int j = 0; j < 8; j++)
		kern_q4_k_scale_min(b.scales, j, &sc[j], &m[j]);
	for (int j = 1; j < 8; j++) {
		CU_ASSERT(sc[j] > sc[j - 1]);
		CU_ASSERT(m[j] > m[j - 1]);
	}
	CU_ASSERT_EQUAL(m[0], 0);
	CU_ASSERT_EQUAL(sc[7], 63);
	CU_ASSERT_EQUAL(m[7], 63);
}

/* ==== SIMD against scalar ============================================== */

/* Returns sum |w_i x_i|, the scale of a dot product's rounding error; for
 * Q4_K the scale and min parts can cancel, so both count. */
static double dot_magnitude(enum kern_type type, const void *w,
			    const float *deq, const float *x, int n)
{
	double s = 0;

	for (int i = 0; i < n; i++)
		s += fabs((double)deq[i] * x[i]);
	if (type == KERN_TYPE_Q4_K) {
		const struct kern_block_q4_k *b = w;

		for (int i = 0; i < n; i++) {
			uint8_t sc, m;

			kern_q4_k_scale_min(b[i / 256].scales, i % 256 / 32,
					    &sc, &m);
			s += 2 * fabs(kern_f16_to_f32(b[i / 256].dmin) * m *
				      (double)x[i]);
		}
	}
	return s;
}

static void matmul_simd_isa(enum kern_isa isa)
{
	/* 5 tokens: one group of 4 for the dot4 kernels, then one alone. */
	enum { N_OUT = 3, N_TOK = 5 };
	int sizes[5];

	for (int t = 0; t < N_TYPES; t++) {
		enum kern_type type = all_types[t];
		int ns = test_sizes(type, sizes);

		for (int s = 0; s < ns; s++) {
			int n = sizes[s], bad = 0;
			float *deq, *x = random_floats(n * N_TOK, 1.0f);
			char *w = random_weights(type, n, N_OUT, &deq);
			float y[N_TOK * N_OUT], ref[N_TOK * N_OUT];
			size_t rb = kern_row_bytes(type, n);

			kern_matmul(NULL, y, w, type, x, n, N_OUT, N_TOK);
			CU_ASSERT_EQUAL_FATAL(kern_isa_set(KERN_ISA_SCALAR), 0);
			kern_matmul(NULL, ref, w, type, x, n, N_OUT, N_TOK);
			CU_ASSERT_EQUAL_FATAL(kern_isa_set(isa), 0);

			for (int i = 0; i < N_TOK; i++)
				for (int r = 0; r < N_OUT; r++) {
					double mag = dot_magnitude(type,
						w + rb * r, deq + (size_t)n * r,
						x + (size_t)n * i, n);
					double err = fabs((double)y[i * N_OUT + r] -
							  ref[i * N_OUT + r]);

					bad += err > type_tol(type) *
						     tol_accum(n) * mag;
				}
			if (bad)
				fprintf(stderr, "\n%s %s n=%d: %d rows off\n",
					kern_isa_name(isa),
					kern_type_name(type), n, bad);
			CU_ASSERT_EQUAL(bad, 0);
			free(x);
			free(w);
			free(deq);
		}
	}
}

static void test_matmul_simd(void)
{
	rng_seed(1);
	for_each_simd_isa(matmul_simd_isa);
}

/* The SIMD x quantisers round exactly as the scalar ones. */
static void quantize_x_isa(enum kern_isa isa)
{
	const struct kern_ops *ops = kern_ops_get();
	enum { N = 33 * 256 };
	float *x = random_floats(N, 4.0f);
	struct kern_block_qx *a = malloc(N / 32 * sizeof(*a));
	struct kern_block_qx *b = malloc(N / 32 * sizeof(*b));
	struct kern_block_qk *c = malloc(N / 256 * sizeof(*c));
	struct kern_block_qk *d = malloc(N / 256 * sizeof(*d));

	CU_ASSERT_FATAL(a && b && c && d);
	for (int i = 0; i < 32; i++)	/* an all-zero block */
		x[i] = 0;
	ops->quantize_qx(x, a, N);
	kern_scalar_quantize_qx(x, b, N);
	ops->quantize_qk(x, c, N);
	kern_scalar_quantize_qk(x, d, N);
	CU_ASSERT_EQUAL(memcmp(a, b, N / 32 * sizeof(*a)), 0);
	CU_ASSERT_EQUAL(memcmp(c, d, N / 256 * sizeof(*c)), 0);
	free(x);
	free(a);
	free(b);
	free(c);
	free(d);
}

static void test_quantize_x_simd(void)
{
	rng_seed(2);
	for_each_simd_isa(quantize_x_isa);
}

static int count_rel_errors(const float *y, const float *ref, int n,
			    double rel, double abs_floor)
{
	int bad = 0;

	for (int i = 0; i < n; i++)
		bad += !(fabs((double)y[i] - ref[i]) <=
			 rel * fabs(ref[i]) + abs_floor);
	return bad;
}

static const int elem_sizes[] = { 1, 3, 31, 33, 4097 };

static void elementwise_isa(enum kern_isa isa)
{
	const struct kern_ops *ops = kern_ops_get();

	for (size_t s = 0; s < sizeof(elem_sizes) / sizeof(elem_sizes[0]); s++) {
		int n = elem_sizes[s];
		float *x = random_floats(n, 8.0f), *u = random_floats(n, 2.0f);
		float *wt = random_floats(n, 1.0f);
		float *y = malloc((size_t)n * sizeof(float));
		float *ref = malloc((size_t)n * sizeof(float));

		CU_ASSERT_FATAL(y && ref);
		ops->rmsnorm(y, x, wt, n, 1e-5f);
		kern_ops_scalar.rmsnorm(ref, x, wt, n, 1e-5f);
		CU_ASSERT_EQUAL(count_rel_errors(y, ref, n, TOL_RMSNORM, 0), 0);

		ops->swiglu(y, x, u, n);
		kern_ops_scalar.swiglu(ref, x, u, n);
		CU_ASSERT_EQUAL(count_rel_errors(y, ref, n, TOL_EXP_REL,
						 TOL_EXP_ABS), 0);

		memcpy(y, x, (size_t)n * sizeof(float));
		memcpy(ref, x, (size_t)n * sizeof(float));
		ops->softmax(y, n);
		kern_ops_scalar.softmax(ref, n);
		CU_ASSERT_EQUAL(count_rel_errors(y, ref, n, TOL_EXP_REL,
						 TOL_EXP_ABS), 0);
		free(x);
		free(u);
		free(wt);
		free(y);
		free(ref);
	}
}

static void test_elementwise_simd(void)
{
	rng_seed(3);
	for_each_simd_isa(elementwise_isa);
}

/* Attention row kernels on head sizes 32, 96 and 4096 (Q8_0 needs
 * multiples of 32) and 1, 3, 31, 33, 4097 for F32 and F16. */
static void kv_rows_isa(enum kern_isa isa)
{
	const struct kern_ops *ops = kern_ops_get();
	static const enum kern_type kv_types[] = {
		KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_Q8_0,
	};

	for (int t = 0; t < 3; t++) {
		enum kern_type type = kv_types[t];
		int slot = kern_type_slot(type);
		int sizes[5], ns = test_sizes(type, sizes);

		for (int s = 0; s < ns; s++) {
			int n = sizes[s];
			float *deq, *q = random_floats(n, 1.0f);
			char *k = random_weights(type, n, 1, &deq);
			float *y = random_floats(n, 1.0f);
			float *ref = malloc((size_t)n * sizeof(float));
			double mag = 0, d1, d2;

			CU_ASSERT_FATAL(ref != NULL);
			for (int i = 0; i < n; i++)
				mag += fabs((double)q[i] * deq[i]);
			d1 = ops->kv_dot[slot](q, k, n);
			d2 = kern_ops_scalar.kv_dot[slot](q, k, n);
			CU_ASSERT(fabs(d1 - d2) <= 2 * tol_accum(n) * mag);

			memcpy(ref, y, (size_t)n * sizeof(float));
			ops->kv_axpy[slot](y, 0.37f, k, n);
			kern_ops_scalar.kv_axpy[slot](ref, 0.37f, k, n);
			/* One FMA against a multiply and add: 2 roundings. */
			CU_ASSERT_EQUAL(count_rel_errors(y, ref, n, 0, 1e-6), 0);
			free(q);
			free(k);
			free(deq);
			free(y);
			free(ref);
		}
	}
}

static void test_kv_rows_simd(void)
{
	rng_seed(4);
	for_each_simd_isa(kv_rows_isa);
}

/* ==== Matrix products against double precision ========================= */

/*
 * Checks kern_matmul on the selected ISA against a double product of the
 * dequantised weights and x. The quantised types round x to 8 bits per
 * block of 32 (Q8_0, Q4_0) or 256 (Q4_K, Q6_K), so each x_i moves by at
 * most half a step, amax(block) / 254, bounding the error by
 * sum |w_i| amax(block of i) / 254, plus float rounding.
 */
static void matmul_exact_isa(enum kern_isa isa)
{
	enum { N_OUT = 5, N_TOK = 5 };
	int sizes[5];

	for (int t = 0; t < N_TYPES; t++) {
		enum kern_type type = all_types[t];
		int ns = test_sizes(type, sizes), bad = 0;
		int xblock = type == KERN_TYPE_Q4_K || type == KERN_TYPE_Q6_K ?
			     256 : type == KERN_TYPE_Q8_0 ||
			     type == KERN_TYPE_Q4_0 ? 32 : 0;

		for (int s = 0; s < ns; s++) {
			int n = sizes[s];
			float *deq, *x = random_floats(n * N_TOK, 1.0f);
			char *w = random_weights(type, n, N_OUT, &deq);
			float y[N_TOK * N_OUT];

			kern_matmul(NULL, y, w, type, x, n, N_OUT, N_TOK);
			for (int i = 0; i < N_TOK; i++) {
				const float *xi = x + (size_t)n * i;

				for (int r = 0; r < N_OUT; r++) {
					const float *wr = deq + (size_t)n * r;
					double exact = 0, mag = 0, qerr = 0;

					for (int j = 0; j < n; j++) {
						exact += (double)wr[j] * xi[j];
						mag += fabs((double)wr[j] * xi[j]);
					}
					for (int j = 0; xblock && j < n; j += xblock) {
						double amax = 0, wsum = 0;

						for (int l = j; l < j + xblock; l++) {
							amax = fmax(amax, fabs(xi[l]));
							wsum += fabs(wr[l]);
						}
						qerr += wsum * amax / 254;
					}
					bad += fabs(y[i * N_OUT + r] - exact) >
					       qerr * 1.001 + 4 * tol_accum(n) *
					       (mag + qerr);
				}
			}
			free(x);
			free(w);
			free(deq);
		}
		if (bad)
			fprintf(stderr, "\n%s %s: %d outputs off\n",
				kern_isa_name(isa), kern_type_name(type), bad);
		CU_ASSERT_EQUAL(bad, 0);
	}
}

static void test_matmul_exact(void)
{
	enum kern_isa saved = kern_isa_current();

	rng_seed(5);
	CU_ASSERT_EQUAL_FATAL(kern_isa_set(KERN_ISA_SCALAR), 0);
	matmul_exact_isa(KERN_ISA_SCALAR);
	CU_ASSERT_EQUAL(kern_isa_set(saved), 0);
	for_each_simd_isa(matmul_exact_isa);
}

/* ==== Thread pool ======================================================= */

static void pool_count_task(void *arg, int ith, int nth)
{
	int *slots = arg;

	slots[ith] += nth;
}

static void test_pool_runs_each_share(void)
{
	for (int nt = 1; nt <= 3; nt++) {
		struct kern_pool *pool = kern_pool_create(nt);
		int slots[4] = { 0 };

		CU_ASSERT_FATAL(pool != NULL);
		CU_ASSERT_EQUAL(kern_pool_threads(pool), nt);
		for (int i = 0; i < 1000; i++)
			kern_pool_run(pool, pool_count_task, slots);
		for (int i = 0; i < nt; i++)
			CU_ASSERT_EQUAL(slots[i], 1000 * nt);
		CU_ASSERT_EQUAL(slots[nt], 0);
		kern_pool_destroy(pool);
	}
	CU_ASSERT_EQUAL(kern_pool_threads(NULL), 1);
	CU_ASSERT(kern_pool_create(0) == NULL);
}

static void test_pool_null_inline(void)
{
	int slots[2] = { 0 };

	kern_pool_run(NULL, pool_count_task, slots);
	CU_ASSERT_EQUAL(slots[0], 1);
	CU_ASSERT_EQUAL(slots[1], 0);
}

static void test_pool_matmul_identical(void)
{
	static const enum kern_type types[] = {
		KERN_TYPE_Q8_0, KERN_TYPE_Q4_K, KERN_TYPE_F16,
	};
	enum { N_IN = 512, N_OUT = 67, N_TOK = 5 };

	rng_seed(6);
	for (int t = 0; t < 3; t++) {
		float *deq, *x = random_floats(N_IN * N_TOK, 1.0f);
		char *w = random_weights(types[t], N_IN, N_OUT, &deq);
		float ref[N_TOK * N_OUT], y[N_TOK * N_OUT];

		for (int tok = 1; tok <= N_TOK; tok += N_TOK - 1) {
			kern_matmul(NULL, ref, w, types[t], x, N_IN, N_OUT, tok);
			for (int nt = 1; nt <= 3; nt++) {
				struct kern_pool *pool = kern_pool_create(nt);

				CU_ASSERT_FATAL(pool != NULL);
				memset(y, 0, sizeof(y));
				kern_matmul(pool, y, w, types[t], x, N_IN, N_OUT,
					    tok);
				CU_ASSERT_EQUAL(memcmp(y, ref, (size_t)tok *
						       N_OUT * sizeof(float)), 0);
				kern_pool_destroy(pool);
			}
		}
		free(x);
		free(w);
		free(deq);
	}
}

/* ==== RoPE ============================================================== */

static void test_rope_normal(void)
{
	struct kern_rope rope;
	float x[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	/* theta 10000, n_rot 4: frequencies 1 and 10000^(-1/2) = 0.01. */
	double a0 = 3 * 1.0, a1 = 3 * 0.01;

	CU_ASSERT_EQUAL_FATAL(kern_rope_init(&rope, 4, false, 10000, 1, NULL,
					     NULL), 0);
	kern_rope_apply(&rope, x, 2, 4, 3);
	CU_ASSERT_DOUBLE_EQUAL(x[0], 1 * cos(a0) - 2 * sin(a0), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[1], 1 * sin(a0) + 2 * cos(a0), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[2], 3 * cos(a1) - 4 * sin(a1), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[3], 3 * sin(a1) + 4 * cos(a1), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[4], 5 * cos(a0) - 6 * sin(a0), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[7], 7 * sin(a1) + 8 * cos(a1), 1e-5);
}

static void test_rope_neox(void)
{
	struct kern_rope rope;
	float x[6] = { 1, 2, 3, 4, 5, 6 };
	/* n_rot 4 of head_dim 6: pairs (0, 2) and (1, 3); 4 and 5 stay.
	 * freq_scale 0.5 halves the position. */
	double a0 = 2 * 0.5 * 1.0, a1 = 2 * 0.5 * 0.01;

	CU_ASSERT_EQUAL_FATAL(kern_rope_init(&rope, 4, true, 10000, 0.5f, NULL,
					     NULL), 0);
	kern_rope_apply(&rope, x, 1, 6, 2);
	CU_ASSERT_DOUBLE_EQUAL(x[0], 1 * cos(a0) - 3 * sin(a0), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[2], 1 * sin(a0) + 3 * cos(a0), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[1], 2 * cos(a1) - 4 * sin(a1), 1e-5);
	CU_ASSERT_DOUBLE_EQUAL(x[3], 2 * sin(a1) + 4 * cos(a1), 1e-5);
	CU_ASSERT_EQUAL(x[4], 5);
	CU_ASSERT_EQUAL(x[5], 6);
}

static void test_rope_llama3(void)
{
	const struct kern_rope_llama3 s = { 8, 1, 4, 8192 };
	struct kern_rope rope;
	float ff[64];
	int n_low = 0, n_high = 0, n_mid = 0;

	for (int i = 0; i < 64; i++)
		ff[i] = 1 + i % 3;
	CU_ASSERT_EQUAL_FATAL(kern_rope_init(&rope, 128, false, 500000, 1, &s,
					     ff), 0);
	for (int i = 0; i < 64; i++) {
		double f = pow(500000, -2.0 * i / 128), want;
		double wavelen = 2 * M_PI / f;

		if (wavelen < 8192 / 4.0) {
			want = f;
			n_high++;
		} else if (wavelen > 8192 / 1.0) {
			want = f / 8;
			n_low++;
		} else {
			double smooth = (8192 / wavelen - 1) / (4 - 1);

			want = (1 - smooth) * f / 8 + smooth * f;
			n_mid++;
		}
		want /= ff[i];
		CU_ASSERT_DOUBLE_EQUAL(rope.inv_freq[i], want, want * 1e-6);
	}
	/* The chosen constants reach all three bands. */
	CU_ASSERT(n_low > 0);
	CU_ASSERT(n_mid > 0);
	CU_ASSERT(n_high > 0);
}

static void test_rope_invalid(void)
{
	struct kern_rope rope;

	CU_ASSERT_EQUAL(kern_rope_init(&rope, 5, false, 1e4f, 1, NULL, NULL),
			-EINVAL);
	CU_ASSERT_EQUAL(kern_rope_init(&rope, 0, false, 1e4f, 1, NULL, NULL),
			-EINVAL);
	CU_ASSERT_EQUAL(kern_rope_init(&rope, 1026, false, 1e4f, 1, NULL,
				       NULL), -EINVAL);
	CU_ASSERT_EQUAL(kern_rope_init(&rope, 1024, false, 1e4f, 1, NULL,
				       NULL), 0);
}

/* ==== Attention and softmax ============================================ */

enum { ATT_HEADS = 4, ATT_KV_HEADS = 2, ATT_DIM = 64, ATT_KEYS = 37 };

static void attention_runs_isa(enum kern_isa isa)
{
	static const enum kern_type kv_types[] = {
		KERN_TYPE_F32, KERN_TYPE_F16, KERN_TYPE_Q8_0,
	};
	const int kv_dim = ATT_KV_HEADS * ATT_DIM;
	float *q = random_floats(ATT_HEADS * ATT_DIM, 1.0f);
	float scratch[ATT_KEYS];

	for (int t = 0; t < 3; t++) {
		enum kern_type type = kv_types[t];
		size_t rb = kern_row_bytes(type, kv_dim);
		float *kd, *vd;
		char *k = random_weights(type, kv_dim, ATT_KEYS, &kd);
		char *v = random_weights(type, kv_dim, ATT_KEYS, &vd);
		struct kern_kv_run one = { k, v, ATT_KEYS };
		struct kern_kv_run three[3] = {
			{ k, v, 10 },
			{ k + 10 * rb, v + 10 * rb, 1 },
			{ k + 11 * rb, v + 11 * rb, ATT_KEYS - 11 },
		};
		float a[ATT_HEADS * ATT_DIM], b[ATT_HEADS * ATT_DIM];
		int bad = 0;

		kern_attention(a, q, ATT_HEADS, ATT_KV_HEADS, ATT_DIM, 0,
			       ATT_HEADS, &one, 1, type, 0.125f, scratch);
		kern_attention(b, q, ATT_HEADS, ATT_KV_HEADS, ATT_DIM, 0,
			       ATT_HEADS, three, 3, type, 0.125f, scratch);
		CU_ASSERT_EQUAL(memcmp(a, b, sizeof(a)), 0);

		/* Against a double computation on the dequantised cache. */
		for (int h = 0; h < ATT_HEADS; h++) {
			int kvh = h / (ATT_HEADS / ATT_KV_HEADS);
			double p[ATT_KEYS], max = -INFINITY, sum = 0;

			for (int j = 0; j < ATT_KEYS; j++) {
				double s = 0;

				for (int d = 0; d < ATT_DIM; d++)
					s += (double)q[h * ATT_DIM + d] *
					     kd[j * kv_dim + kvh * ATT_DIM + d];
				p[j] = 0.125 * s;
				max = fmax(max, p[j]);
			}
			for (int j = 0; j < ATT_KEYS; j++) {
				p[j] = exp(p[j] - max);
				sum += p[j];
			}
			for (int d = 0; d < ATT_DIM; d++) {
				double o = 0;

				for (int j = 0; j < ATT_KEYS; j++)
					o += p[j] / sum *
					     vd[j * kv_dim + kvh * ATT_DIM + d];
				/* Values are below 0.5, so float roundings
				 * stay far below 1e-5. */
				bad += fabs(a[h * ATT_DIM + d] - o) > 1e-5;
			}
		}
		CU_ASSERT_EQUAL(bad, 0);
		free(k);
		free(v);
		free(kd);
		free(vd);
	}
	free(q);
}

static void test_attention_runs(void)
{
	enum kern_isa saved = kern_isa_current();

	rng_seed(7);
	CU_ASSERT_EQUAL_FATAL(kern_isa_set(KERN_ISA_SCALAR), 0);
	attention_runs_isa(KERN_ISA_SCALAR);
	CU_ASSERT_EQUAL(kern_isa_set(saved), 0);
	for_each_simd_isa(attention_runs_isa);
}

static void test_attention_head_range(void)
{
	const int kv_dim = ATT_KV_HEADS * ATT_DIM;
	float *q = random_floats(ATT_HEADS * ATT_DIM, 1.0f);
	float *kd, *vd, scratch[ATT_KEYS];
	char *k = random_weights(KERN_TYPE_F32, kv_dim, ATT_KEYS, &kd);
	char *v = random_weights(KERN_TYPE_F32, kv_dim, ATT_KEYS, &vd);
	struct kern_kv_run run = { k, v, ATT_KEYS };
	float all[ATT_HEADS * ATT_DIM], part[ATT_HEADS * ATT_DIM];

	memset(part, 0x7F, sizeof(part));
	kern_attention(all, q, ATT_HEADS, ATT_KV_HEADS, ATT_DIM, 0, ATT_HEADS,
		       &run, 1, KERN_TYPE_F32, 0.125f, scratch);
	kern_attention(part, q, ATT_HEADS, ATT_KV_HEADS, ATT_DIM, 1, 3, &run, 1,
		       KERN_TYPE_F32, 0.125f, scratch);
	/* Heads 1 and 2 match; heads 0 and 3 are left untouched. */
	CU_ASSERT_EQUAL(memcmp(part + ATT_DIM, all + ATT_DIM,
			       2 * ATT_DIM * sizeof(float)), 0);
	CU_ASSERT_EQUAL(bits_of(part[0]), 0x7F7F7F7F);
	CU_ASSERT_EQUAL(bits_of(part[3 * ATT_DIM]), 0x7F7F7F7F);
	free(q);
	free(k);
	free(v);
	free(kd);
	free(vd);
}

static void softmax_large_check(void)
{
	float x[37];
	double sum = 0;
	int finite = 0;

	for (int i = 0; i < 37; i++)
		x[i] = i % 2 ? 1e30f : 1e30f - 1e24f * (i + 1);
	x[4] = -1e30f;
	x[6] = -INFINITY;
	kern_softmax(x, 37);
	for (int i = 0; i < 37; i++) {
		finite += isfinite(x[i]) && x[i] >= 0;
		sum += x[i];
	}
	CU_ASSERT_EQUAL(finite, 37);
	CU_ASSERT_DOUBLE_EQUAL(sum, 1.0, 1e-5);
	CU_ASSERT_EQUAL(x[6], 0);
	/* The 18 largest (equal) values share the mass. */
	CU_ASSERT_DOUBLE_EQUAL(x[1], 1.0 / 18, 1e-6);
}

static void softmax_large_isa(enum kern_isa isa)
{
	softmax_large_check();
}

static void test_softmax_large(void)
{
	enum kern_isa saved = kern_isa_current();

	CU_ASSERT_EQUAL_FATAL(kern_isa_set(KERN_ISA_SCALAR), 0);
	softmax_large_check();
	CU_ASSERT_EQUAL(kern_isa_set(saved), 0);
	for_each_simd_isa(softmax_large_isa);
}

/* ==== Instruction sets ================================================= */

static void test_isa_selection(void)
{
	enum kern_isa saved = kern_isa_current();

	CU_ASSERT(kern_isa_supported(KERN_ISA_SCALAR));
	CU_ASSERT(!kern_isa_supported(KERN_ISA_COUNT));
	CU_ASSERT_EQUAL(kern_isa_set(KERN_ISA_COUNT), -ENOTSUP);
	CU_ASSERT_STRING_EQUAL(kern_isa_name(KERN_ISA_AVX512), "avx512");
	CU_ASSERT_STRING_EQUAL(kern_isa_name(KERN_ISA_COUNT), "unknown");

	setenv("KVCHAIN_ISA", "scalar", 1);
	CU_ASSERT_EQUAL(kern_init(), 0);
	CU_ASSERT_EQUAL(kern_isa_current(), KERN_ISA_SCALAR);
	setenv("KVCHAIN_ISA", "no-such-isa", 1);
	CU_ASSERT_EQUAL(kern_init(), -ENOTSUP);
	CU_ASSERT(kern_isa_supported(kern_isa_current()));
	unsetenv("KVCHAIN_ISA");
	CU_ASSERT_EQUAL(kern_init(), 0);
	/* With no override the best supported set wins. */
	for (int isa = kern_isa_current() + 1; isa < KERN_ISA_COUNT; isa++)
		CU_ASSERT(!kern_isa_supported(isa) || isa == KERN_ISA_NEON);
	CU_ASSERT_EQUAL(kern_isa_set(saved), 0);
}

static const struct test_case conversion_cases[] = {
	{ "f16 normal rounding", test_f16_normal_rounding },
	{ "f16 overflow inf nan", test_f16_overflow_inf_nan },
	{ "f16 subnormal", test_f16_subnormal },
	{ "f16 all round trip", test_f16_all_round_trip },
	{ "f16 rows simd", test_f16_rows_simd },
	{ "bf16 edges", test_bf16_edges },
	{ NULL, NULL },
};

static const struct test_case quant_cases[] = {
	{ "type table", test_type_table },
	{ "round trip f32 exact", test_round_trip_f32 },
	{ "round trip bounds", test_round_trip_bounds },
	{ "round trip zero block", test_round_trip_zero_block },
	{ "q6_k layout", test_q6_k_layout },
	{ "q4_k layout", test_q4_k_layout },
	{ "q4_k scales", test_q4_k_scales },
	{ NULL, NULL },
};

static const struct test_case simd_cases[] = {
	{ "isa selection", test_isa_selection },
	{ "quantize x simd", test_quantize_x_simd },
	{ "matmul simd", test_matmul_simd },
	{ "elementwise simd", test_elementwise_simd },
	{ "kv rows simd", test_kv_rows_simd },
	{ NULL, NULL },
};

static const struct test_case matmul_cases[] = {
	{ "matmul against double", test_matmul_exact },
	{ "pool runs each share", test_pool_runs_each_share },
	{ "pool null inline", test_pool_null_inline },
	{ "pool matmul identical", test_pool_matmul_identical },
	{ NULL, NULL },
};

static const struct test_case model_cases[] = {
	{ "rope normal", test_rope_normal },
	{ "rope neox", test_rope_neox },
	{ "rope llama3", test_rope_llama3 },
	{ "rope invalid", test_rope_invalid },
	{ "attention runs", test_attention_runs },
	{ "attention head range", test_attention_head_range },
	{ "softmax large", test_softmax_large },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "conversion", conversion_cases },
	{ "quant", quant_cases },
	{ "simd", simd_cases },
	{ "matmul", matmul_cases },
	{ "model", model_cases },
};

#include "cunit-main.h"
