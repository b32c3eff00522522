/* SPDX-License-Identifier: MIT */
/*
 * loop_epoll.c - the epoll backend of the event loop (see loop.h), for
 * systems where io_uring is missing or forbidden.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

struct epoll_watch {
	int fd;
	void *tag;		/* NULL for the listener and the stop fd */
	struct epoll_watch *prev, *next;
};

struct epoll_loop {
	struct kvd_loop base;
	int epfd;
	uint8_t *buf;		/* (max_message) receive buffer */
	struct epoll_watch listener, stopper;
	struct epoll_watch *watches;	/* connections */
};

static int add_fd(struct epoll_loop *l, struct epoll_watch *w)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };

	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, w->fd, &ev))
		return -errno;
	return 0;
}

static int epoll_create_loop(const struct kvd_loop_params *params,
			     struct kvd_loop **out)
{
	struct epoll_loop *l;
	int rc;

	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = &kvd_loop_epoll_ops;
	l->base.params = *params;
	l->buf = malloc(params->max_message);
	if (!l->buf) {
		rc = -ENOMEM;
		goto out_free_loop;
	}
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0) {
		rc = -errno;
		goto out_free_buf;
	}
	l->listener.fd = params->listen_fd;
	l->stopper.fd = params->stop_fd;
	rc = add_fd(l, &l->listener);
	if (!rc)
		rc = add_fd(l, &l->stopper);
	if (rc)
		goto out_close_epoll;
	*out = &l->base;
	return 0;

out_close_epoll:
	close(l->epfd);
out_free_buf:
	free(l->buf);
out_free_loop:
	free(l);
	return rc;
}

static int epoll_watch_fd(struct kvd_loop *base, int fd, void *tag)
{
	struct epoll_loop *l = (struct epoll_loop *)base;
	struct epoll_watch *w;
	int rc;

	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->fd = fd;
	w->tag = tag;
	rc = add_fd(l, w);
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

static void forget(struct epoll_loop *l, struct epoll_watch *w, int err)
{
	const struct kvd_loop_handler *h = &l->base.params.handler;
	void *tag = w->tag;

	epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	if (w->prev)
		w->prev->next = w->next;
	else
		l->watches = w->next;
	if (w->next)
		w->next->prev = w->prev;
	free(w);
	h->hangup(h->arg, tag, err);
}

static void accept_all(struct epoll_loop *l)
{
	const struct kvd_loop_handler *h = &l->base.params.handler;
	int fd;

	for (;;) {
		fd = accept4(l->listener.fd, NULL, NULL,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED)
				kvd_log(KVD_LOG_WARN, "accept failed: %m");
			if (errno != EINTR)
				return;
			continue;
		}
		h->accept(h->arg, fd);
	}
}

/* Receives every message queued on @w's socket. */
static void receive_all(struct epoll_loop *l, struct epoll_watch *w)
{
	const struct kvd_loop_handler *h = &l->base.params.handler;
	size_t cap = l->base.params.max_message;
	ssize_t n;

	for (;;) {
		/* MSG_TRUNC makes recv return the whole packet's length. */
		n = recv(w->fd, l->buf, cap, MSG_DONTWAIT | MSG_TRUNC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			forget(l, w, n < 0 ? -errno : 0);
			return;
		}
		h->message(h->arg, w->tag, l->buf,
			   (size_t)n < cap ? (size_t)n : cap, (size_t)n);
	}
}

static int epoll_run(struct kvd_loop *base)
{
	struct epoll_loop *l = (struct epoll_loop *)base;
	struct epoll_event events[64];
	int i, n;

	for (;;) {
		n = epoll_wait(l->epfd, events, 64, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		for (i = 0; i < n; i++) {
			struct epoll_watch *w = events[i].data.ptr;

			if (w == &l->stopper)
				return 0;
			if (w == &l->listener)
				accept_all(l);
			else
				receive_all(l, w);
		}
	}
}

static void epoll_destroy(struct kvd_loop *base)
{
	struct epoll_loop *l = (struct epoll_loop *)base;
	struct epoll_watch *w, *next;

	for (w = l->watches; w; w = next) {
		next = w->next;
		free(w);
	}
	close(l->epfd);
	free(l->buf);
	free(l);
}

const struct kvd_loop_ops kvd_loop_epoll_ops = {
	.name = "epoll",
	.create = epoll_create_loop,
	.watch = epoll_watch_fd,
	.run = epoll_run,
	.destroy = epoll_destroy,
};
