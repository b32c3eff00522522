/* SPDX-License-Identifier: MIT */
/*
 * pool.c - the persistent thread pool the matrix products run on, and the
 * scratch buffers that hold quantised activations between calls.
 *
 * A task is published by bumping a generation counter. Workers spin on it
 * for a short while, because the engine dispatches several tasks per layer
 * and a futex round trip costs more than most of them, then sleep on it
 * with FUTEX_WAIT. Shares 1 to nth - 1 of a task are claimed from a shared
 * counter: each worker normally takes one, and the caller, after running
 * share 0, takes any that no worker has started. A worker that another
 * process keeps off its CPU then costs the caller one share of work, not a
 * scheduler time slice of waiting.
 */
#include "config.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kernels-internal.h"

/* Time to poll before sleeping, and polls between clock reads. 200 us is
 * an estimate meant to cover the gap between the matrix products of one
 * layer, so workers sleep only between tokens or when idle. */
#define POOL_SPIN_NS 200000
#define POOL_SPIN_CHECK 64

struct scratch {
	void *buf;
	size_t bytes;
};

struct pool_worker {
	struct kern_pool *pool;
	pthread_t thread;
};

struct kern_pool {
	int n_threads;
	struct pool_worker *workers;	/* n_threads - 1 */

	/* The task: written before generation is bumped, read after. */
	kern_task_fn fn;
	void *arg;
	bool stop;

	_Atomic uint32_t generation;	/* futex word workers wait on */
	/* Generation in the high 32 bits, next unclaimed share in the low. */
	_Atomic uint64_t claim;
	_Atomic uint32_t pending;	/* shares 1.. not yet finished */
	_Atomic int sleepers;		/* workers in or entering FUTEX_WAIT */
	_Atomic int caller_sleeping;	/* caller in or entering FUTEX_WAIT */

	struct scratch scratch;
};

static void cpu_relax(void)
{
#ifdef KVC_X86_64
	__asm__ __volatile__("pause");
#endif
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Returns true once @word differs from @value, polling it for up to
 * POOL_SPIN_NS; false when the time ran out. */
static bool spin_until_changed(_Atomic uint32_t *word, uint32_t value)
{
	int64_t deadline = 0;

	for (int i = 1;; i++) {
		if (atomic_load_explicit(word, memory_order_acquire) != value)
			return true;
		cpu_relax();
		if (i % POOL_SPIN_CHECK)
			continue;
		if (!deadline)
			deadline = now_ns() + POOL_SPIN_NS;
		else if (now_ns() > deadline)
			return false;
	}
}

static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
	syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word, int count)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

/* Returns the generation once it differs from @seen. */
static uint32_t wait_generation(struct kern_pool *pool, uint32_t seen)
{
	uint32_t g;

	if (spin_until_changed(&pool->generation, seen))
		return atomic_load_explicit(&pool->generation,
					    memory_order_acquire);

	/*
	 * Announce the sleep before checking the word again. The caller
	 * bumps generation and then reads sleepers, both sequentially
	 * consistent, so either the caller reads our increment and wakes
	 * us, or FUTEX_WAIT finds the new generation and returns at once.
	 */
	atomic_fetch_add(&pool->sleepers, 1);
	while ((g = atomic_load(&pool->generation)) == seen)
		futex_wait(&pool->generation, seen);
	atomic_fetch_sub(&pool->sleepers, 1);
	return g;
}

/*
 * Claims and runs unstarted shares of generation @gen until none is left.
 * The caller of kern_pool_run does not publish the next task before every
 * claimed share has finished, so fn and arg stay valid for a claimant.
 * Returns true if this thread finished the last outstanding share.
 */
static bool run_shares(struct kern_pool *pool, uint32_t gen)
{
	uint64_t c = atomic_load(&pool->claim);
	bool last = false;

	for (;;) {
		uint32_t share = (uint32_t)c;

		if ((uint32_t)(c >> 32) != gen || share >= (uint32_t)pool->n_threads)
			return last;
		if (!atomic_compare_exchange_weak(&pool->claim, &c, c + 1))
			continue;
		pool->fn(pool->arg, (int)share, pool->n_threads);
		/* Sequentially consistent, so our results are visible to the
		 * caller once it reads 0. */
		last = atomic_fetch_sub(&pool->pending, 1) == 1;
		c = atomic_load(&pool->claim);
	}
}

