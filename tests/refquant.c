/* SPDX-License-Identifier: MIT */
/*
 * refquant.c - plain dequantisation of F32, F16, BF16, Q8_0, Q4_0, Q4_K and
 * Q6_K blocks, read byte by byte from the GGUF block layouts.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "refquant.h"

static uint16_t read_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

double refquant_half(uint16_t h)
{
	int sign = h >> 15;
	int exp = (h >> 10) & 0x1f;
	int frac = h & 0x3ff;
	double v;

	if (exp == 0)
		v = ldexp(frac, -24);		/* subnormal: frac * 2^-24 */
	else if (exp == 31)
		v = frac ? NAN : INFINITY;
	else
		v = ldexp(1024 + frac, exp - 25); /* (1 + frac/1024) * 2^(exp-15) */
	return sign ? -v : v;
}

static double bf16_value(uint16_t h)
{
	uint32_t bits = (uint32_t)h << 16;
	float f;

	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* 6-bit scale and min of sub-block @j from the 12 packed bytes of Q4_K. */
static void q4_k_scale_min(const uint8_t *s, int j, int *scale, int *min)
{
	if (j < 4) {
		*scale = s[j] & 63;
		*min = s[j + 4] & 63;
	} else {
		*scale = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
		*min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

static void dequant_q4_k(const uint8_t *b, double *y)
{
	double d = refquant_half(read_u16(b));
	double dmin = refquant_half(read_u16(b + 2));
	const uint8_t *scales = b + 4;
	const uint8_t *qs = b + 16;
	int chunk, l, sc, m;

	/* 4 chunks of 64: low nibbles are sub-block 2c, high are 2c + 1 */
	for (chunk = 0; chunk < 4; chunk++) {
		q4_k_scale_min(scales, 2 * chunk, &sc, &m);
		for (l = 0; l < 32; l++)
			y[chunk * 64 + l] = d * sc * (qs[chunk * 32 + l] & 15) -
					    dmin * m;
		q4_k_scale_min(scales, 2 * chunk + 1, &sc, &m);
		for (l = 0; l < 32; l++)
			y[chunk * 64 + 32 + l] =
				d * sc * (qs[chunk * 32 + l] >> 4) - dmin * m;
	}
}

static void dequant_q6_k(const uint8_t *b, double *y)
{
	const uint8_t *ql = b;
	const uint8_t *qh = b + 128;
	const int8_t *sc = (const int8_t *)(b + 192);
	double d = refquant_half(read_u16(b + 208));
	int half, l;

	/* two halves of 128; each 6-bit value is 4 low bits + 2 high bits */
	for (half = 0; half < 2; half++) {
		const uint8_t *L = ql + half * 64;
		const uint8_t *H = qh + half * 32;
		const int8_t *S = sc + half * 8;
		double *Y = y + half * 128;

		for (l = 0; l < 32; l++) {
			int is = l / 16;
			int q1 = ((L[l] & 15) | ((H[l] & 3) << 4)) - 32;
			int q2 = ((L[l + 32] & 15) | (((H[l] >> 2) & 3) << 4)) - 32;
			int q3 = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32;
			int q4 = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32;

			Y[l] = d * S[is] * q1;
			Y[l + 32] = d * S[is + 2] * q2;
			Y[l + 64] = d * S[is + 4] * q3;
			Y[l + 96] = d * S[is + 6] * q4;
		}
	}
}

int refquant_dequantize(uint32_t type, const void *src, double *dst,
			int64_t n)
{
	const uint8_t *p = src;
	int64_t i, j;

	switch (type) {
	case 0: /* F32 */
		for (i = 0; i < n; i++) {
			float f;

			memcpy(&f, p + 4 * i, 4);
			dst[i] = f;
		}
		return 0;
	case 1: /* F16 */
		for (i = 0; i < n; i++)
			dst[i] = refquant_half(read_u16(p + 2 * i));
		return 0;
	case 30: /* BF16 */
		for (i = 0; i < n; i++)
			dst[i] = bf16_value(read_u16(p + 2 * i));
		return 0;
	case 8: /* Q8_0: half d, 32 x int8 */
		if (n % 32)
			return -1;
		for (i = 0; i < n / 32; i++, p += 34) {
			double d = refquant_half(read_u16(p));

			for (j = 0; j < 32; j++)
				dst[i * 32 + j] = d * (int8_t)p[2 + j];
		}
		return 0;
	case 2: /* Q4_0: half d, 16 bytes of nibbles, offset 8 */
		if (n % 32)
			return -1;
		for (i = 0; i < n / 32; i++, p += 18) {
			double d = refquant_half(read_u16(p));

			for (j = 0; j < 16; j++) {
				dst[i * 32 + j] = d * ((p[2 + j] & 15) - 8);
				dst[i * 32 + j + 16] = d * ((p[2 + j] >> 4) - 8);
			}
		}
		return 0;
	case 12: /* Q4_K: 144-byte blocks of 256 */
		if (n % 256)
			return -1;
		for (i = 0; i < n / 256; i++)
			dequant_q4_k(p + i * 144, dst + i * 256);
		return 0;
	case 14: /* Q6_K: 210-byte blocks of 256 */
		if (n % 256)
			return -1;
		for (i = 0; i < n / 256; i++)
			dequant_q6_k(p + i * 210, dst + i * 256);
		return 0;
	}
	return -1;
}
