/* SPDX-License-Identifier: MIT */
/*
 * bench-engine - measures prefill and decode speed of a GGUF model, the
 * weight bytes read per second during decode, and this machine's memory
 * bandwidth with a STREAM-like copy and a read-only sweep, and prints decode
 * speed as a fraction of the bandwidth limit.
 *
 * Decode reads every weight matrix once per token, so its ceiling is
 * bandwidth / weight bytes tokens per second. Nothing here is part of
 * `make check`.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench-args.h"
#include "kernels.h"
#include "model.h"

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- Memory bandwidth ----------------------------------------------- */

struct sweep {
	uint64_t *src;
	uint64_t *dst;
	size_t n;		/* uint64 elements per array */
	bool copy;		/* copy src to dst, else only read src */
	uint64_t sums[64];	/* per thread, so the reads are not elided */
};

/*
 * Sums @n uint64 values with the widest loads the CPU has, so the read
 * sweep is bound by memory, not by the loop. A plain C loop compiled at
 * -O2 measured about 60% of what 512-bit loads reach on the development
 * machine (an AMD EPYC VM), which would overstate decode efficiency.
 */
#ifdef KVC_X86_64
#include <immintrin.h>

__attribute__((target("avx512f")))
static uint64_t sum_avx512(const uint64_t *p, size_t n)
{
	__m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
	size_t i;

	for (i = 0; i + 32 <= n; i += 32) {
		a = _mm512_add_epi64(a, _mm512_loadu_si512(p + i));
		b = _mm512_add_epi64(b, _mm512_loadu_si512(p + i + 8));
		c = _mm512_add_epi64(c, _mm512_loadu_si512(p + i + 16));
		d = _mm512_add_epi64(d, _mm512_loadu_si512(p + i + 24));
	}
	a = _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d));
	return (uint64_t)_mm512_reduce_add_epi64(a);
}

__attribute__((target("avx2")))
static uint64_t sum_avx2(const uint64_t *p, size_t n)
{
	__m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
	uint64_t out[4];
	size_t i;

	for (i = 0; i + 16 <= n; i += 16) {
		a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(p + i)));
		b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
		c = _mm256_add_epi64(c, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
		d = _mm256_add_epi64(d, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
	}
	a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
	_mm256_storeu_si256((__m256i *)out, a);
	return out[0] + out[1] + out[2] + out[3];
}
#endif

static uint64_t sum_plain(const uint64_t *p, size_t n)
{
	uint64_t a = 0, b = 0, c = 0, d = 0;
	size_t i;

	for (i = 0; i + 4 <= n; i += 4) {
		a += p[i];
		b += p[i + 1];
		c += p[i + 2];
		d += p[i + 3];
	}
	return a + b + c + d;
}

static uint64_t sum_words(const uint64_t *p, size_t n)
{
#ifdef KVC_X86_64
	if (kern_isa_current() == KERN_ISA_AVX512)
		return sum_avx512(p, n);
	if (kern_isa_current() == KERN_ISA_AVX2)
		return sum_avx2(p, n);
#endif
	return sum_plain(p, n);
}

static void sweep_worker(void *arg, int ith, int nth)
{
	struct sweep *s = arg;
	size_t first = s->n * ith / nth, last = s->n * (ith + 1) / nth;

	if (s->copy) {
		memcpy(s->dst + first, s->src + first,
		       (last - first) * sizeof(uint64_t));
		return;
	}
	s->sums[ith % 64] = sum_words(s->src + first, last - first);
}

/* Returns the best GB/s over @reps sweeps; a copy counts bytes read and written. */
static double measure_bandwidth(struct kern_pool *pool, struct sweep *s,
				bool copy, int reps)
{
	double best = 0.0;
	int r;

	s->copy = copy;
	for (r = 0; r < reps; r++) {
		double t0 = now_seconds(), dt, bytes;

		kern_pool_run(pool, sweep_worker, s);
		dt = now_seconds() - t0;
		bytes = (double)s->n * sizeof(uint64_t) * (copy ? 2 : 1);
		if (bytes / dt / 1e9 > best)
			best = bytes / dt / 1e9;
	}
	return best;
}