static void *worker_main(void *arg)
{
	struct pool_worker *w = arg;
	struct kern_pool *pool = w->pool;
	uint32_t seen = 0;

	for (;;) {
		seen = wait_generation(pool, seen);
		if (pool->stop)
			break;
		/* The last share's finisher wakes a sleeping caller. */
		if (run_shares(pool, seen) &&
		    atomic_load(&pool->caller_sleeping))
			futex_wake(&pool->pending, 1);
	}
	return NULL;
}

/* Publishes the task in fn and arg (or stop) and wakes sleeping workers. */
static uint32_t publish(struct kern_pool *pool)
{
	uint32_t gen = atomic_load_explicit(&pool->generation,
					    memory_order_relaxed) + 1;

	atomic_store_explicit(&pool->pending, (uint32_t)pool->n_threads - 1,
			      memory_order_relaxed);
	atomic_store(&pool->claim, (uint64_t)gen << 32 | 1);
	atomic_store(&pool->generation, gen);
	if (atomic_load(&pool->sleepers) > 0)
		futex_wake(&pool->generation, INT_MAX);
	return gen;
}

static void wait_workers(struct kern_pool *pool)
{
	uint32_t left;

	/* pending only falls, so a change seen is progress; poll until 0. */
	for (;;) {
		left = atomic_load_explicit(&pool->pending,
					    memory_order_acquire);
		if (!left)
			return;
		if (!spin_until_changed(&pool->pending, left))
			break;
	}
	atomic_store(&pool->caller_sleeping, 1);
	while ((left = atomic_load(&pool->pending)) != 0)
		futex_wait(&pool->pending, left);
	atomic_store(&pool->caller_sleeping, 0);
}

struct kern_pool *kern_pool_create(int n_threads)
{
	struct kern_pool *pool;
	int started;

	if (n_threads < 1)
		return NULL;
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return NULL;
	pool->n_threads = n_threads;
	pool->workers = calloc((size_t)n_threads, sizeof(*pool->workers));
	if (!pool->workers)
		goto out_free_pool;

	for (started = 0; started < n_threads - 1; started++) {
		struct pool_worker *w = &pool->workers[started];

		w->pool = pool;
		if (pthread_create(&w->thread, NULL, worker_main, w))
			goto out_stop_workers;
	}
	return pool;

out_stop_workers:
	pool->stop = true;
	publish(pool);
	for (int i = 0; i < started; i++)
		pthread_join(pool->workers[i].thread, NULL);
	free(pool->workers);
out_free_pool:
	free(pool);
	return NULL;
}

void kern_pool_destroy(struct kern_pool *pool)
{
	if (!pool)
		return;
	pool->stop = true;
	publish(pool);
	for (int i = 0; i < pool->n_threads - 1; i++)
		pthread_join(pool->workers[i].thread, NULL);
	free(pool->scratch.buf);
	free(pool->workers);
	free(pool);
}

int kern_pool_threads(const struct kern_pool *pool)
{
	return pool ? pool->n_threads : 1;
}

void kern_pool_run(struct kern_pool *pool, kern_task_fn fn, void *arg)
{
	uint32_t gen;

	if (!pool || pool->n_threads == 1) {
		fn(arg, 0, 1);
		return;
	}
	pool->fn = fn;
	pool->arg = arg;
	gen = publish(pool);
	fn(arg, 0, pool->n_threads);
	run_shares(pool, gen);
	wait_workers(pool);
}

/* ==== Scratch =========================================================== */

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_key_ok;

static void scratch_free(void *p)
{
	struct scratch *s = p;

	free(s->buf);
	free(s);
}

static void scratch_key_create(void)
{
	scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

static void *scratch_grow(struct scratch *s, size_t bytes)
{
	void *buf;

	if (s->bytes >= bytes)
		return s->buf;
	/* Grow by half again so a slowly rising size reallocates rarely. */
	bytes += bytes / 2;
	bytes = (bytes + 63) & ~(size_t)63;
	buf = aligned_alloc(64, bytes);
	if (!buf)
		return NULL;
	free(s->buf);
	s->buf = buf;
	s->bytes = bytes;
	return buf;
}

void *kern_scratch(struct kern_pool *pool, size_t bytes)
{
	struct scratch *s;

	if (pool)
		return scratch_grow(&pool->scratch, bytes);

	pthread_once(&scratch_once, scratch_key_create);
	if (!scratch_key_ok)
		return NULL;
	s = pthread_getspecific(scratch_key);
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return NULL;
		if (pthread_setspecific(scratch_key, s)) {
			free(s);
			return NULL;
		}
	}
	return scratch_grow(s, bytes);
}
