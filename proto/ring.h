/* SPDX-License-Identifier: MIT */
/*
 * ring.h - the shared-memory data plane between kvchaind and a client.
 *
 * After Hello, the daemon passes the client two memfds (SCM_RIGHTS): the
 * connection's own region, holding a header page, the request ring (client
 * writes, daemon reads) and the completion ring (daemon writes, client
 * reads); and the daemon-wide doorbell page. Each ring is single-producer
 * single-consumer and carries the same protobuf messages as the socket,
 * each framed as a 32-bit little-endian length and the bytes, padded to 8.
 * A length of KVC_RING_WRAP means "skip to the start of the ring".
 *
 * Wake-ups cost a system call only when the other side sleeps:
 * - the client sleeps on its completion ring's head with a futex after
 *   setting that ring's `sleeping` flag, and the daemon wakes it when it
 *   sees the flag after publishing a message;
 * - the daemon sleeps on the doorbell's counter after setting the
 *   `sleeping` flag of every request ring, and a client that sees its
 *   request ring's flag set after publishing bumps the counter and wakes
 *   the futex.
 *
 * Everything the other side wrote is untrusted: a reader validates each
 * length against the bytes published and the maximum message size, and
 * reports a corrupted ring with -EPROTO; it never reads outside the ring.
 * Offsets and sizes come from the caller's own copy, never from shared
 * memory after setup.
 */
#ifndef KVCHAIN_RING_H
#define KVCHAIN_RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVC_RING_MAGIC 0x72637668u	/* "hvcr" little-endian */
#define KVC_RING_VERSION 1u
#define KVC_RING_WRAP 0xffffffffu
#define KVC_RING_ALIGN 8u

/* One ring's control words, each on its own cache line. */
struct kvc_ring_ctl {
	_Atomic uint32_t head;		/* bytes published, wraps at 2^32 */
	uint8_t pad0[60];
	_Atomic uint32_t tail;		/* bytes consumed, wraps at 2^32 */
	uint8_t pad1[60];
	_Atomic uint32_t sleeping;	/* 1 while the consumer may sleep */
	uint8_t pad2[60];
};

/* The first page of a connection's region. */
struct kvc_shm_header {
	uint32_t magic;			/* KVC_RING_MAGIC */
	uint32_t version;		/* KVC_RING_VERSION */
	uint32_t ring_bytes;		/* data bytes of each ring, power of 2 */
	uint32_t max_message;		/* largest message either side sends */
	uint64_t request_offset;	/* of the request ring's ctl */
	uint64_t completion_offset;	/* of the completion ring's ctl */
};

/* The daemon-wide doorbell page. */
struct kvc_doorbell {
	_Atomic uint32_t counter;	/* bumped by a client that wakes the daemon */
};

/* Bytes of a connection region with rings of @ring_bytes each. */
size_t kvc_shm_size(uint32_t ring_bytes);

/* Lays out a fresh region of kvc_shm_size(ring_bytes) bytes at @base. */
void kvc_shm_init(void *base, uint32_t ring_bytes, uint32_t max_message);

/* A side's private view of one ring: pointers and sizes it trusts. */
struct kvc_ring {
	struct kvc_ring_ctl *ctl;
	uint8_t *data;
	uint32_t size;			/* power of two */
	uint32_t max_message;
};

/*
 * Checks the header of a region of @size bytes that the other side laid
 * out and fills the two ring views. Returns 0 or -EPROTO.
 */
int kvc_shm_attach(void *base, size_t size, struct kvc_ring *request,
		   struct kvc_ring *completion);

/*
 * Publishes @len bytes as one message. Returns 0, -EAGAIN when the ring
 * has no room now, or -EMSGSIZE when @len exceeds max_message. Does not
 * wake the consumer: call kvc_ring_consumer_sleeping() afterwards.
 */
int kvc_ring_write(struct kvc_ring *ring, const void *msg, uint32_t len);

/*
 * Copies the next message into @buf (at least max_message bytes) and
 * consumes it. Returns its length, 0 when the ring is empty, or -EPROTO
 * when the producer wrote a length that cannot be valid.
 */
int kvc_ring_read(struct kvc_ring *ring, void *buf);

/* Returns true if a message is waiting. */
bool kvc_ring_pending(const struct kvc_ring *ring);

/*
 * Spins for up to @max_ns nanoseconds until a message is waiting. Returns
 * true if one is. A short spin before kvc_ring_wait saves the futex sleep
 * and wake-up when the reply is microseconds away.
 */
bool kvc_ring_spin(const struct kvc_ring *ring, uint64_t max_ns);

/* Pauses the CPU briefly inside a spin loop. */
void kvc_cpu_relax(void);

/* Returns a monotonic time in nanoseconds. */
uint64_t kvc_now_ns(void);

/* Returns true if the consumer announced it may sleep. */
bool kvc_ring_consumer_sleeping(const struct kvc_ring *ring);

/*
 * Consumer side: sleeps until the ring's head moves or @timeout_ms passes
 * (-1 waits forever). Returns 0, or -ETIMEDOUT.
 */
int kvc_ring_wait(struct kvc_ring *ring, int timeout_ms);

/* Producer side: wakes a consumer sleeping in kvc_ring_wait. */
void kvc_ring_wake(struct kvc_ring *ring);

/* Futex helpers on a shared 32-bit word. */
int kvc_futex_wait(_Atomic uint32_t *word, uint32_t expected,
		   int timeout_ms);
void kvc_futex_wake(_Atomic uint32_t *word);

#endif /* KVCHAIN_RING_H */
