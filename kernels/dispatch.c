/* SPDX-License-Identifier: MIT */
/*
 * dispatch.c - picks the instruction set at run time (CPUID plus the OS
 * check that the vector registers are saved on context switch) and contains
 * the public entry points, which call through the selected kernel table.
 * The matrix product driver is here too: it quantises x once per call into
 * scratch and splits the output rows across the pool.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef KVC_X86_64
#include <cpuid.h>
#endif

#include "kernels-internal.h"

static _Atomic(const struct kern_ops *) current_ops;
static _Atomic int current_isa;

/* ==== CPU detection ===================================================== */

#ifdef KVC_X86_64
/* Returns the OS-enabled state components (XCR0). Call only when CPUID
 * reports OSXSAVE, otherwise XGETBV faults. */
static uint64_t read_xcr0(void)
{
	uint32_t eax, edx;

	__asm__ __volatile__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
	return (uint64_t)edx << 32 | eax;
}

struct x86_features {
	bool avx2;	/* AVX2, FMA and F16C with YMM state enabled */
	bool avx512;	/* F, BW, VL, DQ and VNNI with ZMM state enabled */
};

static struct x86_features detect_x86(void)
{
	struct x86_features f = { false, false };
	unsigned eax, ebx, ecx, edx, ecx1;
	uint64_t xcr0;
	bool fma, f16c;

	if (!__get_cpuid(1, &eax, &ebx, &ecx1, &edx))
		return f;
	/* OSXSAVE (bit 27) must be set before XGETBV may run; AVX is 28. */
	if (!(ecx1 & (1u << 27)) || !(ecx1 & (1u << 28)))
		return f;
	fma = ecx1 & (1u << 12);
	f16c = ecx1 & (1u << 29);
	xcr0 = read_xcr0();
	/* XMM (bit 1) and YMM (bit 2) state. */
	if ((xcr0 & 0x6) != 0x6)
		return f;
	if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
		return f;
	f.avx2 = (ebx & (1u << 5)) && fma && f16c;

	/* Opmask (5), upper halves of ZMM0-15 (6) and ZMM16-31 (7). */
	if ((xcr0 & 0xE0) != 0xE0 || !f.avx2)
		return f;
	f.avx512 = (ebx & (1u << 16)) &&	/* F */
		   (ebx & (1u << 17)) &&	/* DQ */
		   (ebx & (1u << 30)) &&	/* BW */
		   (ebx & (1u << 31)) &&	/* VL */
		   (ecx & (1u << 11));		/* VNNI */
	return f;
}
#endif /* KVC_X86_64 */

#ifdef KVC_X86_64
static struct x86_features features;
static pthread_once_t features_once = PTHREAD_ONCE_INIT;

static void detect_features(void)
{
	features = detect_x86();
}
#endif

bool kern_isa_supported(enum kern_isa isa)
{
#ifdef KVC_X86_64
	pthread_once(&features_once, detect_features);
#endif
	switch (isa) {
	case KERN_ISA_SCALAR:
		return true;
#ifdef KVC_X86_64
	case KERN_ISA_AVX2:
		return features.avx2;
	case KERN_ISA_AVX512:
		return features.avx512;
#endif
	default:
		/* NOTE: NEON has a slot but no kernels yet, so ARM builds
		 * run the scalar table. */
		return false;
	}
}

const struct kern_ops *kern_ops_for(enum kern_isa isa)
{
	switch (isa) {
	case KERN_ISA_SCALAR:
		return &kern_ops_scalar;
#ifdef KVC_X86_64
	case KERN_ISA_AVX2:
		return &kern_ops_avx2;
	case KERN_ISA_AVX512:
		return &kern_ops_avx512;
#endif
	default:
		return NULL;
	}
}

static enum kern_isa best_isa(void)
{
	for (int isa = KERN_ISA_COUNT - 1; isa > KERN_ISA_SCALAR; isa--)
		if (kern_isa_supported(isa) && kern_ops_for(isa))
			return isa;
	return KERN_ISA_SCALAR;
}

