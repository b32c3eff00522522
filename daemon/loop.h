/* SPDX-License-Identifier: MIT */
/*
 * loop.h - the control socket's event loop: accepts connections, receives
 * one SOCK_SEQPACKET message at a time from each, and reports hang-ups,
 * until a stop descriptor becomes readable. Two backends fill the same
 * methods table, io_uring (liburing) and epoll; kvd_loop_create picks one
 * in one place, so no other file depends on which runs.
 *
 * The loop never interprets messages, never sends, and never closes a
 * connection's descriptor: after it reports a hang-up it stops watching
 * the descriptor and the handler owns it.
 */
#ifndef KVD_LOOP_H
#define KVD_LOOP_H

#include <stddef.h>

#include "conf.h"

struct kvd_loop_handler {
	/* A new connection; the handler watches it with kvd_loop_watch or
	 * closes it. */
	void (*accept)(void *arg, int fd);
	/* One message of @len bytes; @full_len > @len when it did not fit
	 * the receive buffer and was cut. */
	void (*message)(void *arg, void *tag, const void *msg, size_t len,
			size_t full_len);
	/* The peer closed, shut down or failed (@err: 0 or a negative
	 * errno); the descriptor is no longer watched. */
	void (*hangup)(void *arg, void *tag, int err);
	void *arg;
};

struct kvd_loop_params {
	int listen_fd;		/* non-blocking listening socket */
	int stop_fd;		/* run returns once it is readable */
	size_t max_message;	/* receive buffer per connection */
	struct kvd_loop_handler handler;
};

struct kvd_loop;

struct kvd_loop_ops {
	const char *name;
	/* Returns 0, or a negative errno when the backend cannot run here. */
	int (*create)(const struct kvd_loop_params *params,
		      struct kvd_loop **out);
	int (*watch)(struct kvd_loop *loop, int fd, void *tag);
	/* Runs until stop_fd is readable. Returns 0 or a negative errno. */
	int (*run)(struct kvd_loop *loop);
	void (*destroy)(struct kvd_loop *loop);
};

/* Every backend's loop starts with this. */
struct kvd_loop {
	const struct kvd_loop_ops *ops;
	struct kvd_loop_params params;
};

extern const struct kvd_loop_ops kvd_loop_uring_ops;
extern const struct kvd_loop_ops kvd_loop_epoll_ops;

/*
 * Creates the loop that @which names. KVD_LOOP_AUTO tries io_uring and falls
 * back to epoll with an info line when io_uring cannot be set up (many
 * container runtimes forbid it). Returns 0 or a negative errno with a
 * message in @err.
 */
int kvd_loop_create(enum kvd_event_loop which,
		    const struct kvd_loop_params *params,
		    struct kvd_loop **out, char *err, size_t errlen);

static inline int kvd_loop_watch(struct kvd_loop *loop, int fd, void *tag)
{
	return loop->ops->watch(loop, fd, tag);
}

static inline int kvd_loop_run(struct kvd_loop *loop)
{
	return loop->ops->run(loop);
}

static inline void kvd_loop_destroy(struct kvd_loop *loop)
{
	if (loop)
		loop->ops->destroy(loop);
}

#endif /* KVD_LOOP_H */