static void first_touch(void *arg, int ith, int nth)
{
	struct sweep *s = arg;
	size_t first = s->n * ith / nth, last = s->n * (ith + 1) / nth;
	size_t i;

	for (i = first; i < last; i++) {
		s->src[i] = i;
		s->dst[i] = 0;
	}
}

/* ---- Model ----------------------------------------------------------- */

static size_t matrix_bytes(const struct model_matrix *m)
{
	return kern_row_bytes(m->type, m->n_in) * m->n_out;
}

/* Returns the bytes of weights one decode step reads. */
static size_t decode_weight_bytes(const struct model *m)
{
	size_t total = matrix_bytes(&m->output);
	uint32_t i;

	for (i = 0; i < m->cfg.n_layers; i++) {
		const struct model_layer *l = &m->layers[i];

		total += matrix_bytes(&l->wq) + matrix_bytes(&l->wk) +
			 matrix_bytes(&l->wv) + matrix_bytes(&l->wo) +
			 matrix_bytes(&l->w_gate) + matrix_bytes(&l->w_up) +
			 matrix_bytes(&l->w_down);
	}
	return total;
}

static size_t parameter_count(const struct model *m)
{
	size_t total = (size_t)m->tok_embd.n_in * m->tok_embd.n_out;
	uint32_t i;

	if (m->output.data != m->tok_embd.data)
		total += (size_t)m->output.n_in * m->output.n_out;
	for (i = 0; i < m->cfg.n_layers; i++) {
		const struct model_layer *l = &m->layers[i];
		const struct model_matrix *mats[] = {
			&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up,
			&l->w_down,
		};
		size_t k;

		for (k = 0; k < 7; k++)
			total += (size_t)mats[k]->n_in * mats[k]->n_out;
	}
	return total;
}

static int32_t argmax(const float *x, uint32_t n)
{
	uint32_t i, best = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return (int32_t)best;
}

