/* SPDX-License-Identifier: MIT */
/*
 * pool.c - the persistent thread pool the matrix products run on, and the
 * scratch buffers that hold quantised activations between calls.
 *
 * A task is published by bumping a generation counter. Workers spin on it
 * for a short while, because the engine dispatches several tasks per layer
 * and a futex round trip costs more than most of them, then sleep on it
 * with FUTEX_WAIT. The caller runs share 0 itself and waits the same way
 * for the count of unfinished workers to reach zero.
 */
#include "config.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels-internal.h"

/* Polls before sleeping: about 20-50 us on current x86 cores. */
#define POOL_SPIN 4096

struct scratch {
	void *buf;
	size_t bytes;
};

struct pool_worker {
	struct kern_pool *pool;
	pthread_t thread;
	int ith;
};

struct kern_pool {
	int n_threads;
	struct pool_worker *workers;	/* n_threads - 1 */

	/* The task: written before generation is bumped, read after. */
	kern_task_fn fn;
	void *arg;
	bool stop;

	_Atomic uint32_t generation;	/* futex word workers wait on */
	_Atomic uint32_t pending;	/* workers still running the task */
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

	for (int i = 0; i < POOL_SPIN; i++) {
		g = atomic_load_explicit(&pool->generation,
					 memory_order_acquire);
		if (g != seen)
			return g;
		cpu_relax();
	}

	/*
	 * Announce the sleep before checking the word again: the caller
	 * bumps generation and then reads sleepers (both sequentially
	 * consistent), so either it sees us and wakes us, or FUTEX_WAIT
	 * sees the new generation and returns at once.
	 */
	atomic_fetch_add(&pool->sleepers, 1);
	while ((g = atomic_load(&pool->generation)) == seen)
		futex_wait(&pool->generation, seen);
	atomic_fetch_sub(&pool->sleepers, 1);
	return g;
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
		pool->fn(pool->arg, w->ith, pool->n_threads);

		/* The last worker to finish wakes a sleeping caller; the
		 * release orders our results before the caller's reads. */
		if (atomic_fetch_sub(&pool->pending, 1) == 1 &&
		    atomic_load(&pool->caller_sleeping))
			futex_wake(&pool->pending, 1);
	}
	return NULL;
}

static void publish(struct kern_pool *pool)
{
	atomic_store_explicit(&pool->pending, (uint32_t)pool->n_threads - 1,
			      memory_order_relaxed);
	atomic_fetch_add(&pool->generation, 1);
	if (atomic_load(&pool->sleepers) > 0)
		futex_wake(&pool->generation, INT_MAX);
}

static void wait_workers(struct kern_pool *pool)
{
	uint32_t left;

	for (int i = 0; i < POOL_SPIN; i++) {
		if (!atomic_load_explicit(&pool->pending, memory_order_acquire))
			return;
		cpu_relax();
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
		w->ith = started + 1;
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
	if (!pool || pool->n_threads == 1) {
		fn(arg, 0, 1);
		return;
	}
	pool->fn = fn;
	pool->arg = arg;
	publish(pool);
	fn(arg, 0, pool->n_threads);
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
