/* SPDX-License-Identifier: MIT */
/*
 * kernels.h - the numeric kernels under the engine: tensor types and their
 * block formats, matrix products, normalisation, RoPE, softmax, SwiGLU and
 * attention, a thread pool, and the run-time choice of instruction set.
 *
 * Every kernel has a plain scalar version that is its specification. The
 * AVX2 and AVX-512 versions are picked once by CPUID (kern_init) and must
 * agree with the scalar one within the tolerance the tests name per type.
 * Nothing here prints, exits or allocates on a per-token hot path.
 */
#ifndef KVCHAIN_KERNELS_H
#define KVCHAIN_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tensor element types, numbered as GGUF numbers them. */
enum kern_type {
	KERN_TYPE_F32 = 0,
	KERN_TYPE_F16 = 1,
	KERN_TYPE_Q4_0 = 2,
	KERN_TYPE_Q8_0 = 8,
	KERN_TYPE_Q4_K = 12,
	KERN_TYPE_Q6_K = 14,
	KERN_TYPE_BF16 = 30,
};

/* Block layouts, byte for byte as GGUF stores them. */
#define KERN_QK8_0 32
#define KERN_QK4_0 32
#define KERN_QK_K 256

struct kern_block_q8_0 {
	uint16_t d;		/* scale, IEEE half */
	int8_t qs[KERN_QK8_0];	/* value = qs[i] * d */
};

struct kern_block_q4_0 {
	uint16_t d;		  /* scale, IEEE half */
	uint8_t qs[KERN_QK4_0 / 2]; /* element i in the low nibble of qs[i],
				     * element i + 16 in the high nibble;
				     * value = (nibble - 8) * d */
};

struct kern_block_q4_k {
	uint16_t d;		  /* super-block scale of the 6-bit scales */
	uint16_t dmin;		  /* super-block scale of the 6-bit mins */
	uint8_t scales[12];	  /* 8 scales and 8 mins, 6 bits each */
	uint8_t qs[KERN_QK_K / 2]; /* 4-bit values, 64 elements per 32 bytes */
};

struct kern_block_q6_k {
	uint8_t ql[KERN_QK_K / 2];  /* low 4 bits of each value */
	uint8_t qh[KERN_QK_K / 4];  /* high 2 bits of each value */
	int8_t scales[KERN_QK_K / 16]; /* one scale per 16 elements */
	uint16_t d;		    /* super-block scale, IEEE half */
};

/* Returns true if the kernels support GGUF type number @type. */
bool kern_type_supported(uint32_t type);

/* Returns the GGUF name of a type ("Q4_K"), or "unknown". */
const char *kern_type_name(uint32_t type);

/* Returns the number of elements in one block of @type (1, 32 or 256). */
int kern_type_block_elems(enum kern_type type);

/* Returns the bytes of one block of @type. */
size_t kern_type_block_bytes(enum kern_type type);

/*
 * Returns the bytes of a row of @n elements of @type, or 0 when @n is not a
 * positive multiple of the type's block size.
 */
size_t kern_row_bytes(enum kern_type type, int64_t n);

float kern_f16_to_f32(uint16_t h);
uint16_t kern_f32_to_f16(float f);	/* round to nearest even */
float kern_bf16_to_f32(uint16_t h);
uint16_t kern_f32_to_bf16(float f);	/* round to nearest even */

/* Converts @n elements (a whole number of blocks) of @type to floats. */
void kern_dequantize_row(enum kern_type type, const void *src, float *dst,
			 int64_t n);

/*
 * Converts @n floats (a whole number of blocks) to @type. Every type is
 * supported, so the test-model maker and the KV cache share one quantiser.
 */
void kern_quantize_row(enum kern_type type, const float *src, void *dst,
		       int64_t n);

/* ---- Instruction sets ------------------------------------------------- */

enum kern_isa {
	KERN_ISA_SCALAR = 0,
	KERN_ISA_AVX2,		/* AVX2 + FMA + F16C */
	KERN_ISA_AVX512,	/* AVX-512 F/BW/VL/DQ/VNNI */
	KERN_ISA_NEON,
	KERN_ISA_COUNT,
};

/*
 * Detects the CPU and selects the best instruction set it supports. The
 * environment variable KVCHAIN_ISA ("scalar", "avx2", "avx512") lowers the
 * choice. Safe to call more than once; returns 0 or -ENOTSUP when
 * KVCHAIN_ISA names a set this CPU lacks (the best supported one is used).
 */
int kern_init(void);

/* Returns true if this build and this CPU (and its OS) can run @isa. */
bool kern_isa_supported(enum kern_isa isa);

/* Selects @isa for every later call; -ENOTSUP if unsupported. Not thread-safe. */
int kern_isa_set(enum kern_isa isa);

