/* SPDX-License-Identifier: MIT */
/*
 * ring.c - single-producer single-consumer message rings in shared memory,
 * used by both kvchaind and libkvchain. See ring.h for the layout and the
 * wake-up protocol.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

static uint32_t padded(uint32_t len)
{
	return (len + KVC_RING_ALIGN - 1) & ~(KVC_RING_ALIGN - 1);
}

size_t kvc_shm_size(uint32_t ring_bytes)
{
	return 4096 + 2 * (sizeof(struct kvc_ring_ctl) + (size_t)ring_bytes);
}

void kvc_shm_init(void *base, uint32_t ring_bytes, uint32_t max_message)
{
	struct kvc_shm_header *h = base;

	memset(base, 0, kvc_shm_size(ring_bytes));
	h->magic = KVC_RING_MAGIC;
	h->version = KVC_RING_VERSION;
	h->ring_bytes = ring_bytes;
	h->max_message = max_message;
	h->request_offset = 4096;
	h->completion_offset = 4096 + sizeof(struct kvc_ring_ctl) + ring_bytes;
}

int kvc_shm_attach(void *base, size_t size, struct kvc_ring *request,
		   struct kvc_ring *completion)
{
	struct kvc_shm_header h;
	uint8_t *p = base;

	if (size < sizeof(h))
		return -EPROTO;
	memcpy(&h, base, sizeof(h));
	if (h.magic != KVC_RING_MAGIC || h.version != KVC_RING_VERSION ||
	    h.ring_bytes < 4096 || (h.ring_bytes & (h.ring_bytes - 1)) ||
	    h.max_message == 0 || h.max_message > h.ring_bytes / 2 ||
	    kvc_shm_size(h.ring_bytes) != size ||
	    h.request_offset != 4096 ||
	    h.completion_offset != 4096 + sizeof(struct kvc_ring_ctl) +
					   (uint64_t)h.ring_bytes)
		return -EPROTO;
	request->ctl = (struct kvc_ring_ctl *)(p + h.request_offset);
	request->data = p + h.request_offset + sizeof(struct kvc_ring_ctl);
	request->size = h.ring_bytes;
	request->max_message = h.max_message;
	completion->ctl = (struct kvc_ring_ctl *)(p + h.completion_offset);
	completion->data = p + h.completion_offset + sizeof(struct kvc_ring_ctl);
	completion->size = h.ring_bytes;
	completion->max_message = h.max_message;
	return 0;
}

int kvc_ring_write(struct kvc_ring *r, const void *msg, uint32_t len)
{
	uint32_t head, tail, used, off, need, contiguous;

	if (len > r->max_message)
		return -EMSGSIZE;
	/* Our own head; the consumer's tail, acquired so its reads are done. */
	head = atomic_load_explicit(&r->ctl->head, memory_order_relaxed);
	tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
	used = head - tail;
	if (used > r->size)
		return -EPROTO;	/* the consumer wrote a tail ahead of us */
	off = head & (r->size - 1);
	need = 4 + padded(len);
	need = padded(need);
	contiguous = r->size - off;
	if (contiguous < need) {
		/* skip the rest of the ring, then write at its start */
		if (r->size - used < contiguous + need)
			return -EAGAIN;
		if (contiguous >= 4) {
			uint32_t wrap = KVC_RING_WRAP;

			memcpy(r->data + off, &wrap, 4);
		}
		head += contiguous;
		off = 0;
	} else if (r->size - used < need) {
		return -EAGAIN;
	}
	memcpy(r->data + off, &len, 4);
	memcpy(r->data + off + 4, msg, len);
	/* Publish: the consumer must see the bytes before the new head. */
	atomic_store_explicit(&r->ctl->head, head + need, memory_order_release);
	return 0;
}

bool kvc_ring_pending(const struct kvc_ring *r)
{
	return atomic_load_explicit(&r->ctl->head, memory_order_acquire) !=
	       atomic_load_explicit(&r->ctl->tail, memory_order_relaxed);
}

