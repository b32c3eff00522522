/* SPDX-License-Identifier: MIT */
/*
 * loop_uring.c - the io_uring backend of the event loop (see loop.h):
 * one accept, one poll of the stop descriptor and one recvmsg per
 * connection stay queued in the ring, each re-armed when it completes.
 */
#include "config.h"

#include <errno.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <poll.h>

#include "log.h"
#include "loop.h"

#define URING_ENTRIES 256

enum uring_kind {
	URING_ACCEPT,
	URING_STOP,
	URING_RECV,
};

/* The owner of one queued operation; its address is the user_data. */
struct uring_watch {
	enum uring_kind kind;
	bool polling;		/* a readiness poll is queued, not the op */
	int fd;
	void *tag;
	struct iovec iov;
	struct msghdr msg;
	struct uring_watch *prev, *next;
	uint8_t buf[];		/* (max_message), URING_RECV only */
};

struct uring_loop {
	struct kvd_loop base;
	struct io_uring ring;
	struct uring_watch listener, stopper;
	struct uring_watch *watches;	/* connections */
};

/* Returns a free submission entry, flushing the queue when it is full. */
static struct io_uring_sqe *get_sqe(struct uring_loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);

	if (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe;
}

static int arm(struct uring_loop *l, struct uring_watch *w)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	if (!sqe)
		return -EBUSY;
	switch (w->kind) {
	case URING_ACCEPT:
		io_uring_prep_accept(sqe, w->fd, NULL, NULL,
				     SOCK_NONBLOCK | SOCK_CLOEXEC);
		break;
	case URING_STOP:
		io_uring_prep_poll_add(sqe, w->fd, POLLIN);
		break;
	case URING_RECV:
		/* MSG_TRUNC makes the result the whole packet's length. */
		w->iov.iov_base = w->buf;
		w->iov.iov_len = l->base.params.max_message;
		memset(&w->msg, 0, sizeof(w->msg));
		w->msg.msg_iov = &w->iov;
		w->msg.msg_iovlen = 1;
		io_uring_prep_recvmsg(sqe, w->fd, &w->msg, MSG_TRUNC);
		break;
	}
	io_uring_sqe_set_data(sqe, w);
	return 0;
}

/*
 * Queues a readiness poll before retrying @w's operation. Kernels that
 * honour O_NONBLOCK in io_uring return -EAGAIN instead of waiting, and
 * re-queueing the operation at once would spin.
 * NOTE: the 6.18 kernel the tests ran on waits instead, so this path has
 * not run.
 */
static int arm_poll(struct uring_loop *l, struct uring_watch *w)
{
	struct io_uring_sqe *sqe = get_sqe(l);

	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, w->fd, POLLIN);
	io_uring_sqe_set_data(sqe, w);
	w->polling = true;
	return 0;
}

static int uring_create_loop(const struct kvd_loop_params *params,
			     struct kvd_loop **out)
{
	struct uring_loop *l;
	int rc;

	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = &kvd_loop_uring_ops;
	l->base.params = *params;
	rc = io_uring_queue_init(URING_ENTRIES, &l->ring, 0);
	if (rc)
		goto out_free_loop;
	l->listener.kind = URING_ACCEPT;
	l->listener.fd = params->listen_fd;
	l->stopper.kind = URING_STOP;
	l->stopper.fd = params->stop_fd;
	rc = arm(l, &l->listener);
	if (!rc)
		rc = arm(l, &l->stopper);
	if (!rc)
		rc = io_uring_submit(&l->ring) < 0 ? -EIO : 0;
	if (rc)
		goto out_exit_ring;
	*out = &l->base;
	return 0;

out_exit_ring:
	io_uring_queue_exit(&l->ring);
out_free_loop:
	free(l);
	return rc;
}