int kern_isa_set(enum kern_isa isa)
{
	if (isa < 0 || isa >= KERN_ISA_COUNT || !kern_isa_supported(isa) ||
	    !kern_ops_for(isa))
		return -ENOTSUP;
	atomic_store(&current_isa, isa);
	atomic_store(&current_ops, kern_ops_for(isa));
	return 0;
}

enum kern_isa kern_isa_current(void)
{
	kern_ops_get();
	return atomic_load(&current_isa);
}

const char *kern_isa_name(enum kern_isa isa)
{
	switch (isa) {
	case KERN_ISA_SCALAR: return "scalar";
	case KERN_ISA_AVX2: return "avx2";
	case KERN_ISA_AVX512: return "avx512";
	case KERN_ISA_NEON: return "neon";
	default: return "unknown";
	}
}

int kern_init(void)
{
	enum kern_isa best = best_isa();
	const char *env = getenv("KVCHAIN_ISA");
	int ret = 0;

	if (env && *env) {
		int isa;

		for (isa = 0; isa < KERN_ISA_COUNT; isa++)
			if (!strcmp(env, kern_isa_name(isa)))
				break;
		if (isa < KERN_ISA_COUNT && kern_isa_set(isa) == 0)
			return 0;
		ret = -ENOTSUP;
	}
	kern_isa_set(best);
	return ret;
}

const struct kern_ops *kern_ops_get(void)
{
	const struct kern_ops *ops;

	ops = atomic_load_explicit(&current_ops, memory_order_relaxed);
	if (!ops) {
		kern_init();
		ops = atomic_load(&current_ops);
	}
	return ops;
}

/* ==== Matrix products =================================================== */

/* Weight bytes a row tile aims at, so it stays in L1/L2 while every token
 * of a prefill batch reads it. */
#define MATMUL_TILE_BYTES 32768

struct matmul_task {
	float *y;		/* (n_tok, n_out) */
	const char *w;		/* (n_out, w_row_bytes) */
	size_t w_row_bytes;
	enum kern_type type;
	kern_dot_fn dot;	/* NULL: dequantise W, use float x */
	kern_dot4_fn dot4;	/* NULL: call dot per token */
	const float *xf;	/* (n_tok, n_in) */
	char *xq;		/* (n_tok, xq_row_bytes) x in dot's format */
	size_t xq_row_bytes;
	kern_quantize_x_fn quantize;
	int n_in, n_out, n_tok;
};

/* Returns row . x for any type by dequantising one block at a time; the
 * path for when no scratch could be had. */
static float dot_dequantized(enum kern_type type, int n, const char *w,
			     const float *x)
{
	int be = kern_type_block_elems(type);
	size_t bb = kern_type_block_bytes(type);
	float tmp[KERN_QK_K];
	float sum = 0;

	for (int i = 0; i < n; i += be) {
		kern_dequantize_row(type, w, tmp, be);
		for (int j = 0; j < be; j++)
			sum += tmp[j] * x[i + j];
		w += bb;
	}
	return sum;
}

static void matmul_quantize_task(void *arg, int ith, int nth)
{
	struct matmul_task *t = arg;
	int t0 = (int)((int64_t)t->n_tok * ith / nth);
	int t1 = (int)((int64_t)t->n_tok * (ith + 1) / nth);

	for (int i = t0; i < t1; i++)
		t->quantize(t->xf + (size_t)i * t->n_in,
			    t->xq + (size_t)i * t->xq_row_bytes, t->n_in);
}

/* Computes outputs [r0, r1) of token @i. */
static void matmul_rows(const struct matmul_task *t, int r0, int r1, int i)
{
	float *y = t->y + (size_t)i * t->n_out;

	for (int r = r0; r < r1; r++) {
		const char *w = t->w + (size_t)r * t->w_row_bytes;

		if (t->dot)
			y[r] = t->dot(t->n_in, w,
				      t->xq + (size_t)i * t->xq_row_bytes);
		else
			y[r] = dot_dequantized(t->type, t->n_in, w,
					       t->xf + (size_t)i * t->n_in);
	}
}