static void usage(FILE *out)
{
	fprintf(out,
"usage: bench-engine -m MODEL.gguf [-t THREADS] [-p PREFILL] [-n DECODE]\n"
"                    [-r REPS] [--mem-mib MIB]\n"
"Prints prefill and decode tokens/s, weight GB/s during decode, and the\n"
"machine's memory bandwidth, best of REPS runs (default 3).\n"
"  -t  worker threads (default 2)\n"
"  -p  prompt tokens to prefill (default 128)\n"
"  -n  tokens to decode after it (default 64)\n"
"  --mem-mib  size of each bandwidth array in MiB (default 512)\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "mem-mib", required_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL;
	int n_threads = 2, n_prefill = 128, n_decode = 64, reps = 3;
	size_t mem_mib = 512;
	struct kv_cache cache;
	struct forward_ctx *ctx;
	struct kern_pool *pool;
	struct model *m;
	struct sweep sw = { 0 };
	double best_prefill = 0, best_decode = 0, bw_copy, bw_read, bw;
	float *logits;
	int32_t *ids;
	char err[512];
	int c, r, i;
	size_t wbytes;

	while ((c = getopt_long(argc, argv, "m:t:p:n:r:h", longopts, NULL)) != -1) {
		unsigned long v = 0;
		int bad = 0;

		switch (c) {
		case 'm': path = optarg; break;
		case 't': bad = bench_parse_uint("bench-engine", "-t", optarg, 1, 256, &v); n_threads = (int)v; break;
		case 'p': bad = bench_parse_uint("bench-engine", "-p", optarg, 1, 1 << 16, &v); n_prefill = (int)v; break;
		case 'n': bad = bench_parse_uint("bench-engine", "-n", optarg, 1, 1 << 16, &v); n_decode = (int)v; break;
		case 'r': bad = bench_parse_uint("bench-engine", "-r", optarg, 1, 1000, &v); reps = (int)v; break;
		case 'M': bad = bench_parse_uint("bench-engine", "--mem-mib", optarg, 16, 65536, &v); mem_mib = v; break;
		case 'h': usage(stdout); return 0;
		default: fprintf(stderr, "bench-engine: see bench-engine --help\n"); return 1;
		}
		if (bad)
			return 1;
	}
	if (!path || optind < argc) {
		fprintf(stderr, "bench-engine: %s (see --help)\n",
			path ? "unexpected argument" : "-m MODEL is required");
		return 1;
	}
	kern_init();
	if (model_load(path, &m, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench-engine: %s\n", err);
		return 1;
	}
	pool = kern_pool_create(n_threads);
	if (!pool || kv_cache_init(&cache, m, (uint32_t)(n_prefill + n_decode),
				   KERN_TYPE_F16) < 0) {
		fprintf(stderr, "bench-engine: out of memory for the cache\n");
		return 1;
	}
	ctx = forward_ctx_create(m, 64, (uint32_t)(n_prefill + n_decode), pool);
	logits = malloc(m->cfg.n_vocab * sizeof(float));
	ids = malloc((size_t)n_prefill * sizeof(int32_t));
	if (!ctx || !logits || !ids) {
		fprintf(stderr, "bench-engine: out of memory\n");
		return 1;
	}
	for (i = 0; i < n_prefill; i++)
		ids[i] = (int32_t)((i * 7919 + 11) % m->cfg.n_vocab);

	for (r = 0; r < reps; r++) {
		double t0 = now_seconds(), t1, t2;
		int32_t next;

		model_forward(ctx, &cache, ids, NULL, (uint32_t)n_prefill, 0,
			      logits, false);
		t1 = now_seconds();
		next = argmax(logits, m->cfg.n_vocab);
		for (i = 0; i < n_decode; i++) {
			model_forward(ctx, &cache, &next, NULL, 1,
				      (uint32_t)(n_prefill + i), logits, false);
			next = argmax(logits, m->cfg.n_vocab);
		}
		t2 = now_seconds();
		if (n_prefill / (t1 - t0) > best_prefill)
			best_prefill = n_prefill / (t1 - t0);
		if (n_decode / (t2 - t1) > best_decode)
			best_decode = n_decode / (t2 - t1);
	}

	sw.n = mem_mib * 1024 * 1024 / sizeof(uint64_t);
	sw.src = malloc(sw.n * sizeof(uint64_t));
	sw.dst = malloc(sw.n * sizeof(uint64_t));
	if (!sw.src || !sw.dst) {
		fprintf(stderr, "bench-engine: cannot allocate 2 x %zu MiB\n", mem_mib);
		return 1;
	}
	kern_pool_run(pool, first_touch, &sw);
	bw_copy = measure_bandwidth(pool, &sw, true, reps + 4);
	bw_read = measure_bandwidth(pool, &sw, false, reps + 4);
	bw = bw_copy > bw_read ? bw_copy : bw_read;
	wbytes = decode_weight_bytes(m);

	printf("| model | %s |\n", path);
	printf("| parameters | %.1f M |\n", parameter_count(m) / 1e6);
	printf("| weight type of wq | %s |\n", kern_type_name(m->layers[0].wq.type));
	printf("| weight bytes read per decoded token | %.1f MB |\n", wbytes / 1e6);
	printf("| threads | %d |\n", n_threads);
	printf("| kernels | %s |\n", kern_isa_name(kern_isa_current()));
	printf("| prefill (%d tokens) | %.1f tokens/s |\n", n_prefill, best_prefill);
	printf("| decode (%d tokens after the prefill) | %.1f tokens/s |\n", n_decode, best_decode);
	printf("| weight reading during decode | %.2f GB/s |\n", best_decode * wbytes / 1e9);
	printf("| memory bandwidth, copy (read + write) | %.2f GB/s |\n", bw_copy);
	printf("| memory bandwidth, read only | %.2f GB/s |\n", bw_read);
	printf("| decode limit at the larger bandwidth | %.1f tokens/s |\n", bw * 1e9 / wbytes);
	printf("| decode as a fraction of that limit | %.0f%% |\n",
	       100.0 * best_decode * wbytes / 1e9 / bw);

	free(sw.src);
	free(sw.dst);
	free(ids);
	free(logits);
	forward_ctx_free(ctx);
	kv_cache_free(&cache);
	kern_pool_destroy(pool);
	model_free(m);
	return 0;
}
