/* SPDX-License-Identifier: MIT */
/*
 * types.c - the tensor type table, IEEE half and bfloat16 conversions, and
 * the row quantisers and dequantisers of every type in its GGUF block
 * layout. The quantisers aim for valid, reasonable blocks (plain max-based
 * scales), not for the lowest possible error.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "kernels-internal.h"

struct type_info {
	uint32_t type;
	const char *name;
	int block_elems;
	size_t block_bytes;
};

/* Indexed by enum kern_type_slot. */
static const struct type_info type_table[KERN_SLOT_COUNT] = {
	[KERN_SLOT_F32] = { KERN_TYPE_F32, "F32", 1, 4 },
	[KERN_SLOT_F16] = { KERN_TYPE_F16, "F16", 1, 2 },
	[KERN_SLOT_BF16] = { KERN_TYPE_BF16, "BF16", 1, 2 },
	[KERN_SLOT_Q8_0] = { KERN_TYPE_Q8_0, "Q8_0", KERN_QK8_0,
			     sizeof(struct kern_block_q8_0) },
	[KERN_SLOT_Q4_0] = { KERN_TYPE_Q4_0, "Q4_0", KERN_QK4_0,
			     sizeof(struct kern_block_q4_0) },
	[KERN_SLOT_Q4_K] = { KERN_TYPE_Q4_K, "Q4_K", KERN_QK_K,
			     sizeof(struct kern_block_q4_k) },
	[KERN_SLOT_Q6_K] = { KERN_TYPE_Q6_K, "Q6_K", KERN_QK_K,
			     sizeof(struct kern_block_q6_k) },
};

_Static_assert(sizeof(struct kern_block_q8_0) == 34, "Q8_0 block size");
_Static_assert(sizeof(struct kern_block_q4_0) == 18, "Q4_0 block size");
_Static_assert(sizeof(struct kern_block_q4_k) == 144, "Q4_K block size");
_Static_assert(sizeof(struct kern_block_q6_k) == 210, "Q6_K block size");

int kern_type_slot(uint32_t type)
{
	switch (type) {
	case KERN_TYPE_F32: return KERN_SLOT_F32;
	case KERN_TYPE_F16: return KERN_SLOT_F16;
	case KERN_TYPE_BF16: return KERN_SLOT_BF16;
	case KERN_TYPE_Q8_0: return KERN_SLOT_Q8_0;
	case KERN_TYPE_Q4_0: return KERN_SLOT_Q4_0;
	case KERN_TYPE_Q4_K: return KERN_SLOT_Q4_K;
	case KERN_TYPE_Q6_K: return KERN_SLOT_Q6_K;
	default: return -1;
	}
}

bool kern_type_supported(uint32_t type)
{
	return kern_type_slot(type) >= 0;
}

const char *kern_type_name(uint32_t type)
{
	int slot = kern_type_slot(type);

	return slot < 0 ? "unknown" : type_table[slot].name;
}

int kern_type_block_elems(enum kern_type type)
{
	int slot = kern_type_slot(type);

	return slot < 0 ? 0 : type_table[slot].block_elems;
}

size_t kern_type_block_bytes(enum kern_type type)
{
	int slot = kern_type_slot(type);

	return slot < 0 ? 0 : type_table[slot].block_bytes;
}

size_t kern_row_bytes(enum kern_type type, int64_t n)
{
	int slot = kern_type_slot(type);

	if (slot < 0 || n <= 0 || n % type_table[slot].block_elems)
		return 0;
	return (size_t)(n / type_table[slot].block_elems) *
	       type_table[slot].block_bytes;
}