/* Computes outputs [r0, r1) of tokens @i to @i + 3. */
static void matmul_rows4(const struct matmul_task *t, int r0, int r1, int i)
{
	float *y = t->y + (size_t)i * t->n_out;
	const char *x = t->xq + (size_t)i * t->xq_row_bytes;

	for (int r = r0; r < r1; r++)
		t->dot4(t->n_in, t->w + (size_t)r * t->w_row_bytes, x,
			t->xq_row_bytes, y + r, (size_t)t->n_out);
}

static void matmul_task(void *arg, int ith, int nth)
{
	struct matmul_task *t = arg;
	int r0 = (int)((int64_t)t->n_out * ith / nth);
	int r1 = (int)((int64_t)t->n_out * (ith + 1) / nth);
	int tile = (int)(MATMUL_TILE_BYTES / t->w_row_bytes);

	if (tile < 1)
		tile = 1;
	for (int rt = r0; rt < r1; rt += tile) {
		int re = rt + tile < r1 ? rt + tile : r1;

		int i = 0;

		for (; t->dot4 && i + 4 <= t->n_tok; i += 4)
			matmul_rows4(t, rt, re, i);
		for (; i < t->n_tok; i++)
			matmul_rows(t, rt, re, i);
	}
}

void kern_matmul(struct kern_pool *pool, float *y, const void *w,
		 enum kern_type type, const float *x, int n_in, int n_out,
		 int n_tok)
{
	const struct kern_ops *ops = kern_ops_get();
	int slot = kern_type_slot(type);
	struct matmul_task t = {
		.y = y, .w = w, .type = type, .xf = x,
		.n_in = n_in, .n_out = n_out, .n_tok = n_tok,
	};

	if (slot < 0 || n_out <= 0 || n_tok <= 0)
		return;
	t.w_row_bytes = kern_row_bytes(type, n_in);
	if (!t.w_row_bytes)
		return;
	t.dot = ops->dot[slot];
	t.dot4 = ops->dot4[slot];

	switch (type) {
	case KERN_TYPE_Q8_0:
	case KERN_TYPE_Q4_0:
		t.quantize = ops->quantize_qx;
		t.xq_row_bytes = (size_t)(n_in / KERN_QX) *
				 sizeof(struct kern_block_qx);
		break;
	case KERN_TYPE_Q4_K:
	case KERN_TYPE_Q6_K:
		t.quantize = ops->quantize_qk;
		t.xq_row_bytes = (size_t)(n_in / KERN_QK_K) *
				 sizeof(struct kern_block_qk);
		break;
	default:
		/* Float types read x as it is. */
		t.xq = (char *)x;
		t.xq_row_bytes = (size_t)n_in * sizeof(float);
		break;
	}

	if (t.quantize) {
		t.xq = kern_scratch(pool, t.xq_row_bytes * (size_t)n_tok);
		if (!t.xq) {
			t.dot = NULL;
			t.dot4 = NULL;
		}
		else if (n_tok == 1)
			t.quantize(x, t.xq, n_in);
		else
			kern_pool_run(pool, matmul_quantize_task, &t);
	}
	kern_pool_run(pool, matmul_task, &t);
}

/* ==== Element-wise kernels and attention =============================== */

void kern_rmsnorm(float *y, const float *x, const float *weight, int n,
		  float eps)
{
	kern_ops_get()->rmsnorm(y, x, weight, n, eps);
}

void kern_softmax(float *x, int n)
{
	kern_ops_get()->softmax(x, n);
}

void kern_swiglu(float *y, const float *gate, const float *up, int n)
{
	kern_ops_get()->swiglu(y, gate, up, n);
}

void kern_attention(float *out, const float *q, int n_heads, int n_kv_heads,
		    int head_dim, int h0, int h1,
		    const struct kern_kv_run *runs, int n_runs,
		    enum kern_type kv_type, float scale, float *scratch)
{
	kern_attention_ops(kern_ops_get(), out, q, n_heads, n_kv_heads,
			   head_dim, h0, h1, runs, n_runs, kv_type, scale,
			   scratch);
}