static int uring_watch_fd(struct kvd_loop *base, int fd, void *tag)
{
	struct uring_loop *l = (struct uring_loop *)base;
	struct uring_watch *w;
	int rc;

	/* NOTE: a receive buffer of max_message per connection; a provided-
	 * buffer ring (IORING_OP_PROVIDE_BUFFERS) would share them. */
	w = calloc(1, sizeof(*w) + base->params.max_message);
	if (!w)
		return -ENOMEM;
	w->kind = URING_RECV;
	w->fd = fd;
	w->tag = tag;
	rc = arm(l, w);
	if (rc) {
		free(w);
		return rc;
	}
	w->next = l->watches;
	if (l->watches)
		l->watches->prev = w;
	l->watches = w;
	return 0;
}

static void forget(struct uring_loop *l, struct uring_watch *w, int err)
{
	const struct kvd_loop_handler *h = &l->base.params.handler;
	void *tag = w->tag;

	if (w->prev)
		w->prev->next = w->next;
	else
		l->watches = w->next;
	if (w->next)
		w->next->prev = w->prev;
	free(w);
	h->hangup(h->arg, tag, err);
}

static void complete(struct uring_loop *l, struct uring_watch *w, int res)
{
	const struct kvd_loop_handler *h = &l->base.params.handler;
	size_t cap = l->base.params.max_message;

	if (w->polling) {
		w->polling = false;
		res = arm(l, w);
		if (res && w->kind == URING_RECV)
			forget(l, w, res);
		else if (res)
			kvd_log(KVD_LOG_ERROR, "cannot re-arm accept");
		return;
	}
	if (res == -EAGAIN) {
		res = arm_poll(l, w);
		if (res && w->kind == URING_RECV)
			forget(l, w, res);
		else if (res)
			kvd_log(KVD_LOG_ERROR, "cannot re-arm accept");
		return;
	}
	switch (w->kind) {
	case URING_ACCEPT:
		if (res >= 0)
			h->accept(h->arg, res);
		else if (res != -EINTR && res != -ECONNABORTED)
			kvd_log(KVD_LOG_WARN, "accept failed: %s",
				strerror(-res));
		/* NOTE: a lasting failure such as EMFILE re-arms at once and
		 * spins; a timeout before re-arming would calm it. */
		if (arm(l, w))
			kvd_log(KVD_LOG_ERROR, "cannot re-arm accept");
		break;
	case URING_RECV:
		if (res == -EINTR) {
			if (!arm(l, w))
				break;
			res = -EBUSY;
		}
		if (res <= 0) {
			forget(l, w, res);
			break;
		}
		h->message(h->arg, w->tag, w->buf,
			   (size_t)res < cap ? (size_t)res : cap, (size_t)res);
		if (arm(l, w))
			forget(l, w, -EBUSY);
		break;
	case URING_STOP:
		break;
	}
}

static int uring_run(struct kvd_loop *base)
{
	struct uring_loop *l = (struct uring_loop *)base;
	struct io_uring_cqe *cqe;
	bool stop = false;
	int rc;

	while (!stop) {
		rc = io_uring_submit_and_wait(&l->ring, 1);
		if (rc < 0 && rc != -EINTR)
			return rc;
		while (io_uring_peek_cqe(&l->ring, &cqe) == 0) {
			struct uring_watch *w = io_uring_cqe_get_data(cqe);
			int res = cqe->res;

			io_uring_cqe_seen(&l->ring, cqe);
			if (w->kind == URING_STOP)
				stop = true;
			else
				complete(l, w, res);
		}
	}
	return 0;
}

static void uring_destroy(struct kvd_loop *base)
{
	struct uring_loop *l = (struct uring_loop *)base;
	struct uring_watch *w, *next;

	/* Tears down the ring first: the kernel cancels the queued
	 * operations, so no buffer below is written afterwards. */
	io_uring_queue_exit(&l->ring);
	for (w = l->watches; w; w = next) {
		next = w->next;
		free(w);
	}
	free(l);
}

const struct kvd_loop_ops kvd_loop_uring_ops = {
	.name = "io_uring",
	.create = uring_create_loop,
	.watch = uring_watch_fd,
	.run = uring_run,
	.destroy = uring_destroy,
};