/* ==== Half and bfloat16 ================================================= */

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float kern_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1F;
	uint32_t man = h & 0x3FF;

	if (exp == 0x1F)	/* inf or NaN, payload kept */
		return bits_f32(sign | 0x7F800000 | (man << 13));
	if (exp == 0) {
		/* Zero or subnormal: man * 2^-24, exact in float. */
		float v = (float)man * 0x1p-24f;

		return sign ? -v : v;
	}
	return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t kern_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t abs = u & 0x7FFFFFFF;
	uint32_t man, exp, shift, half, rem;

	if (abs > 0x7F800000) {
		/* NaN: keep the top payload bits, make sure it stays NaN. */
		return sign | 0x7E00 | ((abs >> 13) & 0x3FF);
	}
	if (abs >= 0x477FF000)	/* rounds to 65520 or more, or inf */
		return sign | 0x7C00;
	if (abs >= 0x38800000) {
		/* Normal half: drop 13 bits with round to nearest even. A
		 * carry out of the mantissa correctly bumps the exponent. */
		uint32_t r = abs - 0x38000000;	/* rebias 127 -> 15 */

		r += 0xFFF + ((r >> 13) & 1);
		return sign | (uint16_t)(r >> 13);
	}
	if (abs < 0x33000000)	/* below half the smallest subnormal */
		return sign;

	/* Subnormal half: value = man * 2^-24 with man < 1024. */
	exp = abs >> 23;
	man = (abs & 0x7FFFFF) | 0x800000;
	shift = 126 - exp;	/* 14 .. 24 */
	half = 1u << (shift - 1);
	rem = man & ((1u << shift) - 1);
	man >>= shift;
	if (rem > half || (rem == half && (man & 1)))
		man++;
	return sign | (uint16_t)man;
}

float kern_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t kern_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7FFFFFFF) > 0x7F800000)	/* NaN: quiet it, keep sign */
		return (uint16_t)((u >> 16) | 0x0040);
	u += 0x7FFF + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

/* ==== Dequantisers ====================================================== */

static void dequantize_q8_0(const struct kern_block_q8_0 *b, float *dst,
			    int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		float d = kern_f16_to_f32(b[i].d);

		for (int j = 0; j < KERN_QK8_0; j++)
			dst[i * KERN_QK8_0 + j] = b[i].qs[j] * d;
	}
}

static void dequantize_q4_0(const struct kern_block_q4_0 *b, float *dst,
			    int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		float d = kern_f16_to_f32(b[i].d);
		float *out = dst + i * KERN_QK4_0;

		for (int j = 0; j < KERN_QK4_0 / 2; j++) {
			out[j] = ((b[i].qs[j] & 0xF) - 8) * d;
			out[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
		}
	}
}

static void dequantize_q4_k(const struct kern_block_q4_k *b, float *dst,
			    int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		float d = kern_f16_to_f32(b[i].d);
		float dmin = kern_f16_to_f32(b[i].dmin);
		float *out = dst + i * KERN_QK_K;

		/* Each 32 bytes of qs hold two sub-blocks: the low nibbles
		 * one, the high nibbles the next. */
		for (int c = 0; c < 4; c++) {
			const uint8_t *q = b[i].qs + 32 * c;
			uint8_t sc0, m0, sc1, m1;

			kern_q4_k_scale_min(b[i].scales, 2 * c, &sc0, &m0);
			kern_q4_k_scale_min(b[i].scales, 2 * c + 1, &sc1, &m1);
			for (int l = 0; l < 32; l++) {
				out[64 * c + l] = d * sc0 * (q[l] & 0xF) -
						  dmin * m0;
				out[64 * c + 32 + l] = d * sc1 * (q[l] >> 4) -
						       dmin * m1;
			}
		}
	}
}

/*
 * Returns the 6-bit value (0..63) of element @e (0..255) of a Q6_K block.
 * Each half of 128 elements uses 64 bytes of ql and 32 of qh. Element l of
 * run r (0..3) of 32 in a half takes the low (r < 2) or high nibble of
 * ql[l + 32 * (r % 2)] and bit pair r of qh[l].
 */
static int q6_k_value(const struct kern_block_q6_k *b, int e)
{
	int half = e / 128, r = (e % 128) / 32, l = e % 32;
	const uint8_t *ql = b->ql + 64 * half;
	const uint8_t *qh = b->qh + 32 * half;
	int lo = r & 1 ? ql[l + 32] : ql[l];

	lo = r >= 2 ? lo >> 4 : lo & 0xF;
	return lo | ((qh[l] >> (2 * r)) & 3) << 4;
}

static void dequantize_q6_k(const struct kern_block_q6_k *b, float *dst,
			    int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		float d = kern_f16_to_f32(b[i].d);

		for (int e = 0; e < KERN_QK_K; e++)
			dst[i * KERN_QK_K + e] = d * b[i].scales[e / 16] *
						 (q6_k_value(&b[i], e) - 32);
	}
}