int kvc_ring_read(struct kvc_ring *r, void *buf)
{
	uint32_t head, tail, avail, off, len, contiguous, need;

	for (;;) {
		/* Acquire pairs with the producer's release of head. */
		head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
		tail = atomic_load_explicit(&r->ctl->tail, memory_order_relaxed);
		avail = head - tail;
		if (avail == 0)
			return 0;
		if (avail > r->size || (tail & (KVC_RING_ALIGN - 1)))
			return -EPROTO;
		off = tail & (r->size - 1);
		contiguous = r->size - off;
		if (contiguous < 4) {
			/* too little room for a length: an implicit wrap */
			if (avail < contiguous)
				return -EPROTO;
			atomic_store_explicit(&r->ctl->tail, tail + contiguous,
					      memory_order_release);
			continue;
		}
		if (avail < 4)
			return -EPROTO;
		memcpy(&len, r->data + off, 4);
		if (len == KVC_RING_WRAP) {
			if (avail < contiguous)
				return -EPROTO;
			atomic_store_explicit(&r->ctl->tail, tail + contiguous,
					      memory_order_release);
			continue;
		}
		need = padded(4 + padded(len));
		if (len > r->max_message || need > avail || need > contiguous)
			return -EPROTO;
		memcpy(buf, r->data + off + 4, len);
		/* Release: the producer may reuse the bytes once it sees this. */
		atomic_store_explicit(&r->ctl->tail, tail + need,
				      memory_order_release);
		return (int)len;
	}
}

void kvc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

uint64_t kvc_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool kvc_ring_spin(const struct kvc_ring *r, uint64_t max_ns)
{
	uint64_t start = kvc_now_ns();
	unsigned i;

	for (;;) {
		for (i = 0; i < 64; i++) {
			if (kvc_ring_pending(r))
				return true;
			kvc_cpu_relax();
		}
		if (kvc_now_ns() - start >= max_ns)
			return kvc_ring_pending(r);
	}
}

bool kvc_ring_consumer_sleeping(const struct kvc_ring *r)
{
	/* Full barrier: our head store must be visible before we read the
	 * flag, or a consumer that just set it could miss both. */
	atomic_thread_fence(memory_order_seq_cst);
	return atomic_load_explicit(&r->ctl->sleeping, memory_order_relaxed);
}

int kvc_futex_wait(_Atomic uint32_t *word, uint32_t expected, int timeout_ms)
{
	struct timespec ts, *tsp = NULL;
	long rc;

	if (timeout_ms >= 0) {
		ts.tv_sec = timeout_ms / 1000;
		ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000;
		tsp = &ts;
	}
	/* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
	rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, tsp,
		     NULL, 0);
	if (rc < 0 && errno == ETIMEDOUT)
		return -ETIMEDOUT;
	return 0;
}

void kvc_futex_wake(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL,
		0);
}

int kvc_ring_wait(struct kvc_ring *r, int timeout_ms)
{
	uint32_t head = atomic_load_explicit(&r->ctl->head,
					     memory_order_acquire);
	uint32_t tail = atomic_load_explicit(&r->ctl->tail,
					     memory_order_relaxed);
	int rc = 0;

	if (head != tail)
		return 0;
	/* Announce the sleep, then look again, so a producer that published
	 * in between either sees the flag or we see its head. */
	atomic_store_explicit(&r->ctl->sleeping, 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst);
	head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
	if (head == tail)
		rc = kvc_futex_wait(&r->ctl->head, head, timeout_ms);
	atomic_store_explicit(&r->ctl->sleeping, 0, memory_order_relaxed);
	return rc;
}

void kvc_ring_wake(struct kvc_ring *r)
{
	if (kvc_ring_consumer_sleeping(r))
		kvc_futex_wake(&r->ctl->head);
}
