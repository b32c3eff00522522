/* SPDX-License-Identifier: MIT */
/*
 * client-internal.h - what the files of libkvchain share and callers never
 * see: the connection object and the transport calls of conn.c (connect,
 * Hello, sending a Request and waiting for its Reply over the rings or
 * the socket). client.c builds the public calls on them.
 */
#ifndef KVCHAIN_CLIENT_INTERNAL_H
#define KVCHAIN_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvchain.h"
#include "kvchain.pb-c.h"
#include "ring.h"

/* Marks the definitions of public calls; everything else stays hidden. */
#define KVC_API __attribute__((visibility("default")))

#define KVC_DEFAULT_TIMEOUT_MS 60000
#define KVC_ERRLEN 256

struct kvc_conn {
	pthread_mutex_t lock;		/* serialises calls */
	int fd;				/* the control socket */
	bool broken;			/* hung up or out of step: calls fail */
	int timeout_ms;			/* per wait for a reply */
	bool socket_only;		/* KVCHAIN_TRANSPORT=socket: no rings */

	void *shm;			/* (shm_size) the connection's region */
	size_t shm_size;
	struct kvc_doorbell *doorbell;	/* (4096) the daemon-wide page */
	struct kvc_ring req;		/* we write, the daemon reads */
	struct kvc_ring cpl;		/* the daemon writes, we read */

	uint32_t sock_max;		/* largest message over the socket */
	uint8_t *rbuf;			/* (rbuf_size) one received message */
	size_t rbuf_size;
	uint64_t next_id;

	struct kvc_server_info info;
	char err[KVC_ERRLEN];		/* the last failure's message */
};

/* Writes the message of a failure into conn->err and returns @code. */
int kvc__fail(struct kvc_conn *conn, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Sends @req (its id is assigned here) through the request ring, or over
 * the socket when it is too big for the ring or conn->socket_only is set.
 * Stores in *via_socket which way it went, since the daemon answers the
 * same way. Returns 0 or a KVC_E* code with conn->err set.
 */
int kvc__send(struct kvc_conn *conn, Kvchain__Request *req,
	      bool *via_socket);

/*
 * Waits for the next Reply to request @id, discarding replies to earlier
 * requests (late answers to calls that timed out). The timeout runs from
 * this call, so a stream of tokens keeps a generation alive. Stores the
 * unpacked reply (free with kvchain__reply__free_unpacked) in *out.
 * Returns 0, or KVC_EIO when the daemon hung up, KVC_EPROTO for a reply
 * that does not decode, KVC_ETIMEDOUT; conn->err says which.
 */
int kvc__receive(struct kvc_conn *conn, uint64_t id, bool via_socket,
		 Kvchain__Reply **out);

/*
 * Sends @req and waits for its one reply. A reply carrying an error
 * returns that error with the daemon's message in conn->err; a reply whose
 * body is not @expected (unless @expected is NOT_SET, which accepts any)
 * gives KVC_EPROTO. On 0 the caller frees *out.
 */
int kvc__call(struct kvc_conn *conn, Kvchain__Request *req,
	      Kvchain__Reply__BodyCase expected, Kvchain__Reply **out);

/*
 * Returns the error of @reply: 0, or its negative code with the daemon's
 * message copied into conn->err. A positive code breaks the protocol.
 */
int kvc__reply_error(struct kvc_conn *conn, const Kvchain__Reply *reply);

#endif /* KVCHAIN_CLIENT_INTERNAL_H */