void kern_dequantize_row(enum kern_type type, const void *src, float *dst,
			 int64_t n)
{
	int elems = kern_type_block_elems(type);
	int64_t nb = elems ? n / elems : 0;

	switch (type) {
	case KERN_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case KERN_TYPE_F16:
		kern_ops_get()->f16_to_f32_row(src, dst, n);
		break;
	case KERN_TYPE_BF16:
		for (int64_t i = 0; i < n; i++)
			dst[i] = kern_bf16_to_f32(((const uint16_t *)src)[i]);
		break;
	case KERN_TYPE_Q8_0:
		dequantize_q8_0(src, dst, nb);
		break;
	case KERN_TYPE_Q4_0:
		dequantize_q4_0(src, dst, nb);
		break;
	case KERN_TYPE_Q4_K:
		dequantize_q4_k(src, dst, nb);
		break;
	case KERN_TYPE_Q6_K:
		dequantize_q6_k(src, dst, nb);
		break;
	}
}

/* ==== Quantisers ======================================================== */

static int clamp_int(int v, int lo, int hi)
{
	if (v < lo)
		return lo;
	if (v > hi)
		return hi;
	return v;
}

static void quantize_q8_0(const float *src, struct kern_block_q8_0 *b,
			  int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		const float *x = src + i * KERN_QK8_0;
		float amax = 0, d, id;

		for (int j = 0; j < KERN_QK8_0; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		d = amax / 127;
		b[i].d = kern_f32_to_f16(d);
		/* Quantise against the stored (rounded) scale. */
		d = kern_f16_to_f32(b[i].d);
		id = d ? 1 / d : 0;
		for (int j = 0; j < KERN_QK8_0; j++)
			b[i].qs[j] = (int8_t)clamp_int((int)lrintf(x[j] * id),
						       -127, 127);
	}
}

static void quantize_q4_0(const float *src, struct kern_block_q4_0 *b,
			  int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		const float *x = src + i * KERN_QK4_0;
		float vmax = 0, d, id;

		/* The value of largest magnitude maps to -8, the one level
		 * with no positive twin, so it is exact. */
		for (int j = 0; j < KERN_QK4_0; j++)
			if (fabsf(x[j]) > fabsf(vmax))
				vmax = x[j];
		b[i].d = kern_f32_to_f16(vmax / -8);
		d = kern_f16_to_f32(b[i].d);
		id = d ? 1 / d : 0;
		for (int j = 0; j < KERN_QK4_0 / 2; j++) {
			int lo = clamp_int((int)lrintf(x[j] * id) + 8, 0, 15);
			int hi = clamp_int((int)lrintf(x[j + 16] * id) + 8,
					   0, 15);

			b[i].qs[j] = (uint8_t)(lo | hi << 4);
		}
	}
}

/* Packs 6-bit scales and mins into the Q4_K layout kern_q4_k_scale_min
 * reads. */
static void pack_q4_k_scales(uint8_t *s, const uint8_t *sc, const uint8_t *m)
{
	memset(s, 0, 12);
	for (int j = 0; j < 4; j++) {
		s[j] = sc[j];
		s[j + 4] = m[j];
	}
	for (int j = 4; j < 8; j++) {
		s[j + 4] = (uint8_t)((sc[j] & 0xF) | (m[j] & 0xF) << 4);
		s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
		s[j] |= (uint8_t)((m[j] >> 4) << 6);
	}
}

