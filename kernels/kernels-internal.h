/* SPDX-License-Identifier: MIT */
/*
 * kernels-internal.h - what the kernel files share and the engine never
 * uses: the table of kernel functions each instruction set fills, the
 * 8-bit formats x is quantised to before a matrix product, and the scalar
 * functions the SIMD tables fall back to.
 */
#ifndef KVCHAIN_KERNELS_INTERNAL_H
#define KVCHAIN_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* Compact index of each supported type, for per-type tables. */
enum kern_type_slot {
	KERN_SLOT_F32,
	KERN_SLOT_F16,
	KERN_SLOT_BF16,
	KERN_SLOT_Q8_0,
	KERN_SLOT_Q4_0,
	KERN_SLOT_Q4_K,
	KERN_SLOT_Q6_K,
	KERN_SLOT_COUNT,
};

/* Returns the slot of @type, or -1 for a type the kernels lack. */
int kern_type_slot(uint32_t type);

/*
 * x rows as Q8_0 and Q4_0 weights read them: 32 values per block with a
 * float scale, and the sum of qs so Q4_0 can fold its offset of 8 into one
 * multiply per block.
 */
#define KERN_QX 32
struct kern_block_qx {
	float d;		/* value = qs[i] * d */
	int32_t sum;		/* sum of qs */
	int8_t qs[KERN_QX];
};

/*
 * x rows as Q4_K and Q6_K weights read them: 256 values per block with a
 * float scale and the sums of each 16 qs, which carry the Q4_K minimum and
 * the Q6_K offset of 32.
 */
struct kern_block_qk {
	float d;			/* value = qs[i] * d */
	int8_t qs[KERN_QK_K];
	int16_t bsums[KERN_QK_K / 16];	/* bsums[j] = sum of qs[16j .. 16j+15] */
};

/*
 * Dot product of one weight row @w of @type with one x row of @n elements
 * in the format kern_matmul feeds that type (F32 for F32, F16 and BF16;
 * struct kern_block_qx for Q8_0 and Q4_0; struct kern_block_qk for Q4_K
 * and Q6_K).
 */
typedef float (*kern_dot_fn)(int n, const void *w, const void *x);

/*
 * Dot products of one weight row with 4 x rows, @x_stride bytes apart,
 * stored to y[0], y[y_stride], y[2 * y_stride] and y[3 * y_stride]. Each
 * weight block is loaded and unpacked once for all 4 tokens of a prefill.
 */
typedef void (*kern_dot4_fn)(int n, const void *w, const void *x,
			     size_t x_stride, float *y, size_t y_stride);

/* Quantises @n floats of x (a multiple of the block size) to its format. */
typedef void (*kern_quantize_x_fn)(const float *x, void *dst, int n);

/* One instruction set's kernels. Every slot is filled unless marked. */
struct kern_ops {
	kern_dot_fn dot[KERN_SLOT_COUNT];
	kern_dot4_fn dot4[KERN_SLOT_COUNT];	/* NULL: 4 calls of dot */
	kern_quantize_x_fn quantize_qx;
	kern_quantize_x_fn quantize_qk;

	void (*rmsnorm)(float *y, const float *x, const float *weight, int n,
			float eps);
	void (*softmax)(float *x, int n);
	void (*swiglu)(float *y, const float *gate, const float *up, int n);

	/* Attention: q . k and y += a * v for one head of a cache row. */
	float (*kv_dot[KERN_SLOT_COUNT])(const float *q, const void *k, int n);
	void (*kv_axpy[KERN_SLOT_COUNT])(float *y, float a, const void *v,
					 int n);

	void (*f16_to_f32_row)(const uint16_t *src, float *dst, int64_t n);
	void (*f32_to_f16_row)(const float *src, uint16_t *dst, int64_t n);
};

extern const struct kern_ops kern_ops_scalar;
#ifdef KVC_X86_64
extern const struct kern_ops kern_ops_avx2;
extern const struct kern_ops kern_ops_avx512;
#endif

/* Returns the table of the selected instruction set, detecting it first. */
const struct kern_ops *kern_ops_get(void);