enum kern_isa kern_isa_current(void);
const char *kern_isa_name(enum kern_isa isa);

/* ---- Thread pool ----------------------------------------------------- */

struct kern_pool;

/* Task body: thread @ith of @nth does its share of the work in @arg. */
typedef void (*kern_task_fn)(void *arg, int ith, int nth);

/* Creates a pool running tasks on @n_threads threads, the caller's included. */
struct kern_pool *kern_pool_create(int n_threads);
void kern_pool_destroy(struct kern_pool *pool);
int kern_pool_threads(const struct kern_pool *pool);

/*
 * Runs @fn(arg, ith, nth) once for each ith in [0, nth), nth being the
 * pool's thread count, and returns when all are done. The calling thread
 * runs ith 0 and each worker normally one other share. The caller also
 * runs any share no worker has started by the time it is free. A NULL
 * pool runs fn(arg, 0, 1) inline. Only one thread may run tasks on a pool
 * at a time.
 */
void kern_pool_run(struct kern_pool *pool, kern_task_fn fn, void *arg);

/* ---- Matrix products ------------------------------------------------- */

/*
 * Computes y = x W^T: @w holds @n_out rows of @n_in elements of @type (a
 * GGUF tensor with ne[0] = n_in, ne[1] = n_out), @x holds @n_tok rows of
 * @n_in floats, and @y receives @n_tok rows of @n_out floats. The rows of W
 * are split across the pool. Quantised types quantise x to 8 bits first.
 * @n_in must be a multiple of the type's block size.
 */
void kern_matmul(struct kern_pool *pool, float *y, const void *w,
		 enum kern_type type, const float *x, int n_in, int n_out,
		 int n_tok);

/* ---- Element-wise kernels ------------------------------------------- */

/* y = x / sqrt(mean(x^2) + eps) * weight; y may alias x. */
void kern_rmsnorm(float *y, const float *x, const float *weight, int n,
		  float eps);

/* Replaces x with softmax(x), computed in a numerically stable way. */
void kern_softmax(float *x, int n);

/* y = silu(gate) * up, silu(g) = g / (1 + exp(-g)); y may alias gate. */
void kern_swiglu(float *y, const float *gate, const float *up, int n);

/* ---- Rotary position embedding --------------------------------------- */

/* Llama 3.x frequency scaling, as its GGUF rope-scaling keys give it. */
struct kern_rope_llama3 {
	float factor;
	float low_freq_factor;
	float high_freq_factor;
	float original_context;	/* positions the model was trained on */
};

struct kern_rope {
	int n_rot;		/* rotated dimensions per head, even */
	bool neox;		/* rotate pairs (i, i + n_rot/2), else (2i, 2i+1) */
	float freq_scale;	/* linear position scaling, 1 for none */
	float inv_freq[512];	/* (n_rot / 2) frequencies, scaling applied */
};

/*
 * Fills @rope for theta base @theta. @llama3 may be NULL. @freq_factors,
 * if not NULL, holds n_rot/2 divisors of the frequencies (the GGUF tensor
 * rope_freqs.weight). Returns 0 or -EINVAL for an odd or too large n_rot.
 */
int kern_rope_init(struct kern_rope *rope, int n_rot, bool neox, float theta,
		   float freq_scale, const struct kern_rope_llama3 *llama3,
		   const float *freq_factors);

/* Rotates the first n_rot dimensions of each of @n_heads heads of @x. */
void kern_rope_apply(const struct kern_rope *rope, float *x, int n_heads,
		     int head_dim, int pos);

/* ---- Attention ------------------------------------------------------- */

/*
 * A run of @n consecutive keys and values, each a row of kv_dim elements
 * (n_kv_heads * head_dim) of the cache's element type. Runs let a query
 * read keys scattered over several cache blocks without copying them.
 */
struct kern_kv_run {
	const void *k;		/* (n, kv_dim) */
	const void *v;		/* (n, kv_dim) */
	int n;
};

/*
 * Computes attention for one query token and query heads [h0, h1):
 * out[h] = softmax(scale * q[h] . K^T) V over all keys of all runs, with
 * query head h reading kv head h / (n_heads / n_kv_heads). @kv_type is F32,
 * F16 or Q8_0 (Q8_0 needs head_dim to be a multiple of 32). @scratch holds
 * at least as many floats as there are keys. @q and @out are n_heads *
 * head_dim floats.
 */
void kern_attention(float *out, const float *q, int n_heads, int n_kv_heads,
		    int head_dim, int h0, int h1,
		    const struct kern_kv_run *runs, int n_runs,
		    enum kern_type kv_type, float scale, float *scratch);

#endif /* KVCHAIN_KERNELS_H */