static void quantize_q4_k(const float *src, struct kern_block_q4_k *b,
			  int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		const float *x = src + i * KERN_QK_K;
		float scale[8], min[8], max_scale = 0, max_min = 0;
		float d, dmin;
		uint8_t sc[8], m[8];

		/* Each sub-block spans [-min, -min + 15 * scale]. The minimum
		 * is stored as a positive offset, so a sub-block whose
		 * values are all positive keeps 0 as its lower end. */
		for (int j = 0; j < 8; j++) {
			float lo = 0, hi = 0;

			for (int l = 0; l < 32; l++) {
				lo = fminf(lo, x[32 * j + l]);
				hi = fmaxf(hi, x[32 * j + l]);
			}
			scale[j] = (hi - lo) / 15;
			min[j] = -lo;
			max_scale = fmaxf(max_scale, scale[j]);
			max_min = fmaxf(max_min, min[j]);
		}
		b[i].d = kern_f32_to_f16(max_scale / 63);
		b[i].dmin = kern_f32_to_f16(max_min / 63);
		d = kern_f16_to_f32(b[i].d);
		dmin = kern_f16_to_f32(b[i].dmin);
		for (int j = 0; j < 8; j++) {
			sc[j] = (uint8_t)clamp_int(
				d ? (int)lrintf(scale[j] / d) : 0, 0, 63);
			/* Round the minimum up so the range still covers the
			 * lowest value. */
			m[j] = (uint8_t)clamp_int(
				dmin ? (int)ceilf(min[j] / dmin) : 0, 0, 63);
		}
		pack_q4_k_scales(b[i].scales, sc, m);

		for (int j = 0; j < 8; j++) {
			float step = d * sc[j], offset = dmin * m[j];
			float istep = step ? 1 / step : 0;
			uint8_t *q = b[i].qs + 32 * (j / 2);

			for (int l = 0; l < 32; l++) {
				int v = clamp_int((int)lrintf((x[32 * j + l] +
							       offset) * istep),
						  0, 15);

				if (j % 2)
					q[l] = (uint8_t)((q[l] & 0xF) | v << 4);
				else
					q[l] = (uint8_t)v;
			}
		}
	}
}

static void quantize_q6_k(const float *src, struct kern_block_q6_k *b,
			  int64_t nb)
{
	for (int64_t i = 0; i < nb; i++) {
		const float *x = src + i * KERN_QK_K;
		float scale[16], max_abs_scale = 0, d, id;

		/* The value of largest magnitude in each 16 maps to -32, the
		 * level with no positive twin. */
		for (int j = 0; j < 16; j++) {
			float vmax = 0;

			for (int l = 0; l < 16; l++)
				if (fabsf(x[16 * j + l]) > fabsf(vmax))
					vmax = x[16 * j + l];
			scale[j] = vmax / -32;
			max_abs_scale = fmaxf(max_abs_scale, fabsf(scale[j]));
		}
		b[i].d = kern_f32_to_f16(max_abs_scale / 127);
		d = kern_f16_to_f32(b[i].d);
		id = d ? 1 / d : 0;
		memset(b[i].ql, 0, sizeof(b[i].ql));
		memset(b[i].qh, 0, sizeof(b[i].qh));
		for (int j = 0; j < 16; j++)
			b[i].scales[j] = (int8_t)clamp_int(
				(int)lrintf(scale[j] * id), -127, 127);

		for (int e = 0; e < KERN_QK_K; e++) {
			float step = d * b[i].scales[e / 16];
			int v = step ? (int)lrintf(x[e] / step) : 0;
			int half = e / 128, r = (e % 128) / 32, l = e % 32;
			uint8_t *ql = b[i].ql + 64 * half + (r & 1 ? 32 : 0);
			uint8_t *qh = b[i].qh + 32 * half;

			v = clamp_int(v, -32, 31) + 32;
			ql[l] |= (uint8_t)(r >= 2 ? (v & 0xF) << 4 : v & 0xF);
			qh[l] |= (uint8_t)((v >> 4) << (2 * r));
		}
	}
}

void kern_quantize_row(enum kern_type type, const float *src, void *dst,
		       int64_t n)
{
	int elems = kern_type_block_elems(type);
	int64_t nb = elems ? n / elems : 0;

	switch (type) {
	case KERN_TYPE_F32:
		memcpy(dst, src, (size_t)n * sizeof(float));
		break;
	case KERN_TYPE_F16:
		kern_ops_get()->f32_to_f16_row(src, dst, n);
		break;
	case KERN_TYPE_BF16:
		for (int64_t i = 0; i < n; i++)
			((uint16_t *)dst)[i] = kern_f32_to_bf16(src[i]);
		break;
	case KERN_TYPE_Q8_0:
		quantize_q8_0(src, dst, nb);
		break;
	case KERN_TYPE_Q4_0:
		quantize_q4_0(src, dst, nb);
		break;
	case KERN_TYPE_Q4_K:
		quantize_q4_k(src, dst, nb);
		break;
	case KERN_TYPE_Q6_K:
		quantize_q6_k(src, dst, nb);
		break;
	}
}