/* Returns the table of @isa, or NULL when this build lacks it. */
const struct kern_ops *kern_ops_for(enum kern_isa isa);

/*
 * Returns @bytes of 64-byte aligned scratch owned by @pool, or by the
 * calling thread when @pool is NULL, valid until the next call on the same
 * owner. Grows as needed and returns NULL only when that allocation fails.
 */
void *kern_scratch(struct kern_pool *pool, size_t bytes);

/* Runs kern_attention with the kernels of @ops. */
void kern_attention_ops(const struct kern_ops *ops, float *out,
			const float *q, int n_heads, int n_kv_heads,
			int head_dim, int h0, int h1,
			const struct kern_kv_run *runs, int n_runs,
			enum kern_type kv_type, float scale, float *scratch);

/* ---- Scalar kernels, also the fallbacks of the SIMD tables ---------- */

float kern_scalar_dot_f32(int n, const void *w, const void *x);
float kern_scalar_dot_f16(int n, const void *w, const void *x);
float kern_scalar_dot_bf16(int n, const void *w, const void *x);
float kern_scalar_dot_q8_0(int n, const void *w, const void *x);
float kern_scalar_dot_q4_0(int n, const void *w, const void *x);
float kern_scalar_dot_q4_k(int n, const void *w, const void *x);
float kern_scalar_dot_q6_k(int n, const void *w, const void *x);
void kern_scalar_quantize_qx(const float *x, void *dst, int n);
void kern_scalar_quantize_qk(const float *x, void *dst, int n);

float kern_scalar_kv_dot_f32(const float *q, const void *k, int n);
float kern_scalar_kv_dot_f16(const float *q, const void *k, int n);
float kern_scalar_kv_dot_q8_0(const float *q, const void *k, int n);
void kern_scalar_kv_axpy_f32(float *y, float a, const void *v, int n);
void kern_scalar_kv_axpy_f16(float *y, float a, const void *v, int n);
void kern_scalar_kv_axpy_q8_0(float *y, float a, const void *v, int n);

void kern_scalar_f16_to_f32_row(const uint16_t *src, float *dst, int64_t n);
void kern_scalar_f32_to_f16_row(const float *src, uint16_t *dst, int64_t n);

/*
 * Unpacks the 6-bit scale and minimum of sub-block @j (0..7) of a Q4_K
 * block from its 12 packed bytes. Bytes 0-3 contain scales 0-3 and bytes
 * 4-7 mins 0-3 in their low 6 bits. Scales and mins 4-7 keep their low 4
 * bits in bytes 8-11 (scale in the low nibble, min in the high one) and
 * their high 2 bits in the top bits of bytes 0-3 (scales) and 4-7 (mins).
 */
static inline void kern_q4_k_scale_min(const uint8_t *s, int j, uint8_t *sc,
				       uint8_t *m)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*m = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
		*m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

/*
 * Unpacks all 8 scales of a Q4_K block into @sc and all 8 mins into @m at
 * once with 32-bit operations, from the layout kern_q4_k_scale_min reads.
 * The masks assume byte k of each word is packed byte k, so only
 * little-endian CPUs (the x86 SIMD files) may call it.
 */
static inline void kern_q4_k_unpack_scales(const uint8_t *s, uint8_t *sc,
					   uint8_t *m)
{
	uint32_t a, b, c, v;

	memcpy(&a, s, 4);
	memcpy(&b, s + 4, 4);
	memcpy(&c, s + 8, 4);
	v = a & 0x3F3F3F3F;
	memcpy(sc, &v, 4);
	v = (c & 0x0F0F0F0F) | ((a >> 2) & 0x30303030);
	memcpy(sc + 4, &v, 4);
	v = b & 0x3F3F3F3F;
	memcpy(m, &v, 4);
	v = ((c >> 4) & 0x0F0F0F0F) | ((b >> 2) & 0x30303030);
	memcpy(m + 4, &v, 4);
}

#endif /* KVCHAIN_KERNELS_INTERNAL_H */
